//! `fault-soak`: runs fault-injection schedules (see `tests::faults`) one after another
//! for as long as asked, each from a fresh random seed (or one given seed), and stops at
//! the first run whose histories show an anomaly, printing the seed that reproduces it.
//! `scripts/soak.sh` builds and runs it.

use std::time::{Duration, Instant};

use anyhow::Result;
use clap::Parser;
use tests::faults::{self, RunConfig};

/// Soak the registry in faults: partitions, one-way loss, delays, SIGKILL, SIGSTOP and
/// whole-cluster restarts, with every history checked.
#[derive(Debug, Parser)]
#[command(name = "fault-soak")]
struct Args {
    /// Keep starting runs until this much time has passed (e.g. 30m, 2h).
    #[arg(long, default_value = "30m", value_parser = parse_duration)]
    duration: Duration,
    /// Length of each run's fault schedule.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    run_length: Duration,
    /// Cluster size: 3 or 5. Default: alternate between them.
    #[arg(long, value_parser = clap::value_parser!(u64).range(3..=5))]
    nodes: Option<u64>,
    /// Run only this seed (once): reproduces a failing run.
    #[arg(long)]
    seed: Option<u64>,
}

/// Waits for SIGINT or SIGTERM; names it.
async fn interrupted() -> &'static str {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = int.recv() => "interrupted",
        _ = term.recv() => "terminated",
    }
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    api_spec::parse_duration(text).map_err(|e| e.to_string())
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let started = Instant::now();
    let mut runs = 0u64;
    loop {
        let seed = args.seed.unwrap_or_else(rand::random);
        let nodes = args
            .nodes
            .unwrap_or(if runs.is_multiple_of(2) { 3 } else { 5 });
        let run = faults::run(RunConfig {
            seed,
            nodes,
            length: args.run_length,
        });
        // On Ctrl-C or SIGTERM the run is dropped, which kills its servers and removes
        // their directories; exiting straight away would leave them running.
        let report = tokio::select! {
            report = run => Some(report?),
            signal = interrupted() => {
                eprintln!("{signal}: stopping after {runs} complete runs");
                None
            }
        };
        let Some(report) = report else {
            std::process::exit(130);
        };
        runs += 1;
        println!("run {runs}: {report}");
        if !report.passed() {
            println!(
                "FAILED: reproduce with `scripts/soak.sh --seed {seed} --nodes {nodes} --run-length {}`",
                api_spec::format_duration(args.run_length)
            );
            std::process::exit(1);
        }
        if args.seed.is_some() || started.elapsed() >= args.duration {
            break;
        }
    }
    println!(
        "soak passed: {runs} runs in {} s, no anomaly",
        started.elapsed().as_secs()
    );
    Ok(())
}
