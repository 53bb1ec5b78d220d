//! Stale data connections of released gateway ports, removed ahead of the next lease.
//!
//! An active pinhole leases a gateway port; before the rewritten PORT/EPRT reaches the
//! server, conntrack must hold nothing on the data connection's tuple `server:20 ->
//! gateway:port` (a TIME_WAIT or reset entry of the port's previous holder keeps its DNAT to
//! that client, and would take the server's SYN there). Deleting it when the pinhole is
//! *opened* puts a conntrack round trip (~11-14 µs on a VM) on the PORT's critical path;
//! deleting it when the previous pinhole *closes* is too early (the 226 that ends a transfer
//! overtakes the data connection's last FIN and ACK, which the delete would drop).
//!
//! So a close marks its flow as due for a sweep [`SWEEP_AFTER`] later; later closes sweep
//! what is due (a few at a time, off the critical path: after the 226 was relayed); and the
//! next open of the same flow skips its own look at conntrack **only** when a sweep has run
//! since the flow's last close. Whatever cannot be proven (not yet due, a failed sweep, the
//! table full) is checked inline, on the install's path. A sweep in flight is
//! waited for, so it can never land after the new holder's connection exists.
//!
//! A close is not the end of the data connection: a server that does not linger on close
//! sends its 226 while the tail of the file is still in its send buffer (a slow client may
//! need seconds more), and a session can end while its transfer runs. So a sweep first asks
//! conntrack for the flow's state and deletes only a finished one (TIME_WAIT, CLOSE); a flow
//! still alive is left alone and looked at again [`SWEEP_RETRY`] later. Its entry carries the
//! DNAT to the client: deleting it would lose the rest of the transfer.
//!
//! Where the next open has to act itself, it does the same: it asks conntrack first, deletes
//! a finished flow, and refuses the port while the flow is alive (the server could not
//! connect from port 20 on a 4-tuple still in use anyway, and the live transfer would lose
//! its DNAT): the session leases another.
//!
//! What conntrack held from port 20 before the first pinhole is read once at start (one dump:
//! a daemon before this one may have left stale entries, or transfers still running): those
//! flows are swept like closed ones, and every other flow is then known to be clean, so a
//! port's first lease needs no conntrack round trip either. That knowledge holds as long as
//! every flow that is not clean is tracked; the first one that cannot be (the table full)
//! ends it, and unknown flows are asked about again.
//!
//! Between the sweep and the next open no pinhole admits that tuple (the allocator leases a
//! port to one holder per server), so no DNATed entry can reappear on it.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// How long after a pinhole's close its flow is swept: the closing data connection's last
/// segments (and a retransmission or two) pass well within it, and it is shorter than the
/// default 2 s rest (`active.port_quarantine_secs`) before the same server gets the port
/// again.
pub(super) const SWEEP_AFTER: Duration = Duration::from_secs(1);

/// How long a sweep that found its flow still alive waits before it looks again.
pub(super) const SWEEP_RETRY: Duration = Duration::from_secs(5);

/// Flows swept per close at most (each is one conntrack round trip). In a steady state each
/// close makes one flow due, so two keep up; a burst falls back to inline checks.
pub(super) const SWEEP_PER_CALL: usize = 2;

/// How long the start dump's "finished" stands for a flow: conntrack's TIME_WAIT lifetime.
/// Later the entry has expired, and its tuple may belong to a new connection (a server:20 to
/// a host the gateway only routes), which must be asked about, not deleted blind.
pub(super) const FINISHED_HINT: Duration = Duration::from_secs(120);

/// Flows tracked at most; past it, `Clean` ones are forgotten (their next opens delete
/// inline) and new closes are not tracked until there is room.
pub(super) const MAX_TRACKED: usize = 65_536;

/// A data connection's original tuple: (server:20, gateway:port).
pub(super) type Flow = (SocketAddr, SocketAddr);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Leased: an open pinhole's port.
    Open,
    /// Closed (or found alive); to be swept at this instant.
    Due(Instant),
    /// A sweep, or an open's own check, is asking conntrack about it.
    Sweeping,
    /// Swept since its last close: conntrack held nothing on it (or no longer does).
    Clean,
}

#[derive(Debug, Default)]
struct Table {
    state: HashMap<Flow, State>,
    /// (due, flow) in the order of the closes (so in due order).
    queue: VecDeque<(Instant, Flow)>,
    /// (due, flow) of flows found alive, in the order they were found (so in due order).
    retries: VecDeque<(Instant, Flow)>,
    /// Every flow conntrack may hold on a gateway port is in `state`: read at start
    /// ([`StaleFlows::known_at_start`]) and tracked since. A flow not in `state` is then
    /// clean. Lost for good when a flow that is not clean could not be tracked.
    exhaustive: bool,
    /// Flows the dump at start found finished (TIME_WAIT, CLOSE) and that nothing has
    /// touched since, with the dump's time: their sweep needs no lookup, only the delete,
    /// within [`FINISHED_HINT`] of the dump.
    finished_at_start: HashMap<Flow, Instant>,
}

impl Table {
    /// The next entry of `queue` that is due at `now` and still current (a flow re-closed
    /// or re-opened since has a later entry, or none), marked as being swept.
    fn next_due(
        state: &mut HashMap<Flow, State>,
        queue: &mut VecDeque<(Instant, Flow)>,
        now: Instant,
    ) -> Option<Flow> {
        while let Some(&(due, flow)) = queue.front() {
            if due > now {
                return None;
            }
            queue.pop_front();
            if state.get(&flow) == Some(&State::Due(due)) {
                state.insert(flow, State::Sweeping);
                return Some(flow);
            }
        }
        None
    }
}

/// What an open of an active pinhole must do about its flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Claim {
    /// A sweep since the last close removed it: nothing to do.
    AlreadySwept,
    /// Look at it now (and delete it if finished), then report with [`StaleFlows::opened`]
    /// or [`StaleFlows::alive`].
    Check,
}

/// The sweep state of every recently closed active flow, shared by all sockets.
#[derive(Debug, Default)]
pub(super) struct StaleFlows {
    table: Mutex<Table>,
    swept: Condvar,
}

impl StaleFlows {
    fn lock(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The flows conntrack held from port 20 before the first pinhole (`now`): each is
    /// swept like a closed one, and any other flow is known to be clean. (A daemon before
    /// this one may have left stale entries, or transfers still running, on its ports.)
    /// `found`: each flow, and whether conntrack said it had finished.
    pub(super) fn known_at_start(&self, found: &[(Flow, bool)], now: Instant) {
        let mut table = self.lock();
        if table.state.len() + found.len() > MAX_TRACKED {
            return;
        }
        let Table {
            state,
            queue,
            finished_at_start,
            ..
        } = &mut *table;
        for &(flow, finished) in found {
            if let std::collections::hash_map::Entry::Vacant(entry) = state.entry(flow) {
                entry.insert(State::Due(now));
                queue.push_front((now, flow));
                if finished {
                    finished_at_start.insert(flow, now);
                }
            }
        }
        table.exhaustive = true;
    }

    /// Whether the dump at start found `flow` finished, nothing has touched it since, and
    /// that is less than [`FINISHED_HINT`] ago at `now` (a sweep can delete it without
    /// asking). Asked once.
    pub(super) fn finished_at_start(&self, flow: Flow, now: Instant) -> bool {
        self.lock()
            .finished_at_start
            .remove(&flow)
            .is_some_and(|at| now.saturating_duration_since(at) < FINISHED_HINT)
    }

    /// Whether `flow` can be tracked: there is room, once `Clean` flows are forgotten. A
    /// flow that cannot be tracked ends the exhaustive knowledge.
    fn room_for(table: &mut Table, flow: Flow) -> bool {
        if table.state.len() < MAX_TRACKED || table.state.contains_key(&flow) {
            return true;
        }
        table.state.retain(|_, state| *state != State::Clean);
        if table.state.len() < MAX_TRACKED {
            return true;
        }
        table.exhaustive = false;
        false
    }

    /// The pinhole of `flow` closed at `now`: sweep it [`SWEEP_AFTER`] later.
    pub(super) fn closed(&self, flow: Flow, now: Instant) {
        let mut table = self.lock();
        if !Self::room_for(&mut table, flow) {
            return;
        }
        table.finished_at_start.remove(&flow);
        // A sweep in flight now belongs to an earlier close: `swept` will find `Due` and
        // leave it, so this close gets a sweep of its own.
        let due = now + SWEEP_AFTER;
        table.state.insert(flow, State::Due(due));
        table.queue.push_back((due, flow));
        if table.queue.len() > 2 * MAX_TRACKED {
            // Entries of flows re-closed or re-opened since; their own entries come later.
            let Table { state, queue, .. } = &mut *table;
            queue.retain(|(due, flow)| state.get(flow) == Some(&State::Due(*due)));
        }
    }

    /// Up to `max` flows whose sweep is due at `now`, each now marked as being swept (the
    /// caller deletes them and reports each with [`StaleFlows::swept`]).
    pub(super) fn take_due(&self, now: Instant, max: usize) -> Vec<Flow> {
        let mut table = self.lock();
        let Table {
            state,
            queue,
            retries,
            ..
        } = &mut *table;
        let mut due_now = Vec::new();
        // Fresh closes first: a flow found alive has waited long already and can wait on.
        while due_now.len() < max {
            match Table::next_due(state, queue, now)
                .or_else(|| Table::next_due(state, retries, now))
            {
                Some(flow) => due_now.push(flow),
                None => break,
            }
        }
        due_now
    }

    /// The sweep of `flow` ended: `clean` when conntrack confirmed it holds nothing on it.
    pub(super) fn swept(&self, flow: Flow, clean: bool) {
        let mut table = self.lock();
        if table.state.get(&flow) == Some(&State::Sweeping) {
            if clean {
                table.state.insert(flow, State::Clean);
            } else {
                // Not forgotten (that would make it clean): a later sweep tries again.
                let due = Instant::now() + SWEEP_RETRY;
                table.state.insert(flow, State::Due(due));
                table.retries.push_back((due, flow));
            }
        }
        drop(table);
        self.swept.notify_all();
    }

    /// The sweep of `flow` found its connection still alive (see the module's doc): left
    /// alone, and due again [`SWEEP_RETRY`] after `now`. Until a sweep finds it finished,
    /// the port's next open checks it inline (and is refused while it lives).
    pub(super) fn alive(&self, flow: Flow, now: Instant) {
        let mut table = self.lock();
        // A sweep that outlived an open's wait must not undo the open.
        if table.state.get(&flow) != Some(&State::Open) {
            let due = now + SWEEP_RETRY;
            table.state.insert(flow, State::Due(due));
            table.retries.push_back((due, flow));
            if table.retries.len() > 2 * MAX_TRACKED {
                let Table { state, retries, .. } = &mut *table;
                retries.retain(|(due, flow)| state.get(flow) == Some(&State::Due(*due)));
            }
        }
        drop(table);
        self.swept.notify_all();
    }

    /// `flow`'s port was leased (its open's check found nothing alive on it): its next
    /// sweep comes after the new holder's close.
    pub(super) fn opened(&self, flow: Flow) {
        let mut table = self.lock();
        if Self::room_for(&mut table, flow) {
            table.state.insert(flow, State::Open);
        }
        drop(table);
        self.swept.notify_all();
    }

    /// An active pinhole of `flow` is being opened: whether conntrack must be asked about
    /// it now. A sweep of it in flight is waited for (at most `wait`). A flow swept since its
    /// last close is claimed as [`State::Open`]; any other is marked as being checked, and the
    /// caller reports what it found.
    pub(super) fn claim(&self, flow: Flow, wait: Duration) -> Claim {
        let deadline = Instant::now() + wait;
        let mut table = self.lock();
        while table.state.get(&flow) == Some(&State::Sweeping) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            table = match self.swept.wait_timeout(table, left) {
                Ok((table, _)) => table,
                Err(poisoned) => poisoned.into_inner().0,
            };
        }
        table.finished_at_start.remove(&flow);
        let clean = match table.state.get(&flow) {
            Some(State::Clean) => true,
            None => table.exhaustive,
            Some(_) => false,
        };
        if !Self::room_for(&mut table, flow) {
            return Claim::Check;
        }
        if clean {
            table.state.insert(flow, State::Open);
            return Claim::AlreadySwept;
        }
        table.state.insert(flow, State::Sweeping);
        Claim::Check
    }

    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.lock().state.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flow(port: u16) -> Flow {
        (
            "203.0.113.2:20".parse().expect("server"),
            SocketAddr::new("198.51.100.1".parse().expect("gateway"), port),
        )
    }

    const NO_WAIT: Duration = Duration::ZERO;

    #[test]
    fn a_flow_never_closed_is_checked_inline() {
        let flows = StaleFlows::default();
        assert_eq!(flows.claim(flow(40001), NO_WAIT), Claim::Check);
    }

    #[test]
    fn a_flow_swept_after_its_close_needs_no_delete_once() {
        let flows = StaleFlows::default();
        let t0 = Instant::now();
        flows.closed(flow(40001), t0);
        assert!(flows.take_due(t0, 8).is_empty(), "not due at once");
        assert!(
            flows
                .take_due(t0 + SWEEP_AFTER - Duration::from_millis(1), 8)
                .is_empty()
        );
        assert_eq!(flows.take_due(t0 + SWEEP_AFTER, 8), vec![flow(40001)]);
        flows.swept(flow(40001), true);
        assert_eq!(flows.claim(flow(40001), NO_WAIT), Claim::AlreadySwept);
        // Consumed: the next open (without a close and a sweep in between) checks again.
        assert_eq!(flows.claim(flow(40001), NO_WAIT), Claim::Check);
    }

    #[test]
    fn an_open_before_the_sweep_checks_inline_and_the_old_sweep_is_dropped() {
        let flows = StaleFlows::default();
        let t0 = Instant::now();
        flows.closed(flow(40001), t0);
        assert_eq!(flows.claim(flow(40001), NO_WAIT), Claim::Check);
        // The new holder's connection may exist by now: the earlier close's sweep must not
        // touch it.
        assert!(flows.take_due(t0 + 10 * SWEEP_AFTER, 8).is_empty());
    }

    #[test]
    fn a_reclose_postpones_the_sweep_to_its_own_due_time() {
        let flows = StaleFlows::default();
        let t0 = Instant::now();
        flows.closed(flow(40001), t0);
        assert_eq!(flows.claim(flow(40001), NO_WAIT), Claim::Check);
        let t1 = t0 + Duration::from_millis(500);
        flows.closed(flow(40001), t1);
        // The first close's entry is due but stale: the flow's connection closed at t1.
        assert!(flows.take_due(t0 + SWEEP_AFTER, 8).is_empty());
        assert_eq!(flows.take_due(t1 + SWEEP_AFTER, 8), vec![flow(40001)]);
    }

    #[test]
    fn a_close_during_a_sweep_is_not_marked_clean_by_it() {
        let flows = StaleFlows::default();
        let t0 = Instant::now();
        flows.closed(flow(40001), t0);
        assert_eq!(flows.take_due(t0 + SWEEP_AFTER, 8), vec![flow(40001)]);
        let t1 = t0 + SWEEP_AFTER;
        flows.closed(flow(40001), t1);
        flows.swept(flow(40001), true);
        assert_eq!(flows.claim(flow(40001), NO_WAIT), Claim::Check);
    }

    /// Flow 40001, closed and then found alive by its sweep at the returned instant.
    fn found_alive() -> (StaleFlows, Instant) {
        let flows = StaleFlows::default();
        let t0 = Instant::now();
        flows.closed(flow(40001), t0);
        let t1 = t0 + SWEEP_AFTER;
        assert_eq!(flows.take_due(t1, 8), vec![flow(40001)]);
        flows.alive(flow(40001), t1);
        (flows, t1)
    }

    #[test]
    fn a_flow_found_alive_is_looked_at_again_later_and_checked_inline_meanwhile() {
        let (flows, t1) = found_alive();
        assert!(flows.take_due(t1, 8).is_empty());
        assert!(
            flows
                .take_due(t1 + SWEEP_RETRY - Duration::from_millis(1), 8)
                .is_empty()
        );
        // Closes that come after it are swept in their own time, not held up behind it.
        let t2 = t1 + Duration::from_millis(10);
        flows.closed(flow(40002), t2);
        assert_eq!(flows.take_due(t2 + SWEEP_AFTER, 8), vec![flow(40002)]);
        flows.swept(flow(40002), true);
        assert_eq!(flows.take_due(t1 + SWEEP_RETRY, 8), vec![flow(40001)]);
        flows.alive(flow(40001), t1 + SWEEP_RETRY);
        // Still not proven clean: an open now checks inline, and the retry is dropped.
        assert_eq!(flows.claim(flow(40001), NO_WAIT), Claim::Check);
        assert!(flows.take_due(t1 + 10 * SWEEP_RETRY, 8).is_empty());
    }

    #[test]
    fn a_flow_found_alive_then_finished_is_swept() {
        let (flows, t1) = found_alive();
        assert_eq!(flows.take_due(t1 + SWEEP_RETRY, 8), vec![flow(40001)]);
        flows.swept(flow(40001), true);
        assert_eq!(flows.claim(flow(40001), NO_WAIT), Claim::AlreadySwept);
    }

    #[test]
    fn a_failed_sweep_leaves_the_delete_to_the_open() {
        let flows = StaleFlows::default();
        let t0 = Instant::now();
        flows.closed(flow(40001), t0);
        assert_eq!(flows.take_due(t0 + SWEEP_AFTER, 8), vec![flow(40001)]);
        flows.swept(flow(40001), false);
        assert_eq!(flows.claim(flow(40001), NO_WAIT), Claim::Check);
    }

    #[test]
    fn sweeps_are_taken_in_due_order_a_few_at_a_time() {
        let flows = StaleFlows::default();
        let t0 = Instant::now();
        for (i, port) in (40001..=40005).enumerate() {
            flows.closed(flow(port), t0 + Duration::from_millis(i as u64));
        }
        let later = t0 + 2 * SWEEP_AFTER;
        assert_eq!(flows.take_due(later, 2), vec![flow(40001), flow(40002)]);
        assert_eq!(flows.take_due(later, 2), vec![flow(40003), flow(40004)]);
        assert_eq!(flows.take_due(later, 2), vec![flow(40005)]);
    }

    #[test]
    fn an_open_waits_for_a_sweep_in_flight() {
        let flows = std::sync::Arc::new(StaleFlows::default());
        let t0 = Instant::now();
        flows.closed(flow(40001), t0);
        assert_eq!(flows.take_due(t0 + SWEEP_AFTER, 8), vec![flow(40001)]);
        let sweeper = {
            let flows = flows.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(50));
                flows.swept(flow(40001), true);
            })
        };
        let started = Instant::now();
        assert_eq!(
            flows.claim(flow(40001), Duration::from_secs(5)),
            Claim::AlreadySwept
        );
        assert!(started.elapsed() >= Duration::from_millis(40));
        sweeper.join().expect("sweeper");
    }

    #[test]
    fn an_open_that_gives_up_waiting_checks_inline() {
        let flows = StaleFlows::default();
        let t0 = Instant::now();
        flows.closed(flow(40001), t0);
        assert_eq!(flows.take_due(t0 + SWEEP_AFTER, 8), vec![flow(40001)]);
        assert_eq!(
            flows.claim(flow(40001), Duration::from_millis(5)),
            Claim::Check
        );
        // The late sweep's result does not outlive the open's own check.
        flows.swept(flow(40001), true);
        flows.opened(flow(40001));
        assert_eq!(flows.claim(flow(40001), NO_WAIT), Claim::Check);
    }

    #[test]
    fn an_open_that_finds_its_flow_alive_leaves_it_to_the_sweeps() {
        let flows = StaleFlows::default();
        let t0 = Instant::now();
        assert_eq!(flows.claim(flow(40001), NO_WAIT), Claim::Check);
        flows.alive(flow(40001), t0);
        assert!(flows.take_due(t0 + SWEEP_RETRY / 2, 8).is_empty());
        assert_eq!(flows.take_due(t0 + SWEEP_RETRY, 8), vec![flow(40001)]);
        flows.swept(flow(40001), true);
        assert_eq!(flows.claim(flow(40001), NO_WAIT), Claim::AlreadySwept);
    }

    #[test]
    fn a_leased_flow_is_not_swept_and_not_marked_clean_until_its_close() {
        let flows = StaleFlows::default();
        let t0 = Instant::now();
        assert_eq!(flows.claim(flow(40001), NO_WAIT), Claim::Check);
        flows.opened(flow(40001));
        // A sweep that ends late, or finds it alive, does not touch a leased flow.
        flows.swept(flow(40001), true);
        flows.alive(flow(40001), t0);
        assert!(flows.take_due(t0 + 10 * SWEEP_RETRY, 8).is_empty());
        assert_eq!(flows.claim(flow(40001), NO_WAIT), Claim::Check);
        flows.opened(flow(40001));
        flows.closed(flow(40001), t0);
        assert_eq!(flows.take_due(t0 + SWEEP_AFTER, 8), vec![flow(40001)]);
    }

    #[test]
    fn once_conntrack_was_read_at_start_an_unknown_flow_is_clean_and_a_listed_one_is_checked() {
        let flows = StaleFlows::default();
        let t0 = Instant::now();
        flows.known_at_start(&[(flow(40001), false)], t0);
        assert_eq!(flows.claim(flow(40002), NO_WAIT), Claim::AlreadySwept);
        assert_eq!(flows.claim(flow(40001), NO_WAIT), Claim::Check);
        flows.opened(flow(40001));
        // A leased flow is not clean, whatever the start said.
        assert_eq!(flows.claim(flow(40002), NO_WAIT), Claim::Check);
        // The listed flows are swept like closed ones.
        let flows = StaleFlows::default();
        flows.known_at_start(&[(flow(40001), true), (flow(40003), false)], t0);
        let mut due = flows.take_due(t0, 8);
        due.sort_unstable();
        assert_eq!(due, vec![flow(40001), flow(40003)]);
        // What the dump said finished needs no second look, once.
        assert!(flows.finished_at_start(flow(40001), t0));
        assert!(!flows.finished_at_start(flow(40001), t0));
        assert!(!flows.finished_at_start(flow(40003), t0));
        // ... and only while it may still be that flow.
        let later = StaleFlows::default();
        later.known_at_start(&[(flow(40005), true)], t0);
        assert!(!later.finished_at_start(flow(40005), t0 + FINISHED_HINT));
        flows.swept(flow(40001), true);
        flows.swept(flow(40003), false);
        assert_eq!(flows.claim(flow(40001), NO_WAIT), Claim::AlreadySwept);
        // A failed sweep keeps it (forgetting it would make it clean) and tries again.
        assert_eq!(
            flows.take_due(Instant::now() + SWEEP_RETRY, 8),
            vec![flow(40003)]
        );
    }

    #[test]
    fn a_flow_that_cannot_be_tracked_ends_the_knowledge_from_the_start() {
        let flows = StaleFlows::default();
        let t0 = Instant::now();
        flows.known_at_start(&[], t0);
        let gateway: std::net::IpAddr = "198.51.100.1".parse().expect("gateway");
        let server = |i: usize| {
            SocketAddr::new(
                std::net::IpAddr::V4(std::net::Ipv4Addr::from(0xcb00_7100 + i as u32)),
                20,
            )
        };
        for i in 0..MAX_TRACKED - 1 {
            flows.closed((server(i), SocketAddr::new(gateway, 40001)), t0);
        }
        assert_eq!(flows.claim(flow(40007), NO_WAIT), Claim::AlreadySwept);
        assert_eq!(flows.tracked(), MAX_TRACKED);
        // Full of flows that are not clean: this close is not tracked, so nothing unknown
        // can be taken for clean any more.
        flows.closed(flow(40002), t0);
        assert_eq!(flows.claim(flow(40002), NO_WAIT), Claim::Check);
        assert_eq!(flows.claim(flow(40005), NO_WAIT), Claim::Check);
    }

    #[test]
    fn the_table_is_bounded() {
        let flows = StaleFlows::default();
        let t0 = Instant::now();
        let gateway: std::net::IpAddr = "198.51.100.1".parse().expect("gateway");
        let server = |i: usize| {
            SocketAddr::new(
                std::net::IpAddr::V4(std::net::Ipv4Addr::from(0xcb00_7100 + i as u32)),
                20,
            )
        };
        for i in 0..MAX_TRACKED + 10 {
            flows.closed((server(i), SocketAddr::new(gateway, 40001)), t0);
        }
        assert_eq!(flows.tracked(), MAX_TRACKED);
        // Swept ones make room when the table is full.
        let due = flows.take_due(t0 + SWEEP_AFTER, 100);
        for flow in &due {
            flows.swept(*flow, true);
        }
        flows.closed(
            (server(MAX_TRACKED + 20), SocketAddr::new(gateway, 40001)),
            t0,
        );
        assert_eq!(flows.tracked(), MAX_TRACKED - 100 + 1);
    }
}
