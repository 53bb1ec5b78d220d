//! Busy polling (opt-in, `runtime.busy_poll_us`): after a control socket of a session thread
//! has delivered bytes, that thread keeps polling its sockets without sleeping for a short
//! window, so the reply that usually follows within microseconds is relayed at once instead
//! of after a wake-up.
//!
//! A sleeping thread is woken by an interrupt to an idle CPU; inside a virtual machine that
//! costs tens of microseconds per relayed message (the same reason HAProxy has
//! `busy-polling` and the kernel `net.core.busy_poll`). The price is CPU: the thread runs flat
//! out for the window after every message, so it is off by default. An idle gateway does not
//! spin: the window only opens on traffic.
//!
//! How: each session thread runs a spinner task. A read that returns bytes stamps the thread's
//! last activity and wakes the spinner, which then yields in a loop until the window has
//! passed. A current-thread runtime with a yielded task polls its sockets with a zero timeout
//! instead of blocking, so every iteration is one non-blocking `epoll_wait`, followed by a
//! `sched_yield`. It spins only for a thread with at most [`SPIN_MAX_SESSIONS`] sessions and
//! while the machine has an idle CPU (runnable threads, from `/proc/loadavg`, at most the CPU
//! count): with many sessions a sleeping thread collects several messages per wake-up, and on
//! a saturated box spinning would take CPU from the work that waits for it.

use std::cell::{Cell, RefCell};
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

thread_local! {
    /// When a watched socket of this thread last delivered bytes.
    static LAST_ACTIVITY: Cell<Option<Instant>> = const { Cell::new(None) };
    /// The spinner of this thread, while it sleeps.
    static SPINNER: RefCell<Option<Waker>> = const { RefCell::new(None) };
}

/// Marks traffic on this thread: opens (or extends) its busy-poll window.
fn activity() {
    LAST_ACTIVITY.with(|last| last.set(Some(Instant::now())));
    if let Some(waker) = SPINNER.with(RefCell::take) {
        waker.wake();
    }
}

/// Whether this thread's window is open.
fn window_open(window: Duration) -> bool {
    LAST_ACTIVITY
        .with(Cell::get)
        .is_some_and(|t| t.elapsed() < window)
}

/// The most sessions a thread may hold and still spin. With more, events arrive often enough
/// that the thread seldom sleeps long, and one wake-up collects several sessions' messages
/// (measured on 2 vCPUs: spinning cost 15-30 % of the transfers/s with 2-16 sessions per
/// thread, and gained 20-50 % with one).
const SPIN_MAX_SESSIONS: usize = 1;

thread_local! {
    /// Sessions running on this thread.
    static SESSIONS: Cell<usize> = const { Cell::new(0) };
}

/// Whether this thread holds few enough sessions to spin for them.
fn few_sessions() -> bool {
    SESSIONS.with(Cell::get) <= SPIN_MAX_SESSIONS
}

/// Counts one session on the current thread for as long as it lives (create and drop it on
/// the session's own thread).
#[derive(Debug)]
pub(super) struct Enrolled(());

impl Enrolled {
    /// Counts a session on this thread.
    pub(super) fn new() -> Self {
        SESSIONS.with(|n| n.set(n.get() + 1));
        Self(())
    }
}

impl Drop for Enrolled {
    fn drop(&mut self) {
        SESSIONS.with(|n| n.set(n.get().saturating_sub(1)));
    }
}

/// How often a session thread looks at the machine's run queue.
const LOAD_CHECK: Duration = Duration::from_millis(10);

thread_local! {
    /// When this thread last read the run queue, and whether every CPU was taken then.
    static SATURATION: Cell<Option<(Instant, bool)>> = const { Cell::new(None) };
}

/// Whether more threads are runnable than there are CPUs (read at most every
/// [`LOAD_CHECK`]): then spinning would take a CPU from work that waits for one, and
/// sleeping lets one wake-up collect the events of many sessions at once.
fn saturated() -> bool {
    let now = Instant::now();
    if let Some((at, saturated)) = SATURATION.with(Cell::get)
        && now.duration_since(at) < LOAD_CHECK
    {
        return saturated;
    }
    // available_parallelism reads the affinity mask and cgroup files: once per process.
    static CPUS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    let cpus = *CPUS.get_or_init(|| {
        std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
    });
    let loadavg = std::fs::read_to_string("/proc/loadavg").ok();
    let saturated = more_runnable_than(loadavg.as_deref(), cpus);
    SATURATION.with(|s| s.set(Some((now, saturated))));
    saturated
}

/// Whether `/proc/loadavg` shows more runnable threads than `cpus`. Unreadable (systemd's
/// `ProcSubset=pid` hides it): an idle CPU cannot be told from a busy one, so never spin.
fn more_runnable_than(loadavg: Option<&str>, cpus: usize) -> bool {
    match loadavg.and_then(runnable) {
        Some(running) => running > cpus,
        None => {
            static WARNED: std::sync::Once = std::sync::Once::new();
            WARNED.call_once(|| {
                tracing::warn!(
                    "runtime.busy_poll_us: /proc/loadavg is unreadable (under the shipped unit, \
                     ProcSubset=pid hides it), so busy polling stays off; set ProcSubset=all \
                     in a drop-in to use it"
                );
            });
            true
        }
    }
}

/// The number of runnable threads in `/proc/loadavg` ("0.50 0.40 0.30 3/250 12345": 3).
fn runnable(loadavg: &str) -> Option<usize> {
    loadavg
        .split_whitespace()
        .nth(3)?
        .split('/')
        .next()?
        .parse()
        .ok()
}

/// The spinner of one session thread: sleeps until traffic, then polls without sleeping
/// until `window` has passed since the last bytes, unless the machine is saturated. Spawn it on the thread it serves; it
/// never ends.
pub(super) async fn spin(window: Duration) {
    loop {
        std::future::poll_fn(|cx| {
            if spin_wanted(window) {
                Poll::Ready(())
            } else {
                SPINNER.with(|s| *s.borrow_mut() = Some(cx.waker().clone()));
                Poll::Pending
            }
        })
        .await;
        while spin_wanted(window) {
            tokio::task::yield_now().await;
            // With another thread runnable on this CPU, let it run first.
            std::thread::yield_now();
        }
    }
}

/// Whether this thread should poll instead of sleeping now.
fn spin_wanted(window: Duration) -> bool {
    window_open(window) && few_sessions() && !saturated()
}

/// A stream whose reads open its thread's busy-poll window (when `busy` is set).
#[derive(Debug)]
pub(super) struct Watched<S> {
    /// The stream.
    pub(super) inner: S,
    /// Whether busy polling is on.
    pub(super) busy: bool,
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if self.busy && matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            activity();
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
    }

    #[test]
    fn the_run_queue_is_read_from_loadavg() {
        assert_eq!(runnable("0.50 0.40 0.30 3/250 12345\n"), Some(3));
        assert_eq!(runnable("27.66 12.62 6.99 64/412 999"), Some(64));
        assert_eq!(runnable("0.50 0.40"), None);
        assert_eq!(runnable("a b c x/y z"), None);
        assert!(
            std::fs::read_to_string("/proc/loadavg")
                .ok()
                .as_deref()
                .and_then(runnable)
                .is_some()
        );
    }

    #[test]
    fn spins_only_while_a_cpu_is_idle_and_never_when_it_cannot_tell() {
        assert!(!more_runnable_than(Some("0.50 0.40 0.30 2/250 1"), 2));
        assert!(more_runnable_than(Some("0.50 0.40 0.30 3/250 1"), 2));
        // Hidden by ProcSubset=pid, or garbled: treated as saturated.
        assert!(more_runnable_than(None, 2));
        assert!(more_runnable_than(Some("garbled"), 64));
    }

    #[test]
    fn reads_open_the_window_and_it_closes_again() {
        runtime().block_on(async {
            let window = Duration::from_millis(30);
            tokio::spawn(spin(window));
            assert!(!window_open(window), "no traffic yet");
            let (mut a, b) = tokio::io::duplex(64);
            let mut b = Watched {
                inner: b,
                busy: true,
            };
            a.write_all(b"NOOP\r\n").await.expect("write");
            let mut line = [0u8; 6];
            b.read_exact(&mut line).await.expect("read");
            assert!(window_open(window), "bytes read open the window");
            tokio::time::sleep(Duration::from_millis(60)).await;
            assert!(!window_open(window), "the window closes without traffic");
            // The spinner is asleep again: it left its waker for the next bytes.
            assert!(SPINNER.with(|s| s.borrow().is_some()));
        });
    }

    #[test]
    fn inside_the_window_the_thread_polls_instead_of_sleeping() {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicU64, Ordering};
        let parks = Arc::new(AtomicU64::new(0));
        let counter = parks.clone();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .on_thread_park(move || {
                counter.fetch_add(1, Ordering::Relaxed);
            })
            .build()
            .expect("runtime");
        runtime.block_on(async {
            pretend_saturated(false);
            let window = Duration::from_millis(200);
            tokio::spawn(spin(window));
            tokio::task::yield_now().await;
            // No traffic: waiting for a timer puts the thread to sleep.
            let before = parks.load(Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(5)).await;
            assert!(
                parks.load(Ordering::Relaxed) > before,
                "an idle thread sleeps"
            );
            assert!(SPINNER.with(|s| s.borrow().is_some()), "spinner asleep");
            // Traffic: for the window, the same wait is spent polling, never sleeping.
            activity();
            let before = parks.load(Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(5)).await;
            assert_eq!(
                parks.load(Ordering::Relaxed),
                before,
                "a busy-polling thread does not sleep"
            );
            // After the window the spinner gives the CPU back.
            tokio::time::sleep(window).await;
            tokio::task::yield_now().await;
            assert!(
                SPINNER.with(|s| s.borrow().is_some()),
                "spinner asleep again"
            );
            let before = parks.load(Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(5)).await;
            assert!(
                parks.load(Ordering::Relaxed) > before,
                "idle again: the thread sleeps"
            );
            // More sessions than spinning pays for: traffic does not make the thread spin.
            let sessions: Vec<Enrolled> =
                (0..=SPIN_MAX_SESSIONS).map(|_| Enrolled::new()).collect();
            activity();
            let (before, started) = (parks.load(Ordering::Relaxed), Instant::now());
            tokio::time::sleep(Duration::from_millis(5)).await;
            assert!(
                parks.load(Ordering::Relaxed) > before,
                "many sessions: the thread sleeps"
            );
            assert!(
                started.elapsed() < window / 2,
                "a spinner that does not spin must not hold the thread either: {:?}",
                started.elapsed()
            );
            drop(sessions);
            assert!(few_sessions());
            // A saturated machine: traffic does not make the thread spin.
            pretend_saturated(true);
            activity();
            let before = parks.load(Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(5)).await;
            assert!(
                parks.load(Ordering::Relaxed) > before,
                "every CPU taken: the thread sleeps"
            );
        });
    }

    /// Fixes this thread's view of the machine for an hour (the test box may be busy).
    fn pretend_saturated(saturated: bool) {
        let later = Instant::now() + Duration::from_secs(3600);
        SATURATION.with(|s| s.set(Some((later, saturated))));
    }
}
