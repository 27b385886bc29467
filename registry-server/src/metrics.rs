//! Prometheus metrics (`GET /metrics`), through the `metrics` facade and its Prometheus
//! exporter.
//!
//! Two kinds:
//! - **Events** are recorded where they happen: HTTP requests (a layer over every route),
//!   the proposer's batches and commit latency, the log store's appends and fsyncs,
//!   snapshot builds and installs, lease expiries and keepalives, leader changes.
//! - **State** is read when Prometheus scrapes: Raft's term, role and indexes, the last
//!   contact with each peer (on the leader), counts of leases, instances by status,
//!   services, locks and their waiters, elections, storm protection, the node's limits,
//!   and the process's RSS, open files and threads. Counting instances walks the
//!   catalog once per scrape (tens of milliseconds at a million instances).
//!
//! The recorder is process-wide (the facade has one): a test process running several
//! servers sees their events merged, and the last scrape's state.
//!
//! Names follow Prometheus conventions: a `registry_` prefix, `_total` for counters,
//! `_seconds` and `_bytes` for units; latencies are histograms.

use std::sync::OnceLock;
use std::time::Duration;

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;
use metrics::{counter, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::app::App;

/// Histogram buckets of durations, in seconds: 100 µs to 30 s.
const SECONDS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0,
];

/// Buckets of sizes in bytes: 1 KiB to 4 GiB.
const BYTES: &[f64] = &[
    1024.0,
    16384.0,
    262_144.0,
    1_048_576.0,
    16_777_216.0,
    268_435_456.0,
    1_073_741_824.0,
    4_294_967_296.0,
];

/// Buckets of commands per log entry (the proposer batches up to 1024).
const BATCH: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
];

/// The process's recorder, installed on first use.
fn handle() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        // Buckets are only refused when empty, and these are not.
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS)
            .and_then(|b| b.set_buckets_for_metric(Matcher::Suffix("_bytes".into()), BYTES))
            .and_then(|b| b.set_buckets_for_metric(Matcher::Full(names::BATCH_SIZE.into()), BATCH))
            .unwrap_or_else(|_| PrometheusBuilder::new())
            .build_recorder();
        let handle = recorder.handle();
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!("another metrics recorder is installed: /metrics will be empty");
        }
        handle
    })
}

/// Installs the recorder (so events before the first scrape count) and keeps its
/// histograms compact: the exporter folds recorded samples in on upkeep.
pub fn install() {
    let handle = handle();
    describe();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tick.tick().await;
            handle.run_upkeep();
        }
    });
}

/// The `# HELP` lines.
fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(
        names::HTTP_REQUESTS,
        "HTTP requests answered, by method, route template and status."
    );
    describe_histogram!(names::HTTP_DURATION, Unit::Seconds, "Time to answer an HTTP request, by method and route template (blocking queries not included).");
    describe_histogram!(
        names::BATCH_SIZE,
        "Commands per log entry the proposer wrote (leader)."
    );
    describe_histogram!(
        names::COMMIT_DURATION,
        Unit::Seconds,
        "Time from a batch's proposal to its commit (leader)."
    );
    describe_histogram!(
        names::LOG_APPEND_DURATION,
        Unit::Seconds,
        "Time to append entries to the Raft log, the fsync included."
    );
    describe_histogram!(
        names::LOG_FSYNC_DURATION,
        Unit::Seconds,
        "Time of the synced RocksDB write (WAL fsync) of a log append."
    );
    describe_histogram!(
        names::SNAPSHOT_BUILD_DURATION,
        Unit::Seconds,
        "Time to build a snapshot (encode and write it)."
    );
    describe_histogram!(
        names::SNAPSHOT_INSTALL_DURATION,
        Unit::Seconds,
        "Time to install a snapshot received from the leader."
    );
    describe_histogram!(
        names::SNAPSHOT_SIZE,
        Unit::Bytes,
        "Size of snapshots built and installed."
    );
    describe_counter!(names::LEADER_CHANGES, "Times this node saw a new leader.");
    describe_counter!(
        names::CHECK_PROBES,
        "Active check probes this node ran, by kind and result (passing, critical)."
    );
    describe_histogram!(
        names::CHECK_PROBE_LAG,
        Unit::Seconds,
        "How late a probe started against its schedule (waiting for a concurrency slot included)."
    );
    describe_histogram!(
        names::CHECK_PROBE_DURATION,
        Unit::Seconds,
        "Time a probe took, by kind."
    );
    describe_counter!(
        names::CHECK_TRANSITIONS,
        "Check transitions this node's probes put in the log, by new status."
    );
    describe_counter!(
        names::CHECK_UNCONFIRMED,
        "Critical transitions this node's probes called for that a second server did not confirm."
    );
    describe_gauge!(
        names::CHECKS_OWNED,
        "Active checks this node probes (it owns them by rendezvous hashing over the probers)."
    );
    describe_counter!(names::LEASE_EXPIRIES, "Leases this node expired as leader.");
    describe_counter!(
        names::LEASE_KEEPALIVES,
        "Lease keepalives and instance heartbeats this node served as leader."
    );
    for (name, help) in [
        ("registry_raft_term", "The current Raft term."),
        ("registry_raft_is_leader", "1 if this node is the leader."),
        ("registry_raft_last_log_index", "Index of the last entry in this node's log."),
        ("registry_raft_commit_index", "The commit index as this node knows it."),
        ("registry_raft_applied_index", "Index of the last entry applied here."),
        ("registry_raft_snapshot_index", "Index the last snapshot covers (0: none)."),
        ("registry_raft_members", "Cluster members, learners included."),
        ("registry_raft_snapshot_building", "1 while this node builds a snapshot (encoding a clone of the state beside the applies)."),
        ("registry_rocksdb_memtable_bytes", "Bytes in RocksDB's memtables (bounded by --rocksdb-write-buffer-bytes)."),
        ("registry_rocksdb_block_cache_bytes", "Bytes in RocksDB's block cache (bounded by --rocksdb-block-cache-bytes)."),
        ("registry_interned_strings", "Distinct service names, tags, zones and meta strings and lists the catalog shares."),
        ("registry_raft_peer_last_contact_seconds", "Seconds since the peer last answered this leader's Raft calls (+Inf: never; NaN on followers)."),
        ("registry_expiry_storm_enabled", "1 if expiry storm protection runs (0 with --no-expiry-storm-protection; 0 on followers)."),
        ("registry_expiry_storm_active", "1 if expiry storm protection holds back some service's expiries (leader)."),
        ("registry_expiry_storm_services", "Services whose expiries storm protection holds back (leader)."),
        ("registry_expiry_storm_deferred_leases", "Lease expiries held back since this node started (leader)."),
        ("registry_expiry_storm_held_leases", "Leases whose expiry storm protection holds back now (leader)."),
        ("registry_connections", "Connections open on the client listener."),
        ("registry_peer_connections", "Connections open on the peer listener (--peer-listen)."),
        ("registry_blocking_queries", "Blocking queries waiting on this node."),
        ("registry_parked_waiters", "Lock and election requests waiting in line on this node."),
        ("registry_queued_writes", "Writes queued for the leader's next log entries."),
        ("registry_leases", "Leases alive."),
        ("registry_services", "Services with at least one instance."),
        ("registry_instances", "Registered instances, by status."),
        ("registry_locks_held", "Locks held."),
        ("registry_lock_waiters", "Requests waiting in line for locks."),
        ("registry_elections_led", "Elections with a leader."),
        ("registry_election_waiters", "Candidates waiting in line in elections."),
        ("registry_fencing_token", "The last fencing token granted (each lock or election grant takes the next)."),
        ("registry_process_resident_memory_bytes", "Resident memory of this process."),
        ("registry_process_open_fds", "Open file descriptors of this process."),
        ("registry_process_threads", "Threads of this process."),
    ] {
        describe_gauge!(name, help);
    }
}

/// The metric names, in one place (the Grafana dashboard and the tests use them).
pub mod names {
    pub const HTTP_REQUESTS: &str = "registry_http_requests_total";
    pub const HTTP_DURATION: &str = "registry_http_request_duration_seconds";
    pub const BATCH_SIZE: &str = "registry_raft_proposer_batch_size";
    pub const COMMIT_DURATION: &str = "registry_raft_commit_duration_seconds";
    pub const LOG_APPEND_DURATION: &str = "registry_raft_log_append_duration_seconds";
    pub const LOG_FSYNC_DURATION: &str = "registry_raft_log_fsync_duration_seconds";
    pub const SNAPSHOT_BUILD_DURATION: &str = "registry_raft_snapshot_build_duration_seconds";
    pub const SNAPSHOT_INSTALL_DURATION: &str = "registry_raft_snapshot_install_duration_seconds";
    pub const SNAPSHOT_SIZE: &str = "registry_raft_snapshot_size_bytes";
    pub const LEADER_CHANGES: &str = "registry_raft_leader_changes_total";
    pub const LEASE_EXPIRIES: &str = "registry_lease_expiries_total";
    pub const LEASE_KEEPALIVES: &str = "registry_lease_keepalives_total";
    pub const CHECK_PROBES: &str = "registry_check_probes_total";
    pub const CHECK_PROBE_LAG: &str = "registry_check_probe_lag_seconds";
    pub const CHECK_PROBE_DURATION: &str = "registry_check_probe_duration_seconds";
    pub const CHECK_TRANSITIONS: &str = "registry_check_transitions_total";
    pub const CHECK_UNCONFIRMED: &str = "registry_check_unconfirmed_total";
    pub const CHECKS_OWNED: &str = "registry_checks_owned";
}

/// Records one request: its count by method, route template and status, and (unless it
/// waited on purpose, as a blocking query does) its duration. At debug level, one log
/// line per request.
pub async fn track(request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let method = request.method().as_str().to_owned();
    let blocking = request
        .uri()
        .query()
        .is_some_and(|q| q.split('&').any(|pair| pair.starts_with("index=")));
    let started = tokio::time::Instant::now();
    let response = next.run(request).await;
    let elapsed = started.elapsed();
    let status = response.status().as_u16();
    counter!(names::HTTP_REQUESTS, "method" => method.clone(), "route" => route.clone(), "status" => status.to_string())
        .increment(1);
    if !blocking {
        histogram!(names::HTTP_DURATION, "method" => method.clone(), "route" => route.clone())
            .record(elapsed.as_secs_f64());
    }
    tracing::debug!(
        target: "registry::http",
        method,
        route,
        status,
        ms = elapsed.as_secs_f64() * 1000.0,
        "request"
    );
    response
}

/// One proposer batch committed: its commands and how long the commit took.
pub fn batch_committed(commands: usize, took: Duration) {
    histogram!(names::BATCH_SIZE).record(commands as f64);
    histogram!(names::COMMIT_DURATION).record(took.as_secs_f64());
}

/// One log append: the whole call, and the synced RocksDB write (the WAL fsync) in it.
pub fn log_appended(total: Duration, fsync: Duration) {
    histogram!(names::LOG_APPEND_DURATION).record(total.as_secs_f64());
    histogram!(names::LOG_FSYNC_DURATION).record(fsync.as_secs_f64());
}

/// A snapshot built (`installed == false`) or installed from the leader, and its size.
pub fn snapshot(installed: bool, took: Duration, bytes: usize) {
    let name = if installed {
        names::SNAPSHOT_INSTALL_DURATION
    } else {
        names::SNAPSHOT_BUILD_DURATION
    };
    histogram!(name).record(took.as_secs_f64());
    let kind = if installed { "install" } else { "build" };
    histogram!(names::SNAPSHOT_SIZE, "kind" => kind).record(bytes as f64);
}

/// One probe this node ran: how late it started and how long it took.
pub fn check_probe(kind: &'static str, passing: bool, lag: Duration, took: Duration) {
    let result = if passing { "passing" } else { "critical" };
    counter!(names::CHECK_PROBES, "kind" => kind, "result" => result).increment(1);
    histogram!(names::CHECK_PROBE_LAG).record(lag.as_secs_f64());
    histogram!(names::CHECK_PROBE_DURATION, "kind" => kind).record(took.as_secs_f64());
}

/// Check transitions this node's probes put in the log.
pub fn check_transitions(status: &'static str, n: usize) {
    counter!(names::CHECK_TRANSITIONS, "status" => status).increment(n as u64);
}

/// A critical transition a second server did not confirm.
pub fn check_unconfirmed() {
    counter!(names::CHECK_UNCONFIRMED).increment(1);
}

/// How many checks this node owns now.
pub fn checks_owned(n: usize) {
    gauge!(names::CHECKS_OWNED).set(n as f64);
}

/// Leases this leader expired.
pub fn leases_expired(n: usize) {
    counter!(names::LEASE_EXPIRIES).increment(n as u64);
}

/// A keepalive (or instance heartbeat) this node served.
pub fn keepalive() {
    counter!(names::LEASE_KEEPALIVES).increment(1);
}

/// Counts leader changes this node saw, for as long as the process runs.
///
/// Watches openraft's server metrics (role, vote, leader, membership), which change
/// only when one of those does: its full metrics are sent again at every turn of its
/// core's loop, several times per committed entry, and a task woken by each would cost
/// a wake-up per turn on the commit path for nothing.
pub fn watch_leader_changes(app: &App) {
    let mut metrics = app.raft().server_metrics();
    tokio::spawn(async move {
        let mut leader = metrics.borrow().current_leader;
        while metrics.changed().await.is_ok() {
            let now = metrics.borrow().current_leader;
            if now != leader {
                if now.is_some() {
                    counter!(names::LEADER_CHANGES).increment(1);
                }
                leader = now;
            }
        }
    });
}

/// The exposition: state read now, then every series recorded.
pub fn render(app: &App) -> String {
    record_state(app);
    handle().render()
}

fn record_state(app: &App) {
    let cluster = app.cluster_status();
    let leading = cluster.role == api_spec::Role::Leader;
    gauge!("registry_raft_term").set(cluster.term as f64);
    gauge!("registry_raft_is_leader").set(f64::from(u8::from(leading)));
    gauge!("registry_raft_last_log_index").set(cluster.last_log_index as f64);
    gauge!("registry_raft_commit_index").set(cluster.commit_index as f64);
    gauge!("registry_raft_applied_index").set(cluster.applied_index as f64);
    gauge!("registry_raft_snapshot_index").set(cluster.snapshot_index.unwrap_or(0) as f64);
    gauge!("registry_raft_members").set(cluster.members.len() as f64);
    gauge!("registry_raft_snapshot_building").set(f64::from(u8::from(
        crate::raft::store::state_machine::building(),
    )));
    let (memtables, block_cache) = app.db_memory();
    gauge!("registry_rocksdb_memtable_bytes").set(memtables as f64);
    gauge!("registry_rocksdb_block_cache_bytes").set(block_cache as f64);
    for (peer, since) in app.peer_contacts() {
        let seconds = if leading {
            since.map_or(f64::INFINITY, |s| s.as_secs_f64())
        } else {
            f64::NAN
        };
        gauge!("registry_raft_peer_last_contact_seconds", "peer" => peer.to_string()).set(seconds);
    }
    let storm = cluster.expiry_storm.clone().unwrap_or_default();
    let (storm_services, deferred) = (storm.active, storm.deferred_total);
    gauge!("registry_expiry_storm_enabled").set(f64::from(u8::from(storm.enabled)));
    gauge!("registry_expiry_storm_active").set(f64::from(u8::from(!storm_services.is_empty())));
    gauge!("registry_expiry_storm_services").set(storm_services.len() as f64);
    gauge!("registry_expiry_storm_deferred_leases").set(deferred as f64);
    let holding = if leading { app.storm_holding() } else { 0 };
    gauge!("registry_expiry_storm_held_leases").set(holding as f64);
    let limits = cluster.limits;
    gauge!("registry_connections").set(limits.connections as f64);
    if let Some(peers) = limits.peer_connections {
        gauge!("registry_peer_connections").set(peers as f64);
    }
    gauge!("registry_blocking_queries").set(limits.blocking_queries as f64);
    gauge!("registry_parked_waiters").set(limits.parked_waiters as f64);
    gauge!("registry_queued_writes").set(limits.queued_writes as f64);

    let counts = app.state_counts();
    gauge!("registry_leases").set(counts.leases as f64);
    gauge!("registry_services").set(counts.services as f64);
    for (status, n) in [
        ("passing", counts.passing),
        ("draining", counts.draining),
        ("critical", counts.critical),
    ] {
        gauge!("registry_instances", "status" => status).set(n as f64);
    }
    gauge!("registry_locks_held").set(counts.locks_held as f64);
    gauge!("registry_lock_waiters").set(counts.lock_waiters as f64);
    gauge!("registry_elections_led").set(counts.elections_led as f64);
    gauge!("registry_election_waiters").set(counts.election_waiters as f64);
    gauge!("registry_fencing_token").set(counts.last_token as f64);
    gauge!("registry_interned_strings").set(counts.interned as f64);

    let process = process_stats();
    gauge!("registry_process_resident_memory_bytes").set(process.rss_bytes as f64);
    gauge!("registry_process_open_fds").set(process.open_fds as f64);
    gauge!("registry_process_threads").set(process.threads as f64);
}

/// What `/proc/self` says of this process (zeros where it cannot be read).
#[derive(Debug, Default, Clone, Copy)]
struct ProcessStats {
    rss_bytes: u64,
    open_fds: u64,
    threads: u64,
}

fn process_stats() -> ProcessStats {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    let open_fds = std::fs::read_dir("/proc/self/fd").map_or(0, |dir| dir.count() as u64);
    ProcessStats {
        rss_bytes: field("VmRSS:") * 1024,
        open_fds,
        threads: field("Threads:"),
    }
}

/// Counts of the replicated state, read under one lock.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct StateCounts {
    pub leases: usize,
    pub services: usize,
    pub passing: usize,
    pub draining: usize,
    pub critical: usize,
    pub locks_held: usize,
    pub lock_waiters: usize,
    pub elections_led: usize,
    pub election_waiters: usize,
    pub last_token: u64,
    pub interned: usize,
}

impl StateCounts {
    /// Counts `state`.
    pub fn of(state: &crate::replicated::state::AppState) -> StateCounts {
        use api_spec::InstanceStatus;
        let mut counts = StateCounts {
            leases: state.coordinator.lease_count(),
            last_token: state.coordinator.last_token(),
            ..StateCounts::default()
        };
        // Kept as instances change: a scrape of a million instances reads three numbers
        // rather than holding the state's read lock for a walk over all of them.
        counts.services = state.catalog.service_count();
        counts.passing = state.catalog.status_count(InstanceStatus::Passing);
        counts.draining = state.catalog.status_count(InstanceStatus::Draining);
        counts.critical = state.catalog.status_count(InstanceStatus::Critical);
        counts.interned = state.catalog.interned();
        for (_, lock) in state.coordinator.locks(locks::Kind::Lock) {
            counts.locks_held += usize::from(lock.holder.is_some());
            counts.lock_waiters += lock.waiters.len();
        }
        for (_, election) in state.coordinator.locks(locks::Kind::Election) {
            counts.elections_led += usize::from(election.holder.is_some());
            counts.election_waiters += election.waiters.len();
        }
        counts
    }
}
