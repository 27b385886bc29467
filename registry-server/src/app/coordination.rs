//! Locks and elections: acquiring (with a server-side wait in the lock's FIFO queue),
//! releasing, proclaiming, reading, and the leader's end of lock-delays.
//!
//! A waiting acquire is *parked* on the node that received it: it registers its ticket
//! (`Watches::park`) before proposing, so the entry that grants it (applied on every node)
//! wakes exactly this request and no other. While it waits, the node keeps the request's
//! lease alive, since the client cannot while blocked. If the request goes away (the client
//! disconnected, or the handler failed), a guard proposes a `Withdraw` that also releases a
//! grant nobody will ever hear of.
//!
//! **Invariant:** a waiting request that goes away never keeps a grant: its `Withdraw` is
//! retried until it commits or the request's lease has ended (which releases the lock and
//! leaves the queue by itself).

use std::time::Duration;

use api_spec::acl::{Access, Resource};
use locks::{Binding, Hold, Key, Kind, Lease, LockState, Ticket};
use tokio::time::Instant;

use super::{App, AppError, Block, Consistency};
use crate::replicated::ops::{Acquire, Acquired, ByHolder, Withdraw, Withdrawal};

/// First and longest pause between tries of an abandoned request's `Withdraw`.
const WITHDRAW_RETRY: (Duration, Duration) = (Duration::from_millis(50), Duration::from_secs(2));

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
    /// The request's lease: once it has ended, the queue and any grant went with it.
    lease: locks::LeaseId,
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
        let (ticket, lease) = (self.ticket, self.lease);
        tracing::debug!(name = %key.name, %ticket, "waiting request went away; withdrawing it");
        tokio::spawn(async move { app.withdraw_abandoned(key, ticket, lease).await });
    }
}

impl App {
    /// Proposes the `Withdraw` of a request that went away until it commits, or until its
    /// lease has ended (then the lock and the queue place went with it).
    async fn withdraw_abandoned(&self, key: Key, ticket: Ticket, lease: locks::LeaseId) {
        let withdraw = Withdraw {
            key: key.clone(),
            ticket,
            release_if_granted: true,
        };
        let (mut pause, longest) = WITHDRAW_RETRY;
        let mut tries = 0u32;
        loop {
            tries += 1;
            let Err(e) = self.propose_op(withdraw.clone()).await else {
                if tries > 1 {
                    tracing::info!(name = %key.name, %ticket, tries, "abandoned request withdrawn");
                }
                return;
            };
            if self.lease_of(&lease).is_none() {
                tracing::info!(name = %key.name, %ticket, "abandoned request's lease ended; nothing to withdraw");
                return;
            }
            if tries == 1 {
                tracing::warn!(name = %key.name, %ticket, error = %e,
                    "could not withdraw an abandoned request yet; retrying until it commits or its lease ends");
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(longest);
        }
    }

    /// Takes the lock, waiting up to `spec.wait` in its queue.
    pub async fn acquire(&self, spec: AcquireSpec) -> Result<Granted, AppError> {
        // A request that may wait holds a slot for as long as it could (taken before
        // anything is proposed, so a refusal changes nothing).
        let _slot = if spec.wait.is_zero() {
            None
        } else {
            Some(self.inner.limits.parked.take()?)
        };
        let ticket = Ticket::new_v4();
        let parked = self.inner.watches.park(ticket);
        let mut abandon = Abandon {
            app: self.clone(),
            key: spec.key.clone(),
            ticket,
            lease: match spec.binding {
                Binding::Existing(id) | Binding::Own { id, .. } => id,
            },
            armed: true,
        };
        let (lease, own_ttl_ms) = match spec.binding {
            Binding::Existing(id) => (id, None),
            Binding::Own { id, ttl_ms } => (id, Some(ttl_ms)),
        };
        let acquire = Acquire(locks::Acquire {
            key: spec.key.clone(),
            ticket,
            binding: spec.binding,
            holder: spec.holder,
            wait: !spec.wait.is_zero(),
            lock_delay_ms: spec.lock_delay_ms,
        });
        let (index, acquired) = self.propose_op(acquire).await?;
        let answer = match acquired {
            Acquired::Queued => None,
            Acquired::Granted(hold) => {
                // Still armed while catching up: a grant this request cannot answer with
                // is released rather than left to a client that saw an error.
                self.wait_applied(index).await?;
                Some(Ok(self.granted(hold, own_ttl_ms)))
            }
            Acquired::Busy(state) => Some(Err(AppError::LockHeld {
                key: spec.key.clone(),
                state: Box::new(state),
            })),
            Acquired::QueueFull => Some(Err(AppError::QueueFull(spec.key.clone()))),
            Acquired::LeaseNotFound(id) => Some(Err(AppError::LeaseNotFound(id))),
        };
        if let Some(answer) = answer {
            abandon.disarm();
            return answer;
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
        let withdraw = Withdraw {
            key: spec.key.clone(),
            ticket,
            release_if_granted: false,
        };
        match self.propose_op(withdraw).await? {
            (index, Withdrawal::Kept(hold)) => {
                self.wait_applied(index).await?;
                abandon.disarm();
                Ok(self.granted(hold, own_ttl_ms))
            }
            (_, Withdrawal::Withdrawn | Withdrawal::Released(_)) => {
                abandon.disarm();
                let state = self.local_lock(&spec.key);
                Err(AppError::LockHeld {
                    key: spec.key,
                    state: Box::new(state),
                })
            }
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
        self.inner.state.read().app.coordinator.lease(id)
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

    /// Releases a lock (or resigns an election) held with `token`; returns the index and
    /// the hold that ended (its `own_lease` says whether its lease was revoked with it).
    pub async fn release(&self, key: Key, token: u64) -> Result<(u64, Hold), AppError> {
        let op = ByHolder::Release {
            key: key.clone(),
            token,
        };
        self.by_holder(key, op).await
    }

    /// The election leader holding `token` announces a new value.
    pub async fn proclaim(
        &self,
        key: Key,
        token: u64,
        value: String,
    ) -> Result<(u64, Hold), AppError> {
        let op = ByHolder::Proclaim {
            key: key.clone(),
            token,
            holder: value,
        };
        self.by_holder(key, op).await
    }

    /// Proposes a command only the holder of its token may make (release, proclaim);
    /// a token that is not the current one is `TokenMismatch` with the lock as it is.
    async fn by_holder(&self, key: Key, op: ByHolder) -> Result<(u64, Hold), AppError> {
        match self.propose_op(op).await? {
            (index, Ok(hold)) => Ok((index, hold)),
            (_, Err(state)) => Err(AppError::TokenMismatch {
                key,
                state: Box::new(state),
            }),
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
        self.require(resource(key.kind), &key.name, Access::Read)?;
        let watch = self.inner.watches.lock(key);
        self.read_index(consistency).await?;
        self.block_until(watch, block, |app| app.coordinator.lock_index(key))
            .await?;
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
        self.caller().require_some(resource(kind), Access::Read)?;
        let watch = self.inner.watches.kind(kind);
        self.read_index(consistency).await?;
        self.block_until(watch, block, |app| app.coordinator.kind_index(kind))
            .await?;
        let state = self.inner.state.read();
        let locks = state
            .app
            .coordinator
            .locks(kind)
            .filter(|(key, _)| self.permits(resource(kind), &key.name, Access::Read))
            .map(|(key, lock)| (key.name.clone(), lock.clone()))
            .collect();
        Ok((state.last_applied.map_or(0, |l| l.index), locks))
    }
}

/// The ACL resource of a lock or an election.
pub fn resource(kind: Kind) -> Resource {
    match kind {
        Kind::Lock => Resource::Lock,
        Kind::Election => Resource::Election,
    }
}
