//! `bench`: starts a registry cluster, runs every workload against it, stops it, does the
//! same with an etcd cluster, then prints the table and writes the JSON results.

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use anyhow::{bail, Context, Result};
use clap::Parser;

use bench::load::LoadConfig;
use bench::report::{self, Meta, Report, Row};
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
    /// Short runs (3 s measured after 1 s of warm-up): about two minutes in all.
    #[arg(long)]
    quick: bool,
    /// Measured seconds per run (default 10, or 3 with --quick).
    #[arg(long, value_name = "SECS")]
    duration: Option<f64>,
    /// Warm-up seconds per run, not counted (default 2, or 1 with --quick).
    #[arg(long, value_name = "SECS")]
    warmup: Option<f64>,
    /// Run only these workloads (repeat the flag for several).
    #[arg(long, value_name = "WORKLOAD")]
    only: Vec<Workload>,
    /// Members per cluster.
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// Spread workers over all members instead of sending everything to the leader.
    #[arg(long)]
    spread: bool,
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
        .filter(|w| args.only.is_empty() || args.only.contains(w))
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
    eprintln!("stopping the {} cluster", side.name());
    Ok(())
}

async fn bench(args: Args) -> Result<bool> {
    let server_bin = on_path(&args.server_bin)?;
    let etcd_bin = on_path(&args.etcd_bin)?;
    let (warmup, duration) = match args.quick {
        true => (args.warmup.unwrap_or(1.0), args.duration.unwrap_or(3.0)),
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
    };
    let plan = plan(&args);
    let mut rows: Vec<Row> = plan.iter().map(|(w, c)| Row::new(w.name(), *c)).collect();
    let mut ok = true;
    for side in [Side::Registry, Side::Etcd] {
        if let Err(e) = run_side(
            side,
            &args,
            (&server_bin, &etcd_bin),
            base,
            &mut rows,
            &plan,
        )
        .await
        {
            eprintln!("{} side stopped: {e:#}", side.name());
            ok = false;
        }
    }
    for row in &mut rows {
        row.finish();
        ok &= row.registry.failure.is_none() && row.etcd.failure.is_none();
    }
    print!("{}", report::table(&rows));
    if let Some(path) = &args.json {
        let report = Report {
            meta,
            results: rows,
        };
        std::fs::write(path, serde_json::to_string_pretty(&report)? + "\n")
            .with_context(|| format!("write {}", path.display()))?;
        eprintln!("results written to {}", path.display());
    }
    Ok(ok)
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    // On Ctrl-C the benchmark future is dropped, and with it the clusters: their
    // processes are stopped and their directories removed.
    let outcome = tokio::select! {
        outcome = bench(args) => outcome,
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
