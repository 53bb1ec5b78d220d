//! Gateway ports for active-mode data connections.
//!
//! A port is leased per server (the DNAT key is server . gateway . port, so two servers may
//! use the same gateway port at once) and picked at random so that a server cannot predict
//! the next one.

use std::collections::HashSet;
use std::net::IpAddr;
use std::ops::RangeInclusive;
use std::sync::Mutex;

/// Leases gateway ports from a configured range.
#[derive(Debug)]
pub struct PortAllocator {
    range: RangeInclusive<u16>,
    leased: Mutex<HashSet<(IpAddr, u16)>>,
}

impl PortAllocator {
    /// An allocator over `range`.
    pub fn new(range: RangeInclusive<u16>) -> Self {
        Self {
            range,
            leased: Mutex::new(HashSet::new()),
        }
    }

    /// A free port for connections from `server`, or `None` when the range is exhausted.
    pub fn allocate(&self, server: IpAddr) -> Option<u16> {
        let mut leased = self.leased.lock().unwrap_or_else(|e| e.into_inner());
        let (lo, hi) = (*self.range.start(), *self.range.end());
        let size = u32::from(hi - lo) + 1;
        let start = rand::random_range(0..size);
        // Random start, then a linear probe: bounded work even when nearly full.
        (0..size)
            .map(|i| lo + ((start + i) % size) as u16)
            .find(|port| leased.insert((server, *port)))
    }

    /// Returns a port leased by [`PortAllocator::allocate`].
    pub fn release(&self, server: IpAddr, port: u16) {
        let mut leased = self.leased.lock().unwrap_or_else(|e| e.into_inner());
        leased.remove(&(server, port));
    }

    /// Ports currently leased.
    pub fn leased(&self) -> usize {
        self.leased.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocates_every_port_of_the_range_once_then_runs_out() {
        let ports = PortAllocator::new(40000..=40009);
        let server: IpAddr = "203.0.113.2".parse().unwrap();
        let mut got: Vec<u16> = (0..10).filter_map(|_| ports.allocate(server)).collect();
        got.sort_unstable();
        assert_eq!(got, (40000..=40009).collect::<Vec<_>>());
        assert_eq!(ports.allocate(server), None);
        ports.release(server, 40005);
        assert_eq!(ports.allocate(server), Some(40005));
    }

    #[test]
    fn the_same_port_may_serve_two_servers() {
        let ports = PortAllocator::new(40000..=40000);
        assert!(ports.allocate("203.0.113.2".parse().unwrap()).is_some());
        assert!(ports.allocate("203.0.113.3".parse().unwrap()).is_some());
    }
}
