//! Active checks at scale (`--extra checks`): a cluster probing many checks at a fixed
//! interval, against targets this process serves on 127.0.0.1 (an HTTP server and a TCP
//! listener). Reports, over a steady window: each server's CPU, the probe lag (actual
//! start against schedule, from the servers' `registry_check_probe_lag_seconds`
//! histograms), probes per second, and Raft writes per second (the leader's last log index
//! over the window, which should not move: only transitions are written).

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use serde::Serialize;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::time::Instant;

use crate::load;
use crate::systems::Registry;

/// Workers registering the instances.
const REGISTER_WORKERS: usize = 64;
/// Instances per service.
const PER_SERVICE: usize = 10;

/// What the run measured.
#[derive(Debug, Clone, Serialize)]
pub struct ChecksAtScale {
    pub checks: usize,
    pub interval_s: u64,
    pub window_s: f64,
    pub register_s: f64,
    /// Seconds from the last registration until every instance was passing.
    pub all_passing_s: f64,
    /// Per server: node index, checks owned, CPU (% of one core), probes per second.
    pub servers: Vec<ServerFigures>,
    /// Probe lag quantiles over all servers (upper bounds of histogram buckets, ms).
    pub lag_p50_ms: f64,
    pub lag_p99_ms: f64,
    pub raft_writes_per_s: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ServerFigures {
    pub node: usize,
    pub owned: u64,
    pub cpu_percent: f64,
    pub probes_per_s: f64,
}

impl ChecksAtScale {
    pub fn text(&self) -> String {
        let mut out = format!(
            "\nActive checks at scale: {} checks (half HTTP, half TCP) every {} s on {} servers; registered in {:.1} s, all passing {:.1} s later; steady window {:.0} s\n",
            self.checks,
            self.interval_s,
            self.servers.len(),
            self.register_s,
            self.all_passing_s,
            self.window_s
        );
        out.push_str(
            "| server | checks owned | CPU (% of a core) | probes/s |\n|---|---|---|---|\n",
        );
        for s in &self.servers {
            out.push_str(&format!(
                "| {} | {} | {:.1} | {:.0} |\n",
                s.node + 1,
                s.owned,
                s.cpu_percent,
                s.probes_per_s
            ));
        }
        out.push_str(&format!(
            "probe lag p50 <= {} ms, p99 <= {} ms (histogram bucket bounds); Raft writes in the window: {:.2}/s\n",
            self.lag_p50_ms, self.lag_p99_ms, self.raft_writes_per_s
        ));
        out
    }
}

/// Serves `HTTP/1.1 200` to every request (keep-alive) and accepts TCP connections.
async fn start_targets() -> Result<(u16, u16)> {
    let http = TcpListener::bind("127.0.0.1:0").await?;
    let http_port = http.local_addr()?.port();
    let app = axum::Router::new().route("/health/{n}", axum::routing::get(|| async { "ok" }));
    tokio::spawn(async move {
        let _ = axum::serve(http, app).await;
    });
    let tcp = TcpListener::bind("127.0.0.1:0").await?;
    let tcp_port = tcp.local_addr()?.port();
    tokio::spawn(async move {
        while let Ok((conn, _)) = tcp.accept().await {
            drop(conn);
        }
    });
    Ok((http_port, tcp_port))
}

/// One node's figures read from `/metrics` and `/proc`.
#[derive(Debug, Clone, Default)]
struct Sample {
    cpu_ticks: u64,
    probes: f64,
    owned: f64,
    last_log_index: f64,
    /// `le` bound (seconds) -> cumulative count.
    lag_buckets: BTreeMap<u64, f64>,
}

/// CPU time (user + system) of process `pid` so far, in clock ticks (USER_HZ: 100 a
/// second on Linux x86 and arm), from `/proc/<pid>/stat`.
pub fn cpu_ticks(pid: u32) -> Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which is in parentheses and may hold spaces).
    let rest = stat.rsplit_once(") ").context("/proc stat format")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11).context("utime")?.parse()?;
    let stime: u64 = fields.get(12).context("stime")?.parse()?;
    Ok(utime + stime)
}

async fn sample(http: &reqwest::Client, url: &str, pid: u32) -> Result<Sample> {
    let text = http
        .get(format!("{url}/metrics"))
        .send()
        .await?
        .text()
        .await?;
    let mut s = Sample {
        cpu_ticks: cpu_ticks(pid)?,
        ..Sample::default()
    };
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((name, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(value) = value.parse::<f64>() else {
            continue;
        };
        if name.starts_with("registry_check_probes_total") {
            s.probes += value;
        } else if name == "registry_checks_owned" {
            s.owned = value;
        } else if name == "registry_raft_last_log_index" {
            s.last_log_index = value;
        } else if let Some(labels) = name.strip_prefix("registry_check_probe_lag_seconds_bucket{") {
            let le = labels
                .split(',')
                .find_map(|l| l.strip_prefix("le=\""))
                .map(|l| l.trim_end_matches("\"}").trim_end_matches('"'));
            // Nanoseconds as the key, so the map is ordered; +Inf sorts last.
            let key = match le {
                Some("+Inf") => u64::MAX,
                Some(le) => (le.parse::<f64>().unwrap_or(f64::MAX) * 1e9) as u64,
                None => continue,
            };
            *s.lag_buckets.entry(key).or_default() += value;
        }
    }
    Ok(s)
}

/// The bucket bound (ms) at quantile `q` of the counts in `deltas` (cumulative).
fn quantile_ms(deltas: &BTreeMap<u64, f64>, q: f64) -> f64 {
    let total = deltas.get(&u64::MAX).copied().unwrap_or(0.0);
    if total <= 0.0 {
        return 0.0;
    }
    for (le, count) in deltas {
        if *count >= total * q {
            return if *le == u64::MAX {
                f64::INFINITY
            } else {
                *le as f64 / 1e6
            };
        }
    }
    f64::INFINITY
}

/// Runs the measurement on a fresh `nodes`-server cluster of `bin`.
pub async fn checks_at_scale(
    bin: &std::path::Path,
    nodes: usize,
    checks: usize,
    interval_s: u64,
    window: Duration,
) -> Result<ChecksAtScale> {
    let mut registry = Registry::start(bin, nodes).await?;
    let leader = registry.wait_for_leader(None).await?;
    let urls = registry.urls().to_vec();
    let (http_port, tcp_port) = start_targets().await?;
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..REGISTER_WORKERS {
        let url = urls[leader].clone();
        tasks.spawn(async move {
            let http = load::worker_client(Duration::from_secs(30))?;
            let mut i = w;
            while i < checks {
                let check = if i % 2 == 0 {
                    json!({"name": "http", "http": format!("http://127.0.0.1:{http_port}/health/{i}"),
                           "interval": format!("{interval_s}s")})
                } else {
                    json!({"name": "tcp", "tcp": format!("127.0.0.1:{tcp_port}"),
                           "interval": format!("{interval_s}s")})
                };
                let body = json!({"address": "127.0.0.1", "port": 9000, "checks": [check]});
                let response = http
                    .put(format!(
                        "{url}/v1/services/bench-checks-{}/instances/i{i}",
                        i / PER_SERVICE
                    ))
                    .json(&body)
                    .send()
                    .await?;
                ensure!(response.status().is_success(), "register: {}", response.status());
                i += REGISTER_WORKERS;
            }
            anyhow::Ok(())
        });
    }
    while let Some(joined) = tasks.join_next().await {
        joined.context("a registering worker panicked")??;
    }
    let register_s = started.elapsed().as_secs_f64();
    let http = load::worker_client(Duration::from_secs(30))?;
    let registered = Instant::now();
    loop {
        let list: Value = http
            .get(format!("{}/v1/services?stale", urls[leader]))
            .send()
            .await?
            .json()
            .await?;
        let healthy: u64 = list["services"].as_array().map_or(0, |all| {
            all.iter().filter_map(|s| s["healthy"].as_u64()).sum()
        });
        if healthy as usize >= checks {
            break;
        }
        ensure!(
            registered.elapsed() < Duration::from_secs(300),
            "only {healthy} of {checks} instances passing after 5 minutes"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let all_passing_s = registered.elapsed().as_secs_f64();
    // One interval for the schedule to settle into its steady rhythm.
    tokio::time::sleep(Duration::from_secs(interval_s)).await;
    let pids: Vec<u32> = (0..nodes)
        .map(|n| registry.pid(n).context("a server's pid"))
        .collect::<Result<_>>()?;
    let mut before = Vec::new();
    for n in 0..nodes {
        before.push(sample(&http, &urls[n], pids[n]).await?);
    }
    let window_started = Instant::now();
    tokio::time::sleep(window).await;
    let mut after = Vec::new();
    for n in 0..nodes {
        after.push(sample(&http, &urls[n], pids[n]).await?);
    }
    let window_s = window_started.elapsed().as_secs_f64();
    // /proc reports CPU time in USER_HZ ticks, which Linux fixes at 100 on x86 and arm.
    let ticks_per_s = 100.0;
    let mut lag = BTreeMap::new();
    let mut servers = Vec::new();
    for n in 0..nodes {
        let (b, a) = (&before[n], &after[n]);
        for (le, count) in &a.lag_buckets {
            *lag.entry(*le).or_insert(0.0) += count - b.lag_buckets.get(le).copied().unwrap_or(0.0);
        }
        servers.push(ServerFigures {
            node: n,
            owned: a.owned as u64,
            cpu_percent: (a.cpu_ticks - b.cpu_ticks) as f64 / ticks_per_s / window_s * 100.0,
            probes_per_s: (a.probes - b.probes) / window_s,
        });
    }
    let writes = after[leader].last_log_index - before[leader].last_log_index;
    Ok(ChecksAtScale {
        checks,
        interval_s,
        window_s,
        register_s,
        all_passing_s,
        servers,
        lag_p50_ms: quantile_ms(&lag, 0.50),
        lag_p99_ms: quantile_ms(&lag, 0.99),
        raft_writes_per_s: writes / window_s,
    })
}
