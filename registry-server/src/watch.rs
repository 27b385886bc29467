//! Wake-ups for blocking queries: one `tokio::sync::watch` channel per watched service and
//! one for the whole catalog.
//!
//! The state machine calls [`Watches::notify`] after each applied batch with the services
//! that changed; a blocking query subscribes *before* it reads the state and then awaits
//! its channel, so it cannot miss a change. A watcher of one service is never woken by
//! another's change, and thousands of waiting watchers cost one channel and one waker
//! each: no polling, no thread per watcher.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::watch;

/// Channel count from which [`Watches::service`] sweeps unwatched channels.
const SWEEP_AT: usize = 1024;

#[derive(Debug)]
struct Inner {
    services: Mutex<HashMap<String, watch::Sender<u64>>>,
    catalog: watch::Sender<u64>,
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
                services: Mutex::default(),
                catalog: watch::channel(0).0,
            }),
        }
    }
}

impl Watches {
    fn services(&self) -> MutexGuard<'_, HashMap<String, watch::Sender<u64>>> {
        self.inner
            .services
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// A receiver woken whenever `service` changes (the value is the change's index).
    pub fn service(&self, service: &str) -> watch::Receiver<u64> {
        let mut services = self.services();
        // Channels of services nobody watches any more are dropped when those services
        // change; names that never change (watched once, never registered) are swept
        // here, once there are enough of them to matter.
        if services.len() >= SWEEP_AT && services.len().is_power_of_two() {
            services.retain(|_, sender| sender.receiver_count() > 0);
        }
        match services.get(service) {
            Some(sender) => sender.subscribe(),
            None => {
                let (sender, receiver) = watch::channel(0);
                services.insert(service.to_owned(), sender);
                receiver
            }
        }
    }

    /// A receiver woken whenever anything in the catalog changes.
    pub fn catalog(&self) -> watch::Receiver<u64> {
        self.inner.catalog.subscribe()
    }

    /// Wakes the watchers of `changed` services and of the catalog.
    pub fn notify<'a>(&self, changed: impl IntoIterator<Item = &'a String>, index: u64) {
        let mut any = false;
        let mut services = self.services();
        for name in changed {
            any = true;
            if let Some(sender) = services.get(name) {
                if sender.receiver_count() == 0 {
                    // Nobody waits any more: forget the channel.
                    services.remove(name);
                } else {
                    sender.send_replace(index);
                }
            }
        }
        drop(services);
        if any {
            self.inner.catalog.send_replace(index);
        }
    }
}

impl Watches {
    /// Wakes every watcher (after a snapshot replaced the whole state).
    pub fn notify_all(&self, index: u64) {
        let mut services = self.services();
        services.retain(|_, sender| sender.receiver_count() > 0);
        for sender in services.values() {
            sender.send_replace(index);
        }
        drop(services);
        self.inner.catalog.send_replace(index);
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
        watches.notify([&"a".to_owned()], 7);
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
            watches.services().len() <= SWEEP_AT,
            "unwatched channels were swept"
        );
        assert!(watches.services().contains_key("kept"));
        drop(kept);
    }

    #[tokio::test]
    async fn channels_without_watchers_are_dropped() {
        let watches = Watches::default();
        drop(watches.service("a"));
        watches.notify([&"a".to_owned()], 3);
        assert!(watches.services().is_empty());
    }
}
