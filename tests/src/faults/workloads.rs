//! The workloads of a fault run. Each is a few client processes speaking plain HTTP to a
//! random node per operation (no client library retries, which would blur what one
//! operation did), recording every operation as an [`Op`]: invoked, completed, and how
//! it ended.
//!
//! An answer maps to an outcome like this: 2xx is `Ok`; 4xx is `Failed` (the server
//! refused it, nothing changed); a refused connection is `Failed` (the node is down);
//! 5xx, a timeout or a connection lost mid-request is `Unknown` (it may have happened).
//!
//! - **locks**: acquire (own lease, short TTL), fenced writes to an in-test
//!   [`Resource`] while the client knows its lease lives, keepalives, release;
//! - **registry**: register instances with long leases, deregister some, resolve the
//!   service with linearizable reads; a final read after the cluster healed;
//! - **register**: one instance per key whose `meta.v` is overwritten and read back
//!   (linearizable reads), checked for linearizability;
//! - **leases**: leases kept alive every third of their TTL, until the server says one
//!   is gone.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Result};
use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};
use reqwest::Method;
use serde_json::{json, Value};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::{FaultCluster, RunClock};
use crate::history::{
    self, Anomaly, Grant, LeaseHistory, Op, Outcome, RegistryAnswer, RegistryOp, ResourceWrite,
};
use crate::linearizable::{self, Register, RegisterAnswer, RegisterOp, Verdict};

const LOCK_PROCESSES: usize = 4;
const LOCK_NAMES: &[&str] = &["fault-a", "fault-b"];
/// Short, so that faults make leases expire and locks move on without a release.
const LOCK_TTL: Duration = Duration::from_secs(2);
/// A client stops writing this long before its lease could end.
const LOCK_SAFETY_MARGIN: Duration = Duration::from_millis(100);

const REGISTRY_PROCESSES: usize = 3;
const REGISTRY_SERVICE: &str = "fault-registry";

const REGISTER_PROCESSES: usize = 4;
/// Keys written at the same time.
const REGISTER_KEYS: usize = 2;
/// How long one key is used before the workload moves on to the next.
const REGISTER_KEY_LIFETIME: Duration = Duration::from_secs(3);

const LEASE_PROCESSES: usize = 2;
const LEASE_TTL: Duration = Duration::from_secs(2);

/// How long one request may take before its outcome counts as unknown.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// How long the workloads keep going after the cluster healed, so that the histories
/// end with operations on a healthy cluster.
const AFTER_HEAL: Duration = Duration::from_secs(2);
/// Budget of the linearizability search, in steps.
const LINEARIZABILITY_BUDGET: usize = 5_000_000;

/// A fenced resource, like a storage service that checks tokens: it accepts a write
/// whose token is at least the highest it has accepted for that lock, and records every
/// write it saw.
#[derive(Debug, Default)]
pub struct Resource {
    inner: Mutex<ResourceState>,
}

#[derive(Debug, Default)]
struct ResourceState {
    highest: BTreeMap<String, u64>,
    writes: Vec<ResourceWrite>,
}

impl Resource {
    /// Offers a write under `token`; true if accepted.
    pub fn write(&self, lock: &str, token: u64, process: usize, clock: &RunClock) -> bool {
        let mut state = self.inner.lock().expect("resource lock");
        let highest = state.highest.get(lock).copied().unwrap_or(0);
        let accepted = token >= highest;
        if accepted {
            state.highest.insert(lock.to_owned(), token);
        }
        let seq = state.writes.len() as u64;
        state.writes.push(ResourceWrite {
            lock: lock.to_owned(),
            seq,
            process,
            token,
            at: clock.now(),
            accepted,
        });
        accepted
    }

    fn writes(&self) -> Vec<ResourceWrite> {
        self.inner.lock().expect("resource lock").writes.clone()
    }
}

/// How one HTTP request ended.
#[derive(Debug)]
enum Answer {
    Reply(u16, Value),
    /// The connection was refused: the request never reached a server.
    Refused(String),
    /// No answer (timeout, connection lost): it may have been applied.
    Lost(String),
}

impl Answer {
    /// The outcome of an operation whose success value is read from the 2xx body.
    fn outcome<T>(self, ok: impl FnOnce(&Value) -> Option<T>) -> Outcome<T> {
        match self {
            Answer::Reply(status, body) if (200..300).contains(&status) => match ok(&body) {
                Some(value) => Outcome::Ok(value),
                None => Outcome::Unknown(format!("unexpected {status} answer: {body}")),
            },
            Answer::Reply(status, body) if (400..500).contains(&status) => {
                Outcome::Failed(format!("{status} {}", body["error"]["code"]))
            }
            Answer::Reply(status, body) => Outcome::Unknown(format!("{status} {body}")),
            Answer::Refused(e) => Outcome::Failed(e),
            Answer::Lost(e) => Outcome::Unknown(e),
        }
    }
}

/// What every client process shares.
#[derive(Debug, Clone)]
struct Env {
    http: reqwest::Client,
    nodes: Arc<Vec<String>>,
    clock: RunClock,
    stop: watch::Receiver<bool>,
}

impl Env {
    fn stopped(&self) -> bool {
        *self.stop.borrow()
    }

    /// Sends one request to a random node.
    async fn send(
        &self,
        rng: &mut StdRng,
        method: Method,
        path: &str,
        body: Option<Value>,
        timeout: Duration,
    ) -> Answer {
        let node = self.pick(rng);
        self.send_to(node, method, path, body, timeout).await
    }

    /// A random node's address.
    fn pick(&self, rng: &mut StdRng) -> &str {
        &self.nodes[rng.random_range(0..self.nodes.len())]
    }

    /// Sends one request to `node`.
    async fn send_to(
        &self,
        node: &str,
        method: Method,
        path: &str,
        body: Option<Value>,
        timeout: Duration,
    ) -> Answer {
        let mut request = self
            .http
            .request(method, format!("http://{node}{path}"))
            .timeout(timeout);
        if let Some(body) = body {
            request = request.json(&body);
        }
        match request.send().await {
            Ok(response) => {
                let status = response.status().as_u16();
                match response.bytes().await {
                    Ok(bytes) => Answer::Reply(
                        status,
                        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
                    ),
                    Err(e) => Answer::Lost(format!("{node}: reading the answer: {e}")),
                }
            }
            Err(e) if e.is_connect() => Answer::Refused(format!("{node}: {e}")),
            Err(e) => Answer::Lost(format!("{node}: {e}")),
        }
    }

    /// Renews `lease` through a random node (short timeout: a renewal that takes long
    /// is worth little).
    async fn keepalive(&self, rng: &mut StdRng, lease: &str) -> Answer {
        self.keepalive_noted(rng, lease).await.0
    }

    /// [`Env::keepalive`], with a note for the history: the node asked, and the code of
    /// a 404 (`lease_expired`: its expiry was proposed; `lease_not_found`: it is gone).
    async fn keepalive_noted(&self, rng: &mut StdRng, lease: &str) -> (Answer, String) {
        let path = format!("/v1/leases/{lease}/keepalive");
        let node = self.pick(rng).to_owned();
        let answer = self
            .send_to(&node, Method::PUT, &path, None, Duration::from_secs(1))
            .await;
        let note = match &answer {
            Answer::Reply(404, body) => format!("asked {node}, answered {}", body["error"]["code"]),
            _ => format!("asked {node}"),
        };
        (answer, note)
    }

    /// Sleeps `d`, or less if the run is stopping.
    async fn pause(&self, d: Duration) {
        let mut stop = self.stop.clone();
        let _ = tokio::time::timeout(d, stop.wait_for(|s| *s)).await;
    }
}

fn op<I, O>(
    process: usize,
    invoke: Duration,
    env: &Env,
    input: I,
    outcome: Outcome<O>,
) -> Op<I, O> {
    Op {
        process,
        invoke,
        complete: env.clock.now(),
        input,
        outcome,
    }
}

/// The workloads, running.
#[derive(Debug)]
pub struct Load {
    stop: watch::Sender<bool>,
    env: Env,
    seed: u64,
    resource: Arc<Resource>,
    locks: Vec<JoinHandle<Vec<Grant>>>,
    registry: Vec<JoinHandle<Vec<Op<RegistryOp, RegistryAnswer>>>>,
    register: Vec<JoinHandle<Vec<KeyedRegisterOp>>>,
    leases: Vec<JoinHandle<Vec<LeaseHistory>>>,
}

impl Load {
    /// Starts every workload's processes against `nodes`.
    pub fn start(nodes: Vec<String>, clock: RunClock, seed: u64) -> Load {
        let (stop, stop_rx) = watch::channel(false);
        let env = Env {
            http: reqwest::Client::builder()
                .connect_timeout(Duration::from_millis(500))
                .pool_idle_timeout(Duration::from_secs(5))
                .build()
                .unwrap_or_default(),
            nodes: Arc::new(nodes),
            clock,
            stop: stop_rx,
        };
        let resource = Arc::new(Resource::default());
        // Each process draws its choices from its own stream of the run's seed.
        let rng = move |workload: u64, process: usize| {
            StdRng::seed_from_u64(seed ^ (workload << 32) ^ process as u64)
        };
        let locks = (0..LOCK_PROCESSES)
            .map(|p| {
                let (env, resource) = (env.clone(), resource.clone());
                tokio::spawn(async move { lock_process(env, p, rng(1, p), resource).await })
            })
            .collect();
        let registry = (0..REGISTRY_PROCESSES)
            .map(|p| {
                let env = env.clone();
                tokio::spawn(async move { registry_process(env, p, rng(2, p)).await })
            })
            .collect();
        let register = (0..REGISTER_PROCESSES)
            .map(|p| {
                let env = env.clone();
                tokio::spawn(async move { register_process(env, p, rng(3, p)).await })
            })
            .collect();
        let leases = (0..LEASE_PROCESSES)
            .map(|p| {
                let env = env.clone();
                tokio::spawn(async move { lease_process(env, p, rng(4, p)).await })
            })
            .collect();
        Load {
            stop,
            env,
            seed,
            resource,
            locks,
            registry,
            register,
            leases,
        }
    }

    /// Lets the workloads run a little longer on the healed cluster, stops them, and
    /// takes the final reads.
    pub async fn finish(self, cluster: &FaultCluster) -> Result<Histories> {
        tokio::time::sleep(AFTER_HEAL).await;
        let _ = self.stop.send(true);
        let mut histories = Histories::default();
        for task in self.locks {
            histories.grants.extend(task.await?);
        }
        for task in self.registry {
            histories.registry.extend(task.await?);
        }
        for task in self.register {
            histories.register.extend(task.await?);
        }
        for task in self.leases {
            histories.leases.extend(task.await?);
        }
        histories.writes = self.resource.writes();
        histories.final_registry = Some(final_read(&self.env, self.seed).await?);
        cluster.log(format!(
            "final read: {} instances registered",
            histories.final_registry.as_ref().map_or(0, BTreeSet::len)
        ));
        Ok(histories)
    }
}

/// The registry service's instances, read (linearizably) from a healed cluster.
async fn final_read(env: &Env, seed: u64) -> Result<BTreeSet<String>> {
    let mut rng = StdRng::seed_from_u64(seed);
    let path = format!("/v1/services/{REGISTRY_SERVICE}?status=any");
    let mut last = String::new();
    for _ in 0..60 {
        match env
            .send(&mut rng, Method::GET, &path, None, REQUEST_TIMEOUT)
            .await
            .outcome(instance_ids)
        {
            Outcome::Ok(ids) => return Ok(ids),
            Outcome::Failed(e) | Outcome::Unknown(e) => last = e,
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    bail!("the healed cluster never answered the final read: {last}")
}

fn instance_ids(body: &Value) -> Option<BTreeSet<String>> {
    body["instances"]
        .as_array()?
        .iter()
        .map(|i| i["id"].as_str().map(str::to_owned))
        .collect()
}

/// One lock client: acquire, write while safe, renew, release; again.
async fn lock_process(
    env: Env,
    process: usize,
    mut rng: StdRng,
    resource: Arc<Resource>,
) -> Vec<Grant> {
    let mut grants = Vec::new();
    let ttl_text = api_spec::format_duration(LOCK_TTL);
    while !env.stopped() {
        let lock = LOCK_NAMES[rng.random_range(0..LOCK_NAMES.len())];
        let invoked = env.clock.now();
        let body = json!({
            "ttl": ttl_text, "wait": "1s", "holder": format!("p{process}"), "lock_delay": "200ms",
        });
        let answer = env
            .send(
                &mut rng,
                Method::POST,
                &format!("/v1/locks/{lock}/acquire"),
                Some(body),
                REQUEST_TIMEOUT + Duration::from_secs(1),
            )
            .await
            .outcome(|b| Some((b["token"].as_u64()?, b["lease"].as_str()?.to_owned())));
        let Outcome::Ok((token, lease)) = answer else {
            env.pause(Duration::from_millis(rng.random_range(20..100)))
                .await;
            continue;
        };
        let acquired = env.clock.now();
        // The lease was made at or after `invoked`, so it lives until at least then + TTL.
        let mut safe_until = invoked + LOCK_TTL;
        for _ in 0..rng.random_range(1..=3) {
            if env.clock.now() + LOCK_SAFETY_MARGIN >= safe_until {
                break;
            }
            resource.write(lock, token, process, &env.clock);
            env.pause(Duration::from_millis(rng.random_range(20..300)))
                .await;
            let renewed = env.clock.now();
            let answer = env.keepalive(&mut rng, &lease).await;
            if matches!(answer, Answer::Reply(200, _)) {
                safe_until = safe_until.max(renewed + LOCK_TTL);
            }
        }
        let released = env.clock.now();
        safe_until = safe_until.min(released);
        let _ = env
            .send(
                &mut rng,
                Method::POST,
                &format!("/v1/locks/{lock}/release"),
                Some(json!({ "token": token })),
                REQUEST_TIMEOUT,
            )
            .await;
        grants.push(Grant {
            lock: lock.to_owned(),
            process,
            token,
            acquire_invoked: invoked,
            acquired,
            safe_until,
        });
    }
    grants
}

/// One registry client: registers new instances, deregisters some of its own, resolves.
async fn registry_process(
    env: Env,
    process: usize,
    mut rng: StdRng,
) -> Vec<Op<RegistryOp, RegistryAnswer>> {
    let mut ops = Vec::new();
    let mut registered: Vec<String> = Vec::new();
    let mut next = 0;
    while !env.stopped() {
        let invoked = env.clock.now();
        let choice = rng.random_range(0..10);
        if choice < 4 {
            let id = format!("p{process}-{next}");
            next += 1;
            let body = json!({ "address": "127.0.0.1", "port": 9000 + next % 1000, "ttl": "10m" });
            let outcome = env
                .send(
                    &mut rng,
                    Method::PUT,
                    &format!("/v1/services/{REGISTRY_SERVICE}/instances/{id}"),
                    Some(body),
                    REQUEST_TIMEOUT,
                )
                .await
                .outcome(|_| Some(RegistryAnswer::Done));
            if !matches!(outcome, Outcome::Failed(_)) {
                registered.push(id.clone());
            }
            ops.push(op(
                process,
                invoked,
                &env,
                RegistryOp::Register(id),
                outcome,
            ));
        } else if choice < 6 && !registered.is_empty() {
            let id = registered.swap_remove(rng.random_range(0..registered.len()));
            let outcome = env
                .send(
                    &mut rng,
                    Method::DELETE,
                    &format!("/v1/services/{REGISTRY_SERVICE}/instances/{id}"),
                    None,
                    REQUEST_TIMEOUT,
                )
                .await
                .outcome(|_| Some(RegistryAnswer::Done));
            ops.push(op(
                process,
                invoked,
                &env,
                RegistryOp::Deregister(id),
                outcome,
            ));
        } else {
            let outcome = env
                .send(
                    &mut rng,
                    Method::GET,
                    &format!("/v1/services/{REGISTRY_SERVICE}?status=any"),
                    None,
                    REQUEST_TIMEOUT,
                )
                .await
                .outcome(|b| instance_ids(b).map(RegistryAnswer::Instances));
            ops.push(op(process, invoked, &env, RegistryOp::Resolve, outcome));
        }
        env.pause(Duration::from_millis(rng.random_range(5..50)))
            .await;
    }
    ops
}

/// A register operation and the key it went to.
pub type KeyedRegisterOp = (usize, Op<RegisterOp, RegisterAnswer>);

/// The service that holds register `key`'s one instance.
fn register_service(key: usize) -> String {
    format!("fault-register-{key}")
}

/// One register client: writes unique values to a key's `meta.v`, or reads it.
async fn register_process(env: Env, process: usize, mut rng: StdRng) -> Vec<KeyedRegisterOp> {
    let mut ops = Vec::new();
    let mut next = 0;
    while !env.stopped() {
        // Keys are short-lived: the linearizability search is worst-case exponential in
        // the length and concurrency of one key's history, and every unknown write stays
        // concurrent with everything after it; a fresh key every few seconds bounds both.
        let slot = (env.clock.now().as_millis() / REGISTER_KEY_LIFETIME.as_millis()) as usize;
        let key = slot * REGISTER_KEYS + rng.random_range(0..REGISTER_KEYS);
        let service = register_service(key);
        let invoked = env.clock.now();
        if rng.random_bool(0.5) {
            let value = format!("p{process}-{next}");
            next += 1;
            let body = json!({
                "address": "127.0.0.1", "port": 1, "ttl": "10m", "meta": { "v": value },
            });
            let outcome = env
                .send(
                    &mut rng,
                    Method::PUT,
                    &format!("/v1/services/{service}/instances/x"),
                    Some(body),
                    REQUEST_TIMEOUT,
                )
                .await
                .outcome(|_| Some(RegisterAnswer::Written));
            ops.push((
                key,
                op(process, invoked, &env, RegisterOp::Write(value), outcome),
            ));
        } else {
            let outcome = env
                .send(
                    &mut rng,
                    Method::GET,
                    &format!("/v1/services/{service}?status=any"),
                    None,
                    REQUEST_TIMEOUT,
                )
                .await
                .outcome(|b| {
                    let instances = b["instances"].as_array()?;
                    let value = instances
                        .iter()
                        .find(|i| i["id"] == "x")
                        .and_then(|i| i["meta"]["v"].as_str())
                        .map(str::to_owned);
                    Some(RegisterAnswer::Value(value))
                });
            ops.push((key, op(process, invoked, &env, RegisterOp::Read, outcome)));
        }
        env.pause(Duration::from_millis(rng.random_range(5..50)))
            .await;
    }
    ops
}

/// One lease client: grants a lease, keeps it alive every third of its TTL until the
/// server says it is gone, then starts over.
async fn lease_process(env: Env, process: usize, mut rng: StdRng) -> Vec<LeaseHistory> {
    let mut leases = Vec::new();
    let ttl_text = api_spec::format_duration(LEASE_TTL);
    while !env.stopped() {
        let invoked = env.clock.now();
        let outcome = env
            .send(
                &mut rng,
                Method::POST,
                "/v1/leases",
                Some(json!({ "ttl": ttl_text })),
                REQUEST_TIMEOUT,
            )
            .await
            .outcome(|b| b["lease"].as_str().map(str::to_owned));
        let Outcome::Ok(lease) = outcome else {
            env.pause(Duration::from_millis(100)).await;
            continue;
        };
        let granted = op(process, invoked, &env, String::new(), Outcome::Ok(true));
        let mut ops = vec![granted];
        while !env.stopped() {
            env.pause(LEASE_TTL / 3).await;
            let invoked = env.clock.now();
            let (answer, note) = env.keepalive_noted(&mut rng, &lease).await;
            let gone = matches!(answer, Answer::Reply(404, _));
            let outcome = if gone {
                Outcome::Ok(false)
            } else {
                answer.outcome(|_| Some(true))
            };
            ops.push(op(process, invoked, &env, note, outcome));
            if gone {
                break;
            }
        }
        leases.push(LeaseHistory {
            lease,
            ttl: LEASE_TTL,
            ops,
        });
    }
    leases
}

/// Everything a run recorded.
#[derive(Debug, Default)]
pub struct Histories {
    pub grants: Vec<Grant>,
    pub writes: Vec<ResourceWrite>,
    pub registry: Vec<Op<RegistryOp, RegistryAnswer>>,
    pub final_registry: Option<BTreeSet<String>>,
    /// Register operations with the key each went to.
    pub register: Vec<KeyedRegisterOp>,
    pub leases: Vec<LeaseHistory>,
}

/// (ok, failed, unknown) counts of `ops`.
fn tally<'a, I: 'a, O: 'a>(ops: impl IntoIterator<Item = &'a Op<I, O>>) -> (usize, usize, usize) {
    ops.into_iter()
        .fold((0, 0, 0), |(ok, failed, unknown), op| match op.outcome {
            Outcome::Ok(_) => (ok + 1, failed, unknown),
            Outcome::Failed(_) => (ok, failed + 1, unknown),
            Outcome::Unknown(_) => (ok, failed, unknown + 1),
        })
}

impl Histories {
    /// Operations by workload: (ok, failed, unknown). Locks count grants (ok) and
    /// resource writes rejected by fencing (failed).
    pub fn counts(&self) -> BTreeMap<&'static str, (usize, usize, usize)> {
        let rejected = self.writes.iter().filter(|w| !w.accepted).count();
        BTreeMap::from([
            ("lock grants", (self.grants.len(), rejected, 0)),
            ("registry", tally(&self.registry)),
            ("register", tally(self.register.iter().map(|(_, op)| op))),
            (
                "lease renewals",
                tally(self.leases.iter().flat_map(|l| &l.ops)),
            ),
        ])
    }

    /// Runs every checker; returns the items each judged and every anomaly found.
    pub fn check(&self) -> (BTreeMap<&'static str, usize>, Vec<Anomaly>) {
        let mut checked = BTreeMap::new();
        let mut anomalies = Vec::new();
        let locks = history::check_locks(&self.grants, &self.writes);
        checked.insert("locks", locks.checked);
        anomalies.extend(locks.anomalies);
        let registry = history::check_registry(&self.registry, self.final_registry.as_ref());
        checked.insert("registry", registry.checked);
        anomalies.extend(registry.anomalies);
        let leases = history::check_leases(&self.leases);
        checked.insert("leases", leases.checked);
        anomalies.extend(leases.anomalies);
        checked.insert("register", self.register.len());
        let mut by_key: BTreeMap<usize, Vec<Op<RegisterOp, RegisterAnswer>>> = BTreeMap::new();
        for (key, op) in &self.register {
            by_key.entry(*key).or_default().push(op.clone());
        }
        for (key, ops) in by_key {
            let service = register_service(key);
            match linearizable::check(&Register, &ops, LINEARIZABILITY_BUDGET) {
                Verdict::Linearizable => {}
                Verdict::NotLinearizable { detail } => anomalies.push(Anomaly {
                    checker: "linearizable",
                    message: format!("{service}: {detail}"),
                }),
                Verdict::Unknown => anomalies.push(Anomaly {
                    checker: "linearizable",
                    message: format!(
                        "{service}: the search gave up after {LINEARIZABILITY_BUDGET} steps; \
                         shorten the run or raise the budget"
                    ),
                }),
            }
        }
        (checked, anomalies)
    }
}
