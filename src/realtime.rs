//! Real-time scheduling of the pinhole path (`runtime.realtime_priority`): where permitted
//! by default (`"auto"`), required when the admin names a priority, off at `0`.
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
//!
//! Two scopes (`runtime.realtime_scope`): `threads` keeps the session threads real-time all
//! the time ([`apply`]), which also puts every relayed message ahead of the box's other
//! processes; `pinholes` (the default) raises a session thread only for the span of a
//! [`Boost`], from its pinhole request to the release of the PORT/227 that waited for it.
//! The firewall thread, which does nothing but pinhole work, is real-time in both.

use tracing::info;

use crate::config::{AUTO_REALTIME_PRIORITY, RealtimePriority, RealtimeScope};

/// Why the policy could not be set, with what to do about it.
fn explain(priority: u8, error: &std::io::Error) -> std::io::Error {
    let hint = match error.raw_os_error() {
        Some(libc::EPERM) => format!(
            "needs CAP_SYS_NICE or an RLIMIT_RTPRIO of at least {priority} (systemd: \
             LimitRTPRIO={priority}) and, under the shipped systemd unit, a drop-in with \
             RestrictRealtime=no and SystemCallFilter=sched_setscheduler (see the comment in \
             ftp-alg.service); in a cgroup with the cpu controller, a real-time budget \
             (cpu.rt_runtime_us); or set runtime.realtime_priority = 0"
        ),
        _ => "set runtime.realtime_priority = 0 to run without it".to_owned(),
    };
    std::io::Error::new(
        error.kind(),
        format!("cannot switch to SCHED_FIFO priority {priority}: {error}; {hint}"),
    )
}

/// What `runtime.realtime_priority` comes to on this machine: the priority to use (`0`: the
/// normal scheduler). A fixed priority is checked and its refusal returned (the daemon does
/// not start without what the admin asked for); `"auto"` takes
/// [`AUTO_REALTIME_PRIORITY`] where the process may and otherwise the normal scheduler, and
/// logs which and why. With `realtime_scope = "threads"` and busy polling, `"auto"` stays
/// off: a real-time thread that spins would starve its CPU.
pub fn resolve(
    setting: RealtimePriority,
    scope: RealtimeScope,
    busy_poll: bool,
) -> std::io::Result<u8> {
    let priority = match setting {
        RealtimePriority::Fixed(priority) => {
            check(priority)?;
            return Ok(priority);
        }
        RealtimePriority::Auto => AUTO_REALTIME_PRIORITY,
    };
    if scope == RealtimeScope::Threads && busy_poll {
        info!(
            "runtime.realtime_priority = \"auto\": off, because realtime_scope = \"threads\" \
             and busy_poll_us are both set (a real-time thread that polls starves its CPU)"
        );
        return Ok(0);
    }
    match trial(priority) {
        Ok(()) => Ok(priority),
        Err(e) => {
            info!(
                reason = %e,
                "runtime.realtime_priority = \"auto\": the pinhole path runs with the normal \
                 scheduler, since this process may not use SCHED_FIFO {priority}; where other \
                 processes keep the CPUs busy, installs then wait for them now and then. To \
                 allow it: CAP_SYS_NICE or LimitRTPRIO={priority} (under the shipped unit also \
                 RestrictRealtime=no and SystemCallFilter=sched_setscheduler: see \
                 ftp-alg.service); to silence this: runtime.realtime_priority = 0"
            );
            Ok(0)
        }
    }
}

/// Makes the calling thread real-time at `priority` (1-99); `0` does nothing.
pub fn apply(priority: u8) -> std::io::Result<()> {
    if priority == 0 {
        return Ok(());
    }
    set(libc::SCHED_FIFO | libc::SCHED_RESET_ON_FORK, priority).map_err(|e| explain(priority, &e))
}

/// Checks that the process may use `priority` (1-99) for [`Boost`]s; `0` does nothing. The
/// daemon asks before it installs anything. The trial runs on a thread of its own, so that
/// no thread of the daemon is left with anything of it.
pub fn check(priority: u8) -> std::io::Result<()> {
    if priority == 0 {
        return Ok(());
    }
    trial(priority).map_err(|e| explain(priority, &e))
}

/// Whether a thread of this process may switch to `priority` (1-99), tried on a thread of
/// its own.
fn trial(priority: u8) -> std::io::Result<()> {
    std::thread::spawn(move || Boost::start(priority).map(drop))
        .join()
        .map_err(|_| std::io::Error::other("the real-time trial thread panicked"))?
}

/// The calling thread at `SCHED_FIFO` `priority` until this is dropped, then back to the
/// normal policy it had (its nice value kept): the span of one pinhole install and the
/// release of the reply that waited for it. Three system calls (read the policy, raise,
/// restore), about a µs each.
#[derive(Debug)]
pub struct Boost {
    previous: libc::c_int,
}

impl Boost {
    /// Raises the calling thread. A thread that is real-time already (`realtime_scope =
    /// "threads"`, or started so) is left alone: the error says so.
    pub fn start(priority: u8) -> std::io::Result<Self> {
        // SAFETY: pid 0 is the calling thread.
        let previous = unsafe { libc::sched_getscheduler(0) };
        if previous < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let previous = previous & !libc::SCHED_RESET_ON_FORK;
        if previous == libc::SCHED_FIFO || previous == libc::SCHED_RR {
            return Err(std::io::Error::other("the thread is real-time already"));
        }
        set(libc::SCHED_FIFO | libc::SCHED_RESET_ON_FORK, priority)?;
        Ok(Self { previous })
    }
}

thread_local! {
    /// Set once the kernel refused to clear this thread's reset-on-fork flag.
    static KEEPS_RESET_ON_FORK: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

impl Drop for Boost {
    fn drop(&mut self) {
        // Back to the normal class, and without the reset-on-fork flag so that threads this
        // one starts later inherit its nice value again. Only CAP_SYS_NICE may clear that
        // flag: real time by RLIMIT_RTPRIO (systemd's LimitRTPRIO=) gets EPERM for the whole
        // call, so the thread then returns to normal with the flag kept (from then on
        // directly), rather than stay real-time.
        if !KEEPS_RESET_ON_FORK.get() && set(self.previous, 0).is_ok() {
            return;
        }
        KEEPS_RESET_ON_FORK.set(true);
        let _ = set(self.previous | libc::SCHED_RESET_ON_FORK, 0);
    }
}

/// `sched_setscheduler` on the calling thread.
fn set(policy: libc::c_int, priority: u8) -> std::io::Result<()> {
    let param = libc::sched_param {
        sched_priority: libc::c_int::from(priority),
    };
    // SAFETY: pid 0 is the calling thread; `param` is a valid sched_param for the call.
    let rc = unsafe { libc::sched_setscheduler(0, policy, &raw const param) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
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

    /// Drops CAP_SYS_NICE (23) from the calling thread's effective set.
    fn drop_sys_nice() {
        crate::testing::drop_capability(23).expect("capset on this thread");
    }

    /// `Ok` when `result` says the process may use real time; on an unprivileged run, checks
    /// that the error says what is missing and returns `Err` (the test then has nothing to do).
    /// `Err` when real time is refused here (the test is then skipped, said on stderr), a
    /// failure under CI, which runs as root and must exercise it.
    fn privileged(result: std::io::Result<()>) -> Result<(), ()> {
        result.map_err(|e| {
            let text = e.to_string();
            assert!(text.contains("CAP_SYS_NICE"), "{text}");
            assert!(
                !crate::lab::preflight::in_ci(),
                "real-time tests cannot run under CI: {text}"
            );
            eprintln!("skipping a real-time test: {text}");
        })
    }

    #[test]
    fn a_boost_lasts_until_dropped_and_restores_the_normal_policy() {
        std::thread::spawn(|| {
            assert_eq!(policy(), libc::SCHED_OTHER);
            if privileged(check(5)).is_err() {
                return;
            }
            assert_eq!(
                policy(),
                libc::SCHED_OTHER,
                "check leaves the thread as it was"
            );
            let boost = Boost::start(5).expect("privileged, as check said");
            assert_eq!(policy(), libc::SCHED_FIFO);
            let child = std::thread::spawn(policy).join().expect("child thread");
            assert_eq!(child, libc::SCHED_OTHER, "reset on fork");
            drop(boost);
            assert_eq!(policy(), libc::SCHED_OTHER);
            // SAFETY: pid 0 is the calling thread.
            let raw = unsafe { libc::sched_getscheduler(0) };
            assert_eq!(
                raw & libc::SCHED_RESET_ON_FORK,
                0,
                "flag cleared when privileged"
            );
            // A real-time thread is not boosted (and so not demoted at the end).
            std::thread::spawn(|| {
                apply(5).expect("privileged");
                assert!(Boost::start(7).is_err());
                assert_eq!(policy(), libc::SCHED_FIFO);
            })
            .join()
            .expect("real-time thread");
            // The same without CAP_SYS_NICE (as under LimitRTPRIO=): still back to normal.
            let boost = Boost::start(5).expect("privileged");
            drop_sys_nice();
            drop(boost);
            assert_eq!(
                policy(),
                libc::SCHED_OTHER,
                "restored without the capability"
            );
        })
        .join()
        .expect("thread");
    }

    #[test]
    fn auto_uses_real_time_where_permitted_and_the_normal_scheduler_where_not() {
        std::thread::spawn(|| {
            let auto = |scope, busy| resolve(RealtimePriority::Auto, scope, busy);
            assert_eq!(
                resolve(RealtimePriority::Fixed(0), RealtimeScope::Pinholes, false).ok(),
                Some(0)
            );
            // Threads scope with busy polling: auto stays off even where permitted.
            assert_eq!(auto(RealtimeScope::Threads, true).ok(), Some(0));
            let permitted = check(AUTO_REALTIME_PRIORITY).is_ok();
            let want = if permitted { AUTO_REALTIME_PRIORITY } else { 0 };
            assert_eq!(auto(RealtimeScope::Pinholes, false).ok(), Some(want));
            assert_eq!(auto(RealtimeScope::Threads, false).ok(), Some(want));
            assert_eq!(policy(), libc::SCHED_OTHER, "resolving changes no thread");
            // Without the right to it (the shipped unit): auto falls back, a named priority
            // is refused with what to do.
            drop_sys_nice();
            let mut limit = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            // SAFETY: a valid rlimit to fill.
            assert_eq!(
                unsafe { libc::getrlimit(libc::RLIMIT_RTPRIO, &raw mut limit) },
                0
            );
            if limit.rlim_cur >= libc::rlim_t::from(AUTO_REALTIME_PRIORITY) {
                return; // RLIMIT_RTPRIO allows it without the capability
            }
            assert_eq!(auto(RealtimeScope::Pinholes, false).ok(), Some(0));
            assert_eq!(auto(RealtimeScope::Threads, false).ok(), Some(0));
            let err = resolve(RealtimePriority::Fixed(5), RealtimeScope::Pinholes, false)
                .expect_err("a named priority without the right to it");
            assert!(err.to_string().contains("LimitRTPRIO=5"), "{err}");
        })
        .join()
        .expect("thread");
    }

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
            if privileged(apply(5)).is_err() {
                return;
            }
            assert_eq!(policy(), libc::SCHED_FIFO);
            let child = std::thread::spawn(policy).join().expect("child thread");
            assert_eq!(child, libc::SCHED_OTHER, "reset on fork");
            let out = std::process::Command::new("chrt")
                .args(["-p", &std::process::id().to_string()])
                .output();
            // The process's main thread was never touched.
            let out = out.expect("chrt (util-linux)");
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(text.contains("SCHED_OTHER"), "{text}");
        })
        .join()
        .expect("thread");
    }
}
