//! Step H of the scale suite ([`crate::scale`]): stale reads (`GET /v1/services/{s}?stale`)
//! spread over every node of a fresh 3-node cluster, then again with one learner added,
//! then with two: the throughput and the CPU each node spends per read. A learner is a
//! server started with `--join <leader> --learner`, and must serve blocking queries like
//! any member.
//!
//! This machine may have few cores: more processes need not add throughput, so what
//! matters is each node's cost per read.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use serde::Serialize;
use serde_json::json;
use tokio::time::Instant;

use crate::checks::cpu_ticks;
use crate::load::{self, LoadConfig, Measurement};
use crate::report::TargetCheck;
use crate::scale::{self, ms, ok_body, ok_json, Progress, StepOutput};
use crate::systems::Registry;

/// Workers of each measurement.
const WORKERS: usize = 64;
/// The service read, and its size.
const SERVICE: &str = "scale-read";
const INSTANCES: usize = 10;
/// The service the learners' blocking queries watch.
const WATCHED: &str = "scale-read-watch";
/// Learners added, one at a time.
const LEARNERS: usize = 2;
/// USER_HZ: /proc reports CPU time in these ticks (fixed at 100 on Linux x86 and arm).
const TICKS_PER_S: f64 = 100.0;

/// One node's share of a measurement.
#[derive(Debug, Clone, Serialize)]
struct NodeFigures {
    node: usize,
    role: String,
    ops_per_sec: f64,
    /// CPU time over the window, as a share of one core (%).
    cpu_percent: f64,
    /// CPU milliseconds per 1000 reads it served.
    cpu_ms_per_1000: f64,
}

/// One configuration's measurement.
#[derive(Debug, Clone, Serialize)]
struct ReadRun {
    configuration: String,
    measurement: Measurement,
    nodes: Vec<NodeFigures>,
    /// CPU milliseconds of every node per 1000 reads served in all.
    cpu_ms_per_1000: f64,
}

/// One worker: its client, its node's URL and the node's index among the measured.
#[derive(Debug)]
struct Worker {
    http: reqwest::Client,
    url: String,
    slot: usize,
}

/// Measures stale reads spread over nodes `nodes` (worker `w` reads from node
/// `nodes[w % len]`) with the nodes' `roles`.
async fn measure(
    cluster: &Registry,
    nodes: &[usize],
    roles: &[String],
    configuration: &str,
) -> Result<ReadRun> {
    let urls: Vec<String> = nodes.iter().map(|&i| cluster.urls()[i].clone()).collect();
    let pids: Vec<u32> = nodes
        .iter()
        .map(|&i| cluster.pid(i).context("a node is not running"))
        .collect::<Result<_>>()?;
    let config = LoadConfig {
        concurrency: WORKERS,
        warmup: scale::LATENCY_WARMUP,
        duration: scale::LATENCY_WINDOW,
        op_timeout: Duration::from_secs(30),
    };
    // Clients are made before the clock starts, so the sampler below and the load
    // generator's window begin together.
    let workers: Vec<Option<Worker>> = (0..WORKERS)
        .map(|w| {
            Ok(Some(Worker {
                http: scale::client(config.op_timeout)?,
                url: format!("{}/v1/services/{SERVICE}?stale", urls[w % urls.len()]),
                slot: w % urls.len(),
            }))
        })
        .collect::<Result<_>>()?;
    let workers = Mutex::new(workers);
    let served: Arc<Vec<AtomicU64>> = Arc::new(urls.iter().map(|_| AtomicU64::new(0)).collect());
    let sample = {
        let served = Arc::clone(&served);
        let pids = pids.clone();
        move || -> Result<(Instant, Vec<u64>, Vec<u64>)> {
            let ops = served.iter().map(|n| n.load(Ordering::Relaxed)).collect();
            let cpu = pids.iter().map(|&p| cpu_ticks(p)).collect::<Result<_>>()?;
            Ok((Instant::now(), ops, cpu))
        }
    };
    let sampler = tokio::spawn(async move {
        tokio::time::sleep(config.warmup).await;
        let first = sample()?;
        tokio::time::sleep(config.duration).await;
        let last = sample()?;
        anyhow::Ok((first, last))
    });
    let op_served = Arc::clone(&served);
    let measurement = load::run(
        config,
        |w| {
            let worker = workers
                .lock()
                .ok()
                .and_then(|mut all| all.get_mut(w).and_then(Option::take));
            async move { worker.context("no worker state") }
        },
        move |w: Arc<Worker>, _| {
            let served = Arc::clone(&op_served);
            async move {
                let answer = ok_json(w.http.get(&w.url)).await?;
                let n = answer["instances"].as_array().map_or(0, Vec::len);
                ensure!(n == INSTANCES, "resolved {n} instances, not {INSTANCES}");
                served[w.slot].fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
        },
    )
    .await?;
    let ((t1, ops1, cpu1), (t2, ops2, cpu2)) = sampler.await.context("sampler panicked")??;
    let seconds = (t2 - t1).as_secs_f64();
    let mut figures = Vec::new();
    let (mut all_ops, mut all_cpu_ms) = (0u64, 0.0);
    for (slot, &node) in nodes.iter().enumerate() {
        let ops = ops2[slot] - ops1[slot];
        let cpu_ms = (cpu2[slot] - cpu1[slot]) as f64 / TICKS_PER_S * 1e3;
        all_ops += ops;
        all_cpu_ms += cpu_ms;
        figures.push(NodeFigures {
            node: node + 1,
            role: roles[slot].clone(),
            ops_per_sec: ops as f64 / seconds,
            cpu_percent: cpu_ms / 1e3 / seconds * 100.0,
            cpu_ms_per_1000: if ops > 0 {
                cpu_ms / (ops as f64 / 1000.0)
            } else {
                0.0
            },
        });
    }
    Ok(ReadRun {
        configuration: configuration.to_owned(),
        measurement,
        nodes: figures,
        cpu_ms_per_1000: if all_ops > 0 {
            all_cpu_ms / (all_ops as f64 / 1000.0)
        } else {
            0.0
        },
    })
}

/// Each node's role as the leader sees it ("leader", "follower", "learner").
async fn roles(http: &reqwest::Client, leader_url: &str, nodes: &[usize]) -> Result<Vec<String>> {
    let status = ok_json(http.get(format!("{leader_url}/v1/cluster"))).await?;
    let members = status["members"]
        .as_array()
        .context("no members in the status")?;
    Ok(nodes
        .iter()
        .map(|&i| {
            members
                .iter()
                .find(|m| m["id"].as_u64() == Some(i as u64 + 1))
                .and_then(|m| m["role"].as_str())
                .unwrap_or("not a member")
                .to_owned()
        })
        .collect())
}

/// Starts a server and adds it as a learner; returns its index once it has caught up
/// with the leader's commit index, and how long that took.
async fn add_learner(
    cluster: &mut Registry,
    http: &reqwest::Client,
    leader_url: &str,
    progress: Progress,
) -> Result<(usize, Duration)> {
    let leader_addr = leader_url.trim_start_matches("http://").to_owned();
    let index = cluster.add_node(&["--join".to_owned(), leader_addr, "--learner".to_owned()])?;
    let id = index + 1;
    let url = cluster.urls()[index].clone();
    let started = Instant::now();
    progress.say("H", format!("node {id} joins as a learner"));
    let deadline = started + Duration::from_secs(60);
    // It answers, and the leader lists it as a member that does not vote.
    loop {
        cluster.ensure_running(index)?;
        let listed = scale::status(http, leader_url)
            .await
            .is_ok_and(|s| s.members.contains(&(id as u64, false)));
        if listed && scale::status(http, &url).await.is_ok() {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "node {id} did not join as a learner"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let target = scale::status(http, leader_url).await?.commit_index;
    while scale::status(http, &url)
        .await
        .map_or(true, |s| s.applied_index < target)
    {
        cluster.ensure_running(index)?;
        ensure!(
            started.elapsed() < Duration::from_secs(120),
            "node {id} did not catch up"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok((index, started.elapsed()))
}

/// Parks a blocking query on `url` and changes the watched service through the leader:
/// how long after the change it returned, or why it did not.
async fn blocking_on(url: &str, leader_url: &str, round: usize) -> Result<Duration> {
    let http = scale::client(Duration::from_secs(60))?;
    let response = http
        .get(format!("{url}/v1/services/{WATCHED}"))
        .send()
        .await?
        .error_for_status()?;
    let index: u64 = response
        .headers()
        .get("x-registry-index")
        .context("no X-Registry-Index")?
        .to_str()?
        .parse()?;
    let watch = tokio::spawn({
        let url = format!("{url}/v1/services/{WATCHED}?index={index}&wait=30s");
        async move {
            let response = http.get(url).send().await?.error_for_status()?;
            let returned = Instant::now();
            let next: u64 = response
                .headers()
                .get("x-registry-index")
                .context("no X-Registry-Index")?
                .to_str()?
                .parse()?;
            anyhow::Ok((returned, next))
        }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    ensure!(!watch.is_finished(), "it returned before the change");
    let writer = scale::client(Duration::from_secs(30))?;
    let changed = Instant::now();
    ok_body(
        writer
            .put(format!(
                "{leader_url}/v1/services/{WATCHED}/instances/change-{round}"
            ))
            .json(&json!({"address": "127.0.0.1", "port": 9002, "ttl": scale::TTL})),
    )
    .await
    .context("the change")?;
    let (returned, next) = tokio::time::timeout(Duration::from_secs(10), watch)
        .await
        .context("it did not return within 10 s of the change")?
        .context("the watcher panicked")??;
    ensure!(next > index, "it returned index {next}, not past {index}");
    Ok(returned.saturating_duration_since(changed))
}

fn run_lines(out: &mut StepOutput, run: &ReadRun) {
    let m = &run.measurement;
    out.line(
        format!("{}: all nodes", run.configuration),
        format!(
            "{:.0} ops/s, p50 {}, p99 {}, {} errors; {:.1} CPU-ms per 1000 reads (all nodes)",
            m.ops_per_sec,
            ms(m.p50_us),
            ms(m.p99_us),
            m.errors,
            run.cpu_ms_per_1000
        ),
    );
    for n in &run.nodes {
        out.line(
            format!("{}: node {} ({})", run.configuration, n.node, n.role),
            format!(
                "{:.0} ops/s, CPU {:.0}% of a core, {:.1} CPU-ms per 1000 reads",
                n.ops_per_sec, n.cpu_percent, n.cpu_ms_per_1000
            ),
        );
    }
}

/// Runs step H on fresh clusters of `bin`.
pub async fn run(bin: &Path, progress: Progress) -> Result<StepOutput> {
    let mut cluster = Registry::start(bin, scale::NODES).await?;
    progress.say("H", format!("logs in {}", cluster.dir().display()));
    let leader = cluster.wait_for_leader(None).await?;
    let leader_url = cluster.urls()[leader].clone();
    let http = scale::client(Duration::from_secs(60))?;
    for i in 0..INSTANCES {
        ok_body(
            http.put(format!(
                "{leader_url}/v1/services/{SERVICE}/instances/i-{i}"
            ))
            .json(&json!({"address": "127.0.0.1", "port": 9000 + i, "ttl": scale::TTL})),
        )
        .await
        .context("register the read service")?;
    }
    ok_body(
        http.put(format!("{leader_url}/v1/services/{WATCHED}/instances/i-0"))
            .json(&json!({"address": "127.0.0.1", "port": 9000, "ttl": scale::TTL})),
    )
    .await
    .context("register the watched service")?;
    let mut out = StepOutput::default();
    let mut runs = Vec::new();
    let mut blocking = Vec::new();
    let mut nodes: Vec<usize> = (0..scale::NODES).collect();
    let mut outcome = Ok(());
    for learners in 0..=LEARNERS {
        if learners > 0 {
            let added = add_learner(&mut cluster, &http, &leader_url, progress).await;
            let (index, took) = match added {
                Ok(added) => added,
                Err(e) => {
                    outcome = Err(e.context(format!("adding learner {learners}")));
                    break;
                }
            };
            let url = cluster.urls()[index].clone();
            out.line(
                format!("start node {} with --join <leader> --learner", index + 1),
                format!("caught up {:.2} s after it started", took.as_secs_f64()),
            );
            let answer = blocking_on(&url, &leader_url, learners).await;
            out.line(
                format!(
                    "a blocking query on learner node {} returns on a change",
                    index + 1
                ),
                match &answer {
                    Ok(after) => format!("yes, {} after the change", ms(scale::us(*after))),
                    Err(e) => format!("no: {e:#}"),
                },
            );
            blocking.push((index + 1, answer.as_ref().ok().map(|d| d.as_secs_f64())));
            out.targets.push(TargetCheck {
                target: format!("learner node {} serves blocking queries", index + 1),
                measured: match &answer {
                    Ok(after) => format!("returned {} after the change", ms(scale::us(*after))),
                    Err(e) => format!("{e:#}"),
                },
                pass: Some(answer.is_ok()),
            });
            nodes.push(index);
        }
        let configuration = match learners {
            0 => format!("{} voters", scale::NODES),
            1 => format!("{} voters + 1 learner", scale::NODES),
            n => format!("{} voters + {n} learners", scale::NODES),
        };
        progress.say(
            "H",
            format!(
                "{configuration}: {WORKERS} workers reading ?stale, spread over {} nodes",
                nodes.len()
            ),
        );
        let node_roles = roles(&http, &leader_url, &nodes).await?;
        match measure(&cluster, &nodes, &node_roles, &configuration).await {
            Ok(run) => {
                run_lines(&mut out, &run);
                runs.push(run);
            }
            Err(e) => {
                outcome = Err(e.context(format!("measuring {configuration}")));
                break;
            }
        }
    }
    out.detail("runs", &runs);
    out.detail("learner_blocking_query_s", &blocking);
    progress.say("H", "stopping the learners' cluster");
    drop(cluster);
    if let Err(e) = outcome {
        out.fail(&e);
    }
    Ok(out)
}
