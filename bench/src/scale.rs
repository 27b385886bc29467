//! Scale benchmarks (`bench --scale`, `scripts/bench.sh --scale`): a registry cluster
//! filled with many instances (a million by default) and one holding many parked
//! blocking queries, measured step by step ([`crate::scale_filled`] runs A to F):
//!
//! - A: an empty cluster's resolve and heartbeat latency, and the leader's RSS;
//! - B: filling it (registrations/s, RSS per instance, RocksDB and snapshot sizes);
//! - C: write latency while snapshots are being built, against the rest of the time;
//! - D: A's latencies again, at size;
//! - E: a follower's restart (SIGTERM, start, caught up again);
//! - F: a new server catching up through a snapshot install;
//! - G: parked blocking queries: their memory, the fan-out of one change
//!   ([`crate::scale_watch`]);
//! - H: stale reads spread over voters and learners ([`crate::scale_learners`]).
//!
//! A to F share one cluster, G and H have their own (`--scale-only` picks among the
//! three). Each step prints progress lines to stderr; a step's failure is kept in its row
//! and the later steps that do not need it still run. This module holds what the steps
//! share: the report and its table, and small helpers. Not part of any test suite: a
//! full run takes many minutes.

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use serde::Serialize;
use serde_json::Value;
use tokio::time::Instant;

use crate::load::{self, Measurement};
use crate::report::TargetCheck;

/// Nodes of every cluster the suite starts.
pub const NODES: usize = 3;
/// Instances per service in the fill (step B).
pub const PER_SERVICE: usize = 10;
/// Warm-up and measured window of each latency measurement.
pub const LATENCY_WARMUP: Duration = Duration::from_secs(1);
pub const LATENCY_WINDOW: Duration = Duration::from_secs(5);
/// The longest TTL: nothing expires during the run.
pub const TTL: &str = "24h";
/// Open files the suite wants besides one per parked blocking query.
const NOFILE_MARGIN: u64 = 20_000;

/// The parts of the suite, each on a cluster of its own (`--scale-only`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum ScalePart {
    /// Steps A to F: the filled cluster.
    Filled,
    /// Step G: parked blocking queries.
    Watchers,
    /// Step H: reads over learners.
    Learners,
}

/// What the scale suite runs with (the `--scale-*` flags).
#[derive(Debug, Clone, Serialize)]
pub struct ScaleConfig {
    /// Instances registered in step B.
    pub instances: usize,
    /// Blocking queries parked in step G.
    pub watchers: usize,
    /// Of those, the ones watching the service that changes.
    pub hot_watchers: usize,
    /// Step G's watchers as HTTP/2 streams, this many per connection; 0: HTTP/1.1, a
    /// connection each.
    pub watch_streams: usize,
    /// `--snapshot-every` of steps A to F's cluster.
    pub snapshot_every: u64,
    /// The parts to run (all when empty).
    pub parts: Vec<ScalePart>,
}

impl ScaleConfig {
    /// Whether `part` runs.
    pub fn wants(&self, part: ScalePart) -> bool {
        self.parts.is_empty() || self.parts.contains(&part)
    }
}

/// Progress lines on stderr, each with the time since the suite started.
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    started: Instant,
}

impl Progress {
    /// A clock starting now.
    pub fn start() -> Progress {
        Progress {
            started: Instant::now(),
        }
    }

    /// Prints `[elapsed] step: message` to stderr.
    pub fn say(&self, step: &str, message: impl std::fmt::Display) {
        eprintln!(
            "[{:>7.1}s] {step}: {message}",
            self.started.elapsed().as_secs_f64()
        );
    }

    /// Time since the suite started.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }
}

/// One line of the table: what was measured and what came out.
#[derive(Debug, Clone, Serialize)]
pub struct Line {
    pub measurement: String,
    pub result: String,
}

/// One step's outcome.
#[derive(Debug, Clone, Serialize)]
pub struct StepReport {
    /// "A" to "H".
    pub step: String,
    pub title: String,
    /// How long the step took.
    pub seconds: f64,
    pub lines: Vec<Line>,
    /// Every figure of the step, by name (for the JSON).
    #[serde(skip_serializing_if = "Value::is_null")]
    pub details: Value,
    /// Why the step could not finish, if it could not (its lines hold what it measured
    /// before).
    pub failure: Option<String>,
}

/// The whole suite's outcome (the `scale` member of the JSON report).
#[derive(Debug, Clone, Serialize)]
pub struct ScaleReport {
    pub config: ScaleConfig,
    /// How long the whole suite took.
    pub seconds: f64,
    pub steps: Vec<StepReport>,
    /// The targets the steps check.
    pub targets: Vec<TargetCheck>,
}

impl ScaleReport {
    /// `true` when no step failed.
    pub fn ok(&self) -> bool {
        self.steps.iter().all(|s| s.failure.is_none())
    }

    /// The table printed at the end.
    pub fn text(&self) -> String {
        let c = &self.config;
        let mut out = format!(
            "\nscale: {} instances, {} watchers ({} hot), --snapshot-every {}; {}-node clusters on this machine; {:.0} s in all\n",
            c.instances, c.watchers, c.hot_watchers, c.snapshot_every, NODES, self.seconds
        );
        let width = self
            .steps
            .iter()
            .flat_map(|s| s.lines.iter().map(|l| l.measurement.chars().count()))
            .max()
            .unwrap_or(0)
            .max("measurement".len());
        let _ = writeln!(out, "step  {:<width$}  result", "measurement");
        let _ = writeln!(out, "{}", "-".repeat(width + 16));
        for step in &self.steps {
            let _ = writeln!(
                out,
                "{:<4}  {} ({:.0} s)",
                step.step, step.title, step.seconds
            );
            for line in &step.lines {
                let _ = writeln!(out, "      {:<width$}  {}", line.measurement, line.result);
            }
            if let Some(failure) = &step.failure {
                let _ = writeln!(out, "      {:<width$}  FAILED: {failure}", "");
            }
        }
        out
    }
}

/// What a step measured: its lines, its figures for the JSON, the targets it checks,
/// and why it stopped early if it did (keeping what it measured before).
#[derive(Debug, Default)]
pub struct StepOutput {
    pub lines: Vec<Line>,
    pub details: Value,
    pub targets: Vec<TargetCheck>,
    pub failure: Option<String>,
}

impl StepOutput {
    /// Records why the step stopped, keeping its lines.
    pub fn fail(&mut self, error: &anyhow::Error) {
        self.failure = Some(format!("{error:#}"));
    }

    /// Adds a line to the table.
    pub fn line(&mut self, measurement: impl Into<String>, result: impl Into<String>) {
        self.lines.push(Line {
            measurement: measurement.into(),
            result: result.into(),
        });
    }

    /// Adds a figure to the details.
    pub fn detail(&mut self, name: &str, value: impl Serialize) {
        if !self.details.is_object() {
            self.details = Value::Object(serde_json::Map::new());
        }
        if let Value::Object(map) = &mut self.details {
            map.insert(
                name.to_owned(),
                serde_json::to_value(value).unwrap_or(Value::Null),
            );
        }
    }
}

impl ScaleReport {
    /// Records a finished step (printing its outcome).
    pub(crate) fn push(
        &mut self,
        progress: Progress,
        step: &str,
        title: &str,
        started: Instant,
        outcome: Result<StepOutput>,
    ) {
        let seconds = started.elapsed().as_secs_f64();
        let (output, failure) = match outcome {
            Ok(mut output) => {
                let failure = output.failure.take();
                (output, failure)
            }
            Err(e) => (StepOutput::default(), Some(format!("{e:#}"))),
        };
        match &failure {
            None => progress.say(step, format!("done in {seconds:.1} s")),
            Some(f) => progress.say(step, format!("FAILED after {seconds:.1} s: {f}")),
        }
        for line in &output.lines {
            progress.say(step, format!("{}: {}", line.measurement, line.result));
        }
        self.targets.extend(output.targets);
        self.steps.push(StepReport {
            step: step.to_owned(),
            title: title.to_owned(),
            seconds,
            lines: output.lines,
            details: output.details,
            failure,
        });
    }
}

// ---------------------------------------------------------------------------------------
// Helpers shared by the steps

/// A client for one worker (one kept-alive HTTP/1.1 connection).
pub fn client(timeout: Duration) -> Result<reqwest::Client> {
    load::worker_client(timeout)
}

/// Sends a request; a non-2xx status is an error naming it and the start of the body.
pub async fn ok_body(request: reqwest::RequestBuilder) -> Result<Vec<u8>> {
    let response = request.send().await?;
    let status = response.status();
    let body = response.bytes().await?;
    ensure!(
        status.is_success(),
        "{status}: {}",
        String::from_utf8_lossy(&body)
            .chars()
            .take(200)
            .collect::<String>()
    );
    Ok(body.to_vec())
}

/// [`ok_body`] parsed as JSON.
pub async fn ok_json(request: reqwest::RequestBuilder) -> Result<Value> {
    let body = ok_body(request).await?;
    serde_json::from_slice(&body).context("answer is not JSON")
}

/// What `GET /v1/cluster` says, the fields the suite uses.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Status {
    pub node_id: u64,
    pub role: String,
    pub leader: Option<u64>,
    pub term: u64,
    pub last_log_index: u64,
    pub commit_index: u64,
    pub applied_index: u64,
    pub snapshot_index: Option<u64>,
    pub purged_index: Option<u64>,
    /// Blocking queries parked on the node (`limits.blocking_queries`).
    pub blocking_queries: u64,
    /// The members as the node knows them: (id, voter).
    pub members: Vec<(u64, bool)>,
}

/// `GET {url}/v1/cluster`.
pub async fn status(http: &reqwest::Client, url: &str) -> Result<Status> {
    let v = ok_json(http.get(format!("{url}/v1/cluster"))).await?;
    let n = |key: &str| v[key].as_u64();
    Ok(Status {
        node_id: n("node_id").unwrap_or(0),
        role: v["role"].as_str().unwrap_or("").to_owned(),
        leader: n("leader"),
        term: n("term").unwrap_or(0),
        last_log_index: n("last_log_index").unwrap_or(0),
        commit_index: n("commit_index").unwrap_or(0),
        applied_index: n("applied_index").unwrap_or(0),
        snapshot_index: n("snapshot_index"),
        purged_index: n("purged_index"),
        blocking_queries: v["limits"]["blocking_queries"].as_u64().unwrap_or(0),
        members: v["members"]
            .as_array()
            .map(|members| {
                members
                    .iter()
                    .filter_map(|m| Some((m["id"].as_u64()?, m["voter"].as_bool()?)))
                    .collect()
            })
            .unwrap_or_default(),
    })
}

/// A Prometheus exposition: every series with its labels and value.
#[derive(Debug, Clone, Default)]
pub struct Metrics {
    series: Vec<(String, String, f64)>,
}

impl Metrics {
    /// Parses the text format (comments skipped; unparsable lines ignored).
    pub fn parse(text: &str) -> Metrics {
        let mut series = Vec::new();
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let Some((key, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let Ok(value) = value.trim().parse::<f64>() else {
                continue;
            };
            let (name, labels) = match key.split_once('{') {
                Some((name, labels)) => (name, labels.trim_end_matches('}')),
                None => (key, ""),
            };
            series.push((name.to_owned(), labels.to_owned(), value));
        }
        Metrics { series }
    }

    /// The sum of every series named `name` whose labels contain `label` (all of them
    /// with `None`); `None` when there is no such series (the server does not export it).
    pub fn sum(&self, name: &str, label: Option<&str>) -> Option<f64> {
        let mut found = None;
        for (n, labels, value) in &self.series {
            if n == name && label.is_none_or(|l| labels.contains(l)) {
                *found.get_or_insert(0.0) += value;
            }
        }
        found
    }

    /// A histogram's (count, sum), if exported.
    pub fn histogram(&self, name: &str, label: Option<&str>) -> Option<(f64, f64)> {
        Some((
            self.sum(&format!("{name}_count"), label)?,
            self.sum(&format!("{name}_sum"), label)?,
        ))
    }
}

/// `GET {url}/metrics`, parsed.
pub async fn metrics(http: &reqwest::Client, url: &str) -> Result<Metrics> {
    let body = ok_body(http.get(format!("{url}/metrics"))).await?;
    Ok(Metrics::parse(&String::from_utf8_lossy(&body)))
}

/// Value at quantile `q` of sorted `values` (nearest rank; 0 when empty).
pub fn pick(sorted: &[u64], q: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// p50, p99 and max of some latencies (µs), with their count.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Quantiles {
    pub count: usize,
    pub p50_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
}

impl Quantiles {
    /// Of `values` (sorted here).
    pub fn of(mut values: Vec<u64>) -> Quantiles {
        values.sort_unstable();
        Quantiles {
            count: values.len(),
            p50_us: pick(&values, 0.50),
            p99_us: pick(&values, 0.99),
            max_us: pick(&values, 1.0),
        }
    }

    /// "p50 1.20 ms, p99 3.40 ms, max 9.00 ms (12345 samples)".
    pub fn text(&self) -> String {
        format!(
            "p50 {}, p99 {}, max {} ({} samples)",
            ms(self.p50_us),
            ms(self.p99_us),
            ms(self.max_us),
            self.count
        )
    }
}

/// Microseconds as "1.23 ms".
pub fn ms(us: u64) -> String {
    format!("{:.2} ms", us as f64 / 1e3)
}

/// KiB as "12.3 MiB".
pub fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

/// Bytes as MiB, or "n/a".
pub fn mib_or_na(bytes: Option<f64>) -> String {
    bytes.map_or("n/a".to_owned(), |b| format!("{:.1} MiB", b / 1048576.0))
}

/// Microseconds of a duration.
pub fn us(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// A load run as one table cell.
pub fn measurement_text(m: &Measurement) -> String {
    let mut text = format!(
        "{:.0} ops/s, p50 {}, p99 {}, max {}, {} errors",
        m.ops_per_sec,
        ms(m.p50_us),
        ms(m.p99_us),
        ms(m.max_us),
        m.errors
    );
    if let Some((message, count)) = m.error_samples.iter().next() {
        let _ = write!(text, " (e.g. {count}x {message})");
    }
    text
}

/// A small, fast random number generator (xorshift64*) for picking instances.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// Seeded by `seed` (any value).
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    /// A number below `n` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n.max(1) as u64) as usize
    }
}

/// Raises this process's open-file limit to at least `wanted`, its hard limit too where
/// it may (root may, up to `/proc/sys/fs/nr_open`): the servers it starts inherit it (and
/// raise their own soft limit to it). Returns the soft limit now in effect.
pub fn raise_nofile(wanted: u64) -> Result<u64> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).context("getrlimit NOFILE")?;
    if soft >= wanted {
        return Ok(soft);
    }
    let nr_open: u64 = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(hard);
    let target = wanted.min(nr_open);
    if target > hard && setrlimit(Resource::RLIMIT_NOFILE, target, target).is_ok() {
        return Ok(target);
    }
    let soft = target.min(hard).max(soft);
    setrlimit(Resource::RLIMIT_NOFILE, soft, hard).context("setrlimit NOFILE")?;
    Ok(soft)
}

// ---------------------------------------------------------------------------------------
// The suite

/// Runs the whole suite with `bin` and returns its report (never fails: each step's
/// failure is in its row).
pub async fn run(bin: &Path, config: &ScaleConfig) -> ScaleReport {
    let progress = Progress::start();
    let mut report = ScaleReport {
        config: config.clone(),
        seconds: 0.0,
        steps: Vec::new(),
        targets: Vec::new(),
    };
    let wanted = config.watchers as u64 + NOFILE_MARGIN;
    let nofile = match raise_nofile(wanted) {
        Ok(n) => {
            progress.say("setup", format!("open-file limit {n} (wanted {wanted})"));
            n
        }
        Err(e) => {
            progress.say("setup", format!("cannot raise the open-file limit: {e:#}"));
            0
        }
    };

    if config.wants(ScalePart::Filled) {
        Box::pin(crate::scale_filled::run(bin, config, progress, &mut report)).await;
    }

    if config.wants(ScalePart::Watchers) {
        let started = Instant::now();
        progress.say("G", "parked blocking queries on a fresh cluster");
        let outcome = Box::pin(crate::scale_watch::run(bin, config, nofile, progress)).await;
        report.push(
            progress,
            "G",
            "parked blocking queries: memory and the fan-out of a change",
            started,
            outcome,
        );
    }

    if config.wants(ScalePart::Learners) {
        let started = Instant::now();
        progress.say(
            "H",
            "stale reads over voters and learners on a fresh cluster",
        );
        let outcome = Box::pin(crate::scale_learners::run(bin, progress)).await;
        report.push(
            progress,
            "H",
            "read scaling with learners (resolve ?stale, 64 workers spread over every node)",
            started,
            outcome,
        );
    }

    report.seconds = progress.elapsed().as_secs_f64();
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_sums_series_and_reads_histograms() {
        let text = "# HELP x y\n\
            registry_instances{status=\"passing\"} 7\n\
            registry_instances{status=\"critical\"} 3\n\
            registry_raft_snapshot_size_bytes_count{kind=\"build\"} 2\n\
            registry_raft_snapshot_size_bytes_sum{kind=\"build\"} 300\n\
            registry_raft_snapshot_size_bytes_count{kind=\"install\"} 1\n\
            registry_raft_snapshot_size_bytes_sum{kind=\"install\"} 100\n\
            registry_raft_term 4\n";
        let m = Metrics::parse(text);
        assert_eq!(m.sum("registry_instances", None), Some(10.0));
        assert_eq!(m.sum("registry_raft_term", None), Some(4.0));
        assert_eq!(m.sum("registry_rocksdb_memtable_bytes", None), None);
        assert_eq!(
            m.histogram("registry_raft_snapshot_size_bytes", Some("kind=\"build\"")),
            Some((2.0, 300.0))
        );
        assert_eq!(
            m.histogram("registry_raft_snapshot_size_bytes", None),
            Some((3.0, 400.0))
        );
    }

    #[test]
    fn quantiles_pick_nearest_rank() {
        let q = Quantiles::of((1..=100).rev().collect());
        assert_eq!((q.count, q.p50_us, q.p99_us, q.max_us), (100, 50, 99, 100));
        let empty = Quantiles::of(Vec::new());
        assert_eq!((empty.count, empty.p99_us), (0, 0));
    }

    #[test]
    fn rng_stays_below_its_bound() {
        let mut rng = Rng::new(7);
        assert!((0..10_000).all(|_| rng.below(13) < 13));
    }
}
