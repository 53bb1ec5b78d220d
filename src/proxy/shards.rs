//! Where sessions run: a fixed set of threads, each with its own single-threaded runtime.
//!
//! A session lives on one thread from its first byte to its last: the control socket's
//! readiness, the relay and the pinhole call all happen where the socket is registered, with
//! no hand-off or work stealing between threads (on a small box those wake-ups cost about a
//! fifth of the daemon's CPU per transfer). New sessions go to the threads in turn, so many
//! sessions still use every CPU.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::runtime::Handle;
use tokio::sync::oneshot;
use tracing::warn;

/// How long a stopping session thread waits for its blocking helpers.
const STOP_GRACE: Duration = Duration::from_secs(1);

/// The session threads. The first is the caller's own runtime; the others are started here
/// and stopped (their remaining sessions dropped) when this is dropped, which must happen
/// outside them (the daemon owns this; the accept loops hold a [`Spawner`]).
#[derive(Debug)]
pub struct Shards {
    spawner: Spawner,
    threads: Vec<(oneshot::Sender<()>, JoinHandle<()>)>,
}

/// Hands new sessions to the session threads in turn.
#[derive(Debug, Clone)]
pub struct Spawner {
    handles: Arc<[Handle]>,
    next: Arc<AtomicUsize>,
}

impl Shards {
    /// `count` session threads in all: the current runtime and `count - 1` new ones (at
    /// least the current runtime), each busy-polling for `busy_poll` after traffic if set,
    /// the new ones at real-time priority `realtime` if not 0 (see [`crate::realtime`]; the
    /// caller sets its own thread). Must be called inside a runtime.
    pub fn start(count: usize, busy_poll: Option<Duration>, realtime: u8) -> std::io::Result<Self> {
        let mut handles = vec![Handle::current()];
        let mut threads = Vec::new();
        for index in 1..count.max(1) {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            handles.push(runtime.handle().clone());
            let (stop, stopped) = oneshot::channel::<()>();
            let (ready_tx, ready) = std::sync::mpsc::sync_channel(1);
            let thread = std::thread::Builder::new()
                .name(format!("ftp-alg-s{index}"))
                .spawn(move || {
                    let setup = crate::realtime::apply(realtime);
                    let ok = setup.is_ok();
                    let _ = ready_tx.send(setup);
                    if ok {
                        // Serves spawned sessions until told to stop (or the sender is gone).
                        let _ = runtime.block_on(stopped);
                    }
                    runtime.shutdown_timeout(STOP_GRACE);
                })?;
            threads.push((stop, thread));
            // On error the threads started so far see their stop sender dropped, and end.
            ready
                .recv()
                .map_err(|_| std::io::Error::other("a session thread died while starting"))??;
        }
        if let Some(window) = busy_poll {
            for handle in &handles {
                drop(handle.spawn(super::busy_poll::spin(window)));
            }
        }
        Ok(Self {
            spawner: Spawner {
                handles: handles.into(),
                next: Arc::new(AtomicUsize::new(0)),
            },
            threads,
        })
    }

    /// What hands sessions to these threads.
    pub fn spawner(&self) -> Spawner {
        self.spawner.clone()
    }
}

impl Spawner {
    /// How many session threads there are.
    pub fn threads(&self) -> usize {
        self.handles.len()
    }

    /// Runs `task` on the next thread in turn.
    pub fn spawn<T>(&self, task: T)
    where
        T: Future<Output = ()> + Send + 'static,
    {
        let index = self.next.fetch_add(1, Ordering::Relaxed) % self.handles.len();
        drop(self.handles[index].spawn(task));
    }
}

impl Drop for Shards {
    fn drop(&mut self) {
        // All told first, so that they wind down together: within one STOP_GRACE in all.
        let threads: Vec<_> = self
            .threads
            .drain(..)
            .map(|(stop, thread)| {
                let _ = stop.send(());
                thread
            })
            .collect();
        for thread in threads {
            if thread.join().is_err() {
                warn!("a session thread panicked while stopping");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;
    use std::sync::Mutex;

    #[test]
    fn sessions_go_to_every_thread_in_turn_and_stay_there() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async {
            let owner = Shards::start(3, None, 0).expect("shards");
            let shards = owner.spawner();
            assert_eq!(shards.threads(), 3);
            let seen = Arc::new(Mutex::new(Vec::new()));
            let (done_tx, mut done_rx) = tokio::sync::mpsc::channel(6);
            for _ in 0..6 {
                let (seen, done) = (seen.clone(), done_tx.clone());
                shards.spawn(async move {
                    let before = std::thread::current().id();
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    // A current-thread runtime never moves a task to another thread.
                    assert_eq!(before, std::thread::current().id());
                    seen.lock().expect("lock").push(before);
                    let _ = done.send(()).await;
                });
            }
            for _ in 0..6 {
                done_rx.recv().await.expect("task finished");
            }
            let seen = seen.lock().expect("lock").clone();
            let threads: HashSet<_> = seen.iter().collect();
            assert_eq!(threads.len(), 3, "6 sessions over 3 threads: {seen:?}");
            assert!(threads.contains(&std::thread::current().id()));
        });
    }

    #[test]
    fn dropping_stops_the_threads_and_their_sessions() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let dropped = Arc::new(Mutex::new(0));
        runtime.block_on(async {
            let owner = Shards::start(2, None, 0).expect("shards");
            let shards = owner.spawner();
            struct Guard(Arc<Mutex<i32>>);
            impl Drop for Guard {
                fn drop(&mut self) {
                    *self.0.lock().expect("lock") += 1;
                }
            }
            // The second spawn lands on the extra thread and never ends by itself.
            shards.spawn(async {});
            let guard = Guard(dropped.clone());
            shards.spawn(async move {
                let _guard = guard;
                std::future::pending::<()>().await;
            });
            tokio::time::sleep(Duration::from_millis(20)).await;
            drop(owner);
        });
        assert_eq!(*dropped.lock().expect("lock"), 1);
    }
}
