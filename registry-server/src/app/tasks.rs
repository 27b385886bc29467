//! The leader's background work: following role changes, expiring leases whose deadline
//! passed (minus what expiry storm protection holds back), deregistering critical
//! instances whose `deregister_after` passed, ending lock-delays, bootstrapping ACLs with
//! a configured secret, purging expired tokens, and keeping the set of servers that run
//! active checks (`super::checks`).
//!
//! **Invariant:** only a leader proposes from here, and every step is retried at the next
//! tick when its proposal did not commit: nothing here is lost by a failed round.

use std::time::Duration;

use openraft::ServerState;
use tokio::sync::watch;
use tokio::time::Instant;

use super::App;
use crate::leader::storm::StormGuard;
use crate::raft::proposer::wall_clock_ms;
use crate::replicated::ops::{ExpireLeases, GrantDelayed, Op, Reap};

/// Most leases expired by one Raft entry; more due leases wait for the next tick.
const EXPIRY_BATCH: usize = 10_000;

/// Most critical instances deregistered by one Raft entry.
const REAP_BATCH: usize = 10_000;

/// Most locks whose lock-delay one entry ends.
const DELAY_BATCH: usize = 10_000;

impl App {
    /// Aligns the lease clock with this node's role: restart countdowns when it starts
    /// leading a term, stop expiring when it no longer leads.
    pub fn observe_leadership(&self) {
        let metrics = self.inner.raft.metrics();
        let metrics = metrics.borrow();
        if metrics.state == ServerState::Leader && metrics.current_leader == Some(self.inner.id) {
            self.inner.clock.lead(metrics.current_term);
            self.inner
                .leader_time
                .lead(metrics.current_term, Instant::now(), wall_clock_ms());
        } else if self.inner.clock.leading_term().is_some() {
            self.inner.clock.step_down();
            self.inner.leader_time.step_down();
            tracing::info!(
                term = metrics.current_term,
                "no longer leading: lease clock paused"
            );
        }
    }

    /// Background task: follows role changes and, while leading, proposes the expiry of
    /// every lease whose deadline passed, one entry per tick.
    pub async fn run_lease_expiry(self, tick: Duration, mut shutdown: watch::Receiver<bool>) {
        let mut interval = tokio::time::interval(tick);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = interval.tick() => {}
                _ = shutdown.changed() => return,
            }
            self.observe_leadership();
            if self.inner.clock.leading_term().is_none() {
                continue;
            }
            self.expire_due_leases().await;
            self.reap_critical_instances().await;
            self.end_lock_delays().await;
            self.bootstrap_from_config().await;
            self.purge_expired_tokens(self.leader_time_ms()).await;
            self.keep_probers().await;
        }
    }

    /// Leader time now (see `crate::leader::leader_time`).
    fn leader_time_ms(&self) -> u64 {
        self.inner
            .leader_time
            .now_ms(Instant::now(), wall_clock_ms())
    }

    /// Lease expiries storm protection holds back now (on the leader; 0 elsewhere).
    pub fn storm_holding(&self) -> usize {
        self.storm().holding()
    }

    pub(super) fn storm(&self) -> std::sync::MutexGuard<'_, StormGuard> {
        self.inner.storm.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Proposes the expiry of the leases whose deadline passed, minus those storm
    /// protection holds back.
    ///
    /// The expiry is bound to the term whose countdowns ran out (an entry appended in
    /// another term expires nothing). When the proposal's outcome is unknown (it timed
    /// out, say, on a leader cut off from its quorum), the leases stay marked: the entry
    /// may still commit, so a keepalive must not be accepted meanwhile. A leader's own
    /// entry commits while it leads; if it stops leading, the next term restarts the
    /// countdowns and unmarks them.
    async fn expire_due_leases(&self) {
        let due = self.inner.clock.take_due(EXPIRY_BATCH);
        if due.ids.is_empty() {
            return;
        }
        let decision = {
            let state = self.inner.state.read();
            self.storm()
                .decide(due.ids, &state.app.catalog, Instant::now())
        };
        // Held back: still due, and a keepalive arriving meanwhile revives them.
        self.inner.clock.unmark(&decision.defer);
        let expire = decision.expire;
        if expire.is_empty() {
            return;
        }
        let count = expire.len();
        let proposal = ExpireLeases {
            term: due.term,
            ids: expire.clone(),
        };
        match self.propose_here(proposal).await {
            Ok((index, Some(gone))) => {
                crate::metrics::leases_expired(gone.len());
                tracing::info!(
                    index,
                    term = due.term,
                    expired = gone.len(),
                    "leases expired"
                );
            }
            Ok((index, None)) => tracing::info!(
                index,
                term = due.term,
                leases = count,
                "lease expiry appended after its term ended; it expired nothing"
            ),
            Err(e) if e.nothing_done() => {
                tracing::warn!(error = %e, leases = count, "lease expiry refused; will retry");
                self.inner.clock.unmark(&expire);
            }
            Err(e) => tracing::warn!(
                error = %e,
                leases = count,
                "lease expiry outcome unknown; keepalives for these leases are refused \
                 until it commits or this term ends"
            ),
        }
    }

    /// Proposes the deregistration of critical instances whose `deregister_after` passed
    /// in leader time.
    async fn reap_critical_instances(&self) {
        let now_ms = self.leader_time_ms();
        let due = self
            .inner
            .state
            .read()
            .app
            .catalog
            .due_reaps(now_ms, REAP_BATCH);
        if due.is_empty() {
            return;
        }
        let reaped = self.propose_due(Reap(due), "deregistering critical instances");
        if let Some((index, gone)) = reaped.await.filter(|(_, gone)| !gone.is_empty()) {
            tracing::info!(
                index,
                deregistered = gone.len(),
                "critical instances deregistered"
            );
        }
    }

    /// Ends the lock-delays that passed (granting those locks to their first waiters) in
    /// one entry.
    async fn end_lock_delays(&self) {
        let now_ms = self.leader_time_ms();
        let due = self
            .inner
            .state
            .read()
            .app
            .coordinator
            .delays_due(now_ms, DELAY_BATCH);
        if due.is_empty() {
            return;
        }
        let ended = self.propose_due(GrantDelayed(due), "ending lock-delays");
        if let Some((index, keys)) = ended.await {
            tracing::debug!(index, locks = keys.len(), "lock-delays ended");
        }
    }

    /// Proposes a step of the leader's loop; a failure is logged and the step is simply
    /// tried again at the next tick (what was due is still due).
    async fn propose_due<O: Op>(&self, op: O, what: &str) -> Option<(u64, O::Output)> {
        match self.propose_here(op).await {
            Ok(done) => Some(done),
            Err(e) => {
                tracing::warn!(error = %e, "{what} not committed; will retry");
                None
            }
        }
    }
}
