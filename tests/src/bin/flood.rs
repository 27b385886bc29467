//! `flood`: floods the leader of a 3-node cluster (processes on 127.0.0.1, the server's
//! default limits) for a while with each of 5,000 concurrent blocking queries, 2,000 idle
//! or byte-at-a-time connections, and writes from 2,000 concurrent writers, while 100
//! instances heartbeat on their own connections; prints, per flood, the heartbeat success
//! rate and p99, whether the leader changed, how many leases expired, the leader's peak
//! RSS and how the flood was refused, and how soon heartbeats were back to normal after.
//!
//! `scripts/flood.sh [SECONDS]` builds and runs it (default 30 s per flood).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context as _, Result};
use tests::Cluster;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::Instant;

const INSTANCES: usize = 100;

#[derive(Default)]
struct Beats {
    ok: AtomicU64,
    failed: AtomicU64,
    latencies_us: Mutex<Vec<u64>>,
}

impl Beats {
    fn reset(&self) -> (u64, u64, u64) {
        let ok = self.ok.swap(0, Ordering::Relaxed);
        let failed = self.failed.swap(0, Ordering::Relaxed);
        let mut latencies =
            std::mem::take(&mut *self.latencies_us.lock().unwrap_or_else(|e| e.into_inner()));
        latencies.sort_unstable();
        let p99 = latencies
            .get(latencies.len().saturating_sub(1) * 99 / 100)
            .copied()
            .unwrap_or(0);
        (ok, failed, p99)
    }
}

fn rss_kb(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(field))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

async fn heartbeaters(addr: &str, beats: Arc<Beats>) -> Result<()> {
    for i in 0..INSTANCES {
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(1)
            .timeout(Duration::from_secs(5))
            .build()?;
        let base = format!("http://{addr}/v1/services/flood-hb/instances/i{i}");
        http.put(&base)
            .json(&serde_json::json!({"address": "127.0.0.1", "port": 9000 + i, "ttl": "5s"}))
            .send()
            .await?
            .error_for_status()?;
        let beats = beats.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(500));
            loop {
                tick.tick().await;
                let started = Instant::now();
                let answer = http.put(format!("{base}/heartbeat")).send().await;
                match answer {
                    Ok(r) if r.status().is_success() => {
                        beats.ok.fetch_add(1, Ordering::Relaxed);
                        let us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
                        beats
                            .latencies_us
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .push(us);
                    }
                    _ => {
                        beats.failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        });
    }
    Ok(())
}

/// Outcome counts of the flooding requests, by status (0: transport error).
#[derive(Default)]
struct Outcomes(Mutex<std::collections::BTreeMap<u16, u64>>);

impl Outcomes {
    fn add(&self, status: u16) {
        *self
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(status)
            .or_default() += 1;
    }
    fn take(&self) -> String {
        let map = std::mem::take(&mut *self.0.lock().unwrap_or_else(|e| e.into_inner()));
        map.iter()
            .map(|(s, n)| {
                format!(
                    "{}: {n}",
                    match s {
                        0 => "error".to_owned(),
                        1 => "idle connections closed by the server".to_owned(),
                        2 => "byte-at-a-time connections cut off".to_owned(),
                        _ => s.to_string(),
                    }
                )
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
}

async fn blocking_flood(addr: String, stop: Arc<AtomicBool>, outcomes: Arc<Outcomes>) {
    let index = reqwest::get(format!("http://{addr}/v1/services/flood-watch"))
        .await
        .ok()
        .and_then(|r| {
            r.headers()
                .get(api_spec::INDEX_HEADER)?
                .to_str()
                .ok()?
                .parse::<u64>()
                .ok()
        })
        .unwrap_or(1);
    let url = format!("http://{addr}/v1/services/flood-watch?index={index}&wait=5s");
    let tasks: Vec<_> = (0..5000)
        .map(|_| {
            let (url, stop, outcomes) = (url.clone(), stop.clone(), outcomes.clone());
            tokio::spawn(async move {
                let Ok(http) = reqwest::Client::builder()
                    .pool_max_idle_per_host(1)
                    .timeout(Duration::from_secs(30))
                    .build()
                else {
                    return;
                };
                while !stop.load(Ordering::Relaxed) {
                    match http.get(&url).send().await {
                        Ok(r) => {
                            outcomes.add(r.status().as_u16());
                            if r.status() == 429 {
                                tokio::time::sleep(Duration::from_secs(1)).await;
                            }
                        }
                        Err(_) => {
                            outcomes.add(0);
                            tokio::time::sleep(Duration::from_millis(200)).await;
                        }
                    }
                }
            })
        })
        .collect();
    while !stop.load(Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for task in tasks {
        task.abort();
    }
}

async fn connection_flood(addr: String, stop: Arc<AtomicBool>, outcomes: Arc<Outcomes>) {
    let tasks: Vec<_> = (0..2000)
        .map(|n| {
            let (addr, stop, outcomes) = (addr.clone(), stop.clone(), outcomes.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let Ok(mut tcp) = TcpStream::connect(&addr).await else {
                        outcomes.add(0);
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        continue;
                    };
                    if n % 2 == 0 {
                        // Idle: hold it until the server closes it.
                        let mut buf = [0u8; 256];
                        let _ = tokio::io::AsyncReadExt::read(&mut tcp, &mut buf).await;
                        outcomes.add(1);
                    } else {
                        // A byte at a time, until the server cuts it off.
                        for byte in b"GET /v1/services HTTP/1.1\r\nHost: x\r\n".iter().cycle() {
                            if tcp.write_all(&[*byte]).await.is_err()
                                || stop.load(Ordering::Relaxed)
                            {
                                break;
                            }
                            tokio::time::sleep(Duration::from_millis(200)).await;
                        }
                        outcomes.add(2);
                    }
                }
            })
        })
        .collect();
    while !stop.load(Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for task in tasks {
        task.abort();
    }
}

async fn write_flood(addr: String, stop: Arc<AtomicBool>, outcomes: Arc<Outcomes>) {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build();
    let Ok(http) = http else { return };
    let tasks: Vec<_> =
        (0..2000)
            .map(|w| {
                let (addr, stop, outcomes, http) =
                    (addr.clone(), stop.clone(), outcomes.clone(), http.clone());
                tokio::spawn(async move {
                    let mut n = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        n += 1;
                        let answer = http
                        .put(format!("http://{addr}/v1/services/flood-w/instances/w{w}-{}", n % 10))
                        .json(&serde_json::json!({"address": "127.0.0.1", "port": 1, "ttl": "1h"}))
                        .send()
                        .await;
                        match answer {
                            Ok(r) => {
                                let status = r.status().as_u16();
                                outcomes.add(status);
                                if status == 503 {
                                    tokio::time::sleep(Duration::from_millis(200)).await;
                                }
                            }
                            Err(_) => outcomes.add(0),
                        }
                    }
                })
            })
            .collect();
    while !stop.load(Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for task in tasks {
        task.abort();
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let seconds: u64 = std::env::args()
        .nth(1)
        .map_or(Ok(30), |s| s.parse())
        .context("SECONDS")?;
    {
        use nix::sys::resource::{getrlimit, setrlimit, Resource};
        let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
    }
    let cluster = Cluster::start(3, &[]).await?;
    let leader = cluster.leader_id().await?;
    let addr = cluster.addr(leader);
    let pid = cluster.pid(leader).context("leader pid")?;
    let beats = Arc::new(Beats::default());
    heartbeaters(&addr, beats.clone()).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (ok, failed, p99) = beats.reset();
    println!(
        "baseline: {ok} heartbeats ok, {failed} failed, p99 {:.1} ms; leader RSS {} MiB",
        p99 as f64 / 1e3,
        rss_kb(pid, "VmRSS:") / 1024
    );
    type Flood = fn(
        String,
        Arc<AtomicBool>,
        Arc<Outcomes>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;
    let floods: [(&str, Flood); 3] = [
        ("5,000 blocking queries", |a, s, o| {
            Box::pin(blocking_flood(a, s, o))
        }),
        ("2,000 idle or byte-at-a-time connections", |a, s, o| {
            Box::pin(connection_flood(a, s, o))
        }),
        ("writes from 2,000 writers", |a, s, o| {
            Box::pin(write_flood(a, s, o))
        }),
    ];
    for (name, flood) in floods {
        let term = cluster.status(leader).await?.term;
        let stop = Arc::new(AtomicBool::new(false));
        let outcomes = Arc::new(Outcomes::default());
        beats.reset();
        let running = tokio::spawn(flood(addr.clone(), stop.clone(), outcomes.clone()));
        let mut peak_rss = 0;
        let mut peak = api_spec::NodeLimits::default();
        let probe = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()?;
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(seconds) {
            peak_rss = peak_rss.max(rss_kb(pid, "VmRSS:"));
            let limits = async {
                let status: api_spec::ClusterStatus = probe
                    .get(format!("http://{addr}/v1/cluster"))
                    .send()
                    .await?
                    .json()
                    .await?;
                Ok::<_, reqwest::Error>(status.limits)
            };
            if let Ok(l) = limits.await {
                peak.connections = peak.connections.max(l.connections);
                peak.blocking_queries = peak.blocking_queries.max(l.blocking_queries);
                peak.queued_writes = peak.queued_writes.max(l.queued_writes);
                peak.max_connections = l.max_connections;
                peak.max_blocking_queries = l.max_blocking_queries;
                peak.max_queued_writes = l.max_queued_writes;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        let (ok, failed, p99) = beats.reset();
        stop.store(true, Ordering::Relaxed);
        let _ = running.await;
        let ended = Instant::now();
        // Back to normal: the first half second in which every heartbeat succeeds.
        let mut recovered = None;
        for _ in 0..40 {
            tokio::time::sleep(Duration::from_millis(250)).await;
            let (ok, failed, _) = beats.reset();
            if ok > 0 && failed == 0 {
                recovered = Some(ended.elapsed());
                break;
            }
        }
        let status = cluster.status(leader).await?;
        let service: api_spec::ServiceInstances =
            reqwest::get(format!("http://{addr}/v1/services/flood-hb?status=any"))
                .await?
                .json()
                .await?;
        let passing = service
            .instances
            .iter()
            .filter(|i| i.status == api_spec::InstanceStatus::Passing)
            .count();
        println!("{name} for {seconds} s:");
        println!(
            "  heartbeats: {ok} ok, {failed} failed ({:.2}% ok), p99 {:.1} ms",
            100.0 * ok as f64 / (ok + failed).max(1) as f64,
            p99 as f64 / 1e3
        );
        println!(
            "  leader: {} (term {term} -> {}); instances passing {passing}/{INSTANCES}; peak RSS {} MiB",
            if status.leader == Some(leader) && status.term == term { "unchanged" } else { "CHANGED" },
            status.term,
            peak_rss / 1024
        );
        println!("  flood answers: {}", outcomes.take());
        println!(
            "  leader's peaks: {} connections (of {}), {} blocking queries (of {}), {} queued writes (of {})",
            peak.connections,
            peak.max_connections,
            peak.blocking_queries,
            peak.max_blocking_queries,
            peak.queued_writes,
            peak.max_queued_writes
        );
        println!(
            "  back to normal: {}",
            recovered.map_or("not within 10 s".to_owned(), |d| format!(
                "{} ms after the flood",
                d.as_millis()
            ))
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    Ok(())
}
