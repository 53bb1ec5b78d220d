//! Gateway ports for active-mode data connections.
//!
//! A port is leased per server (the DNAT key is server . gateway . port, so two servers may
//! use the same gateway port at once) and picked at random so that a server cannot predict
//! the next one.
//!
//! A released port rests in quarantine before it is leased again to the same server
//! (`active.port_quarantine_secs`, default 2 s). The 226 that ends a transfer comes before
//! the data connection has finished closing; a port leased again microseconds later (a random
//! pick hits a just-released port a few times in 10,000 under load) makes a server that
//! connects from port 20 reuse a 4-tuple whose socket is still closing, and its `connect()`
//! fails (vsftpd: `425 Failed to establish connection`). Conntrack also keeps the previous
//! data connection on that tuple for a while (10 s in CLOSE after a reset); for port 20 the
//! firewall removes that flow when the port is leased again (`firewall::netlink`), so a short
//! rest is enough. Servers with another fixed source port need a longer one (e.g. 60 s).

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::ops::RangeInclusive;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Leases gateway ports from a configured range.
#[derive(Debug)]
pub struct PortAllocator {
    range: RangeInclusive<u16>,
    quarantine: Duration,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    leased: HashSet<(IpAddr, u16)>,
    /// Released ports and when each may be leased again.
    resting: HashMap<(IpAddr, u16), Instant>,
}

impl PortAllocator {
    /// An allocator over `range`; a released port rests for `quarantine`.
    pub fn new(range: RangeInclusive<u16>, quarantine: Duration) -> Self {
        Self {
            range,
            quarantine,
            state: Mutex::new(State::default()),
        }
    }

    /// A free port for connections from `server`, or `None` when every port is leased or
    /// resting.
    pub fn allocate(&self, server: IpAddr) -> Option<u16> {
        let now = Instant::now();
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let (lo, hi) = (*self.range.start(), *self.range.end());
        let size = u32::from(hi - lo) + 1;
        if state.resting.len() > size as usize * 4 {
            state.resting.retain(|_, free_at| *free_at > now);
        }
        let start = rand::random_range(0..size);
        // Random start, then a linear probe: bounded work even when nearly full.
        for i in 0..size {
            let key = (server, lo + ((start + i) % size) as u16);
            if state.leased.contains(&key) {
                continue;
            }
            if let Some(free_at) = state.resting.get(&key) {
                if *free_at > now {
                    continue;
                }
                state.resting.remove(&key);
            }
            state.leased.insert(key);
            return Some(key.1);
        }
        None
    }

    /// Returns a port leased by [`PortAllocator::allocate`]; it rests before its next lease.
    pub fn release(&self, server: IpAddr, port: u16) {
        self.release_resting(server, port, self.quarantine);
    }

    /// Returns a port that rests for at least `rest` (and the quarantine): one whose pinhole
    /// install was cut off may still be added to the kernel, and stays there until its
    /// timeout; leased again before that, another client's mapping would clash with it.
    pub fn release_resting(&self, server: IpAddr, port: u16, rest: Duration) {
        let rest = rest.max(self.quarantine);
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if state.leased.remove(&(server, port)) && !rest.is_zero() {
            state.resting.insert((server, port), Instant::now() + rest);
        }
    }

    /// Ports currently leased.
    pub fn leased(&self) -> usize {
        self.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .leased
            .len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_port_released_after_a_cut_off_install_rests_past_the_quarantine() {
        let server: IpAddr = "203.0.113.2".parse().unwrap();
        let ports = PortAllocator::new(40000..=40000, Duration::ZERO);
        assert_eq!(ports.allocate(server), Some(40000));
        ports.release(server, 40000);
        assert_eq!(
            ports.allocate(server),
            Some(40000),
            "no quarantine: free at once"
        );
        ports.release_resting(server, 40000, Duration::from_millis(200));
        assert_eq!(
            ports.allocate(server),
            None,
            "resting until the element's timeout"
        );
        std::thread::sleep(Duration::from_millis(250));
        assert_eq!(ports.allocate(server), Some(40000));
    }

    #[test]
    fn allocates_every_port_of_the_range_once_then_runs_out() {
        let ports = PortAllocator::new(40000..=40009, Duration::ZERO);
        let server: IpAddr = "203.0.113.2".parse().unwrap();
        let mut got: Vec<u16> = (0..10).filter_map(|_| ports.allocate(server)).collect();
        got.sort_unstable();
        assert_eq!(got, (40000..=40009).collect::<Vec<_>>());
        assert_eq!(ports.allocate(server), None);
        ports.release(server, 40005);
        assert_eq!(ports.allocate(server), Some(40005));
    }

    #[test]
    fn a_released_port_rests_before_the_same_server_gets_it_again() {
        let ports = PortAllocator::new(40000..=40001, Duration::from_secs(60));
        let server: IpAddr = "203.0.113.2".parse().unwrap();
        let first = ports.allocate(server).unwrap();
        ports.release(server, first);
        // Only the other port is offered while the first rests …
        let second = ports.allocate(server).unwrap();
        assert_ne!(second, first);
        assert_eq!(ports.allocate(server), None);
        // … but another server may use it at once.
        assert!(ports.allocate("203.0.113.3".parse().unwrap()).is_some());
    }

    /// With the shipped defaults, a port is not handed out again the moment its transfer
    /// ends: the server's socket on that 4-tuple may still be closing, and its next
    /// `connect()` from port 20 would fail (`425`). One port in the range: the just-released
    /// port must not come back at once.
    #[test]
    fn by_default_a_just_released_port_does_not_go_straight_back_to_its_server() {
        let defaults = crate::config::ActiveConfig::default();
        let ports = PortAllocator::new(
            40000..=40000,
            Duration::from_secs(defaults.port_quarantine_secs),
        );
        let server: IpAddr = "203.0.113.2".parse().unwrap();
        let port = ports.allocate(server).expect("the one port");
        ports.release(server, port);
        assert_eq!(ports.allocate(server), None, "re-leased at once");
    }

    #[test]
    fn the_same_port_may_serve_two_servers() {
        let ports = PortAllocator::new(40000..=40000, Duration::ZERO);
        assert!(ports.allocate("203.0.113.2".parse().unwrap()).is_some());
        assert!(ports.allocate("203.0.113.3".parse().unwrap()).is_some());
    }
}
