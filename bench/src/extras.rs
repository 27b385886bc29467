//! The measurements that are not a closed-loop throughput run: watch fan-out, failover
//! under write load, this machine's ceilings (HTTP+JSON with a trivial axum endpoint, and
//! the disk's fsync rate) and a server's memory per instance.

use std::collections::HashSet;
use std::io::Write as _;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use base64::prelude::{Engine, BASE64_STANDARD};
use serde::Serialize;
use serde_json::{json, Value};
use tokio::time::Instant;

use crate::load::{self, LoadConfig, Measurement};
use crate::scale::{ok_json, pick};
use crate::systems::Side;

fn b64(s: &str) -> String {
    BASE64_STANDARD.encode(s)
}

fn us(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

fn registration() -> Value {
    json!({"address": "127.0.0.1", "port": 8080, "ttl": "1h"})
}

// ---------------------------------------------------------------------------------------
// Watch fan-out

/// What one fan-out measured: from sending the change to each watcher's return.
#[derive(Debug, Clone, Serialize)]
pub struct Fanout {
    pub watchers: usize,
    /// "leader" or "spread over N members".
    pub watchers_on: String,
    /// Time until the change itself was acknowledged.
    pub change_ack_us: u64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
}

impl Fanout {
    pub fn summary(&self) -> String {
        format!(
            "{} watchers ({}): returned p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms after the change was sent (change acknowledged after {:.2} ms)",
            self.watchers,
            self.watchers_on,
            self.p50_us as f64 / 1e3,
            self.p99_us as f64 / 1e3,
            self.max_us as f64 / 1e3,
            self.change_ack_us as f64 / 1e3
        )
    }
}

fn watcher_client() -> Result<reqwest::Client> {
    reqwest::Client::builder()
        .http1_only()
        .pool_max_idle_per_host(1)
        .tcp_nodelay(true)
        .timeout(Duration::from_secs(120))
        .build()
        .context("build watcher client")
}

/// Which member watcher `i` uses.
fn member(urls: &[String], leader: usize, spread: bool, i: usize) -> String {
    if spread {
        urls[i % urls.len()].clone()
    } else {
        urls[leader].clone()
    }
}

/// `watchers` watches of one key space, one connection each, then one change; returns when
/// every watcher has seen it.
pub async fn watch_fanout(
    side: Side,
    urls: &[String],
    leader: usize,
    spread: bool,
    watchers: usize,
) -> Result<Fanout> {
    let leader_url = urls[leader].clone();
    let http = watcher_client()?;
    let service = "bench-watched";
    // Each watcher reports the instant it saw the change.
    let mut tasks = tokio::task::JoinSet::new();
    let (created_tx, mut created_rx) = tokio::sync::mpsc::channel::<()>(watchers);
    match side {
        Side::Registry => {
            let seed = http
                .put(format!("{leader_url}/v1/services/{service}/instances/seed"))
                .json(&registration())
                .send()
                .await?
                .error_for_status()?;
            drop(seed);
            let answer = http
                .get(format!("{leader_url}/v1/services/{service}"))
                .send()
                .await?
                .error_for_status()?;
            let index: u64 = answer
                .headers()
                .get("x-registry-index")
                .context("no X-Registry-Index")?
                .to_str()?
                .parse()?;
            for i in 0..watchers {
                let url = format!(
                    "{}/v1/services/{service}?index={index}&wait=60s",
                    member(urls, leader, spread, i)
                );
                let client = watcher_client()?;
                tasks.spawn(async move {
                    let answer = client.get(url).send().await?.error_for_status()?;
                    let returned = Instant::now();
                    answer.bytes().await?;
                    anyhow::Ok(returned)
                });
            }
            // A blocking query has no "parked" confirmation: give them time to connect and
            // park, then make sure none returned early.
            tokio::time::sleep(Duration::from_secs(3)).await;
            ensure!(
                tasks.len() == watchers,
                "a watcher returned before the change"
            );
        }
        Side::Etcd => {
            let prefix = format!("{service}/");
            for i in 0..watchers {
                let url = format!("{}/v3/watch", member(urls, leader, spread, i));
                let client = watcher_client()?;
                let created_tx = created_tx.clone();
                let body = json!({"create_request": {
                    "key": b64(&prefix),
                    "range_end": b64(&format!("{service}0")),
                }});
                tasks.spawn(async move {
                    let mut response = client.post(url).json(&body).send().await?;
                    ensure!(response.status().is_success(), "{}", response.status());
                    let mut buffer = Vec::new();
                    let mut created = false;
                    while let Some(chunk) = response.chunk().await? {
                        let now = Instant::now();
                        buffer.extend_from_slice(&chunk);
                        // The gateway sends one JSON message per line.
                        while let Some(end) = buffer.iter().position(|&b| b == b'\n') {
                            let line: Vec<u8> = buffer.drain(..=end).collect();
                            let text = String::from_utf8_lossy(&line);
                            if text.trim().is_empty() {
                                continue;
                            }
                            let message: Value = serde_json::from_str(text.trim())
                                .with_context(|| format!("watch message: {text}"))?;
                            let result = &message["result"];
                            if result["created"] == true && !created {
                                created = true;
                                let _ = created_tx.send(()).await;
                            }
                            if result["events"].as_array().is_some_and(|e| !e.is_empty()) {
                                return Ok(now);
                            }
                            if message.get("error").is_some() {
                                bail!("watch error: {message}");
                            }
                        }
                    }
                    bail!("watch stream ended without an event")
                });
            }
            drop(created_tx);
            let deadline = Instant::now() + Duration::from_secs(60);
            for n in 0..watchers {
                match tokio::time::timeout_at(deadline, created_rx.recv()).await {
                    Ok(Some(())) => {}
                    _ => bail!("only {n} of {watchers} watches were created"),
                }
            }
            ensure!(
                tasks.len() == watchers,
                "a watcher returned before the change"
            );
        }
    }
    let sent = Instant::now();
    match side {
        Side::Registry => {
            http.put(format!(
                "{leader_url}/v1/services/{service}/instances/change"
            ))
            .json(&registration())
            .send()
            .await?
            .error_for_status()?;
        }
        Side::Etcd => {
            ok_json(http.post(format!("{leader_url}/v3/kv/put")).json(&json!({
                "key": b64(&format!("{service}/change")),
                "value": b64(&registration().to_string()),
            })))
            .await?;
        }
    }
    let acked = sent.elapsed();
    let mut latencies = Vec::with_capacity(watchers);
    let deadline = Instant::now() + Duration::from_secs(60);
    while let Some(joined) = tokio::time::timeout_at(deadline, tasks.join_next())
        .await
        .context("watchers did not all return within 60 s")?
    {
        let returned = joined.context("watcher panicked")??;
        latencies.push(us(returned.saturating_duration_since(sent)));
    }
    latencies.sort_unstable();
    Ok(Fanout {
        watchers,
        watchers_on: if spread {
            format!("spread over {} members", urls.len())
        } else {
            "all on the leader".to_owned()
        },
        change_ack_us: us(acked),
        p50_us: pick(&latencies, 0.50),
        p99_us: pick(&latencies, 0.99),
        max_us: pick(&latencies, 1.0),
    })
}

// ---------------------------------------------------------------------------------------
// Failover

/// What a failover run measured.
#[derive(Debug, Clone, Serialize)]
pub struct Failover {
    pub workers: usize,
    /// From the SIGKILL until the first acknowledged write of a request sent after it.
    pub recover_ms: f64,
    /// Longest stretch without any acknowledged write, around the kill.
    pub max_gap_ms: f64,
    /// Writes acknowledged during the whole run (before and after the kill).
    pub acknowledged: usize,
    /// Acknowledged writes missing when read back afterwards.
    pub lost: usize,
    /// Attempts that failed and were retried (on the next member).
    pub retried: u64,
}

impl Failover {
    pub fn summary(&self) -> String {
        format!(
            "leader SIGKILLed under {} writers: first write acknowledged {:.0} ms after the kill (longest gap without acks {:.0} ms); {} writes acknowledged, {} lost; {} failed attempts retried",
            self.workers, self.recover_ms, self.max_gap_ms, self.acknowledged, self.lost, self.retried
        )
    }
}

/// A failover write attempt taking longer than this is abandoned and retried on the next
/// member: it bounds how finely the time to recover is resolved (a request parked on a
/// member without a leader would otherwise be counted until it gave up).
const FAILOVER_OP_TIMEOUT: Duration = Duration::from_millis(250);

/// One acknowledged write: its key and when it was sent and acknowledged.
struct Ack {
    key: String,
    sent: Instant,
    acked: Instant,
}

/// Something whose leader can be killed: both cluster kinds.
pub trait KillLeader {
    fn kill_leader(&mut self) -> impl std::future::Future<Output = Result<usize>> + Send;
}

impl KillLeader for crate::systems::Registry {
    async fn kill_leader(&mut self) -> Result<usize> {
        crate::systems::Registry::kill_leader(self).await
    }
}

impl KillLeader for crate::systems::Etcd {
    async fn kill_leader(&mut self) -> Result<usize> {
        crate::systems::Etcd::kill_leader(self).await
    }
}

/// One write of key `key` on `side` at `url`.
async fn failover_write(side: Side, http: &reqwest::Client, url: &str, key: &str) -> Result<()> {
    match side {
        Side::Registry => {
            ok_json(
                http.put(format!("{url}/v1/services/bench-failover/instances/{key}"))
                    .json(&registration()),
            )
            .await?;
        }
        Side::Etcd => {
            ok_json(http.post(format!("{url}/v3/kv/put")).json(&json!({
                "key": b64(&format!("bench-failover/{key}")),
                "value": b64(key),
            })))
            .await?;
        }
    }
    Ok(())
}

/// Every key present afterwards, read through `url`.
async fn failover_keys(side: Side, url: &str) -> Result<HashSet<String>> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()?;
    let mut keys = HashSet::new();
    match side {
        Side::Registry => {
            let answer =
                ok_json(http.get(format!("{url}/v1/services/bench-failover?status=any"))).await?;
            for instance in answer["instances"].as_array().context("no instances")? {
                keys.insert(instance["id"].as_str().context("instance id")?.to_owned());
            }
        }
        Side::Etcd => {
            // Paged, to stay under the gateway's message size limit.
            let mut start = b64("bench-failover/");
            let end = b64("bench-failover0");
            loop {
                let answer = ok_json(http.post(format!("{url}/v3/kv/range")).json(&json!({
                    "key": start, "range_end": end, "keys_only": true, "limit": 5000,
                })))
                .await?;
                let kvs = answer["kvs"].as_array().cloned().unwrap_or_default();
                let Some(last) = kvs.last() else { break };
                let last = BASE64_STANDARD.decode(last["key"].as_str().context("key")?)?;
                for kv in &kvs {
                    let key = BASE64_STANDARD.decode(kv["key"].as_str().context("key")?)?;
                    let key = String::from_utf8(key)?;
                    keys.insert(key.trim_start_matches("bench-failover/").to_owned());
                }
                if answer["more"] != true {
                    break;
                }
                let mut next = last;
                next.push(0);
                start = BASE64_STANDARD.encode(next);
            }
        }
    }
    Ok(keys)
}

/// `workers` writers (each with every member's address, starting at the leader or its
/// spread member, moving to the next member on any failure) for `before`, then the leader
/// is SIGKILLed, the writers go on until `after` has passed since the first write
/// acknowledged after the kill, and every acknowledged write is read back.
#[allow(clippy::too_many_arguments)]
pub async fn failover<C: KillLeader>(
    side: Side,
    cluster: &mut C,
    urls: &[String],
    leader: usize,
    spread: bool,
    workers: usize,
    before: Duration,
    after: Duration,
) -> Result<Failover> {
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let retried = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..workers {
        let urls = urls.to_vec();
        let stop = Arc::clone(&stop);
        let retried = Arc::clone(&retried);
        let mut at = if spread { w % urls.len() } else { leader };
        tasks.spawn(async move {
            let http = load::worker_client(FAILOVER_OP_TIMEOUT)?;
            let mut acks = Vec::new();
            let mut seq = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let key = format!("w{w}-{seq}");
                let sent = Instant::now();
                match failover_write(side, &http, &urls[at], &key).await {
                    Ok(()) => {
                        acks.push(Ack {
                            key,
                            sent,
                            acked: Instant::now(),
                        });
                        seq += 1;
                    }
                    Err(_) => {
                        // Retry the same key (an idempotent write) on the next member.
                        retried.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        at = (at + 1) % urls.len();
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            }
            anyhow::Ok(acks)
        });
    }
    tokio::time::sleep(before).await;
    let killed = cluster.kill_leader().await?;
    let kill_at = Instant::now();
    // Wait for the first acknowledged write sent after the kill, polling the writers'
    // progress through the clock: the writers keep their acks to themselves, so simply
    // wait long enough and compute afterwards (bounded at 30 s).
    let probe = load::worker_client(FAILOVER_OP_TIMEOUT)?;
    let survivors: Vec<&String> = urls
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != killed)
        .map(|(_, u)| u)
        .collect();
    let mut recovered = false;
    let deadline = kill_at + Duration::from_secs(30);
    let mut n = 0usize;
    while Instant::now() < deadline {
        // An unrecorded probe write on the survivors tells when writes work again.
        n += 1;
        let url = survivors[n % survivors.len()];
        if failover_write(side, &probe, url, &format!("probe-{n}"))
            .await
            .is_ok()
        {
            recovered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    if recovered {
        tokio::time::sleep(after).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut acks = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        acks.extend(joined.context("writer panicked")??);
    }
    ensure!(recovered, "no write succeeded within 30 s of the kill");
    let first_after = acks
        .iter()
        .filter(|a| a.sent >= kill_at)
        .map(|a| a.acked)
        .min()
        .context("no writer's write was acknowledged after the kill")?;
    let mut times: Vec<Instant> = acks.iter().map(|a| a.acked).collect();
    times.push(kill_at);
    times.sort_unstable();
    let max_gap = times
        .windows(2)
        .filter(|w| w[1] >= kill_at - Duration::from_secs(1))
        .map(|w| w[1] - w[0])
        .max()
        .unwrap_or_default();
    // Read back through a survivor (linearizable read) and compare.
    let present = failover_keys(side, survivors[0]).await?;
    let lost = acks.iter().filter(|a| !present.contains(&a.key)).count();
    Ok(Failover {
        workers,
        recover_ms: (first_after - kill_at).as_secs_f64() * 1e3,
        max_gap_ms: max_gap.as_secs_f64() * 1e3,
        acknowledged: acks.len(),
        lost,
        retried: retried.load(std::sync::atomic::Ordering::Relaxed),
    })
}

// ---------------------------------------------------------------------------------------
// Ceilings

/// An answer shaped and sized like the registry's to `GET /v1/services/{s}` for a
/// 10-instance service (about 3.3 KB), for a ceiling that moves and parses as much JSON
/// per request as resolve-stale. The server sends it pre-serialized (one copy of the
/// bytes), so this ceiling leaves out the server's own encoding: an upper bound.
fn service_body() -> Value {
    let instances: Vec<Value> = (0..10)
        .map(|i| {
            json!({
                "service": "bench-resolve", "id": format!("i{i}"), "address": "10.0.0.1",
                "port": 8080 + i, "tags": ["v1", "primary"], "meta": {"version": "1.2.3"},
                "zone": "zone-a", "region": "region-1", "weight": 1, "status": "passing",
                "lease": "0b8c2a57-2f1d-4c44-9a9e-3f5b1c9d7e21", "own_lease": true,
                "ttl": "1h", "ttl_ms": 3_600_000, "deregister_after": "1m",
                "deregister_after_ms": 60_000, "registered_at_ms": 1_795_000_000_000u64,
                "modify_index": 1234,
            })
        })
        .collect();
    json!({"service": "bench-resolve", "instances": instances})
}

/// A trivial axum server on its own multi-threaded runtime in its own thread, on
/// 127.0.0.1:0, stopped when dropped: `GET /ping` → a small JSON, `GET /service` → a
/// resolve-sized one ([`service_body`]), pre-serialized.
#[derive(Debug)]
pub struct AxumCeiling {
    pub url: String,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl AxumCeiling {
    pub fn start() -> Result<AxumCeiling> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let url = format!("http://{}", listener.local_addr()?);
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?;
        let thread = std::thread::spawn(move || {
            runtime.block_on(async move {
                let service: Arc<str> = service_body().to_string().into();
                let app = axum::Router::new()
                    .route(
                        "/ping",
                        axum::routing::get(|| async {
                            axum::Json(json!({"ok": true, "service": "ping", "instances": 0}))
                        }),
                    )
                    .route(
                        "/service",
                        axum::routing::get(move || {
                            let service = service.clone();
                            async move {
                                (
                                    [(axum::http::header::CONTENT_TYPE, "application/json")],
                                    service.to_string(),
                                )
                            }
                        }),
                    );
                let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
                    return;
                };
                let _ = axum::serve(listener, app)
                    .with_graceful_shutdown(async {
                        let _ = rx.await;
                    })
                    .await;
            });
        });
        Ok(AxumCeiling {
            url,
            shutdown: Some(tx),
            thread: Some(thread),
        })
    }
}

impl Drop for AxumCeiling {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The load generator against a trivial axum endpoint (`path`: `/ping` or `/service`,
/// see [`AxumCeiling`]): this machine's HTTP+JSON ceiling.
pub async fn axum_ceiling(config: LoadConfig, path: &str) -> Result<Measurement> {
    let server = AxumCeiling::start()?;
    let url = format!("{}{path}", server.url);
    let setup = |_| {
        let url = url.clone();
        async move { Ok((load::worker_client(config.op_timeout)?, url)) }
    };
    let op = |w: Arc<(reqwest::Client, String)>, _| async move {
        let answer = ok_json(w.0.get(&w.1)).await?;
        ensure!(
            answer["ok"] == true || answer["instances"].is_array(),
            "unexpected answer {answer}"
        );
        Ok(())
    };
    let result = load::run(config, setup, op).await;
    drop(server);
    result
}

/// What the fsync probe measured.
#[derive(Debug, Clone, Serialize)]
pub struct Fsync {
    pub fsyncs: u64,
    pub seconds: f64,
    pub per_sec: f64,
    pub p50_us: u64,
    pub p99_us: u64,
    /// Where the file was (the temp dir both clusters keep their data in).
    pub dir: String,
}

/// Appends 4 KiB and `sync_data`s, in a loop, for `duration`, single thread, in a fresh
/// temporary directory (where the clusters' data dirs go).
pub fn fsync_rate(duration: Duration) -> Result<Fsync> {
    let dir = tempfile::Builder::new().prefix("bench-fsync-").tempdir()?;
    let path = dir.path().join("wal");
    let mut file = std::fs::File::create(&path)?;
    let block = vec![0x5au8; 4096];
    let mut latencies = Vec::new();
    let start = std::time::Instant::now();
    while start.elapsed() < duration {
        let t = std::time::Instant::now();
        file.write_all(&block)?;
        file.sync_data()?;
        latencies.push(us(t.elapsed()));
    }
    let seconds = start.elapsed().as_secs_f64();
    latencies.sort_unstable();
    let fsyncs = latencies.len() as u64;
    Ok(Fsync {
        fsyncs,
        seconds,
        per_sec: fsyncs as f64 / seconds,
        p50_us: pick(&latencies, 0.5),
        p99_us: pick(&latencies, 0.99),
        dir: std::env::temp_dir().display().to_string(),
    })
}

// ---------------------------------------------------------------------------------------
// Memory

/// A process's resident set size in KiB (VmRSS of /proc/<pid>/status).
pub fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("read /proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmRSS")
}

/// What the memory run measured.
#[derive(Debug, Clone, Serialize)]
pub struct Memory {
    pub instances: usize,
    pub empty_rss_kib: u64,
    pub full_rss_kib: u64,
    pub bytes_per_instance: f64,
    pub fill_seconds: f64,
}

impl Memory {
    pub fn summary(&self, what: &str) -> String {
        format!(
            "leader RSS {:.1} MiB empty, {:.1} MiB with {} {what}: {:.0} bytes each (filled in {:.1} s)",
            self.empty_rss_kib as f64 / 1024.0,
            self.full_rss_kib as f64 / 1024.0,
            self.instances,
            self.bytes_per_instance,
            self.fill_seconds
        )
    }
}

/// Registers `count` instances (registry, TTL 1 h) or puts `count` keys each with a lease
/// of its own (etcd, TTL 1 h) through `url` with `workers` workers, then reads the RSS of
/// `pid` (measured empty first: call right after the cluster started).
pub async fn memory(
    side: Side,
    url: &str,
    pid: u32,
    count: usize,
    workers: usize,
) -> Result<Memory> {
    let empty_rss_kib = rss_kib(pid)?;
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..workers {
        let url = url.to_owned();
        tasks.spawn(async move {
            let http = load::worker_client(Duration::from_secs(30))?;
            let mut i = w;
            while i < count {
                match side {
                    Side::Registry => {
                        ok_json(
                            http.put(format!(
                                "{url}/v1/services/bench-mem-{}/instances/i{i}",
                                i % 100
                            ))
                            .json(&registration()),
                        )
                        .await?;
                    }
                    Side::Etcd => {
                        let lease = ok_json(
                            http.post(format!("{url}/v3/lease/grant"))
                                .json(&json!({"TTL": 3600})),
                        )
                        .await?;
                        let id = lease["ID"].as_str().context("lease ID")?.to_owned();
                        ok_json(http.post(format!("{url}/v3/kv/put")).json(&json!({
                            "key": b64(&format!("bench-mem-{}/i{i}", i % 100)),
                            "value": b64(&registration().to_string()),
                            "lease": id,
                        })))
                        .await?;
                    }
                }
                i += workers;
            }
            anyhow::Ok(())
        });
    }
    while let Some(joined) = tasks.join_next().await {
        joined.context("filler panicked")??;
    }
    let fill_seconds = started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let full_rss_kib = rss_kib(pid)?;
    Ok(Memory {
        instances: count,
        empty_rss_kib,
        full_rss_kib,
        bytes_per_instance: (full_rss_kib.saturating_sub(empty_rss_kib) * 1024) as f64
            / count as f64,
        fill_seconds,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fsync_probe_counts_fsyncs() {
        let f = fsync_rate(Duration::from_millis(200)).unwrap();
        assert!(
            f.fsyncs > 0 && f.per_sec > 0.0 && f.p50_us <= f.p99_us,
            "{f:?}"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn axum_ceiling_serves() {
        let config = LoadConfig {
            concurrency: 4,
            warmup: Duration::from_millis(50),
            duration: Duration::from_millis(200),
            op_timeout: Duration::from_secs(5),
        };
        let m = axum_ceiling(config, "/service").await.unwrap();
        assert!(m.ops > 0 && m.errors == 0, "{m:?}");
    }

    #[test]
    fn rss_of_self() {
        assert!(rss_kib(std::process::id()).unwrap() > 0);
    }
}

/// The bootstrap secret of the ACL overhead measurement's cluster.
const ACL_SECRET: &str = "bench-acl-bootstrap-secret-0001";

/// One workload run on both clusters, `rounds` times each.
#[derive(Debug, Clone, Serialize)]
pub struct Pair {
    pub workload: String,
    pub concurrency: usize,
    /// ops/s of each round without the feature, then with.
    pub off: Vec<f64>,
    pub on: Vec<f64>,
    pub off_median: f64,
    pub on_median: f64,
    /// Each round's on/off: the two runs of a round are next to each other in time, so
    /// the machine's drift over the measurement cancels out.
    pub round_ratios: Vec<f64>,
    /// The median of `round_ratios`: 1.0 is no cost.
    pub ratio: f64,
}

/// A feature on against off, measured side by side (`--extra acl-overhead`,
/// `--extra tls-overhead`).
#[derive(Debug, Clone, Serialize)]
pub struct Overhead {
    /// What is on in the second cluster ("ACLs", "TLS").
    pub feature: String,
    /// How the second cluster is set up.
    pub setup: String,
    /// The target: on/off at least this.
    pub min_ratio: f64,
    pub rounds: usize,
    pub pairs: Vec<Pair>,
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted.get(sorted.len() / 2).copied().unwrap_or(0.0)
}

impl Overhead {
    /// A few lines after the table.
    pub fn text(&self) -> String {
        let mut out = format!(
            "\n{} overhead (median of {} alternating rounds; {}):\n",
            self.feature, self.rounds, self.setup
        );
        for p in &self.pairs {
            out.push_str(&format!(
                "  {}-{}: median off {:.0} ops/s, on {:.0} ops/s; on/off per round {:?}, median {:.3} (rounds off {:?}, on {:?})\n",
                p.workload,
                p.concurrency,
                p.off_median,
                p.on_median,
                p.round_ratios
                    .iter()
                    .map(|r| (r * 1000.0).round() / 1000.0)
                    .collect::<Vec<_>>(),
                p.ratio,
                p.off.iter().map(|v| v.round()).collect::<Vec<_>>(),
                p.on.iter().map(|v| v.round()).collect::<Vec<_>>(),
            ));
        }
        out
    }

    /// "within x% of the run without", per workload.
    pub fn targets(&self) -> Vec<crate::report::TargetCheck> {
        self.pairs
            .iter()
            .map(|p| crate::report::TargetCheck {
                target: format!(
                    "{}-{} with {} >= {:.2}x without",
                    p.workload, p.concurrency, self.feature, self.min_ratio
                ),
                measured: format!(
                    "{:.3}x ({:.0} vs {:.0} ops/s)",
                    p.ratio, p.on_median, p.off_median
                ),
                pass: Some(p.ratio >= self.min_ratio),
            })
            .collect()
    }
}

/// Runs heartbeat-64 and resolve-linearizable-64 on `off` and `on` in turn, `rounds`
/// times, the order alternating between rounds.
async fn side_by_side(
    feature: &str,
    [off, on]: [&crate::workloads::Target; 2],
    base: LoadConfig,
    rounds: usize,
) -> Result<Vec<Pair>> {
    use crate::workloads::{self, Workload};
    let mut pairs = Vec::new();
    for workload in [Workload::Heartbeat, Workload::ResolveLinearizable] {
        let config = LoadConfig {
            concurrency: 64,
            ..base
        };
        let (mut off_ops, mut on_ops) = (Vec::new(), Vec::new());
        for round in 0..rounds {
            let order = if round % 2 == 0 {
                [false, true]
            } else {
                [true, false]
            };
            for with in order {
                let target = if with { on } else { off };
                let label = if with { "on" } else { "off" };
                let m = workloads::run(workload, target, config).await?;
                ensure!(
                    m.errors == 0,
                    "{} with {feature} {label}: {} errors ({:?})",
                    workload.name(),
                    m.errors,
                    m.error_samples
                );
                eprintln!(
                    "  {}-64 {feature} {label}: {:.0} ops/s",
                    workload.name(),
                    m.ops_per_sec
                );
                if with {
                    on_ops.push(m.ops_per_sec);
                } else {
                    off_ops.push(m.ops_per_sec);
                }
            }
        }
        let (off_median, on_median) = (median(&off_ops), median(&on_ops));
        let round_ratios: Vec<f64> = off_ops
            .iter()
            .zip(&on_ops)
            .map(|(off, on)| if *off > 0.0 { on / off } else { 0.0 })
            .collect();
        pairs.push(Pair {
            workload: workload.name().to_owned(),
            concurrency: 64,
            off: off_ops,
            on: on_ops,
            off_median,
            on_median,
            ratio: median(&round_ratios),
            round_ratios,
        });
    }
    Ok(pairs)
}

/// The leader's target of a registry, with `token` and its CA.
fn registry_target(
    registry: &crate::systems::Registry,
    leader: usize,
    token: Option<String>,
) -> crate::workloads::Target {
    crate::workloads::Target {
        side: Side::Registry,
        urls: registry.urls().to_vec(),
        leader,
        spread: false,
        token,
        ca_pem: registry.ca_pem().map(str::to_owned),
    }
}

/// Starts a registry with ACLs off and one with ACLs on (anonymous callers may only read
/// the cluster status, which the harness polls), makes a scoped token on the second, and
/// compares them [`side_by_side`].
pub async fn acl_overhead(
    bin: &std::path::Path,
    nodes: usize,
    base: LoadConfig,
    rounds: usize,
) -> Result<Overhead> {
    use crate::systems::Registry;
    let mut off = Registry::start(bin, nodes).await?;
    let acl_flags = [
        "--acl",
        "--acl-anonymous",
        "cluster:read",
        "--acl-bootstrap-token",
        ACL_SECRET,
    ];
    let mut on = Registry::start_with(bin, nodes, &acl_flags).await?;
    let off_leader = off.wait_for_leader(None).await?;
    let on_leader = on.wait_for_leader(None).await?;
    let token_rules = "service:write:bench-, service:read:bench-";
    let admin = load::worker_client_as(Duration::from_secs(10), Some(ACL_SECRET), None)?;
    let url = on.urls()[on_leader].clone();
    let deadline = Instant::now() + Duration::from_secs(20);
    let token = loop {
        let made = admin
            .post(format!("{url}/v1/acl/tokens"))
            .json(&json!({"description": "bench", "rules": [
                {"resource": "service", "prefix": "bench-", "access": "write"},
                {"resource": "service", "prefix": "bench-", "access": "read"},
            ]}))
            .send()
            .await;
        match made {
            Ok(r) if r.status().is_success() => {
                let body: Value = r.json().await?;
                break body["secret"]
                    .as_str()
                    .context("a token without a secret")?
                    .to_owned();
            }
            // The leader bootstraps with the configured secret at its first tick.
            _ if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(100)).await,
            Ok(r) => bail!("cannot make the bench token: {}", r.status()),
            Err(e) => bail!("cannot make the bench token: {e}"),
        }
    };
    let pairs = side_by_side(
        "ACLs",
        [
            &registry_target(&off, off_leader, None),
            &registry_target(&on, on_leader, Some(token)),
        ],
        base,
        rounds,
    )
    .await?;
    drop((off, on));
    Ok(Overhead {
        feature: "ACLs".to_owned(),
        setup: format!("ACLs on with a token of rules {token_rules}"),
        min_ratio: 0.95,
        rounds,
        pairs,
    })
}

/// Starts a registry over plain HTTP and one serving TLS (a CA and node certificates made
/// here; peers call each other over https too) and compares them [`side_by_side`]. Each
/// worker keeps one connection alive, as clients do, so handshakes are rare; the cost
/// measured is that of encrypting requests and answers (and of Raft over TLS).
pub async fn tls_overhead(
    bin: &std::path::Path,
    nodes: usize,
    base: LoadConfig,
    rounds: usize,
) -> Result<Overhead> {
    use crate::systems::Registry;
    let mut plain = Registry::start(bin, nodes).await?;
    let mut tls = Registry::start_tls(bin, nodes, &[]).await?;
    let plain_leader = plain.wait_for_leader(None).await?;
    let tls_leader = tls.wait_for_leader(None).await?;
    let pairs = side_by_side(
        "TLS",
        [
            &registry_target(&plain, plain_leader, None),
            &registry_target(&tls, tls_leader, None),
        ],
        base,
        rounds,
    )
    .await?;
    drop((plain, tls));
    Ok(Overhead {
        feature: "TLS".to_owned(),
        setup: "HTTPS (TLS 1.3, ECDSA P-256, kept-alive connections) against plain HTTP".to_owned(),
        min_ratio: 0.70,
        rounds,
        pairs,
    })
}
