//! Locks and elections: acquiring (with a server-side wait in the lock's FIFO queue),
//! releasing, proclaiming, reading, and the leader's end of lock-delays.
//!
//! A waiting acquire is *parked* on the node that received it: it registers its ticket
//! (`Watches::park`) before proposing, so the entry that grants it (applied on every node)
//! wakes exactly this request and no other. While it waits, the node keeps the request's
//! lease alive, since the client cannot while blocked. If the request goes away (the client
//! disconnected, or the handler failed), a guard proposes a `Withdraw` that also releases a
//! grant nobody will ever hear of: a disconnected waiter never ends up holding the lock.

use std::time::Duration;

use locks::{Binding, Hold, Key, Kind, Lease, LockState, Ticket};
use tokio::time::Instant;

use super::{App, AppError, Block, Consistency};
use crate::state::{Command, Outcome};

/// Most locks whose lock-delay one entry ends.
const DELAY_BATCH: usize = 10_000;

/// Shortest interval between the keepalives a node sends for a parked request's lease.
const MIN_PARKED_KEEPALIVE: Duration = Duration::from_millis(200);

/// An acquire or campaign, checked by the HTTP layer.
#[derive(Debug, Clone)]
pub struct AcquireSpec {
    pub key: Key,
    pub binding: Binding,
    pub holder: String,
    /// How long the request may wait in line; zero answers at once.
    pub wait: Duration,
    pub lock_delay_ms: u64,
}

/// A grant as the acquirer sees it: the hold and the lease it is bound to.
#[derive(Debug, Clone)]
pub struct Granted {
    pub hold: Hold,
    /// The lease's TTL (ms); 0 if the lease already ended again.
    pub ttl_ms: u64,
}

/// Where a parked request stands in the local state.
enum Standing {
    Holds(Hold),
    Waiting,
    /// Neither holds nor waits: its lease ended while it waited.
    Dropped,
}

/// Proposes a `Withdraw` (releasing any grant) when dropped while armed: the request went
/// away without answering.
struct Abandon {
    app: App,
    key: Key,
    ticket: Ticket,
    armed: bool,
}

impl Abandon {
    fn disarm(&mut self) {
        self.armed = false;
    }
}

impl Drop for Abandon {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let app = self.app.clone();
        let key = self.key.clone();
        let ticket = self.ticket;
        tracing::debug!(name = %key.name, %ticket, "waiting request went away; withdrawing it");
        tokio::spawn(async move {
            let withdraw = locks::Command::Withdraw {
                key: key.clone(),
                ticket,
                release_if_granted: true,
            };
            if let Err(e) = app.propose(Command::Coordinate(withdraw)).await {
                tracing::warn!(name = %key.name, %ticket, error = %e,
                    "could not withdraw an abandoned request; it leaves the queue when its lease ends");
            }
        });
    }
}

impl App {
    /// Takes the lock, waiting up to `spec.wait` in its queue.
    pub async fn acquire(&self, spec: AcquireSpec) -> Result<Granted, AppError> {
        let ticket = Ticket::new_v4();
        let parked = self.inner.watches.park(ticket);
        let mut abandon = Abandon {
            app: self.clone(),
            key: spec.key.clone(),
            ticket,
            armed: true,
        };
        let (lease, own_ttl_ms) = match spec.binding {
            Binding::Existing(id) => (id, None),
            Binding::Own { id, ttl_ms } => (id, Some(ttl_ms)),
        };
        let command = locks::Command::Acquire(locks::Acquire {
            key: spec.key.clone(),
            ticket,
            binding: spec.binding,
            holder: spec.holder,
            wait: !spec.wait.is_zero(),
            lock_delay_ms: spec.lock_delay_ms,
        });
        let (index, outcome) = self.propose(Command::Coordinate(command)).await?;
        match outcome {
            Outcome::Coordinate(locks::Outcome::Queued { .. }) => {}
            other => {
                // Still armed while catching up: a grant this request cannot answer with
                // is released rather than left to a client that saw an error.
                let answer = self.acquired(&spec.key, index, other, own_ttl_ms).await;
                if !matches!(answer, Err(AppError::Unavailable(_))) {
                    abandon.disarm();
                }
                return answer;
            }
        }
        // Queued. The answer may have come from the leader before this node applied the
        // entry: catch up, so that "not in the queue" below means "dropped".
        self.wait_applied(index).await?;
        let deadline = Instant::now() + spec.wait;
        let period = self.keepalive_period(&lease, own_ttl_ms);
        let mut keepalive = tokio::time::interval_at(Instant::now() + period, period);
        loop {
            match self.standing(&spec.key, ticket) {
                Standing::Holds(hold) => {
                    abandon.disarm();
                    return Ok(self.granted(hold, own_ttl_ms));
                }
                Standing::Dropped => {
                    abandon.disarm();
                    return Err(AppError::LeaseExpired(lease));
                }
                Standing::Waiting => {}
            }
            tokio::select! {
                _ = parked.woken() => {}
                _ = keepalive.tick() => {
                    // The client cannot renew while blocked here; its request being alive
                    // is proof enough that it is. A failure (an election) is retried at
                    // the next tick; an ended lease shows up as `Dropped`.
                    if let Err(e) = self.keepalive(lease).await {
                        tracing::debug!(%lease, error = %e, "keepalive for a waiting request failed");
                    }
                }
                _ = tokio::time::sleep_until(deadline) => break,
            }
        }
        // The wait ran out: leave the queue, unless the grant raced in (then keep it).
        let withdraw = locks::Command::Withdraw {
            key: spec.key.clone(),
            ticket,
            release_if_granted: false,
        };
        let (index, outcome) = self.propose(Command::Coordinate(withdraw)).await?;
        match outcome {
            Outcome::Coordinate(locks::Outcome::Granted(hold)) => {
                self.wait_applied(index).await?;
                abandon.disarm();
                Ok(self.granted(hold, own_ttl_ms))
            }
            _ => {
                abandon.disarm();
                let state = self.local_lock(&spec.key);
                Err(AppError::LockHeld {
                    key: spec.key,
                    state: Box::new(state),
                })
            }
        }
    }

    /// Maps an acquire's immediate outcome to the answer.
    async fn acquired(
        &self,
        key: &Key,
        index: u64,
        outcome: Outcome,
        own_ttl_ms: Option<u64>,
    ) -> Result<Granted, AppError> {
        match outcome {
            Outcome::Coordinate(locks::Outcome::Granted(hold)) => {
                self.wait_applied(index).await?;
                Ok(self.granted(hold, own_ttl_ms))
            }
            Outcome::Coordinate(locks::Outcome::Busy(state)) => Err(AppError::LockHeld {
                key: key.clone(),
                state: Box::new(state),
            }),
            Outcome::Coordinate(locks::Outcome::QueueFull) => Err(AppError::QueueFull(key.clone())),
            Outcome::Coordinate(locks::Outcome::LeaseNotFound(id)) => {
                Err(AppError::LeaseNotFound(id))
            }
            other => Err(super::unexpected(other)),
        }
    }

    fn granted(&self, hold: Hold, own_ttl_ms: Option<u64>) -> Granted {
        let ttl_ms = self
            .lease_of(&hold.lease)
            .map(|l| l.ttl_ms)
            .or(own_ttl_ms)
            .unwrap_or(0);
        Granted { hold, ttl_ms }
    }

    fn lease_of(&self, id: &locks::LeaseId) -> Option<Lease> {
        self.inner.state.read().app.coordinator.lease(id).cloned()
    }

    /// A third of the lease's TTL: three chances to renew before it could expire.
    fn keepalive_period(&self, lease: &locks::LeaseId, own_ttl_ms: Option<u64>) -> Duration {
        let ttl_ms = self
            .lease_of(lease)
            .map(|l| l.ttl_ms)
            .or(own_ttl_ms)
            .unwrap_or(0);
        (Duration::from_millis(ttl_ms) / 3).max(MIN_PARKED_KEEPALIVE)
    }

    fn standing(&self, key: &Key, ticket: Ticket) -> Standing {
        let state = self.inner.state.read();
        let Some(lock) = state.app.coordinator.lock(key) else {
            return Standing::Dropped;
        };
        match &lock.holder {
            Some(hold) if hold.ticket == ticket => Standing::Holds(hold.clone()),
            _ if lock.waiters.iter().any(|w| w.ticket == ticket) => Standing::Waiting,
            _ => Standing::Dropped,
        }
    }

    fn local_lock(&self, key: &Key) -> LockState {
        let state = self.inner.state.read();
        state.app.coordinator.lock(key).cloned().unwrap_or_default()
    }

    /// Waits until this node has applied `index` (immediate on the leader).
    async fn wait_applied(&self, index: u64) -> Result<(), AppError> {
        if self.inner.state.applied_index() >= index {
            return Ok(());
        }
        self.inner
            .raft
            .wait(Some(super::FORWARD_TIMEOUT))
            .applied_index_at_least(Some(index), "apply of a lock entry")
            .await
            .map(|_| ())
            .map_err(|e| AppError::Unavailable(format!("catching up to the leader: {e}")))
    }

    /// Releases a lock (or resigns an election) held with `token`; returns the index and
    /// the hold that ended (its `own_lease` says whether its lease was revoked with it).
    pub async fn release(&self, key: Key, token: u64) -> Result<(u64, Hold), AppError> {
        let command = locks::Command::Release {
            key: key.clone(),
            token,
        };
        self.by_holder(key, command).await
    }

    /// The election leader holding `token` announces a new value.
    pub async fn proclaim(
        &self,
        key: Key,
        token: u64,
        value: String,
    ) -> Result<(u64, Hold), AppError> {
        let command = locks::Command::Proclaim {
            key: key.clone(),
            token,
            holder: value,
        };
        self.by_holder(key, command).await
    }

    /// Proposes a command only the holder of its token may make (release, proclaim);
    /// a token that is not the current one is `TokenMismatch` with the lock as it is.
    async fn by_holder(&self, key: Key, command: locks::Command) -> Result<(u64, Hold), AppError> {
        match self.propose(Command::Coordinate(command)).await? {
            (index, Outcome::Coordinate(locks::Outcome::Released(hold)))
            | (index, Outcome::Coordinate(locks::Outcome::Proclaimed(hold))) => Ok((index, hold)),
            (_, Outcome::Coordinate(locks::Outcome::TokenMismatch(state))) => {
                Err(AppError::TokenMismatch {
                    key,
                    state: Box::new(state),
                })
            }
            (_, other) => Err(super::unexpected(other)),
        }
    }

    /// `GET /v1/locks/{name}` and `GET /v1/elections/{name}`: the state (empty when free)
    /// and the index it reflects, after blocking if asked.
    pub async fn lock(
        &self,
        key: &Key,
        consistency: Consistency,
        block: Option<Block>,
    ) -> Result<(u64, LockState), AppError> {
        let watch = self.inner.watches.lock(key);
        self.read_index(consistency).await?;
        self.block_until(watch, block, |app| app.coordinator.lock_index(key))
            .await;
        let state = self.inner.state.read();
        let lock = state.app.coordinator.lock(key).cloned().unwrap_or_default();
        Ok((state.last_applied.map_or(0, |l| l.index), lock))
    }

    /// `GET /v1/locks` and `GET /v1/elections`: every lock (election) that is not free.
    pub async fn locks(
        &self,
        kind: Kind,
        consistency: Consistency,
        block: Option<Block>,
    ) -> Result<(u64, Vec<(String, LockState)>), AppError> {
        let watch = self.inner.watches.kind(kind);
        self.read_index(consistency).await?;
        self.block_until(watch, block, |app| app.coordinator.kind_index(kind))
            .await;
        let state = self.inner.state.read();
        let locks = state
            .app
            .coordinator
            .locks(kind)
            .map(|(key, lock)| (key.name.clone(), lock.clone()))
            .collect();
        Ok((state.last_applied.map_or(0, |l| l.index), locks))
    }

    /// Leader task step: ends the lock-delays that passed (granting those locks to their
    /// first waiters) in one entry.
    pub(super) async fn end_lock_delays(&self) {
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
        let command = locks::Command::GrantDelayed { keys: due };
        match self
            .inner
            .proposer
            .propose(Command::Coordinate(command))
            .await
        {
            Ok((index, Outcome::Coordinate(locks::Outcome::DelaysEnded(keys)))) => {
                tracing::debug!(index, locks = keys.len(), "lock-delays ended");
            }
            Ok((_, other)) => tracing::error!(?other, "unexpected outcome of ending lock-delays"),
            Err(e) => tracing::warn!(error = %e, "ending lock-delays not committed; will retry"),
        }
    }
}
