//! Fault injection, the way Jepsen tests etcd and ZooKeeper, inside our own suite: a
//! cluster of real `registry-server` processes whose node-to-node traffic passes through
//! one controllable proxy per directed link ([`crate::proxy`]), a nemesis that
//! partitions, delays, kills, pauses and restarts nodes on a seeded schedule
//! ([`nemesis`]), workloads that record every operation's history ([`workloads`]), and
//! the checkers that judge the histories ([`crate::history`], [`crate::linearizable`]).
//!
//! [`run`] does one whole run from a [`RunConfig`] and returns a [`RunReport`]; the test
//! `tests/tests/faults.rs` runs a few seeds, `fault-soak` (see `scripts/soak.sh`) runs
//! many for as long as asked.

pub mod nemesis;
pub mod workloads;

use std::collections::BTreeMap;
use std::fmt::{self, Write as _};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use api_spec::Role;

use crate::history::Anomaly;
use crate::proxy::Links;
use crate::Cluster;

/// Flags every node of a fault run gets. The harness's default timings (election
/// timeout 1 s to 2 s) keep spurious elections away on a loaded 2-core machine; short
/// snapshots make restarts and lagging followers go through snapshot install.
const NODE_FLAGS: &[&str] = &["--snapshot-every", "500"];

/// How long a run waits for the healed cluster to agree on a leader.
const RECOVERY_TIMEOUT: Duration = Duration::from_secs(60);

/// A run's clock: every recorded time is the time since the run started, on the
/// monotonic clock the servers (same machine) use too.
#[derive(Debug, Clone, Copy)]
pub struct RunClock(Instant);

impl RunClock {
    pub fn start() -> RunClock {
        RunClock(Instant::now())
    }

    pub fn now(&self) -> Duration {
        self.0.elapsed()
    }
}

/// A cluster whose node-to-node traffic goes through [`Links`], and the run's log.
#[derive(Debug)]
pub struct FaultCluster {
    pub nodes: Cluster,
    pub links: Links,
    pub clock: RunClock,
    log: Arc<Mutex<Vec<String>>>,
}

impl FaultCluster {
    /// Starts `n` nodes, each reaching every peer through that link's proxy.
    pub async fn start(n: u64, clock: RunClock) -> Result<FaultCluster> {
        FaultCluster::start_with(n, clock, &[]).await
    }

    /// [`FaultCluster::start`], with `extra` flags on every node.
    pub async fn start_with(n: u64, clock: RunClock, extra: &[&str]) -> Result<FaultCluster> {
        let flags: Vec<&str> = NODE_FLAGS.iter().chain(extra).copied().collect();
        let mut attempt = 1;
        loop {
            let ports = crate::free_ports(n)?;
            let addrs: BTreeMap<u64, SocketAddr> = ports
                .iter()
                .map(|(&id, &port)| (id, SocketAddr::from(([127, 0, 0, 1], port))))
                .collect();
            let links = Links::start(&addrs).await?;
            let node_args: BTreeMap<u64, Vec<String>> = ports
                .keys()
                .map(|&id| (id, vec!["--peer-via".to_owned(), links.peer_via_flag(id)]))
                .collect();
            let nodes = Cluster::start_on(&ports, &flags, &node_args).await?;
            if nodes.live_ids().len() as u64 == n {
                return Ok(FaultCluster {
                    nodes,
                    links,
                    clock,
                    log: Arc::default(),
                });
            }
            anyhow::ensure!(attempt < 3, "nodes kept failing to bind their ports");
            attempt += 1;
        }
    }

    /// Adds a line to the run's log (and stderr, which the test runner shows on failure).
    pub fn log(&self, line: String) {
        let line = format!("[{:>8.3}s] {line}", self.clock.now().as_secs_f64());
        eprintln!("{line}");
        self.log.lock().expect("log lock").push(line);
    }

    /// The node the running nodes name as leader, or the lowest running id if none
    /// answers (the fault then hits a follower, which is a fault too); the run's log
    /// says which it was.
    pub async fn current_leader(&self) -> u64 {
        for id in self.nodes.live_ids() {
            if let Ok(Ok(status)) =
                tokio::time::timeout(Duration::from_secs(1), self.nodes.status(id)).await
            {
                if status.role == Role::Leader {
                    self.log(format!("the leader is node {id}"));
                    return id;
                }
            }
        }
        let id = self.nodes.live_ids().first().copied().unwrap_or(1);
        self.log(format!("no node says it leads; taking node {id}"));
        id
    }

    /// Heals every link, resumes and restarts every node, and waits for a leader.
    pub async fn heal_all(&self) -> Result<u64> {
        self.links.heal();
        for id in self.nodes.ids() {
            if self.nodes.is_running(id) {
                self.nodes.resume(id)?;
            } else {
                self.nodes.restart(id).await?;
            }
        }
        self.nodes
            .wait_for_leader(None, RECOVERY_TIMEOUT)
            .await
            .context("the healed cluster did not agree on a leader")
    }
}

/// What one run does.
#[derive(Debug, Clone)]
pub struct RunConfig {
    /// Draws the fault schedule (and the workloads' choices).
    pub seed: u64,
    /// 3 or 5.
    pub nodes: u64,
    /// How long faults are injected; the workloads run that long plus the recovery.
    pub length: Duration,
}

/// What a run did and found.
#[derive(Debug)]
pub struct RunReport {
    pub config: RunConfig,
    pub schedule: Vec<nemesis::Step>,
    pub faults: nemesis::FaultCounts,
    /// Operations recorded, by workload: (ok, failed, unknown).
    pub operations: BTreeMap<&'static str, (usize, usize, usize)>,
    /// Items each checker judged.
    pub checked: BTreeMap<&'static str, usize>,
    pub anomalies: Vec<Anomaly>,
    /// The run's log: faults injected and healed, with times.
    pub log: Vec<String>,
}

impl RunReport {
    pub fn passed(&self) -> bool {
        self.anomalies.is_empty()
    }
}

impl fmt::Display for RunReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.config;
        writeln!(
            f,
            "seed {} ({} nodes, {} s of faults): {}",
            c.seed,
            c.nodes,
            c.length.as_secs(),
            if self.passed() { "PASS" } else { "FAIL" }
        )?;
        writeln!(f, "  faults: {}", self.faults)?;
        let mut ops = String::new();
        for (name, (ok, failed, unknown)) in &self.operations {
            let _ = write!(ops, "{name} {ok} ok/{failed} failed/{unknown} unknown; ");
        }
        writeln!(f, "  operations: {ops}")?;
        let checked: Vec<String> = self
            .checked
            .iter()
            .map(|(k, n)| format!("{k} {n}"))
            .collect();
        writeln!(f, "  checked: {}", checked.join(", "))?;
        for anomaly in &self.anomalies {
            writeln!(f, "  ANOMALY {anomaly}")?;
        }
        if !self.passed() {
            writeln!(
                f,
                "  reproduce with: scripts/soak.sh --seed {} --nodes {} --run-length {}s",
                c.seed,
                c.nodes,
                c.length.as_secs()
            )?;
        }
        Ok(())
    }
}

/// One whole run: start a cluster behind proxies, run every workload while the nemesis
/// injects the seed's schedule, heal, take final reads, and check the histories.
pub async fn run(config: RunConfig) -> Result<RunReport> {
    let clock = RunClock::start();
    let started = std::time::SystemTime::now();
    let schedule = nemesis::schedule(config.seed, config.nodes, config.length);
    let cluster = FaultCluster::start(config.nodes, clock).await?;
    cluster.log(format!(
        "seed {}: {} nodes (run time 0 is {} in the servers' logs), schedule:\n  {}",
        config.seed,
        config.nodes,
        humantime::format_rfc3339_millis(started),
        schedule
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("\n  ")
    ));
    let addrs: Vec<String> = cluster
        .nodes
        .ids()
        .into_iter()
        .map(|id| cluster.nodes.addr(id))
        .collect();
    let load = workloads::Load::start(addrs, clock, config.seed);
    let faults = nemesis::run(&cluster, &schedule).await;
    let healed = cluster.heal_all().await;
    let histories = load.finish(&cluster).await;
    let faults = faults?;
    let leader = healed?;
    cluster.log(format!("healed; node {leader} leads; checking"));
    let histories = histories?;
    let (checked, anomalies) = histories.check();
    if !anomalies.is_empty() || std::env::var_os("FAULT_KEEP_LOGS").is_some() {
        keep_server_logs(&cluster, &config, started);
    }
    let log = cluster.log.lock().expect("log lock").clone();
    Ok(RunReport {
        config,
        schedule,
        faults,
        operations: histories.counts(),
        checked,
        anomalies,
        log,
    })
}

/// Copies the servers' logs of a failed run (or of every run, with `$FAULT_KEEP_LOGS`
/// set) where they outlive it: under
/// `$FAULT_LOG_DIR` if set, else the system's temporary directory, in a folder named
/// after the seed and the run's start. The run's log says where.
fn keep_server_logs(cluster: &FaultCluster, config: &RunConfig, started: std::time::SystemTime) {
    let since_epoch = started
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let root = std::env::var_os("FAULT_LOG_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("registry-fault-logs"));
    let dir = root.join(format!(
        "seed-{}-{}-nodes-{since_epoch}",
        config.seed, config.nodes
    ));
    match cluster.nodes.keep_logs(&dir) {
        Ok(()) => cluster.log(format!("server logs kept in {}", dir.display())),
        Err(e) => cluster.log(format!("server logs not kept: {e:#}")),
    }
}
