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

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::oneshot;

use super::Element;

type Id = (&'static str, Vec<u8>);

#[derive(Debug, Default)]
struct Holders {
    /// Open pinholes that hold the element.
    count: u32,
    /// Removals of the element sent (or about to be) and not yet answered.
    removing: u32,
    /// Adds waiting for those removals.
    waiters: Vec<oneshot::Sender<()>>,
}

#[derive(Debug, Default)]
pub(super) struct Owners {
    map: Mutex<HashMap<Id, Holders>>,
}

fn id(element: &Element) -> Id {
    (element.set, element.key.clone())
}

impl Owners {
    fn map(&self) -> MutexGuard<'_, HashMap<Id, Holders>> {
        // Nothing in here panics while the lock is held; a poisoned map is still consistent.
        self.map
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Counts one more holder of each element. The add may be sent once every returned
    /// receiver has fired (or been dropped): each stands for a removal of one of the elements
    /// still in flight.
    pub(super) fn hold(&self, elements: &[Element]) -> Vec<oneshot::Receiver<()>> {
        let mut map = self.map();
        let mut waits = Vec::new();
        for element in elements {
            let holders = map.entry(id(element)).or_default();
            holders.count += 1;
            if holders.removing > 0 {
                let (tx, rx) = oneshot::channel();
                holders.waiters.push(tx);
                waits.push(rx);
            }
        }
        waits
    }

    /// Undoes a [`Owners::hold`] whose add failed or was given up.
    pub(super) fn unhold(&self, elements: &[Element]) {
        let mut map = self.map();
        for element in elements {
            let id = id(element);
            if let Some(holders) = map.get_mut(&id) {
                holders.count = holders.count.saturating_sub(1);
                if holders.count == 0 && holders.removing == 0 {
                    map.remove(&id);
                }
            }
        }
    }

    /// Drops one holder of each element and returns the elements nobody holds any more: those
    /// a close must remove from the kernel, marked as being removed until the returned
    /// [`Removal`] is dropped. Elements never counted (e.g. left by a previous daemon) are
    /// returned too.
    pub(super) fn release(self: &Arc<Self>, elements: Vec<Element>) -> Removal {
        let mut map = self.map();
        let gone = elements
            .into_iter()
            .filter(|element| {
                let holders = map.entry(id(element)).or_default();
                if holders.count > 1 {
                    holders.count -= 1;
                    false
                } else {
                    holders.count = 0;
                    holders.removing += 1;
                    true
                }
            })
            .collect();
        Removal {
            owners: self.clone(),
            elements: gone,
        }
    }

    /// The kernel has answered the removal of `elements`: adds waiting for it may go.
    fn removed(&self, elements: &[Element]) {
        let mut map = self.map();
        for element in elements {
            let id = id(element);
            let Some(holders) = map.get_mut(&id) else {
                continue;
            };
            holders.removing = holders.removing.saturating_sub(1);
            if holders.removing > 0 {
                continue;
            }
            for waiter in holders.waiters.drain(..) {
                let _ = waiter.send(());
            }
            if holders.count == 0 {
                map.remove(&id);
            }
        }
    }

    /// Elements tracked (held or being removed), for tests.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.map().len()
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
/// or whose caller stopped waiting, leaves no holder behind.
#[derive(Debug)]
pub(super) struct Hold {
    owners: Arc<Owners>,
    elements: Vec<Element>,
    kept: bool,
}

impl Hold {
    /// Takes the hold and waits for removals of the same elements still in flight.
    pub(super) async fn take(owners: &Arc<Owners>, elements: &[Element]) -> Self {
        let waits = owners.hold(elements);
        let hold = Self {
            owners: owners.clone(),
            elements: elements.to_vec(),
            kept: false,
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
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        if !self.kept {
            self.owners.unhold(&self.elements);
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
        let e = [element("passive_pin", 1)];
        assert!(owners.hold(&e).is_empty());
        assert!(owners.hold(&e).is_empty());
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
        let e = [element("passive_pin", 1)];
        let other = [element("passive_pin", 2)];
        owners.hold(&e);
        let removal = owners.release(e.to_vec());
        assert_eq!(removal.elements(), &e);
        // A new holder of the same element must not add it before the removal is answered...
        let mut waits = owners.hold(&e);
        assert_eq!(waits.len(), 1);
        assert!(!ready(&mut waits[0]));
        // ...while other elements go at once.
        assert!(owners.hold(&other).is_empty());
        drop(removal);
        assert!(ready(&mut waits[0]), "the removal was answered");
        // The new holder keeps the element: closing it removes it again.
        assert_eq!(owners.release(e.to_vec()).elements(), &e);
    }

    #[test]
    fn two_removals_in_flight_both_finish_before_an_add() {
        let owners = Arc::new(Owners::default());
        let e = [element("active_pin", 7)];
        // Never held (e.g. a close repeated, or left by a previous daemon): removed anyway.
        let first = owners.release(e.to_vec());
        let second = owners.release(e.to_vec());
        assert_eq!(second.elements(), &e);
        let mut waits = owners.hold(&e);
        drop(first);
        assert!(!ready(&mut waits[0]), "one removal is still in flight");
        drop(second);
        assert!(ready(&mut waits[0]));
    }

    #[tokio::test]
    async fn a_hold_given_up_or_failed_is_undone() {
        let owners = Arc::new(Owners::default());
        let e = vec![element("passive_pin", 3), element("passive_pin", 4)];
        let hold = Hold::take(&owners, &e).await;
        drop(hold);
        assert_eq!(owners.len(), 0, "a dropped hold leaves no holder");
        Hold::take(&owners, &e).await.keep();
        assert_eq!(owners.len(), 2);
        assert_eq!(owners.release(e.clone()).elements(), &e[..]);
        assert_eq!(owners.len(), 0);
    }

    #[tokio::test]
    async fn a_hold_waits_until_the_removal_is_dropped() {
        let owners = Arc::new(Owners::default());
        let e = vec![element("passive_pin", 5)];
        let removal = owners.release(e.clone());
        let waiting = tokio::spawn({
            let owners = owners.clone();
            let e = e.clone();
            async move { Hold::take(&owners, &e).await.keep() }
        });
        tokio::task::yield_now().await;
        assert!(
            !waiting.is_finished(),
            "the add went before the removal was answered"
        );
        drop(removal);
        waiting.await.expect("hold taken");
        assert_eq!(owners.release(e.clone()).elements(), &e[..]);
    }
}
