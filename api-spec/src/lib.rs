//! The wire contract of the registry: every type that crosses the public HTTP API, the
//! error codes, and the duration format. Server and client both use these types, so the
//! two can never disagree about a field name.
//!
//! Conventions (see `ARCHITECTURE.md`):
//! - durations are strings such as `"15s"`, `"500ms"`, `"2m"` ([`parse_duration`]);
//!   responses also give the value in milliseconds (`*_ms` fields);
//! - errors are `{"error": {"code": "...", "message": "..."}}` ([`ErrorBody`]);
//! - every response carries the index it reflects in the [`INDEX_HEADER`] header.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

pub mod acl;
pub mod backup;
pub mod checks;
pub mod openapi;
pub mod rules;

/// Response header carrying the Raft log index a response reflects.
pub const INDEX_HEADER: &str = "X-Registry-Index";

/// Shortest lease TTL the server accepts. Shorter TTLs would expire on an ordinary
/// leader election (which takes up to the election timeout plus a vote round).
pub const MIN_LEASE_TTL: Duration = Duration::from_secs(1);

/// Longest lease TTL the server accepts (one day). Anything longer is almost certainly a
/// unit mistake, and a lease that long is no longer a liveness signal.
pub const MAX_LEASE_TTL: Duration = Duration::from_secs(24 * 60 * 60);

/// Parses a duration string such as `"15s"`, `"500ms"`, `"1m30s"`, `"1m 30s"`: exactly
/// the strings [`rules::DURATION_PATTERN`] matches (humantime reads the value).
///
/// A bare number is rejected: `"15"` could mean seconds or milliseconds, and guessing
/// wrong by a factor of a thousand is the kind of mistake a registry must not make quietly.
pub fn parse_duration(text: &str) -> Result<Duration, DurationError> {
    if text.is_empty() {
        return Err(DurationError::Empty);
    }
    if text.starts_with('-') {
        return Err(DurationError::Negative(text.to_owned()));
    }
    if text.chars().all(|c| c.is_ascii_digit() || c == '.') {
        return Err(DurationError::MissingUnit(text.to_owned()));
    }
    if !rules::is_duration_syntax(text) {
        return Err(DurationError::Invalid {
            text: text.to_owned(),
            reason: "write whole numbers each followed by a unit (ms, s, m, h, d...), \
                     at most one space between them"
                .to_owned(),
        });
    }
    // Only a number too large to represent is refused here.
    humantime::parse_duration(text).map_err(|e| DurationError::Invalid {
        text: text.to_owned(),
        reason: e.to_string(),
    })
}

/// Formats a duration the way [`parse_duration`] reads it (`"15s"`, `"1m 30s"`).
pub fn format_duration(duration: Duration) -> String {
    humantime::format_duration(duration).to_string()
}

/// Why a duration string was rejected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DurationError {
    /// The string was empty.
    Empty,
    /// The string started with a minus sign.
    Negative(String),
    /// A bare number without a unit.
    MissingUnit(String),
    /// Anything else humantime could not read.
    Invalid { text: String, reason: String },
}

impl std::fmt::Display for DurationError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DurationError::Empty => write!(f, "duration is empty (expected e.g. \"15s\")"),
            DurationError::Negative(t) => write!(f, "duration {t:?} is negative"),
            DurationError::MissingUnit(t) => {
                write!(
                    f,
                    "duration {t:?} has no unit (write e.g. \"{t}s\" or \"{t}ms\")"
                )
            }
            DurationError::Invalid { text, reason } => {
                write!(
                    f,
                    "duration {text:?} is not valid: {reason} (expected e.g. \"15s\")"
                )
            }
        }
    }
}

impl std::error::Error for DurationError {}

/// The body of every error response.
#[derive(utoipa::ToSchema, Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: ErrorDetail,
    /// With `lock_held` and `token_mismatch` on a lock route: the lock as it is now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lock: Option<LockInfo>,
    /// With `election_held` and `token_mismatch` on an election route: the election as
    /// it is now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub election: Option<ElectionInfo>,
}

/// A stable machine-readable `code` and a human-readable `message`.
#[derive(utoipa::ToSchema, Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorDetail {
    /// One of the constants in [`codes`]; stable across releases.
    pub code: String,
    /// What went wrong, for a person; may change between releases.
    pub message: String,
}

/// The stable error codes. Each maps to one HTTP status, given in its doc.
pub mod codes {
    /// 400: the body is not valid JSON or does not match the expected shape.
    pub const INVALID_JSON: &str = "invalid_json";
    /// 400: a field has a value outside what the server accepts.
    pub const INVALID_ARGUMENT: &str = "invalid_argument";
    /// 400: a duration string could not be read, or is outside the allowed range.
    pub const INVALID_DURATION: &str = "invalid_duration";
    /// 404: the lease does not exist (never did, was revoked, or expired); also the answer
    /// to an acquire or campaign whose lease ended while it waited.
    pub const LEASE_NOT_FOUND: &str = "lease_not_found";
    /// 404: no instance with this service and id is registered (register it again).
    pub const INSTANCE_NOT_FOUND: &str = "instance_not_found";
    /// The instance's lease has ended, so it is `critical`: 404 on a heartbeat (register
    /// it again), 409 on a status change.
    pub const INSTANCE_CRITICAL: &str = "instance_critical";
    /// A heartbeat for an instance without a lease (its active checks keep it).
    pub const INSTANCE_UNLEASED: &str = "instance_unleased";
    /// 404: the cluster has no member with this id.
    pub const MEMBER_NOT_FOUND: &str = "member_not_found";
    /// 404: no route matches the path.
    pub const NOT_FOUND: &str = "not_found";
    /// 405: the route exists but not with this method.
    pub const METHOD_NOT_ALLOWED: &str = "method_not_allowed";
    /// 409: the cluster membership change conflicts with the current membership.
    pub const MEMBERSHIP_CONFLICT: &str = "membership_conflict";
    /// 413: the request body is larger than the server accepts.
    pub const PAYLOAD_TOO_LARGE: &str = "payload_too_large";
    /// 415: the request body is not declared as JSON.
    pub const UNSUPPORTED_MEDIA_TYPE: &str = "unsupported_media_type";
    /// 503: no leader is known right now; retry after the `Retry-After` header.
    pub const NO_LEADER: &str = "no_leader";
    /// 503: the node is shutting down or not yet part of a cluster.
    pub const UNAVAILABLE: &str = "unavailable";
    /// 409: the lock is held (or has waiters, or is in its lock-delay) and the request did
    /// not wait, or its `wait` ran out. The body's `lock` shows the holder.
    pub const LOCK_HELD: &str = "lock_held";
    /// 409: another candidate leads the election and the campaign did not wait, or its
    /// `wait` ran out. The body's `election` shows the leader.
    pub const ELECTION_HELD: &str = "election_held";
    /// 409: the token is not the current holder's (it was released, expired or handed
    /// on); nothing changed. The body shows the lock or election as it is.
    pub const TOKEN_MISMATCH: &str = "token_mismatch";
    /// 401: the request carries no token, or one the cluster does not know (never made,
    /// revoked or expired), where ACLs require one.
    pub const UNAUTHENTICATED: &str = "unauthenticated";
    /// 403: the token may not do this; the message names the resource, name and access
    /// it would need.
    pub const PERMISSION_DENIED: &str = "permission_denied";
    /// 409: the cluster's ACLs are bootstrapped already; `POST /v1/acl/bootstrap` works
    /// once.
    pub const ACL_BOOTSTRAPPED: &str = "acl_bootstrapped";
    /// 400: ACLs are off on this server (start it with `--acl`).
    pub const ACL_DISABLED: &str = "acl_disabled";
    /// 404: no token has this accessor (never made, revoked or expired).
    pub const TOKEN_NOT_FOUND: &str = "token_not_found";
    /// 503: this server is overloaded (too many connections, or too many writes queued
    /// for the leader); retry after the `Retry-After` header.
    pub const OVERLOADED: &str = "overloaded";
    /// 429: this server holds as many blocking queries (or waiting lock and election
    /// requests) as it allows; retry after the `Retry-After` header.
    pub const TOO_MANY_WAITERS: &str = "too_many_waiters";
    /// 429: the lock's wait queue; retry later.
    pub const QUEUE_FULL: &str = "queue_full";
    /// 500: a server-side failure; details are in the server's log, not the response.
    pub const INTERNAL: &str = "internal";
}

/// `POST /v1/leases`.
#[derive(utoipa::ToSchema, Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateLeaseRequest {
    /// Time to live, e.g. `"15s"`; between [`MIN_LEASE_TTL`] and [`MAX_LEASE_TTL`].
    pub ttl: String,
}

/// A lease as the API shows it (`POST /v1/leases`, `GET /v1/leases/{id}`, keepalive).
#[derive(utoipa::ToSchema, Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseInfo {
    /// The lease id; pass it to keepalive, revoke, and (later) registrations and locks.
    pub lease: Uuid,
    /// The TTL as a duration string.
    pub ttl: String,
    /// The TTL in milliseconds.
    pub ttl_ms: u64,
    /// Raft log index of the entry that granted the lease.
    pub granted_index: u64,
    /// Leader's wall-clock time when it proposed the grant, in ms since the Unix epoch.
    pub granted_at_ms: u64,
    /// Milliseconds until the leader expires the lease unless it is kept alive. Only the
    /// leader keeps lease deadlines, so this is present when the leader answered (always
    /// for keepalive) and absent on a follower's `GET`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remaining_ms: Option<u64>,
}

/// `DELETE /v1/leases/{id}`.
#[derive(utoipa::ToSchema, Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevokeLeaseResponse {
    pub lease: Uuid,
    /// Always `true`: an unknown lease is a 404, not `false`.
    pub revoked: bool,
}

/// TTL of an instance's own lease when the registration names none.
pub const DEFAULT_INSTANCE_TTL: Duration = Duration::from_secs(10);

/// How long an instance stays listed (as `critical`) after its lease ended.
pub const DEFAULT_DEREGISTER_AFTER: Duration = Duration::from_secs(60);

/// Longest `deregister_after` the server accepts (7 days).
pub const MAX_DEREGISTER_AFTER: Duration = Duration::from_secs(7 * 24 * 60 * 60);

/// Blocking queries wait this long when `wait` is not given.
pub const DEFAULT_BLOCKING_WAIT: Duration = Duration::from_secs(5 * 60);

/// Longest `wait` a blocking query may ask for; longer values are capped to this.
pub const MAX_BLOCKING_WAIT: Duration = Duration::from_secs(10 * 60);

/// `PUT /v1/services/{service}/instances/{id}`: register an instance, or update it.
#[derive(utoipa::ToSchema, Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegisterRequest {
    /// Host name or IP address callers connect to: a DNS name (a dotted IPv4 address is
    /// one) or an IPv6 address in hex form, at most 253 characters.
    pub address: String,
    /// Port callers connect to, 1 to 65535.
    pub port: u16,
    /// Free-form labels callers filter on (`?tag=`): at most 64, each 1 to 128
    /// characters without control characters.
    #[serde(default)]
    pub tags: Vec<String>,
    /// String key/value pairs callers filter on (`?meta.KEY=VALUE`): at most 64; keys are
    /// names (letters, digits, `.`, `_`, `-`, starting with a letter or digit, at most 128),
    /// values up to 512 characters without control characters.
    #[serde(default)]
    pub meta: BTreeMap<String, String>,
    /// Availability zone, for zone-aware callers (`?zone=`); a name, like meta keys.
    #[serde(default)]
    pub zone: Option<String>,
    /// Region, for region-aware callers (`?region=`); a name, like meta keys.
    #[serde(default)]
    pub region: Option<String>,
    /// Relative share of traffic for weighted balancing: 0 (no traffic) to 1000, default 1.
    #[serde(default)]
    pub weight: Option<u32>,
    /// TTL of the instance's own lease (default `"10s"`, none when it has `checks`);
    /// not allowed with `lease`.
    #[serde(default)]
    pub ttl: Option<String>,
    /// How long the instance stays listed as `critical` (its lease ended or a check
    /// failed) before it is deregistered (default `"1m"`; `"72h"` for an instance with
    /// checks and no lease).
    #[serde(default)]
    pub deregister_after: Option<String>,
    /// Bind to this existing lease instead of getting a lease of its own.
    #[serde(default)]
    pub lease: Option<Uuid>,
    /// Active health checks the cluster runs against the instance, at most 8. An
    /// instance with checks and neither `ttl` nor `lease` has no lease: it needs no
    /// heartbeats and stays registered until deregistered, or critical for
    /// `deregister_after`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub checks: Vec<checks::CheckDefinition>,
}

/// An instance's health.
#[derive(utoipa::ToSchema, Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InstanceStatus {
    /// Its lease lives and it has not asked to drain: in healthy discovery.
    Passing,
    /// It asked to be taken out of discovery (graceful shutdown); its lease still lives.
    Draining,
    /// Its lease ended or one of its checks is critical; listed only with
    /// `?status=any` until deregistered.
    Critical,
}

/// `PUT /v1/services/{service}/instances/{id}/status`.
#[derive(utoipa::ToSchema, Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetStatusRequest {
    /// `passing` or `draining` (`critical` is the registry's call, not the instance's).
    pub status: InstanceStatus,
}

/// A registered instance as the API shows it.
#[derive(utoipa::ToSchema, Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Instance {
    pub service: String,
    pub id: String,
    pub address: String,
    pub port: u16,
    pub tags: Vec<String>,
    pub meta: BTreeMap<String, String>,
    pub zone: Option<String>,
    pub region: Option<String>,
    pub weight: u32,
    pub status: InstanceStatus,
    /// The lease keeping it alive (its own unless it registered with `lease`); none
    /// for an instance kept by its checks alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<Uuid>,
    /// `true` when the lease was created for this instance (and ends with it).
    pub own_lease: bool,
    /// The lease's TTL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_ms: Option<u64>,
    pub deregister_after: String,
    pub deregister_after_ms: u64,
    /// Leader's wall clock when the instance was first registered (ms since the epoch).
    pub registered_at_ms: u64,
    /// Log index of the entry that last changed this instance.
    pub modify_index: u64,
    /// When it turned critical (leader's wall clock, ms since the epoch), if it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub critical_since_ms: Option<u64>,
    /// Its active checks and their status.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub checks: Vec<checks::CheckInfo>,
}

/// `PUT .../heartbeat`.
#[derive(utoipa::ToSchema, Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeartbeatResponse {
    pub service: String,
    pub id: String,
    pub lease: Uuid,
    pub ttl_ms: u64,
    /// Milliseconds until the leader ends the lease unless it hears another heartbeat.
    pub remaining_ms: u64,
}

/// `DELETE /v1/services/{service}/instances/{id}`.
#[derive(utoipa::ToSchema, Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeregisterResponse {
    pub service: String,
    pub id: String,
    /// Always `true`: an unknown instance is a 404.
    pub deregistered: bool,
}

/// One service in `GET /v1/services`.
#[derive(utoipa::ToSchema, Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceSummary {
    pub name: String,
    /// Registered instances, whatever their status.
    pub instances: u64,
    /// Instances that are `passing`.
    pub healthy: u64,
}

/// `GET /v1/services`.
#[derive(utoipa::ToSchema, Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceList {
    /// Services with at least one registered instance, by name.
    pub services: Vec<ServiceSummary>,
}

/// `GET /v1/services/{service}`.
#[derive(utoipa::ToSchema, Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceInstances {
    pub service: String,
    /// The instances that match the query's filters, by id.
    pub instances: Vec<Instance>,
}

/// A server's role in the Raft group.
#[derive(utoipa::ToSchema, Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Leader,
    Follower,
    Candidate,
    Learner,
    Shutdown,
}

/// One member of the cluster as `GET /v1/cluster` shows it.
#[derive(utoipa::ToSchema, Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub id: u64,
    /// The address other servers and clients reach it at (its `--advertise` address).
    pub addr: String,
    /// `true` for voters, `false` for learners (which replicate but do not vote).
    pub voter: bool,
    /// `leader`, `follower` or `learner` as far as the answering node knows.
    pub role: Role,
}

/// `GET /v1/cluster`.
#[derive(utoipa::ToSchema, Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterStatus {
    /// The id of the node that answered.
    pub node_id: u64,
    /// The answering node's own role.
    pub role: Role,
    /// Current leader's id, if one is known.
    pub leader: Option<u64>,
    /// Current leader's address, if one is known.
    pub leader_addr: Option<String>,
    /// The answering node's current Raft term.
    pub term: u64,
    /// Highest log index this node has persisted.
    pub last_log_index: u64,
    /// Highest log index known committed by this node (applied or better).
    pub commit_index: u64,
    /// Highest log index applied to this node's state machine.
    pub applied_index: u64,
    /// Log index of the last snapshot this node holds.
    pub snapshot_index: Option<u64>,
    /// Highest log index this node has purged (deleted behind a snapshot).
    pub purged_index: Option<u64>,
    pub members: Vec<Member>,
    /// Expiry storm protection as the leader sees it; present when the leader answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expiry_storm: Option<ExpiryStormStatus>,
    /// What the answering node holds now against its limits.
    #[serde(default)]
    pub limits: NodeLimits,
    /// The servers that run active checks (node ids), as the answering node applied it:
    /// the voters the leader heard "I probe" from lately.
    #[serde(default)]
    pub probers: Vec<u64>,
}

/// A node's limits and their use (`GET /v1/cluster`): past a limit, new connections get
/// 503 `overloaded`, blocking queries and waiting requests 429 `too_many_waiters`, writes
/// 503 `overloaded`, all with `Retry-After`.
#[derive(utoipa::ToSchema, Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeLimits {
    /// Client and peer connections open now, and the most allowed (`--max-connections`).
    /// With `--peer-listen`, the public listener's only.
    pub connections: u64,
    pub max_connections: u64,
    /// Connections open on the peer listener (`--peer-listen`, which has its own
    /// `--max-connections`); absent without one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_connections: Option<u64>,
    /// Blocking queries waiting now, and the most allowed (`--max-blocking-queries`).
    pub blocking_queries: u64,
    pub max_blocking_queries: u64,
    /// Lock and election requests waiting in line on this node, and the most allowed
    /// (`--max-parked-waiters`).
    pub parked_waiters: u64,
    pub max_parked_waiters: u64,
    /// Writes queued for this node's next entries (as leader), and the most allowed
    /// (`--max-queued-writes`).
    pub queued_writes: u64,
    pub max_queued_writes: u64,
}

/// Expiry storm protection on the leader (`GET /v1/cluster`).
#[derive(utoipa::ToSchema, Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExpiryStormStatus {
    /// Whether storm protection runs (`false` with `--no-expiry-storm-protection`: every
    /// due lease expires at once).
    #[serde(default = "enabled_by_default")]
    pub enabled: bool,
    /// Services whose expiries are being held back and released at a bounded rate.
    pub active_services: Vec<String>,
    /// Leases whose expiry was held back since this server started (a lease held back
    /// over several ticks counts once; each is expired later or revived by a heartbeat).
    pub deferred_total: u64,
}

fn enabled_by_default() -> bool {
    true
}

/// `PUT /v1/agent/service/register`, in Consul's names (the server reads keys in any
/// case, as Consul does).
#[derive(utoipa::ToSchema, Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ConsulRegistration {
    /// The service name.
    pub name: String,
    /// The instance id (default: the name).
    #[serde(rename = "ID")]
    pub id: Option<String>,
    /// Default: the caller's IP address.
    pub address: Option<String>,
    pub port: u16,
    pub tags: Option<Vec<String>>,
    pub meta: Option<BTreeMap<String, String>>,
    pub weights: Option<ConsulWeights>,
    pub check: Option<ConsulCheck>,
    pub checks: Option<Vec<ConsulCheck>>,
}

/// Consul's service weights: `Passing` is the instance weight.
#[derive(utoipa::ToSchema, Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ConsulWeights {
    pub passing: u32,
    pub warning: Option<u32>,
}

/// A check of a Consul registration: a TTL check (this schema). The server also reads
/// Consul's `HTTP`, `TCP` and `GRPC` checks as active checks (see the route); they are
/// left out of this schema, whose fields the contract tests generate freely.
#[derive(utoipa::ToSchema, Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ConsulCheck {
    /// The lease TTL.
    #[serde(rename = "TTL")]
    pub ttl: String,
    /// How long the instance stays listed once critical (`deregister_after`).
    pub deregister_critical_service_after: Option<String>,
}

/// `PUT /v1/agent/check/update/{check}`.
#[derive(utoipa::ToSchema, Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ConsulCheckUpdate {
    /// `passing`, `warning` or `critical`.
    pub status: String,
    pub output: Option<String>,
}

/// One target group of `GET /v1/sd/prometheus` (Prometheus' HTTP service discovery
/// format): one instance, its `address:port`, and its labels.
#[derive(utoipa::ToSchema, Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrometheusTargetGroup {
    pub targets: Vec<String>,
    pub labels: std::collections::BTreeMap<String, String>,
}

/// `POST /v1/cluster/members`.
#[derive(utoipa::ToSchema, Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddMemberRequest {
    /// The new server's `--node-id`.
    pub id: u64,
    /// The new server's `--advertise` address, `host:port`.
    pub addr: String,
    /// Keep it a learner (replicating, not voting). Default: promote to voter once it
    /// has caught up.
    #[serde(default)]
    pub learner: bool,
}

/// Answer to a membership change.
#[derive(utoipa::ToSchema, Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MembershipResponse {
    /// Log index of the membership entry that made the change.
    pub index: u64,
    pub members: Vec<Member>,
}

/// `GET /healthz` and `GET /readyz`.
#[derive(utoipa::ToSchema, Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthStatus {
    /// `true` when the probe passes.
    pub ok: bool,
    pub node_id: u64,
    /// The known leader, if any.
    pub leader: Option<u64>,
    /// Why the probe fails, when it does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Lock-delay applied when an acquire gives none: how long a lock whose holder's lease
/// *expired* stays ungranted, for resources that do not check fencing tokens.
pub const DEFAULT_LOCK_DELAY: Duration = Duration::from_secs(1);

/// Longest `lock_delay` an acquire may ask for.
pub const MAX_LOCK_DELAY: Duration = Duration::from_secs(60);

/// Longest `wait` an acquire or campaign may ask for.
pub const MAX_LOCK_WAIT: Duration = MAX_BLOCKING_WAIT;

/// Longest `holder` text on an acquire, in characters.
pub const MAX_HOLDER_LEN: usize = 256;

/// Longest election `candidate` value, in characters.
pub const MAX_CANDIDATE_LEN: usize = 4096;

/// `POST /v1/locks/{name}/acquire`.
#[derive(utoipa::ToSchema, Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AcquireRequest {
    /// Hold the lock under this existing lease. Give this or `ttl`.
    #[serde(default)]
    pub lease: Option<Uuid>,
    /// Make a lease of the lock's own with this TTL (e.g. `"15s"`), returned in the
    /// answer; keep it alive with `PUT /v1/leases/{id}/keepalive`. Releasing the lock
    /// revokes it. Give this or `lease`.
    #[serde(default)]
    pub ttl: Option<String>,
    /// How long to wait in line when the lock is held (default `"0s"`: answer `409` at
    /// once). While the request waits, the server keeps its lease alive.
    #[serde(default)]
    pub wait: Option<String>,
    /// Free text shown to others as the holder (e.g. host and pid), up to 256 characters, no control
    /// characters.
    #[serde(default)]
    pub holder: Option<String>,
    /// How long the lock stays ungranted if this holder's lease *expires* (default
    /// `"1s"`, at most `"1m"`); a clean release or revoke has no delay.
    #[serde(default)]
    pub lock_delay: Option<String>,
}

/// `200` answer to an acquire: the caller holds the lock.
#[derive(utoipa::ToSchema, Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockGrant {
    pub name: String,
    /// The fencing token: pass it to the protected resource, which must reject any token
    /// lower than the highest it has seen. Strictly greater than every earlier grant's.
    pub token: u64,
    /// The lease the lock is bound to: keep it alive, or the lock is lost.
    pub lease: Uuid,
    /// `true` when the lease was made for this lock (from `ttl`); releasing revokes it.
    pub own_lease: bool,
    /// The lease's TTL in milliseconds.
    pub ttl_ms: u64,
    pub holder: String,
    pub lock_delay_ms: u64,
    /// Log index of the granting entry.
    pub granted_index: u64,
    /// Leader's wall clock at the grant (ms since the Unix epoch).
    pub granted_at_ms: u64,
}

/// `POST /v1/locks/{name}/release` and `POST /v1/elections/{name}/resign`.
#[derive(utoipa::ToSchema, Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReleaseRequest {
    /// The token of the grant being given up.
    pub token: u64,
}

/// Answer to a release or resign.
#[derive(utoipa::ToSchema, Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseResponse {
    pub name: String,
    pub token: u64,
    /// Always `true`: a token that is not the current one is a `409`.
    pub released: bool,
    /// `true` when the lock's own lease was revoked with it.
    pub lease_revoked: bool,
}

/// The current holder of a lock.
#[derive(utoipa::ToSchema, Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockHolder {
    pub holder: String,
    /// The holder's fencing token. With ACLs on, shown only to callers with `write`
    /// access to the lock.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<u64>,
    /// The lease the lock is bound to. With ACLs on, shown only to callers with `write`
    /// access to the lock.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<Uuid>,
    pub own_lease: bool,
    pub lock_delay_ms: u64,
    pub granted_index: u64,
    pub granted_at_ms: u64,
}

/// A request waiting for a lock (or a candidate waiting to lead).
#[derive(utoipa::ToSchema, Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockWaiter {
    pub holder: String,
    /// The lease the request is bound to. With ACLs on, shown on a lock only to callers
    /// with `write` access to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<Uuid>,
    /// Log index of the entry that queued it.
    pub queued_index: u64,
    /// Leader's wall clock when it was queued (ms since the Unix epoch).
    pub queued_at_ms: u64,
}

/// `GET /v1/locks/{name}`: a lock as it is. A lock nobody holds has no holder and no
/// waiters.
#[derive(utoipa::ToSchema, Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockInfo {
    pub name: String,
    pub held: bool,
    pub holder: Option<LockHolder>,
    /// Waiters in the order they will be granted.
    pub waiters: Vec<LockWaiter>,
    /// The previous holder's lease expired: the lock is not granted before this time
    /// (leader's wall clock, ms since the Unix epoch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay_until_ms: Option<u64>,
    /// Log index of the last change to this lock (0 for a lock that never changed or
    /// has been free since the last change to any lock).
    pub modify_index: u64,
}

/// `GET /v1/locks`.
#[derive(utoipa::ToSchema, Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockList {
    /// Locks that are held, have waiters or are in their lock-delay, by name.
    pub locks: Vec<LockInfo>,
}

/// `POST /v1/elections/{name}/campaign`.
#[derive(utoipa::ToSchema, Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CampaignRequest {
    /// The value this candidate announces when it leads (e.g. its address), 1 to 4096
    /// characters.
    pub candidate: String,
    /// Campaign under this existing lease. Give this or `ttl`.
    #[serde(default)]
    pub lease: Option<Uuid>,
    /// Make a lease of the candidacy's own with this TTL; resigning revokes it. Give this
    /// or `lease`.
    #[serde(default)]
    pub ttl: Option<String>,
    /// How long to wait for leadership (default `"0s"`: answer `409` at once with the
    /// current leader). While the request waits, the server keeps its lease alive.
    #[serde(default)]
    pub wait: Option<String>,
}

/// `POST /v1/elections/{name}/proclaim`: the leader announces a new value.
#[derive(utoipa::ToSchema, Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProclaimRequest {
    pub token: u64,
    /// The new value, 1 to 4096 characters.
    pub candidate: String,
}

/// An election's leader.
#[derive(utoipa::ToSchema, Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ElectionLeader {
    pub name: String,
    /// The leader's announced value.
    pub candidate: String,
    /// Fencing token of this leadership term.
    pub token: u64,
    pub lease: Uuid,
    pub own_lease: bool,
    /// Log index of the entry that made it leader.
    pub since_index: u64,
    /// Leader's wall clock when it became leader (ms since the Unix epoch).
    pub since_ms: u64,
}

/// Answer to a campaign that won: this candidate leads.
#[derive(utoipa::ToSchema, Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CampaignResponse {
    #[serde(flatten)]
    pub leader: ElectionLeader,
    /// The lease's TTL in milliseconds: keep the lease alive to keep leading.
    pub ttl_ms: u64,
}

/// `GET /v1/elections/{name}`: who leads, and who waits to.
#[derive(utoipa::ToSchema, Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ElectionInfo {
    pub name: String,
    pub leader: Option<ElectionLeader>,
    /// Candidates waiting to lead, in order.
    pub candidates: Vec<LockWaiter>,
    /// Log index of the last change to this election.
    pub modify_index: u64,
}

/// `GET /v1/elections`.
#[derive(utoipa::ToSchema, Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ElectionList {
    /// Elections with a leader or candidates, by name.
    pub elections: Vec<ElectionInfo>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("15s"), Ok(Duration::from_secs(15)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("1m 30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("7days"), Ok(Duration::from_secs(7 * 86_400)));
    }

    #[test]
    fn durations_without_unit_or_negative_are_rejected() {
        assert_eq!(parse_duration(""), Err(DurationError::Empty));
        assert!(matches!(
            parse_duration("15"),
            Err(DurationError::MissingUnit(_))
        ));
        assert!(matches!(
            parse_duration("-5s"),
            Err(DurationError::Negative(_))
        ));
        assert!(matches!(
            parse_duration("soon"),
            Err(DurationError::Invalid { .. })
        ));
        for text in [" 2m ", "1.5s", "15 s", "1m  30s", "99999999999999999999h"] {
            assert!(
                matches!(parse_duration(text), Err(DurationError::Invalid { .. })),
                "{text:?}"
            );
        }
        assert!(parse_duration("15")
            .unwrap_err()
            .to_string()
            .contains("15s"));
    }

    #[test]
    fn format_round_trips() {
        for d in [
            Duration::from_secs(15),
            Duration::from_millis(1500),
            Duration::from_secs(3600),
        ] {
            assert_eq!(parse_duration(&format_duration(d)), Ok(d));
        }
    }

    #[test]
    fn error_body_shape_is_stable() {
        let body = ErrorBody {
            error: ErrorDetail {
                code: codes::LEASE_NOT_FOUND.into(),
                message: "gone".into(),
            },
            lock: None,
            election: None,
        };
        let json = serde_json::to_value(&body).unwrap();
        assert_eq!(json["error"]["code"], "lease_not_found");
        assert_eq!(json["error"]["message"], "gone");
        assert!(json.get("lock").is_none() && json.get("election").is_none());
    }

    #[test]
    fn unknown_fields_in_requests_are_rejected() {
        let r: Result<CreateLeaseRequest, _> = serde_json::from_str(r#"{"ttl":"5s","tll":"x"}"#);
        assert!(r.is_err());
    }
}
