//! The closed-loop load generator both systems are measured with: a fixed number of
//! workers, each issuing one operation after another over its own HTTP/1.1 connection, for
//! a warm-up and then a measured window.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::time::Instant;

/// How long one run lasts and how many workers it has.
#[derive(Debug, Clone, Copy)]
pub struct LoadConfig {
    /// Workers issuing operations at the same time (each waits for its answer before
    /// sending the next: a closed loop).
    pub concurrency: usize,
    /// Operations completing in this first stretch are not counted: connections open,
    /// caches warm and the servers' batching settles.
    pub warmup: Duration,
    /// The measured window: operations completing in it are counted.
    pub duration: Duration,
    /// One operation taking longer than this counts as an error (and keeps a hung server
    /// from hanging the benchmark).
    pub op_timeout: Duration,
}

/// How many distinct error messages a run keeps as samples; the count covers all.
const ERROR_SAMPLES: usize = 5;
/// Longest error message sample kept, in characters.
const ERROR_SAMPLE_LEN: usize = 300;
/// Highest latency the histograms can hold, in microseconds (larger ones are clamped).
const MAX_LATENCY_US: u64 = 600_000_000;

/// What one run measured.
#[derive(Debug, Clone, Serialize)]
pub struct Measurement {
    /// Workers in the run.
    pub concurrency: usize,
    /// Length of the measured window in seconds.
    pub duration_s: f64,
    /// Successful operations completed in the window.
    pub ops: u64,
    /// Failed operations completed in the window (error answers, timeouts, wrong results).
    pub errors: u64,
    /// Successful operations per second.
    pub ops_per_sec: f64,
    /// Latency of successful operations, microseconds.
    pub mean_us: f64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
    /// Up to a few distinct error messages with how often each occurred (in the window).
    pub error_samples: BTreeMap<String, u64>,
}

/// What one worker saw: its latencies, its errors.
struct WorkerTally {
    histogram: Histogram<u64>,
    errors: u64,
    error_samples: BTreeMap<String, u64>,
}

impl WorkerTally {
    fn new() -> Result<WorkerTally> {
        Ok(WorkerTally {
            histogram: Histogram::new_with_bounds(1, MAX_LATENCY_US, 3)
                .context("latency histogram bounds")?,
            errors: 0,
            error_samples: BTreeMap::new(),
        })
    }

    fn error(&mut self, error: &anyhow::Error) {
        self.errors += 1;
        let message: String = format!("{error:#}")
            .chars()
            .take(ERROR_SAMPLE_LEN)
            .collect();
        if let Some(count) = self.error_samples.get_mut(&message) {
            *count += 1;
        } else if self.error_samples.len() < ERROR_SAMPLES {
            self.error_samples.insert(message, 1);
        }
    }

    fn merge(&mut self, other: WorkerTally) -> Result<()> {
        self.histogram
            .add(&other.histogram)
            .context("merge latency histograms")?;
        self.errors += other.errors;
        for (message, count) in other.error_samples {
            if let Some(total) = self.error_samples.get_mut(&message) {
                *total += count;
            } else if self.error_samples.len() < ERROR_SAMPLES {
                self.error_samples.insert(message, count);
            }
        }
        Ok(())
    }
}

/// Runs one load: `setup(worker_index)` prepares each worker's state (its HTTP client, its
/// lease, ...) before any clock starts, then every worker calls `op(state, seq)` in a loop
/// (`seq` counts that worker's operations from 0) until the window ends.
///
/// An operation counts where it completes: completed during the warm-up, it is ignored;
/// after the window, it ends the worker and is ignored. So the throughput is the number
/// completed in the window over the window's length, and no error is ever dropped
/// silently: every failed operation in the window is counted.
pub async fn run<W, S, SFut, O, OFut>(config: LoadConfig, setup: S, op: O) -> Result<Measurement>
where
    W: Send + Sync + 'static,
    S: Fn(usize) -> SFut,
    SFut: Future<Output = Result<W>>,
    O: Fn(Arc<W>, u64) -> OFut + Send + Sync + 'static,
    OFut: Future<Output = Result<()>> + Send + 'static,
{
    anyhow::ensure!(config.concurrency >= 1, "concurrency must be at least 1");
    let states = futures::future::try_join_all((0..config.concurrency).map(&setup))
        .await
        .context("worker setup")?;

    let op = Arc::new(op);
    let warm_end = Instant::now() + config.warmup;
    let end = warm_end + config.duration;
    let mut tasks = tokio::task::JoinSet::new();
    for state in states {
        let state = Arc::new(state);
        let op = Arc::clone(&op);
        let op_timeout = config.op_timeout;
        tasks.spawn(async move {
            let mut tally = WorkerTally::new()?;
            let mut seq = 0;
            while Instant::now() < end {
                let started = Instant::now();
                let outcome =
                    match tokio::time::timeout(op_timeout, op(Arc::clone(&state), seq)).await {
                        Ok(outcome) => outcome,
                        Err(_) => Err(anyhow::anyhow!("operation timed out after {op_timeout:?}")),
                    };
                seq += 1;
                let done = Instant::now();
                if done < warm_end {
                    continue;
                }
                if done > end {
                    break;
                }
                match outcome {
                    Ok(()) => {
                        let us = u64::try_from((done - started).as_micros()).unwrap_or(u64::MAX);
                        tally.histogram.saturating_record(us.max(1));
                    }
                    Err(error) => tally.error(&error),
                }
            }
            Ok::<_, anyhow::Error>(tally)
        });
    }

    let mut total = WorkerTally::new()?;
    while let Some(joined) = tasks.join_next().await {
        total.merge(joined.context("load worker panicked")??)?;
    }
    let duration_s = config.duration.as_secs_f64();
    let h = &total.histogram;
    let ops = h.len();
    let quantile = |q: f64| if ops == 0 { 0 } else { h.value_at_quantile(q) };
    Ok(Measurement {
        concurrency: config.concurrency,
        duration_s,
        ops,
        errors: total.errors,
        ops_per_sec: ops as f64 / duration_s,
        mean_us: if ops == 0 { 0.0 } else { h.mean() },
        p50_us: quantile(0.50),
        p90_us: quantile(0.90),
        p99_us: quantile(0.99),
        p999_us: quantile(0.999),
        max_us: if ops == 0 { 0 } else { h.max() },
        error_samples: total.error_samples,
    })
}

/// An HTTP client for one worker: HTTP/1.1 only, at most one idle (kept-alive)
/// connection, so a worker issuing one request at a time uses one persistent connection.
pub fn worker_client(timeout: Duration) -> Result<reqwest::Client> {
    worker_client_as(timeout, None, None)
}

/// [`worker_client`] whose every request carries `Authorization: Bearer <token>`, and
/// that trusts only the CA `ca_pem` when one is given (a registry serving TLS).
pub fn worker_client_as(
    timeout: Duration,
    token: Option<&str>,
    ca_pem: Option<&str>,
) -> Result<reqwest::Client> {
    let mut headers = reqwest::header::HeaderMap::new();
    if let Some(token) = token {
        let value = reqwest::header::HeaderValue::from_str(&format!("Bearer {token}"))
            .context("token is not a header value")?;
        headers.insert(reqwest::header::AUTHORIZATION, value);
    }
    let mut builder = reqwest::Client::builder();
    if let Some(pem) = ca_pem {
        builder = builder
            .tls_built_in_root_certs(false)
            .add_root_certificate(reqwest::Certificate::from_pem(pem.as_bytes())?);
    }
    builder
        .default_headers(headers)
        .http1_only()
        .pool_max_idle_per_host(1)
        .tcp_nodelay(true)
        .timeout(timeout)
        .build()
        .context("build HTTP client")
}
