//! The application: what a request can ask of this node, independent of HTTP.
//!
//! [`App`] is a cheap handle shared by the HTTP handlers and the background tasks; this
//! file holds it and its wiring. Each domain has its own module, all `impl App`:
//!
//! - `routing` — the one way onto the leader ([`Forward`] / [`Forwarded`]), proposals,
//!   read indexes;
//! - `reads` — consistency and blocking queries;
//! - `leases`, `catalog`, `coordination` (locks and elections), `cluster` (status and
//!   membership) — the operations;
//! - `acl` — who a request comes from and what it may do, and the token operations;
//! - `tasks` — the leader's background work (lease expiry, reaping, lock-delay ends);
//! - `error` — [`AppError`].
//!
//! Modules depend on `routing`, `reads`, `acl` and `error`, never on each other; those
//! depend on no sibling but each other and `error`. An [`App`] handle acts for one
//! caller ([`App::acting_for`]): the HTTP layer makes one per request. App methods return domain values (`locks` and
//! `catalog` types); the HTTP layer turns them into wire views.

use std::sync::Arc;
use std::time::Duration;

mod acl;
mod catalog;
mod checks;
mod cluster;
mod coordination;
mod dns;
mod error;
mod leases;
mod limits;
mod reads;
mod routing;
mod tasks;

pub use self::acl::{hash_secret, TokenSpec};
pub use self::catalog::ServiceCounts;
pub use self::checks::{ChecksConfig, PROBER_TIMEOUT};
pub use self::cluster::{ClusterInfo, MemberInfo, StormInfo};
pub use self::coordination::{AcquireSpec, Granted};
pub use self::error::AppError;
pub use self::limits::{LimitsConfig, LimitsInfo};
pub use self::reads::{Block, Consistency};
pub use self::routing::{Forward, ForwardAnswer, Forwarded, KeepaliveTarget};

use crate::leader::leader_time::LeaderClock;
use crate::leader::lease_clock::LeaseClock;
use crate::leader::storm::{StormConfig, StormGuard};
use crate::raft::network::PeerClient;
use crate::raft::proposer::{Proposer, ProposerConfig};
use crate::raft::read_barrier::ReadBarrier;
use crate::raft::store::log::StampSeen;
use crate::raft::store::state_machine::SharedState;
use crate::raft::types::{NodeId, Raft};
use crate::replicated::acl::{Authority, Caller};
use crate::replicated::ops::Mismatch;
use crate::watch::Watches;

/// Settings the application takes from the command line.
#[derive(Debug, Clone)]
pub struct AppConfig {
    /// How long a request waits for a leader to be known before answering 503.
    pub leader_wait: Duration,
    /// Proposal timeout and entry size.
    pub proposer: ProposerConfig,
    pub storm: StormConfig,
    /// Whether ACLs are on, and the anonymous rules.
    pub authority: Authority,
    /// `REGISTRY_ACL_BOOTSTRAP_TOKEN`: the secret the leader bootstraps ACLs with.
    pub bootstrap_secret: Option<String>,
    /// Whether node-to-node traffic is authenticated (a cluster secret is set); without
    /// it, only loopback members may be added.
    pub peers_authenticated: bool,
    /// How many blocking queries and waiting requests this node holds at most.
    pub limits: LimitsConfig,
    /// `--metrics-public`: `/metrics` needs no `cluster:read`.
    pub metrics_public: bool,
    /// Active checks: the probe runners and how many run at once.
    pub checks: ChecksConfig,
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
    authority: Authority,
    bootstrap_secret: Option<String>,
    peers_authenticated: bool,
    metrics_public: bool,
    limits: limits::Limits,
    checks: ChecksConfig,
    /// When the leader last looked at the prober set. `std::sync::Mutex`: held only to
    /// read and set two fields.
    keeper: std::sync::Mutex<checks::ProberKeeper>,
    /// The caller without a token (everyone, with ACLs off): one shared value, so a
    /// request that presents no token allocates nothing for it.
    anonymous: Arc<Caller>,
    db_memory: crate::raft::store::log::DbMemory,
}

/// The application handle, acting for one caller.
#[derive(Clone)]
pub struct App {
    inner: Arc<Inner>,
    /// Who this handle acts for: the request's caller for a handle made by
    /// [`App::acting_for`]; the anonymous caller for the server's own handle, so a read
    /// that forgot to act for its caller gets the least, not the most.
    caller: Arc<Caller>,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App")
            .field("id", &self.inner.id)
            .finish_non_exhaustive()
    }
}

/// What the application is wired to: the handles the server makes at start-up.
#[allow(missing_debug_implementations)] // openraft's `Raft` has no `Debug`
pub struct Wiring {
    pub raft: Raft,
    /// The state machine's in-memory state.
    pub state: SharedState,
    /// The leader's lease deadlines (the state machine tells it about leases).
    pub clock: LeaseClock,
    /// Where blocking queries and parked requests wait (the state machine wakes them).
    pub watches: Watches,
    /// The pooled client for calls to other servers.
    pub peers: PeerClient,
    /// The latest leader time the log store appended (leader time starts there).
    pub stamps: StampSeen,
    /// Connections open on this node's listener.
    pub connections: crate::listener::ConnectionCount,
    /// Connections open on its peer listener (`--peer-listen`).
    pub peer_connections: Option<crate::listener::ConnectionCount>,
    /// What RocksDB holds in memory (for the metrics).
    pub db_memory: crate::raft::store::log::DbMemory,
}

impl App {
    pub fn new(id: NodeId, wiring: Wiring, config: AppConfig) -> Self {
        let Wiring {
            raft,
            state,
            clock,
            watches,
            peers,
            stamps,
            connections,
            peer_connections,
            db_memory,
        } = wiring;
        let leader_time = LeaderClock::new(state.clone(), stamps);
        let anonymous = Arc::new(config.authority.anonymous());
        let proposer = Proposer::start(raft.clone(), config.proposer, leader_time.clone());
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
                authority: config.authority,
                bootstrap_secret: config.bootstrap_secret,
                peers_authenticated: config.peers_authenticated,
                metrics_public: config.metrics_public,
                limits: limits::Limits::new(config.limits, connections, peer_connections),
                checks: config.checks,
                keeper: std::sync::Mutex::default(),
                anonymous: anonymous.clone(),
                db_memory,
            }),
            caller: anonymous.clone(),
        }
    }

    pub fn id(&self) -> NodeId {
        self.inner.id
    }

    /// RocksDB's memtable and block cache bytes now (for `/metrics`).
    pub fn db_memory(&self) -> (u64, u64) {
        self.inner.db_memory.sizes()
    }

    /// Counts of the replicated state (for `/metrics`).
    pub fn state_counts(&self) -> crate::metrics::StateCounts {
        crate::metrics::StateCounts::of(&self.inner.state.read().app)
    }

    /// How long ago each peer last answered this node's Raft calls.
    pub fn peer_contacts(&self) -> Vec<(NodeId, Option<Duration>)> {
        self.inner.peers.contacts()
    }

    pub fn raft(&self) -> &Raft {
        &self.inner.raft
    }

    /// The in-memory state (for reads after the read index).
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
}

/// The state machine answered a command with another command's outcome: a bug.
fn unexpected(Mismatch(outcome): Mismatch) -> AppError {
    AppError::Internal(format!("unexpected outcome {outcome:?}"))
}
