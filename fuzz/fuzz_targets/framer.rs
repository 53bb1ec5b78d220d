//! Framing: any chunking yields the same lines; lines + discarded + held bytes account for the input.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| ftp_alg::ftp::checks::check_framer(data));
