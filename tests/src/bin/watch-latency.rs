//! `watch-latency`: how long after a change do waiting blocking queries return?
//!
//! Opens N blocking queries (`GET /v1/services/{service}?index=N&wait=60s`, one
//! connection each) against a running registry, waits until they are all parked, makes
//! one change to the service, and prints p50/p99/max of the time from sending that change
//! to each watcher's return. Used by `scripts/measure-catalog.sh`.
//!
//! usage: watch-latency ADDR [WATCHERS] [SERVICE]

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

#[tokio::main]
async fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let addr = args
        .next()
        .context("usage: watch-latency ADDR [WATCHERS] [SERVICE]")?;
    let watchers: usize = args
        .next()
        .map_or(Ok(1000), |n| n.parse())
        .context("WATCHERS")?;
    let service = args.next().unwrap_or_else(|| "watched".to_owned());
    let base = format!("http://{addr}");
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(watchers + 16)
        .build()?;
    let register = |id: String| {
        let url = format!("{base}/v1/services/{service}/instances/{id}");
        let body = serde_json::json!({"address": "10.0.0.1", "port": 8080, "ttl": "1h"});
        http.put(url).json(&body).send()
    };
    register("seed".into()).await?.error_for_status()?;
    let answer = http
        .get(format!("{base}/v1/services/{service}"))
        .send()
        .await?
        .error_for_status()?;
    let index: u64 = answer
        .headers()
        .get("x-registry-index")
        .context("no X-Registry-Index")?
        .to_str()?
        .parse()?;

    let url = format!("{base}/v1/services/{service}?index={index}&wait=60s");
    let tasks: Vec<_> = (0..watchers)
        .map(|_| {
            let (http, url) = (http.clone(), url.clone());
            tokio::spawn(async move {
                let answer = http.get(url).send().await?.error_for_status()?;
                let returned = Instant::now();
                answer.bytes().await?;
                anyhow::Ok(returned)
            })
        })
        .collect();
    // Give every watcher time to connect and park on the server.
    tokio::time::sleep(Duration::from_secs(3)).await;
    if tasks.iter().any(|t| t.is_finished()) {
        bail!("a watcher returned before the change: the index did not hold it");
    }
    let sent = Instant::now();
    register(format!("change-{}", std::process::id()))
        .await?
        .error_for_status()?;
    let acked = sent.elapsed();

    let mut latencies = Vec::with_capacity(watchers);
    for task in tasks {
        latencies.push(task.await??.saturating_duration_since(sent));
    }
    latencies.sort();
    let pick = |q: f64| {
        latencies[((latencies.len() as f64 * q).ceil() as usize).clamp(1, latencies.len()) - 1]
    };
    println!(
        "{watchers} watchers: change acknowledged after {:.1} ms; watchers returned p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms after it was sent",
        acked.as_secs_f64() * 1e3,
        pick(0.50).as_secs_f64() * 1e3,
        pick(0.99).as_secs_f64() * 1e3,
        pick(1.0).as_secs_f64() * 1e3,
    );
    Ok(())
}
