//! Wake-ups for blocking queries and parked lock requests: one `tokio::sync::watch`
//! channel per watched service, lock or election, one per list, and one `Notify` per
//! parked acquire or campaign.
//!
//! The state machine calls [`Watches::notify`] after each applied batch with the services
//! that changed; a blocking query subscribes *before* it reads the state and then awaits
//! its channel, so it cannot miss a change. A watcher of one service is never woken by
//! another's change, and thousands of waiting watchers cost one channel and one waker
//! each: no polling, no thread per watcher.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex, MutexGuard};

use locks::{Key, Kind, Ticket};
use tokio::sync::{watch, Notify};

use crate::replicated::intern::Name;

/// Channel count from which [`Channels::subscribe`] sweeps unwatched channels.
const SWEEP_AT: usize = 1024;

/// One watch channel per name, made when first watched and dropped when nobody watches.
/// `std::sync::Mutex`: nothing awaits while holding it.
#[derive(Debug)]
struct Channels<K> {
    senders: Mutex<HashMap<K, watch::Sender<u64>>>,
}

impl<K> Default for Channels<K> {
    fn default() -> Self {
        Self {
            senders: Mutex::new(HashMap::new()),
        }
    }
}

impl<K: Hash + Eq + Clone> Channels<K> {
    fn senders(&self) -> MutexGuard<'_, HashMap<K, watch::Sender<u64>>> {
        self.senders.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn subscribe(&self, name: &K) -> watch::Receiver<u64> {
        let mut senders = self.senders();
        // Channels of names nobody watches any more are dropped when those names change;
        // names that never change (watched once, never used) are swept here, once there
        // are enough of them to matter.
        if senders.len() >= SWEEP_AT && senders.len().is_power_of_two() {
            senders.retain(|_, sender| sender.receiver_count() > 0);
        }
        match senders.get(name) {
            Some(sender) => sender.subscribe(),
            None => {
                let (sender, receiver) = watch::channel(0);
                senders.insert(name.clone(), sender);
                receiver
            }
        }
    }

    /// Wakes the watchers of `changed`; returns whether there was any name at all.
    fn notify<'a>(&self, changed: impl IntoIterator<Item = &'a K>, index: u64) -> bool
    where
        K: 'a,
    {
        let mut any = false;
        let mut senders = self.senders();
        for name in changed {
            any = true;
            if let Some(sender) = senders.get(name) {
                if sender.receiver_count() == 0 {
                    // Nobody waits any more: forget the channel.
                    senders.remove(name);
                } else {
                    sender.send_replace(index);
                }
            }
        }
        any
    }

    fn notify_all(&self, index: u64) {
        let mut senders = self.senders();
        senders.retain(|_, sender| sender.receiver_count() > 0);
        for sender in senders.values() {
            sender.send_replace(index);
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.senders().len()
    }
}

#[derive(Debug)]
struct Inner {
    services: Channels<Name>,
    catalog: watch::Sender<u64>,
    locks: Channels<Key>,
    /// "Some lock changed" and "some election changed", for the list routes.
    kinds: [watch::Sender<u64>; 2],
    /// Acquire and campaign requests parked on this node, by ticket.
    parked: Mutex<HashMap<Ticket, Arc<Notify>>>,
}

/// Cheap handle; `std::sync::Mutex` because nothing awaits while holding it.
#[derive(Debug, Clone)]
pub struct Watches {
    inner: Arc<Inner>,
}

impl Default for Watches {
    fn default() -> Self {
        Self {
            inner: Arc::new(Inner {
                services: Channels::default(),
                catalog: watch::channel(0).0,
                locks: Channels::default(),
                kinds: [watch::channel(0).0, watch::channel(0).0],
                parked: Mutex::default(),
            }),
        }
    }
}

fn kind_slot(kind: Kind) -> usize {
    match kind {
        Kind::Lock => 0,
        Kind::Election => 1,
    }
}

impl Watches {
    /// A receiver woken whenever `service` changes (the value is the change's index).
    pub fn service(&self, service: &str) -> watch::Receiver<u64> {
        self.inner.services.subscribe(&Name::from(service))
    }

    /// A receiver woken whenever anything in the catalog changes.
    pub fn catalog(&self) -> watch::Receiver<u64> {
        self.inner.catalog.subscribe()
    }

    /// A receiver woken whenever the lock (or election) `key` changes.
    pub fn lock(&self, key: &Key) -> watch::Receiver<u64> {
        self.inner.locks.subscribe(key)
    }

    /// A receiver woken whenever any lock (or any election) changes.
    pub fn kind(&self, kind: Kind) -> watch::Receiver<u64> {
        self.inner.kinds[kind_slot(kind)].subscribe()
    }

    /// Wakes the watchers of `changed` services and of the catalog.
    pub fn notify<'a>(&self, changed: impl IntoIterator<Item = &'a Name>, index: u64) {
        if self.inner.services.notify(changed, index) {
            self.inner.catalog.send_replace(index);
        }
    }

    /// Wakes the watchers of `changed` locks and elections and of their lists.
    pub fn notify_locks<'a>(&self, changed: impl IntoIterator<Item = &'a Key>, index: u64) {
        let changed: Vec<&Key> = changed.into_iter().collect();
        for kind in [Kind::Lock, Kind::Election] {
            if changed.iter().any(|k| k.kind == kind) {
                self.inner.kinds[kind_slot(kind)].send_replace(index);
            }
        }
        self.inner.locks.notify(changed, index);
    }

    /// Wakes every watcher (after a snapshot replaced the whole state), parked requests
    /// included: each looks at the new state itself.
    pub fn notify_all(&self, index: u64) {
        self.inner.services.notify_all(index);
        self.inner.catalog.send_replace(index);
        self.inner.locks.notify_all(index);
        for kind in &self.inner.kinds {
            kind.send_replace(index);
        }
        for notify in self.parked().values() {
            notify.notify_one();
        }
    }

    fn parked(&self) -> MutexGuard<'_, HashMap<Ticket, Arc<Notify>>> {
        self.inner.parked.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Parks the request behind `ticket` until [`Watches::wake`] names it. Park *before*
    /// proposing, so a grant applied before the request starts waiting is not missed
    /// (`Notify` keeps the wake-up).
    pub fn park(&self, ticket: Ticket) -> Parked {
        let notify = Arc::new(Notify::new());
        self.parked().insert(ticket, notify.clone());
        Parked {
            watches: self.clone(),
            ticket,
            notify,
        }
    }

    /// Wakes the parked requests among `tickets` (those decided by an apply); others are
    /// parked on other nodes, or gone.
    pub fn wake(&self, tickets: &[Ticket]) {
        if tickets.is_empty() {
            return;
        }
        let parked = self.parked();
        for ticket in tickets {
            if let Some(notify) = parked.get(ticket) {
                notify.notify_one();
            }
        }
    }
}

/// A parked request's registration; unregistered on drop.
#[derive(Debug)]
pub struct Parked {
    watches: Watches,
    ticket: Ticket,
    notify: Arc<Notify>,
}

impl Parked {
    /// Resolves when the request's ticket was decided (or the state was replaced).
    pub async fn woken(&self) {
        self.notify.notified().await
    }
}

impl Drop for Parked {
    fn drop(&mut self) {
        self.watches.parked().remove(&self.ticket);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn only_the_changed_service_is_woken() {
        let watches = Watches::default();
        let mut a = watches.service("a");
        let b = watches.service("b");
        let mut all = watches.catalog();
        watches.notify([&Name::from("a")], 7);
        assert!(a.has_changed().unwrap());
        assert_eq!(*a.borrow_and_update(), 7);
        assert!(!b.has_changed().unwrap());
        assert!(all.has_changed().unwrap());
        assert_eq!(*all.borrow_and_update(), 7);
        watches.notify(std::iter::empty(), 8);
        assert!(!all.has_changed().unwrap(), "no change, no wake-up");
    }

    #[tokio::test]
    async fn channels_of_names_that_never_change_are_swept() {
        let watches = Watches::default();
        for i in 0..SWEEP_AT {
            drop(watches.service(&format!("nobody-{i}")));
        }
        let kept = watches.service("kept");
        assert!(
            watches.inner.services.len() <= SWEEP_AT,
            "unwatched channels were swept"
        );
        assert!(watches.inner.services.senders().contains_key("kept"));
        drop(kept);
    }

    #[tokio::test]
    async fn only_the_named_parked_request_is_woken() {
        let watches = Watches::default();
        let a = watches.park(Ticket::from_u128(1));
        let b = watches.park(Ticket::from_u128(2));
        watches.wake(&[Ticket::from_u128(1)]);
        // `Notify` kept the wake-up for `a`, issued before it started waiting.
        tokio::time::timeout(std::time::Duration::from_secs(1), a.woken())
            .await
            .unwrap();
        let waited = tokio::time::timeout(std::time::Duration::from_millis(20), b.woken()).await;
        assert!(waited.is_err(), "b was not woken");
        drop(a);
        assert_eq!(watches.parked().len(), 1, "a dropped its registration");
    }

    #[tokio::test]
    async fn lock_changes_wake_the_lock_and_its_list_only() {
        let watches = Watches::default();
        let mut a = watches.lock(&Key::lock("a"));
        let mut election = watches.lock(&Key::election("a"));
        let mut locks = watches.kind(Kind::Lock);
        let mut elections = watches.kind(Kind::Election);
        watches.notify_locks([&Key::lock("a")], 5);
        assert!(a.has_changed().unwrap());
        assert!(locks.has_changed().unwrap());
        assert!(!election.has_changed().unwrap());
        assert!(!elections.has_changed().unwrap());
        a.borrow_and_update();
        locks.borrow_and_update();
        election.borrow_and_update();
        elections.borrow_and_update();
    }

    #[tokio::test]
    async fn channels_without_watchers_are_dropped() {
        let watches = Watches::default();
        drop(watches.service("a"));
        watches.notify([&Name::from("a")], 3);
        assert_eq!(watches.inner.services.len(), 0);
    }
}
