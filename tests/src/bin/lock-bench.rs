//! `lock-bench`: lock throughput and handoff latency against a running registry.
//!
//! - **uncontended**: C clients, each with a lease of its own, loop acquire+release on a
//!   lock of their own for the given time; prints cycles per second.
//! - **contended**: C clients loop acquire (waiting in line) + release on one lock; the
//!   handoff latency is the time from sending a release to the next holder receiving its
//!   grant (consecutive tokens); prints p50/p99/max and grants per second.
//!
//! Clients spread over the given servers (followers forward writes to the leader).
//! Errors are counted and printed, never dropped. Used by `scripts/measure-locks.sh`.
//!
//! usage: lock-bench ADDR[,ADDR...] uncontended|contended CLIENTS SECONDS

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use api_spec::{LeaseInfo, LockGrant};
use serde_json::json;
use uuid::Uuid;

const USAGE: &str = "usage: lock-bench ADDR[,ADDR...] uncontended|contended CLIENTS SECONDS";

/// One grant as a contended client saw it.
#[derive(Debug, Clone, Copy)]
struct Turn {
    token: u64,
    granted: Instant,
    release_sent: Instant,
}

#[tokio::main]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [addrs, mode, clients, secs] = args.as_slice() else {
        bail!(USAGE);
    };
    let addrs: Vec<String> = addrs.split(',').map(|a| format!("http://{a}")).collect();
    let clients: usize = clients.parse().context(USAGE)?;
    let duration = Duration::from_secs(secs.parse().context(USAGE)?);
    match mode.as_str() {
        "uncontended" => uncontended(&addrs, clients, duration).await,
        "contended" => contended(&addrs, clients, duration).await,
        _ => bail!(USAGE),
    }
}

fn client() -> Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .tcp_nodelay(true)
        .build()?)
}

async fn acquire(
    http: &reqwest::Client,
    base: &str,
    name: &str,
    lease: Uuid,
    wait: &str,
) -> Result<LockGrant> {
    let answer = http
        .post(format!("{base}/v1/locks/{name}/acquire"))
        .json(&json!({"lease": lease, "wait": wait, "holder": "lock-bench"}))
        .send()
        .await?;
    if !answer.status().is_success() {
        bail!("acquire: {} {}", answer.status(), answer.text().await?);
    }
    Ok(answer.json().await?)
}

async fn release(http: &reqwest::Client, base: &str, name: &str, token: u64) -> Result<()> {
    let answer = http
        .post(format!("{base}/v1/locks/{name}/release"))
        .json(&json!({ "token": token }))
        .send()
        .await?;
    if !answer.status().is_success() {
        bail!("release: {} {}", answer.status(), answer.text().await?);
    }
    Ok(())
}

/// Creates a lease and keeps it alive until the returned task is aborted.
async fn lease(http: &reqwest::Client, base: &str) -> Result<(Uuid, tokio::task::JoinHandle<()>)> {
    let info: LeaseInfo = http
        .post(format!("{base}/v1/leases"))
        .json(&json!({"ttl": "10s"}))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let id = info.lease;
    let (http, url) = (http.clone(), format!("{base}/v1/leases/{id}/keepalive"));
    let keeper = tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(2)).await;
            let _ = http.put(&url).send().await;
        }
    });
    Ok((id, keeper))
}

async fn uncontended(addrs: &[String], clients: usize, duration: Duration) -> Result<()> {
    let deadline = Instant::now() + duration;
    let mut tasks = Vec::new();
    for i in 0..clients {
        let base = addrs[i % addrs.len()].clone();
        tasks.push(tokio::spawn(async move {
            let http = client()?;
            let (lease, keeper) = lease(&http, &base).await?;
            let name = format!("bench-u-{i}-{}", std::process::id());
            let (mut cycles, mut errors) = (0u64, 0u64);
            while Instant::now() < deadline {
                let cycle = async {
                    let grant = acquire(&http, &base, &name, lease, "0s").await?;
                    release(&http, &base, &name, grant.token).await
                };
                match cycle.await {
                    Ok(()) => cycles += 1,
                    Err(e) => {
                        errors += 1;
                        if errors <= 3 {
                            eprintln!("client {i}: {e:#}");
                        }
                    }
                }
            }
            keeper.abort();
            anyhow::Ok((cycles, errors))
        }));
    }
    let (mut cycles, mut errors) = (0, 0);
    for task in tasks {
        let (c, e) = task.await??;
        cycles += c;
        errors += e;
    }
    let rate = cycles as f64 / duration.as_secs_f64();
    println!(
        "uncontended: {clients} clients, {:.0} acquire+release cycles/s ({cycles} cycles, {errors} errors)",
        rate
    );
    Ok(())
}

async fn contended(addrs: &[String], clients: usize, duration: Duration) -> Result<()> {
    let deadline = Instant::now() + duration;
    let name = format!("bench-c-{}", std::process::id());
    let turns = Arc::new(Mutex::new(Vec::<Turn>::new()));
    let mut tasks = Vec::new();
    for i in 0..clients {
        let base = addrs[i % addrs.len()].clone();
        let (name, turns) = (name.clone(), turns.clone());
        tasks.push(tokio::spawn(async move {
            let http = client()?;
            let (lease, keeper) = lease(&http, &base).await?;
            let mut errors = 0u64;
            while Instant::now() < deadline {
                let grant = match acquire(&http, &base, &name, lease, "20s").await {
                    Ok(g) => g,
                    Err(e) => {
                        errors += 1;
                        if errors <= 3 {
                            eprintln!("client {i}: {e:#}");
                        }
                        continue;
                    }
                };
                let granted = Instant::now();
                let release_sent = Instant::now();
                if let Err(e) = release(&http, &base, &name, grant.token).await {
                    errors += 1;
                    eprintln!("client {i}: {e:#}");
                }
                turns.lock().unwrap_or_else(|e| e.into_inner()).push(Turn {
                    token: grant.token,
                    granted,
                    release_sent,
                });
            }
            keeper.abort();
            anyhow::Ok(errors)
        }));
    }
    let mut errors = 0;
    for task in tasks {
        errors += task.await??;
    }
    let mut turns = turns.lock().unwrap_or_else(|e| e.into_inner()).clone();
    turns.sort_by_key(|t| t.token);
    let mut handoffs: Vec<Duration> = turns
        .windows(2)
        .filter(|w| w[1].granted >= w[0].release_sent)
        .map(|w| w[1].granted - w[0].release_sent)
        .collect();
    handoffs.sort();
    let pct = |p: f64| {
        handoffs
            .get(((handoffs.len() as f64 - 1.0) * p).round() as usize)
            .copied()
            .unwrap_or_default()
    };
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "contended: {clients} clients on one lock, {:.0} grants/s ({} grants, {errors} errors); \
         handoff release->next grant p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        turns.len() as f64 / duration.as_secs_f64(),
        turns.len(),
        ms(pct(0.5)),
        ms(pct(0.99)),
        ms(handoffs.last().copied().unwrap_or_default()),
    );
    Ok(())
}
