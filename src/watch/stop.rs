//! A process-wide stop flag raised by SIGINT and SIGTERM, so that `watch` can print its last
//! findings and `lab` can delete its namespaces before exiting. A second signal exits at once
//! (`_exit(130)`): whoever insists gets their terminal back; a later `ftp-alg lab` removes
//! namespaces left by a process that is gone.

use std::sync::atomic::{AtomicBool, Ordering};

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_signal: libc::c_int) {
    // Only async-signal-safe operations here: an atomic swap and _exit.
    if STOP.swap(true, Ordering::SeqCst) {
        // SAFETY: _exit is async-signal-safe.
        unsafe { libc::_exit(130) };
    }
}

/// Installs the handlers (idempotent) and returns the flag.
pub fn install() -> &'static AtomicBool {
    let handler = on_signal as extern "C" fn(libc::c_int);
    for signal in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: installing a handler that only touches an atomic and calls _exit.
        unsafe {
            libc::signal(signal, handler as libc::sighandler_t);
        }
    }
    &STOP
}

/// Whether a stop was requested.
pub fn requested() -> bool {
    STOP.load(Ordering::Relaxed)
}
