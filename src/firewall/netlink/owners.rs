//! Who holds each kernel element, shared by every netlink socket of one [`super::NftFirewall`].
//!
//! Ownership is per kernel element, not per pinhole: two sessions may ask for the very same
//! pinhole (a client's second session gets the server's passive port the first one used), and
//! two different active pinholes share their `active_pin` element when one client announces
//! the same port for two transfers through different gateway ports (clients reuse ephemeral
//! ports within milliseconds). The end of one must not remove what the other still needs.
//!
//! With one socket, requests reached the kernel in the order they were counted, so a count was
//! enough. With a socket per runtime thread, an add and a remove of one element may be in
//! flight on two sockets at once, and the remove could land after the add and take away an
//! element its new holder relies on. So the last holder's release marks the element as being
//! removed, and an add of it waits until the kernel has answered that removal ([`Removal`]
//! says so when its request is dropped, whatever became of it). The map's lock is never held
//! across a system call.
//!
//! Placement: each set a rule consumes has a twin for keys that come back within seconds (see
//! [`hot_twin`]). A rule's `delete @set` only marks an element dead; it stays on its hash chain
//! until the set's garbage collector runs. A key that is added again before that lengthens
//! the chain by one dead copy each time, and long chains make the kernel refuse adds (EBUSY).
//! The main sets collect every [`COLD_GC_INTERVAL`], which keeps the collector's walk cheap with
//! many live pinholes; a key that was in a main set less than [`HOT_WINDOW`] ago goes to the
//! twin, which collects every `nftables.gc_interval_ms` and stays small. So a main set holds at
//! most one or two dead copies of a key, and the twin only the keys reused right now.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::Element;

type Id = (&'static str, Vec<u8>);

/// The main pinhole sets' garbage-collection interval (the kernel's default for sets), as the
/// rules file declares it: `gc-interval 1s`.
pub(crate) const COLD_GC_INTERVAL: Duration = Duration::from_secs(1);

/// How long after a key was last in a main set its next add goes to the twin instead: three
/// collection intervals, so the dead copy a consumed element leaves has surely been collected
/// (the collector's timer is deferrable and may run late on a busy CPU).
pub(super) const HOT_WINDOW: Duration = Duration::from_secs(3 * COLD_GC_INTERVAL.as_secs());

/// Each set a rule consumes and its twin for keys reused within [`HOT_WINDOW`]
/// (`rules/ftp-alg.nft` declares both).
const TWINS: [(&str, &str); 6] = [
    ("passive_pin", "passive_pin_hot"),
    ("passive_pin6", "passive_pin6_hot"),
    ("active_pin", "active_pin_hot"),
    ("active_pin6", "active_pin6_hot"),
    ("dnat_once", "dnat_once_hot"),
    ("dnat_once6", "dnat_once6_hot"),
];

/// The twin of a set that a rule consumes; `None` for the maps and sets the daemon alone
/// removes from (their removals unlink at once).
pub(crate) fn hot_twin(set: &str) -> Option<&'static str> {
    TWINS
        .iter()
        .find(|(main, _)| *main == set)
        .map(|(_, hot)| *hot)
}

/// Whether `set` is a twin, i.e. where a key reused within [`HOT_WINDOW`] was placed.
pub(super) fn is_hot(set: &str) -> bool {
    TWINS.iter().any(|(_, hot)| *hot == set)
}

#[derive(Debug, Default)]
struct Holders {
    /// Open pinholes that hold the element, and holds whose add is not answered yet.
    count: u32,
    /// Of `count`, the holds whose add is not answered yet.
    pending: u32,
    /// The element is in the kernel from a holder that has closed, and only holds whose
    /// add is not answered yet remain: if they all fail, nobody owns it, and it must be
    /// removed all the same (an orphan).
    orphaned: bool,
    /// Queued in [`State::orphans`].
    queued: bool,
    /// Whether the element is (or, for a removal in flight, was) in its set's hot twin.
    hot: bool,
    /// Removals of the element sent (or about to be) and not yet answered.
    removing: u32,
    /// Adds waiting for those removals.
    waiters: Vec<oneshot::Sender<()>>,
}

#[derive(Debug, Default)]
struct State {
    holders: HashMap<Id, Holders>,
    /// When each key of a set with a twin was last in the main set (added, or released while
    /// there), for [`HOT_WINDOW`]; entries older than that are pruned.
    in_main: HashMap<Id, Instant>,
    /// `in_main`'s entries in the order they were stamped, for pruning.
    stamps: VecDeque<(Instant, Id)>,
    /// Elements left in the kernel by a closed holder whose co-holders' adds all failed:
    /// the next close removes them ([`Owners::release`]).
    orphans: Vec<(Id, Element)>,
}

impl State {
    /// Stamps `id` as in its main set now, and forgets stamps older than [`HOT_WINDOW`].
    fn stamp_main(&mut self, id: &Id, now: Instant) {
        while let Some((at, _)) = self.stamps.front() {
            if now.duration_since(*at) < HOT_WINDOW {
                break;
            }
            if let Some((at, old)) = self.stamps.pop_front()
                && self.in_main.get(&old) == Some(&at)
            {
                self.in_main.remove(&old);
            }
        }
        self.in_main.insert(id.clone(), now);
        self.stamps.push_back((now, id.clone()));
    }

    /// Whether `id` was in its main set less than [`HOT_WINDOW`] ago.
    fn recently_in_main(&self, id: &Id, now: Instant) -> bool {
        self.in_main
            .get(id)
            .is_some_and(|at| now.duration_since(*at) < HOT_WINDOW)
    }
}

#[derive(Debug, Default)]
pub(super) struct Owners {
    state: Mutex<State>,
}

/// An element's identity before placement: its main set and key.
fn id(element: &Element) -> Id {
    (element.set, element.key.clone())
}

/// An element's identity after placement (its set may be a twin): its main set and key.
fn main_id(element: &Element) -> Id {
    let main = TWINS
        .iter()
        .find(|(_, hot)| *hot == element.set)
        .map_or(element.set, |(main, _)| *main);
    (main, element.key.clone())
}

impl Owners {
    fn state(&self) -> MutexGuard<'_, State> {
        // Nothing in here panics while the lock is held; a poisoned map is still consistent.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Counts one more holder of each element and places it: an element that is already
    /// held stays where it is; a new one goes to its set's hot twin if its key was in the
    /// main set less than [`HOT_WINDOW`] ago (`element.set` names the set to add to). The add
    /// may be sent once every returned receiver has fired (or been dropped): each stands for
    /// a removal of one of the elements still in flight.
    pub(super) fn hold(&self, elements: &mut [Element]) -> Vec<oneshot::Receiver<()>> {
        self.hold_at(elements, Instant::now())
    }

    fn hold_at(&self, elements: &mut [Element], now: Instant) -> Vec<oneshot::Receiver<()>> {
        let mut state = self.state();
        let mut waits = Vec::new();
        for element in elements {
            let id = id(element);
            let twin = hot_twin(element.set);
            let reused = twin.is_some() && state.recently_in_main(&id, now);
            let holders = state.holders.entry(id.clone()).or_default();
            // An orphan is still in the kernel where it was placed: its new holder adds it
            // there, and owns that copy.
            if holders.count == 0 && !holders.orphaned {
                holders.hot = reused;
            }
            holders.count += 1;
            holders.pending += 1;
            let hot = holders.hot;
            if holders.removing > 0 {
                let (tx, rx) = oneshot::channel();
                holders.waiters.push(tx);
                waits.push(rx);
            }
            match twin {
                Some(twin) if hot => element.set = twin,
                Some(_) => state.stamp_main(&id, now),
                None => {}
            }
        }
        waits
    }

    /// Undoes a [`Owners::hold`] whose add failed or was given up. An element that a closed
    /// holder left in the kernel for this add to keep becomes an orphan: the next close
    /// removes it. `in_doubt`: the add was given up after it was sent, so the kernel may have
    /// it (where it was placed); unless another holder's add is answered (then that holder
    /// owns it), it counts as left by a closed holder: owned by whoever holds it next, else
    /// removed by the next close.
    fn unhold(&self, elements: &[Element], in_doubt: bool) {
        let mut state = self.state();
        for element in elements {
            let id = main_id(element);
            let Some(holders) = state.holders.get_mut(&id) else {
                continue;
            };
            holders.count = holders.count.saturating_sub(1);
            holders.pending = holders.pending.saturating_sub(1);
            if in_doubt && holders.count == holders.pending {
                holders.orphaned = true;
            }
            if holders.count > 0 {
                continue;
            }
            if holders.orphaned {
                if !std::mem::replace(&mut holders.queued, true) {
                    state.orphans.push((id, element.clone()));
                }
            } else if holders.removing == 0 {
                state.holders.remove(&id);
            }
        }
    }

    /// The add of a [`Owners::hold`] succeeded: its elements are in the kernel and owned.
    fn kept(&self, elements: &[Element]) {
        let mut state = self.state();
        for element in elements {
            if let Some(holders) = state.holders.get_mut(&main_id(element)) {
                holders.pending = holders.pending.saturating_sub(1);
                holders.orphaned = false;
            }
        }
    }

    /// Whether orphans wait for a close to remove them.
    pub(super) fn has_orphans(&self) -> bool {
        !self.state().orphans.is_empty()
    }

    /// Drops one holder of each element and returns the elements nobody holds any more: those
    /// a close must remove from the kernel, marked as being removed until the returned
    /// [`Removal`] is dropped. Elements never counted (e.g. left by a previous daemon) are
    /// returned too, and so are the orphans (see [`Owners::unhold`]).
    /// The returned elements name the set (main or twin) the element is in.
    pub(super) fn release(self: &Arc<Self>, elements: Vec<Element>) -> Removal {
        self.release_at(elements, Instant::now())
    }

    fn release_at(self: &Arc<Self>, elements: Vec<Element>, now: Instant) -> Removal {
        let mut state = self.state();
        let mut gone = Vec::with_capacity(elements.len());
        for mut element in elements {
            let id = id(&element);
            let holders = state.holders.entry(id.clone()).or_default();
            if holders.count > 1 {
                holders.count -= 1;
                // The closing holder's add had been answered (unless every holder's is
                // pending, as in tests that never keep).
                holders.pending = holders.pending.min(holders.count);
                if holders.count == holders.pending {
                    holders.orphaned = true;
                }
                continue;
            }
            holders.count = 0;
            holders.pending = 0;
            holders.orphaned = false;
            holders.removing += 1;
            match hot_twin(element.set) {
                Some(twin) if holders.hot => element.set = twin,
                // A consumed element's dead copy stays until the main set's next collection.
                Some(_) => state.stamp_main(&id, now),
                None => {}
            }
            gone.push(element);
        }
        for (id, element) in std::mem::take(&mut state.orphans) {
            let Some(holders) = state.holders.get_mut(&id) else {
                continue;
            };
            holders.queued = false;
            // A new holder since then owns it (its add puts it back anyway).
            if holders.count > 0 || !std::mem::take(&mut holders.orphaned) {
                continue;
            }
            holders.removing += 1;
            if !gone.contains(&element) {
                gone.push(element);
            } else {
                holders.removing -= 1;
            }
        }
        Removal {
            owners: self.clone(),
            elements: gone,
        }
    }

    /// The kernel has answered the removal of `elements`: adds waiting for it may go.
    fn removed(&self, elements: &[Element]) {
        let mut state = self.state();
        for element in elements {
            let id = main_id(element);
            let Some(holders) = state.holders.get_mut(&id) else {
                continue;
            };
            holders.removing = holders.removing.saturating_sub(1);
            if holders.removing > 0 {
                continue;
            }
            for waiter in holders.waiters.drain(..) {
                let _ = waiter.send(());
            }
            if holders.count == 0 && !holders.queued {
                state.holders.remove(&id);
            }
        }
    }

    /// Elements tracked (held or being removed), for tests.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.state().holders.len()
    }
}

/// Elements being removed from the kernel, as [`Owners::release`] returned them. Dropping it
/// (once the kernel has answered, or when the request is dropped unanswered) lets the adds
/// that wait for the removal go.
#[derive(Debug)]
pub(super) struct Removal {
    owners: Arc<Owners>,
    elements: Vec<Element>,
}

impl Removal {
    /// The elements to remove.
    pub(super) fn elements(&self) -> &[Element] {
        &self.elements
    }
}

impl Drop for Removal {
    fn drop(&mut self) {
        self.owners.removed(&self.elements);
    }
}

/// One [`Owners::hold`], undone on drop unless [`Hold::keep`] was called: an add that failed,
/// or whose caller stopped waiting, leaves no holder behind. One dropped while its add is
/// [`Hold::in_doubt`] leaves an orphan instead (see [`Owners::unhold`]).
#[derive(Debug)]
pub(super) struct Hold {
    owners: Arc<Owners>,
    elements: Vec<Element>,
    kept: bool,
    /// The add is on its way to the kernel and not answered yet.
    pub(super) in_doubt: bool,
}

impl Hold {
    /// Takes the hold, placing the elements (see [`Owners::hold`]), and waits for removals of
    /// the same elements still in flight.
    pub(super) async fn take(owners: &Arc<Owners>, elements: &mut [Element]) -> Self {
        let waits = owners.hold(elements);
        let hold = Self {
            owners: owners.clone(),
            elements: elements.to_vec(),
            kept: false,
            in_doubt: false,
        };
        for wait in waits {
            // Sent or dropped: either way the removal is over.
            let _ = wait.await;
        }
        hold
    }

    /// The add succeeded: the elements stay held until their pinhole closes.
    pub(super) fn keep(mut self) {
        self.kept = true;
        self.owners.kept(&self.elements);
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        if !self.kept {
            self.owners.unhold(&self.elements, self.in_doubt);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn element(set: &'static str, key: u8) -> Element {
        Element {
            set,
            key: vec![key; 4],
            data: None,
        }
    }

    fn ready(rx: &mut oneshot::Receiver<()>) -> bool {
        !matches!(rx.try_recv(), Err(oneshot::error::TryRecvError::Empty))
    }

    #[test]
    fn a_shared_element_is_removed_only_by_its_last_holder() {
        let owners = Arc::new(Owners::default());
        let mut e = [element("passive_pin", 1)];
        assert!(owners.hold(&mut e).is_empty());
        assert!(owners.hold(&mut e).is_empty());
        let first = owners.release(e.to_vec());
        assert!(
            first.elements().is_empty(),
            "another session still holds it"
        );
        drop(first);
        let last = owners.release(e.to_vec());
        assert_eq!(last.elements(), &e);
        drop(last);
        assert_eq!(owners.len(), 0, "nothing tracked once removed");
    }

    #[test]
    fn an_add_waits_for_a_removal_of_the_same_element_in_flight() {
        let owners = Arc::new(Owners::default());
        let mut e = [element("dnat_to", 1)];
        let mut other = [element("dnat_to", 2)];
        owners.hold(&mut e);
        let removal = owners.release(e.to_vec());
        assert_eq!(removal.elements(), &e);
        // A new holder of the same element must not add it before the removal is answered...
        let mut waits = owners.hold(&mut e);
        assert_eq!(waits.len(), 1);
        assert!(!ready(&mut waits[0]));
        // ...while other elements go at once.
        assert!(owners.hold(&mut other).is_empty());
        drop(removal);
        assert!(ready(&mut waits[0]), "the removal was answered");
        // The new holder keeps the element: closing it removes it again.
        assert_eq!(owners.release(e.to_vec()).elements(), &e);
    }

    #[test]
    fn two_removals_in_flight_both_finish_before_an_add() {
        let owners = Arc::new(Owners::default());
        let mut e = [element("active_pin", 7)];
        // Never held (e.g. a close repeated, or left by a previous daemon): removed anyway.
        let first = owners.release(e.to_vec());
        let second = owners.release(e.to_vec());
        assert_eq!(second.elements(), &e);
        let mut waits = owners.hold(&mut e);
        drop(first);
        assert!(!ready(&mut waits[0]), "one removal is still in flight");
        drop(second);
        assert!(ready(&mut waits[0]));
    }

    #[tokio::test]
    async fn a_hold_given_up_or_failed_is_undone() {
        let owners = Arc::new(Owners::default());
        let e = vec![element("passive_pin", 3), element("passive_pin", 4)];
        let hold = Hold::take(&owners, &mut e.clone()).await;
        drop(hold);
        assert_eq!(owners.len(), 0, "a dropped hold leaves no holder");
        // Placed in the hot twin now (the first try stamped the keys), and still counted as
        // the same elements: the release finds them and names the twin.
        let mut placed = e.clone();
        Hold::take(&owners, &mut placed).await.keep();
        assert!(placed.iter().all(|p| p.set == "passive_pin_hot"));
        assert_eq!(owners.len(), 2);
        assert_eq!(owners.release(e.clone()).elements(), &placed[..]);
        assert_eq!(owners.len(), 0);
    }

    #[tokio::test]
    async fn an_element_left_for_a_co_holder_whose_add_fails_is_removed_by_the_next_close() {
        let owners = Arc::new(Owners::default());
        let e = vec![element("passive_pin", 9)];
        // Session A's pinhole is in the kernel; B asks for the same one.
        Hold::take(&owners, &mut e.clone()).await.keep();
        let b = Hold::take(&owners, &mut e.clone()).await;
        // A closes while B's add is in flight: the element stays, for B.
        assert!(owners.release(e.clone()).elements().is_empty());
        assert!(!owners.has_orphans());
        // B's add fails: nobody owns the element A left in the kernel.
        drop(b);
        assert!(owners.has_orphans());
        let removal = owners.release(Vec::new());
        assert_eq!(removal.elements(), &e[..]);
        drop(removal);
        assert!(!owners.has_orphans());
        assert_eq!(owners.len(), 0);

        // When B's add succeeds instead, B owns it, and B's close removes it.
        Hold::take(&owners, &mut e.clone()).await.keep();
        let b = Hold::take(&owners, &mut e.clone()).await;
        assert!(owners.release(e.clone()).elements().is_empty());
        b.keep();
        assert!(!owners.has_orphans());
        assert_eq!(owners.release(e.clone()).elements().len(), 1);

        // An orphan that a new holder takes over before any close is not removed.
        Hold::take(&owners, &mut e.clone()).await.keep();
        let b = Hold::take(&owners, &mut e.clone()).await;
        drop(owners.release(e.clone()));
        drop(b);
        assert!(owners.has_orphans());
        Hold::take(&owners, &mut e.clone()).await.keep();
        let other = vec![element("passive_pin", 10)];
        assert_eq!(owners.release(other.clone()).elements(), &other[..]);
        assert!(!owners.has_orphans());
        assert_eq!(owners.release(e.clone()).elements().len(), 1);
    }

    #[tokio::test]
    async fn an_add_given_up_on_its_way_to_the_kernel_is_removed_by_the_next_close() {
        let owners = Arc::new(Owners::default());
        let e = vec![element("passive_pin", 11)];
        let other = vec![element("passive_pin", 12)];
        // The caller stops waiting after the add was sent: it may be in the kernel.
        let mut a = Hold::take(&owners, &mut e.clone()).await;
        a.in_doubt = true;
        drop(a);
        assert!(owners.has_orphans());
        let removal = owners.release(other.clone());
        assert_eq!(removal.elements().len(), 2, "{:?}", removal.elements());
        assert!(removal.elements().contains(&e[0]));
        drop(removal);
        assert!(!owners.has_orphans());
        assert_eq!(owners.len(), 0);

        // Given up before it was sent: nothing to remove.
        drop(Hold::take(&owners, &mut e.clone()).await);
        assert!(!owners.has_orphans());
        assert_eq!(owners.len(), 0);

        // Taken over by a new holder before any close: it stays where the first add put it
        // (not in the hot twin: one copy), and its new holder's close removes it.
        let mut placed = e.clone();
        let mut a = Hold::take(&owners, &mut placed).await;
        a.in_doubt = true;
        drop(a);
        let mut again = e.clone();
        Hold::take(&owners, &mut again).await.keep();
        assert_eq!(
            again[0].set, placed[0].set,
            "a second copy in the other set"
        );
        assert_eq!(owners.release(other.clone()).elements().len(), 1);
        assert_eq!(owners.release(e.clone()).elements(), &placed[..]);

        // Given up while another holder's add is answered: that holder owns it.
        Hold::take(&owners, &mut e.clone()).await.keep();
        let mut b = Hold::take(&owners, &mut e.clone()).await;
        b.in_doubt = true;
        drop(b);
        assert!(!owners.has_orphans());
        assert_eq!(owners.release(e.clone()).elements().len(), 1);
    }

    #[tokio::test]
    async fn a_hold_waits_until_the_removal_is_dropped() {
        let owners = Arc::new(Owners::default());
        let e = vec![element("passive_pin", 5)];
        let removal = owners.release(e.clone());
        let waiting = tokio::spawn({
            let owners = owners.clone();
            let e = e.clone();
            async move { Hold::take(&owners, &mut e.clone()).await.keep() }
        });
        tokio::task::yield_now().await;
        assert!(
            !waiting.is_finished(),
            "the add went before the removal was answered"
        );
        drop(removal);
        waiting.await.expect("hold taken");
        // Released from the main set a moment ago: the new holder's element is in the twin.
        let twin = [element("passive_pin_hot", 5)];
        assert_eq!(owners.release(e.clone()).elements(), &twin[..]);
    }

    #[test]
    fn a_key_back_within_the_window_goes_to_the_twin_and_later_to_the_main_set_again() {
        let owners = Arc::new(Owners::default());
        let t0 = Instant::now();
        let fresh = || vec![element("passive_pin", 9), element("dnat_once6", 9)];
        // First add: the main sets.
        let mut first = fresh();
        owners.hold_at(&mut first, t0);
        assert_eq!(first, fresh());
        // Consumed and closed; its key comes back 50 ms later: the twins.
        let removal = owners.release_at(fresh(), t0 + Duration::from_millis(40));
        assert_eq!(
            removal.elements(),
            &fresh()[..],
            "removed from the main sets"
        );
        drop(removal);
        let mut again = fresh();
        owners.hold_at(&mut again, t0 + Duration::from_millis(50));
        assert_eq!(
            again.iter().map(|e| e.set).collect::<Vec<_>>(),
            ["passive_pin_hot", "dnat_once6_hot"]
        );
        // Its close removes it from the twins.
        let removal = owners.release_at(fresh(), t0 + Duration::from_millis(60));
        assert_eq!(removal.elements(), &again[..]);
        drop(removal);
        // Hot again while the main sets may still hold its dead copy...
        let late = t0 + Duration::from_millis(40) + HOT_WINDOW - Duration::from_millis(1);
        let mut hot = fresh();
        owners.hold_at(&mut hot, late);
        assert_eq!(hot, again);
        drop(owners.release_at(fresh(), late));
        // ...and back in the main sets once the window since it was last there has passed.
        let mut cold = fresh();
        owners.hold_at(&mut cold, t0 + Duration::from_millis(40) + HOT_WINDOW);
        assert_eq!(cold, fresh());
        drop(owners.release_at(fresh(), t0 + HOT_WINDOW * 2));
        assert_eq!(owners.len(), 0);
    }

    #[test]
    fn a_held_element_stays_where_it_is_for_its_next_holder() {
        let owners = Arc::new(Owners::default());
        let t0 = Instant::now();
        let e = || vec![element("active_pin", 3)];
        owners.hold_at(&mut e(), t0);
        drop(owners.release_at(e(), t0));
        // In the twin now; a second session asks for the same element while it is held.
        let mut first = e();
        owners.hold_at(&mut first, t0 + Duration::from_millis(1));
        let mut second = e();
        owners.hold_at(&mut second, t0 + HOT_WINDOW * 2);
        assert_eq!(first[0].set, "active_pin_hot");
        assert_eq!(second, first, "shared: the same kernel element");
        assert!(owners.release(e()).elements().is_empty(), "still held");
        assert_eq!(owners.release(e()).elements(), &first[..]);
    }

    #[test]
    fn maps_and_sets_no_rule_consumes_are_never_moved() {
        let owners = Arc::new(Owners::default());
        let e = || vec![element("dnat_to", 1), element("snat_to6", 1)];
        for _ in 0..3 {
            let mut placed = e();
            owners.hold(&mut placed);
            assert_eq!(placed, e());
            assert_eq!(owners.release(e()).elements(), &e()[..]);
        }
        assert!(hot_twin("dnat_to").is_none());
    }

    #[test]
    fn old_stamps_are_forgotten() {
        let owners = Arc::new(Owners::default());
        let t0 = Instant::now();
        for key in 0..100u8 {
            let mut e = vec![element("passive_pin", key)];
            owners.hold_at(&mut e, t0);
            drop(owners.release_at(e, t0));
        }
        assert_eq!(owners.state().in_main.len(), 100);
        // One stamp past the window prunes the hundred before it.
        let mut e = vec![element("passive_pin", 200)];
        owners.hold_at(&mut e, t0 + HOT_WINDOW);
        let state = owners.state();
        assert_eq!(state.in_main.len(), 1);
        assert_eq!(state.stamps.len(), 1);
    }
}
