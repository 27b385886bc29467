//! Floods against the leader of a real three-node cluster (processes on 127.0.0.1): too
//! many blocking queries, connections that never send or send a byte at a time, and more
//! writes than the leader queues. Throughout, instances heartbeating on their own
//! connections keep succeeding, the leader does not change and no lease expires; the
//! flood is refused cleanly (429 / 503 with `Retry-After`, or closed connections), and
//! the node is back to normal once it ends.
//!
//! The limits are set low (`--max-blocking-queries 200`, ...) so that a flood CI can
//! afford crosses them; `scripts/flood.sh` runs the same floods at full size.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{ensure, Context as _, Result};
use tests::{must_pass, wait_until, Cluster};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// Instances heartbeating through every flood.
const INSTANCES: usize = 20;

/// Heartbeats that succeeded and failed, from [`heartbeaters`].
#[derive(Default)]
struct Beats {
    ok: AtomicU64,
    failed: AtomicU64,
}

/// Registers [`INSTANCES`] instances (TTL 3 s) on `addr` and heartbeats each every 300 ms
/// on its own connection until `stop`; counts the outcomes.
async fn heartbeaters(
    addr: String,
    beats: Arc<Beats>,
    stop: tokio::sync::watch::Receiver<bool>,
) -> Result<Vec<tokio::task::JoinHandle<()>>> {
    let mut tasks = Vec::new();
    for i in 0..INSTANCES {
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(1)
            .timeout(Duration::from_secs(5))
            .build()?;
        let base = format!("http://{addr}/v1/services/flood-hb/instances/i{i}");
        let registered = http
            .put(&base)
            .json(&serde_json::json!({"address": "127.0.0.1", "port": 9000 + i, "ttl": "3s"}))
            .send()
            .await?;
        ensure!(
            registered.status().is_success(),
            "register: {}",
            registered.status()
        );
        let (beats, mut stop) = (beats.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(300));
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = stop.changed() => return,
                }
                let answer = http.put(format!("{base}/heartbeat")).send().await;
                let counter = match answer {
                    Ok(r) if r.status().is_success() => &beats.ok,
                    _ => &beats.failed,
                };
                counter.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    Ok(tasks)
}

/// Runs `flood` against the leader of a cluster started with `args` while instances
/// heartbeat, then checks what every flood must leave intact.
async fn survives<F, Fut>(args: &[&str], flood: F)
where
    F: FnOnce(String) -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
{
    raise_open_file_limit();
    let cluster = Cluster::start(3, args).await.expect("start the cluster");
    must_pass(async {
        let leader = cluster.leader_id().await?;
        let term = cluster.status(leader).await?.term;
        let addr = cluster.addr(leader);
        let beats = Arc::new(Beats::default());
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let tasks = heartbeaters(addr.clone(), beats.clone(), stop_rx).await?;
        flood(addr.clone()).await?;
        let _ = stop_tx.send(true);
        for task in tasks {
            let _ = task.await;
        }
        let (ok, failed) = (
            beats.ok.load(Ordering::Relaxed),
            beats.failed.load(Ordering::Relaxed),
        );
        ensure!(ok > 0, "no heartbeat was sent");
        // At most 1% fail; a flood of a second or two gives only some tens of beats, of
        // which one may time out on a loaded 2-core CI machine (clients heartbeat at TTL/3,
        // so one miss costs nothing; that no lease expires is checked below).
        ensure!(
            failed * 100 <= ok + failed || failed <= 1,
            "{failed} of {} heartbeats failed during the flood",
            ok + failed
        );
        let after = cluster.status(leader).await?;
        ensure!(
            after.term == term && after.leader == Some(leader),
            "the leader changed during the flood: term {term} -> {}, leader {:?}",
            after.term,
            after.leader
        );
        // No lease expired: every instance is still passing.
        let service: api_spec::ServiceInstances =
            reqwest::get(format!("http://{addr}/v1/services/flood-hb?status=any"))
                .await?
                .json()
                .await?;
        let passing = service
            .instances
            .iter()
            .filter(|i| i.status == api_spec::InstanceStatus::Passing)
            .count();
        ensure!(
            passing == INSTANCES,
            "{passing} of {INSTANCES} instances passing: {service:?}"
        );
        Ok(())
    })
    .await;
}

/// The floods open hundreds of sockets from this process.
fn raise_open_file_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((_, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}

/// The `X-Registry-Index` of an answer.
fn index_of(response: &reqwest::Response) -> Result<u64> {
    response
        .headers()
        .get(api_spec::INDEX_HEADER)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
        .context("no index header")
}

/// What `GET /v1/cluster` says of a node's limits.
async fn limits(addr: &str) -> Result<api_spec::NodeLimits> {
    let status: api_spec::ClusterStatus = reqwest::get(format!("http://{addr}/v1/cluster"))
        .await?
        .json()
        .await?;
    Ok(status.limits)
}

#[tokio::test]
async fn a_flood_of_blocking_queries_is_capped_and_refused_with_429() {
    survives(&["--max-blocking-queries", "200"], |addr| async move {
        let index =
            index_of(&reqwest::get(format!("http://{addr}/v1/services/flood-watch")).await?)?;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(20))
            .build()?;
        let url = format!("http://{addr}/v1/services/flood-watch?index={index}&wait=8s");
        let started = Instant::now();
        let queries: Vec<_> = (0..600)
            .map(|_| {
                let request = http.get(&url).send();
                tokio::spawn(async move {
                    let r = request.await?;
                    let status = r.status().as_u16();
                    let retry_after = r.headers().contains_key(reqwest::header::RETRY_AFTER);
                    let at = Instant::now();
                    let body = r.text().await.unwrap_or_default();
                    Ok::<_, reqwest::Error>((status, retry_after, at, body))
                })
            })
            .collect();
        // While they are parked the node reports exactly its cap.
        wait_until(
            Duration::from_secs(10),
            "the blocking queries to park",
            || {
                let addr = addr.clone();
                async move {
                    let l = limits(&addr).await?;
                    ensure!(
                        l.blocking_queries == 200 && l.max_blocking_queries == 200,
                        "{l:?}"
                    );
                    Ok(())
                }
            },
        )
        .await?;
        let (mut parked, mut refused) = (0, 0);
        for query in queries {
            let (status, retry_after, at, body) = query.await??;
            match status {
                200 => parked += 1,
                429 => {
                    ensure!(retry_after, "429 without Retry-After");
                    ensure!(
                        at.duration_since(started) < Duration::from_secs(5),
                        "a refusal took {:?}",
                        at.duration_since(started)
                    );
                    refused += 1;
                }
                other => anyhow::bail!("a blocking query got {other}: {body}"),
            }
        }
        ensure!(
            parked <= 200 && refused >= 400 && parked + refused == 600,
            "{parked} parked, {refused} refused"
        );
        // Once they answered, the slots are free again.
        let l = limits(&addr).await?;
        ensure!(l.blocking_queries == 0, "{l:?}");
        Ok(())
    })
    .await;
}

#[tokio::test]
async fn idle_and_slow_connections_are_closed_and_the_cap_refuses_the_rest() {
    let args = [
        "--max-connections",
        "300",
        "--http-header-timeout",
        "1s",
        "--http-idle-timeout",
        "2s",
    ];
    survives(&args, |addr| async move {
        // 150 connections that never send, 100 that send a request head a byte at a time.
        let mut idle = Vec::new();
        for _ in 0..150 {
            idle.push(TcpStream::connect(&addr).await?);
        }
        let slow: Vec<_> = (0..100)
            .map(|_| {
                let addr = addr.clone();
                tokio::spawn(async move {
                    let mut tcp = TcpStream::connect(&addr).await?;
                    let started = Instant::now();
                    for byte in b"GET /v1/services HTTP/1.1\r\nHost: x\r\n".iter().cycle() {
                        if tcp.write_all(&[*byte]).await.is_err() {
                            break;
                        }
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        if started.elapsed() > Duration::from_secs(10) {
                            anyhow::bail!("a byte-at-a-time head was not cut off within 10s");
                        }
                    }
                    Ok(started.elapsed())
                })
            })
            .collect();
        // Over the cap: the connection is answered 503 and closed.
        // (300 for clients, and 64 more kept for peers that a client request is refused on.)
        let mut extra = Vec::new();
        for _ in 0..200 {
            extra.push(TcpStream::connect(&addr).await?);
        }
        let mut refused = 0;
        for mut tcp in extra {
            let mut answer = Vec::new();
            let read =
                tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut answer)).await;
            if read.is_ok() && answer.starts_with(b"HTTP/1.1 503") {
                refused += 1;
            }
        }
        ensure!(refused > 0, "no connection over the cap was refused");
        for task in slow {
            let lasted = task.await??;
            ensure!(
                lasted < Duration::from_secs(5),
                "a slow head lasted {lasted:?}"
            );
        }
        // Idle connections are closed by the server after the idle timeout.
        for mut tcp in idle {
            let mut rest = Vec::new();
            let closed =
                tokio::time::timeout(Duration::from_secs(6), tcp.read_to_end(&mut rest)).await;
            ensure!(closed.is_ok(), "an idle connection was still open after 6s");
        }
        // Back to normal: the connections are gone.
        wait_until(Duration::from_secs(2), "the connections to close", || {
            let addr = addr.clone();
            async move {
                let l = limits(&addr).await?;
                ensure!(l.connections < 50, "{l:?}");
                Ok(())
            }
        })
        .await
    })
    .await;
}

#[tokio::test]
async fn writes_beyond_the_queue_are_refused_with_503_overloaded() {
    survives(&["--max-queued-writes", "2"], |addr| async move {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(20))
            .build()?;
        let writes: Vec<_> = (0..600)
            .map(|i| {
                let request = http
                    .put(format!("http://{addr}/v1/services/flood-w/instances/w{i}"))
                    .json(&serde_json::json!({"address": "127.0.0.1", "port": 1, "ttl": "1h"}))
                    .send();
                tokio::spawn(async move {
                    let r = request.await?;
                    let status = r.status().as_u16();
                    let retry = r.headers().contains_key(reqwest::header::RETRY_AFTER);
                    let body = r.text().await?;
                    Ok::<_, reqwest::Error>((status, retry, body))
                })
            })
            .collect();
        let (mut ok, mut overloaded) = (0, 0);
        for write in writes {
            let (status, retry, body) = write.await??;
            match status {
                200 => ok += 1,
                503 if body.contains(api_spec::codes::OVERLOADED) => {
                    ensure!(retry, "503 without Retry-After");
                    overloaded += 1;
                }
                other => anyhow::bail!("a write got {other}: {body}"),
            }
        }
        ensure!(
            ok > 0 && overloaded > 0,
            "{ok} written, {overloaded} refused"
        );
        Ok(())
    })
    .await;
}

#[tokio::test]
async fn with_a_peer_listener_a_full_client_port_does_not_touch_raft() {
    raise_open_file_limit();
    let ports = tests::free_ports(6).expect("free ports");
    let (clients, peers): (Vec<_>, Vec<_>) = ports
        .values()
        .copied()
        .enumerate()
        .partition(|(i, _)| *i < 3);
    let clients: std::collections::BTreeMap<u64, u16> = clients
        .into_iter()
        .map(|(i, p)| (i as u64 + 1, p))
        .collect();
    let peer_ports: std::collections::BTreeMap<u64, u16> =
        peers.into_iter().map(|(i, p)| (i as u64 - 2, p)).collect();
    let setup = tests::NodeSetup {
        peer_ports: peer_ports.clone(),
        ..Default::default()
    };
    let cluster = Cluster::start_with(&clients, &["--max-connections", "64"], &setup)
        .await
        .expect("start the cluster");
    must_pass(async {
        let leader = cluster.leader_id().await?;
        let follower = cluster
            .ids()
            .into_iter()
            .find(|&id| id != leader)
            .context("a follower")?;
        let status = cluster.status(follower).await?;
        let term = status.term;
        // The peer listener's connections are counted apart (the leader's calls).
        let peer_connections = status.limits.peer_connections;
        ensure!(
            peer_connections.is_some_and(|n| n >= 1),
            "peer connections: {peer_connections:?}"
        );
        // Members are known by their peer addresses.
        for member in &status.members {
            let peer = peer_ports.get(&member.id).context("a peer port")?;
            ensure!(member.addr == format!("127.0.0.1:{peer}"), "{member:?}");
        }
        // Fill the leader's client port to its cap, and then some.
        let leader_addr = cluster.addr(leader);
        let mut held = Vec::new();
        for _ in 0..80 {
            held.push(TcpStream::connect(&leader_addr).await?);
        }
        let mut probe = TcpStream::connect(&leader_addr).await?;
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), probe.read_to_end(&mut answer)).await;
        ensure!(
            answer.starts_with(b"HTTP/1.1 503"),
            "the full client port answered {:?}",
            String::from_utf8_lossy(&answer)
        );
        // Writes through a follower reach the leader over the peer listener meanwhile.
        let http = reqwest::Client::new();
        let started = Instant::now();
        for i in 0..20 {
            let answer = http
                .put(format!(
                    "http://{}/v1/services/peer-ok/instances/i{i}",
                    cluster.addr(follower)
                ))
                .json(&serde_json::json!({"address": "127.0.0.1", "port": 1, "ttl": "1h"}))
                .send()
                .await?;
            ensure!(
                answer.status().is_success(),
                "write {i} through the follower: {}",
                answer.status()
            );
        }
        ensure!(
            started.elapsed() < Duration::from_secs(10),
            "writes took {:?}",
            started.elapsed()
        );
        let after = cluster.status(follower).await?;
        ensure!(
            after.term == term && after.leader == Some(leader),
            "leadership moved while the client port was full: {after:?}"
        );
        drop(held);
        Ok(())
    })
    .await;
}

#[tokio::test]
async fn a_request_that_does_not_wait_on_purpose_is_bounded_by_the_request_timeout() {
    let cluster = Cluster::start(3, &["--request-timeout", "300ms"])
        .await
        .expect("start the cluster");
    must_pass(async {
        let leader = cluster.leader_id().await?;
        let addr = cluster.addr(leader);
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(20))
            .build()?;
        // A blocking query may wait longer than the request timeout: it waits on purpose.
        let index = http
            .get(format!("http://{addr}/v1/services/rt"))
            .send()
            .await?
            .headers()
            .get(api_spec::INDEX_HEADER)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
            .context("no index header")?;
        let started = Instant::now();
        let blocked = http
            .get(format!(
                "http://{addr}/v1/services/rt?index={index}&wait=1s"
            ))
            .send()
            .await?;
        ensure!(
            blocked.status() == 200,
            "blocking query: {}",
            blocked.status()
        );
        ensure!(
            started.elapsed() >= Duration::from_millis(900),
            "it did not block"
        );
        // A write the leader cannot commit (no quorum) is cut off at the request timeout,
        // well before the 5 s propose timeout.
        for id in cluster.ids().into_iter().filter(|&id| id != leader) {
            cluster.pause(id)?;
        }
        let started = Instant::now();
        let answer = http
            .post(format!("http://{addr}/v1/leases"))
            .json(&serde_json::json!({"ttl": "1h"}))
            .send()
            .await?;
        let elapsed = started.elapsed();
        let retry = answer.headers().contains_key(reqwest::header::RETRY_AFTER);
        let status = answer.status().as_u16();
        let body = answer.text().await?;
        for id in cluster.ids().into_iter().filter(|&id| id != leader) {
            cluster.resume(id)?;
        }
        ensure!(status == 503 && retry, "{status}: {body}");
        ensure!(body.contains("--request-timeout"), "{body}");
        ensure!(
            elapsed < Duration::from_secs(3),
            "answered after {elapsed:?}"
        );
        Ok(())
    })
    .await;
}

/// Blocking queries multiplexed over HTTP/2: a thousand parked on one cleartext HTTP/2
/// connection (prior knowledge), each counted as a blocking query, all answered when
/// the service changes; the node holds one client connection for them, not a thousand.
/// This is what lets a node hold more parked queries than it has file descriptors.
#[tokio::test]
async fn a_thousand_blocking_queries_share_one_http2_connection() {
    const QUERIES: usize = 1000;
    let cluster = Cluster::start(1, &[]).await.expect("start");
    must_pass(async {
        let addr = cluster.addr(1);
        let register = |instance: &'static str| {
            let addr = addr.clone();
            async move {
                reqwest::Client::new()
                    .put(format!(
                        "http://{addr}/v1/services/h2-watch/instances/{instance}"
                    ))
                    .json(&serde_json::json!({ "address": "127.0.0.1", "port": 1, "ttl": "1m" }))
                    .send()
                    .await?
                    .error_for_status()
            }
        };
        let index = index_of(&register("a").await?)?;
        let h2 = reqwest::Client::builder()
            .http2_prior_knowledge()
            .timeout(Duration::from_secs(30))
            .build()?;
        let url = format!("http://{addr}/v1/services/h2-watch?index={index}&wait=20s");
        let queries: Vec<_> = (0..QUERIES)
            .map(|_| {
                let request = h2.get(&url).send();
                tokio::spawn(async move {
                    let r = request.await?;
                    let version = r.version();
                    let status = r.status().as_u16();
                    let body: api_spec::ServiceInstances = r.json().await?;
                    Ok::<_, reqwest::Error>((version, status, body.instances.len()))
                })
            })
            .collect();
        let parked = wait_until(Duration::from_secs(20), "the queries to park", || {
            let addr = addr.clone();
            async move {
                let l = limits(&addr).await?;
                ensure!(l.blocking_queries == QUERIES as u64, "{l:?}");
                Ok(l)
            }
        })
        .await?;
        // The HTTP/2 connection, and the plain one reading the limits.
        ensure!(
            parked.connections <= 3,
            "{} connections for {QUERIES} multiplexed queries",
            parked.connections
        );
        register("b").await?;
        for query in queries {
            let (version, status, instances) = query.await??;
            ensure!(
                version == reqwest::Version::HTTP_2 && status == 200 && instances == 2,
                "a query answered {version:?} {status} with {instances} instances"
            );
        }
        let l = limits(&addr).await?;
        ensure!(l.blocking_queries == 0, "{l:?}");
        Ok(())
    })
    .await;
}
