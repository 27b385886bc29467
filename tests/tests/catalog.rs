//! The service catalog against real `registry-server` processes: heartbeats and expiry to
//! `critical` and deregistration, blocking queries, durability across crashes and
//! restarts, heartbeats during a failover, a large catalog, expiry storm protection,
//! draining, discovery filters, and bad input on the service routes.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, ensure, Context as _, Result};
use api_spec::{
    codes, DeregisterResponse, ErrorBody, HeartbeatResponse, Instance, InstanceStatus,
    RegisterRequest, ServiceInstances, ServiceList, ServiceSummary, INDEX_HEADER,
};
use reqwest::Method;
use tests::{must_pass, wait_until, Cluster, LEASE_TICK};
use tokio::sync::oneshot;
use tokio::task::{JoinHandle, JoinSet};

/// A TTL no test outlives.
const LONG_TTL: &str = "1h";
/// How long one ordinary request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a failover (new leader elected, requests served again) may take.
const FAILOVER_TIMEOUT: Duration = Duration::from_secs(20);
/// Allowance on top of an expiry bound for what the bound leaves out: committing the
/// expiry entry, one poll interval, request latency.
const EXPIRY_SLACK: Duration = Duration::from_millis(700);
/// How long before a lease's earliest possible deadline a test still expects it alive:
/// room for the read itself to reach the server.
const BEFORE_DEADLINE: Duration = Duration::from_millis(300);
/// How soon a blocking query must answer after the change that wakes it.
const WAKE_LATENCY: Duration = Duration::from_secs(1);

// ---------------------------------------------------------------------------------------
// A small typed HTTP client for the service routes (registry-client has none yet).
// ---------------------------------------------------------------------------------------

/// Wire types this file reads from answers. The `tests` crate does not depend on serde,
/// so the `DeserializeOwned` bound cannot be named; each type gets a concrete impl.
trait Wire: Sized {
    fn from_json(text: &str) -> serde_json::Result<Self>;
}

macro_rules! wire {
    ($($t:ty),* $(,)?) => {
        $(impl Wire for $t {
            fn from_json(text: &str) -> serde_json::Result<Self> {
                serde_json::from_str(text)
            }
        })*
    };
}

wire!(
    Instance,
    HeartbeatResponse,
    DeregisterResponse,
    ServiceList,
    ServiceInstances
);

/// An error answer from the server: status and the stable code of its JSON body.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Refused {
    status: u16,
    code: String,
    message: String,
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.status, self.code, self.message)
    }
}

impl std::error::Error for Refused {}

/// The server's refusal inside `error`, if that is what it is (not a transport failure).
fn refused(error: &anyhow::Error) -> Option<&Refused> {
    error.downcast_ref::<Refused>()
}

/// Whether `error` is a refusal with this status and code.
fn is_refused(error: &anyhow::Error, status: u16, code: &str) -> bool {
    refused(error).is_some_and(|r| r.status == status && r.code == code)
}

/// Fails unless `answer` is a refusal with this status and code.
fn expect_refused<T: std::fmt::Debug>(
    what: &str,
    answer: &Result<T>,
    status: u16,
    code: &str,
) -> Result<()> {
    ensure!(
        answer.as_ref().is_err_and(|e| is_refused(e, status, code)),
        "{what}: {answer:?}, expected {status} {code}"
    );
    Ok(())
}

/// An answer's value in `Debug` form, so answers of different types fit in one list.
fn debug<T: std::fmt::Debug>(answer: Result<T>) -> Result<String> {
    answer.map(|v| format!("{v:?}"))
}

/// An answer's value with the `X-Registry-Index` it carried.
#[derive(Debug, Clone)]
struct Indexed<T> {
    index: u64,
    value: T,
}

/// A raw answer.
#[derive(Debug)]
struct Answer {
    status: u16,
    index: Option<u64>,
    body: String,
}

impl Answer {
    /// The body as `T` if the status is 200 (with the index header every answer must
    /// carry), else a [`Refused`] error.
    fn decode<T: Wire>(self) -> Result<Indexed<T>> {
        if self.status != 200 {
            return Err(self.refusal().into());
        }
        let index = self
            .index
            .ok_or_else(|| anyhow!("200 answer without {INDEX_HEADER}"))?;
        let value =
            T::from_json(&self.body).with_context(|| format!("unexpected body {:?}", self.body))?;
        Ok(Indexed { index, value })
    }

    /// The error this answer carries; a non-JSON error body is reported as code "?".
    fn refusal(&self) -> Refused {
        match serde_json::from_str::<ErrorBody>(&self.body) {
            Ok(body) => Refused {
                status: self.status,
                code: body.error.code,
                message: body.error.message,
            },
            Err(_) => Refused {
                status: self.status,
                code: "?".into(),
                message: format!("not a JSON error body: {:?}", self.body),
            },
        }
    }
}

/// The service routes of one node.
#[derive(Debug, Clone)]
struct Api {
    http: reqwest::Client,
    /// `http://127.0.0.1:PORT`.
    base: String,
}

impl Api {
    fn new(addr: &str) -> Self {
        Api {
            http: reqwest::Client::new(),
            base: format!("http://{addr}"),
        }
    }

    fn of(cluster: &Cluster, id: u64) -> Self {
        Api::new(&cluster.addr(id))
    }

    /// Sends `method path` (path with its query) with an optional JSON body.
    async fn send(
        &self,
        method: Method,
        path: &str,
        json: Option<&str>,
        timeout: Duration,
    ) -> Result<Answer> {
        let mut request = self
            .http
            .request(method.clone(), format!("{}{path}", self.base))
            .timeout(timeout);
        if let Some(json) = json {
            request = request
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(json.to_owned());
        }
        let response = request
            .send()
            .await
            .with_context(|| format!("{method} {path}"))?;
        let status = response.status().as_u16();
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let index = header(INDEX_HEADER).and_then(|v| v.parse().ok());
        let body = response
            .text()
            .await
            .with_context(|| format!("{method} {path}: read the body"))?;
        Ok(Answer {
            status,
            index,
            body,
        })
    }

    async fn register(&self, service: &str, id: &str, req: &RegisterRequest) -> Result<Instance> {
        let body = serde_json::to_string(req)?;
        let path = format!("/v1/services/{service}/instances/{id}");
        let answer = self
            .send(Method::PUT, &path, Some(&body), REQUEST_TIMEOUT)
            .await?;
        Ok(answer
            .decode::<Instance>()
            .with_context(|| format!("register {service}/{id}"))?
            .value)
    }

    async fn heartbeat(&self, service: &str, id: &str) -> Result<HeartbeatResponse> {
        let path = format!("/v1/services/{service}/instances/{id}/heartbeat");
        let answer = self.send(Method::PUT, &path, None, REQUEST_TIMEOUT).await?;
        Ok(answer.decode()?.value)
    }

    async fn set_status(&self, service: &str, id: &str, status: &str) -> Result<Instance> {
        let path = format!("/v1/services/{service}/instances/{id}/status");
        let body = serde_json::json!({ "status": status }).to_string();
        let answer = self
            .send(Method::PUT, &path, Some(&body), REQUEST_TIMEOUT)
            .await?;
        Ok(answer.decode()?.value)
    }

    async fn deregister(&self, service: &str, id: &str) -> Result<DeregisterResponse> {
        let path = format!("/v1/services/{service}/instances/{id}");
        let answer = self
            .send(Method::DELETE, &path, None, REQUEST_TIMEOUT)
            .await?;
        Ok(answer.decode()?.value)
    }

    /// `GET /v1/services/{service}?{query}`; `query` may be empty.
    async fn instances(&self, service: &str, query: &str) -> Result<Indexed<Vec<Instance>>> {
        self.instances_within(service, query, REQUEST_TIMEOUT).await
    }

    async fn instances_within(
        &self,
        service: &str,
        query: &str,
        timeout: Duration,
    ) -> Result<Indexed<Vec<Instance>>> {
        let path = format!("/v1/services/{service}?{query}");
        let answer = self.send(Method::GET, &path, None, timeout).await?;
        let Indexed { index, value } = answer.decode::<ServiceInstances>()?;
        ensure!(
            value.service == service,
            "asked for {service:?}, answer names {:?}",
            value.service
        );
        Ok(Indexed {
            index,
            value: value.instances,
        })
    }

    /// `GET /v1/services?{query}`.
    async fn services_within(
        &self,
        query: &str,
        timeout: Duration,
    ) -> Result<Indexed<Vec<ServiceSummary>>> {
        let answer = self
            .send(Method::GET, &format!("/v1/services?{query}"), None, timeout)
            .await?;
        let Indexed { index, value } = answer.decode::<ServiceList>()?;
        Ok(Indexed {
            index,
            value: value.services,
        })
    }

    async fn services(&self) -> Result<Indexed<Vec<ServiceSummary>>> {
        self.services_within("", REQUEST_TIMEOUT).await
    }
}

/// A registration at `10.0.0.1:port` with a lease of its own.
fn registration(port: u16, ttl: &str, deregister_after: &str) -> RegisterRequest {
    RegisterRequest {
        address: "10.0.0.1".into(),
        port,
        tags: Vec::new(),
        meta: BTreeMap::new(),
        zone: None,
        region: None,
        weight: None,
        ttl: Some(ttl.into()),
        deregister_after: Some(deregister_after.into()),
        lease: None,
        checks: Vec::new(),
    }
}

/// The ids in a list of instances, in the order given.
fn ids(instances: &[Instance]) -> Vec<&str> {
    instances.iter().map(|i| i.id.as_str()).collect()
}

/// The instance with `id`, if listed.
fn find<'a>(instances: &'a [Instance], id: &str) -> Option<&'a Instance> {
    instances.iter().find(|i| i.id == id)
}

/// The wall clock in ms since the epoch (the server stamps `critical_since_ms` with the
/// same host clock).
fn wall_clock_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Timeout left until `deadline`, for [`wait_until`].
fn until(deadline: Instant) -> Duration {
    deadline.saturating_duration_since(Instant::now())
}

/// Checks that every id in `expect` is listed by `service`'s healthy discovery on `api`
/// as `passing`.
async fn ensure_passing(api: &Api, service: &str, expect: &[&str]) -> Result<()> {
    let healthy = api.instances(service, "").await?.value;
    for id in expect {
        let instance = find(&healthy, id).ok_or_else(|| {
            anyhow!(
                "{service}/{id} not in healthy discovery: {:?}",
                ids(&healthy)
            )
        })?;
        ensure!(
            instance.status == InstanceStatus::Passing,
            "{service}/{id} listed as {:?}",
            instance.status
        );
    }
    Ok(())
}

/// Registers `service/{prefix}{i}` for `i` in `0..n` concurrently through `api`.
async fn register_many(
    api: &Api,
    service: &str,
    prefix: &str,
    n: u16,
    ttl: &str,
    deregister_after: &str,
) -> Result<Vec<String>> {
    let mut tasks = JoinSet::new();
    for i in 0..n {
        let (api, service, id) = (api.clone(), service.to_owned(), format!("{prefix}{i}"));
        let req = registration(8000 + i, ttl, deregister_after);
        tasks.spawn(async move { api.register(&service, &id, &req).await.map(|_| id) });
    }
    let mut registered = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        registered.push(joined??);
    }
    registered.sort();
    Ok(registered)
}

/// The last acknowledged heartbeat: when it was sent and when its answer came.
#[derive(Debug, Clone, Copy)]
struct Beat {
    sent: Instant,
    acked: Instant,
}

/// A background task that heartbeats one instance every `every` until stopped. Any
/// failed heartbeat ends it with an error (no failover happens where it is used).
#[derive(Debug)]
struct Heartbeater {
    stop: oneshot::Sender<()>,
    task: JoinHandle<Result<Beat>>,
}

impl Heartbeater {
    fn start(api: &Api, service: &str, id: &str, every: Duration) -> Self {
        let (stop, mut stopped) = oneshot::channel::<()>();
        let (api, service, id) = (api.clone(), service.to_owned(), id.to_owned());
        let task = tokio::spawn(async move {
            loop {
                let sent = Instant::now();
                api.heartbeat(&service, &id)
                    .await
                    .with_context(|| format!("heartbeat of {service}/{id}"))?;
                let last = Beat {
                    sent,
                    acked: Instant::now(),
                };
                tokio::select! {
                    _ = &mut stopped => return Ok(last),
                    _ = tokio::time::sleep(every) => {}
                }
            }
        });
        Heartbeater { stop, task }
    }

    /// Stops it (a heartbeat in flight completes first) and returns the last one that
    /// was acknowledged; fails if any heartbeat failed.
    async fn stop(self) -> Result<Beat> {
        let _ = self.stop.send(());
        self.task.await?
    }
}

// ---------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn instance_that_stops_heartbeating_turns_critical_then_is_deregistered_others_stay() {
    // Default storm protection: one of three instances is under the 50% threshold.
    let cluster = Cluster::start(3, &[]).await.expect("start the cluster");
    must_pass(async {
        let ttl = Duration::from_secs(2);
        let deregister_after = Duration::from_secs(2);
        let api = Api::of(&cluster, cluster.leader_id().await?);
        let service = "web";
        for (i, id) in ["w1", "w2", "w3"].into_iter().enumerate() {
            api.register(service, id, &registration(8000 + i as u16, "2s", "2s"))
                .await?;
        }
        let every = Duration::from_millis(500);
        let w1 = Heartbeater::start(&api, service, "w1", every);
        let w2 = Heartbeater::start(&api, service, "w2", every);
        let w3 = Heartbeater::start(&api, service, "w3", every);
        tokio::time::sleep(Duration::from_millis(1200)).await; // a few heartbeats each
        ensure_passing(&api, service, &["w1", "w2", "w3"]).await?;

        let last = w3.stop().await?;

        // The leader's deadline is at least TTL after it got the last heartbeat, which
        // was after it was sent.
        tokio::time::sleep_until((last.sent + ttl - BEFORE_DEADLINE).into()).await;
        ensure_passing(&api, service, &["w1", "w2", "w3"])
            .await
            .context("shortly before its TTL ran out")?;

        // Out of healthy discovery by TTL + one lease tick (+ slack).
        let critical_by = last.acked + ttl + LEASE_TICK + EXPIRY_SLACK;
        wait_until(
            until(critical_by),
            "w3 to leave healthy discovery",
            || async {
                let healthy = api.instances(service, "").await?.value;
                ensure!(find(&healthy, "w3").is_none(), "still healthy");
                Ok(())
            },
        )
        .await?;
        let all = api.instances(service, "status=any").await?.value;
        let w3_now = find(&all, "w3").ok_or_else(|| anyhow!("w3 gone at once: {:?}", ids(&all)))?;
        ensure!(
            w3_now.status == InstanceStatus::Critical,
            "w3 is {:?}, expected critical",
            w3_now.status
        );
        let critical_since = w3_now
            .critical_since_ms
            .ok_or_else(|| anyhow!("critical w3 has no critical_since_ms"))?;
        let only_critical = api.instances(service, "status=critical").await?.value;
        ensure!(
            ids(&only_critical) == ["w3"],
            "status=critical lists {:?}",
            ids(&only_critical)
        );
        ensure_passing(&api, service, &["w1", "w2"])
            .await
            .context("after w3 turned critical")?;
        let summary = api.services().await?.value;
        ensure!(
            summary
                == [ServiceSummary {
                    name: service.into(),
                    instances: 3,
                    healthy: 2
                }],
            "GET /v1/services: {summary:?}"
        );

        // Still listed (as critical) until deregister_after has passed since it turned
        // critical (the server's wall clock is this host's).
        let dereg_ms = u64::try_from(deregister_after.as_millis())?;
        let still_listed_at = critical_since + dereg_ms - 300;
        while wall_clock_ms() < still_listed_at {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let all = api.instances(service, "status=any").await?.value;
        ensure!(
            find(&all, "w3").is_some_and(|i| i.status == InstanceStatus::Critical),
            "w3 should still be listed as critical shortly before deregister_after: {:?}",
            ids(&all)
        );

        // Then deregistered: gone even from status=any, within a tick (+ slack).
        let gone_by = Instant::now() + Duration::from_millis(300) + LEASE_TICK + EXPIRY_SLACK;
        wait_until(until(gone_by), "w3 to be deregistered", || async {
            let all = api.instances(service, "status=any").await?.value;
            ensure!(find(&all, "w3").is_none(), "still listed: {:?}", ids(&all));
            Ok(())
        })
        .await?;
        expect_refused(
            "heartbeat of the deregistered w3",
            &api.heartbeat(service, "w3").await,
            404,
            codes::INSTANCE_NOT_FOUND,
        )?;

        ensure_passing(&api, service, &["w1", "w2"])
            .await
            .context("after w3 was deregistered")?;
        let all = api.instances(service, "status=any").await?.value;
        ensure!(
            ids(&all) == ["w1", "w2"],
            "status=any lists {:?}",
            ids(&all)
        );
        w1.stop().await?;
        w2.stop().await?;
        Ok(())
    })
    .await;
}

/// Starts `GET /v1/services/{service}?index={index}&wait={wait}` on `api` in the
/// background; the task gives the answer and when it arrived.
fn blocking_instances(
    api: &Api,
    service: &str,
    index: u64,
    wait: &str,
) -> JoinHandle<Result<(Instant, Indexed<Vec<Instance>>)>> {
    let (api, service) = (api.clone(), service.to_owned());
    let query = format!("index={index}&wait={wait}");
    tokio::spawn(async move {
        let answer = api
            .instances_within(&service, &query, Duration::from_secs(30))
            .await?;
        Ok((Instant::now(), answer))
    })
}

#[tokio::test]
async fn blocking_queries_wake_on_their_service_only_and_the_list_wakes_on_any_change() {
    let cluster = Cluster::start(3, &[]).await.expect("start the cluster");
    must_pass(async {
        let leader_id = cluster.leader_id().await?;
        let leader = Api::of(&cluster, leader_id);
        let follower_id = cluster
            .ids()
            .into_iter()
            .find(|&id| id != leader_id)
            .ok_or_else(|| anyhow!("no follower"))?;
        // Blocking queries on a follower: its watches fire as it applies the entries.
        let follower = Api::of(&cluster, follower_id);
        leader
            .register("alpha", "a1", &registration(8001, LONG_TTL, "1m"))
            .await?;
        leader
            .register("beta", "b1", &registration(8001, LONG_TTL, "1m"))
            .await?;

        // 1. A registration in alpha wakes a blocking query on alpha at once.
        let current = follower.instances("alpha", "").await?;
        let query = blocking_instances(&follower, "alpha", current.index, "10s");
        tokio::time::sleep(Duration::from_millis(300)).await; // let it block
        ensure!(
            !query.is_finished(),
            "answered without any change: {:?}",
            query.await?
        );
        leader
            .register("alpha", "a2", &registration(8002, LONG_TTL, "1m"))
            .await?;
        let registered = Instant::now();
        let (answered, woken) = query.await??;
        let latency = answered.saturating_duration_since(registered);
        ensure!(latency < WAKE_LATENCY, "woke {latency:?} after the change");
        ensure!(
            ids(&woken.value) == ["a1", "a2"] && woken.index > current.index,
            "woken answer: index {} (asked {}), ids {:?}",
            woken.index,
            current.index,
            ids(&woken.value)
        );

        // 2. A change to beta does not wake a query on alpha; the next alpha change does.
        let query = blocking_instances(&follower, "alpha", woken.index, "10s");
        tokio::time::sleep(Duration::from_millis(300)).await;
        leader
            .register("beta", "b2", &registration(8002, LONG_TTL, "1m"))
            .await?;
        tokio::time::sleep(Duration::from_millis(1500)).await; // time passing is the point
        ensure!(
            !query.is_finished(),
            "a change to beta woke the query on alpha: {:?}",
            query.await?
        );
        leader.deregister("alpha", "a1").await?;
        let changed = Instant::now();
        let (answered, woken_again) = query.await??;
        let latency = answered.saturating_duration_since(changed);
        ensure!(latency < WAKE_LATENCY, "woke {latency:?} after the change");
        ensure!(
            ids(&woken_again.value) == ["a2"],
            "after deregistering a1: {:?}",
            ids(&woken_again.value)
        );

        // 3. Without a change it answers after the wait (+ up to 1/16 jitter), unchanged.
        let started = Instant::now();
        let (answered, same) =
            blocking_instances(&follower, "alpha", woken_again.index, "1s").await??;
        let waited = answered.saturating_duration_since(started);
        ensure!(
            waited >= Duration::from_secs(1) && waited < Duration::from_millis(1800),
            "an idle wait=1s query answered after {waited:?}"
        );
        ensure!(
            ids(&same.value) == ["a2"],
            "idle answer: {:?}",
            ids(&same.value)
        );

        // 4. The service list wakes on a change to any service.
        let list = leader.services().await?;
        let list_query = tokio::spawn({
            let leader = leader.clone();
            let query = format!("index={}&wait=10s", list.index);
            async move {
                let answer = leader
                    .services_within(&query, Duration::from_secs(30))
                    .await?;
                anyhow::Ok((Instant::now(), answer))
            }
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        ensure!(
            !list_query.is_finished(),
            "the list answered without any change: {:?}",
            list_query.await?
        );
        leader
            .register("gamma", "g1", &registration(8001, LONG_TTL, "1m"))
            .await?;
        let changed = Instant::now();
        let (answered, woken_list) = list_query.await??;
        let latency = answered.saturating_duration_since(changed);
        ensure!(
            latency < WAKE_LATENCY,
            "the list woke {latency:?} after the change"
        );
        let names: Vec<&str> = woken_list.value.iter().map(|s| s.name.as_str()).collect();
        ensure!(
            names == ["alpha", "beta", "gamma"] && woken_list.index > list.index,
            "woken list: index {} (asked {}), services {names:?}",
            woken_list.index,
            list.index
        );
        Ok(())
    })
    .await;
}

/// Reads `service` with `query` through `api`, retrying failures (no answer, 503)
/// for up to [`FAILOVER_TIMEOUT`]; an answer is returned as it is.
async fn read_retrying(api: &Api, service: &str, query: &str) -> Result<Vec<Instance>> {
    let what = format!("a read of {service} to be answered");
    wait_until(FAILOVER_TIMEOUT, &what, || async {
        Ok(api.instances(service, query).await?.value)
    })
    .await
}

/// Checks that `api` lists exactly `expected` (service → ids) with `status=any`, each
/// `passing` and on the port [`register_many`] gave it.
async fn ensure_exactly(
    api: &Api,
    expected: &BTreeMap<String, Vec<String>>,
    when: &str,
) -> Result<()> {
    for (service, want) in expected {
        let all = read_retrying(api, service, "status=any")
            .await
            .with_context(|| format!("{when}: read {service}"))?;
        ensure!(
            ids(&all) == want.iter().map(String::as_str).collect::<Vec<_>>(),
            "{when}: {service} lists {:?}, expected {want:?}",
            ids(&all)
        );
        for instance in &all {
            let i: u16 = instance
                .id
                .trim_start_matches(|c: char| !c.is_ascii_digit())
                .parse()?;
            ensure!(
                instance.status == InstanceStatus::Passing && instance.port == 8000 + i,
                "{when}: {service}/{} is {:?} on port {}",
                instance.id,
                instance.status,
                instance.port
            );
        }
    }
    Ok(())
}

#[tokio::test]
async fn registrations_survive_a_leader_kill_and_whole_cluster_restarts() {
    let cluster = Cluster::start(3, &[]).await.expect("start the cluster");
    must_pass(async {
        let old = cluster.leader_id().await?;
        let api = Api::of(&cluster, old);
        let mut expected = BTreeMap::new();
        for service in ["orders", "payments", "users"] {
            let ids = register_many(&api, service, "i", 10, LONG_TTL, "1m").await?;
            expected.insert(service.to_owned(), ids);
        }

        cluster.kill(old).await?;
        let new = cluster.wait_for_leader(Some(old), FAILOVER_TIMEOUT).await?;
        ensure_exactly(
            &Api::of(&cluster, new),
            &expected,
            "after the leader's SIGKILL",
        )
        .await?;

        // Clean shutdown of every node, then start again (the killed one too).
        cluster.stop_all().await?;
        let leader = cluster.restart_all().await?;
        ensure_exactly(&Api::of(&cluster, leader), &expected, "after stop_all").await?;
        let api = Api::of(&cluster, leader);
        let more = register_many(&api, "search", "i", 10, LONG_TTL, "1m").await?;
        expected.insert("search".to_owned(), more);

        // Power cut: every acknowledged registration was fsynced on a majority.
        cluster.kill_all().await?;
        let leader = cluster.restart_all().await?;
        let api = Api::of(&cluster, leader);
        ensure_exactly(&api, &expected, "after kill_all").await?;
        let summary = api.services().await?.value;
        ensure!(
            summary.len() == 4 && summary.iter().all(|s| s.instances == 10 && s.healthy == 10),
            "GET /v1/services after kill_all: {summary:?}"
        );
        Ok(())
    })
    .await;
}

#[tokio::test]
async fn heartbeats_through_followers_during_a_failover_keep_the_instance_alive() {
    let cluster = Cluster::start(3, &[]).await.expect("start the cluster");
    must_pass(async {
        let ttl = Duration::from_secs(3);
        let old = cluster.leader_id().await?;
        let followers: Vec<Api> = cluster
            .ids()
            .into_iter()
            .filter(|&id| id != old)
            .map(|id| Api::of(&cluster, id))
            .collect();
        let (service, id) = ("pay", "p1");
        followers[0]
            .register(service, id, &registration(8000, "3s", "1m"))
            .await?;

        // Heartbeat through the followers in turn, every TTL/4; retry errors every 200ms.
        // An answer saying the instance is critical or gone is the failure under test.
        let (stop_tx, mut stop_rx) = oneshot::channel::<()>();
        let heartbeater = tokio::spawn({
            let followers = followers.clone();
            async move {
                let mut successes: Vec<Instant> = Vec::new();
                let mut errors = 0usize;
                for turn in 0.. {
                    let pause = match followers[turn % 2].heartbeat(service, id).await {
                        Ok(_) => {
                            successes.push(Instant::now());
                            Duration::from_millis(750)
                        }
                        Err(e)
                            if is_refused(&e, 404, codes::INSTANCE_CRITICAL)
                                || is_refused(&e, 404, codes::INSTANCE_NOT_FOUND) =>
                        {
                            bail!("a heartbeat found the instance expired: {e:#}")
                        }
                        Err(_) => {
                            errors += 1;
                            Duration::from_millis(200)
                        }
                    };
                    tokio::select! {
                        _ = &mut stop_rx => break,
                        _ = tokio::time::sleep(pause) => {}
                    }
                }
                Ok((successes, errors))
            }
        });

        tokio::time::sleep(Duration::from_secs(1)).await;
        cluster.kill(old).await?;
        let killed = Instant::now();

        // For three TTLs, every survivor's local view must list the instance, not
        // critical. Stale reads need no leader, so they are answered during the election.
        let watch = async {
            let mut answered = 0usize;
            while killed.elapsed() < 3 * ttl {
                for api in &followers {
                    let Ok(read) = api.instances(service, "status=any&stale").await else {
                        continue;
                    };
                    answered += 1;
                    let found = find(&read.value, id);
                    ensure!(
                        found.is_some_and(|i| i.status == InstanceStatus::Passing),
                        "{:.1}s after the kill, {} lists {service}/{id} as {:?}",
                        killed.elapsed().as_secs_f64(),
                        api.base,
                        found.map(|i| i.status)
                    );
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            anyhow::Ok(answered)
        };
        let election = async {
            let new = cluster.wait_for_leader(Some(old), FAILOVER_TIMEOUT).await?;
            anyhow::Ok((new, Instant::now()))
        };
        let (answered, elected) = tokio::join!(watch, election);
        let (answered, (new, elected)) = (answered?, elected?);
        ensure!(
            answered >= 40,
            "only {answered} stale reads answered in {:?}",
            3 * ttl
        );

        let _ = stop_tx.send(());
        let (successes, errors) = heartbeater.await??;
        ensure!(
            successes.iter().any(|t| *t > elected),
            "no heartbeat succeeded after node {new} was elected ({} successes, {errors} errors)",
            successes.len()
        );
        let all = Api::of(&cluster, new)
            .instances(service, "status=any")
            .await?
            .value;
        ensure!(
            find(&all, id).is_some_and(|i| i.status == InstanceStatus::Passing),
            "on the new leader after the failover: {all:?}"
        );
        Ok(())
    })
    .await;
}

#[tokio::test]
async fn ten_thousand_instances_in_a_hundred_services_are_listed_correctly() {
    let cluster = Cluster::start_single(&[])
        .await
        .expect("start a single node");
    must_pass(async {
        const SERVICES: usize = 100;
        const PER_SERVICE: usize = 100;
        const CONCURRENCY: usize = 64;
        let api = Api::of(&cluster, 1);
        let service_name = |s: usize| format!("svc-{s:03}");
        let instance_id = |k: usize| format!("i-{k:03}");
        let address = |s: usize, k: usize| format!("10.{}.{}.{}", s, k / 256, k % 256);
        let port = |k: usize| 20_000 + u16::try_from(k).unwrap_or(0);

        let started = Instant::now();
        let next = Arc::new(AtomicUsize::new(0));
        let mut workers = JoinSet::new();
        for _ in 0..CONCURRENCY {
            let (api, next) = (api.clone(), next.clone());
            workers.spawn(async move {
                loop {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    if n >= SERVICES * PER_SERVICE {
                        return anyhow::Ok(());
                    }
                    let (s, k) = (n / PER_SERVICE, n % PER_SERVICE);
                    let mut req = registration(port(k), LONG_TTL, "1m");
                    req.address = address(s, k);
                    api.register(&service_name(s), &instance_id(k), &req)
                        .await?;
                }
            });
        }
        while let Some(joined) = workers.join_next().await {
            joined??;
        }
        let registering = started.elapsed();

        let summary = api.services().await?.value;
        ensure!(
            summary.len() == SERVICES,
            "{} services listed (registering took {registering:?})",
            summary.len()
        );
        for (s, entry) in summary.iter().enumerate() {
            ensure!(
                entry.name == service_name(s)
                    && entry.instances == PER_SERVICE as u64
                    && entry.healthy == PER_SERVICE as u64,
                "service #{s}: {entry:?}"
            );
        }

        for s in [0, 37, 99] {
            let name = service_name(s);
            let listed = api.instances(&name, "").await?.value;
            let want: Vec<String> = (0..PER_SERVICE).map(instance_id).collect();
            ensure!(
                ids(&listed) == want.iter().map(String::as_str).collect::<Vec<_>>(),
                "{name} lists {} ids: {:?}",
                listed.len(),
                ids(&listed)
            );
            for (k, instance) in listed.iter().enumerate() {
                ensure!(
                    instance.service == name
                        && instance.address == address(s, k)
                        && instance.port == port(k)
                        && instance.status == InstanceStatus::Passing,
                    "{name}/{}: {instance:?}",
                    instance.id
                );
            }
        }
        Ok(())
    })
    .await;
}

/// The `critical_since_ms` of each of `service`'s critical instances, sorted.
async fn critical_since(api: &Api, service: &str) -> Result<Vec<u64>> {
    let all = api.instances(service, "status=any").await?.value;
    let mut since: Vec<u64> = all
        .iter()
        .filter(|i| i.status == InstanceStatus::Critical)
        .map(|i| i.critical_since_ms.unwrap_or(0))
        .collect();
    since.sort_unstable();
    Ok(since)
}

/// Storm protection flags spelled out, so a change of defaults does not change the test.
const STORM_FLAGS: [&str; 8] = [
    "--lease-tick",
    "100ms",
    "--expiry-storm-threshold",
    "0.5",
    "--expiry-storm-window",
    "10s",
    "--expiry-storm-rate",
    "1",
];

#[tokio::test]
async fn expiry_storm_protection_releases_a_wholly_silent_service_at_the_bounded_rate() {
    let cluster = Cluster::start_single(&STORM_FLAGS)
        .await
        .expect("start a single node");
    must_pass(async {
        let ttl = Duration::from_secs(1);
        let api = Api::of(&cluster, 1);
        // Registered concurrently (the server packs concurrent writes into one or two
        // Raft entries, so the deadlines fall together) and never heartbeated: the whole
        // service falls silent at once.
        let sent = Instant::now();
        register_many(&api, "storm", "s", 6, "1s", "1m").await?;
        let registered = Instant::now();

        tokio::time::sleep_until((sent + ttl - BEFORE_DEADLINE).into()).await;
        ensure!(
            critical_since(&api, "storm").await?.is_empty(),
            "an instance turned critical before its TTL"
        );

        // All six are due at once, over the 50% threshold: they are held back and
        // released at one per second, the first a second after they fell due. Without
        // protection all six would be critical within a tick of the deadline. (Should
        // the deadlines straddle a tick, a first batch of at most three, not over the
        // threshold, goes at once and the rest are held: still at most three.)
        tokio::time::sleep_until((registered + ttl + Duration::from_millis(800)).into()).await;
        let critical = critical_since(&api, "storm").await?;
        ensure!(
            critical.len() <= 3,
            "{} of 6 critical 0.8s after the deadline: storm protection did not hold them",
            critical.len()
        );
        tokio::time::sleep_until((registered + ttl + Duration::from_millis(1500)).into()).await;
        let critical = critical_since(&api, "storm").await?;
        ensure!(
            critical.len() < 6,
            "all 6 critical 1.5s after the deadline: {critical:?}"
        );
        let status = cluster.status(1).await?;
        let storm = status
            .expiry_storm
            .ok_or_else(|| anyhow!("the leader's /v1/cluster has no expiry_storm"))?;
        ensure!(
            storm.enabled && storm.active_services == ["storm"] && storm.deferred_total > 0,
            "expiry_storm during the storm: {storm:?}"
        );

        // Eventually all six are critical (a rate of 1/s: about 6s after the deadline).
        let all_by =
            registered + ttl + Duration::from_secs(6) + LEASE_TICK + Duration::from_secs(3);
        let critical = wait_until(until(all_by), "all six to turn critical", || async {
            let critical = critical_since(&api, "storm").await?;
            ensure!(critical.len() == 6, "{} critical", critical.len());
            Ok(critical)
        })
        .await?;
        // Released over time, not at once: six at 1/s after at most three together.
        let (first, last) = (critical[0], critical[5]);
        ensure!(
            last - first >= 2500,
            "critical_since_ms {critical:?}: released within {}ms",
            last - first
        );
        // Nothing is held back any more: protection disengages with the last release.
        wait_until(
            Duration::from_secs(2),
            "storm protection to disengage",
            || async {
                let status = cluster.status(1).await?;
                let storm = status
                    .expiry_storm
                    .ok_or_else(|| anyhow!("no expiry_storm"))?;
                ensure!(storm.active_services.is_empty(), "{storm:?}");
                Ok(())
            },
        )
        .await?;
        Ok(())
    })
    .await;
}

#[tokio::test]
async fn a_lease_shared_by_a_whole_service_still_expires_under_storm_protection() {
    let cluster = Cluster::start_single(&STORM_FLAGS)
        .await
        .expect("start a single node");
    must_pass(async {
        let api = Api::of(&cluster, 1);
        let lease = cluster
            .client_for(1)
            .create_lease(Duration::from_secs(1))
            .await?
            .value
            .lease;
        let granted = Instant::now();
        for i in 0..6 {
            let mut req = registration(8000 + i, "1s", "1m");
            req.ttl = None;
            req.lease = Some(lease);
            api.register("shared", &format!("s{i}"), &req).await?;
        }
        // The whole service rides on one lease that nobody keeps alive: a storm, held
        // back for about a second (the first token), then the lease goes as one.
        let bound =
            granted + Duration::from_secs(1) + Duration::from_secs(1) + LEASE_TICK + EXPIRY_SLACK;
        let critical = wait_until(
            until(bound),
            "the shared lease's instances to turn critical",
            || async {
                let critical = critical_since(&api, "shared").await?;
                ensure!(critical.len() == 6, "{} of 6 critical", critical.len());
                Ok(critical)
            },
        )
        .await?;
        ensure!(
            critical.iter().all(|t| *t == critical[0]),
            "one lease, one expiry: {critical:?}"
        );
        Ok(())
    })
    .await;
}

#[tokio::test]
async fn one_silent_instance_of_a_healthy_service_expires_at_once_without_storm_protection() {
    let cluster = Cluster::start_single(&STORM_FLAGS)
        .await
        .expect("start a single node");
    must_pass(async {
        let ttl = Duration::from_secs(1);
        let api = Api::of(&cluster, 1);
        register_many(&api, "calm", "c", 3, "1s", "1m").await?;
        let every = Duration::from_millis(250);
        let beaters: Vec<Heartbeater> = (0..3)
            .map(|i| Heartbeater::start(&api, "calm", &format!("c{i}"), every))
            .collect();
        // The fourth one never heartbeats: its deadline is TTL after its registration.
        api.register("calm", "c3", &registration(8003, "1s", "1m"))
            .await?;
        let registered = Instant::now();

        let critical_by = registered + ttl + LEASE_TICK + EXPIRY_SLACK;
        let mut critical_at = None;
        // Watch until a second past the bound: the storm guard must never hold "calm".
        while Instant::now() < critical_by + Duration::from_secs(1) {
            let storm = cluster
                .status(1)
                .await?
                .expiry_storm
                .ok_or_else(|| anyhow!("the leader's /v1/cluster has no expiry_storm"))?;
            ensure!(
                storm.active_services.is_empty() && storm.deferred_total == 0,
                "storm protection engaged for one silent instance of four: {storm:?}"
            );
            let all = api.instances("calm", "status=any").await?.value;
            let c3 = find(&all, "c3").map(|i| i.status);
            if critical_at.is_none() && c3 == Some(InstanceStatus::Critical) {
                critical_at = Some(Instant::now());
            }
            ensure!(
                critical_at.is_some() || Instant::now() < critical_by,
                "c3 is {c3:?} past TTL + tick + slack"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        ensure_passing(&api, "calm", &["c0", "c1", "c2"]).await?;
        for beater in beaters {
            beater.stop().await?;
        }
        Ok(())
    })
    .await;
}

#[tokio::test]
async fn draining_leaves_healthy_discovery_and_deregistration_and_unknowns_are_404() {
    let cluster = Cluster::start(3, &[]).await.expect("start the cluster");
    must_pass(async {
        let api = Api::of(&cluster, cluster.leader_id().await?);
        let service = "api";
        register_many(&api, service, "d", 2, "10s", "1m").await?;

        let drained = api.set_status(service, "d0", "draining").await?;
        ensure!(
            drained.status == InstanceStatus::Draining,
            "set draining answered {:?}",
            drained.status
        );
        let healthy = api.instances(service, "").await?.value;
        ensure!(
            ids(&healthy) == ["d1"],
            "healthy while draining: {:?}",
            ids(&healthy)
        );
        let all = api.instances(service, "status=any").await?.value;
        ensure!(
            find(&all, "d0").is_some_and(|i| i.status == InstanceStatus::Draining)
                && all.len() == 2,
            "status=any while draining: {all:?}"
        );
        let draining = api.instances(service, "status=draining").await?.value;
        ensure!(
            ids(&draining) == ["d0"],
            "status=draining: {:?}",
            ids(&draining)
        );
        let summary = api.services().await?.value;
        ensure!(
            summary.len() == 1 && summary[0].instances == 2 && summary[0].healthy == 1,
            "GET /v1/services while draining: {summary:?}"
        );
        // A draining instance's lease lives: heartbeats still succeed.
        let beat = api.heartbeat(service, "d0").await?;
        ensure!(
            beat.ttl_ms == 10_000 && beat.remaining_ms > 9_000 && Some(beat.lease) == drained.lease,
            "heartbeat while draining: {beat:?}"
        );

        let back = api.set_status(service, "d0", "passing").await?;
        ensure!(
            back.status == InstanceStatus::Passing,
            "set passing: {back:?}"
        );
        let healthy = api.instances(service, "").await?.value;
        ensure!(
            ids(&healthy) == ["d0", "d1"],
            "healthy after passing: {:?}",
            ids(&healthy)
        );
        expect_refused(
            "setting critical by hand",
            &api.set_status(service, "d0", "critical").await,
            400,
            codes::INVALID_ARGUMENT,
        )?;

        let gone = api.deregister(service, "d0").await?;
        ensure!(
            gone.deregistered && gone.service == service && gone.id == "d0",
            "deregister answered {gone:?}"
        );
        let all = api.instances(service, "status=any").await?.value;
        ensure!(
            ids(&all) == ["d1"],
            "status=any after deregister: {:?}",
            ids(&all)
        );
        for (what, answer) in [
            (
                "second deregister",
                debug(api.deregister(service, "d0").await),
            ),
            (
                "heartbeat of the deregistered",
                debug(api.heartbeat(service, "d0").await),
            ),
            (
                "heartbeat of an unknown",
                debug(api.heartbeat(service, "nope").await),
            ),
            (
                "heartbeat in an unknown service",
                debug(api.heartbeat("no-such-service", "d1").await),
            ),
            (
                "status of an unknown",
                debug(api.set_status(service, "nope", "draining").await),
            ),
        ] {
            expect_refused(what, &answer, 404, codes::INSTANCE_NOT_FOUND)?;
        }

        // A critical instance: a heartbeat is 404 instance_critical, a status change 409;
        // registering it again brings it back.
        api.register(service, "d2", &registration(8002, "1s", "1m"))
            .await?;
        wait_until(Duration::from_secs(5), "d2 to turn critical", || async {
            let critical = api.instances(service, "status=critical").await?.value;
            ensure!(ids(&critical) == ["d2"], "critical: {:?}", ids(&critical));
            Ok(())
        })
        .await?;
        expect_refused(
            "heartbeat of a critical instance",
            &api.heartbeat(service, "d2").await,
            404,
            codes::INSTANCE_CRITICAL,
        )?;
        expect_refused(
            "draining a critical instance",
            &api.set_status(service, "d2", "draining").await,
            409,
            codes::INSTANCE_CRITICAL,
        )?;
        let again = api
            .register(service, "d2", &registration(8002, LONG_TTL, "1m"))
            .await?;
        ensure!(
            again.status == InstanceStatus::Passing && again.critical_since_ms.is_none(),
            "re-registered critical instance: {again:?}"
        );
        api.heartbeat(service, "d2").await?;
        Ok(())
    })
    .await;
}

#[tokio::test]
async fn discovery_filters_on_tags_zone_region_meta_and_status_and_reregistering_updates() {
    let cluster = Cluster::start_single(&[])
        .await
        .expect("start a single node");
    must_pass(async {
        let api = Api::of(&cluster, 1);
        let service = "shop";
        let with = |port: u16, tags: &[&str], zone: &str, region: &str, meta: &[(&str, &str)]| {
            let mut req = registration(port, LONG_TTL, "1m");
            req.tags = tags.iter().map(|t| (*t).to_owned()).collect();
            req.zone = Some(zone.into());
            req.region = Some(region.into());
            req.meta = meta
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect();
            req
        };
        let f1 = with(
            8001,
            &["v1", "canary"],
            "eu-1a",
            "eu",
            &[("team", "web"), ("tier", "gold")],
        );
        let f2 = with(8002, &["v1"], "eu-1b", "eu", &[("team", "web")]);
        let mut f3 = with(8003, &["v2"], "us-1a", "us", &[("team", "ops")]);
        f3.weight = Some(7);
        api.register(service, "f1", &f1).await?;
        api.register(service, "f2", &f2).await?;
        let registered = api.register(service, "f3", &f3).await?;
        ensure!(
            registered.weight == 7 && registered.own_lease && registered.ttl_ms == Some(3_600_000),
            "registration answer: {registered:?}"
        );

        for (query, want) in [
            ("", vec!["f1", "f2", "f3"]),
            ("tag=v1", vec!["f1", "f2"]),
            ("tag=v1&tag=canary", vec!["f1"]),
            ("tag=v1&tag=v2", vec![]),
            ("zone=eu-1b", vec!["f2"]),
            ("region=eu", vec!["f1", "f2"]),
            ("region=us&tag=v1", vec![]),
            ("meta.team=web", vec!["f1", "f2"]),
            ("meta.team=web&meta.tier=gold", vec!["f1"]),
            ("meta.tier=silver", vec![]),
            ("status=passing&region=us", vec!["f3"]),
            ("stale&tag=v2", vec!["f3"]),
            ("consistency=stale&zone=eu-1a", vec!["f1"]),
        ] {
            let listed = api.instances(service, query).await?.value;
            ensure!(
                ids(&listed) == want,
                "?{query} lists {:?}, expected {want:?}",
                ids(&listed)
            );
        }
        api.set_status(service, "f2", "draining").await?;
        let listed = api.instances(service, "tag=v1").await?.value;
        ensure!(
            ids(&listed) == ["f1"],
            "tag=v1 with f2 draining: {:?}",
            ids(&listed)
        );
        let listed = api.instances(service, "tag=v1&status=any").await?.value;
        ensure!(
            ids(&listed) == ["f1", "f2"],
            "tag=v1&status=any: {:?}",
            ids(&listed)
        );

        // Registering an existing id again updates it in place, under the same lease.
        let mut moved = f1.clone();
        moved.port = 9001;
        moved.tags = vec!["v3".into()];
        let before = find(&api.instances(service, "").await?.value, "f1")
            .cloned()
            .ok_or_else(|| anyhow!("f1 missing"))?;
        let updated = api.register(service, "f1", &moved).await?;
        let all = api.instances(service, "status=any").await?.value;
        ensure!(
            ids(&all) == ["f1", "f2", "f3"],
            "after re-registering f1: {:?}",
            ids(&all)
        );
        let after = find(&all, "f1").ok_or_else(|| anyhow!("f1 missing"))?;
        ensure!(
            after.port == 9001
                && after.tags == ["v3"]
                && after.modify_index > before.modify_index
                && updated.lease == before.lease,
            "f1 before {before:?}, after {after:?}, answer lease {:?}",
            updated.lease
        );
        let v1 = api.instances(service, "tag=v1&status=any").await?.value;
        ensure!(
            ids(&v1) == ["f2"],
            "tag=v1 after f1 lost it: {:?}",
            ids(&v1)
        );
        Ok(())
    })
    .await;
}

/// One bad request on a service route and the error it must get.
struct Case {
    name: &'static str,
    method: Method,
    path: String,
    /// A JSON body, sent with `Content-Type: application/json`.
    body: Option<String>,
    status: u16,
    code: &'static str,
}

impl Case {
    /// The request as the shared checker sends it (a JSON body when there is one).
    fn into_request(self) -> tests::BadRequest {
        tests::BadRequest {
            name: self.name,
            method: self.method,
            path: self.path,
            content_type: self.body.is_some().then_some("application/json"),
            body: self.body.map(String::into_bytes).unwrap_or_default(),
            status: self.status,
            code: self.code,
        }
    }
}

fn bad_register(
    name: &'static str,
    body: serde_json::Value,
    status: u16,
    code: &'static str,
) -> Case {
    Case {
        name,
        method: Method::PUT,
        path: "/v1/services/web/instances/i1".into(),
        body: Some(body.to_string()),
        status,
        code,
    }
}

fn bad_get(name: &'static str, path: &str, code: &'static str) -> Case {
    Case {
        name,
        method: Method::GET,
        path: path.into(),
        body: None,
        status: 400,
        code,
    }
}

fn bad_input_cases(unknown_lease: &str) -> Vec<Case> {
    use serde_json::json;
    let valid = json!({"address": "10.0.0.1", "port": 80});
    let with = |field: &str, value: serde_json::Value| {
        let mut body = valid.clone();
        body[field] = value;
        body
    };
    let arg = codes::INVALID_ARGUMENT;
    let duration = codes::INVALID_DURATION;
    let json_error = codes::INVALID_JSON;
    vec![
        Case {
            path: "/v1/services/bad%20name/instances/i1".into(),
            ..bad_register("service name with a space", valid.clone(), 400, arg)
        },
        Case {
            path: "/v1/services/-x/instances/i1".into(),
            ..bad_register("service name starting with '-'", valid.clone(), 400, arg)
        },
        Case {
            path: format!("/v1/services/{}/instances/i1", "s".repeat(129)),
            ..bad_register("service name of 129 characters", valid.clone(), 400, arg)
        },
        Case {
            path: "/v1/services/web/instances/bad%20id".into(),
            ..bad_register("instance id with a space", valid.clone(), 400, arg)
        },
        Case {
            path: "/v1/services/web/instances/-i".into(),
            ..bad_register("instance id starting with '-'", valid.clone(), 400, arg)
        },
        bad_register(
            "address with a scheme",
            with("address", json!("http://x")),
            400,
            arg,
        ),
        bad_register("port 0", with("port", json!(0)), 400, arg),
        bad_register("port 70000", with("port", json!(70000)), 400, json_error),
        bad_register(
            "port as a string",
            with("port", json!("80")),
            400,
            json_error,
        ),
        bad_register("missing address", json!({"port": 80}), 400, json_error),
        bad_register("unknown field", with("adress", json!("x")), 400, json_error),
        bad_register("ttl 0s", with("ttl", json!("0s")), 400, duration),
        bad_register(
            "ttl without a unit",
            with("ttl", json!("15")),
            400,
            duration,
        ),
        bad_register("ttl 25h", with("ttl", json!("25h")), 400, duration),
        bad_register(
            "deregister_after of 8 days",
            with("deregister_after", json!("8d")),
            400,
            duration,
        ),
        bad_register(
            "lease and ttl together",
            json!({"address": "10.0.0.1", "port": 80, "ttl": "5s", "lease": unknown_lease}),
            400,
            arg,
        ),
        bad_register(
            "unknown lease",
            with("lease", json!(unknown_lease)),
            404,
            codes::LEASE_NOT_FOUND,
        ),
        bad_register(
            "lease that is not a UUID",
            with("lease", json!("nope")),
            400,
            json_error,
        ),
        bad_register(
            "65 tags",
            with(
                "tags",
                json!((0..65).map(|i| format!("t{i}")).collect::<Vec<_>>()),
            ),
            400,
            arg,
        ),
        bad_register("empty tag", with("tags", json!([""])), 400, arg),
        bad_register(
            "meta key with a space",
            with("meta", json!({"a b": "v"})),
            400,
            arg,
        ),
        bad_register("zone with a space", with("zone", json!("eu 1")), 400, arg),
        bad_register("weight 5000", with("weight", json!(5000)), 400, arg),
        Case {
            name: "status critical by hand",
            path: "/v1/services/web/instances/i1/status".into(),
            body: Some(json!({"status": "critical"}).to_string()),
            ..bad_register("", valid.clone(), 400, arg)
        },
        Case {
            name: "status that does not exist",
            path: "/v1/services/web/instances/i1/status".into(),
            body: Some(json!({"status": "resting"}).to_string()),
            ..bad_register("", valid.clone(), 400, json_error)
        },
        Case {
            name: "registration without a body",
            body: None,
            ..bad_register("", valid, 415, codes::UNSUPPORTED_MEDIA_TYPE)
        },
        Case {
            method: Method::PUT,
            ..bad_get(
                "heartbeat with a bad service name",
                "/v1/services/-x/instances/i1/heartbeat",
                arg,
            )
        },
        Case {
            method: Method::DELETE,
            ..bad_get(
                "deregister with a bad instance id",
                "/v1/services/web/instances/-i",
                arg,
            )
        },
        bad_get("get with a bad service name", "/v1/services/-x", arg),
        bad_get("unknown query parameter", "/v1/services/web?color=red", arg),
        bad_get(
            "unknown query parameter on the list",
            "/v1/services?tag=x",
            arg,
        ),
        bad_get("status=bogus", "/v1/services/web?status=bogus", arg),
        bad_get("index=abc", "/v1/services/web?index=abc", arg),
        bad_get("index=abc on the list", "/v1/services?index=abc", arg),
        bad_get("negative index", "/v1/services/web?index=-1", arg),
        bad_get(
            "wait without a unit",
            "/v1/services/web?index=1&wait=5",
            duration,
        ),
        bad_get(
            "wait that is not a duration",
            "/v1/services?index=1&wait=soon",
            duration,
        ),
        bad_get("stale with a value", "/v1/services/web?stale=maybe", arg),
        bad_get(
            "unknown consistency",
            "/v1/services/web?consistency=eventual",
            arg,
        ),
        bad_get("empty meta key", "/v1/services/web?meta.=x", arg),
        Case {
            status: 405,
            ..bad_get(
                "GET on the status route",
                "/v1/services/web/instances/i1/status",
                codes::METHOD_NOT_ALLOWED,
            )
        },
    ]
}

/// Sends `case` and checks status, JSON content type, code, and the index header.

#[tokio::test]
async fn bad_service_requests_get_4xx_json_errors_and_the_server_keeps_serving() {
    let cluster = Cluster::start_single(&[])
        .await
        .expect("start a single node");
    must_pass(async {
        let addr = cluster.addr(1);
        let api = Api::new(&addr);
        let unknown_lease = "67e55044-10b1-426f-9247-bb680e5fe0c8";
        let cases: Vec<tests::BadRequest> = bad_input_cases(unknown_lease)
            .into_iter()
            .map(Case::into_request)
            .collect();
        tests::check_bad_requests(&addr, &cases).await?;

        // Nothing was registered by the bad requests, and good ones still work, including
        // one bound to an existing lease.
        let listed = api.services().await?.value;
        ensure!(
            listed.is_empty(),
            "bad requests registered something: {listed:?}"
        );
        let lease = cluster
            .client_for(1)
            .create_lease(Duration::from_secs(60))
            .await?
            .value
            .lease;
        let mut req = registration(80, "5s", "1m");
        req.ttl = None;
        req.lease = Some(lease);
        let bound = api.register("web", "i1", &req).await?;
        ensure!(
            bound.lease == Some(lease) && !bound.own_lease && bound.ttl_ms == Some(60_000),
            "registration bound to lease {lease}: {bound:?}"
        );
        let listed = api.instances("web", "").await?.value;
        ensure!(ids(&listed) == ["i1"], "web lists {:?}", ids(&listed));
        Ok(())
    })
    .await;
}
