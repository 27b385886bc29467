//! Step G of the scale suite ([`crate::scale`]): many blocking queries parked on a fresh
//! 3-node cluster, spread evenly over its nodes — what they cost the servers in memory,
//! and how fast the ones watching the one service that changes ("hot") hear of it while
//! the others stay parked.
//!
//! The watchers are raw TCP connections (a minimal `GET ... HTTP/1.1` written once, then
//! a wait for the first bytes of the answer): far cheaper than one HTTP client each. Each
//! connection is bound to a source address of its own among 127.0.0.2..127.0.0.254 in
//! turn, since one source address has only about 28,000 ephemeral ports.
//!
//! With `--scale-watch-streams N` they are HTTP/2 streams instead, N on each connection
//! (the `h2` crate's client, one request per stream, answered when its response head
//! arrives): a hundred thousand watchers then need a few hundred sockets, not a hundred
//! thousand, which the open-file limit of this machine would not allow.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use serde::Serialize;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::extras::rss_kib;
use crate::report::TargetCheck;
use crate::scale::{self, mib, ms, ok_body, us, Progress, Quantiles, ScaleConfig, StepOutput};
use crate::systems::Registry;

/// Services the other (not hot) watchers spread over, one instance each.
const COLD_SERVICES: usize = 1000;
/// The service that changes.
const HOT: &str = "hot";
/// Changes made to it, each watched by every hot watcher.
const ROUNDS: usize = 3;
/// Every blocking query's `wait`: the server's cap, far longer than the step lasts, so
/// no watcher returns because its wait ran out.
const WAIT: &str = "10m";
/// Watchers being opened and not yet parked at once (see [`pace`]): the servers' accept
/// backlogs are finite.
const CONNECTING: usize = 256;
/// How long parking waits for the servers to take up the watchers opened before it opens
/// more anyway.
const PACE_LIMIT: Duration = Duration::from_secs(5);
/// Source addresses 127.0.0.2 up to 127.0.0.254.
const SOURCES: usize = 253;
/// How long a hot watcher may take to answer after a change before it counts as missing.
const ANSWER_LIMIT: Duration = Duration::from_secs(60);
/// Workers registering the services and reading their indexes.
const SETUP_WORKERS: usize = 32;
/// Files this process needs besides its watchers' sockets.
const BENCH_FILES: usize = 2000;
/// Files a server needs besides its share of the watchers' connections.
const SERVER_FILES: usize = 1000;
/// The fan-out target: p99 below this.
const TARGET_P99: Duration = Duration::from_millis(200);

/// One change's fan-out to the hot watchers.
#[derive(Debug, Clone, Serialize)]
struct Round {
    round: usize,
    /// From sending the change until it was acknowledged.
    change_ack_us: u64,
    /// Each answering hot watcher's first byte after the change was sent.
    latency: Quantiles,
    /// The same for the watchers of each node (`urls` order), and which one led.
    by_node: Vec<Quantiles>,
    leader: usize,
    /// Hot watchers that answered within [`ANSWER_LIMIT`], of those parked.
    answered: usize,
    parked: usize,
    /// Hot watchers that answered before the change was sent.
    early: usize,
    /// Hot watchers whose connection failed, or whose answer was not a 200.
    failed: usize,
    error_sample: Option<String>,
}

/// Answers of 503 and 429 to parking queries (retried), over all watchers.
#[derive(Debug, Default)]
struct Refusals {
    count: AtomicU64,
    sample: Mutex<Option<String>>,
}

impl Refusals {
    fn note(&self, message: String) {
        self.count.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut sample) = self.sample.lock() {
            sample.get_or_insert_with(|| message.chars().take(160).collect());
        }
    }

    fn text(&self) -> String {
        let sample = self.sample.lock().ok().and_then(|s| s.clone());
        format!(
            "{}{}",
            self.count.load(Ordering::Relaxed),
            sample.map_or(String::new(), |s| format!(" (e.g. {s})"))
        )
    }
}

/// What one attempt at a blocking query got.
enum Attempt {
    /// The first bytes of a 200 answer came at this instant.
    Answered(Instant),
    /// Refused with 503 or 429 (worth retrying), with the answer's start.
    Refused(String),
}

/// A handle on one HTTP/2 connection, opening streams.
type Http2 = h2::client::SendRequest<bytes::Bytes>;

/// Where a watcher parks its query.
#[derive(Clone)]
enum Via {
    /// A connection of its own to this node, from this source address.
    Tcp(SocketAddr, Ipv4Addr),
    /// A stream of this HTTP/2 connection.
    Http2(Http2),
}

/// Opens an HTTP/2 connection (prior knowledge) to `addr` from `source`, its frames driven
/// by a task of its own; its handle opens streams.
async fn connect_http2(addr: SocketAddr, source: Ipv4Addr) -> Result<Http2> {
    let stream = connect(addr, source).await?;
    // hyper's client windows: with h2's 64 KiB one for the whole connection, a thousand
    // answers at once arrive cut into small frames, and h2 takes a flood of small frames
    // for an attack and closes the connection.
    let (send, connection) = h2::client::Builder::new()
        .initial_window_size(2 << 20)
        .initial_connection_window_size(5 << 20)
        .handshake(stream)
        .await
        .with_context(|| format!("HTTP/2 handshake with {addr}"))?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(send)
}

/// A TCP connection from `source` to `addr`.
async fn connect(addr: SocketAddr, source: Ipv4Addr) -> Result<tokio::net::TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket
        .bind(SocketAddr::new(source.into(), 0))
        .with_context(|| format!("bind {source}:0"))?;
    let stream = socket
        .connect(addr)
        .await
        .with_context(|| format!("connect {source} -> {addr}"))?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// One attempt: send the query for `path` (on a connection of its own, or a new stream),
/// wait for the first bytes of the answer.
async fn attempt(via: &Via, path: &str, gate: &Semaphore) -> Result<Attempt> {
    match via {
        Via::Tcp(addr, source) => attempt_tcp(*addr, *source, path, gate).await,
        Via::Http2(send) => attempt_http2(send, path, gate).await,
    }
}

/// [`attempt`] as one stream of an HTTP/2 connection: answered when the response head
/// comes.
async fn attempt_http2(send: &Http2, path: &str, gate: &Semaphore) -> Result<Attempt> {
    let permit = gate.acquire().await?;
    let mut send = send.clone().ready().await.context("an HTTP/2 stream")?;
    let request = http::Request::get(format!("http://127.0.0.1{path}")).body(())?;
    let (response, _) = send.send_request(request, true)?;
    drop(permit);
    let response = response.await.context("the HTTP/2 answer")?;
    let at = Instant::now();
    let status = response.status().as_u16();
    // Read the body to its end, as a client does: its frames stay buffered (and count
    // against the connection's budget for small frames) until they are taken.
    let mut body = response.into_body();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.context("the HTTP/2 answer's body")?;
        let _ = body.flow_control().release_capacity(chunk.len());
    }
    match status {
        200 => Ok(Attempt::Answered(at)),
        503 | 429 => Ok(Attempt::Refused(format!("HTTP/2 {status}"))),
        other => bail!("answered HTTP/2 {other}"),
    }
}

/// [`attempt`] on a connection of its own: connect from `source`, write the request,
/// wait for the first bytes.
async fn attempt_tcp(
    addr: SocketAddr,
    source: Ipv4Addr,
    path: &str,
    gate: &Semaphore,
) -> Result<Attempt> {
    let permit = gate.acquire().await?;
    let mut stream = connect(addr, source).await?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    drop(permit);
    let mut buffer = [0u8; 16];
    let n = stream.read(&mut buffer).await?;
    let at = Instant::now();
    ensure!(n > 0, "the server closed the connection without an answer");
    if buffer[..n].starts_with(b"HTTP/1.1 200") {
        return Ok(Attempt::Answered(at));
    }
    // Not a 200: read the rest of the answer (briefly) for the report.
    let mut answer = buffer[..n].to_vec();
    let mut more = [0u8; 1024];
    while let Ok(Ok(m)) =
        tokio::time::timeout(Duration::from_millis(300), stream.read(&mut more)).await
    {
        if m == 0 || answer.len() > 4096 {
            break;
        }
        answer.extend_from_slice(&more[..m]);
    }
    let text = String::from_utf8_lossy(&answer);
    let status = text.lines().next().unwrap_or("").trim().to_owned();
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    let message = format!("{status}: {}", body.chars().take(200).collect::<String>());
    if status.starts_with("HTTP/1.1 503") || status.starts_with("HTTP/1.1 429") {
        return Ok(Attempt::Refused(message));
    }
    bail!("answered {message}")
}

/// Attempts at one blocking query before a refusal is final.
const ATTEMPTS: u32 = 12;

/// Parks one blocking query until the first bytes of its 200 answer arrive: when they
/// came. A 503 or 429 is noted in `refusals` and retried after a pause (growing from
/// 0.2 s to 3 s), as a client would.
async fn park(
    via: Via,
    path: Arc<str>,
    gate: Arc<Semaphore>,
    refusals: Arc<Refusals>,
) -> Result<Instant> {
    let mut last = String::new();
    for n in 0..ATTEMPTS {
        match attempt(&via, &path, &gate).await? {
            Attempt::Answered(at) => return Ok(at),
            Attempt::Refused(message) => {
                refusals.note(message.clone());
                last = message;
                let pause = Duration::from_millis(200 << n.min(4)).min(Duration::from_secs(3));
                tokio::time::sleep(pause).await;
            }
        }
    }
    bail!("refused {ATTEMPTS} times: {last}")
}

/// The node watcher `i` parks on (round robin over the cluster's nodes, `urls` order).
fn node_of(i: usize) -> usize {
    i % scale::NODES
}

/// The path of a blocking query of `service` past `index`.
fn request(service: &str, index: u64) -> Arc<str> {
    format!("/v1/services/{service}?index={index}&wait={WAIT}").into()
}

/// Source address number `n` (round robin over [`SOURCES`]).
fn source(n: usize) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, 2 + (n % SOURCES) as u8)
}

/// `X-Registry-Index` of a linearizable read of `service` through `url`.
async fn index_of(http: &reqwest::Client, url: &str, service: &str) -> Result<u64> {
    let response = http
        .get(format!("{url}/v1/services/{service}"))
        .send()
        .await?
        .error_for_status()?;
    let index = response
        .headers()
        .get("x-registry-index")
        .context("no X-Registry-Index")?
        .to_str()?
        .parse()?;
    response.bytes().await?;
    Ok(index)
}

/// The parked queries the nodes report, in all.
async fn parked_now(http: &reqwest::Client, urls: &[String]) -> Result<u64> {
    let mut total = 0;
    for url in urls {
        total += scale::status(http, url).await?.blocking_queries;
    }
    Ok(total)
}

/// What the cold watchers did while they should have stayed parked.
#[derive(Debug, Default)]
struct Cold {
    woken: AtomicU64,
    failed: AtomicU64,
    error: Mutex<Option<String>>,
}

/// Waits until the nodes hold `expected()` blocking queries (it may drop as watchers
/// fail), printing progress; how long that took and how many are parked.
async fn wait_parked(
    http: &reqwest::Client,
    urls: &[String],
    expected: impl Fn() -> u64,
    limit: Duration,
    progress: Progress,
) -> Result<(Duration, u64)> {
    let started = Instant::now();
    let mut said = Instant::now();
    loop {
        // A node may not answer for a moment (an election under the burst): ask again.
        let (now, error) = match parked_now(http, urls).await {
            Ok(now) => (now, String::new()),
            Err(e) => (0, format!(" (last status error: {e:#})")),
        };
        let wanted = expected();
        if now >= wanted && error.is_empty() {
            return Ok((started.elapsed(), now));
        }
        ensure!(
            started.elapsed() < limit,
            "only {now} of {wanted} blocking queries parked after {limit:?}{error}"
        );
        if said.elapsed() > Duration::from_secs(5) {
            progress.say("G", format!("{now}/{wanted} parked"));
            said = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits until at most [`CONNECTING`] of the `alive()` watchers opened so far are not
/// parked yet (or [`PACE_LIMIT`] has passed): connections the servers have not accepted
/// wait in their listeners' backlogs, where they would crowd out the peers' Raft calls.
async fn pace(http: &reqwest::Client, urls: &[String], alive: impl Fn() -> u64) {
    let started = Instant::now();
    while started.elapsed() < PACE_LIMIT {
        match parked_now(http, urls).await {
            Ok(parked) if parked + CONNECTING as u64 >= alive() => return,
            _ => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

/// The RSS of every node, summed (KiB).
fn rss_sum(cluster: &Registry) -> Result<u64> {
    (0..scale::NODES)
        .map(|i| rss_kib(cluster.pid(i).context("a node is not running")?))
        .sum()
}

/// Registers `HOT` and the cold services (one instance each) through `url`.
async fn register_services(url: &str) -> Result<()> {
    let services: Vec<String> = std::iter::once(HOT.to_owned())
        .chain((0..COLD_SERVICES).map(|c| format!("cold-{c:04}")))
        .collect();
    let services = Arc::new(services);
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..SETUP_WORKERS {
        let (url, services) = (url.to_owned(), Arc::clone(&services));
        tasks.spawn(async move {
            let http = scale::client(Duration::from_secs(30))?;
            for service in services.iter().skip(w).step_by(SETUP_WORKERS) {
                ok_body(
                    http.put(format!("{url}/v1/services/{service}/instances/i-0"))
                        .json(&json!({"address": "127.0.0.1", "port": 9000, "ttl": scale::TTL})),
                )
                .await
                .with_context(|| format!("register {service}"))?;
            }
            anyhow::Ok(())
        });
    }
    while let Some(joined) = tasks.join_next().await {
        joined.context("a registering worker panicked")??;
    }
    Ok(())
}

/// The current index of each cold service.
async fn cold_indexes(url: &str) -> Result<Vec<u64>> {
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..SETUP_WORKERS {
        let url = url.to_owned();
        tasks.spawn(async move {
            let http = scale::client(Duration::from_secs(30))?;
            let mut mine = Vec::new();
            for c in (w..COLD_SERVICES).step_by(SETUP_WORKERS) {
                mine.push((c, index_of(&http, &url, &format!("cold-{c:04}")).await?));
            }
            anyhow::Ok(mine)
        });
    }
    let mut indexes = vec![0; COLD_SERVICES];
    while let Some(joined) = tasks.join_next().await {
        for (c, index) in joined.context("an index reader panicked")?? {
            indexes[c] = index;
        }
    }
    Ok(indexes)
}

/// Runs step G on a fresh cluster of `bin`; `nofile` is this process's open-file limit
/// (0: unknown).
pub async fn run(
    bin: &Path,
    config: &ScaleConfig,
    nofile: u64,
    progress: Progress,
) -> Result<StepOutput> {
    ensure!(config.watchers > 0, "no watchers to park");
    // This process holds one socket per watcher, each server a third of them; all have
    // the open-file limit this process could get (the servers inherit it).
    let room = usize::try_from(nofile)
        .unwrap_or(usize::MAX)
        .saturating_sub(BENCH_FILES)
        .min(
            usize::try_from(nofile)
                .unwrap_or(usize::MAX)
                .saturating_sub(SERVER_FILES)
                .saturating_mul(scale::NODES),
        );
    // Sockets the watchers take: one each, or one per `streams` of them over HTTP/2.
    let streams = config.watch_streams;
    let sockets = |watchers: usize| {
        if streams == 0 {
            watchers
        } else {
            watchers.div_ceil(streams) + scale::NODES
        }
    };
    let capped = nofile > 0 && sockets(config.watchers) > room;
    let (watchers, hot) = if capped {
        ensure!(
            room >= 100,
            "the open-file limit ({nofile}) leaves no room for watchers"
        );
        let most = if streams == 0 {
            room
        } else {
            (room - scale::NODES) * streams
        };
        (most, config.hot_watchers.min(most / 2))
    } else {
        (config.watchers, config.hot_watchers.min(config.watchers))
    };
    if capped {
        progress.say(
            "G",
            format!(
                "CAPPED: {watchers} watchers ({hot} hot) instead of {} ({}): the open-file limit is {nofile} per process and this process may not raise its hard limit (that needs CAP_SYS_RESOURCE)",
                config.watchers, config.hot_watchers
            ),
        );
    }
    let max_queries = (watchers + 1000).to_string();
    let max_connections = (sockets(watchers) + 2000).min(1_000_000).to_string();
    let mut cluster = Registry::start_with(
        bin,
        scale::NODES,
        &[
            "--max-blocking-queries",
            &max_queries,
            "--max-connections",
            &max_connections,
        ],
    )
    .await?;
    progress.say(
        "G",
        format!(
            "cluster up (--max-blocking-queries {max_queries} --max-connections {max_connections}); logs in {}",
            cluster.dir().display()
        ),
    );
    let leader = cluster.wait_for_leader(None).await?;
    let urls = cluster.urls()[..scale::NODES].to_vec();
    let addrs: Vec<SocketAddr> = (0..scale::NODES)
        .map(|i| {
            cluster
                .addr(i)
                .context("a node's address")?
                .parse()
                .context("a node's address")
        })
        .collect::<Result<_>>()?;
    let url = urls[leader].clone();
    let http = scale::client(Duration::from_secs(30))?;
    register_services(&url).await?;
    let cold_index = cold_indexes(&url).await?;
    let mut hot_index = index_of(&http, &url, HOT).await?;
    // Every node must have applied the registrations before a query parks on it (an index
    // it has not reached yet would also park, but then a late apply would wake it).
    let applied_target = scale::status(&http, &url).await?.commit_index;
    for node_url in &urls {
        let deadline = Instant::now() + Duration::from_secs(30);
        while scale::status(&http, node_url).await?.applied_index < applied_target {
            ensure!(Instant::now() < deadline, "{node_url} did not catch up");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_before = rss_sum(&cluster)?;
    let bench_before = rss_kib(std::process::id())?;
    let term_before = scale::status(&http, &url).await?.term;

    progress.say(
        "G",
        format!("parking {watchers} blocking queries ({hot} on \"{HOT}\", the rest over {COLD_SERVICES} other services), spread over {} nodes", scale::NODES),
    );
    // Over HTTP/2: every node's connections, each opened when its first watcher parks
    // (as a client would: one opened long before its first request would be closed by
    // the header timeout).
    let mut connections: Vec<Vec<Http2>> = vec![Vec::new(); scale::NODES];
    let mut sources = 0usize;
    // Watcher `i`: node `node_of(i)`, and there a connection of its own or a stream of
    // the connection its number falls on (a hot watcher parked again reuses its slot).
    let via = |i: usize, sources: &mut usize, connections: &[Vec<Http2>]| {
        let node = node_of(i);
        match (i / scale::NODES).checked_div(streams) {
            Some(slot) => Via::Http2(connections[node][slot].clone()),
            None => {
                *sources += 1;
                Via::Tcp(addrs[node], source(*sources - 1))
            }
        }
    };
    let gate = Arc::new(Semaphore::new(CONNECTING));
    let cold = Arc::new(Cold::default());
    let refusals = Arc::new(Refusals::default());
    let cold_count = watchers - hot;
    let park_started = Instant::now();
    let mut hot_handles: Vec<JoinHandle<Result<Instant>>> = Vec::with_capacity(hot);
    let mut cold_handles: Vec<JoinHandle<()>> = Vec::with_capacity(cold_count);
    let hot_request = request(HOT, hot_index);
    let cold_requests: Vec<Arc<str>> = cold_index
        .iter()
        .enumerate()
        .map(|(c, index)| request(&format!("cold-{c:04}"), *index))
        .collect();
    let finished = |handles: &[JoinHandle<Result<Instant>>]| {
        handles.iter().filter(|h| h.is_finished()).count() as u64
    };
    let cold_done = || cold.woken.load(Ordering::Relaxed) + cold.failed.load(Ordering::Relaxed);
    for i in 0..watchers {
        if i > 0 && i % CONNECTING == 0 {
            let alive = || i as u64 - finished(&hot_handles) - cold_done();
            pace(&http, &urls, alive).await;
        }
        if let Some(slot) = (i / scale::NODES).checked_div(streams) {
            let node = node_of(i);
            if connections[node].len() <= slot {
                connections[node].push(connect_http2(addrs[node], source(sources)).await?);
                sources += 1;
            }
        }
        let via = via(i, &mut sources, &connections);
        if i < hot {
            hot_handles.push(tokio::spawn(park(
                via,
                Arc::clone(&hot_request),
                Arc::clone(&gate),
                Arc::clone(&refusals),
            )));
        } else {
            let request = Arc::clone(&cold_requests[i % COLD_SERVICES]);
            let (gate, cold, refusals) =
                (Arc::clone(&gate), Arc::clone(&cold), Arc::clone(&refusals));
            cold_handles.push(tokio::spawn(async move {
                match park(via, request, gate, refusals).await {
                    Ok(_) => {
                        cold.woken.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => {
                        cold.failed.fetch_add(1, Ordering::Relaxed);
                        if let Ok(mut first) = cold.error.lock() {
                            first.get_or_insert_with(|| format!("{e:#}"));
                        }
                    }
                }
            }));
        }
    }
    let limit = Duration::from_secs(60) + Duration::from_millis(2 * watchers as u64);
    let still_cold = || cold_count as u64 - cold_done();
    let parked_in = wait_parked(
        &http,
        &urls,
        || still_cold() + hot as u64 - finished(&hot_handles),
        limit,
        progress,
    )
    .await;
    let (parked_in, parked) = match parked_in {
        Ok(d) => d,
        Err(e) => {
            let error = cold.error.lock().ok().and_then(|e| e.clone());
            return Err(e.context(format!(
                "parking (cold watchers failed: {}, e.g. {})",
                cold.failed.load(Ordering::Relaxed),
                error.unwrap_or_else(|| "none".to_owned())
            )));
        }
    };
    let connect_s = park_started.elapsed().as_secs_f64();
    let hot_failed_at_park = finished(&hot_handles);
    let term_parked = scale::status(&http, &url).await.map(|s| s.term).ok();
    progress.say(
        "G",
        format!(
            "{parked} parked in {:.1} s ({} refused and retried)",
            parked_in.as_secs_f64(),
            refusals.count.load(Ordering::Relaxed)
        ),
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_after = rss_sum(&cluster)?;
    let bench_after = rss_kib(std::process::id())?;
    let per_query = rss_after.saturating_sub(rss_before) as f64 * 1024.0 / parked.max(1) as f64;

    let mut rounds = Vec::new();
    for round in 1..=ROUNDS {
        let t0 = Instant::now();
        ok_body(
            http.put(format!("{url}/v1/services/{HOT}/instances/change-{round}"))
                .json(&json!({"address": "127.0.0.1", "port": 9001, "ttl": scale::TTL})),
        )
        .await
        .context("the change")?;
        let change_ack = t0.elapsed();
        let deadline = t0 + ANSWER_LIMIT;
        let parked = hot_handles.len();
        let (mut latencies, mut early, mut failed, mut error_sample) = (Vec::new(), 0, 0, None);
        let mut by_node = vec![Vec::new(); scale::NODES];
        for (i, handle) in hot_handles.drain(..).enumerate() {
            match tokio::time::timeout_at(deadline, handle).await {
                Ok(Ok(Ok(at))) if at < t0 => early += 1,
                Ok(Ok(Ok(at))) => {
                    latencies.push(us(at - t0));
                    by_node[node_of(i)].push(us(at - t0));
                }
                Ok(Ok(Err(e))) => {
                    failed += 1;
                    error_sample.get_or_insert_with(|| format!("{e:#}"));
                }
                Ok(Err(e)) => {
                    failed += 1;
                    error_sample.get_or_insert_with(|| format!("watcher task: {e}"));
                }
                Err(_) => {}
            }
        }
        let latency = Quantiles::of(latencies);
        let r = Round {
            round,
            change_ack_us: us(change_ack),
            answered: latency.count,
            latency,
            by_node: by_node.into_iter().map(Quantiles::of).collect(),
            leader,
            parked,
            early,
            failed,
            error_sample,
        };
        progress.say(
            "G",
            format!(
                "round {round}: {}/{} hot watchers answered, {}",
                r.answered,
                r.parked,
                r.latency.text()
            ),
        );
        rounds.push(r);
        if round < ROUNDS {
            hot_index = index_of(&http, &url, HOT).await?;
            let hot_request = request(HOT, hot_index);
            for i in 0..hot {
                if i > 0 && i % CONNECTING == 0 {
                    let alive = || still_cold() + i as u64 - finished(&hot_handles);
                    pace(&http, &urls, alive).await;
                }
                hot_handles.push(tokio::spawn(park(
                    via(i, &mut sources, &connections),
                    Arc::clone(&hot_request),
                    Arc::clone(&gate),
                    Arc::clone(&refusals),
                )));
            }
            wait_parked(
                &http,
                &urls,
                || still_cold() + hot as u64 - finished(&hot_handles),
                limit,
                progress,
            )
            .await
            .context("re-parking the hot watchers")?;
        }
    }
    let term_after = scale::status(&http, &url).await.map(|s| s.term).ok();
    let cold_woken = cold.woken.load(Ordering::Relaxed);
    let cold_failed = cold.failed.load(Ordering::Relaxed);
    let cold_error = cold.error.lock().ok().and_then(|e| e.clone());
    for handle in &cold_handles {
        handle.abort();
    }
    drop(cold_handles);

    let mut out = StepOutput::default();
    if capped {
        out.line(
            "CAPPED by the open-file limit",
            format!(
                "{watchers} watchers ({hot} hot) instead of {} ({}): RLIMIT_NOFILE is {nofile} per process and may not be raised here (needs CAP_SYS_RESOURCE; e.g. run under `prlimit --nofile=1048576` from a shell that may)",
                config.watchers, config.hot_watchers
            ),
        );
    }
    out.line(
        "503/429 answers to parking queries (each retried after a pause)",
        refusals.text(),
    );
    out.line(
        format!(
            "park {watchers} GET /v1/services/{{s}}?index=X&wait={WAIT} ({}, {} nodes)",
            if streams == 0 {
                "raw TCP, a connection each".to_owned()
            } else {
                format!(
                    "HTTP/2, {streams} streams per connection, {} connections",
                    connections.iter().map(Vec::len).sum::<usize>()
                )
            },
            scale::NODES
        ),
        format!(
            "{parked} parked {connect_s:.1} s after the first connect (failed for good: {} hot, {} other)",
            hot_failed_at_park,
            cold.failed.load(Ordering::Relaxed)
        ),
    );
    let term = |t: Option<u64>| t.map_or("?".to_owned(), |t| t.to_string());
    out.line(
        "Raft term before parking / once parked / after the rounds",
        format!(
            "{term_before} / {} / {}{}",
            term(term_parked),
            term(term_after),
            if term_after != Some(term_before) {
                " (leader elections happened)"
            } else {
                ""
            }
        ),
    );
    out.line(
        "server RSS (sum of the nodes) before parking / after",
        format!(
            "{} / {} = {per_query:.0} bytes per parked query",
            mib(rss_before),
            mib(rss_after)
        ),
    );
    out.line(
        "this bench process's RSS before / after (not the servers')",
        format!("{} / {}", mib(bench_before), mib(bench_after)),
    );
    for r in &rounds {
        out.line(
            format!(
                "round {}: new instance of \"{HOT}\", first byte at its {} watchers",
                r.round, r.parked
            ),
            format!(
                "{} answered: {}; change acknowledged after {}; p99 by node {}; {} early, {} failed{}",
                r.answered,
                r.latency.text(),
                ms(r.change_ack_us),
                r.by_node
                    .iter()
                    .enumerate()
                    .map(|(n, q)| format!(
                        "{}{} {}",
                        n + 1,
                        if n == r.leader { " (leader)" } else { "" },
                        ms(q.p99_us)
                    ))
                    .collect::<Vec<_>>()
                    .join(", "),
                r.early,
                r.failed,
                r.error_sample
                    .as_ref()
                    .map_or(String::new(), |e| format!(" (e.g. {e})"))
            ),
        );
    }
    out.line(
        format!("watchers of the other {COLD_SERVICES} services ({cold_count}) woken"),
        format!(
            "{cold_woken} woken, {cold_failed} failed{}",
            cold_error.map_or(String::new(), |e| format!(" (e.g. {e})"))
        ),
    );
    let worst = rounds.iter().map(|r| r.latency.p99_us).max().unwrap_or(0);
    let all_answered = rounds
        .iter()
        .all(|r| r.answered == r.parked && r.parked == hot);
    out.targets.push(TargetCheck {
        target: format!(
            "watch fan-out at scale: {hot} hot of {watchers} parked all answer, p99 < {} ms",
            TARGET_P99.as_millis()
        ),
        measured: format!(
            "worst round p99 {}; answered {:?} of {hot}",
            ms(worst),
            rounds.iter().map(|r| r.answered).collect::<Vec<_>>()
        ),
        pass: Some(all_answered && worst < us(TARGET_P99)),
    });
    out.targets.push(TargetCheck {
        target: "watch isolation: no watcher of another service woken".to_owned(),
        measured: format!("{cold_woken} of {cold_count} woken, {cold_failed} failed"),
        pass: Some(cold_woken == 0 && cold_failed == 0),
    });
    out.detail("watchers", watchers);
    out.detail("hot_watchers", hot);
    out.detail("capped_by_open_file_limit", capped.then_some(nofile));
    out.detail("http2_streams_per_connection", streams);
    out.detail(
        "refused_and_retried",
        refusals.count.load(Ordering::Relaxed),
    );
    out.detail("cold_services", COLD_SERVICES);
    out.detail("parked", parked);
    out.detail("parked_in_s", connect_s);
    out.detail(
        "term_before_parked_after",
        (term_before, term_parked, term_after),
    );
    out.detail("server_rss_before_kib", rss_before);
    out.detail("server_rss_after_kib", rss_after);
    out.detail("bytes_per_parked_query", per_query);
    out.detail("bench_rss_before_kib", bench_before);
    out.detail("bench_rss_after_kib", bench_after);
    out.detail("rounds", &rounds);
    out.detail("cold_woken", cold_woken);
    out.detail("cold_failed", cold_failed);
    progress.say("G", "stopping the watchers' cluster");
    drop(cluster);
    Ok(out)
}
