//! The leader's lease clock: in-memory deadlines, keepalives, and finding due leases.
//!
//! Keepalives are not Raft writes. Every node tracks the set of live leases as the state
//! machine applies grants and ends, but deadlines only mean something on the leader:
//! - when a node starts leading in a term, [`LeaseClock::lead`] restarts every countdown
//!   at the full TTL from that moment (it cannot know when the last keepalive reached the
//!   previous leader), so a failover never expires a lease early;
//! - a keepalive moves the deadline to now + TTL on this monotonic clock; a keepalive for
//!   a lease whose expiry has already been proposed is refused, so an accepted keepalive
//!   always means "not expired before now + TTL";
//! - the expiry loop (in `crate::app`) takes the due leases and proposes one Raft entry
//!   expiring them all.
//!
//! Bound (documented in the README): with no keepalives a lease expires no earlier than
//! TTL after the last accepted keepalive (or its grant), and no later than TTL + lease
//! tick + one commit without a failover; each failover in between can add up to one TTL
//! plus the election time, because the new leader restarts the countdown.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use locks::{Lease, LeaseId};
use tokio::time::Instant;

/// One lease's countdown.
#[derive(Debug, Clone, Copy)]
struct Countdown {
    ttl: Duration,
    deadline: Instant,
    /// An expiry for this lease has been proposed and not yet applied or failed: do not
    /// propose it again, and refuse keepalives (the lease is going).
    expiring: bool,
}

#[derive(Debug, Default)]
struct Inner {
    leases: HashMap<LeaseId, Countdown>,
    /// The term this node leads in and has restarted the countdowns for, if any.
    leading_term: Option<u64>,
}

/// Why a keepalive was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeepaliveError {
    /// No such lease (never existed, revoked, or expired and applied).
    NotFound,
    /// The expiry of this lease has been proposed.
    Expired,
    /// This node is not leading; the caller forwards to the leader.
    NotLeader,
}

/// Cheap handle; `std::sync::Mutex` because nothing awaits while holding it.
#[derive(Debug, Clone, Default)]
pub struct LeaseClock {
    inner: Arc<Mutex<Inner>>,
}

impl LeaseClock {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A lease was granted (applied): start its countdown at the full TTL.
    pub fn track(&self, lease: &Lease) {
        let ttl = Duration::from_millis(lease.ttl_ms);
        self.lock().leases.entry(lease.id).or_insert(Countdown {
            ttl,
            deadline: Instant::now() + ttl,
            expiring: false,
        });
    }

    /// A lease ended (applied revoke or expiry).
    pub fn forget(&self, id: &LeaseId) {
        self.lock().leases.remove(id);
    }

    /// Replaces the tracked set (after loading or installing a snapshot).
    pub fn reset<'a>(&self, leases: impl Iterator<Item = &'a Lease>) {
        let now = Instant::now();
        let mut inner = self.lock();
        inner.leases = leases
            .map(|l| {
                let ttl = Duration::from_millis(l.ttl_ms);
                (
                    l.id,
                    Countdown {
                        ttl,
                        deadline: now + ttl,
                        expiring: false,
                    },
                )
            })
            .collect();
    }

    /// This node leads in `term`. The first call for a term restarts every countdown at
    /// its full TTL; later calls for the same term change nothing.
    pub fn lead(&self, term: u64) {
        let mut inner = self.lock();
        if inner.leading_term == Some(term) {
            return;
        }
        let now = Instant::now();
        for countdown in inner.leases.values_mut() {
            countdown.deadline = now + countdown.ttl;
            countdown.expiring = false;
        }
        inner.leading_term = Some(term);
        tracing::info!(
            term,
            leases = inner.leases.len(),
            "leading: lease countdowns restarted"
        );
    }

    /// This node no longer leads.
    pub fn step_down(&self) {
        self.lock().leading_term = None;
    }

    /// The term this node leads in, if it does.
    pub fn leading_term(&self) -> Option<u64> {
        self.lock().leading_term
    }

    /// Renews a lease on the leader; returns its TTL (the new time remaining).
    pub fn keepalive(&self, id: &LeaseId) -> Result<Duration, KeepaliveError> {
        let now = Instant::now();
        let mut inner = self.lock();
        if inner.leading_term.is_none() {
            return Err(KeepaliveError::NotLeader);
        }
        let countdown = inner.leases.get_mut(id).ok_or(KeepaliveError::NotFound)?;
        // Past its deadline but not yet taken for expiry (e.g. held back by storm
        // protection): the lease has not ended, so a keepalive revives it.
        if countdown.expiring {
            return Err(KeepaliveError::Expired);
        }
        countdown.deadline = now + countdown.ttl;
        Ok(countdown.ttl)
    }

    /// Time left before the leader expires this lease; `None` when not leading or unknown.
    pub fn remaining(&self, id: &LeaseId) -> Option<Duration> {
        let inner = self.lock();
        inner.leading_term?;
        let countdown = inner.leases.get(id)?;
        Some(countdown.deadline.saturating_duration_since(Instant::now()))
    }

    /// Takes up to `limit` leases whose deadline has passed and marks them expiring.
    /// Empty when not leading.
    pub fn take_due(&self, limit: usize) -> Vec<LeaseId> {
        let now = Instant::now();
        let mut inner = self.lock();
        if inner.leading_term.is_none() {
            return Vec::new();
        }
        let mut due = Vec::new();
        for (id, countdown) in inner.leases.iter_mut() {
            if due.len() == limit {
                break;
            }
            if !countdown.expiring && countdown.deadline <= now {
                countdown.expiring = true;
                due.push(*id);
            }
        }
        due
    }

    /// An expiry proposal failed: these leases may be proposed again. Their deadlines
    /// stay passed; a new leader would restart them anyway.
    pub fn unmark(&self, ids: &[LeaseId]) {
        let mut inner = self.lock();
        for id in ids {
            if let Some(countdown) = inner.leases.get_mut(id) {
                countdown.expiring = false;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(n: u128, ttl_ms: u64) -> Lease {
        Lease {
            id: LeaseId::from_u128(n),
            ttl_ms,
            granted_index: 1,
            granted_at_ms: 0,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn followers_neither_renew_nor_expire() {
        let clock = LeaseClock::default();
        clock.track(&lease(1, 1000));
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(
            clock.keepalive(&LeaseId::from_u128(1)),
            Err(KeepaliveError::NotLeader)
        );
        assert!(clock.take_due(10).is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn new_leader_restarts_countdowns_at_full_ttl() {
        let clock = LeaseClock::default();
        clock.track(&lease(1, 1000));
        tokio::time::advance(Duration::from_millis(900)).await;
        clock.lead(2);
        tokio::time::advance(Duration::from_millis(999)).await;
        assert!(
            clock.take_due(10).is_empty(),
            "expired early after a leader change"
        );
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(clock.take_due(10), vec![LeaseId::from_u128(1)]);
    }

    #[tokio::test(start_paused = true)]
    async fn lead_twice_in_one_term_does_not_restart() {
        let clock = LeaseClock::default();
        clock.track(&lease(1, 1000));
        clock.lead(3);
        tokio::time::advance(Duration::from_millis(600)).await;
        clock.lead(3);
        tokio::time::advance(Duration::from_millis(400)).await;
        assert_eq!(clock.take_due(10), vec![LeaseId::from_u128(1)]);
    }

    #[tokio::test(start_paused = true)]
    async fn keepalive_moves_deadline_and_is_refused_once_expiry_is_proposed() {
        let clock = LeaseClock::default();
        let id = LeaseId::from_u128(1);
        clock.track(&lease(1, 1000));
        clock.lead(1);
        tokio::time::advance(Duration::from_millis(800)).await;
        assert_eq!(clock.keepalive(&id), Ok(Duration::from_millis(1000)));
        tokio::time::advance(Duration::from_millis(800)).await;
        assert!(clock.take_due(10).is_empty());
        assert_eq!(clock.remaining(&id), Some(Duration::from_millis(200)));
        tokio::time::advance(Duration::from_millis(200)).await;
        assert_eq!(clock.take_due(10), vec![id]);
        assert_eq!(
            clock.keepalive(&id),
            Err(KeepaliveError::Expired),
            "expiry in flight"
        );
        assert!(
            clock.take_due(10).is_empty(),
            "a lease being expired is proposed once"
        );
        clock.unmark(&[id]);
        assert_eq!(clock.take_due(10), vec![id], "a failed proposal is retried");
        clock.unmark(&[id]);
        assert_eq!(
            clock.keepalive(&id),
            Ok(Duration::from_millis(1000)),
            "a held-back lease revives"
        );
        assert!(clock.take_due(10).is_empty());
        clock.forget(&id);
        assert_eq!(clock.keepalive(&id), Err(KeepaliveError::NotFound));
    }

    #[tokio::test(start_paused = true)]
    async fn take_due_respects_limit() {
        let clock = LeaseClock::default();
        for n in 0..10 {
            clock.track(&lease(n, 1000));
        }
        clock.lead(1);
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(clock.take_due(4).len(), 4);
        assert_eq!(clock.take_due(100).len(), 6);
    }
}
