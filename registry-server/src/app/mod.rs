//! The application: what a request can ask of this node, independent of HTTP.
//!
//! [`App`] is a cheap handle shared by the HTTP handlers and the background tasks. It
//! decides where work runs: writes are proposed on the leader (forwarded there by a
//! follower), keepalives run on the leader's lease clock, linearizable reads wait for a
//! ReadIndex from the leader, stale reads are answered from local memory.

use std::collections::BTreeSet;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use api_spec::{ClusterStatus, ExpiryStormStatus, InstanceStatus, Member, Role, ServiceSummary};
use locks::{Lease, LeaseId};
use openraft::error::{ChangeMembershipError, ClientWriteError, RaftError};
use openraft::{ChangeMembers, ServerState};
use tokio::sync::watch;
use tokio::time::Instant;

mod coordination;

pub use self::coordination::{AcquireSpec, Granted};

use crate::catalog::{CatalogError, Filter, InstanceKey, InstanceRecord, InstanceSpec};
use crate::leader_time::LeaderClock;
use crate::lease_clock::{KeepaliveError, LeaseClock};
use crate::network::{
    paths, KeepaliveAnswer, KeepaliveRequest, KeepaliveTarget, PeerClient, PeerError,
    ProposeAnswer, ProposeRequest, ReadIndexAnswer,
};
use crate::proposer::{wall_clock_ms, Proposer};
use crate::read_barrier::ReadBarrier;
use crate::state::{AppState, Binding, Command, Outcome};
use crate::store::state_machine::SharedState;
use crate::storm::{StormConfig, StormGuard};
use crate::types::{LeaderError, Node, NodeId, Raft};
use crate::watch::Watches;

/// Most leases expired by one Raft entry; more due leases wait for the next tick.
const EXPIRY_BATCH: usize = 10_000;

/// Most critical instances deregistered by one Raft entry.
const REAP_BATCH: usize = 10_000;

/// How long adding a server waits for it to catch up before answering.
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a forwarded internal call may take.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(10);

/// Errors the application reports; `crate::http::error` maps them to statuses and codes.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AppError {
    #[error("no leader is known; retry shortly")]
    NoLeader,
    #[error("lease {0} not found")]
    LeaseNotFound(LeaseId),
    #[error("lease {0} has expired")]
    LeaseExpired(LeaseId),
    #[error("no such instance is registered; register it")]
    InstanceNotFound,
    #[error("the instance's lease has ended (it is critical); register it again")]
    InstanceCritical,
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    InvalidDuration(String),
    #[error("member {0} is not part of the cluster")]
    MemberNotFound(NodeId),
    #[error("{0}")]
    MembershipConflict(String),
    #[error("{}", held_message(key, state))]
    LockHeld {
        key: locks::Key,
        state: Box<locks::LockState>,
    },
    #[error("{} is not the current holder's token", token_subject(key))]
    TokenMismatch {
        key: locks::Key,
        state: Box<locks::LockState>,
    },
    #[error("{} has {} waiters already; retry later", key_subject(.0), locks::MAX_WAITERS)]
    QueueFull(locks::Key),
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Internal(String),
}

fn key_subject(key: &locks::Key) -> String {
    match key.kind {
        locks::Kind::Lock => format!("lock {:?}", key.name),
        locks::Kind::Election => format!("election {:?}", key.name),
    }
}

fn token_subject(key: &locks::Key) -> String {
    format!("the token given for {}", key_subject(key))
}

fn held_message(key: &locks::Key, state: &locks::LockState) -> String {
    let subject = key_subject(key);
    match (&state.holder, key.kind) {
        (Some(hold), locks::Kind::Lock) => {
            format!(
                "{subject} is held by {:?} (token {})",
                hold.holder, hold.token
            )
        }
        (Some(hold), locks::Kind::Election) => {
            format!(
                "{subject} is led by {:?} (token {})",
                hold.holder, hold.token
            )
        }
        (None, _) if state.delay_until_ms.is_some() => {
            format!("{subject} is in its lock-delay after its holder's lease expired")
        }
        (None, _) => format!("{subject} has waiters ahead of this request"),
    }
}

impl From<CatalogError> for AppError {
    fn from(e: CatalogError) -> Self {
        match e {
            CatalogError::InstanceNotFound => AppError::InstanceNotFound,
            CatalogError::InstanceCritical => AppError::InstanceCritical,
        }
    }
}

/// A blocking query's condition: answer once the index moves past `index`, or after
/// `wait` (already capped and jittered by the caller).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Block {
    pub index: u64,
    pub wait: Duration,
}

/// Read consistency requested by a client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Consistency {
    /// ReadIndex through the leader (the default).
    Linearizable,
    /// Whatever this node has applied (`?stale`).
    Stale,
}

/// One try at running something on the leader.
enum Attempt<T> {
    Done(T),
    Failed(AppError),
    /// The node asked is not the leader; it may name the one it believes is.
    NotLeader(Option<(NodeId, String)>),
}

impl<T> From<Result<T, LeaderError>> for Attempt<T> {
    fn from(r: Result<T, LeaderError>) -> Self {
        match r {
            Ok(v) => Attempt::Done(v),
            Err(LeaderError::NotLeader { leader }) => Attempt::NotLeader(leader),
            Err(LeaderError::Unavailable(m)) => Attempt::Failed(AppError::Unavailable(m)),
        }
    }
}

impl<T> From<PeerError> for Attempt<T> {
    fn from(e: PeerError) -> Self {
        match e {
            // Nothing reached the peer: as good as "not the leader", try again.
            PeerError::Unreachable { .. } => Attempt::NotLeader(None),
            PeerError::Rejected { .. } | PeerError::Failed { .. } => {
                Attempt::Failed(AppError::Unavailable(e.to_string()))
            }
        }
    }
}

/// Settings the application takes from the command line.
#[derive(Debug, Clone, Copy)]
pub struct AppConfig {
    /// How long a request waits for a leader to be known before answering 503.
    pub leader_wait: Duration,
    pub storm: StormConfig,
}

struct Inner {
    id: NodeId,
    raft: Raft,
    state: SharedState,
    clock: LeaseClock,
    /// The time this node stamps entries with and checks deadlines against as leader.
    leader_time: LeaderClock,
    watches: Watches,
    proposer: Proposer,
    barrier: ReadBarrier,
    peers: PeerClient,
    /// Leader-side expiry storm protection. `std::sync::Mutex`: held only to decide.
    storm: std::sync::Mutex<StormGuard>,
    leader_wait: Duration,
}

/// The application handle.
#[derive(Clone)]
pub struct App {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App")
            .field("id", &self.inner.id)
            .finish_non_exhaustive()
    }
}

impl App {
    pub fn new(
        id: NodeId,
        raft: Raft,
        state: SharedState,
        clock: LeaseClock,
        watches: Watches,
        peers: PeerClient,
        config: AppConfig,
    ) -> Self {
        let leader_time = LeaderClock::new(state.clone());
        let proposer = Proposer::start(raft.clone(), leader_time.clone());
        let barrier = ReadBarrier::new(raft.clone());
        Self {
            inner: Arc::new(Inner {
                id,
                raft,
                state,
                clock,
                leader_time,
                watches,
                proposer,
                barrier,
                peers,
                storm: std::sync::Mutex::new(StormGuard::new(config.storm)),
                leader_wait: config.leader_wait,
            }),
        }
    }

    pub fn id(&self) -> NodeId {
        self.inner.id
    }

    pub fn raft(&self) -> &Raft {
        &self.inner.raft
    }

    /// The pooled client for calls to other servers.
    pub fn peers(&self) -> &PeerClient {
        &self.inner.peers
    }

    /// The in-memory state (for reads after [`App::read_index`]).
    pub fn state(&self) -> &SharedState {
        &self.inner.state
    }

    /// The leader this node knows of, with its address.
    pub fn leader(&self) -> Option<(NodeId, String)> {
        let metrics = self.inner.raft.metrics();
        let metrics = metrics.borrow();
        let id = metrics.current_leader?;
        let addr = metrics
            .membership_config
            .membership()
            .get_node(&id)?
            .addr
            .clone();
        Some((id, addr))
    }

    /// Runs `local` if this node leads, else `remote(leader address)`; follows "not the
    /// leader" answers and waits up to `leader_wait` for a leader before giving up.
    async fn on_leader<T, L, LF, R, RF>(&self, local: L, remote: R) -> Result<T, AppError>
    where
        L: Fn() -> LF,
        LF: Future<Output = Attempt<T>>,
        R: Fn(String) -> RF,
        RF: Future<Output = Attempt<T>>,
    {
        let deadline = Instant::now() + self.inner.leader_wait;
        let mut hint: Option<(NodeId, String)> = None;
        loop {
            let target = match hint.take().or_else(|| self.leader()) {
                Some(t) => t,
                None => {
                    if Instant::now() >= deadline {
                        return Err(AppError::NoLeader);
                    }
                    self.wait_for_metrics_change(deadline).await;
                    continue;
                }
            };
            let attempt = if target.0 == self.inner.id {
                local().await
            } else {
                remote(target.1).await
            };
            match attempt {
                Attempt::Done(v) => return Ok(v),
                Attempt::Failed(e) => return Err(e),
                Attempt::NotLeader(next) => {
                    if Instant::now() >= deadline {
                        return Err(AppError::NoLeader);
                    }
                    // A hint naming the node just asked (or none) means an election is
                    // under way: wait for news rather than spin.
                    match next {
                        Some(next) if next.0 != target.0 => hint = Some(next),
                        _ => {
                            tokio::time::sleep(Duration::from_millis(20)).await;
                            self.wait_for_metrics_change(deadline).await;
                        }
                    }
                }
            }
        }
    }

    async fn wait_for_metrics_change(&self, deadline: Instant) {
        let mut metrics = self.inner.raft.metrics();
        let wait = deadline
            .saturating_duration_since(Instant::now())
            .min(Duration::from_millis(200));
        let _ = tokio::time::timeout(wait, metrics.changed()).await;
    }

    /// Proposes a command through the leader; returns the entry's index and the outcome.
    pub async fn propose(&self, command: Command) -> Result<(u64, Outcome), AppError> {
        let command = &command;
        self.on_leader(
            || async { self.inner.proposer.propose(command.clone()).await.into() },
            |addr| async move {
                let request = ProposeRequest {
                    command: command.clone(),
                };
                match self
                    .inner
                    .peers
                    .call(&addr, paths::PROPOSE, &request, FORWARD_TIMEOUT)
                    .await
                {
                    Ok(ProposeAnswer::Applied { index, outcome }) => {
                        Attempt::Done((index, *outcome))
                    }
                    Ok(ProposeAnswer::NotLeader { leader }) => Attempt::NotLeader(leader),
                    Ok(ProposeAnswer::Unavailable(m)) => Attempt::Failed(AppError::Unavailable(m)),
                    Err(e) => e.into(),
                }
            },
        )
        .await
    }

    /// Serves a write forwarded by a follower: proposes it here, never forwards again.
    pub async fn propose_forwarded(&self, command: Command) -> ProposeAnswer {
        match self.inner.proposer.propose(command).await {
            Ok((index, outcome)) => ProposeAnswer::Applied {
                index,
                outcome: Box::new(outcome),
            },
            Err(LeaderError::NotLeader { leader }) => ProposeAnswer::NotLeader { leader },
            Err(LeaderError::Unavailable(m)) => ProposeAnswer::Unavailable(m),
        }
    }

    /// Makes the local state fit for a read of the given consistency; returns the index
    /// the read will reflect.
    pub async fn read_index(&self, consistency: Consistency) -> Result<u64, AppError> {
        if consistency == Consistency::Stale {
            return Ok(self.inner.state.applied_index());
        }
        let index = self
            .on_leader(
                || async { self.inner.barrier.confirm().await.into() },
                |addr| async move {
                    match self
                        .inner
                        .peers
                        .call(&addr, paths::READ_INDEX, &(), FORWARD_TIMEOUT)
                        .await
                    {
                        Ok(ReadIndexAnswer::Index(i)) => Attempt::Done(i),
                        Ok(ReadIndexAnswer::NotLeader { leader }) => Attempt::NotLeader(leader),
                        Ok(ReadIndexAnswer::Unavailable(m)) => {
                            Attempt::Failed(AppError::Unavailable(m))
                        }
                        Err(e) => e.into(),
                    }
                },
            )
            .await?;
        // On a follower, wait until the leader's read index is applied here.
        self.inner
            .raft
            .wait(Some(FORWARD_TIMEOUT))
            .applied_index_at_least(Some(index), "linearizable read")
            .await
            .map_err(|e| AppError::Unavailable(format!("catching up to the leader: {e}")))?;
        Ok(self.inner.state.applied_index().max(index))
    }

    /// Serves a follower's read-index request on the leader.
    pub async fn read_index_forwarded(&self) -> ReadIndexAnswer {
        match self.inner.barrier.confirm().await {
            Ok(i) => ReadIndexAnswer::Index(i),
            Err(LeaderError::NotLeader { leader }) => ReadIndexAnswer::NotLeader { leader },
            Err(LeaderError::Unavailable(m)) => ReadIndexAnswer::Unavailable(m),
        }
    }

    /// Grants a new lease.
    pub async fn create_lease(&self, ttl: Duration) -> Result<(u64, Lease), AppError> {
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
        let command = Command::Coordinate(locks::Command::GrantLease {
            id: LeaseId::new_v4(),
            ttl_ms,
        });
        match self.propose(command).await? {
            (index, Outcome::Coordinate(locks::Outcome::LeaseGranted(lease))) => Ok((index, lease)),
            (_, other) => Err(AppError::Internal(format!("unexpected outcome {other:?}"))),
        }
    }

    /// Revokes a lease.
    pub async fn revoke_lease(&self, id: LeaseId) -> Result<(u64, Lease), AppError> {
        match self
            .propose(Command::Coordinate(locks::Command::RevokeLease { id }))
            .await?
        {
            (index, Outcome::Coordinate(locks::Outcome::LeaseRevoked(lease))) => Ok((index, lease)),
            (_, Outcome::Coordinate(locks::Outcome::LeaseNotFound(_))) => {
                Err(AppError::LeaseNotFound(id))
            }
            (_, other) => Err(AppError::Internal(format!("unexpected outcome {other:?}"))),
        }
    }

    /// Renews a lease on the leader; returns the lease and the time it now has left.
    pub async fn keepalive(&self, id: LeaseId) -> Result<(Lease, Duration), AppError> {
        self.renew(KeepaliveTarget::Lease(id)).await
    }

    /// Renews a registered instance's lease (its heartbeat).
    pub async fn heartbeat(&self, key: InstanceKey) -> Result<(Lease, Duration), AppError> {
        self.renew(KeepaliveTarget::Instance(key)).await
    }

    async fn renew(&self, target: KeepaliveTarget) -> Result<(Lease, Duration), AppError> {
        let target = &target;
        let answer = |answer: KeepaliveAnswer| match answer {
            KeepaliveAnswer::Renewed {
                lease,
                remaining_ms,
            } => Attempt::Done((lease, Duration::from_millis(remaining_ms))),
            KeepaliveAnswer::NotLeader { leader } => Attempt::NotLeader(leader),
            KeepaliveAnswer::Unavailable(m) => Attempt::Failed(AppError::Unavailable(m)),
            KeepaliveAnswer::InstanceNotFound => Attempt::Failed(AppError::InstanceNotFound),
            KeepaliveAnswer::InstanceCritical => Attempt::Failed(AppError::InstanceCritical),
            // A lease that is gone or going; for an instance, both mean "register again".
            KeepaliveAnswer::NotFound => Attempt::Failed(match target {
                KeepaliveTarget::Lease(id) => AppError::LeaseNotFound(*id),
                KeepaliveTarget::Instance(_) => AppError::InstanceCritical,
            }),
            KeepaliveAnswer::Expired => Attempt::Failed(match target {
                KeepaliveTarget::Lease(id) => AppError::LeaseExpired(*id),
                KeepaliveTarget::Instance(_) => AppError::InstanceCritical,
            }),
        };
        self.on_leader(
            || async { answer(self.keepalive_forwarded(target.clone()).await) },
            |addr| async move {
                let request = KeepaliveRequest {
                    target: target.clone(),
                };
                match self
                    .inner
                    .peers
                    .call(&addr, paths::KEEPALIVE, &request, FORWARD_TIMEOUT)
                    .await
                {
                    Ok(a) => answer(a),
                    Err(e) => e.into(),
                }
            },
        )
        .await
    }

    /// Renews a lease (or an instance's lease) on this node, which must be the leader.
    ///
    /// Leadership is confirmed with a quorum *after* the keepalive arrived: a deposed
    /// leader that has not noticed yet must not accept a keepalive the new leader will
    /// never hear of (the new leader's countdown started at its election, which is after
    /// that confirmation, so it ends later than the deadline set here).
    pub async fn keepalive_forwarded(&self, target: KeepaliveTarget) -> KeepaliveAnswer {
        match self.inner.barrier.confirm().await {
            Ok(_) => {}
            Err(LeaderError::NotLeader { leader }) => return KeepaliveAnswer::NotLeader { leader },
            Err(LeaderError::Unavailable(m)) => return KeepaliveAnswer::Unavailable(m),
        }
        self.observe_leadership();
        let id = match &target {
            KeepaliveTarget::Lease(id) => *id,
            KeepaliveTarget::Instance(key) => {
                match self.inner.state.read().app.catalog.instance(key) {
                    None => return KeepaliveAnswer::InstanceNotFound,
                    Some(r) if r.status == InstanceStatus::Critical => {
                        return KeepaliveAnswer::InstanceCritical
                    }
                    Some(r) => r.lease,
                }
            }
        };
        match self.inner.clock.keepalive(&id) {
            Ok(remaining) => match self.inner.state.read().app.coordinator.lease(&id) {
                Some(lease) => KeepaliveAnswer::Renewed {
                    lease: lease.clone(),
                    remaining_ms: remaining.as_millis() as u64,
                },
                None => KeepaliveAnswer::NotFound,
            },
            Err(KeepaliveError::NotFound) => KeepaliveAnswer::NotFound,
            Err(KeepaliveError::Expired) => KeepaliveAnswer::Expired,
            Err(KeepaliveError::NotLeader) => KeepaliveAnswer::NotLeader {
                leader: self.leader(),
            },
        }
    }

    /// Registers or updates an instance.
    pub async fn register(
        &self,
        key: InstanceKey,
        spec: InstanceSpec,
        binding: Binding,
    ) -> Result<(u64, InstanceRecord, Lease), AppError> {
        match self
            .propose(Command::Register { key, spec, binding })
            .await?
        {
            (index, Outcome::Registered { record, lease }) => Ok((index, record, lease)),
            (_, Outcome::LeaseNotFound(id)) => Err(AppError::LeaseNotFound(id)),
            (_, other) => Err(unexpected(other)),
        }
    }

    /// Deregisters an instance.
    pub async fn deregister(&self, key: InstanceKey) -> Result<u64, AppError> {
        match self.propose(Command::Deregister { key }).await? {
            (index, Outcome::Deregistered(_)) => Ok(index),
            (_, Outcome::Catalog(e)) => Err(e.into()),
            (_, other) => Err(unexpected(other)),
        }
    }

    /// Sets an instance `draining` (out of healthy discovery) or back to `passing`.
    pub async fn set_status(
        &self,
        key: InstanceKey,
        draining: bool,
    ) -> Result<(u64, InstanceRecord, Option<Lease>), AppError> {
        match self.propose(Command::SetStatus { key, draining }).await? {
            (index, Outcome::StatusSet(record)) => {
                let lease = self
                    .inner
                    .state
                    .read()
                    .app
                    .coordinator
                    .lease(&record.lease)
                    .cloned();
                Ok((index, record, lease))
            }
            (_, Outcome::Catalog(e)) => Err(e.into()),
            (_, other) => Err(unexpected(other)),
        }
    }

    /// Waits, for a blocking query, until `index_of(state)` moves past `block.index` or the
    /// wait runs out; `watch` must have been subscribed before the read index was taken.
    async fn block_until(
        &self,
        mut watch: tokio::sync::watch::Receiver<u64>,
        block: Option<Block>,
        index_of: impl Fn(&AppState) -> u64,
    ) {
        let Some(block) = block else { return };
        let deadline = Instant::now() + block.wait;
        loop {
            watch.borrow_and_update();
            if index_of(&self.inner.state.read().app) > block.index {
                return;
            }
            tokio::select! {
                changed = watch.changed() => if changed.is_err() { return },
                _ = tokio::time::sleep_until(deadline) => return,
            }
        }
    }

    /// `GET /v1/services`: every service with its instance and healthy counts.
    pub async fn services(
        &self,
        consistency: Consistency,
        block: Option<Block>,
    ) -> Result<(u64, Vec<ServiceSummary>), AppError> {
        let watch = self.inner.watches.catalog();
        self.read_index(consistency).await?;
        self.block_until(watch, block, |app| app.catalog.catalog_index())
            .await;
        let state = self.inner.state.read();
        let services = state
            .app
            .catalog
            .services()
            .map(|(name, service)| ServiceSummary {
                name: name.clone(),
                instances: service.instances.len() as u64,
                healthy: service
                    .instances
                    .values()
                    .filter(|r| r.status == InstanceStatus::Passing)
                    .count() as u64,
            })
            .collect();
        Ok((state.last_applied.map_or(0, |l| l.index), services))
    }

    /// `GET /v1/services/{service}`: the instances that pass `filter`.
    pub async fn service(
        &self,
        name: &str,
        filter: &Filter,
        consistency: Consistency,
        block: Option<Block>,
    ) -> Result<(u64, Vec<api_spec::Instance>), AppError> {
        let watch = self.inner.watches.service(name);
        self.read_index(consistency).await?;
        self.block_until(watch, block, |app| app.catalog.service_index(name))
            .await;
        let state = self.inner.state.read();
        let instances = state
            .app
            .catalog
            .service(name)
            .into_iter()
            .flat_map(|s| s.instances.iter())
            .filter(|(_, record)| filter.matches(record))
            .map(|(id, record)| {
                let lease = state.app.coordinator.lease(&record.lease);
                instance_view(name, id, record, lease)
            })
            .collect();
        Ok((state.last_applied.map_or(0, |l| l.index), instances))
    }

    /// Reads a lease (after `read_index`); `remaining` is known only on the leader.
    pub async fn get_lease(
        &self,
        id: LeaseId,
        consistency: Consistency,
    ) -> Result<(u64, Lease, Option<Duration>), AppError> {
        let index = self.read_index(consistency).await?;
        let lease = self.inner.state.read().app.coordinator.lease(&id).cloned();
        let lease = lease.ok_or(AppError::LeaseNotFound(id))?;
        Ok((index, lease, self.inner.clock.remaining(&id)))
    }

    /// Aligns the lease clock with this node's role: restart countdowns when it starts
    /// leading a term, stop expiring when it no longer leads.
    pub fn observe_leadership(&self) {
        let metrics = self.inner.raft.metrics();
        let metrics = metrics.borrow();
        if metrics.state == ServerState::Leader && metrics.current_leader == Some(self.inner.id) {
            self.inner.clock.lead(metrics.current_term);
            let term = metrics.current_term;
            self.inner
                .leader_time
                .lead(term, Instant::now(), wall_clock_ms());
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
        }
    }

    /// Leader time now (see `crate::leader_time`).
    fn leader_time_ms(&self) -> u64 {
        self.inner
            .leader_time
            .now_ms(Instant::now(), wall_clock_ms())
    }

    fn storm(&self) -> std::sync::MutexGuard<'_, StormGuard> {
        self.inner.storm.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Proposes the expiry of the leases whose deadline passed, minus those storm
    /// protection holds back.
    async fn expire_due_leases(&self) {
        let due = self.inner.clock.take_due(EXPIRY_BATCH);
        if due.is_empty() {
            return;
        }
        let decision = {
            let state = self.inner.state.read();
            self.storm().decide(due, &state.app.catalog, Instant::now())
        };
        // Held back: still due, and a keepalive arriving meanwhile revives them.
        self.inner.clock.unmark(&decision.defer);
        let expire = decision.expire;
        if expire.is_empty() {
            return;
        }
        let command = Command::Coordinate(locks::Command::ExpireLeases {
            ids: expire.clone(),
        });
        match self.inner.proposer.propose(command).await {
            Ok((index, Outcome::Coordinate(locks::Outcome::LeasesExpired(gone)))) => {
                tracing::info!(index, expired = gone.len(), "leases expired");
            }
            Ok((_, other)) => tracing::error!(?other, "unexpected outcome of a lease expiry"),
            Err(e) => {
                tracing::warn!(error = %e, leases = expire.len(), "lease expiry not committed; will retry");
                self.inner.clock.unmark(&expire);
            }
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
        match self
            .inner
            .proposer
            .propose(Command::Reap { instances: due })
            .await
        {
            Ok((index, Outcome::Reaped(gone))) if !gone.is_empty() => {
                tracing::info!(
                    index,
                    deregistered = gone.len(),
                    "critical instances deregistered"
                );
            }
            Ok((_, Outcome::Reaped(_))) => {}
            Ok((_, other)) => tracing::error!(?other, "unexpected outcome of a reap"),
            Err(e) => {
                tracing::warn!(error = %e, "deregistration of critical instances not committed; will retry")
            }
        }
    }

    /// `GET /v1/cluster`.
    pub fn cluster_status(&self) -> ClusterStatus {
        let metrics = self.inner.raft.metrics().borrow().clone();
        let membership = metrics.membership_config.membership();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        let members = membership
            .nodes()
            .map(|(id, node)| {
                let voter = voters.contains(id);
                let role = if metrics.current_leader == Some(*id) {
                    Role::Leader
                } else if voter {
                    Role::Follower
                } else {
                    Role::Learner
                };
                Member {
                    id: *id,
                    addr: node.addr.clone(),
                    voter,
                    role,
                }
            })
            .collect();
        let applied = metrics.last_applied.map_or(0, |l| l.index);
        // The leader knows the commit index from its followers' progress: the highest
        // index a majority of voters have. Others report what they applied.
        let commit_index = match &metrics.replication {
            Some(replication) => {
                let mut matched: Vec<u64> = voters
                    .iter()
                    .map(|id| {
                        if *id == self.inner.id {
                            metrics.last_log_index.unwrap_or(0)
                        } else {
                            replication
                                .get(id)
                                .and_then(|m| m.map(|l| l.index))
                                .unwrap_or(0)
                        }
                    })
                    .collect();
                matched.sort_unstable_by(|a, b| b.cmp(a));
                matched
                    .get(matched.len() / 2)
                    .copied()
                    .unwrap_or(applied)
                    .max(applied)
            }
            None => applied,
        };
        ClusterStatus {
            node_id: self.inner.id,
            role: role_of(metrics.state, voters.contains(&self.inner.id)),
            leader: metrics.current_leader,
            leader_addr: metrics
                .current_leader
                .and_then(|id| membership.get_node(&id).map(|n| n.addr.clone())),
            term: metrics.current_term,
            last_log_index: metrics.last_log_index.unwrap_or(0),
            commit_index,
            applied_index: applied,
            snapshot_index: metrics.snapshot.map(|l| l.index),
            purged_index: metrics.purged.map(|l| l.index),
            members,
            expiry_storm: (metrics.state == ServerState::Leader).then(|| {
                let storm = self.storm();
                ExpiryStormStatus {
                    active_services: storm.active(),
                    deferred_total: storm.deferred_total(),
                }
            }),
        }
    }

    /// Adds a server: as a learner that catches up, then (unless `learner`) a voter.
    /// Must run on the leader; the HTTP layer relays the request there.
    pub async fn add_member(
        &self,
        id: NodeId,
        addr: String,
        learner: bool,
    ) -> Result<u64, AppError> {
        let raft = &self.inner.raft;
        let catch_up = raft.add_learner(id, Node { addr: addr.clone() }, true);
        let response = tokio::time::timeout(CATCH_UP_TIMEOUT, catch_up)
            .await
            .map_err(|_| {
                AppError::Unavailable(format!(
                    "server {id} at {addr} was added as a learner but did not catch up within \
                     {CATCH_UP_TIMEOUT:?}; check that it runs and is reachable, then retry \
                     (or remove it)"
                ))
            })?
            .map_err(membership_error)?;
        let mut index = response.log_id.index;
        if !learner {
            let response = raft
                .change_membership(ChangeMembers::AddVoterIds([id].into()), false)
                .await
                .map_err(membership_error)?;
            index = response.log_id.index;
        }
        Ok(index)
    }

    /// Removes a server (voter or learner). Must run on the leader.
    pub async fn remove_member(&self, id: NodeId) -> Result<u64, AppError> {
        let membership = self.inner.raft.metrics().borrow().membership_config.clone();
        let membership = membership.membership();
        if membership.get_node(&id).is_none() {
            return Err(AppError::MemberNotFound(id));
        }
        let change = if membership.voter_ids().any(|v| v == id) {
            ChangeMembers::RemoveVoters([id].into())
        } else {
            ChangeMembers::RemoveNodes([id].into())
        };
        let response = self
            .inner
            .raft
            .change_membership(change, false)
            .await
            .map_err(membership_error)?;
        Ok(response.log_id.index)
    }

    /// `true` when this node is the leader according to its own metrics.
    pub fn is_leader(&self) -> bool {
        self.inner.raft.metrics().borrow().current_leader == Some(self.inner.id)
    }
}

fn role_of(state: ServerState, voter: bool) -> Role {
    match state {
        ServerState::Leader => Role::Leader,
        ServerState::Candidate => Role::Candidate,
        ServerState::Shutdown => Role::Shutdown,
        ServerState::Follower if voter => Role::Follower,
        ServerState::Follower | ServerState::Learner => Role::Learner,
    }
}

fn unexpected(outcome: Outcome) -> AppError {
    AppError::Internal(format!("unexpected outcome {outcome:?}"))
}

/// An instance as the API shows it. `lease` is `None` once the lease has ended; the
/// TTL is then unknown and shown as 0.
pub fn instance_view(
    service: &str,
    id: &str,
    record: &InstanceRecord,
    lease: Option<&Lease>,
) -> api_spec::Instance {
    let ttl_ms = lease.map_or(0, |l| l.ttl_ms);
    let spec = &record.spec;
    api_spec::Instance {
        service: service.to_owned(),
        id: id.to_owned(),
        address: spec.address.clone(),
        port: spec.port,
        tags: spec.tags.clone(),
        meta: spec.meta.clone(),
        zone: spec.zone.clone(),
        region: spec.region.clone(),
        weight: spec.weight,
        status: record.status,
        lease: record.lease,
        own_lease: record.own_lease,
        ttl: api_spec::format_duration(Duration::from_millis(ttl_ms)),
        ttl_ms,
        deregister_after: api_spec::format_duration(Duration::from_millis(
            spec.deregister_after_ms,
        )),
        deregister_after_ms: spec.deregister_after_ms,
        registered_at_ms: record.registered_at_ms,
        modify_index: record.modify_index,
        critical_since_ms: record.critical_since.map(|(ms, _)| ms),
    }
}

fn membership_error(e: RaftError<NodeId, ClientWriteError<NodeId, Node>>) -> AppError {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(_)) => AppError::NoLeader,
        RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => match e {
            ChangeMembershipError::LearnerNotFound(_) => {
                AppError::MembershipConflict(format!("{e}"))
            }
            other => AppError::MembershipConflict(other.to_string()),
        },
        RaftError::Fatal(f) => AppError::Unavailable(f.to_string()),
    }
}
