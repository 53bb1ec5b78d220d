//! Per-client admission: concurrent sessions and new sessions per second, per client address.
//!
//! One hostile or broken client must not take the gateway's session slots from everyone
//! else. The state is one small entry per recently active client address; [`ClientLimiter::prune`]
//! drops those without sessions whose token bucket is full again, so memory follows the
//! number of clients.

use std::collections::HashMap;
use std::net::IpAddr;
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
    clients: Mutex<HashMap<IpAddr, Client>>,
}

/// Holds one admitted session's place; dropping it releases the place.
#[derive(Debug)]
pub struct Admission {
    limiter: Arc<ClientLimiter>,
    client: IpAddr,
}

impl ClientLimiter {
    /// A limiter with the given per-address limits.
    pub fn new(max_concurrent: usize, per_second: u32) -> Self {
        Self {
            max_concurrent,
            per_second,
            clients: Mutex::new(HashMap::new()),
        }
    }

    /// Admits a new session from `client` at `now`, or says why not.
    pub fn admit(self: &Arc<Self>, client: IpAddr, now: Instant) -> Result<Admission, Rejection> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn addr(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn concurrent_sessions_per_client_are_capped_and_released() {
        let limiter = Arc::new(ClientLimiter::new(2, 100));
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
    fn new_sessions_per_second_are_rate_limited_and_refill() {
        let limiter = Arc::new(ClientLimiter::new(1000, 3));
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
        let limiter = Arc::new(ClientLimiter::new(1000, 2));
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
        let limiter = Arc::new(ClientLimiter::new(4, 4));
        let now = Instant::now();
        drop(limiter.admit(addr("10.0.0.2"), now).unwrap());
        limiter.prune(now);
        assert_eq!(limiter.tracked(), 1);
        limiter.prune(now + Duration::from_secs(1));
        assert_eq!(limiter.tracked(), 0);
    }
}
