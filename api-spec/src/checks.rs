//! Active health checks on the wire: what a registration's `checks` say
//! ([`CheckDefinition`]) and how the instance view shows them ([`CheckInfo`]).
//!
//! A check is run by the cluster, not by the instance: one server probes it on a schedule
//! (HTTP, TCP or the gRPC health protocol) and only its transitions, passing to critical
//! and back, are written to the log.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Most checks on one instance.
pub const MAX_CHECKS: usize = 8;
/// Shortest `interval`.
pub const MIN_CHECK_INTERVAL: Duration = Duration::from_secs(1);
/// Longest `interval`.
pub const MAX_CHECK_INTERVAL: Duration = Duration::from_secs(60 * 60);
/// `interval` when the check gives none.
pub const DEFAULT_CHECK_INTERVAL: Duration = Duration::from_secs(10);
/// Shortest `timeout`.
pub const MIN_CHECK_TIMEOUT: Duration = Duration::from_millis(10);
/// Longest `timeout`.
pub const MAX_CHECK_TIMEOUT: Duration = Duration::from_secs(60);
/// `timeout` when the check gives none: this or the interval, whichever is smaller.
pub const DEFAULT_CHECK_TIMEOUT: Duration = Duration::from_secs(5);
/// `failures_before_critical` when the check gives none (Kubernetes' `failureThreshold`).
pub const DEFAULT_FAILURES_BEFORE_CRITICAL: u32 = 3;
/// `successes_before_passing` when the check gives none (Kubernetes' `successThreshold`).
pub const DEFAULT_SUCCESSES_BEFORE_PASSING: u32 = 1;
/// Largest `failures_before_critical` or `successes_before_passing`.
pub const MAX_THRESHOLD: u32 = 100;
/// Longest HTTP URL.
pub const MAX_CHECK_URL_LEN: usize = 2048;
/// Most HTTP header names on one check.
pub const MAX_CHECK_HEADERS: usize = 16;
/// Longest header value.
pub const MAX_CHECK_HEADER_VALUE_LEN: usize = 1024;
/// A check's `output` (the last probe's answer or error) is cut to this many bytes.
pub const MAX_CHECK_OUTPUT: usize = 256;
/// HTTP methods a check may use.
pub const CHECK_METHODS: [&str; 5] = ["GET", "HEAD", "POST", "PUT", "OPTIONS"];
/// `deregister_after` of an instance that has checks and no lease, when it gives none:
/// such an instance cannot re-register itself after an outage, so it waits longer.
pub const DEFAULT_CHECKED_DEREGISTER_AFTER: Duration = Duration::from_secs(72 * 60 * 60);

/// One active check of a registration. Exactly one of `http`, `tcp` and `grpc` says what
/// it probes; the target's host must be the instance's own `address` unless the token
/// registering it has `cluster:write` with ACLs on.
#[derive(utoipa::ToSchema, Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckDefinition {
    /// Unique among the instance's checks: a name, like service names.
    pub name: String,
    /// An `http://` or `https://` URL. The check passes when the answer's status is
    /// `expect_status`; redirects are not followed and at most 4 KiB of the body is read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<String>,
    /// The HTTP method (default `GET`): `GET`, `HEAD`, `POST`, `PUT` or `OPTIONS`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// Request headers of an HTTP check, each name with its values.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub header: BTreeMap<String, Vec<String>>,
    /// The answer an HTTP check expects: a class such as `"2xx"` (the default) or one
    /// code such as `"204"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expect_status: Option<String>,
    /// `host:port` of a TCP check, which passes when a connection opens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp: Option<String>,
    /// `host:port` of a gRPC server answering the standard `grpc.health.v1.Health/Check`
    /// (plaintext HTTP/2); it passes when the answer is `SERVING`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc: Option<String>,
    /// The service name sent in the gRPC health request (default `""`: the server as a
    /// whole).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc_service: Option<String>,
    /// Time between probes, `"1s"` to `"1h"` (default `"10s"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<String>,
    /// How long one probe may take, `"10ms"` to `"1m"` (default: the smaller of `"5s"` and
    /// the interval). A probe still running when the next is due makes that one skip.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    /// Consecutive failed probes that turn a passing check critical, 1 to 100 (default 3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failures_before_critical: Option<u32>,
    /// Consecutive passed probes that turn a critical check passing, 1 to 100 (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub successes_before_passing: Option<u32>,
}

/// A check's status.
#[derive(utoipa::ToSchema, Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckStatus {
    Passing,
    /// Failing, or not probed yet (a new check starts critical until its first probe).
    Critical,
}

impl CheckStatus {
    /// The name it has on the wire (and in Consul's answers and the metrics' labels).
    pub fn as_str(self) -> &'static str {
        match self {
            CheckStatus::Passing => "passing",
            CheckStatus::Critical => "critical",
        }
    }
}

/// What a probe looks at.
#[derive(utoipa::ToSchema, Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckKind {
    Http,
    Tcp,
    Grpc,
}

impl CheckKind {
    /// The name it has on the wire (and as Consul's check `Type` and a metric label).
    pub fn as_str(self) -> &'static str {
        match self {
            CheckKind::Http => "http",
            CheckKind::Tcp => "tcp",
            CheckKind::Grpc => "grpc",
        }
    }
}

/// One check as the instance view shows it.
#[derive(utoipa::ToSchema, Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckInfo {
    pub name: String,
    pub kind: CheckKind,
    /// The URL or `host:port` it probes.
    pub target: String,
    pub interval: String,
    pub interval_ms: u64,
    pub timeout_ms: u64,
    pub failures_before_critical: u32,
    pub successes_before_passing: u32,
    pub status: CheckStatus,
    /// What the probe that made the last transition saw, at most 256 bytes.
    pub output: String,
    /// When the status last changed (leader's wall clock, ms since the epoch).
    pub changed_at_ms: u64,
    /// The server that probes it now (its node id), if any server is up to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<u64>,
}
