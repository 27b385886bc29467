//! How much one node holds at once: blocking queries and waiting lock and election
//! requests each take a slot, and a request that finds none is answered 429
//! `too_many_waiters` at once instead of parking another connection and task.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use super::{App, AppError};
use crate::listener::ConnectionCount;

/// A counted resource with a ceiling. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Slots {
    used: Arc<AtomicUsize>,
    max: usize,
    what: &'static str,
}

/// One taken slot, given back when dropped.
#[derive(Debug)]
pub struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Slots {
    pub fn new(max: usize, what: &'static str) -> Self {
        Slots {
            used: Arc::default(),
            max,
            what,
        }
    }

    /// Takes a slot, or says there is none.
    pub fn take(&self) -> Result<Slot, AppError> {
        let taken = self
            .used
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < self.max).then_some(n + 1)
            });
        match taken {
            Ok(_) => Ok(Slot(self.used.clone())),
            Err(_) => Err(AppError::TooManyWaiters(format!(
                "this server holds {} {} already (its limit); retry shortly or ask another server",
                self.max, self.what
            ))),
        }
    }

    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    pub fn max(&self) -> usize {
        self.max
    }
}

/// The node's limits and what is in use, for `GET /v1/cluster`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimitsInfo {
    pub connections: usize,
    pub max_connections: usize,
    pub peer_connections: Option<usize>,
    pub blocking_queries: usize,
    pub max_blocking_queries: usize,
    pub parked_waiters: usize,
    pub max_parked_waiters: usize,
    pub queued_writes: usize,
    pub max_queued_writes: usize,
}

/// The limits a node is started with.
#[derive(Debug, Clone, Copy)]
pub struct LimitsConfig {
    pub max_connections: usize,
    pub max_blocking_queries: usize,
    pub max_parked_waiters: usize,
}

/// The node's counted resources.
#[derive(Debug, Clone)]
pub(super) struct Limits {
    pub connections: ConnectionCount,
    pub peer_connections: Option<ConnectionCount>,
    pub max_connections: usize,
    pub blocking: Slots,
    pub parked: Slots,
}

impl Limits {
    pub fn new(
        config: LimitsConfig,
        connections: ConnectionCount,
        peer_connections: Option<ConnectionCount>,
    ) -> Self {
        Limits {
            connections,
            peer_connections,
            max_connections: config.max_connections,
            blocking: Slots::new(config.max_blocking_queries, "blocking queries"),
            parked: Slots::new(
                config.max_parked_waiters,
                "waiting lock and election requests",
            ),
        }
    }
}

impl App {
    /// What this node holds now against its limits.
    pub fn limits(&self) -> LimitsInfo {
        let limits = &self.inner.limits;
        let (queued_writes, max_queued_writes) = self.inner.proposer.queue();
        LimitsInfo {
            connections: limits.connections.get(),
            max_connections: limits.max_connections,
            peer_connections: limits.peer_connections.as_ref().map(ConnectionCount::get),
            blocking_queries: limits.blocking.used(),
            max_blocking_queries: limits.blocking.max(),
            parked_waiters: limits.parked.used(),
            max_parked_waiters: limits.parked.max(),
            queued_writes,
            max_queued_writes,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_run_out_and_come_back() {
        let slots = Slots::new(2, "things");
        let a = slots.take().expect("first");
        let _b = slots.take().expect("second");
        let refused = slots.take().expect_err("over the limit");
        assert!(matches!(refused, AppError::TooManyWaiters(ref m) if m.contains("2 things")));
        assert_eq!(slots.used(), 2);
        drop(a);
        assert_eq!(slots.used(), 1);
        assert!(slots.take().is_ok());
    }
}
