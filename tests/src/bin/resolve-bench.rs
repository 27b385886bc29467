//! `resolve-bench`: the Rust client's discovery figures against a real single-node
//! registry it starts itself.
//!
//! - **cached resolve latency**: `client.resolve(service)` (cache, locality, balancer) and
//!   `client.endpoints(service, filter)` on a warm cache, timed in batches of 1,000 calls;
//!   prints the median, p99 and min per-call time over the batches (ns).
//! - **change propagation**: how long after a registration change is sent the client's
//!   cache shows it (the watch's blocking query returns), p50/p99 over N changes.
//!
//! usage: resolve-bench [CHANGES]   (build the server first; `REGISTRY_SERVER_BIN` picks it)

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use registry_client::{Client, RegisterRequest, ServiceQuery};
use tests::Cluster;

const SERVICE: &str = "bench";
const BATCH: u32 = 1_000;
const BATCHES: usize = 2_000;

fn request(version: u64) -> RegisterRequest {
    RegisterRequest {
        address: "10.0.0.1".into(),
        port: 8080,
        tags: vec!["bench".into()],
        meta: [("version".to_owned(), version.to_string())].into(),
        zone: None,
        region: None,
        weight: None,
        ttl: Some("1h".into()),
        deregister_after: None,
        lease: None,
        checks: Vec::new(),
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted
        .get(((sorted.len() as f64 - 1.0) * p).round() as usize)
        .copied()
        .unwrap_or(f64::NAN)
}

#[tokio::main]
async fn main() -> Result<()> {
    let changes: usize = std::env::args()
        .nth(1)
        .map_or(Ok(200), |n| n.parse())
        .context("usage: resolve-bench [CHANGES]")?;
    let cluster = Cluster::start_single(&[]).await?;
    let client = Client::new([cluster.addr(1)])?;
    for i in 0..10 {
        client
            .register(SERVICE, &format!("i{i}"), &request(0))
            .await?;
    }
    let filter = ServiceQuery::default();
    let warm = client.endpoints(SERVICE, &filter).await?;
    anyhow::ensure!(warm.instances.len() == 10, "expected 10 instances");

    let mut per_call = Vec::with_capacity(BATCHES);
    for _ in 0..BATCHES {
        let started = Instant::now();
        for _ in 0..BATCH {
            let picked = client.resolve(SERVICE).await?;
            std::hint::black_box(picked);
        }
        per_call.push(started.elapsed().as_nanos() as f64 / f64::from(BATCH));
    }
    per_call.sort_by(f64::total_cmp);
    println!(
        "resolve (cache + locality + smooth weighted round robin) over {} calls: median {:.0} ns, p99 {:.0} ns, min {:.0} ns per call",
        BATCHES as u32 * BATCH,
        percentile(&per_call, 0.5),
        percentile(&per_call, 0.99),
        per_call.first().copied().unwrap_or(f64::NAN),
    );

    let mut per_call = Vec::with_capacity(BATCHES);
    for _ in 0..BATCHES / 4 {
        let started = Instant::now();
        for _ in 0..BATCH {
            std::hint::black_box(client.endpoints(SERVICE, &filter).await?);
        }
        per_call.push(started.elapsed().as_nanos() as f64 / f64::from(BATCH));
    }
    per_call.sort_by(f64::total_cmp);
    println!(
        "endpoints (cache, 10 instances cloned) : median {:.0} ns, p99 {:.0} ns per call",
        percentile(&per_call, 0.5),
        percentile(&per_call, 0.99),
    );

    let writer = Client::new([cluster.addr(1)])?;
    let mut delays = Vec::with_capacity(changes);
    for version in 1..=changes as u64 {
        let sent = Instant::now();
        let index = writer
            .register(SERVICE, "i0", &request(version))
            .await?
            .index
            .context("no index on the registration")?;
        tokio::time::timeout(Duration::from_secs(5), client.changed(SERVICE, index - 1))
            .await
            .context("the change never reached the client")??;
        delays.push(sent.elapsed().as_secs_f64() * 1e3);
    }
    delays.sort_by(f64::total_cmp);
    println!(
        "registration change -> client cache, {changes} changes: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        percentile(&delays, 0.5),
        percentile(&delays, 0.99),
        delays.last().copied().unwrap_or(f64::NAN),
    );
    cluster.stop_all().await?;
    Ok(())
}
