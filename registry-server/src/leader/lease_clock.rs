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

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use locks::{Lease, LeaseId};
use tokio::time::Instant;

/// One lease's countdown: 16 bytes, as a million leases are a million of these.
#[derive(Debug, Clone, Copy)]
struct Countdown {
    /// Milliseconds after [`Inner::base`].
    deadline_ms: u64,
    /// The lease's TTL (at most a day, [`api_spec::MAX_LEASE_TTL`]).
    ttl_ms: u32,
    /// An expiry for this lease has been proposed and not yet applied or failed: do not
    /// propose it again, and refuse keepalives (the lease is going).
    expiring: bool,
}

#[derive(Debug)]
struct Inner {
    /// When the clock started: deadlines count from here.
    base: Instant,
    /// A B-tree rather than a hash map: a hash table of a million entries can hold two
    /// million slots; a B-tree's nodes stay about three quarters full.
    leases: BTreeMap<LeaseId, Countdown>,
    /// While leading: every tracked lease once, by a deadline no later than its own
    /// (a keepalive moves the deadline without touching this; an entry found early is
    /// put back at the real deadline). Entries of leases gone are dropped when they come
    /// up, or all at once when they outnumber the live ones. Empty on followers.
    due: BinaryHeap<Reverse<(u64, LeaseId)>>,
    /// The term this node leads in and has restarted the countdowns for, if any.
    leading_term: Option<u64>,
}

impl Default for Inner {
    fn default() -> Self {
        Self {
            base: Instant::now(),
            leases: BTreeMap::new(),
            due: BinaryHeap::new(),
            leading_term: None,
        }
    }
}

impl Inner {
    fn now_ms(&self, now: Instant) -> u64 {
        u64::try_from(now.saturating_duration_since(self.base).as_millis()).unwrap_or(u64::MAX)
    }

    fn countdown(&self, ttl_ms: u64, now: Instant) -> Countdown {
        let ttl_ms = u32::try_from(ttl_ms).unwrap_or(u32::MAX);
        Countdown {
            deadline_ms: self.now_ms(now) + u64::from(ttl_ms),
            ttl_ms,
            expiring: false,
        }
    }

    /// Puts every tracked lease in the due queue again (leading starts, or the queue
    /// holds too many entries of leases that are gone).
    fn rebuild_due(&mut self) {
        self.due = self
            .leases
            .iter()
            .map(|(id, c)| Reverse((c.deadline_ms, *id)))
            .collect();
    }
}

/// Leases whose countdown ran out, and the term of the countdowns.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Due {
    pub term: u64,
    pub ids: Vec<LeaseId>,
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
        let mut inner = self.lock();
        if inner.leases.contains_key(&lease.id) {
            return;
        }
        let countdown = inner.countdown(lease.ttl_ms, Instant::now());
        inner.leases.insert(lease.id, countdown);
        if inner.leading_term.is_some() {
            inner.due.push(Reverse((countdown.deadline_ms, lease.id)));
        }
    }

    /// A lease ended (applied revoke or expiry).
    pub fn forget(&self, id: &LeaseId) {
        let mut inner = self.lock();
        inner.leases.remove(id);
        if inner.due.len() > 2 * inner.leases.len() + 1024 {
            inner.rebuild_due();
        }
    }

    /// Replaces the tracked set (after loading or installing a snapshot).
    pub fn reset(&self, leases: impl Iterator<Item = Lease>) {
        let now = Instant::now();
        let mut inner = self.lock();
        let tracked = leases
            .map(|l| (l.id, inner.countdown(l.ttl_ms, now)))
            .collect();
        inner.leases = tracked;
        if inner.leading_term.is_some() {
            inner.rebuild_due();
        }
    }

    /// This node leads in `term`. The first call for a term restarts every countdown at
    /// its full TTL; later calls for the same term change nothing.
    pub fn lead(&self, term: u64) {
        let mut inner = self.lock();
        if inner.leading_term == Some(term) {
            return;
        }
        let now_ms = inner.now_ms(Instant::now());
        for countdown in inner.leases.values_mut() {
            countdown.deadline_ms = now_ms + u64::from(countdown.ttl_ms);
            countdown.expiring = false;
        }
        inner.rebuild_due();
        inner.leading_term = Some(term);
        tracing::info!(
            term,
            leases = inner.leases.len(),
            "leading: lease countdowns restarted"
        );
    }

    /// This node no longer leads.
    pub fn step_down(&self) {
        let mut inner = self.lock();
        inner.leading_term = None;
        inner.due = BinaryHeap::new();
    }

    /// The term this node leads in, if it does.
    pub fn leading_term(&self) -> Option<u64> {
        self.lock().leading_term
    }

    /// Renews a lease on the leader; returns its TTL (the new time remaining).
    pub fn keepalive(&self, id: &LeaseId) -> Result<Duration, KeepaliveError> {
        let mut inner = self.lock();
        if inner.leading_term.is_none() {
            return Err(KeepaliveError::NotLeader);
        }
        let now_ms = inner.now_ms(Instant::now());
        let countdown = inner.leases.get_mut(id).ok_or(KeepaliveError::NotFound)?;
        // Past its deadline but not yet taken for expiry (e.g. held back by storm
        // protection): the lease has not ended, so a keepalive revives it.
        if countdown.expiring {
            return Err(KeepaliveError::Expired);
        }
        countdown.deadline_ms = now_ms + u64::from(countdown.ttl_ms);
        Ok(Duration::from_millis(u64::from(countdown.ttl_ms)))
    }

    /// Time left before the leader expires this lease; `None` when not leading or unknown.
    pub fn remaining(&self, id: &LeaseId) -> Option<Duration> {
        let inner = self.lock();
        inner.leading_term?;
        let countdown = inner.leases.get(id)?;
        let now_ms = inner.now_ms(Instant::now());
        Some(Duration::from_millis(
            countdown.deadline_ms.saturating_sub(now_ms),
        ))
    }

    /// Takes up to `limit` leases whose deadline has passed, oldest first, and marks them
    /// expiring, with the term whose countdowns they ran out on (the expiry must be
    /// appended in that term: [`crate::replicated::ops::ExpireLeases`]). Empty when not
    /// leading. Looks only at the entries that came up, not at every lease.
    pub fn take_due(&self, limit: usize) -> Due {
        let mut inner = self.lock();
        let Some(term) = inner.leading_term else {
            return Due::default();
        };
        let now_ms = inner.now_ms(Instant::now());
        let mut due = Vec::new();
        while due.len() < limit {
            let Some(&Reverse((at, id))) = inner.due.peek() else {
                break;
            };
            if at > now_ms {
                break;
            }
            inner.due.pop();
            let Some(countdown) = inner.leases.get_mut(&id) else {
                continue; // gone
            };
            if countdown.expiring || countdown.deadline_ms != at {
                // Being expired (put back if that fails), or kept alive since: back in
                // line at its real deadline.
                if !countdown.expiring {
                    let real = countdown.deadline_ms;
                    inner.due.push(Reverse((real, id)));
                }
                continue;
            }
            countdown.expiring = true;
            due.push(id);
        }
        Due { term, ids: due }
    }

    /// An expiry proposal was refused before it reached the log (or was held back): these
    /// leases may be proposed again, and a keepalive revives them. Their deadlines stay
    /// passed; a new leader would restart them anyway. Not for a proposal whose outcome
    /// is unknown: it may still commit, after a keepalive this would let through.
    pub fn unmark(&self, ids: &[LeaseId]) {
        let mut inner = self.lock();
        for id in ids {
            if let Some(countdown) = inner.leases.get_mut(id) {
                countdown.expiring = false;
                let at = countdown.deadline_ms;
                if inner.leading_term.is_some() {
                    inner.due.push(Reverse((at, *id)));
                }
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
        assert!(clock.take_due(10).ids.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn new_leader_restarts_countdowns_at_full_ttl() {
        let clock = LeaseClock::default();
        clock.track(&lease(1, 1000));
        tokio::time::advance(Duration::from_millis(900)).await;
        clock.lead(2);
        tokio::time::advance(Duration::from_millis(999)).await;
        assert!(
            clock.take_due(10).ids.is_empty(),
            "expired early after a leader change"
        );
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(clock.take_due(10).ids, vec![LeaseId::from_u128(1)]);
    }

    #[tokio::test(start_paused = true)]
    async fn lead_twice_in_one_term_does_not_restart() {
        let clock = LeaseClock::default();
        clock.track(&lease(1, 1000));
        clock.lead(3);
        tokio::time::advance(Duration::from_millis(600)).await;
        clock.lead(3);
        tokio::time::advance(Duration::from_millis(400)).await;
        let due = Due {
            term: 3,
            ids: vec![LeaseId::from_u128(1)],
        };
        assert_eq!(clock.take_due(10), due, "due on the countdowns of term 3");
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
        assert!(clock.take_due(10).ids.is_empty());
        assert_eq!(clock.remaining(&id), Some(Duration::from_millis(200)));
        tokio::time::advance(Duration::from_millis(200)).await;
        assert_eq!(clock.take_due(10).ids, vec![id]);
        assert_eq!(
            clock.keepalive(&id),
            Err(KeepaliveError::Expired),
            "expiry in flight"
        );
        assert!(
            clock.take_due(10).ids.is_empty(),
            "a lease being expired is proposed once"
        );
        clock.unmark(&[id]);
        assert_eq!(
            clock.take_due(10).ids,
            vec![id],
            "a failed proposal is retried"
        );
        clock.unmark(&[id]);
        assert_eq!(
            clock.keepalive(&id),
            Ok(Duration::from_millis(1000)),
            "a held-back lease revives"
        );
        assert!(clock.take_due(10).ids.is_empty());
        clock.forget(&id);
        assert_eq!(clock.keepalive(&id), Err(KeepaliveError::NotFound));
    }

    #[tokio::test(start_paused = true)]
    async fn a_lease_whose_expiry_is_in_doubt_refuses_keepalives_until_the_next_term() {
        // The expiry loop leaves the mark when a proposal's outcome is unknown (it may
        // still commit): the lease stays refused and is not proposed twice in the term.
        let clock = LeaseClock::default();
        let id = LeaseId::from_u128(1);
        clock.track(&lease(1, 1000));
        clock.lead(1);
        tokio::time::advance(Duration::from_millis(1000)).await;
        assert_eq!(clock.take_due(10).ids, vec![id]);
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(clock.keepalive(&id), Err(KeepaliveError::Expired));
        assert!(clock.take_due(10).ids.is_empty());
        // A later term restarts the countdown: its leader applied everything of the old
        // term before it accepts a keepalive.
        clock.step_down();
        clock.lead(2);
        assert_eq!(clock.keepalive(&id), Ok(Duration::from_millis(1000)));
    }

    #[tokio::test(start_paused = true)]
    async fn due_leases_come_oldest_first_and_kept_alive_ones_wait_their_turn() {
        let clock = LeaseClock::default();
        clock.lead(1);
        for n in 0..100 {
            clock.track(&lease(n, 1000 + n as u64));
        }
        tokio::time::advance(Duration::from_millis(500)).await;
        // Even leases are kept alive: they come due from 1.5 s on, the odd ones by 1.1 s.
        for n in (0..100).step_by(2) {
            clock.keepalive(&LeaseId::from_u128(n)).unwrap();
        }
        tokio::time::advance(Duration::from_millis(600)).await;
        let odd: Vec<LeaseId> = (1..100).step_by(2).map(LeaseId::from_u128).collect();
        assert_eq!(clock.take_due(1000).ids, odd, "odd ones, by deadline");
        for n in (1..100).step_by(2) {
            clock.forget(&LeaseId::from_u128(n));
        }
        tokio::time::advance(Duration::from_millis(500)).await;
        let even: Vec<LeaseId> = (0..100).step_by(2).map(LeaseId::from_u128).collect();
        assert_eq!(clock.take_due(1000).ids, even);
        assert!(clock.take_due(1000).ids.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn forgotten_leases_do_not_pile_up_in_the_due_queue() {
        let clock = LeaseClock::default();
        clock.lead(1);
        for n in 0..10_000 {
            clock.track(&lease(n, 86_400_000));
            clock.forget(&LeaseId::from_u128(n));
        }
        assert!(clock.lock().due.len() <= 1024 + 1);
        clock.step_down();
        clock.track(&lease(1, 1000));
        assert!(clock.lock().due.is_empty(), "followers keep no queue");
    }

    #[tokio::test(start_paused = true)]
    async fn take_due_respects_limit() {
        let clock = LeaseClock::default();
        for n in 0..10 {
            clock.track(&lease(n, 1000));
        }
        clock.lead(1);
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(clock.take_due(4).ids.len(), 4);
        assert_eq!(clock.take_due(100).ids.len(), 6);
    }
}
