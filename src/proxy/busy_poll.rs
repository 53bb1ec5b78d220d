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
//! instead of blocking, so every iteration is one non-blocking `epoll_wait`.

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

/// The spinner of one session thread: sleeps until traffic, then polls without sleeping
/// until `window` has passed since the last bytes. Spawn it on the thread it serves; it
/// never ends.
pub(super) async fn spin(window: Duration) {
    loop {
        std::future::poll_fn(|cx| {
            if window_open(window) {
                Poll::Ready(())
            } else {
                SPINNER.with(|s| *s.borrow_mut() = Some(cx.waker().clone()));
                Poll::Pending
            }
        })
        .await;
        while window_open(window) {
            tokio::task::yield_now().await;
        }
    }
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
        });
    }
}
