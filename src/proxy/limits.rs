//! Per-client admission: concurrent sessions and new sessions per second, per client address
//! (an IPv6 client per prefix, a /64 by default: one host may use any address of its /64).
//!
//! One hostile or broken client must not take the gateway's session slots from everyone
//! else. The state is one small entry per recently active client address; [`ClientLimiter::prune`]
//! drops those without sessions whose token bucket is full again, so memory follows the
//! number of clients.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Why a client was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// Too many concurrent sessions from this address.
    #[error("too many sessions from your address (limit {0}); close some and retry")]
    Concurrent(usize),
    /// Too many new sessions per second from this address.
    #[error("too many new sessions from your address (limit {0}/s); slow down")]
    Rate(u32),
}

#[derive(Debug)]
struct Client {
    active: usize,
    tokens: f64,
    refilled: Instant,
}

/// Admission control per client address.
#[derive(Debug)]
pub struct ClientLimiter {
    max_concurrent: usize,
    per_second: u32,
    prefix_v6: u8,
    clients: Mutex<HashMap<IpAddr, Client>>,
}

/// Holds one admitted session's place; dropping it releases the place.
#[derive(Debug)]
pub struct Admission {
    limiter: Arc<ClientLimiter>,
    client: IpAddr,
}

impl ClientLimiter {
    /// A limiter with the given per-client limits; IPv6 clients count per `prefix_v6` bits.
    pub fn new(max_concurrent: usize, per_second: u32, prefix_v6: u8) -> Self {
        Self {
            max_concurrent,
            per_second,
            prefix_v6: prefix_v6.min(128),
            clients: Mutex::new(HashMap::new()),
        }
    }

    /// Admits a new session from `client` at `now`, or says why not.
    pub fn admit(self: &Arc<Self>, client: IpAddr, now: Instant) -> Result<Admission, Rejection> {
        let client = self.key(client);
        let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        let rate = f64::from(self.per_second);
        let entry = clients.entry(client).or_insert(Client {
            active: 0,
            tokens: rate,
            refilled: now,
        });
        let elapsed = now.saturating_duration_since(entry.refilled).as_secs_f64();
        entry.tokens = (entry.tokens + elapsed * rate).min(rate);
        entry.refilled = now;
        if entry.active >= self.max_concurrent {
            return Err(Rejection::Concurrent(self.max_concurrent));
        }
        if entry.tokens < 1.0 {
            return Err(Rejection::Rate(self.per_second));
        }
        entry.tokens -= 1.0;
        entry.active += 1;
        Ok(Admission {
            limiter: self.clone(),
            client,
        })
    }

    /// What a client counts as: its IPv4 address (also when IPv4-mapped), or its IPv6
    /// prefix.
    fn key(&self, client: IpAddr) -> IpAddr {
        match client.to_canonical() {
            IpAddr::V6(v6) => {
                let bits = u32::from(self.prefix_v6);
                let mask = u128::MAX.checked_shl(128 - bits).unwrap_or(0);
                IpAddr::V6(Ipv6Addr::from(u128::from(v6) & mask))
            }
            v4 => v4,
        }
    }

    /// Client addresses currently tracked.
    pub fn tracked(&self) -> usize {
        self.clients.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    fn release(&self, client: IpAddr) {
        let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(entry) = clients.get_mut(&client) {
            entry.active = entry.active.saturating_sub(1);
        }
    }

    /// Forgets clients without sessions whose bucket has refilled: they are
    /// indistinguishable from new ones. Keeping the others is what makes the rate limit
    /// hold for a client that opens and closes sessions one after another.
    pub fn prune(&self, now: Instant) {
        let rate = f64::from(self.per_second);
        let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        clients.retain(|_, c| {
            let elapsed = now.saturating_duration_since(c.refilled).as_secs_f64();
            c.active > 0 || c.tokens + elapsed * rate < rate
        });
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        self.limiter.release(self.client);
    }
}

/// A budget of log lines: at most `burst` per `window`, the rest counted and reported with
/// the next line that is written. Connections refused at admission come as fast as a client
/// can open them; a line each would flood the journal, whose own rate limit then drops the
/// daemon's other lines with them.
#[derive(Debug)]
pub struct LogBudget {
    burst: u32,
    window: std::time::Duration,
    state: Mutex<BudgetState>,
}

#[derive(Debug)]
struct BudgetState {
    window_start: Option<Instant>,
    used: u32,
    suppressed: u64,
}

impl LogBudget {
    /// At most `burst` lines per `window`.
    pub fn new(burst: u32, window: std::time::Duration) -> Self {
        Self {
            burst,
            window,
            state: Mutex::new(BudgetState {
                window_start: None,
                used: 0,
                suppressed: 0,
            }),
        }
    }

    /// `Some(n)` if a line may be written now, `n` being the lines left out since the last
    /// one written; `None` if this one is to be left out (and counted).
    pub fn take(&self, now: Instant) -> Option<u64> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let expired = state
            .window_start
            .is_none_or(|start| now.saturating_duration_since(start) >= self.window);
        if expired {
            state.window_start = Some(now);
            state.used = 0;
        }
        if state.used < self.burst {
            state.used += 1;
            Some(std::mem::take(&mut state.suppressed))
        } else {
            state.suppressed += 1;
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn addr(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn concurrent_sessions_per_client_are_capped_and_released() {
        let limiter = Arc::new(ClientLimiter::new(2, 100, 64));
        let now = Instant::now();
        let a = limiter.admit(addr("10.0.0.2"), now).unwrap();
        let _b = limiter.admit(addr("10.0.0.2"), now).unwrap();
        assert_eq!(
            limiter.admit(addr("10.0.0.2"), now).unwrap_err(),
            Rejection::Concurrent(2)
        );
        // Another client is not affected.
        let _c = limiter.admit(addr("10.0.0.3"), now).unwrap();
        drop(a);
        assert!(limiter.admit(addr("10.0.0.2"), now).is_ok());
    }

    #[test]
    fn the_log_budget_leaves_out_lines_past_its_burst_and_reports_them() {
        let budget = LogBudget::new(2, std::time::Duration::from_secs(1));
        let t0 = Instant::now();
        assert_eq!(budget.take(t0), Some(0));
        assert_eq!(budget.take(t0), Some(0));
        assert_eq!(budget.take(t0), None);
        assert_eq!(
            budget.take(t0 + std::time::Duration::from_millis(999)),
            None
        );
        // A new window: the first line reports the two left out.
        let t1 = t0 + std::time::Duration::from_secs(1);
        assert_eq!(budget.take(t1), Some(2));
        assert_eq!(budget.take(t1), Some(0));
        assert_eq!(budget.take(t1), None);
    }

    #[test]
    fn new_sessions_per_second_are_rate_limited_and_refill() {
        let limiter = Arc::new(ClientLimiter::new(1000, 3, 64));
        let start = Instant::now();
        let held: Vec<_> = (0..3)
            .map(|_| limiter.admit(addr("10.0.0.2"), start).unwrap())
            .collect();
        assert_eq!(
            limiter.admit(addr("10.0.0.2"), start).unwrap_err(),
            Rejection::Rate(3)
        );
        let later = start + Duration::from_millis(400);
        assert!(limiter.admit(addr("10.0.0.2"), later).is_ok());
        drop(held);
    }

    #[test]
    fn closing_sessions_does_not_reset_the_rate_limit() {
        let limiter = Arc::new(ClientLimiter::new(1000, 2, 64));
        let now = Instant::now();
        for _ in 0..2 {
            drop(limiter.admit(addr("10.0.0.2"), now).unwrap());
        }
        limiter.prune(now);
        assert_eq!(
            limiter.admit(addr("10.0.0.2"), now).unwrap_err(),
            Rejection::Rate(2)
        );
    }

    #[test]
    fn idle_clients_are_forgotten_once_their_bucket_is_full() {
        let limiter = Arc::new(ClientLimiter::new(4, 4, 64));
        let now = Instant::now();
        drop(limiter.admit(addr("10.0.0.2"), now).unwrap());
        limiter.prune(now);
        assert_eq!(limiter.tracked(), 1);
        limiter.prune(now + Duration::from_secs(1));
        assert_eq!(limiter.tracked(), 0);
    }

    #[test]
    fn an_ipv6_client_counts_per_prefix_and_an_ipv4_mapped_one_as_ipv4() {
        let limiter = Arc::new(ClientLimiter::new(2, 100, 64));
        let now = Instant::now();
        let _a = limiter.admit(addr("2001:db8:1:2::1"), now).unwrap();
        let _b = limiter.admit(addr("2001:db8:1:2:ffff::9"), now).unwrap();
        // A third address of the same /64 is the same host.
        assert_eq!(
            limiter.admit(addr("2001:db8:1:2::abcd"), now).unwrap_err(),
            Rejection::Concurrent(2)
        );
        // The next /64 is another client.
        assert!(limiter.admit(addr("2001:db8:1:3::1"), now).is_ok());
        let _c = limiter.admit(addr("10.0.0.2"), now).unwrap();
        let _d = limiter.admit(addr("::ffff:10.0.0.2"), now).unwrap();
        assert!(limiter.admit(addr("10.0.0.2"), now).is_err());
        // Per address when asked.
        let exact = Arc::new(ClientLimiter::new(1, 100, 128));
        let _e = exact.admit(addr("2001:db8::1"), now).unwrap();
        assert!(exact.admit(addr("2001:db8::2"), now).is_ok());
        assert!(exact.admit(addr("2001:db8::1"), now).is_err());
    }
}
