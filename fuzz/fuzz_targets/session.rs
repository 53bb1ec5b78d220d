//! The whole session: arbitrary interleavings of client and server bytes through a real
//! session with the in-memory firewall; every pinhole must name the session's own peers and
//! a port above 1023, and none may be left at the end.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    ftp_alg::session::checks::check_session(data);
});
