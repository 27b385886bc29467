//! Steps A to F of the scale suite ([`crate::scale`]), on one 3-node cluster started
//! with a low `--snapshot-every`: the empty baseline (A), the fill (B), write latency
//! while snapshots are built (C), latency at size (D), a follower's restart (E), and a
//! new server catching up through a snapshot install (F).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use serde::Serialize;
use serde_json::{json, Value};
use tokio::time::Instant;

use crate::extras::rss_kib;
use crate::load::{self, LoadConfig, Measurement};
use crate::report::TargetCheck;
use crate::scale::{
    client, measurement_text, metrics, mib, mib_or_na, ms, ok_body, ok_json, status, us, Progress,
    Quantiles, Rng, ScaleConfig, ScaleReport, Status, StepOutput, LATENCY_WARMUP, LATENCY_WINDOW,
    NODES, PER_SERVICE, TTL,
};
use crate::systems::Registry;

/// Workers registering the fill.
const FILL_WORKERS: usize = 256;
/// Workers of the latency measurements (steps A and D) and of the snapshot window (C).
const LATENCY_WORKERS: usize = 16;
/// The service steps A and D resolve, and its size.
const BASE_SERVICE: &str = "scale-base";
const BASE_INSTANCES: usize = 10;
/// The service whose instances steps A and D heartbeat (one per worker).
const HEARTBEAT_SERVICE: &str = "scale-hb";
/// Leases granted in step A (so the state holds some).
const BASE_LEASES: usize = 4;
/// How long the snapshot window of step C lasts.
const SNAPSHOT_WINDOW: Duration = Duration::from_secs(30);
/// How often step C polls each node for a new snapshot.
const SNAPSHOT_POLL: Duration = Duration::from_millis(20);
/// Builds wanted in step C's window (on the leader) for its figures to mean something.
const WANTED_BUILDS: usize = 3;
/// Longest a restarted or joining server may take to catch up (steps E and F).
const CATCH_UP_LIMIT: Duration = Duration::from_secs(900);
/// How long a SIGTERMed server may take to exit before it is killed (step E).
const EXIT_GRACE: Duration = Duration::from_secs(120);
/// Attempts of one fill registration (503 and 429 answers and transport errors are
/// retried after a short backoff).
const MAX_ATTEMPTS: u32 = 20;
/// Zones the fill spreads instances over.
const ZONES: [&str; 3] = ["zone-a", "zone-b", "zone-c"];

/// Polls `node`'s status every 100 ms until `done` says yes, for at most `limit`; the
/// time of its first answer and the status that was enough.
async fn wait_status(
    http: &reqwest::Client,
    url: &str,
    limit: Duration,
    mut done: impl FnMut(&Status) -> bool,
) -> Result<(Option<Duration>, Duration, Status)> {
    let started = Instant::now();
    let mut first_answer = None;
    loop {
        let last_error = match status(http, url).await {
            Ok(s) => {
                first_answer.get_or_insert(started.elapsed());
                if done(&s) {
                    return Ok((first_answer, started.elapsed(), s));
                }
                format!("last status: {}", serde_json::to_string(&s)?)
            }
            Err(e) => format!("{e:#}"),
        };
        if started.elapsed() > limit {
            bail!("not there after {limit:?} ({last_error})");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// ---------------------------------------------------------------------------------------
// The instances of the fill (step B; step C re-registers them)

/// The path of fill instance `i`: service `svc-NNNNNN` (`PER_SERVICE` instances each),
/// id `i-K`.
pub fn instance_path(i: usize) -> String {
    format!(
        "/v1/services/svc-{:06}/instances/i-{}",
        i / PER_SERVICE,
        i % PER_SERVICE
    )
}

/// The registration of fill instance `i`: a loopback address of its service's own, a
/// port of its own in the service, two tags and one meta pair shared by all, a zone, the
/// longest TTL.
pub fn instance_body(i: usize) -> Value {
    let service = i / PER_SERVICE + 1;
    let k = i % PER_SERVICE;
    json!({
        "address": format!(
            "127.{}.{}.{}",
            (service >> 16) & 0xff,
            (service >> 8) & 0xff,
            service & 0xff
        ),
        "port": 20_000 + k,
        "tags": ["v1", "primary"],
        "meta": {"version": "1.4.2"},
        "zone": ZONES[k % ZONES.len()],
        "ttl": TTL,
    })
}

/// Retries and failures of writes retried on 503/429 and transport errors.
#[derive(Debug, Clone, Default, Serialize)]
pub struct WriteTally {
    /// Successful writes.
    pub ok: u64,
    /// Attempts that were answered 503 or 429, or failed in transport, and were retried.
    pub retries: u64,
    /// Writes given up on (a 4xx other than 429, or `MAX_ATTEMPTS` attempts).
    pub failures: u64,
    /// A few distinct error messages with their counts.
    pub samples: BTreeMap<String, u64>,
}

impl WriteTally {
    fn note(&mut self, message: String) {
        if let Some(n) = self.samples.get_mut(&message) {
            *n += 1;
        } else if self.samples.len() < 5 {
            self.samples.insert(message, 1);
        }
    }

    fn merge(&mut self, other: WriteTally) {
        self.ok += other.ok;
        self.retries += other.retries;
        self.failures += other.failures;
        for (message, count) in other.samples {
            for _ in 0..count {
                self.note(message.clone());
            }
        }
    }

    /// "12 retried (503/429 or transport), 0 failed (e.g. ...)".
    pub fn text(&self) -> String {
        let mut text = format!(
            "{} retried (503/429 or transport), {} failed",
            self.retries, self.failures
        );
        if let Some((message, count)) = self.samples.iter().next() {
            let _ = write!(text, " (e.g. {count}x {message})");
        }
        text
    }
}

/// PUTs `body` at `url`, retrying 503, 429 and transport errors with a short backoff.
pub async fn put_retrying(
    http: &reqwest::Client,
    url: &str,
    body: &Value,
    tally: &mut WriteTally,
) -> bool {
    for attempt in 0..MAX_ATTEMPTS {
        let outcome = http.put(url).json(body).send().await;
        let retry = match outcome {
            Ok(response) => {
                let status = response.status();
                let text = response.bytes().await.unwrap_or_default();
                if status.is_success() {
                    tally.ok += 1;
                    return true;
                }
                let message = format!(
                    "{status}: {}",
                    String::from_utf8_lossy(&text)
                        .chars()
                        .take(160)
                        .collect::<String>()
                );
                tally.note(message);
                status.as_u16() == 503 || status.as_u16() == 429
            }
            Err(e) => {
                tally.note(format!("{e}"));
                true
            }
        };
        if !retry {
            break;
        }
        tally.retries += 1;
        let backoff = Duration::from_millis((20 * u64::from(attempt + 1)).min(500));
        tokio::time::sleep(backoff).await;
    }
    tally.failures += 1;
    false
}

/// What the fill measured.
#[derive(Debug, Clone, Serialize)]
pub struct Fill {
    pub instances: usize,
    pub workers: usize,
    pub seconds: f64,
    pub per_sec: f64,
    pub tally: WriteTally,
}

/// Registers fill instances `0..count` through `url` with `workers` workers, printing
/// progress every 5 s.
pub async fn fill(url: &str, count: usize, workers: usize, progress: Progress) -> Result<Fill> {
    let next = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..workers {
        let (url, next, done) = (url.to_owned(), Arc::clone(&next), Arc::clone(&done));
        tasks.spawn(async move {
            let http = client(Duration::from_secs(30))?;
            let mut tally = WriteTally::default();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= count {
                    break;
                }
                let target = format!("{url}{}", instance_path(i));
                put_retrying(&http, &target, &instance_body(i), &mut tally).await;
                done.fetch_add(1, Ordering::Relaxed);
            }
            anyhow::Ok(tally)
        });
    }
    let ticker = {
        let done = Arc::clone(&done);
        tokio::spawn(async move {
            let mut last = 0;
            loop {
                tokio::time::sleep(Duration::from_secs(5)).await;
                let now = done.load(Ordering::Relaxed);
                progress.say(
                    "B",
                    format!(
                        "{now}/{count} registered ({:.0}/s over the last 5 s)",
                        (now - last) as f64 / 5.0
                    ),
                );
                last = now;
            }
        })
    };
    let mut tally = WriteTally::default();
    let mut failure = None;
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(Ok(t)) => tally.merge(t),
            Ok(Err(e)) => failure = Some(e),
            Err(e) => failure = Some(anyhow::anyhow!("a fill worker panicked: {e}")),
        }
    }
    ticker.abort();
    if let Some(e) = failure {
        return Err(e);
    }
    let seconds = started.elapsed().as_secs_f64();
    Ok(Fill {
        instances: count,
        workers,
        seconds,
        per_sec: tally.ok as f64 / seconds,
        tally,
    })
}

// ---------------------------------------------------------------------------------------
// The steps

/// Steps A to F's cluster and what the steps pass on to each other.
#[derive(Debug)]
struct Main {
    cluster: Registry,
    http: reqwest::Client,
    progress: Progress,
    /// Step A's latencies, for D.
    baseline: Option<Latency>,
    /// The leader's RSS in step A, for B.
    empty_rss_kib: Option<u64>,
    /// Fill instances registered by B (0 before).
    filled: usize,
}

/// The titles of steps A to F.
const MAIN_STEPS: [(&str, &str); 6] = [
    (
        "A",
        "empty baseline: resolve and heartbeat latency, leader RSS",
    ),
    (
        "B",
        "fill: register the instances (10 a service, 2 tags, 1 meta pair, a zone, ttl 24h)",
    ),
    (
        "C",
        "write latency while snapshots are built (16 workers re-registering)",
    ),
    ("D", "resolve and heartbeat latency at size"),
    ("E", "follower restart: SIGTERM, start, caught up"),
    ("F", "a new server catching up through a snapshot install"),
];

/// Runs steps A to F on one cluster of `bin`, into `report`.
pub async fn run(bin: &Path, config: &ScaleConfig, progress: Progress, report: &mut ScaleReport) {
    let started = Instant::now();
    progress.say(
        "A",
        format!(
            "starting a {NODES}-node cluster (--snapshot-every {})",
            config.snapshot_every
        ),
    );
    let every = config.snapshot_every.to_string();
    let cluster = match Registry::start_with(bin, NODES, &["--snapshot-every", &every]).await {
        Ok(cluster) => cluster,
        Err(e) => {
            let message = format!("the cluster did not start: {e:#}");
            for (step, title) in MAIN_STEPS {
                report.push(
                    progress,
                    step,
                    title,
                    started,
                    Err(anyhow::anyhow!("{message}")),
                );
            }
            return;
        }
    };
    progress.say("A", format!("logs in {}", cluster.dir().display()));
    let http = match client(Duration::from_secs(60)) {
        Ok(http) => http,
        Err(e) => {
            report.push(progress, "A", MAIN_STEPS[0].1, started, Err(e));
            return;
        }
    };
    let mut main = Main {
        cluster,
        http,
        progress,
        baseline: None,
        empty_rss_kib: None,
        filled: 0,
    };
    for (step, title) in MAIN_STEPS {
        let started = Instant::now();
        progress.say(step, title);
        let outcome = match step {
            "A" => Box::pin(step_a(&mut main)).await,
            "B" => Box::pin(step_b(&mut main, config)).await,
            "C" => Box::pin(step_c(&mut main)).await,
            "D" => Box::pin(step_d(&mut main)).await,
            "E" => Box::pin(step_e(&mut main)).await,
            _ => Box::pin(step_f(&mut main)).await,
        };
        report.push(progress, step, title, started, outcome);
    }
    progress.say("F", "stopping steps A to F's cluster");
    drop(main);
}

impl Main {
    /// The leader's index and URL (waiting until every running node agrees on one).
    async fn leader(&mut self) -> Result<(usize, String)> {
        let leader = self.cluster.wait_for_leader(None).await?;
        Ok((leader, self.cluster.urls()[leader].clone()))
    }

    fn rss(&self, index: usize) -> Result<u64> {
        let pid = self
            .cluster
            .pid(index)
            .with_context(|| format!("node {} is not running", index + 1))?;
        rss_kib(pid)
    }
}

/// Waits (at most [`BUILD_WAIT`]) until no node reports a snapshot build under way; says
/// how long that took, or that it gave up.
async fn wait_for_no_build(http: &reqwest::Client, urls: &[String]) -> String {
    let started = Instant::now();
    loop {
        let mut building = 0;
        for url in urls {
            if let Ok(metrics) = metrics(http, url).await {
                building += metrics
                    .sum("registry_raft_snapshot_building", None)
                    .unwrap_or(0.0) as usize;
            }
        }
        let waited = started.elapsed();
        if building == 0 {
            return format!("{:.1} s", waited.as_secs_f64());
        }
        if waited >= BUILD_WAIT {
            return format!(
                "gave up after {:.0} s: {building} node(s) still building",
                waited.as_secs_f64()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The longest step D waits for snapshot builds to end.
const BUILD_WAIT: Duration = Duration::from_secs(30);

/// Steps A and D's measurements.
#[derive(Debug, Clone, Serialize)]
struct Latency {
    resolve: Measurement,
    heartbeat: Measurement,
}

/// Registers the service steps A and D resolve, the instances they heartbeat (a TTL
/// each) and a few leases.
async fn prepare_baseline(http: &reqwest::Client, url: &str) -> Result<()> {
    for i in 0..BASE_INSTANCES {
        ok_body(
            http.put(format!("{url}/v1/services/{BASE_SERVICE}/instances/i-{i}"))
                .json(&json!({
                    "address": "127.0.0.1", "port": 9000 + i, "tags": ["v1", "primary"],
                    "meta": {"version": "1.4.2"}, "zone": ZONES[i % ZONES.len()], "ttl": TTL,
                })),
        )
        .await
        .context("register the resolved service")?;
    }
    for w in 0..LATENCY_WORKERS {
        ok_body(
            http.put(format!(
                "{url}/v1/services/{HEARTBEAT_SERVICE}/instances/hb-{w}"
            ))
            .json(&json!({"address": "127.0.0.1", "port": 9100 + w, "ttl": TTL})),
        )
        .await
        .context("register the heartbeated instances")?;
    }
    for _ in 0..BASE_LEASES {
        ok_body(
            http.post(format!("{url}/v1/leases"))
                .json(&json!({"ttl": TTL})),
        )
        .await
        .context("grant a lease")?;
    }
    Ok(())
}

/// Resolve (linearizable) and heartbeat through `url`, 16 workers, one after the other.
async fn latency(url: &str) -> Result<Latency> {
    let config = LoadConfig {
        concurrency: LATENCY_WORKERS,
        warmup: LATENCY_WARMUP,
        duration: LATENCY_WINDOW,
        op_timeout: Duration::from_secs(30),
    };
    let resolve_url = format!("{url}/v1/services/{BASE_SERVICE}");
    let resolve = load::run(
        config,
        |_| {
            let url = resolve_url.clone();
            async move { Ok((client(config.op_timeout)?, url)) }
        },
        |w: Arc<(reqwest::Client, String)>, _| async move {
            let answer = ok_json(w.0.get(&w.1)).await?;
            let n = answer["instances"].as_array().map_or(0, Vec::len);
            ensure!(
                n == BASE_INSTANCES,
                "resolved {n} instances, not {BASE_INSTANCES}"
            );
            Ok(())
        },
    )
    .await
    .context("resolve")?;
    let heartbeat = load::run(
        config,
        |i| {
            let url = format!("{url}/v1/services/{HEARTBEAT_SERVICE}/instances/hb-{i}/heartbeat");
            async move { Ok((client(config.op_timeout)?, url)) }
        },
        |w: Arc<(reqwest::Client, String)>, _| async move {
            ok_body(w.0.put(&w.1)).await?;
            Ok(())
        },
    )
    .await
    .context("heartbeat")?;
    Ok(Latency { resolve, heartbeat })
}

const RESOLVE_WHAT: &str = "resolve GET /v1/services/{s} (10 instances, linearizable)";
const HEARTBEAT_WHAT: &str = "heartbeat PUT /v1/services/{s}/instances/{id}/heartbeat";

async fn step_a(m: &mut Main) -> Result<StepOutput> {
    let (leader, url) = m.leader().await?;
    prepare_baseline(&m.http, &url).await?;
    m.progress.say(
        "A",
        format!(
            "measuring resolve and heartbeat, {LATENCY_WORKERS} workers, {:?} each",
            LATENCY_WINDOW
        ),
    );
    let latency = latency(&url).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let leader_rss = m.rss(leader)?;
    let followers: Vec<(usize, u64)> = (0..NODES)
        .filter(|&i| i != leader)
        .map(|i| Ok((i + 1, m.rss(i)?)))
        .collect::<Result<_>>()?;
    let mut out = StepOutput::default();
    out.line(
        format!("{RESOLVE_WHAT}, {LATENCY_WORKERS} workers, leader"),
        measurement_text(&latency.resolve),
    );
    out.line(
        format!("{HEARTBEAT_WHAT}, {LATENCY_WORKERS} workers, leader"),
        measurement_text(&latency.heartbeat),
    );
    out.line(
        "leader RSS, empty",
        format!(
            "{} (followers: {})",
            mib(leader_rss),
            followers
                .iter()
                .map(|(n, kib)| format!("node {n} {}", mib(*kib)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    );
    out.detail("leader", leader + 1);
    out.detail("resolve", &latency.resolve);
    out.detail("heartbeat", &latency.heartbeat);
    out.detail("leader_rss_kib", leader_rss);
    out.detail("follower_rss_kib", &followers);
    m.baseline = Some(latency);
    m.empty_rss_kib = Some(leader_rss);
    Ok(out)
}

async fn step_b(m: &mut Main, config: &ScaleConfig) -> Result<StepOutput> {
    let (leader, url) = m.leader().await?;
    let count = config.instances;
    m.progress.say(
        "B",
        format!("registering {count} instances with {FILL_WORKERS} workers through the leader"),
    );
    let fill = fill(&url, count, FILL_WORKERS, m.progress).await?;
    m.filled = count;
    let mut out = StepOutput::default();
    out.line(
        format!("fill: PUT /v1/services/svc-N/instances/i-K, {FILL_WORKERS} workers, leader"),
        format!(
            "{} registered in {:.1} s = {:.0} registrations/s; {}",
            fill.tally.ok,
            fill.seconds,
            fill.per_sec,
            fill.tally.text()
        ),
    );
    out.detail("fill", &fill);
    out.detail("body_of_the_first", instance_body(0));
    // Let the followers apply the tail and the allocator settle.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let leader_rss = m.rss(leader)?;
    let n = count.max(1) as f64;
    let per_total = leader_rss as f64 * 1024.0 / n;
    let per_delta = m
        .empty_rss_kib
        .map(|empty| leader_rss.saturating_sub(empty) as f64 * 1024.0 / n);
    out.line(
        format!("leader RSS with {count} instances"),
        format!(
            "{} = {per_total:.0} bytes/instance in all; {} over step A's",
            mib(leader_rss),
            per_delta.map_or("n/a".to_owned(), |b| format!("{b:.0} bytes/instance")),
        ),
    );
    let followers: Vec<(usize, u64)> = (0..NODES)
        .filter(|&i| i != leader)
        .map(|i| Ok((i + 1, m.rss(i)?)))
        .collect::<Result<_>>()?;
    out.line(
        "follower RSS",
        followers
            .iter()
            .map(|(n, kib)| format!("node {n} {}", mib(*kib)))
            .collect::<Vec<_>>()
            .join(", "),
    );
    let scraped = metrics(&m.http, &url).await?;
    let memtable = scraped.sum("registry_rocksdb_memtable_bytes", None);
    let block_cache = scraped.sum("registry_rocksdb_block_cache_bytes", None);
    out.line(
        "leader RocksDB memtable / block cache (gauges)",
        format!("{} / {}", mib_or_na(memtable), mib_or_na(block_cache)),
    );
    let counted = scraped.sum("registry_instances", None);
    let built = scraped.histogram("registry_raft_snapshot_size_bytes", Some("kind=\"build\""));
    let file = std::fs::metadata(snapshot_file(&m.cluster.data_dir(leader)))
        .ok()
        .map(|meta| meta.len());
    out.line(
        "snapshot size",
        format!(
            "{} on the leader's disk (current.snap); registry_raft_snapshot_size_bytes: {}",
            mib_or_na(file.map(|b| b as f64)),
            match built {
                Some((count, sum)) if count > 0.0 =>
                    format!("{} builds, mean {}", count, mib_or_na(Some(sum / count))),
                Some(_) => "no build yet".to_owned(),
                None => "n/a".to_owned(),
            }
        ),
    );
    // Issue 15: at most 600 B of leader RSS per instance (all of it, not the growth).
    out.targets.push(TargetCheck {
        target: "scale memory: leader RSS <= 600 B per registered instance".to_owned(),
        measured: format!(
            "{per_total:.0} bytes per instance in all, {:.0} over the empty leader ({count} instances)",
            per_delta.unwrap_or(per_total)
        ),
        pass: Some(per_total <= 600.0),
    });
    out.detail("leader", leader + 1);
    out.detail("leader_rss_kib", leader_rss);
    out.detail("bytes_per_instance_total", per_total);
    out.detail("bytes_per_instance_over_empty", per_delta);
    out.detail("follower_rss_kib", &followers);
    out.detail("rocksdb_memtable_bytes", memtable);
    out.detail("rocksdb_block_cache_bytes", block_cache);
    out.detail("instances_counted_by_leader", counted);
    out.detail("snapshot_file_bytes", file);
    out.detail("snapshot_size_bytes_histogram_count_sum", built);
    Ok(out)
}

/// One snapshot build a poller saw end.
#[derive(Debug, Clone, Serialize)]
struct Build {
    /// Node id.
    node: usize,
    /// The build ended after `end_after_us` and by `end_by_us` (µs since the window
    /// began): between the poll that did not see it and the one that did.
    end_after_us: i64,
    end_by_us: i64,
    /// How long it took (the histogram's sum delta), if the server exports it.
    duration_us: Option<i64>,
    /// Builds the histogram counted between the two scrapes (1, or more when two ended
    /// between polls).
    builds: u64,
    /// The snapshot's index.
    index: Option<u64>,
}

impl Build {
    /// The time it may have been building, µs since the window began.
    fn interval(&self) -> (i64, i64) {
        (
            self.end_after_us - self.duration_us.unwrap_or(0),
            self.end_by_us,
        )
    }
}

/// What one node's poller saw.
#[derive(Debug, Default)]
struct Polled {
    builds: Vec<Build>,
    polls: u64,
    errors: u64,
}

const BUILD_HISTOGRAM: &str = "registry_raft_snapshot_build_duration_seconds";

/// Polls `url`'s `GET /v1/cluster` every [`SNAPSHOT_POLL`] for a new snapshot index; on
/// one, scrapes `/metrics` for the build histogram (a scrape is far larger than the
/// status answer; 50 a second would be load of their own).
async fn poll_builds(
    node: usize,
    url: String,
    t0: Instant,
    stop: Arc<AtomicBool>,
    mut index: Option<u64>,
    mut histogram: Option<(f64, f64)>,
) -> Polled {
    let Ok(http) = client(Duration::from_secs(5)) else {
        return Polled::default();
    };
    let at = |t: Instant| -> i64 { us(t.saturating_duration_since(t0)) as i64 };
    let mut polled = Polled::default();
    let mut before = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        let sent = Instant::now();
        polled.polls += 1;
        match status(&http, &url).await {
            Ok(s) if s.snapshot_index != index => {
                let seen = Instant::now();
                index = s.snapshot_index;
                let now = metrics(&http, &url)
                    .await
                    .ok()
                    .and_then(|m| m.histogram(BUILD_HISTOGRAM, None));
                // No series yet means no build yet: the histogram appears with the first.
                let (c0, s0) = histogram.unwrap_or((0.0, 0.0));
                let (duration_us, builds) = match now {
                    Some((c1, s1)) if c1 > c0 => (Some(((s1 - s0) * 1e6) as i64), (c1 - c0) as u64),
                    _ => (None, 1),
                };
                if now.is_some() {
                    histogram = now;
                }
                polled.builds.push(Build {
                    node,
                    end_after_us: at(before),
                    end_by_us: at(seen),
                    duration_us,
                    builds,
                    index,
                });
            }
            Ok(_) => {}
            Err(_) => polled.errors += 1,
        }
        before = sent;
        tokio::time::sleep_until(sent + SNAPSHOT_POLL).await;
    }
    polled
}

/// One request of the window: when it started (µs since the window began) and how long
/// it took.
#[derive(Debug, Clone, Copy)]
struct Timed {
    start_us: i64,
    latency_us: i64,
}

async fn step_c(m: &mut Main) -> Result<StepOutput> {
    ensure!(m.filled > 0, "no instances registered (step B failed)");
    let (leader, url) = m.leader().await?;
    let urls = m.cluster.urls()[..NODES].to_vec();
    let count = m.filled;
    // Each poller's starting point: the snapshot index and the build histogram now.
    let mut starts = Vec::new();
    for node_url in &urls {
        let s = status(&m.http, node_url).await?;
        let h = metrics(&m.http, node_url)
            .await?
            .histogram(BUILD_HISTOGRAM, None);
        starts.push((s.snapshot_index, h));
    }
    let log_before = status(&m.http, &url).await?.last_log_index;
    m.progress.say(
        "C",
        format!(
            "{LATENCY_WORKERS} workers re-registering random instances for {:?}; polling every node every {:?}",
            SNAPSHOT_WINDOW, SNAPSHOT_POLL
        ),
    );
    let t0 = Instant::now();
    let end = t0 + SNAPSHOT_WINDOW;
    let stop = Arc::new(AtomicBool::new(false));
    let pollers: Vec<_> = urls
        .iter()
        .zip(starts)
        .enumerate()
        .map(|(i, (node_url, (index, histogram)))| {
            tokio::spawn(poll_builds(
                i + 1,
                node_url.clone(),
                t0,
                Arc::clone(&stop),
                index,
                histogram,
            ))
        })
        .collect();
    let mut workers = tokio::task::JoinSet::new();
    for w in 0..LATENCY_WORKERS {
        let url = url.clone();
        workers.spawn(async move {
            let http = client(Duration::from_secs(30))?;
            let mut rng = Rng::new(w as u64 + 1);
            let (mut timed, mut errors) = (Vec::new(), WriteTally::default());
            while Instant::now() < end {
                let i = rng.below(count);
                let started = Instant::now();
                let outcome = ok_body(
                    http.put(format!("{url}{}", instance_path(i)))
                        .json(&instance_body(i)),
                )
                .await;
                let latency = started.elapsed();
                match outcome {
                    Ok(_) => timed.push(Timed {
                        start_us: us(started.saturating_duration_since(t0)) as i64,
                        latency_us: us(latency) as i64,
                    }),
                    Err(e) => {
                        errors.failures += 1;
                        errors.note(format!("{e:#}"));
                    }
                }
            }
            anyhow::Ok((timed, errors))
        });
    }
    let ticker = {
        let progress = m.progress;
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(10)).await;
                progress.say(
                    "C",
                    format!("{:.0} s into the window", t0.elapsed().as_secs_f64()),
                );
            }
        })
    };
    let mut timed = Vec::new();
    let mut errors = WriteTally::default();
    while let Some(joined) = workers.join_next().await {
        let (t, e) = joined.context("a writer panicked")??;
        timed.extend(t);
        errors.merge(e);
    }
    let window_s = t0.elapsed().as_secs_f64();
    ticker.abort();
    stop.store(true, Ordering::Relaxed);
    let mut builds = Vec::new();
    let (mut polls, mut poll_errors) = (0, 0);
    for poller in pollers {
        let polled = poller.await.context("a poller panicked")?;
        builds.extend(polled.builds);
        polls += polled.polls;
        poll_errors += polled.errors;
    }
    let log_after = status(&m.http, &url).await?.last_log_index;
    let entries = log_after.saturating_sub(log_before);
    let entries_per_s = entries as f64 / window_s;
    let requests = timed.len() as u64 + errors.failures;

    let intervals: Vec<(i64, i64)> = builds.iter().map(Build::interval).collect();
    let (mut during, mut none) = (Vec::new(), Vec::new());
    for t in &timed {
        let (a, b) = (t.start_us, t.start_us + t.latency_us);
        let overlaps = intervals.iter().any(|(x, y)| a <= *y && b >= *x);
        let latency = t.latency_us.max(0) as u64;
        if overlaps {
            during.push(latency);
        } else {
            none.push(latency);
        }
    }
    let (during, none) = (Quantiles::of(during), Quantiles::of(none));
    let ratio =
        (during.count > 0 && none.p99_us > 0).then(|| during.p99_us as f64 / none.p99_us as f64);

    let mut out = StepOutput::default();
    out.line(
        format!(
            "load: re-register random instances, {LATENCY_WORKERS} workers, leader, {window_s:.0} s"
        ),
        format!(
            "{} requests ({:.0}/s), {} failed; {entries} log entries = {entries_per_s:.0} entries/s, {:.1} requests per entry",
            requests,
            requests as f64 / window_s,
            errors.failures,
            requests as f64 / entries.max(1) as f64
        ),
    );
    let per_node: Vec<String> = (1..=NODES)
        .map(|n| {
            let mine: Vec<&Build> = builds.iter().filter(|b| b.node == n).collect();
            let durations: Vec<String> = mine
                .iter()
                .take(12)
                .map(|b| {
                    b.duration_us
                        .map_or("n/a".to_owned(), |d| ms(d.max(0) as u64))
                })
                .collect();
            let more = if mine.len() > 12 { ", ..." } else { "" };
            format!(
                "node {n}{}: {} [{}{more}]",
                if n == leader + 1 { " (leader)" } else { "" },
                mine.iter().map(|b| b.builds).sum::<u64>(),
                durations.join(", ")
            )
        })
        .collect();
    out.line(
        "how builds are seen",
        format!(
            "GET /v1/cluster on every node every {} ms (snapshot_index); /metrics scraped once per new snapshot for {BUILD_HISTOGRAM}; {polls} polls, {poll_errors} failed",
            SNAPSHOT_POLL.as_millis()
        ),
    );
    out.line(
        "snapshot builds seen (count [durations])",
        if builds.is_empty() {
            "none seen in the window".to_owned()
        } else {
            per_node.join("; ")
        },
    );
    let histogram_present = builds.iter().any(|b| b.duration_us.is_some());
    if !builds.is_empty() && !histogram_present {
        out.line(
            "build durations",
            format!("n/a: the server does not export {BUILD_HISTOGRAM}; a request counts as during a build only if it spans the poll interval in which one ended"),
        );
    }
    let leader_builds: u64 = builds
        .iter()
        .filter(|b| b.node == leader + 1)
        .map(|b| b.builds)
        .sum();
    if (leader_builds as usize) < WANTED_BUILDS {
        let suggested = (entries / (WANTED_BUILDS as u64 + 1)).max(1);
        out.line(
            "note",
            format!(
                "only {leader_builds} builds on the leader (wanted >= {WANTED_BUILDS}): at {entries_per_s:.0} entries/s, --scale-snapshot-every {suggested} would give about {}",
                WANTED_BUILDS + 1
            ),
        );
    }
    let file = std::fs::metadata(snapshot_file(&m.cluster.data_dir(leader)))
        .ok()
        .map(|meta| meta.len());
    out.line(
        "the leader's snapshot file (current.snap) after the window",
        mib_or_na(file.map(|b| b as f64)),
    );
    out.detail("snapshot_file_bytes", file);
    out.line(
        "write latency during a snapshot build (any node)",
        during.text(),
    );
    out.line("write latency with no build running", none.text());
    out.line(
        "p99 during / p99 without (target <= 2.0)",
        ratio.map_or("n/a (no request overlapped a build)".to_owned(), |r| {
            format!("{r:.2}")
        }),
    );
    out.targets.push(TargetCheck {
        target: "snapshot stall: write p99 during a snapshot build <= 2x without".to_owned(),
        measured: match ratio {
            Some(r) => format!(
                "{r:.2}x (p99 {} vs {}; {} builds seen)",
                ms(during.p99_us),
                ms(none.p99_us),
                builds.len()
            ),
            None if builds.is_empty() => "no snapshot build seen".to_owned(),
            None => "no request overlapped a build".to_owned(),
        },
        pass: ratio.map(|r| r <= 2.0),
    });
    out.detail("leader", leader + 1);
    out.detail("window_s", window_s);
    out.detail("requests", requests);
    out.detail("errors", &errors);
    out.detail("log_entries", entries);
    out.detail("entries_per_s", entries_per_s);
    out.detail("builds", &builds);
    out.detail("build_histogram_exported", histogram_present);
    out.detail("polls", polls);
    out.detail("poll_errors", poll_errors);
    out.detail("during_build", during);
    out.detail("no_build", none);
    out.detail("p99_ratio", ratio);
    Ok(out)
}

/// "x1.05" of `now` over `then`.
fn times(now: f64, then: f64) -> String {
    if then > 0.0 {
        format!("x{:.2}", now / then)
    } else {
        "n/a".to_owned()
    }
}

async fn step_d(m: &mut Main) -> Result<StepOutput> {
    ensure!(m.filled > 0, "no instances registered (step B failed)");
    let (leader, url) = m.leader().await?;
    // Step C's last snapshot builds may still run on the nodes: measured during them,
    // this step would say what C already measured.
    let quiet = wait_for_no_build(&m.http, m.cluster.urls()).await;
    let latency = latency(&url).await?;
    let mut out = StepOutput::default();
    out.line(
        "waited for snapshot builds to end on every node (registry_raft_snapshot_building)",
        quiet,
    );
    for (what, now, then) in [
        (
            RESOLVE_WHAT,
            &latency.resolve,
            m.baseline.as_ref().map(|b| &b.resolve),
        ),
        (
            HEARTBEAT_WHAT,
            &latency.heartbeat,
            m.baseline.as_ref().map(|b| &b.heartbeat),
        ),
    ] {
        let versus = match then {
            Some(then) => format!(
                "; vs A: ops/s {}, p50 {}, p99 {}",
                times(now.ops_per_sec, then.ops_per_sec),
                times(now.p50_us as f64, then.p50_us as f64),
                times(now.p99_us as f64, then.p99_us as f64)
            ),
            None => "; step A has no figures to compare with".to_owned(),
        };
        out.line(
            format!("{what} with {} instances", m.filled),
            format!("{}{versus}", measurement_text(now)),
        );
    }
    out.detail("leader", leader + 1);
    out.detail("resolve", &latency.resolve);
    out.detail("heartbeat", &latency.heartbeat);
    Ok(out)
}

async fn step_e(m: &mut Main) -> Result<StepOutput> {
    let (leader, url) = m.leader().await?;
    let follower = (0..NODES).find(|&i| i != leader).context("no follower")?;
    let node_url = m.cluster.urls()[follower].clone();
    let target = status(&m.http, &url).await?.commit_index;
    let rss_before = m.rss(follower)?;
    m.progress.say(
        "E",
        format!(
            "SIGTERM node {} (a follower; leader commit index {target})",
            follower + 1
        ),
    );
    let stopped = m.cluster.terminate(follower, EXIT_GRACE).await?;
    m.progress.say(
        "E",
        format!(
            "node {} exited after {:.2} s{}; starting it again",
            follower + 1,
            stopped.after.as_secs_f64(),
            if stopped.killed { " (killed)" } else { "" }
        ),
    );
    m.cluster.restart(follower)?;
    let probe = client(Duration::from_secs(2))?;
    let waited = wait_status(&probe, &node_url, CATCH_UP_LIMIT, |s| {
        s.applied_index >= target
    })
    .await;
    let (first_answer, caught_up, s) = match waited {
        Ok(w) => w,
        Err(e) => {
            m.cluster.ensure_running(follower)?;
            return Err(e.context(format!("node {} catching up", follower + 1)));
        }
    };
    let rss_after = m.rss(follower)?;
    let mut out = StepOutput::default();
    out.line(
        format!("SIGTERM follower node {} until it exited", follower + 1),
        format!(
            "{:.2} s{}",
            stopped.after.as_secs_f64(),
            if stopped.killed {
                " (did not exit: killed)"
            } else {
                ""
            }
        ),
    );
    out.line(
        "start until it answered GET /v1/cluster",
        first_answer.map_or("n/a".to_owned(), |d| format!("{:.2} s", d.as_secs_f64())),
    );
    out.line(
        format!("start until applied_index >= the leader's commit index before ({target})"),
        format!(
            "{:.2} s (applied {}, snapshot index {})",
            caught_up.as_secs_f64(),
            s.applied_index,
            s.snapshot_index
                .map_or("none".to_owned(), |i| i.to_string())
        ),
    );
    out.line(
        "follower RSS before the restart / after",
        format!("{} / {}", mib(rss_before), mib(rss_after)),
    );
    out.detail("node", follower + 1);
    out.detail("exit_s", stopped.after.as_secs_f64());
    out.detail("killed", stopped.killed);
    out.detail("first_answer_s", first_answer.map(|d| d.as_secs_f64()));
    out.detail("caught_up_s", caught_up.as_secs_f64());
    out.detail("target_index", target);
    out.detail("status", &s);
    out.detail("rss_before_kib", rss_before);
    out.detail("rss_after_kib", rss_after);
    Ok(out)
}

async fn step_f(m: &mut Main) -> Result<StepOutput> {
    let (leader, url) = m.leader().await?;
    let leader_addr = m.cluster.addr(leader).context("leader address")?;
    let before = status(&m.http, &url).await?;
    let target = before.commit_index;
    let index = m
        .cluster
        .add_node(&["--join".to_owned(), leader_addr.clone()])?;
    let id = index + 1;
    let node_url = m.cluster.urls()[index].clone();
    m.progress.say(
        "F",
        format!(
            "started node {id} with --join {leader_addr} (leader commit {target}, snapshot {:?}, purged {:?})",
            before.snapshot_index, before.purged_index
        ),
    );
    let outcome = catch_up(m, index, &node_url, target).await;
    // Whatever happened, take it out of the cluster again and stop it.
    let removed = ok_body(m.http.delete(format!("{url}/v1/cluster/members/{id}"))).await;
    m.cluster.stop(index)?;
    let mut out = outcome?;
    out.line(
        format!("DELETE /v1/cluster/members/{id}, then stopped"),
        match &removed {
            Ok(_) => "removed".to_owned(),
            Err(e) => format!("FAILED: {e:#}"),
        },
    );
    out.detail("leader_before", &before);
    if let Err(e) = removed.context("remove the joined member") {
        out.fail(&e);
    } else if let Err(e) = m.leader().await.context("the cluster after the removal") {
        out.fail(&e);
    }
    Ok(out)
}

/// Waits until joining node `index` has applied `target` from a snapshot.
async fn catch_up(m: &mut Main, index: usize, node_url: &str, target: u64) -> Result<StepOutput> {
    let id = index + 1;
    let probe = client(Duration::from_secs(2))?;
    let waited = wait_status(&probe, node_url, CATCH_UP_LIMIT, |s| {
        s.applied_index >= target
    })
    .await;
    let (first_answer, caught_up, s) = match waited {
        Ok(w) => w,
        Err(e) => {
            m.cluster.ensure_running(index)?;
            return Err(e.context(format!("node {id} catching up")));
        }
    };
    let rss = m.rss(index)?;
    let installed = metrics(&m.http, node_url)
        .await
        .ok()
        .and_then(|x| x.histogram("registry_raft_snapshot_install_duration_seconds", None));
    let mut out = StepOutput::default();
    out.line(
        format!("start until node {id} answered GET /v1/cluster"),
        first_answer.map_or("n/a".to_owned(), |d| format!("{:.2} s", d.as_secs_f64())),
    );
    out.line(
        format!("start until applied_index >= {target} (the leader's commit index)"),
        format!(
            "{:.2} s (applied {}, snapshot index {}, role {})",
            caught_up.as_secs_f64(),
            s.applied_index,
            s.snapshot_index
                .map_or("none".to_owned(), |i| i.to_string()),
            s.role
        ),
    );
    let install_text = match installed {
        Some((count, sum)) if count > 0.0 => format!(
            "{count} install(s) took {sum:.2} s (registry_raft_snapshot_install_duration_seconds)"
        ),
        Some(_) => "no install recorded".to_owned(),
        None => "install duration n/a".to_owned(),
    };
    out.line(
        "installed a snapshot (its snapshot_index is set)",
        match s.snapshot_index {
            Some(index) => format!("yes, at index {index}; {install_text}"),
            None => format!("no: caught up from the log alone; {install_text}"),
        },
    );
    out.line(format!("node {id} RSS when caught up"), mib(rss));
    out.detail("node", id);
    out.detail("target_index", target);
    out.detail("first_answer_s", first_answer.map(|d| d.as_secs_f64()));
    out.detail("caught_up_s", caught_up.as_secs_f64());
    out.detail("status", &s);
    out.detail("install_count_sum", installed);
    out.detail("rss_kib", rss);
    Ok(out)
}

/// A data dir's current snapshot file, if any (for the report).
pub fn snapshot_file(data_dir: &Path) -> PathBuf {
    data_dir.join("snapshot").join("current.snap")
}
