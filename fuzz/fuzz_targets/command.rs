//! Commands: parse_command never panics; a parsed PORT/EPRT renders and re-parses to the same address.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| ftp_alg::ftp::checks::check_command(data));
