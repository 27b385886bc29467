//! The workloads, each defined twice, once over the registry's REST API and once over
//! etcd's v3 JSON gateway, so that both sides do the same work per operation and pay for
//! HTTP and JSON alike.

use std::sync::Arc;

use anyhow::{bail, ensure, Context, Result};
use base64::prelude::{Engine, BASE64_STANDARD};
use serde::Serialize;
use serde_json::{json, Value};

use crate::load::{self, LoadConfig, Measurement};
use crate::systems::Side;

/// Instances registered in the resolve workloads' service (keys under its etcd prefix).
pub const RESOLVE_INSTANCES: usize = 10;
/// Registrations and etcd keys cycle through this many ids per worker, so the state stays
/// bounded (and after the first round a registration updates an instance, as a put
/// overwrites a key).
const IDS_PER_WORKER: u64 = 100;
/// TTL of every lease and registration: longer than any run, so nothing expires during
/// the benchmark and no keepalives are needed besides the measured ones.
const TTL_SECS: u64 = 3600;

/// One benchmark workload; each runs against both systems.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Workload {
    /// Register an instance with a TTL vs put a key with a lease (one lease per worker).
    Register,
    /// Heartbeat an instance vs keep a lease alive.
    Heartbeat,
    /// Resolve a 10-instance service (linearizable) vs range a 10-key prefix.
    ResolveLinearizable,
    /// Resolve with `?stale` vs range with `serializable: true`.
    ResolveStale,
    /// Acquire+release a lock of one's own (one per worker) vs etcd lock+unlock.
    LockUncontended,
    /// Acquire (waiting)+release one lock shared by every worker vs etcd lock+unlock.
    LockContended,
    /// Campaign+resign in an election of one's own vs etcd campaign+resign.
    Election,
}

impl Workload {
    /// Every workload, in the order they run.
    pub const ALL: [Workload; 7] = [
        Workload::Register,
        Workload::Heartbeat,
        Workload::ResolveLinearizable,
        Workload::ResolveStale,
        Workload::LockUncontended,
        Workload::LockContended,
        Workload::Election,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Workload::Register => "register",
            Workload::Heartbeat => "heartbeat",
            Workload::ResolveLinearizable => "resolve-linearizable",
            Workload::ResolveStale => "resolve-stale",
            Workload::LockUncontended => "lock-uncontended",
            Workload::LockContended => "lock-contended",
            Workload::Election => "election",
        }
    }

    /// The concurrencies it runs at.
    pub fn concurrencies(self) -> &'static [usize] {
        match self {
            Workload::LockUncontended => &[1, 16],
            Workload::LockContended => &[16],
            _ => &[1, 64],
        }
    }

    /// What one operation is on each side, for the results.
    pub fn operation(self, side: Side) -> &'static str {
        match (self, side) {
            (Workload::Register, Side::Registry) => {
                "PUT /v1/services/{s}/instances/{id} {ttl} (100 ids per worker, cycling)"
            }
            (Workload::Register, Side::Etcd) => {
                "POST /v3/kv/put {key, value, lease} (one lease per worker, 100 keys per worker)"
            }
            (Workload::Heartbeat, Side::Registry) => {
                "PUT /v1/services/{s}/instances/{id}/heartbeat"
            }
            (Workload::Heartbeat, Side::Etcd) => "POST /v3/lease/keepalive {ID}",
            (Workload::ResolveLinearizable, Side::Registry) => {
                "GET /v1/services/{s} (10 instances)"
            }
            (Workload::ResolveLinearizable, Side::Etcd) => "POST /v3/kv/range {prefix} (10 keys)",
            (Workload::ResolveStale, Side::Registry) => "GET /v1/services/{s}?stale (10 instances)",
            (Workload::ResolveStale, Side::Etcd) => {
                "POST /v3/kv/range {prefix, serializable: true} (10 keys)"
            }
            (Workload::LockUncontended, Side::Registry) => {
                "POST /v1/locks/{own}/acquire {lease} + /release {token}"
            }
            (Workload::LockUncontended, Side::Etcd) => {
                "POST /v3/lock/lock {own name, lease} + /v3/lock/unlock {key}"
            }
            (Workload::LockContended, Side::Registry) => {
                "POST /v1/locks/{shared}/acquire {lease, wait} + /release {token}"
            }
            (Workload::LockContended, Side::Etcd) => {
                "POST /v3/lock/lock {shared name, lease} + /v3/lock/unlock {key}"
            }
            (Workload::Election, Side::Registry) => {
                "POST /v1/elections/{own}/campaign {candidate, lease} + /resign {token}"
            }
            (Workload::Election, Side::Etcd) => {
                "POST /v3/election/campaign {own name, value, lease} + /v3/election/resign {leader}"
            }
        }
    }
}

/// Where a run sends its requests.
#[derive(Debug, Clone)]
pub struct Target {
    pub side: Side,
    /// Base URLs of the cluster's members.
    pub urls: Vec<String>,
    /// Index of the leader in `urls`.
    pub leader: usize,
    /// Spread workers over all members (worker `i` → member `i mod n`) instead of sending
    /// everything to the leader.
    pub spread: bool,
    /// The token every request presents (a registry with ACLs on).
    pub token: Option<String>,
    /// The CA the workers trust (a registry serving TLS).
    pub ca_pem: Option<String>,
}

impl Target {
    fn url(&self, worker: usize) -> String {
        if self.spread {
            self.urls[worker % self.urls.len()].clone()
        } else {
            self.urls[self.leader].clone()
        }
    }
}

/// One worker's fixed state: its client (one connection), where it sends, who it is, and
/// the lease it holds for the workloads that need one.
#[derive(Debug)]
struct Worker {
    http: reqwest::Client,
    url: String,
    index: usize,
    /// Registry lease id (UUID) or etcd lease id (int64 as a string), if the workload
    /// needs one.
    lease: String,
    /// The run's own prefix for names and keys, so runs do not see each other's state.
    tag: String,
}

/// Sends a request and returns its JSON answer; a non-2xx status is an error naming the
/// status and the start of the body.
async fn call(request: reqwest::RequestBuilder) -> Result<Value> {
    let response = request.send().await?;
    let status = response.status();
    let body = response.bytes().await?;
    if !status.is_success() {
        let text = String::from_utf8_lossy(&body);
        bail!("{status}: {}", text.chars().take(200).collect::<String>());
    }
    serde_json::from_slice(&body).with_context(|| {
        format!(
            "answer is not JSON: {}",
            String::from_utf8_lossy(&body)
                .chars()
                .take(200)
                .collect::<String>()
        )
    })
}

fn b64(s: &str) -> String {
    BASE64_STANDARD.encode(s)
}

/// The registration body (and, as a string, the etcd value: the same bytes to store).
fn registration(worker: usize) -> Value {
    json!({"address": "127.0.0.1", "port": 8000 + worker, "ttl": format!("{TTL_SECS}s")})
}

async fn registry_lease(http: &reqwest::Client, url: &str) -> Result<String> {
    let answer = call(
        http.post(format!("{url}/v1/leases"))
            .json(&json!({"ttl": format!("{TTL_SECS}s")})),
    )
    .await?;
    answer["lease"]
        .as_str()
        .map(str::to_owned)
        .context("lease grant without a lease id")
}

async fn etcd_lease(http: &reqwest::Client, url: &str) -> Result<String> {
    let answer = call(
        http.post(format!("{url}/v3/lease/grant"))
            .json(&json!({"TTL": TTL_SECS})),
    )
    .await?;
    answer["ID"]
        .as_str()
        .map(str::to_owned)
        .context("lease grant without an ID")
}

/// Does the one-time preparation a workload needs on `target` (the service or prefix the
/// resolve workloads read).
async fn prepare(
    workload: Workload,
    target: &Target,
    tag: &str,
    config: &LoadConfig,
) -> Result<()> {
    if !matches!(
        workload,
        Workload::ResolveLinearizable | Workload::ResolveStale
    ) {
        return Ok(());
    }
    let http = load::worker_client_as(
        config.op_timeout,
        target.token.as_deref(),
        target.ca_pem.as_deref(),
    )?;
    let url = &target.urls[target.leader];
    match target.side {
        Side::Registry => {
            for i in 0..RESOLVE_INSTANCES {
                call(
                    http.put(format!("{url}/v1/services/{tag}/instances/i{i}"))
                        .json(&registration(i)),
                )
                .await?;
            }
        }
        Side::Etcd => {
            let lease = etcd_lease(&http, url).await?;
            for i in 0..RESOLVE_INSTANCES {
                call(http.post(format!("{url}/v3/kv/put")).json(&json!({
                    "key": b64(&format!("{tag}/i{i}")),
                    "value": b64(&registration(i).to_string()),
                    "lease": lease,
                })))
                .await?;
            }
        }
    }
    Ok(())
}

/// Runs `workload` against `target` with `config` (its concurrency included).
pub async fn run(workload: Workload, target: &Target, config: LoadConfig) -> Result<Measurement> {
    let tag = format!("bench-{}-c{}", workload.name(), config.concurrency);
    prepare(workload, target, &tag, &config)
        .await
        .with_context(|| format!("prepare {}", workload.name()))?;
    let side = target.side;
    let setup = |index: usize| {
        let url = target.url(index);
        let tag = tag.clone();
        let token = target.token.clone();
        let ca_pem = target.ca_pem.clone();
        async move {
            let http =
                load::worker_client_as(config.op_timeout, token.as_deref(), ca_pem.as_deref())?;
            let lease = match (workload, side) {
                (Workload::Register, Side::Etcd) => etcd_lease(&http, &url).await?,
                (Workload::Heartbeat, Side::Registry) => {
                    call(
                        http.put(format!("{url}/v1/services/{tag}/instances/w{index}"))
                            .json(&registration(index)),
                    )
                    .await?;
                    String::new()
                }
                (Workload::Heartbeat, Side::Etcd) => {
                    let lease = etcd_lease(&http, &url).await?;
                    call(http.post(format!("{url}/v3/kv/put")).json(&json!({
                        "key": b64(&format!("{tag}/w{index}")),
                        "value": b64(&registration(index).to_string()),
                        "lease": lease,
                    })))
                    .await?;
                    lease
                }
                (
                    Workload::LockUncontended | Workload::LockContended | Workload::Election,
                    Side::Registry,
                ) => registry_lease(&http, &url).await?,
                (
                    Workload::LockUncontended | Workload::LockContended | Workload::Election,
                    Side::Etcd,
                ) => etcd_lease(&http, &url).await?,
                _ => String::new(),
            };
            Ok(Worker {
                http,
                url,
                index,
                lease,
                tag,
            })
        }
    };
    let op =
        move |w: Arc<Worker>, seq: u64| async move { operation(workload, side, &w, seq).await };
    load::run(config, setup, op).await
}

/// One operation of `workload` on `side` by worker `w`.
async fn operation(workload: Workload, side: Side, w: &Worker, seq: u64) -> Result<()> {
    let Worker {
        http,
        url,
        index,
        lease,
        tag,
    } = w;
    match (workload, side) {
        (Workload::Register, Side::Registry) => {
            let id = seq % IDS_PER_WORKER;
            call(
                http.put(format!("{url}/v1/services/{tag}/instances/w{index}-{id}"))
                    .json(&registration(*index)),
            )
            .await?;
        }
        (Workload::Register, Side::Etcd) => {
            let id = seq % IDS_PER_WORKER;
            call(http.post(format!("{url}/v3/kv/put")).json(&json!({
                "key": b64(&format!("{tag}/w{index}-{id}")),
                "value": b64(&registration(*index).to_string()),
                "lease": lease,
            })))
            .await?;
        }
        (Workload::Heartbeat, Side::Registry) => {
            call(http.put(format!(
                "{url}/v1/services/{tag}/instances/w{index}/heartbeat"
            )))
            .await?;
        }
        (Workload::Heartbeat, Side::Etcd) => {
            // The gateway streams keepalive answers; a keepalive of an unknown lease is a
            // 200 whose result has no TTL, so the TTL is what tells success.
            let answer = call(
                http.post(format!("{url}/v3/lease/keepalive"))
                    .json(&json!({"ID": lease})),
            )
            .await?;
            let ttl = answer["result"]["TTL"].as_str().unwrap_or("0");
            ensure!(ttl != "0", "keepalive found no lease: {answer}");
        }
        (Workload::ResolveLinearizable | Workload::ResolveStale, Side::Registry) => {
            let query = if workload == Workload::ResolveStale {
                "?stale"
            } else {
                ""
            };
            let answer = call(http.get(format!("{url}/v1/services/{tag}{query}"))).await?;
            let n = answer["instances"].as_array().map_or(0, Vec::len);
            ensure!(
                n == RESOLVE_INSTANCES,
                "resolved {n} instances, not {RESOLVE_INSTANCES}"
            );
        }
        (Workload::ResolveLinearizable | Workload::ResolveStale, Side::Etcd) => {
            let answer = call(http.post(format!("{url}/v3/kv/range")).json(&json!({
                "key": b64(&format!("{tag}/")),
                "range_end": b64(&format!("{tag}0")),
                "serializable": workload == Workload::ResolveStale,
            })))
            .await?;
            let n = answer["kvs"].as_array().map_or(0, Vec::len);
            ensure!(
                n == RESOLVE_INSTANCES,
                "ranged {n} keys, not {RESOLVE_INSTANCES}"
            );
        }
        (Workload::LockUncontended | Workload::LockContended, Side::Registry) => {
            let (name, body) = if workload == Workload::LockContended {
                (tag.clone(), json!({"lease": lease, "wait": "60s"}))
            } else {
                (format!("{tag}-w{index}"), json!({"lease": lease}))
            };
            let grant = call(
                http.post(format!("{url}/v1/locks/{name}/acquire"))
                    .json(&body),
            )
            .await?;
            let token = grant["token"].as_u64().context("grant without a token")?;
            let released = call(
                http.post(format!("{url}/v1/locks/{name}/release"))
                    .json(&json!({"token": token})),
            )
            .await?;
            ensure!(released["released"] == true, "not released: {released}");
        }
        (Workload::LockUncontended | Workload::LockContended, Side::Etcd) => {
            let name = if workload == Workload::LockContended {
                tag.clone()
            } else {
                format!("{tag}-w{index}")
            };
            let locked = call(
                http.post(format!("{url}/v3/lock/lock"))
                    .json(&json!({"name": b64(&name), "lease": lease})),
            )
            .await?;
            let key = locked["key"]
                .as_str()
                .context("lock answer without a key")?;
            call(
                http.post(format!("{url}/v3/lock/unlock"))
                    .json(&json!({"key": key})),
            )
            .await?;
        }
        (Workload::Election, Side::Registry) => {
            let name = format!("{tag}-w{index}");
            let won = call(
                http.post(format!("{url}/v1/elections/{name}/campaign"))
                    .json(&json!({"candidate": format!("w{index}"), "lease": lease})),
            )
            .await?;
            let token = won["token"].as_u64().context("campaign without a token")?;
            call(
                http.post(format!("{url}/v1/elections/{name}/resign"))
                    .json(&json!({"token": token})),
            )
            .await?;
        }
        (Workload::Election, Side::Etcd) => {
            let name = format!("{tag}-w{index}");
            let won = call(
                http.post(format!("{url}/v3/election/campaign"))
                    .json(&json!({
                        "name": b64(&name),
                        "value": b64(&format!("w{index}")),
                        "lease": lease,
                    })),
            )
            .await?;
            let leader = won
                .get("leader")
                .context("campaign answer without a leader")?;
            call(
                http.post(format!("{url}/v3/election/resign"))
                    .json(&json!({"leader": leader})),
            )
            .await?;
        }
    }
    Ok(())
}
