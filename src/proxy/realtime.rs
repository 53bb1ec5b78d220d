//! Opt-in real-time scheduling of the daemon's own threads (`runtime.realtime_priority`).
//!
//! On a gateway whose CPUs are busy, the normal scheduler preempts a session thread wherever
//! it is, also in the middle of a pinhole install (a netlink transaction of a few µs), and
//! the install then takes as long as the preemption: with 32 busy sessions on this 2-CPU
//! lab box most of the install p99 tail was preemption (see BENCHMARKS.md). `SCHED_FIFO`
//! threads are not preempted by normal ones. The same trade as keepalived's
//! `vrrp_rt_priority` or chrony's `-P`: the daemon's bursts come first, the rest of the box
//! waits a few µs longer.
//!
//! Only the threads that ask for it run real-time: each sets its own policy
//! (`sched_setscheduler` on the calling thread) with `SCHED_RESET_ON_FORK`, so that threads
//! and processes it starts (tokio's blocking pool, `nft`) run normally.

/// Why the policy could not be set, with what to do about it.
fn explain(priority: u8, error: &std::io::Error) -> std::io::Error {
    let hint = match error.raw_os_error() {
        Some(libc::EPERM) => {
            "needs CAP_SYS_NICE and, under the shipped systemd unit, a drop-in with \
             RestrictRealtime=no and SystemCallFilter=sched_setscheduler (see the comment in \
             ftp-alg.service); in a cgroup with the cpu controller, a real-time budget \
             (cpu.rt_runtime_us); or set runtime.realtime_priority = 0"
        }
        _ => "set runtime.realtime_priority = 0 to run without it",
    };
    std::io::Error::new(
        error.kind(),
        format!("cannot switch to SCHED_FIFO priority {priority}: {error}; {hint}"),
    )
}

/// Makes the calling thread real-time at `priority` (1-99); `0` does nothing.
pub fn apply(priority: u8) -> std::io::Result<()> {
    if priority == 0 {
        return Ok(());
    }
    let param = libc::sched_param {
        sched_priority: libc::c_int::from(priority),
    };
    // SAFETY: pid 0 is the calling thread; `param` is a valid sched_param for the call.
    let rc = unsafe {
        libc::sched_setscheduler(
            0,
            libc::SCHED_FIFO | libc::SCHED_RESET_ON_FORK,
            &raw const param,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(explain(priority, &std::io::Error::last_os_error()))
    }
}

/// The calling thread's scheduling policy (without the reset-on-fork flag).
#[cfg(test)]
fn policy() -> libc::c_int {
    // SAFETY: pid 0 is the calling thread.
    unsafe { libc::sched_getscheduler(0) & !libc::SCHED_RESET_ON_FORK }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_leaves_the_thread_alone() {
        std::thread::spawn(|| {
            let before = policy();
            apply(0).expect("no-op");
            assert_eq!(policy(), before);
        })
        .join()
        .expect("thread");
    }

    #[test]
    fn a_priority_makes_only_this_thread_real_time_and_not_its_children() {
        std::thread::spawn(|| {
            match apply(5) {
                Ok(()) => {}
                // Unprivileged test run: the error must say what is missing.
                Err(e) => {
                    let text = e.to_string();
                    assert!(text.contains("CAP_SYS_NICE"), "{text}");
                    return;
                }
            }
            assert_eq!(policy(), libc::SCHED_FIFO);
            let child = std::thread::spawn(policy).join().expect("child thread");
            assert_eq!(child, libc::SCHED_OTHER, "reset on fork");
            let out = std::process::Command::new("chrt")
                .args(["-p", &std::process::id().to_string()])
                .output();
            // The process's main thread was never touched.
            if let Ok(out) = out {
                let text = String::from_utf8_lossy(&out.stdout);
                assert!(text.contains("SCHED_OTHER"), "{text}");
            }
        })
        .join()
        .expect("thread");
    }
}
