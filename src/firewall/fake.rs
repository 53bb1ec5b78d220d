//! An in-memory [`Firewall`] for unit tests of the layers above (sessions, proxy).
//!
//! It behaves like the kernel backend where the callers can tell: a pinhole becomes live
//! only when `open` resolves (after the configured ACK delay), opening a live pinhole again
//! keeps one copy, closing a pinhole that is gone is not an error, and a pinhole that mixes
//! address families is refused. Time is `tokio::time`, so tests with a paused clock stay
//! deterministic.

use std::collections::VecDeque;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use super::{Firewall, FirewallError, Pinhole};

/// An in-memory firewall; clones share one state.
#[derive(Debug, Clone, Default)]
pub struct FakeFirewall {
    state: Arc<Mutex<State>>,
}

#[derive(Debug, Default)]
struct State {
    live: Vec<Pinhole>,
    opened: Vec<(Pinhole, Duration)>,
    closed: Vec<Pinhole>,
    open_failures: VecDeque<FirewallError>,
    close_failures: VecDeque<FirewallError>,
    open_delay: Duration,
    close_delay: Duration,
    panic_next_open: bool,
    in_flight: usize,
    /// What `connection_alive` and `peers_connected` answer (None: true, a transfer is
    /// assumed to run).
    connections_alive: Option<bool>,
}

impl FakeFirewall {
    /// A fake with no pinholes, no delay and no scheduled failures.
    pub fn new() -> Self {
        Self::default()
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Makes `connection_alive` and `peers_connected` answer `alive` (by default true).
    pub fn set_connections_alive(&self, alive: bool) {
        self.state().connections_alive = Some(alive);
    }

    /// Pinholes currently installed, in the order they were first opened.
    pub fn live(&self) -> Vec<Pinhole> {
        self.state().live.clone()
    }

    /// Every successful `open`, with its timeout, in order (re-opens included).
    pub fn opened(&self) -> Vec<(Pinhole, Duration)> {
        self.state().opened.clone()
    }

    /// Every successful `close`, in order (including closes of pinholes already gone).
    pub fn closed(&self) -> Vec<Pinhole> {
        self.state().closed.clone()
    }

    /// How many `open` calls are waiting for their (delayed) acknowledgement.
    pub fn in_flight(&self) -> usize {
        self.state().in_flight
    }

    /// Makes every later `open` wait this long before it is acknowledged; the pinhole is
    /// live only after the wait.
    pub fn set_open_delay(&self, delay: Duration) {
        self.state().open_delay = delay;
    }

    /// Makes the next `open` panic, as a bug in the layers above would panic their task.
    pub fn panic_on_next_open(&self) {
        self.state().panic_next_open = true;
    }

    /// Makes every later `close` wait this long for its answer (the pinhole goes at once).
    pub fn set_close_delay(&self, delay: Duration) {
        self.state().close_delay = delay;
    }

    /// Makes the next `open` fail with a kernel-style error (queued: call twice to fail two).
    pub fn fail_next_open(&self) {
        self.fail_next_open_with(FirewallError::Kernel {
            what: "add an element to set passive_pin (fake)".into(),
            errno: libc::EIO,
            message: "injected failure".into(),
        });
    }

    /// Makes the next `open` fail with `error` (queued after earlier scheduled failures).
    pub fn fail_next_open_with(&self, error: FirewallError) {
        self.state().open_failures.push_back(error);
    }

    /// Makes the next `close` fail with `error`; the pinhole stays live.
    pub fn fail_next_close_with(&self, error: FirewallError) {
        self.state().close_failures.push_back(error);
    }

    /// Removes a pinhole the way the kernel does (consumed by its connection, or expired),
    /// without a `close`. Returns whether it was live.
    pub fn consume(&self, pinhole: &Pinhole) -> bool {
        let mut state = self.state();
        let before = state.live.len();
        state.live.retain(|p| p != pinhole);
        state.live.len() != before
    }
}

/// Decrements `in_flight` when an `open` ends, also when its future is dropped.
struct InFlight<'a>(&'a FakeFirewall);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        let mut state = self.0.state();
        state.in_flight = state.in_flight.saturating_sub(1);
    }
}

impl Firewall for FakeFirewall {
    async fn open(&self, pinhole: Pinhole, timeout: Duration) -> Result<(), FirewallError> {
        if !pinhole.is_single_family() {
            return Err(FirewallError::MixedFamilies(pinhole));
        }
        if std::mem::take(&mut self.state().panic_next_open) {
            panic!("injected panic in open (FakeFirewall::panic_on_next_open)");
        }
        let (delay, failure) = {
            let mut state = self.state();
            state.in_flight += 1;
            (state.open_delay, state.open_failures.pop_front())
        };
        let _in_flight = InFlight(self);
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        if let Some(error) = failure {
            return Err(error);
        }
        let mut state = self.state();
        state.opened.push((pinhole, timeout));
        if !state.live.contains(&pinhole) {
            state.live.push(pinhole);
        }
        Ok(())
    }

    async fn close(&self, pinhole: Pinhole) -> Result<(), FirewallError> {
        // As the kernel backend: the removal is under way from the first poll; only its
        // answer waits (a caller that gives up does not undo it).
        let (result, delay) = {
            let mut state = self.state();
            let result = match state.close_failures.pop_front() {
                Some(error) => Err(error),
                None => {
                    state.live.retain(|p| *p != pinhole);
                    state.closed.push(pinhole);
                    Ok(())
                }
            };
            (result, state.close_delay)
        };
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        result
    }

    async fn connection_alive(&self, _pinhole: Pinhole) -> bool {
        self.state().connections_alive.unwrap_or(true)
    }

    async fn peers_connected(&self, _client: IpAddr, _server: IpAddr, _control: [u16; 2]) -> bool {
        self.state().connections_alive.unwrap_or(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn passive(port: u16) -> Pinhole {
        Pinhole::passive(
            "10.0.0.2".parse().expect("address"),
            "203.0.113.2".parse().expect("address"),
            port,
        )
    }

    #[tokio::test(start_paused = true)]
    async fn pinhole_is_live_only_after_the_delayed_ack() {
        let fw = FakeFirewall::new();
        fw.set_open_delay(Duration::from_millis(300));
        let task = {
            let fw = fw.clone();
            tokio::spawn(async move { fw.open(passive(1), Duration::from_secs(5)).await })
        };
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(fw.live().is_empty());
        assert_eq!(fw.in_flight(), 1);
        task.await.expect("join").expect("open");
        assert_eq!(fw.live(), vec![passive(1)]);
        assert_eq!(fw.in_flight(), 0);
    }

    #[tokio::test]
    async fn scheduled_failure_hits_one_open_only() {
        let fw = FakeFirewall::new();
        fw.fail_next_open_with(FirewallError::PermissionDenied);
        assert_eq!(
            fw.open(passive(1), Duration::from_secs(1)).await,
            Err(FirewallError::PermissionDenied)
        );
        assert!(fw.live().is_empty());
        fw.open(passive(1), Duration::from_secs(1))
            .await
            .expect("second open");
        fw.open(passive(1), Duration::from_secs(1))
            .await
            .expect("re-open");
        assert_eq!(fw.live(), vec![passive(1)]);
        assert_eq!(fw.opened().len(), 2);
    }

    #[tokio::test]
    async fn close_is_idempotent_and_mixed_families_are_refused() {
        let fw = FakeFirewall::new();
        fw.open(passive(1), Duration::from_secs(1))
            .await
            .expect("open");
        assert!(fw.consume(&passive(1)));
        fw.close(passive(1))
            .await
            .expect("close of a consumed pinhole");
        fw.close(passive(1)).await.expect("second close");
        assert_eq!(fw.closed().len(), 2);
        let mixed = Pinhole::passive(
            "10.0.0.2".parse().expect("address"),
            "2001:db8::2".parse().expect("address"),
            1,
        );
        assert_eq!(
            fw.open(mixed, Duration::from_secs(1)).await,
            Err(FirewallError::MixedFamilies(mixed))
        );
    }
}
