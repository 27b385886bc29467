//! `bench`: starts a registry cluster, runs every workload against it, stops it, does the
//! same with an etcd cluster, then prints the table and writes the JSON results. With
//! `--scale`, runs the scale suite (`bench::scale`) instead.

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use anyhow::{bail, Context, Result};
use clap::Parser;

use bench::extras;
use bench::load::LoadConfig;
use bench::report::{self, Meta, Report, Row, SideResult};
use bench::scale::{ScaleConfig, ScalePart};
use bench::systems::{self, Etcd, Registry, Side};
use bench::workloads::{self, Target, Workload};

#[derive(Debug, Parser)]
#[command(name = "bench", about)]
struct Args {
    /// The registry-server executable (a release build).
    #[arg(
        long,
        value_name = "PATH",
        default_value = "target/release/registry-server"
    )]
    server_bin: PathBuf,
    /// The etcd executable.
    #[arg(long, value_name = "PATH", default_value = "etcd")]
    etcd_bin: PathBuf,
    /// Write the results as JSON here.
    #[arg(long, value_name = "PATH")]
    json: Option<PathBuf>,
    /// Short runs (2 s measured after 0.5 s of warm-up, 10,000 instances for memory):
    /// about two minutes in all.
    #[arg(long)]
    quick: bool,
    /// Measured seconds per run (default 10, or 2 with --quick).
    #[arg(long, value_name = "SECS")]
    duration: Option<f64>,
    /// Warm-up seconds per run, not counted (default 2, or 0.5 with --quick).
    #[arg(long, value_name = "SECS")]
    warmup: Option<f64>,
    /// Run only these workloads (repeat the flag for several).
    #[arg(long, value_name = "WORKLOAD")]
    only: Vec<Workload>,
    /// Run only these other measurements (repeat the flag for several). With neither
    /// `--only` nor `--extra` everything runs; with either, only what they name.
    #[arg(long, value_name = "MEASUREMENT")]
    extra: Vec<Extra>,
    /// Members per cluster.
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// Spread workers over all members instead of sending everything to the leader.
    #[arg(long)]
    spread: bool,
    /// Run the scale suite instead of the workloads: a 3-node registry filled with
    /// `--scale-instances` instances (fill rate, RSS, snapshot stalls, latency at size,
    /// restart and catch-up times), `--scale-watchers` parked blocking queries, and stale
    /// reads over learners. Takes many minutes; etcd is not run.
    #[arg(long, conflicts_with_all = ["only", "extra", "quick", "duration", "warmup", "nodes", "spread"])]
    scale: bool,
    /// Instances the scale suite registers.
    #[arg(
        long,
        value_name = "N",
        default_value_t = 1_000_000,
        requires = "scale"
    )]
    scale_instances: usize,
    /// Blocking queries the scale suite parks.
    #[arg(long, value_name = "N", default_value_t = 100_000, requires = "scale")]
    scale_watchers: usize,
    /// Of those, the ones watching the service that changes.
    #[arg(long, value_name = "N", default_value_t = 10_000, requires = "scale")]
    scale_hot_watchers: usize,
    /// Park the watchers as HTTP/2 streams, N per connection (at most the server's 1000),
    /// instead of one HTTP/1.1 connection each: 100,000 then fit the open-file limit.
    #[arg(long, value_name = "N", default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=1000), requires = "scale")]
    scale_watch_streams: u64,
    /// `--snapshot-every` of the scale suite's filled cluster: low enough that snapshots
    /// are built several times during its 30 s snapshot window.
    #[arg(long, value_name = "N", default_value_t = 2000, requires = "scale")]
    scale_snapshot_every: u64,
    /// Run only these parts of the scale suite (repeat the flag for several): `filled`
    /// (steps A to F), `watchers` (G), `learners` (H).
    #[arg(long, value_name = "PART", requires = "scale")]
    scale_only: Vec<ScalePart>,
}

/// The measurements besides the throughput workloads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Extra {
    /// The machine's HTTP+JSON ceiling (trivial axum endpoint, 64 workers) and fsync rate.
    Ceilings,
    /// 1,000 watchers of one service woken by one change.
    WatchFanout,
    /// SIGKILL of the leader under 16 writers: time to recover, acknowledged writes lost.
    Failover,
    /// Leader RSS per registered instance (a fresh cluster).
    Memory,
    /// heartbeat-64 and resolve-linearizable-64 on a registry with ACLs off and one with
    /// ACLs on (a scoped token on every request), alternating, five rounds each.
    AclOverhead,
    /// heartbeat-64 and resolve-linearizable-64 on a registry over plain HTTP and one
    /// serving TLS, alternating, five rounds each.
    TlsOverhead,
    /// 10,000 active checks (half HTTP, half TCP, against targets this process serves)
    /// at a 10 s interval: CPU per server, probe lag, Raft writes in steady state.
    Checks,
}

/// Checks in the active-checks measurement, and their interval.
const CHECKS: usize = 10_000;
const CHECK_INTERVAL_S: u64 = 10;
/// Rounds of the ACL and TLS overhead measurements (each runs both clusters).
const OVERHEAD_ROUNDS: usize = 5;
/// Watchers in the fan-out measurement.
const WATCHERS: usize = 1000;
/// Writers in the failover measurement.
const FAILOVER_WRITERS: usize = 16;
/// Workers filling the memory measurement's cluster.
const FILL_WORKERS: usize = 64;

impl Args {
    fn wants(&self, extra: Extra) -> bool {
        (self.only.is_empty() && self.extra.is_empty()) || self.extra.contains(&extra)
    }

    fn instances(&self) -> usize {
        if self.quick {
            10_000
        } else {
            100_000
        }
    }
}

/// Rows of the other measurements (present if selected).
struct Extras {
    fanout: Option<Row>,
    failover: Option<Row>,
    memory: Option<Row>,
}

fn side_of(row: &mut Row, side: Side) -> &mut SideResult {
    match side {
        Side::Registry => &mut row.registry,
        Side::Etcd => &mut row.etcd,
    }
}

/// Stores an outcome (figure, details, summary) or its failure in `row`'s `side`.
fn record<T: serde::Serialize>(
    row: &mut Row,
    side: Side,
    operation: &str,
    outcome: Result<T>,
    value: impl Fn(&T) -> f64,
    summary: impl Fn(&T) -> String,
) {
    let result = side_of(row, side);
    result.operation = operation.to_owned();
    match outcome {
        Ok(t) => {
            eprintln!("{}", summary(&t));
            result.value = Some(value(&t));
            result.summary = Some(summary(&t));
            result.details = serde_json::to_value(&t).ok();
        }
        Err(e) => {
            eprintln!("failed: {e:#}");
            result.failure = Some(format!("{e:#}"));
        }
    }
}

/// Resolves a bare program name on PATH (so the versions and errors name a real file).
fn on_path(program: &std::path::Path) -> Result<PathBuf> {
    if program.components().count() > 1 {
        return Ok(program.to_owned());
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
        .with_context(|| format!("{} not found on PATH", program.display()))
}

fn read_trimmed(path: &str) -> String {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

fn cpu_model() -> String {
    read_trimmed("/proc/cpuinfo")
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|rest| rest.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_default()
}

fn git_commit() -> String {
    std::process::Command::new("git")
        .args(["describe", "--always", "--dirty"])
        .output()
        .ok()
        .filter(|out| out.status.success())
        .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_owned())
        .unwrap_or_default()
}

/// Every (workload, concurrency) to run, in order.
fn plan(args: &Args) -> Vec<(Workload, usize)> {
    Workload::ALL
        .into_iter()
        .filter(|w| (args.only.is_empty() && args.extra.is_empty()) || args.only.contains(w))
        .flat_map(|w| w.concurrencies().iter().map(move |&c| (w, c)))
        .collect()
}

/// Runs the whole plan against one side's cluster, filling in that side of `rows`.
async fn run_side(
    side: Side,
    args: &Args,
    bins: (&PathBuf, &PathBuf),
    base: LoadConfig,
    rows: &mut [Row],
    plan: &[(Workload, usize)],
    extras: &mut Extras,
) -> Result<()> {
    eprintln!("starting a {}-node {} cluster", args.nodes, side.name());
    // Both kinds of cluster stop their processes when dropped, at the end of this function.
    let (mut registry, mut etcd) = (None, None);
    let (urls, leader) = match side {
        Side::Registry => {
            let mut cluster = Registry::start(bins.0, args.nodes).await?;
            let leader = cluster.wait_for_leader(None).await?;
            eprintln!("  logs in {}", cluster.dir().display());
            let urls = cluster.urls().to_vec();
            registry = Some(cluster);
            (urls, leader)
        }
        Side::Etcd => {
            let mut cluster = Etcd::start(bins.1, args.nodes).await?;
            let leader = cluster.wait_for_leader(None).await?;
            eprintln!("  logs in {}", cluster.dir().display());
            let urls = cluster.urls().to_vec();
            etcd = Some(cluster);
            (urls, leader)
        }
    };
    let target = Target {
        side,
        urls,
        leader,
        spread: args.spread,
        token: None,
        ca_pem: None,
    };
    for (row, &(workload, concurrency)) in rows.iter_mut().zip(plan) {
        let config = LoadConfig {
            concurrency,
            ..base
        };
        eprint!(
            "  {} c{concurrency} on {} ... ",
            workload.name(),
            side.name()
        );
        let result = match side {
            Side::Registry => &mut row.registry,
            Side::Etcd => &mut row.etcd,
        };
        result.operation = workload.operation(side).to_owned();
        match workloads::run(workload, &target, config).await {
            Ok(m) => {
                eprintln!("{:.0} ops/s, {} errors", m.ops_per_sec, m.errors);
                result.measurement = Some(m);
            }
            Err(e) => {
                eprintln!("failed: {e:#}");
                result.failure = Some(format!("{e:#}"));
            }
        }
        // A cluster that died takes the rest of this side with it: say so, then stop.
        let alive = match (&mut registry, &mut etcd) {
            (Some(c), _) => c.wait_for_leader(None).await.map(drop),
            (_, Some(c)) => c.wait_for_leader(None).await.map(drop),
            _ => Ok(()),
        };
        if let Err(e) = alive {
            bail!("the {} cluster broke down: {e:#}", side.name());
        }
    }
    if let Some(row) = &mut extras.fanout {
        eprint!(
            "  watch fan-out ({WATCHERS} watchers) on {} ... ",
            side.name()
        );
        let outcome = extras::watch_fanout(side, &target.urls, leader, args.spread, WATCHERS).await;
        let operation = match side {
            Side::Registry => {
                "GET /v1/services/{s}?index=N&wait=60s per watcher; change: PUT an instance"
            }
            Side::Etcd => {
                "POST /v3/watch {create_request: prefix} streaming per watcher; change: /v3/kv/put"
            }
        };
        record(
            row,
            side,
            operation,
            outcome,
            |f| f.p99_us as f64 / 1e3,
            extras::Fanout::summary,
        );
    }
    if let Some(row) = &mut extras.failover {
        eprint!(
            "  failover ({FAILOVER_WRITERS} writers) on {} ... ",
            side.name()
        );
        let (before, after) = if args.quick {
            (Duration::from_secs(2), Duration::from_secs(2))
        } else {
            (Duration::from_secs(5), Duration::from_secs(5))
        };
        let outcome = match (&mut registry, &mut etcd) {
            (Some(c), _) => {
                extras::failover(
                    side,
                    c,
                    &target.urls,
                    leader,
                    args.spread,
                    FAILOVER_WRITERS,
                    before,
                    after,
                )
                .await
            }
            (_, Some(c)) => {
                extras::failover(
                    side,
                    c,
                    &target.urls,
                    leader,
                    args.spread,
                    FAILOVER_WRITERS,
                    before,
                    after,
                )
                .await
            }
            _ => unreachable!("one cluster runs"),
        };
        let operation = match side {
            Side::Registry => "PUT /v1/services/bench-failover/instances/{w-seq} (retried on the next member on failure); read back with ?status=any",
            Side::Etcd => "POST /v3/kv/put {bench-failover/w-seq} (retried on the next member on failure); read back with /v3/kv/range",
        };
        record(
            row,
            side,
            operation,
            outcome,
            |f| f.recover_ms,
            extras::Failover::summary,
        );
    }
    eprintln!("stopping the {} cluster", side.name());
    drop((registry, etcd));
    if let Some(row) = &mut extras.memory {
        let count = args.instances();
        eprint!(
            "  memory ({count} instances) on a fresh {} cluster ... ",
            side.name()
        );
        let outcome = async {
            match side {
                Side::Registry => {
                    let mut c = Registry::start(bins.0, args.nodes).await?;
                    let leader = c.wait_for_leader(None).await?;
                    let pid = c.pid(leader).context("leader pid")?;
                    extras::memory(side, &c.urls()[leader], pid, count, FILL_WORKERS).await
                }
                Side::Etcd => {
                    let mut c = Etcd::start(bins.1, args.nodes).await?;
                    let leader = c.wait_for_leader(None).await?;
                    let pid = c.pid(leader).context("leader pid")?;
                    extras::memory(side, &c.urls()[leader], pid, count, FILL_WORKERS).await
                }
            }
        }
        .await;
        let (operation, what) = match side {
            Side::Registry => ("PUT /v1/services/{s}/instances/{id} {ttl: 1h} (100 services) through the leader", "instances"),
            Side::Etcd => ("POST /v3/lease/grant {TTL 3600} + /v3/kv/put {key, lease} per key through the leader", "keys with a lease each"),
        };
        record(
            row,
            side,
            operation,
            outcome,
            |m| m.bytes_per_instance,
            |m| m.summary(what),
        );
    }
    Ok(())
}

/// One HTTP+JSON ceiling row: the load generator at 64 workers against `path` of the
/// in-process axum server.
async fn http_ceiling(base: LoadConfig, workload: &str, path: &str, what: &str) -> Row {
    let mut row = Row::of_kind(workload, 64, "ceiling", "ops/s");
    eprint!("ceiling: axum {path}, 64 workers ... ");
    let mut machine = SideResult {
        operation: format!("GET {path} -> {what} (axum, in-process, own runtime)"),
        ..SideResult::default()
    };
    match extras::axum_ceiling(
        LoadConfig {
            concurrency: 64,
            ..base
        },
        path,
    )
    .await
    {
        Ok(m) => {
            eprintln!("{:.0} ops/s", m.ops_per_sec);
            machine.value = Some(m.ops_per_sec);
            machine.measurement = Some(m);
        }
        Err(e) => {
            eprintln!("failed: {e:#}");
            machine.failure = Some(format!("{e:#}"));
        }
    }
    row.machine = Some(machine);
    row
}

/// The machine's ceilings: HTTP+JSON with a trivial axum endpoint (and one answering a
/// resolve-sized body), and fsyncs/s.
async fn ceilings(base: LoadConfig) -> (Row, Row, Row) {
    let http = http_ceiling(base, "axum-ceiling", "/ping", "small JSON").await;
    let service = http_ceiling(
        base,
        "axum-ceiling-service",
        "/service",
        "a 10-instance service's JSON (~3.3 KB)",
    )
    .await;
    let mut disk = Row::of_kind("fsync", 1, "ceiling", "fsyncs/s");
    eprint!("ceiling: 4 KiB append + fsync, one thread ... ");
    let mut machine = SideResult {
        operation: "write 4 KiB + File::sync_data in a loop, in the temp dir".to_owned(),
        ..SideResult::default()
    };
    let duration = base.duration.min(Duration::from_secs(3));
    match tokio::task::spawn_blocking(move || extras::fsync_rate(duration)).await {
        Ok(Ok(f)) => {
            let summary = format!(
                "{:.0} fsyncs/s ({} in {:.1} s; p50 {:.2} ms, p99 {:.2} ms) in {}",
                f.per_sec,
                f.fsyncs,
                f.seconds,
                f.p50_us as f64 / 1e3,
                f.p99_us as f64 / 1e3,
                f.dir
            );
            eprintln!("{summary}");
            machine.value = Some(f.per_sec);
            machine.summary = Some(summary);
            machine.details = serde_json::to_value(&f).ok();
        }
        Ok(Err(e)) => machine.failure = Some(format!("{e:#}")),
        Err(e) => machine.failure = Some(format!("{e}")),
    }
    disk.machine = Some(machine);
    (http, service, disk)
}

/// The scale suite (`--scale`): its table and targets, and the JSON.
async fn scale(args: Args) -> Result<bool> {
    let server_bin = on_path(&args.server_bin)?;
    let config = ScaleConfig {
        instances: args.scale_instances,
        watchers: args.scale_watchers,
        hot_watchers: args.scale_hot_watchers.min(args.scale_watchers),
        watch_streams: usize::try_from(args.scale_watch_streams).unwrap_or(1000),
        snapshot_every: args.scale_snapshot_every,
        parts: args.scale_only.clone(),
    };
    anyhow::ensure!(
        config.instances >= bench::scale::PER_SERVICE,
        "--scale-instances must be at least {}",
        bench::scale::PER_SERVICE
    );
    let date = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
    let report = bench::scale::run(&server_bin, &config).await;
    print!("{}", report.text());
    print!("{}", report::targets_text(&report.targets));
    let ok = report.ok();
    if let Some(path) = &args.json {
        let meta = Meta {
            date,
            hostname: read_trimmed("/proc/sys/kernel/hostname"),
            cpu_model: cpu_model(),
            cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
            kernel: read_trimmed("/proc/sys/kernel/osrelease"),
            registry_version: systems::version_of(&server_bin),
            git_commit: git_commit(),
            etcd_version: "not run (--scale)".to_owned(),
            nodes: bench::scale::NODES,
            warmup_s: bench::scale::LATENCY_WARMUP.as_secs_f64(),
            duration_s: bench::scale::LATENCY_WINDOW.as_secs_f64(),
            quick: false,
            target: "leader (latency, fill, snapshot window); spread (watchers, stale reads)"
                .to_owned(),
            note: "the scale suite: clusters and load generator share this machine, one cluster at a time".to_owned(),
            etcd_api: "not run (--scale)".to_owned(),
        };
        let json = Report {
            meta,
            results: Vec::new(),
            targets: report.targets.clone(),
            overheads: Vec::new(),
            scale: Some(report),
        };
        std::fs::write(path, serde_json::to_string_pretty(&json)? + "\n")
            .with_context(|| format!("write {}", path.display()))?;
        eprintln!("results written to {}", path.display());
    }
    Ok(ok)
}

async fn bench(args: Args) -> Result<bool> {
    if args.scale {
        return Box::pin(scale(args)).await;
    }
    let server_bin = on_path(&args.server_bin)?;
    let etcd_bin = on_path(&args.etcd_bin)?;
    let (warmup, duration) = match args.quick {
        true => (args.warmup.unwrap_or(0.5), args.duration.unwrap_or(2.0)),
        false => (args.warmup.unwrap_or(2.0), args.duration.unwrap_or(10.0)),
    };
    let base = LoadConfig {
        concurrency: 1,
        warmup: Duration::from_secs_f64(warmup),
        duration: Duration::from_secs_f64(duration),
        op_timeout: Duration::from_secs(30),
    };
    let meta = Meta {
        date: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
        hostname: read_trimmed("/proc/sys/kernel/hostname"),
        cpu_model: cpu_model(),
        cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
        kernel: read_trimmed("/proc/sys/kernel/osrelease"),
        registry_version: systems::version_of(&server_bin),
        git_commit: git_commit(),
        etcd_version: systems::version_of(&etcd_bin),
        nodes: args.nodes,
        warmup_s: warmup,
        duration_s: duration,
        quick: args.quick,
        target: if args.spread { "spread" } else { "leader" }.to_owned(),
        note: "clusters and load generator share this machine; registry first, then etcd, never both at once".to_owned(),
        etcd_api: "etcd is driven through its v3 JSON grpc-gateway on the client port: an extra in-process hop (HTTP/JSON -> gRPC) the registry's REST API does not have".to_owned(),
    };
    let plan = plan(&args);
    let mut rows: Vec<Row> = plan.iter().map(|(w, c)| Row::new(w.name(), *c)).collect();
    let mut ceiling_rows = Vec::new();
    if args.wants(Extra::Ceilings) {
        let (http, service, disk) = ceilings(base).await;
        ceiling_rows = vec![http, service, disk];
    }
    let mut extras = Extras {
        fanout: args
            .wants(Extra::WatchFanout)
            .then(|| Row::of_kind("watch-fanout", WATCHERS, "watch-fanout", "ms")),
        failover: args
            .wants(Extra::Failover)
            .then(|| Row::of_kind("failover", FAILOVER_WRITERS, "failover", "ms")),
        memory: args
            .wants(Extra::Memory)
            .then(|| Row::of_kind("memory", FILL_WORKERS, "memory", "bytes/instance")),
    };
    let mut ok = true;
    let mut overheads = Vec::new();
    if args.wants(Extra::AclOverhead) {
        eprintln!("ACL overhead: a registry with ACLs off and one with ACLs on, side by side");
        match extras::acl_overhead(&server_bin, args.nodes, base, OVERHEAD_ROUNDS).await {
            Ok(overhead) => overheads.push(overhead),
            Err(e) => {
                eprintln!("ACL overhead failed: {e:#}");
                ok = false;
            }
        }
    }
    if args.wants(Extra::TlsOverhead) {
        eprintln!("TLS overhead: a registry over plain HTTP and one serving TLS, side by side");
        match extras::tls_overhead(&server_bin, args.nodes, base, OVERHEAD_ROUNDS).await {
            Ok(overhead) => overheads.push(overhead),
            Err(e) => {
                eprintln!("TLS overhead failed: {e:#}");
                ok = false;
            }
        }
    }
    let mut check_report = None;
    if args.extra.contains(&Extra::Checks) {
        eprintln!("Active checks at scale: {CHECKS} checks every {CHECK_INTERVAL_S} s");
        let window = Duration::from_secs(3 * CHECK_INTERVAL_S);
        match bench::checks::checks_at_scale(
            &server_bin,
            args.nodes,
            CHECKS,
            CHECK_INTERVAL_S,
            window,
        )
        .await
        {
            Ok(report) => check_report = Some(report),
            Err(e) => {
                eprintln!("active checks at scale failed: {e:#}");
                ok = false;
            }
        }
    }
    for side in [Side::Registry, Side::Etcd] {
        if let Err(e) = Box::pin(run_side(
            side,
            &args,
            (&server_bin, &etcd_bin),
            base,
            &mut rows,
            &plan,
            &mut extras,
        ))
        .await
        {
            eprintln!("{} side stopped: {e:#}", side.name());
            ok = false;
        }
    }
    rows.extend(ceiling_rows);
    rows.extend(
        [extras.fanout, extras.failover, extras.memory]
            .into_iter()
            .flatten(),
    );
    for row in &mut rows {
        row.finish();
        ok &= row.registry.failure.is_none() && row.etcd.failure.is_none();
        ok &= row.machine.as_ref().is_none_or(|m| m.failure.is_none());
    }
    report::annotate_ceilings(&mut rows);
    let mut targets = report::check_targets(&rows);
    for overhead in &overheads {
        targets.extend(overhead.targets());
    }
    print!("{}", report::table(&rows));
    for overhead in &overheads {
        print!("{}", overhead.text());
    }
    if let Some(report) = &check_report {
        print!("{}", report.text());
    }
    print!("{}", report::targets_text(&targets));
    if let Some(path) = &args.json {
        let report = Report {
            meta,
            results: rows,
            targets,
            overheads,
            scale: None,
        };
        std::fs::write(path, serde_json::to_string_pretty(&report)? + "\n")
            .with_context(|| format!("write {}", path.display()))?;
        eprintln!("results written to {}", path.display());
    }
    Ok(ok)
}

fn main() -> std::process::ExitCode {
    // The benchmark's futures are large: run it on a thread with a generous stack.
    let thread = std::thread::Builder::new()
        .name("bench".to_owned())
        .stack_size(64 << 20)
        .spawn(|| {
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .thread_stack_size(16 << 20)
                .build()
                .map(|runtime| runtime.block_on(run()))
        });
    match thread.map(std::thread::JoinHandle::join) {
        Ok(Ok(Ok(code))) => code,
        _ => {
            eprintln!("bench: could not start or finish its runtime thread");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run() -> std::process::ExitCode {
    let args = Args::parse();
    // On Ctrl-C the benchmark future is dropped, and with it the clusters: their
    // processes are stopped and their directories removed.
    let outcome = tokio::select! {
        outcome = Box::pin(bench(args)) => outcome,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
    };
    match outcome {
        Ok(true) => std::process::ExitCode::SUCCESS,
        Ok(false) => std::process::ExitCode::FAILURE,
        Err(e) => {
            eprintln!("bench: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
