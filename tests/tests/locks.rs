//! Fenced locks and elections against real `registry-server` processes: mutual exclusion
//! and strictly increasing fencing tokens under contention (also across a leader SIGKILL),
//! expiry with lock-delay, FIFO hand-off that wakes one waiter only, waiters that
//! disconnect, stale tokens, the server keeping a waiting request's lease alive, elections
//! with blocking observers, and a lock held through a leader failover.

#![allow(clippy::unwrap_used)]

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, ensure, Context as _, Result};
use api_spec::{
    codes, AcquireRequest, CampaignRequest, CampaignResponse, ElectionInfo, ElectionLeader,
    ErrorBody, LeaseInfo, LockGrant, LockInfo, ProclaimRequest, ReleaseRequest, ReleaseResponse,
    INDEX_HEADER,
};
use registry_client::Uuid;
use reqwest::Method;
use tests::{must_pass, wait_until, Cluster};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

/// A TTL no test outlives.
const LONG_TTL: &str = "1m";
/// How long one ordinary request may take (added to a request's own `wait`).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a failover (new leader elected, requests served again) may take.
const FAILOVER_TIMEOUT: Duration = Duration::from_secs(20);
/// How soon a parked request or a blocking read must answer after the change that
/// should wake it.
const WAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Allowance between a wall-clock time the test takes and one the leader stamps (both
/// read the same host clock, truncated to ms), for "no earlier than" bounds.
const STAMP_SLACK_MS: u64 = 5;

/// The host's wall clock in ms since the epoch: the same clock the leader stamps grants
/// with (`granted_at_ms`).
fn wall_clock_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

// ---------------------------------------------------------------------------------------
// A small typed HTTP client for the lock, election and lease routes.
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
    LockGrant,
    ReleaseResponse,
    LockInfo,
    CampaignResponse,
    ElectionLeader,
    ElectionInfo,
    LeaseInfo,
);

/// An error answer from the server: status, the stable code of its JSON body, and the
/// lock or election it shows (with `lock_held`, `election_held`, `token_mismatch`).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Refused {
    status: u16,
    code: String,
    message: String,
    lock: Option<LockInfo>,
    election: Option<ElectionInfo>,
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

/// The refusal in `answer`, if it is one with this status and code; fails otherwise.
fn expect_refused<T: std::fmt::Debug>(
    what: &str,
    answer: Result<T>,
    status: u16,
    code: &str,
) -> Result<Refused> {
    match answer {
        Err(e) if is_refused(&e, status, code) => Ok(refused(&e).cloned().unwrap()),
        other => bail!("{what}: {other:?}, expected {status} {code}"),
    }
}

/// What a client in a failover retries elsewhere: no answer at all (the node is dead or
/// hung up), a 503 (no leader yet, or a node catching up), or a waiting request's lease
/// that ended while the cluster had no leader to renew it with.
fn retryable(error: &anyhow::Error) -> bool {
    match refused(error) {
        None => true,
        Some(r) => r.status == 503 || (r.status == 404 && r.code == codes::LEASE_NOT_FOUND),
    }
}

/// An answer's value with the `X-Registry-Index` it carried.
#[derive(Debug, Clone)]
struct Indexed<T> {
    index: u64,
    value: T,
}

/// A raw answer. Every answer must carry the index header; `send` checks that.
#[derive(Debug)]
struct Answer {
    status: u16,
    index: u64,
    body: String,
}

impl Answer {
    /// The body as `T` if the status is 200, else a [`Refused`] error.
    fn decode<T: Wire>(self) -> Result<Indexed<T>> {
        if self.status != 200 {
            return Err(self.refusal().into());
        }
        let value =
            T::from_json(&self.body).with_context(|| format!("unexpected body {:?}", self.body))?;
        Ok(Indexed {
            index: self.index,
            value,
        })
    }

    /// The error this answer carries; a non-JSON error body is reported as code "?".
    fn refusal(&self) -> Refused {
        match serde_json::from_str::<ErrorBody>(&self.body) {
            Ok(body) => Refused {
                status: self.status,
                code: body.error.code,
                message: body.error.message,
                lock: body.lock,
                election: body.election,
            },
            Err(_) => Refused {
                status: self.status,
                code: "?".into(),
                message: format!("not a JSON error body: {:?}", self.body),
                lock: None,
                election: None,
            },
        }
    }
}

/// The lock, election and lease routes of one node.
#[derive(Debug, Clone)]
struct Api {
    http: reqwest::Client,
    /// `http://127.0.0.1:PORT`.
    base: String,
}

impl Api {
    /// An API with a reqwest client (and so a connection pool) of its own.
    fn new(addr: &str) -> Self {
        Api::with_client(reqwest::Client::new(), addr)
    }

    fn with_client(http: reqwest::Client, addr: &str) -> Self {
        Api {
            http,
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
        json: Option<String>,
        timeout: Duration,
    ) -> Result<Answer> {
        let mut request = self
            .http
            .request(method.clone(), format!("{}{path}", self.base))
            .timeout(timeout);
        if let Some(json) = json {
            request = request
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(json);
        }
        let response = request
            .send()
            .await
            .with_context(|| format!("{method} {}{path}", self.base))?;
        let status = response.status().as_u16();
        let index = response
            .headers()
            .get(INDEX_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let body = response
            .text()
            .await
            .with_context(|| format!("{method} {}{path}: read the body", self.base))?;
        let index = index.ok_or_else(|| {
            anyhow!("{method} {path}: answer {status} without a valid {INDEX_HEADER}: {body:?}")
        })?;
        Ok(Answer {
            status,
            index,
            body,
        })
    }

    async fn call<T: Wire>(
        &self,
        method: Method,
        path: &str,
        json: Option<String>,
        timeout: Duration,
    ) -> Result<Indexed<T>> {
        let answer = self.send(method.clone(), path, json, timeout).await?;
        answer
            .decode()
            .with_context(|| format!("{method} {}{path}", self.base))
    }

    async fn acquire(&self, name: &str, req: &AcquireRequest) -> Result<LockGrant> {
        let wait = match req.wait.as_deref() {
            Some(wait) => api_spec::parse_duration(wait)?,
            None => Duration::ZERO,
        };
        let path = format!("/v1/locks/{name}/acquire");
        let body = serde_json::to_string(req)?;
        let grant: LockGrant = self
            .call(Method::POST, &path, Some(body), wait + REQUEST_TIMEOUT)
            .await?
            .value;
        ensure!(grant.name == name, "asked for {name:?}, granted {grant:?}");
        Ok(grant)
    }

    async fn release(&self, name: &str, token: u64) -> Result<ReleaseResponse> {
        let path = format!("/v1/locks/{name}/release");
        let body = serde_json::to_string(&ReleaseRequest { token })?;
        Ok(self
            .call(Method::POST, &path, Some(body), REQUEST_TIMEOUT)
            .await?
            .value)
    }

    async fn lock(&self, name: &str) -> Result<Indexed<LockInfo>> {
        self.call(
            Method::GET,
            &format!("/v1/locks/{name}"),
            None,
            REQUEST_TIMEOUT,
        )
        .await
    }

    /// A blocking read: answers once the lock changed past `index`, or after `wait`.
    async fn lock_after(
        &self,
        name: &str,
        index: u64,
        wait: Duration,
    ) -> Result<Indexed<LockInfo>> {
        let path = format!(
            "/v1/locks/{name}?index={index}&wait={}",
            api_spec::format_duration(wait)
        );
        // The server adds up to wait/16 of jitter.
        self.call(Method::GET, &path, None, wait * 2 + REQUEST_TIMEOUT)
            .await
    }

    async fn campaign(&self, name: &str, req: &CampaignRequest) -> Result<CampaignResponse> {
        let wait = match req.wait.as_deref() {
            Some(wait) => api_spec::parse_duration(wait)?,
            None => Duration::ZERO,
        };
        let path = format!("/v1/elections/{name}/campaign");
        let body = serde_json::to_string(req)?;
        Ok(self
            .call(Method::POST, &path, Some(body), wait + REQUEST_TIMEOUT)
            .await?
            .value)
    }

    async fn proclaim(&self, name: &str, token: u64, candidate: &str) -> Result<ElectionLeader> {
        let path = format!("/v1/elections/{name}/proclaim");
        let body = serde_json::to_string(&ProclaimRequest {
            token,
            candidate: candidate.to_owned(),
        })?;
        Ok(self
            .call(Method::POST, &path, Some(body), REQUEST_TIMEOUT)
            .await?
            .value)
    }

    async fn resign(&self, name: &str, token: u64) -> Result<ReleaseResponse> {
        let path = format!("/v1/elections/{name}/resign");
        let body = serde_json::to_string(&ReleaseRequest { token })?;
        Ok(self
            .call(Method::POST, &path, Some(body), REQUEST_TIMEOUT)
            .await?
            .value)
    }

    /// `GET /v1/elections/{name}`, blocking past `index` (for at most `wait`) if given.
    async fn election(
        &self,
        name: &str,
        block: Option<(u64, Duration)>,
    ) -> Result<Indexed<ElectionInfo>> {
        match block {
            None => {
                let path = format!("/v1/elections/{name}");
                self.call(Method::GET, &path, None, REQUEST_TIMEOUT).await
            }
            Some((index, wait)) => {
                let path = format!(
                    "/v1/elections/{name}?index={index}&wait={}",
                    api_spec::format_duration(wait)
                );
                self.call(Method::GET, &path, None, wait * 2 + REQUEST_TIMEOUT)
                    .await
            }
        }
    }

    async fn keepalive(&self, lease: Uuid) -> Result<LeaseInfo> {
        let path = format!("/v1/leases/{lease}/keepalive");
        Ok(self
            .call(Method::PUT, &path, None, REQUEST_TIMEOUT)
            .await?
            .value)
    }

    async fn lease(&self, lease: Uuid) -> Result<LeaseInfo> {
        let path = format!("/v1/leases/{lease}");
        Ok(self
            .call(Method::GET, &path, None, REQUEST_TIMEOUT)
            .await?
            .value)
    }
}

/// An acquire with a lease of its own (`ttl`), waiting up to `wait` if given.
fn acquire_request(ttl: &str, wait: Option<&str>, holder: &str) -> AcquireRequest {
    AcquireRequest {
        ttl: Some(ttl.to_owned()),
        wait: wait.map(str::to_owned),
        holder: Some(holder.to_owned()),
        ..AcquireRequest::default()
    }
}

/// A campaign with a lease of its own (`ttl`), waiting up to `wait` if given.
fn campaign_request(candidate: &str, ttl: &str, wait: Option<&str>) -> CampaignRequest {
    CampaignRequest {
        candidate: candidate.to_owned(),
        ttl: Some(ttl.to_owned()),
        wait: wait.map(str::to_owned),
        lease: None,
    }
}

/// Runs an acquire in a task of its own (with its own client, given by `api`): a
/// request blocked in the lock's queue that the test can watch, or drop by aborting it.
fn spawn_acquire(api: Api, name: &str, req: AcquireRequest) -> JoinHandle<Result<LockGrant>> {
    let name = name.to_owned();
    tokio::spawn(async move { api.acquire(&name, &req).await })
}

/// Sends `POST path` with a JSON body over a raw TCP connection of its own and returns
/// the connection without reading the answer: a client that can vanish at a known moment,
/// since dropping the stream closes the socket at once.
async fn raw_request(addr: &str, path: &str, json: &str) -> Result<tokio::net::TcpStream> {
    use tokio::io::AsyncWriteExt as _;
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .with_context(|| format!("connect to {addr}"))?;
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{json}",
        json.len()
    );
    stream.write_all(request.as_bytes()).await?;
    stream.flush().await?;
    Ok(stream)
}

/// Waits for a spawned request to answer within `timeout`.
async fn answer_of<T>(
    task: &mut JoinHandle<Result<T>>,
    timeout: Duration,
    what: &str,
) -> Result<T> {
    tokio::time::timeout(timeout, task)
        .await
        .map_err(|_| anyhow!("{what}: no answer within {timeout:?}"))?
        .with_context(|| format!("{what}: the task failed"))?
        .with_context(|| what.to_owned())
}

/// The holder texts of a lock's waiters, in queue order.
fn waiter_names(info: &LockInfo) -> Vec<&str> {
    info.waiters.iter().map(|w| w.holder.as_str()).collect()
}

/// Waits until `name`'s queue (read through `api`) is exactly `expected`, in order, and
/// returns the lock as it was then.
async fn wait_queue(api: &Api, name: &str, expected: &[&str]) -> Result<LockInfo> {
    let what = format!("lock {name:?} to have waiters {expected:?}");
    wait_until(WAKE_TIMEOUT, &what, || async {
        let info = api.lock(name).await?.value;
        ensure!(waiter_names(&info) == expected, "lock is {info:?}");
        Ok(info)
    })
    .await
}

/// Like [`wait_queue`], for a queue that `task` (a spawned acquire) should have joined
/// last: fails at once, with its answer, if that request answers instead of waiting.
async fn wait_queued(
    api: &Api,
    name: &str,
    expected: &[&str],
    task: &mut JoinHandle<Result<LockGrant>>,
) -> Result<LockInfo> {
    tokio::select! {
        info = wait_queue(api, name, expected) => info,
        answer = task => bail!("the request answered instead of queueing as {expected:?}: {answer:?}"),
    }
}

/// Starts a three-node cluster (`Cluster::start` makes sure every node kept running).
async fn three_nodes() -> Cluster {
    Cluster::start(3, &[]).await.expect("start the cluster")
}

/// Fails unless `check` passes at every probe for the whole of `duration`: for "this
/// stays so" claims, where a single failed probe is the failure.
async fn ensure_for<F, Fut>(duration: Duration, what: &str, mut check: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
{
    let started = Instant::now();
    loop {
        check()
            .await
            .with_context(|| format!("{what} (after {:?})", started.elapsed()))?;
        if started.elapsed() >= duration {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Tasks aborted when the set is dropped, so a failing test leaves none behind.
#[derive(Debug, Default)]
struct Tasks(Vec<JoinHandle<()>>);

impl Tasks {
    fn spawn(&mut self, future: impl std::future::Future<Output = ()> + Send + 'static) {
        self.0.push(tokio::spawn(future));
    }

    /// Waits up to `timeout` for every task to end; aborts those still running then.
    async fn join(&mut self, timeout: Duration) -> Result<()> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut late = 0;
        for task in &mut self.0 {
            match tokio::time::timeout_at(deadline, &mut *task).await {
                Ok(joined) => joined.context("a worker task panicked")?,
                Err(_) => {
                    task.abort();
                    late += 1;
                }
            }
        }
        self.0.clear();
        ensure!(late == 0, "{late} task(s) did not stop within {timeout:?}");
        Ok(())
    }
}

impl Drop for Tasks {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

// ---------------------------------------------------------------------------------------
// The contention workload: clients competing for one lock to use a fenced resource.
// ---------------------------------------------------------------------------------------

/// The resource the lock protects, as the fencing-token contract asks resources to
/// behave: it refuses any token not above the highest it has seen. It also notices a
/// second client coming in while one is inside, which a working lock makes impossible.
#[derive(Debug, Default)]
struct Resource {
    state: Mutex<ResourceState>,
}

#[derive(Debug, Default)]
struct ResourceState {
    /// The token of the client inside, if any.
    inside: Option<u64>,
    /// Highest token accepted.
    highest: u64,
    /// Accepted tokens in the order their holders came in.
    entries: Vec<u64>,
    violations: Vec<String>,
}

impl Resource {
    fn state(&self) -> std::sync::MutexGuard<'_, ResourceState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A holder with `token` comes in; `false` (and a violation) if the token is stale.
    fn enter(&self, token: u64, who: &str) -> bool {
        let mut s = self.state();
        if let Some(other) = s.inside {
            let v = format!("{who} came in with token {token} while token {other} was inside");
            s.violations.push(v);
        }
        if token <= s.highest {
            let v = format!(
                "{who} came in with stale token {token}; highest seen {}",
                s.highest
            );
            s.violations.push(v);
            return false;
        }
        s.highest = token;
        s.inside = Some(token);
        s.entries.push(token);
        true
    }

    fn leave(&self, token: u64) {
        let mut s = self.state();
        if s.inside == Some(token) {
            s.inside = None;
        }
    }
}

/// One grant as a client saw it, with the times it sent its requests.
#[derive(Debug, Clone, PartialEq, Eq)]
struct HoldRecord {
    worker: usize,
    token: u64,
    granted_index: u64,
    granted_at_ms: u64,
    ttl_ms: u64,
    lock_delay_ms: u64,
    /// Wall clock just before the acquire that got this grant was sent: its own lease
    /// was created after this.
    acquire_sent_ms: u64,
    /// Wall clock just before the first release request for this grant was sent, if the
    /// client sent one (whether or not it got an answer).
    release_sent_ms: Option<u64>,
    /// The client abandoned the hold on purpose: no release, no keepalive.
    abandoned: bool,
}

/// Checks a lock's history of grants (from the clients' answers; grants nobody heard of
/// are missing, which only makes consecutive recorded grants further apart). With the
/// grants ordered by token:
/// - tokens are distinct, and follow the log order of the granting entries, and are never
///   below their granting entry's index;
/// - a grant comes no earlier than the previous holder could have lost the lock: the
///   moment its release was sent if it sent one, else the earliest moment its lease could
///   expire (its acquire was sent before the lease existed, and the lease lives at least
///   its TTL) plus its lock-delay.
///
/// Returns every violation found.
fn check_grant_history(holds: &[HoldRecord]) -> Vec<String> {
    let mut by_token: Vec<&HoldRecord> = holds.iter().collect();
    by_token.sort_by_key(|h| h.token);
    let mut violations = Vec::new();
    for hold in &by_token {
        if hold.token < hold.granted_index {
            violations.push(format!(
                "token {} below its granting index {}: {hold:?}",
                hold.token, hold.granted_index
            ));
        }
    }
    for pair in by_token.windows(2) {
        let (earlier, later) = (pair[0], pair[1]);
        if earlier.token == later.token {
            violations.push(format!(
                "token {} granted twice: {earlier:?} and {later:?}",
                later.token
            ));
            continue;
        }
        if later.granted_index < earlier.granted_index {
            violations.push(format!(
                "token order disagrees with log order: {earlier:?} then {later:?}"
            ));
        }
        let (not_before, why) = match earlier.release_sent_ms {
            Some(sent) => (sent.saturating_sub(STAMP_SLACK_MS), "its release was sent"),
            None => (
                (earlier.acquire_sent_ms + earlier.ttl_ms + earlier.lock_delay_ms)
                    .saturating_sub(STAMP_SLACK_MS),
                "its lease could have expired and its lock-delay passed",
            ),
        };
        if later.granted_at_ms < not_before {
            violations.push(format!(
                "token {} granted at {} ms, {} ms before token {} could be gone ({why}): \
                 {earlier:?} then {later:?}",
                later.token,
                later.granted_at_ms,
                not_before - later.granted_at_ms,
                earlier.token
            ));
        }
    }
    violations
}

/// How the workload's clients behave.
#[derive(Debug)]
struct Workload {
    lock: String,
    /// Every node's address; client `i` starts at node `i % len` and moves on to the next
    /// one when a request fails and failures are tolerated.
    addrs: Vec<String>,
    ttl: &'static str,
    wait: &'static str,
    /// How long a client stays inside the resource.
    hold: Duration,
    /// Retry requests that fail for lack of a node or leader on the next node (a failover
    /// is expected); otherwise any failure stops the client and fails the test.
    tolerate_failover: bool,
    /// Abandon one acquire in this many (when the budget allows); 0 for never.
    abandon_every: usize,
    /// The TTL of a hold to be abandoned (short, so the lock comes back soon).
    abandon_ttl: &'static str,
}

/// What the clients share: the resource and the record of what happened.
#[derive(Debug, Default)]
struct Shared {
    resource: Resource,
    holds: Mutex<Vec<HoldRecord>>,
    errors: Mutex<Vec<String>>,
    acquires: AtomicUsize,
    /// How many more holds may be abandoned.
    abandon_budget: AtomicUsize,
    /// Acquires whose `wait` ran out (`409 lock_held`).
    waits_ran_out: AtomicUsize,
    /// Requests retried elsewhere after a failure.
    retries: AtomicUsize,
    /// Releases given up on (they failed until the retry deadline, or the lease had
    /// ended first).
    releases_lost: AtomicUsize,
}

impl Shared {
    fn holds(&self) -> Vec<HoldRecord> {
        self.holds.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn errors(&self) -> Vec<String> {
        self.errors
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn error(&self, error: String) {
        self.errors
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(error);
    }

    fn record(&self, hold: HoldRecord) -> usize {
        let mut holds = self.holds.lock().unwrap_or_else(|p| p.into_inner());
        holds.push(hold);
        holds.len() - 1
    }

    fn set_release_sent(&self, slot: usize, ms: u64) {
        let mut holds = self.holds.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(hold) = holds.get_mut(slot) {
            hold.release_sent_ms = Some(ms);
        }
    }

    fn take_abandon(&self) -> bool {
        self.abandon_budget
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
    }
}

/// How long a client keeps retrying a release during a failover before it leaves the
/// grant to expire.
const RELEASE_RETRY: Duration = Duration::from_secs(15);
/// Pause before retrying a failed request on the next node.
const RETRY_PAUSE: Duration = Duration::from_millis(50);

/// One client: acquire (waiting in line), use the resource briefly, release; until
/// `stop`. A stop while it waits in line drops the acquire (the server withdraws it).
async fn worker(
    me: usize,
    work: Arc<Workload>,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) {
    let http = reqwest::Client::new();
    let apis: Vec<Api> = work
        .addrs
        .iter()
        .map(|addr| Api::with_client(http.clone(), addr))
        .collect();
    let mut node = me % apis.len();
    let who = format!("worker-{me}");
    loop {
        if *stop.borrow() {
            return;
        }
        let n = shared.acquires.fetch_add(1, Ordering::SeqCst);
        let abandon = work.abandon_every > 0
            && n % work.abandon_every == work.abandon_every - 1
            && shared.take_abandon();
        let ttl = if abandon { work.abandon_ttl } else { work.ttl };
        let request = acquire_request(ttl, Some(work.wait), &who);
        let acquire_sent_ms = wall_clock_ms();
        let answer = tokio::select! {
            answer = apis[node].acquire(&work.lock, &request) => answer,
            _ = stop.wait_for(|stopped| *stopped) => return,
        };
        let grant = match answer {
            Ok(grant) => grant,
            Err(e) => {
                if abandon {
                    shared.abandon_budget.fetch_add(1, Ordering::SeqCst);
                }
                if is_refused(&e, 409, codes::LOCK_HELD) {
                    shared.waits_ran_out.fetch_add(1, Ordering::SeqCst);
                    continue;
                }
                if work.tolerate_failover && retryable(&e) {
                    shared.retries.fetch_add(1, Ordering::SeqCst);
                    node = (node + 1) % apis.len();
                    tokio::time::sleep(RETRY_PAUSE).await;
                    continue;
                }
                shared.error(format!("{who}: acquire: {e:#}"));
                return;
            }
        };
        let slot = shared.record(HoldRecord {
            worker: me,
            token: grant.token,
            granted_index: grant.granted_index,
            granted_at_ms: grant.granted_at_ms,
            ttl_ms: grant.ttl_ms,
            lock_delay_ms: grant.lock_delay_ms,
            acquire_sent_ms,
            release_sent_ms: None,
            abandoned: abandon,
        });
        if shared.resource.enter(grant.token, &who) {
            tokio::time::sleep(work.hold).await;
            tokio::task::yield_now().await;
            shared.resource.leave(grant.token);
        }
        if abandon {
            // Neither released nor kept alive: the lock comes back when the lease expires
            // and the lock-delay has passed.
            continue;
        }
        shared.set_release_sent(slot, wall_clock_ms());
        let give_up = Instant::now() + RELEASE_RETRY;
        loop {
            match apis[node].release(&work.lock, grant.token).await {
                Ok(released) if released.released && released.token == grant.token => break,
                Ok(other) => {
                    shared.error(format!("{who}: release of {}: {other:?}", grant.token));
                    return;
                }
                Err(e) if work.tolerate_failover && is_refused(&e, 409, codes::TOKEN_MISMATCH) => {
                    // An earlier attempt whose answer was lost may have released it, or
                    // the lease ended during the failover.
                    shared.releases_lost.fetch_add(1, Ordering::SeqCst);
                    break;
                }
                Err(e) if work.tolerate_failover && retryable(&e) => {
                    if Instant::now() >= give_up {
                        shared.releases_lost.fetch_add(1, Ordering::SeqCst);
                        break;
                    }
                    shared.retries.fetch_add(1, Ordering::SeqCst);
                    node = (node + 1) % apis.len();
                    tokio::time::sleep(RETRY_PAUSE).await;
                }
                Err(e) => {
                    shared.error(format!("{who}: release of {}: {e:#}", grant.token));
                    return;
                }
            }
        }
    }
}

/// Starts `clients` workers.
fn start_workers(
    clients: usize,
    work: &Arc<Workload>,
    shared: &Arc<Shared>,
    stop: &watch::Receiver<bool>,
) -> Tasks {
    let mut tasks = Tasks::default();
    for me in 0..clients {
        tasks.spawn(worker(
            me,
            Arc::clone(work),
            Arc::clone(shared),
            stop.clone(),
        ));
    }
    tasks
}

/// Checks what the workload recorded: no client errors, nothing the resource objected
/// to, tokens strictly increasing in the order holders came in, every recorded grant
/// used, and the grant history consistent ([`check_grant_history`]).
fn check_workload(shared: &Shared) -> Result<Vec<HoldRecord>> {
    let errors = shared.errors();
    ensure!(errors.is_empty(), "client errors: {errors:#?}");
    let holds = shared.holds();
    let resource = shared.resource.state();
    ensure!(
        resource.violations.is_empty(),
        "the resource saw {} violation(s): {:#?}",
        resource.violations.len(),
        resource.violations
    );
    let out_of_order: Vec<&[u64]> = resource
        .entries
        .windows(2)
        .filter(|w| w[1] <= w[0])
        .collect();
    ensure!(
        out_of_order.is_empty(),
        "tokens not strictly increasing in entry order: {out_of_order:?}"
    );
    ensure!(
        resource.entries.len() == holds.len(),
        "{} grants recorded but {} entries into the resource",
        holds.len(),
        resource.entries.len()
    );
    let violations = check_grant_history(&holds);
    ensure!(
        violations.is_empty(),
        "{} violation(s) in the grant history:\n{}",
        violations.len(),
        violations.join("\n")
    );
    Ok(holds)
}

/// Whether some abandoned hold was followed by a later grant: the expiry path ran.
fn expiry_handed_on(holds: &[HoldRecord], after_ms: u64) -> bool {
    holds.iter().any(|abandoned| {
        abandoned.abandoned
            && abandoned.granted_at_ms > after_ms
            && holds.iter().any(|h| h.token > abandoned.token)
    })
}

// ---------------------------------------------------------------------------------------
// Election observer: blocking reads in a task of their own.
// ---------------------------------------------------------------------------------------

/// How long each of the observer's blocking reads may wait. Long, so that a change that
/// fails to wake the read shows up as a missed deadline rather than a late success.
const OBSERVER_WAIT: Duration = Duration::from_secs(30);

/// Follows an election with blocking reads (`?index=`), reporting every state it reads.
#[derive(Debug)]
struct Observer {
    seen: mpsc::UnboundedReceiver<Result<ElectionInfo, String>>,
    last: Option<ElectionInfo>,
    task: JoinHandle<()>,
}

impl Observer {
    fn start(api: Api, name: &str) -> Self {
        let (tx, seen) = mpsc::unbounded_channel();
        let name = name.to_owned();
        let task = tokio::spawn(async move {
            let mut block = None;
            loop {
                match api.election(&name, block).await {
                    Ok(Indexed { index, value }) => {
                        block = Some((index, OBSERVER_WAIT));
                        if tx.send(Ok(value)).is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        let _ = tx.send(Err(format!("{e:#}")));
                        return;
                    }
                }
            }
        });
        Observer {
            seen,
            last: None,
            task,
        }
    }

    /// Waits until a read shows a state for which `want` holds, and returns it.
    async fn until(
        &mut self,
        what: &str,
        timeout: Duration,
        want: impl Fn(&ElectionInfo) -> bool,
    ) -> Result<ElectionInfo> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let next = tokio::time::timeout_at(deadline, self.seen.recv())
                .await
                .map_err(|_| {
                    anyhow!(
                        "observer: {what} not seen within {timeout:?}; last read {:?}",
                        self.last
                    )
                })?;
            match next {
                Some(Ok(info)) => {
                    if let (Some(last), Some(now)) = (
                        self.last.as_ref().and_then(|l| l.leader.as_ref()),
                        info.leader.as_ref(),
                    ) {
                        ensure!(
                            now.token >= last.token,
                            "observer: leader token went back from {} to {}",
                            last.token,
                            now.token
                        );
                    }
                    self.last = Some(info.clone());
                    if want(&info) {
                        return Ok(info);
                    }
                }
                Some(Err(e)) => bail!("observer: a blocking read failed: {e}"),
                None => bail!("observer: stopped"),
            }
        }
    }
}

impl Drop for Observer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Keeps `lease` alive through `api` every `every`, noting when the last accepted
/// keepalive was sent (wall clock ms) and how many were accepted.
#[derive(Debug)]
struct Keepalive {
    last_ok_sent_ms: Arc<AtomicU64>,
    accepted: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Keepalive {
    fn start(api: Api, lease: Uuid, every: Duration) -> Self {
        let last_ok_sent_ms = Arc::new(AtomicU64::new(wall_clock_ms()));
        let accepted = Arc::new(AtomicUsize::new(0));
        let (last, count) = (Arc::clone(&last_ok_sent_ms), Arc::clone(&accepted));
        let task = tokio::spawn(async move {
            loop {
                let sent = wall_clock_ms();
                // Failures (during an election) are retried at the next period.
                if api.keepalive(lease).await.is_ok() {
                    last.store(sent, Ordering::SeqCst);
                    count.fetch_add(1, Ordering::SeqCst);
                }
                tokio::time::sleep(every).await;
            }
        });
        Keepalive {
            last_ok_sent_ms,
            accepted,
            task,
        }
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    /// Stops renewing (no keepalive is in flight afterwards); returns when the last
    /// accepted keepalive was sent.
    async fn stop(&mut self) -> u64 {
        self.task.abort();
        let _ = (&mut self.task).await;
        self.last_ok_sent_ms.load(Ordering::SeqCst)
    }
}

impl Drop for Keepalive {
    fn drop(&mut self) {
        self.task.abort();
    }
}

// ---------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------

/// Clients in the contention tests.
const CLIENTS: usize = 12;

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_clients_never_overlap_and_tokens_increase() {
    const RUN: Duration = Duration::from_secs(4);
    // Measured well above 100 grants in RUN on a 2-core machine; a lock that handed
    // over this rarely would be broken.
    const MIN_GRANTS: usize = 40;
    let cluster = three_nodes().await;
    must_pass(async {
        let work = Arc::new(Workload {
            lock: "contended".into(),
            addrs: cluster
                .ids()
                .into_iter()
                .map(|id| cluster.addr(id))
                .collect(),
            ttl: "5s",
            wait: "10s",
            hold: Duration::from_millis(2),
            tolerate_failover: false,
            abandon_every: 0,
            abandon_ttl: "2s",
        });
        let shared = Arc::new(Shared::default());
        let (stop, stopped) = watch::channel(false);
        let mut workers = start_workers(CLIENTS, &work, &shared, &stopped);
        // The workload itself runs for a fixed time.
        tokio::time::sleep(RUN).await;
        stop.send(true)?;
        workers.join(REQUEST_TIMEOUT).await?;

        let holds = check_workload(&shared)?;
        ensure!(
            holds.len() >= MIN_GRANTS,
            "only {} grants in {RUN:?} (floor {MIN_GRANTS}); {} waits ran out",
            holds.len(),
            shared.waits_ran_out.load(Ordering::SeqCst)
        );
        // FIFO: nobody starves.
        for me in 0..CLIENTS {
            ensure!(
                holds.iter().any(|h| h.worker == me),
                "worker {me} never got the lock in {} grants",
                holds.len()
            );
        }
        // Dropped waiters (the stop) were withdrawn, the holders released: free.
        let api = Api::of(&cluster, cluster.leader_id().await?);
        wait_until(
            WAKE_TIMEOUT,
            "the lock to be free after the run",
            || async {
                let info = api.lock(&work.lock).await?.value;
                ensure!(!info.held && info.waiters.is_empty(), "lock is {info:?}");
                Ok(())
            },
        )
        .await?;
        eprintln!(
            "{} grants in {RUN:?}, {} waits ran out",
            holds.len(),
            shared.waits_ran_out.load(Ordering::SeqCst)
        );
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn tokens_keep_increasing_across_leader_kill() {
    const PHASE_TIMEOUT: Duration = Duration::from_secs(40);
    const GRANTS_PER_PHASE: usize = 15;
    let cluster = three_nodes().await;
    must_pass(async {
        let work = Arc::new(Workload {
            lock: "contended-failover".into(),
            addrs: cluster
                .ids()
                .into_iter()
                .map(|id| cluster.addr(id))
                .collect(),
            // Shorter than in the calm test: requests parked on the killed node are never
            // withdrawn, so their leases hold the queue up until they expire.
            ttl: "3s",
            wait: "10s",
            hold: Duration::from_millis(3),
            tolerate_failover: true,
            abandon_every: 5,
            abandon_ttl: "2s",
        });
        let shared = Arc::new(Shared::default());
        // One abandoned hold before the kill, one after.
        shared.abandon_budget.store(1, Ordering::SeqCst);
        let (stop, stopped) = watch::channel(false);
        let mut workers = start_workers(CLIENTS, &work, &shared, &stopped);

        wait_until(
            PHASE_TIMEOUT,
            "grants, one of them after an abandoned hold expired",
            || async {
                let holds = shared.holds();
                let errors = shared.errors();
                ensure!(
                    holds.len() >= GRANTS_PER_PHASE && expiry_handed_on(&holds, 0),
                    "{} grants; errors {errors:?}",
                    holds.len()
                );
                Ok(())
            },
        )
        .await?;

        let old = cluster.leader_id().await?;
        let kill_ms = wall_clock_ms();
        cluster.kill(old).await?;
        let new = cluster.wait_for_leader(Some(old), FAILOVER_TIMEOUT).await?;
        shared.abandon_budget.fetch_add(1, Ordering::SeqCst);
        let recovered_ms = wall_clock_ms();

        wait_until(
            PHASE_TIMEOUT,
            "grants after the failover, one of them after an abandoned hold expired",
            || async {
                let holds = shared.holds();
                let errors = shared.errors();
                let after = holds.iter().filter(|h| h.granted_at_ms > kill_ms).count();
                ensure!(
                    after >= GRANTS_PER_PHASE && expiry_handed_on(&holds, kill_ms),
                    "{after} grants since the kill; errors {errors:?}"
                );
                Ok(())
            },
        )
        .await?;
        stop.send(true)?;
        workers.join(RELEASE_RETRY + REQUEST_TIMEOUT).await?;

        let holds = check_workload(&shared)?;
        let abandoned = holds.iter().filter(|h| h.abandoned).count();
        ensure!(abandoned >= 2, "only {abandoned} abandoned holds");
        eprintln!(
            "{} grants ({} abandoned), node {old} killed at {kill_ms}, node {new} leading \
             {} ms later; {} retries, {} waits ran out, {} releases lost",
            holds.len(),
            abandoned,
            recovered_ms - kill_ms,
            shared.retries.load(Ordering::SeqCst),
            shared.waits_ran_out.load(Ordering::SeqCst),
            shared.releases_lost.load(Ordering::SeqCst),
        );
        Ok(())
    })
    .await;
}

#[tokio::test]
async fn expired_holder_loses_the_lock_after_lock_delay_with_higher_token() {
    const TTL_MS: u64 = 2000;
    const DELAY_MS: u64 = 1000;
    let cluster = Cluster::start_single(&[]).await.expect("start the server");
    must_pass(async {
        let api = Api::of(&cluster, 1);
        let name = "expiring";
        let mut request = acquire_request("2s", None, "forgetful");
        request.lock_delay = Some("1s".into());
        let held = api.acquire(name, &request).await?;
        ensure!(
            held.ttl_ms == TTL_MS && held.lock_delay_ms == DELAY_MS && held.own_lease,
            "grant {held:?}"
        );
        let mut waiter = spawn_acquire(
            Api::of(&cluster, 1),
            name,
            acquire_request(LONG_TTL, Some("20s"), "patient"),
        );

        // Follow the lock with blocking reads until someone else holds it.
        let first = api.lock(name).await?;
        let mut index = first.index;
        let mut seen = vec![first.value];
        let deadline = Instant::now() + Duration::from_secs(15);
        while seen
            .last()
            .and_then(|s| s.holder.as_ref())
            .is_none_or(|h| h.token == Some(held.token))
        {
            ensure!(Instant::now() < deadline, "no new holder; seen {seen:#?}");
            let next = api.lock_after(name, index, Duration::from_secs(5)).await?;
            index = next.index;
            seen.push(next.value);
        }
        let granted = answer_of(&mut waiter, WAKE_TIMEOUT, "the waiter's acquire").await?;
        ensure!(
            granted.token > held.token,
            "waiter's token {} not above the expired holder's {}",
            granted.token,
            held.token
        );
        // The holder's own lease was granted by the entry stamped `held.granted_at_ms`,
        // and its countdown starts when that entry is applied, later: it expires no
        // earlier than TTL after the stamp. The expiry entry is stamped no earlier than
        // that, and the lock is not granted before that stamp plus the lock-delay.
        let earliest = held.granted_at_ms + TTL_MS + DELAY_MS;
        ensure!(
            granted.granted_at_ms + STAMP_SLACK_MS >= earliest,
            "granted at {}, {} ms before the holder's TTL and lock-delay could pass",
            granted.granted_at_ms,
            earliest - granted.granted_at_ms
        );
        let latest = earliest + 3000;
        ensure!(
            granted.granted_at_ms <= latest,
            "granted {} ms after the holder's grant (TTL + delay = {} ms)",
            granted.granted_at_ms - held.granted_at_ms,
            TTL_MS + DELAY_MS
        );
        // The delay was visible: nobody held the lock, the waiter queued, until
        // `delay_until_ms`, and the grant came no earlier.
        let delayed = seen
            .iter()
            .find(|s| !s.held && s.delay_until_ms.is_some())
            .ok_or_else(|| anyhow!("never saw the lock in its delay: {seen:#?}"))?;
        let delay_until = delayed.delay_until_ms.unwrap();
        ensure!(
            waiter_names(delayed) == ["patient"],
            "in the delay: {delayed:?}"
        );
        ensure!(
            delay_until + STAMP_SLACK_MS >= earliest && granted.granted_at_ms >= delay_until,
            "delay until {delay_until}, holder granted at {}, waiter at {}",
            held.granted_at_ms,
            granted.granted_at_ms
        );
        // The old holder's token is worthless now.
        let refusal = expect_refused(
            "release with the expired holder's token",
            api.release(name, held.token).await,
            409,
            codes::TOKEN_MISMATCH,
        )?;
        ensure!(
            refusal
                .lock
                .as_ref()
                .and_then(|l| l.holder.as_ref())
                .is_some_and(|h| h.token == Some(granted.token)),
            "token_mismatch body: {refusal:?}"
        );
        api.release(name, granted.token).await?;
        Ok(())
    })
    .await;
}

#[tokio::test]
async fn a_waiter_that_disconnects_leaves_the_queue() {
    let cluster = three_nodes().await;
    must_pass(async {
        let leader = cluster.leader_id().await?;
        let followers: Vec<u64> = cluster
            .ids()
            .into_iter()
            .filter(|&id| id != leader)
            .collect();
        let api = Api::of(&cluster, leader);

        // One waiter, parked on a follower, goes away.
        let name = "disconnect";
        let holder = api
            .acquire(name, &acquire_request(LONG_TTL, None, "holder"))
            .await?;
        let mut waiter = spawn_acquire(
            Api::of(&cluster, followers[0]),
            name,
            acquire_request(LONG_TTL, Some("30s"), "leaver"),
        );
        let queued = wait_queued(&api, name, &["leaver"], &mut waiter).await?;
        let leaver_lease = queued.waiters[0].lease.context("waiter lease shown")?;
        waiter.abort();
        let joined = waiter.await;
        ensure!(
            joined
                .as_ref()
                .is_err_and(tokio::task::JoinError::is_cancelled),
            "the waiter answered before it was dropped: {joined:?}"
        );
        let left = wait_queue(&api, name, &[]).await?;
        ensure!(
            left.holder
                .as_ref()
                .is_some_and(|h| h.token == Some(holder.token)),
            "holder changed: {left:?}"
        );
        expect_refused(
            "the withdrawn waiter's own lease",
            api.lease(leaver_lease).await,
            404,
            codes::LEASE_NOT_FOUND,
        )?;
        api.release(name, holder.token).await?;
        let after = api.lock(name).await?.value;
        ensure!(
            !after.held && after.waiters.is_empty(),
            "after the release: {after:?}"
        );

        // Two waiters; the first goes away, the release goes to the second.
        let name = "disconnect-first";
        let holder = api
            .acquire(name, &acquire_request(LONG_TTL, None, "holder"))
            .await?;
        let mut first = spawn_acquire(
            Api::of(&cluster, followers[0]),
            name,
            acquire_request(LONG_TTL, Some("30s"), "first"),
        );
        wait_queued(&api, name, &["first"], &mut first).await?;
        let mut second = spawn_acquire(
            Api::of(&cluster, followers[1]),
            name,
            acquire_request(LONG_TTL, Some("30s"), "second"),
        );
        wait_queued(&api, name, &["first", "second"], &mut second).await?;
        first.abort();
        ensure!(
            first.await.is_err_and(|e| e.is_cancelled()),
            "the first waiter answered before it was dropped"
        );
        wait_queue(&api, name, &["second"]).await?;
        api.release(name, holder.token).await?;
        let granted = answer_of(&mut second, WAKE_TIMEOUT, "the second waiter").await?;
        ensure!(
            granted.token > holder.token && granted.holder == "second",
            "second waiter's grant {granted:?} after holder {holder:?}"
        );
        let info = api.lock(name).await?.value;
        ensure!(
            info.holder
                .as_ref()
                .is_some_and(|h| h.token == Some(granted.token))
                && info.waiters.is_empty(),
            "after the hand-off: {info:?}"
        );
        api.release(name, granted.token).await?;

        // A waiter vanishes (its socket closed) right before the release that would grant
        // it the lock. The server learns of the disconnect before it could answer, so
        // whichever lands first, the withdrawal or the grant, the lock must end up free,
        // cleanly (no lock-delay), and the waiter's own lease revoked. Several rounds, as
        // the order of the two differs from round to round.
        for round in 0..5 {
            let name = format!("disconnect-race-{round}");
            let holder = api
                .acquire(&name, &acquire_request(LONG_TTL, None, "holder"))
                .await?;
            let racer = raw_request(
                &cluster.addr(followers[0]),
                &format!("/v1/locks/{name}/acquire"),
                &serde_json::to_string(&acquire_request(LONG_TTL, Some("30s"), "racer"))?,
            )
            .await?;
            let queued = wait_queue(&api, &name, &["racer"]).await?;
            drop(racer);
            api.release(&name, holder.token).await?;
            let what = format!("round {round}: the lock to be free after the racer vanished");
            wait_until(WAKE_TIMEOUT, &what, || async {
                let info = api.lock(&name).await?.value;
                ensure!(
                    !info.held && info.waiters.is_empty() && info.delay_until_ms.is_none(),
                    "lock is {info:?}"
                );
                Ok(())
            })
            .await?;
            expect_refused(
                &format!("round {round}: the vanished racer's own lease"),
                api.lease(queued.waiters[0].lease.context("waiter lease shown")?)
                    .await,
                404,
                codes::LEASE_NOT_FOUND,
            )?;
        }
        Ok(())
    })
    .await;
}

#[tokio::test]
async fn release_wakes_only_the_next_waiter_in_fifo_order() {
    let cluster = three_nodes().await;
    must_pass(async {
        let leader = cluster.leader_id().await?;
        let api = Api::of(&cluster, leader);
        let name = "fifo";
        let holder = api
            .acquire(name, &acquire_request(LONG_TTL, None, "holder"))
            .await?;
        // Each waiter parks on a different node, and queues before the next one starts.
        let names = ["w1", "w2", "w3"];
        let mut waiters = Vec::new();
        for (i, (&waiter, id)) in names.iter().zip(cluster.ids()).enumerate() {
            let mut task = spawn_acquire(
                Api::of(&cluster, id),
                name,
                acquire_request(LONG_TTL, Some("1m"), waiter),
            );
            wait_queued(&api, name, &names[..=i], &mut task).await?;
            waiters.push(task);
        }

        let mut token = holder.token;
        for i in 0..names.len() {
            api.release(name, token).await?;
            let what = format!("waiter {}", names[i]);
            let grant = answer_of(&mut waiters[i], WAKE_TIMEOUT, &what).await?;
            ensure!(
                grant.holder == names[i] && grant.token > token,
                "{what} got {grant:?} after token {token}"
            );
            token = grant.token;
            // Only the head of the queue was served: the others still wait, in order.
            let info = api.lock(name).await?.value;
            ensure!(
                info.holder.as_ref().is_some_and(|h| h.token == Some(token))
                    && waiter_names(&info) == names[i + 1..],
                "after granting {}: {info:?}",
                names[i]
            );
            for (later, task) in names[i + 1..].iter().zip(&waiters[i + 1..]) {
                ensure!(!task.is_finished(), "{later} answered out of turn");
            }
        }
        api.release(name, token).await?;
        let info = api.lock(name).await?.value;
        ensure!(
            !info.held && info.waiters.is_empty(),
            "at the end: {info:?}"
        );
        Ok(())
    })
    .await;
}

#[tokio::test]
async fn wrong_token_changes_nothing() {
    let cluster = Cluster::start_single(&[]).await.expect("start the server");
    must_pass(async {
        let api = Api::of(&cluster, 1);

        let name = "fenced";
        let earlier = api
            .acquire(name, &acquire_request(LONG_TTL, None, "earlier"))
            .await?;
        api.release(name, earlier.token).await?;
        let current = api
            .acquire(name, &acquire_request(LONG_TTL, None, "current"))
            .await?;
        ensure!(
            current.token > earlier.token,
            "{current:?} after {earlier:?}"
        );
        let before = api.lock(name).await?.value;
        for (what, token) in [
            ("the previous holder's token", earlier.token),
            ("a token never granted", current.token + 1000),
            ("token 0", 0),
        ] {
            let refusal = expect_refused(
                &format!("release with {what}"),
                api.release(name, token).await,
                409,
                codes::TOKEN_MISMATCH,
            )?;
            ensure!(
                refusal.lock.as_ref() == Some(&before),
                "release with {what}: body shows {:?}, lock was {before:?}",
                refusal.lock
            );
            let after = api.lock(name).await?.value;
            ensure!(
                after == before,
                "release with {what} changed {before:?} to {after:?}"
            );
        }

        let election = "fenced-election";
        let first = api
            .campaign(election, &campaign_request("first", LONG_TTL, None))
            .await?;
        api.resign(election, first.leader.token).await?;
        let leading = api
            .campaign(election, &campaign_request("leading", LONG_TTL, None))
            .await?;
        let token = leading.leader.token;
        ensure!(token > first.leader.token, "{leading:?} after {first:?}");
        let before = api.election(election, None).await?.value;
        for (what, wrong) in [
            ("the previous leader's token", first.leader.token),
            ("a lock's token", current.token),
            ("a token never granted", token + 1000),
        ] {
            let refusal = expect_refused(
                &format!("proclaim with {what}"),
                api.proclaim(election, wrong, "impostor").await,
                409,
                codes::TOKEN_MISMATCH,
            )?;
            ensure!(
                refusal.election.as_ref() == Some(&before),
                "proclaim with {what}: body shows {:?}, election was {before:?}",
                refusal.election
            );
            expect_refused(
                &format!("resign with {what}"),
                api.resign(election, wrong).await,
                409,
                codes::TOKEN_MISMATCH,
            )?;
            let after = api.election(election, None).await?.value;
            ensure!(after == before, "{what} changed {before:?} to {after:?}");
        }
        // The lock did not move either.
        let lock = api.lock(name).await?.value;
        ensure!(
            lock.holder
                .as_ref()
                .is_some_and(|h| h.token == Some(current.token)),
            "lock after the election attempts: {lock:?}"
        );

        // The right tokens still work.
        let proclaimed = api.proclaim(election, token, "leading-2").await?;
        ensure!(
            proclaimed.token == token && proclaimed.candidate == "leading-2",
            "{proclaimed:?}"
        );
        api.resign(election, token).await?;
        api.release(name, current.token).await?;
        Ok(())
    })
    .await;
}

#[tokio::test]
async fn waiting_request_keeps_its_lease_alive() {
    let cluster = three_nodes().await;
    must_pass(async {
        let leader = cluster.leader_id().await?;
        let follower = cluster.ids().into_iter().find(|&id| id != leader).unwrap();
        let api = Api::of(&cluster, leader);
        let name = "patience";
        let holder = api
            .acquire(name, &acquire_request("10s", None, "holder"))
            .await?;
        // A 1s lease (the minimum), waiting through a follower far longer than that.
        let mut waiter = spawn_acquire(
            Api::of(&cluster, follower),
            name,
            acquire_request("1s", Some("5s"), "patient"),
        );
        let queued = wait_queued(&api, name, &["patient"], &mut waiter).await?;
        let lease = queued.waiters[0].lease.context("waiter lease shown")?;
        // Three TTLs: without the server's keepalives the lease would be gone, and the
        // waiter with it.
        ensure_for(
            Duration::from_secs(3),
            "the waiter to stay queued with its lease alive",
            || async {
                let info = api.lock(name).await?.value;
                ensure!(waiter_names(&info) == ["patient"], "lock is {info:?}");
                let lease_info = api.lease(lease).await?;
                ensure!(lease_info.ttl_ms == 1000, "lease {lease_info:?}");
                Ok(())
            },
        )
        .await?;
        ensure!(!waiter.is_finished(), "the waiter answered while queued");
        api.release(name, holder.token).await?;
        let grant = answer_of(&mut waiter, WAKE_TIMEOUT, "the waiter").await?;
        ensure!(
            grant.token > holder.token
                && grant.lease == lease
                && grant.own_lease
                && grant.ttl_ms == 1000,
            "the waiter's grant {grant:?} (lease {lease}, holder token {})",
            holder.token
        );
        // Once granted, renewing is the client's job again; it releases at once (if
        // the answer took longer than what was left of its TTL, the lease is gone).
        match api.release(name, grant.token).await {
            Ok(released) => ensure!(released.lease_revoked, "{released:?}"),
            Err(e) if is_refused(&e, 409, codes::TOKEN_MISMATCH) => {
                eprintln!("the waiter's 1s lease ended before its release: {e:#}");
            }
            Err(e) => return Err(e),
        }
        Ok(())
    })
    .await;
}

#[tokio::test]
async fn elections_follow_a_leader_and_fail_over_to_the_next_candidate() {
    let cluster = three_nodes().await;
    must_pass(async {
        let ids = cluster.ids();
        let (api_a, api_b) = (Api::of(&cluster, ids[0]), Api::of(&cluster, ids[1]));
        let name = "primary";
        let mut observer = Observer::start(Api::of(&cluster, ids[2]), name);
        observer
            .until("no leader", WAKE_TIMEOUT, |e| e.leader.is_none())
            .await?;

        let a = api_a
            .campaign(name, &campaign_request("a-1", "2s", None))
            .await?;
        let t1 = a.leader.token;
        ensure!(
            a.leader.candidate == "a-1" && a.ttl_ms == 2000 && a.leader.own_lease,
            "{a:?}"
        );
        let mut keepalive =
            Keepalive::start(api_a.clone(), a.leader.lease, Duration::from_millis(400));
        observer
            .until("a-1 leading", WAKE_TIMEOUT, |e| {
                e.leader
                    .as_ref()
                    .is_some_and(|l| l.token == t1 && l.candidate == "a-1")
            })
            .await?;

        // B waits in line; a campaign that does not wait is told who leads.
        let refusal = expect_refused(
            "a campaign without wait",
            api_b
                .campaign(name, &campaign_request("b", "2s", None))
                .await,
            409,
            codes::ELECTION_HELD,
        )?;
        ensure!(
            refusal
                .election
                .as_ref()
                .and_then(|e| e.leader.as_ref())
                .is_some_and(|l| l.token == t1),
            "election_held body: {refusal:?}"
        );
        let b_api = api_b.clone();
        let mut b_task = tokio::spawn(async move {
            b_api
                .campaign(name, &campaign_request("b", "2s", Some("20s")))
                .await
        });
        observer
            .until("b queued", WAKE_TIMEOUT, |e| {
                e.candidates.iter().map(|c| c.holder.as_str()).eq(["b"])
            })
            .await?;

        let proclaimed = api_a.proclaim(name, t1, "a-2").await?;
        ensure!(
            proclaimed.token == t1 && proclaimed.candidate == "a-2",
            "{proclaimed:?}"
        );
        observer
            .until("a-2 proclaimed", WAKE_TIMEOUT, |e| {
                e.leader
                    .as_ref()
                    .is_some_and(|l| l.token == t1 && l.candidate == "a-2")
            })
            .await?;
        ensure!(!b_task.is_finished(), "b answered while a led");

        // A stops renewing: its lease expires, and B leads.
        ensure!(
            keepalive.accepted() > 0,
            "no keepalive of a's lease was accepted"
        );
        let last_renewal_ms = keepalive.stop().await;
        let b = answer_of(&mut b_task, Duration::from_secs(10), "b's campaign").await?;
        ensure!(
            b.leader.candidate == "b" && b.leader.token > t1,
            "b's campaign answered {b:?} (a's token {t1})"
        );
        // A's last accepted keepalive moved its deadline to no earlier than its sending
        // plus the TTL; elections have no lock-delay.
        ensure!(
            b.leader.since_ms + STAMP_SLACK_MS >= last_renewal_ms + 2000,
            "b leads since {}, a's lease was renewed at {last_renewal_ms} with TTL 2s",
            b.leader.since_ms
        );
        observer
            .until("b leading", WAKE_TIMEOUT, |e| {
                e.leader
                    .as_ref()
                    .is_some_and(|l| l.token == b.leader.token && l.candidate == "b")
                    && e.candidates.is_empty()
            })
            .await?;
        expect_refused(
            "a's proclaim after losing the lead",
            api_a.proclaim(name, t1, "a-3").await,
            409,
            codes::TOKEN_MISMATCH,
        )?;

        // B resigns: nobody leads.
        let resigned = api_b.resign(name, b.leader.token).await?;
        ensure!(
            resigned.released && resigned.lease_revoked && resigned.token == b.leader.token,
            "{resigned:?}"
        );
        observer
            .until("no leader after b resigned", WAKE_TIMEOUT, |e| {
                e.leader.is_none() && e.candidates.is_empty()
            })
            .await?;
        Ok(())
    })
    .await;
}

#[tokio::test]
async fn lock_survives_leader_failover() {
    const TTL: Duration = Duration::from_secs(2);
    let cluster = three_nodes().await;
    must_pass(async {
        let old = cluster.leader_id().await?;
        let survivors: Vec<u64> = cluster.ids().into_iter().filter(|&id| id != old).collect();
        let (api_a, api_b) = (
            Api::of(&cluster, survivors[0]),
            Api::of(&cluster, survivors[1]),
        );
        let name = "survivor";
        let grant = api_a
            .acquire(name, &acquire_request("2s", None, "survivor"))
            .await?;
        let mut keepalive =
            Keepalive::start(api_a.clone(), grant.lease, Duration::from_millis(300));

        cluster.kill(old).await?;
        let killed = Instant::now();
        cluster.wait_for_leader(Some(old), FAILOVER_TIMEOUT).await?;
        // Keepalives reach the new leader.
        let before = keepalive.accepted();
        wait_until(
            FAILOVER_TIMEOUT,
            "a keepalive accepted by the new leader",
            || async {
                ensure!(
                    keepalive.accepted() >= before + 2,
                    "{} accepted",
                    keepalive.accepted()
                );
                Ok(())
            },
        )
        .await?;
        // Through more than two TTLs after the kill, both survivors show the same holder.
        let hold_until = killed + 2 * TTL + Duration::from_secs(1);
        ensure_for(
            hold_until.saturating_duration_since(Instant::now()),
            "the lock to stay with its holder",
            || async {
                for api in [&api_a, &api_b] {
                    let info = api.lock(name).await?.value;
                    let holder = info.holder.as_ref();
                    ensure!(
                        holder.is_some_and(|h| {
                            h.token == Some(grant.token)
                                && h.lease == Some(grant.lease)
                                && h.holder == "survivor"
                                && h.granted_index == grant.granted_index
                        }),
                        "{} shows {info:?}, granted {grant:?}",
                        api.base
                    );
                }
                Ok(())
            },
        )
        .await?;
        let _ = keepalive.stop().await;

        // A new acquire is refused, showing the same holder.
        let refusal = expect_refused(
            "an acquire without wait",
            api_b
                .acquire(name, &acquire_request(LONG_TTL, None, "other"))
                .await,
            409,
            codes::LOCK_HELD,
        )?;
        ensure!(
            refusal
                .lock
                .as_ref()
                .and_then(|l| l.holder.as_ref())
                .is_some_and(|h| h.token == Some(grant.token)),
            "lock_held body: {refusal:?}"
        );
        // The token still releases it, through the other survivor.
        let released = api_b.release(name, grant.token).await?;
        ensure!(released.released && released.lease_revoked, "{released:?}");
        let next = api_b
            .acquire(name, &acquire_request(LONG_TTL, None, "next"))
            .await?;
        ensure!(next.token > grant.token, "{next:?} after {grant:?}");
        api_b.release(name, next.token).await?;
        Ok(())
    })
    .await;
}

#[test]
fn grant_history_checker_flags_early_and_duplicate_grants() {
    let hold = |token: u64, granted_at_ms: u64, release_sent_ms: Option<u64>| HoldRecord {
        worker: 0,
        token,
        granted_index: token,
        granted_at_ms,
        ttl_ms: 2000,
        lock_delay_ms: 1000,
        acquire_sent_ms: granted_at_ms - 10,
        release_sent_ms,
        abandoned: release_sent_ms.is_none(),
    };
    // Released at 1_020, next granted at 1_021; abandoned (acquire sent 1_990), next
    // granted at 1_990 + 2_000 + 1_000.
    let good = [
        hold(10, 1_000, Some(1_020)),
        hold(12, 1_021, None),
        hold(15, 4_011, Some(4_100)),
    ];
    assert!(
        check_grant_history(&good).is_empty(),
        "{:?}",
        check_grant_history(&good)
    );
    // Granted before the previous holder sent its release.
    let early_release = [hold(10, 1_000, Some(1_020)), hold(12, 1_010, Some(1_030))];
    assert_eq!(check_grant_history(&early_release).len(), 1);
    // Granted before the abandoned holder's lease and lock-delay could have passed.
    let early_expiry = [hold(10, 1_000, None), hold(12, 3_500, Some(3_600))];
    assert_eq!(check_grant_history(&early_expiry).len(), 1);
    // The same token twice.
    let duplicate = [hold(10, 1_000, Some(1_020)), hold(10, 1_030, Some(1_040))];
    assert_eq!(check_grant_history(&duplicate).len(), 1);
}
