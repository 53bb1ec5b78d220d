//! Replies: assembler and 227/229 codecs never panic; rewriting to the parsed address is the identity.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| ftp_alg::ftp::checks::check_reply(data));
