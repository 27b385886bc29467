//! Active health checks against real `registry-server` processes and real targets on
//! 127.0.0.1 started by the tests: an HTTP server whose answers the test switches, a
//! plain TCP listener, and a gRPC health server. Covers passing, turning critical after
//! N failures within a bound, recovering after M successes, timeouts, instances kept by
//! checks alone, the owner's SIGKILL and another server taking its checks over, the
//! second opinion that stops a false alarm, the Consul agent's HTTP checks, refusing a
//! check on a foreign address, and bad definitions.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _, Result};
use serde_json::{json, Value};
use tests::{must_pass, wait_until, Cluster};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// How long one ordinary request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// What a transition's bound leaves out: the resync of the owner's schedule (0.5 s), the
/// second opinion, committing the entry, the test's poll interval.
const SLACK: Duration = Duration::from_millis(2_500);

// ---------------------------------------------------------------------------------------
// Targets.
// ---------------------------------------------------------------------------------------

/// An HTTP server on 127.0.0.1 answering every request with the status the test sets;
/// `fail_next` makes the next N requests answer 500 whatever the status; `delay_ms`
/// holds each answer back.
#[derive(Clone)]
struct HttpTarget {
    addr: SocketAddr,
    status: Arc<AtomicU16>,
    fail_next: Arc<AtomicU64>,
    delay_ms: Arc<AtomicU64>,
    requests: Arc<AtomicU64>,
}

impl HttpTarget {
    async fn start() -> Result<HttpTarget> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let target = HttpTarget {
            addr: listener.local_addr()?,
            status: Arc::new(AtomicU16::new(200)),
            fail_next: Arc::new(AtomicU64::new(0)),
            delay_ms: Arc::new(AtomicU64::new(0)),
            requests: Arc::new(AtomicU64::new(0)),
        };
        let serving = target.clone();
        tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                tokio::spawn(serving.clone().answer(conn));
            }
        });
        Ok(target)
    }

    /// Reads one request head and answers it, then closes the connection.
    async fn answer(self, mut conn: tokio::net::TcpStream) {
        let mut head = Vec::new();
        let mut buf = [0u8; 1024];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            match conn.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => head.extend_from_slice(&buf[..n]),
            }
        }
        self.requests.fetch_add(1, Ordering::SeqCst);
        let delay = self.delay_ms.load(Ordering::SeqCst);
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        let forced = self
            .fail_next
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        let status = if forced {
            500
        } else {
            self.status.load(Ordering::SeqCst)
        };
        let body = format!("status {status}");
        let answer = format!(
            "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let _ = conn.write_all(answer.as_bytes()).await;
    }

    fn url(&self) -> String {
        format!("http://{}/health", self.addr)
    }

    fn set(&self, status: u16) {
        self.status.store(status, Ordering::SeqCst);
    }
}

/// A gRPC server on 127.0.0.1 answering the standard health protocol.
struct GrpcTarget {
    addr: SocketAddr,
    reporter: tonic_health::server::HealthReporter,
    _server: tokio::task::JoinHandle<()>,
}

impl GrpcTarget {
    async fn start() -> Result<GrpcTarget> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (reporter, service) = tonic_health::server::health_reporter();
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        let server = tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(incoming)
                .await;
        });
        Ok(GrpcTarget {
            addr,
            reporter,
            _server: server,
        })
    }

    async fn set(&self, service: &str, serving: bool) {
        let status = if serving {
            tonic_health::ServingStatus::Serving
        } else {
            tonic_health::ServingStatus::NotServing
        };
        self.reporter.set_service_status(service, status).await;
    }
}

// ---------------------------------------------------------------------------------------
// Registry calls.
// ---------------------------------------------------------------------------------------

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(REQUEST_TIMEOUT)
        .no_proxy()
        .build()
        .expect("a reqwest client")
}

async fn register(addr: &str, service: &str, id: &str, body: Value) -> Result<(u16, Value)> {
    register_as(addr, service, id, body, None).await
}

async fn register_as(
    addr: &str,
    service: &str,
    id: &str,
    body: Value,
    token: Option<&str>,
) -> Result<(u16, Value)> {
    let mut request = http()
        .put(format!(
            "http://{addr}/v1/services/{service}/instances/{id}"
        ))
        .json(&body);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await?;
    let status = response.status().as_u16();
    Ok((status, response.json().await.unwrap_or(Value::Null)))
}

/// The instance `id` of `service` as node `addr` has it (any status).
async fn instance(addr: &str, service: &str, id: &str) -> Result<Value> {
    let body: Value = http()
        .get(format!(
            "http://{addr}/v1/services/{service}?status=any&stale"
        ))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    body["instances"]
        .as_array()
        .and_then(|all| all.iter().find(|i| i["id"] == id).cloned())
        .with_context(|| format!("{service}/{id} is not registered: {body}"))
}

/// Waits until the instance's status is `status` and returns it; fails after `within`.
async fn wait_status(
    addr: &str,
    service: &str,
    id: &str,
    status: &str,
    within: Duration,
) -> Result<Value> {
    wait_until(within, &format!("{service}/{id} {status}"), || async {
        let i = instance(addr, service, id).await?;
        ensure!(
            i["status"] == status,
            "status {} checks {}",
            i["status"],
            i["checks"]
        );
        Ok(i)
    })
    .await
}

/// Waits until the cluster's probers are `want` (node ids), as node `id` applied them.
async fn wait_probers(cluster: &Cluster, id: u64, want: &[u64]) -> Result<()> {
    wait_until(Duration::from_secs(10), "the probers", || async {
        let status = cluster.status(id).await?;
        ensure!(status.probers == want, "probers {:?}", status.probers);
        Ok(())
    })
    .await
}

fn check_body(addr: &str, checks: Value) -> Value {
    json!({"address": addr, "port": 8080, "checks": checks})
}

// ---------------------------------------------------------------------------------------
// Tests.
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn an_http_check_passes_turns_critical_after_n_failures_and_recovers_after_m() {
    let cluster = Cluster::start_single(&[]).await.expect("cluster");
    must_pass(async {
        wait_probers(&cluster, 1, &[1]).await?;
        let target = HttpTarget::start().await?;
        let addr = cluster.addr(1);
        let checks = json!([{"name": "http", "http": target.url(), "interval": "1s",
            "timeout": "500ms", "failures_before_critical": 3, "successes_before_passing": 2}]);
        let (status, body) = register(&addr, "web", "1", check_body("127.0.0.1", checks)).await?;
        ensure!(status == 200, "register: {status} {body}");
        ensure!(
            body.get("lease").is_none(),
            "a check-only instance has no lease: {body}"
        );
        ensure!(
            body["checks"][0]["status"] == "critical",
            "not probed yet: {body}"
        );
        // A fresh check is first probed within a second.
        let i = wait_status(&addr, "web", "1", "passing", Duration::from_secs(1) + SLACK).await?;
        let check = &i["checks"][0];
        ensure!(
            check["status"] == "passing" && check["owner"] == 1,
            "{check}"
        );
        ensure!(
            check["output"].as_str().is_some_and(|o| o.contains("200")),
            "{check}"
        );

        // Three failures at 1 s apart: critical within 3 intervals (plus the timeout
        // margin and slack), not after one.
        target.set(503);
        let failed_at = Instant::now();
        wait_until(
            Duration::from_millis(1_500),
            "still passing after one failure",
            || async {
                let i = instance(&addr, "web", "1").await?;
                ensure!(i["status"] == "passing", "{i}");
                ensure!(target.requests.load(Ordering::SeqCst) >= 1);
                Ok(())
            },
        )
        .await?;
        let i = wait_status(
            &addr,
            "web",
            "1",
            "critical",
            Duration::from_secs(3) + SLACK,
        )
        .await?;
        let took = failed_at.elapsed();
        ensure!(
            took >= Duration::from_millis(1_900),
            "critical after {took:?}: fewer than 3 failures?"
        );
        ensure!(
            i["checks"][0]["output"]
                .as_str()
                .is_some_and(|o| o.contains("503")),
            "{i}"
        );
        ensure!(i["critical_since_ms"].is_u64(), "{i}");
        // Out of healthy discovery.
        let healthy: Value = http()
            .get(format!("http://{addr}/v1/services/web"))
            .send()
            .await?
            .json()
            .await?;
        ensure!(
            healthy["instances"].as_array().is_some_and(Vec::is_empty),
            "{healthy}"
        );

        // Two successes bring it back.
        target.set(200);
        let recovered_at = Instant::now();
        wait_status(&addr, "web", "1", "passing", Duration::from_secs(2) + SLACK).await?;
        ensure!(
            recovered_at.elapsed() >= Duration::from_millis(900),
            "passing after one success"
        );
        Ok(())
    })
    .await;
}

#[tokio::test]
async fn a_check_only_instance_stays_registered_without_heartbeats() {
    let cluster = Cluster::start_single(&[]).await.expect("cluster");
    must_pass(async {
        wait_probers(&cluster, 1, &[1]).await?;
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let addr = cluster.addr(1);
        let checks = json!([{"name": "tcp", "tcp": format!("127.0.0.1:{port}"), "interval": "1s"}]);
        let (status, body) = register(&addr, "db", "1", check_body("127.0.0.1", checks)).await?;
        ensure!(status == 200, "{status} {body}");
        ensure!(
            body["deregister_after"] == "3days",
            "the long default: {body}"
        );
        wait_status(&addr, "db", "1", "passing", Duration::from_secs(1) + SLACK).await?;
        // Far past any TTL the registry would give (the shortest is 1 s), no heartbeat
        // has been sent and it is still passing.
        tokio::time::sleep(Duration::from_secs(4)).await;
        let i = instance(&addr, "db", "1").await?;
        ensure!(
            i["status"] == "passing" && i.get("lease").is_none() && i.get("ttl").is_none(),
            "{i}"
        );
        // A heartbeat has nothing to renew.
        let response = http()
            .put(format!(
                "http://{addr}/v1/services/db/instances/1/heartbeat"
            ))
            .send()
            .await?;
        let code = response.status().as_u16();
        let body: Value = response.json().await?;
        ensure!(
            code == 409 && body["error"]["code"] == "instance_unleased",
            "{code} {body}"
        );
        // Closing the port turns it critical (the default threshold is 3 failures).
        drop(listener);
        let i = wait_status(&addr, "db", "1", "critical", Duration::from_secs(3) + SLACK).await?;
        ensure!(
            i["checks"][0]["output"]
                .as_str()
                .is_some_and(|o| !o.is_empty()),
            "{i}"
        );
        // Deregistering removes it.
        let response = http()
            .delete(format!("http://{addr}/v1/services/db/instances/1"))
            .send()
            .await?;
        ensure!(
            response.status() == 200,
            "deregister: {}",
            response.status()
        );
        Ok(())
    })
    .await;
}

#[tokio::test]
async fn grpc_checks_follow_the_health_protocol_and_timeouts_are_honoured() {
    let cluster = Cluster::start_single(&[]).await.expect("cluster");
    must_pass(async {
        wait_probers(&cluster, 1, &[1]).await?;
        let grpc = GrpcTarget::start().await?;
        grpc.set("shop.Cart", true).await;
        let slow = HttpTarget::start().await?;
        let addr = cluster.addr(1);
        let checks = json!([
            {"name": "grpc", "grpc": grpc.addr.to_string(), "grpc_service": "shop.Cart",
             "interval": "1s", "failures_before_critical": 1},
        ]);
        let (status, body) = register(&addr, "cart", "1", check_body("127.0.0.1", checks)).await?;
        ensure!(status == 200, "{status} {body}");
        wait_status(
            &addr,
            "cart",
            "1",
            "passing",
            Duration::from_secs(1) + SLACK,
        )
        .await?;
        grpc.set("shop.Cart", false).await;
        let i = wait_status(
            &addr,
            "cart",
            "1",
            "critical",
            Duration::from_secs(1) + SLACK,
        )
        .await?;
        ensure!(
            i["checks"][0]["output"]
                .as_str()
                .is_some_and(|o| o.contains("NOT_SERVING")),
            "{i}"
        );
        grpc.set("shop.Cart", true).await;
        wait_status(
            &addr,
            "cart",
            "1",
            "passing",
            Duration::from_secs(1) + SLACK,
        )
        .await?;

        // An answer slower than the timeout is a failure, though it is a 200.
        slow.delay_ms.store(1_500, Ordering::SeqCst);
        let checks = json!([{"name": "http", "http": slow.url(), "interval": "1s",
            "timeout": "200ms", "failures_before_critical": 1}]);
        let (status, body) = register(&addr, "slow", "1", check_body("127.0.0.1", checks)).await?;
        ensure!(status == 200, "{status} {body}");
        tokio::time::sleep(Duration::from_secs(3)).await;
        let i = instance(&addr, "slow", "1").await?;
        ensure!(
            i["status"] == "critical",
            "a 1.5 s answer against a 200 ms timeout: {i}"
        );
        ensure!(
            i["checks"][0]["output"]
                .as_str()
                .is_some_and(|o| o.contains("timed out")),
            "{i}"
        );
        slow.delay_ms.store(0, Ordering::SeqCst);
        wait_status(
            &addr,
            "slow",
            "1",
            "passing",
            Duration::from_secs(1) + SLACK,
        )
        .await?;
        Ok(())
    })
    .await;
}

#[tokio::test]
async fn when_the_owner_is_killed_a_survivor_takes_its_checks_over() {
    let cluster = Cluster::start(3, &[]).await.expect("cluster");
    must_pass(async {
        wait_probers(&cluster, 1, &[1, 2, 3]).await?;
        let target = HttpTarget::start().await?;
        let addr = cluster.addr(1);
        // Enough instances that every server owns some.
        for n in 0..12 {
            let checks = json!([{"name": "http", "http": target.url(), "interval": "1s",
                "failures_before_critical": 1}]);
            let (status, body) = register(
                &addr,
                "api",
                &n.to_string(),
                check_body("127.0.0.1", checks),
            )
            .await?;
            ensure!(status == 200, "{status} {body}");
        }
        let owners = wait_until(Duration::from_secs(5) + SLACK, "all passing", || async {
            let mut owners = Vec::new();
            for n in 0..12 {
                let i = instance(&addr, "api", &n.to_string()).await?;
                ensure!(i["status"] == "passing", "{i}");
                owners.push(i["checks"][0]["owner"].as_u64().context("an owner")?);
            }
            Ok(owners)
        })
        .await?;
        let leader = cluster.leader_id().await?;
        // Kill a server that owns checks, not the leader (whose loss is an election
        // first); its checks must move.
        let Some(victim) = owners.iter().copied().find(|&o| o != leader) else {
            bail!("every check is owned by the leader {leader}: {owners:?}");
        };
        let orphans: Vec<usize> = (0..12).filter(|&n| owners[n] == victim).collect();
        cluster.kill(victim).await?;
        let killed_at = Instant::now();
        let reader = cluster.addr(leader);
        // The leader drops it from the probers after 3 s without an answer (and looks
        // once a second); the survivors then take the checks over.
        wait_until(
            Duration::from_secs(4) + SLACK,
            "the orphans owned by survivors",
            || async {
                for &n in &orphans {
                    let i = instance(&reader, "api", &n.to_string()).await?;
                    let owner = i["checks"][0]["owner"].as_u64().unwrap_or(0);
                    ensure!(owner != victim && owner != 0, "api/{n} owned by {owner}");
                }
                Ok(())
            },
        )
        .await?;
        let moved_after = killed_at.elapsed();
        // And they are probed: a failing target turns every orphan critical within an
        // interval (threshold 1) of the takeover.
        target.set(500);
        for &n in &orphans {
            wait_status(
                &reader,
                "api",
                &n.to_string(),
                "critical",
                Duration::from_secs(2) + SLACK,
            )
            .await?;
        }
        eprintln!("checks of server {victim} moved {moved_after:?} after its SIGKILL");
        Ok(())
    })
    .await;
}

#[tokio::test]
async fn a_critical_transition_needs_a_second_servers_confirmation() {
    let cluster = Cluster::start(3, &[]).await.expect("cluster");
    must_pass(async {
        wait_probers(&cluster, 1, &[1, 2, 3]).await?;
        let target = HttpTarget::start().await?;
        let addr = cluster.addr(1);
        let checks = json!([{"name": "http", "http": target.url(), "interval": "1s",
            "failures_before_critical": 1}]);
        let (status, body) = register(&addr, "pay", "1", check_body("127.0.0.1", checks)).await?;
        ensure!(status == 200, "{status} {body}");
        let i = wait_status(&addr, "pay", "1", "passing", Duration::from_secs(5) + SLACK).await?;
        let owner = i["checks"][0]["owner"].as_u64().context("owner")?;
        // The owner's next probe fails, the second opinion passes: as if the owner alone
        // had lost its way to the target. No transition.
        let before = target.requests.load(Ordering::SeqCst);
        target.fail_next.store(1, Ordering::SeqCst);
        wait_until(
            Duration::from_secs(5),
            "the owner's failed probe and a second probe",
            || async {
                let seen = target.requests.load(Ordering::SeqCst);
                ensure!(
                    seen >= before + 2 && target.fail_next.load(Ordering::SeqCst) == 0,
                    "{seen}"
                );
                Ok(())
            },
        )
        .await?;
        let unconfirmed = wait_until(
            Duration::from_secs(5),
            "the owner's unconfirmed count",
            || async {
                let text = http()
                    .get(format!("http://{}/metrics", cluster.addr(owner)))
                    .send()
                    .await?
                    .text()
                    .await?;
                let n = text
                    .lines()
                    .find_map(|l| l.strip_prefix("registry_check_unconfirmed_total "))
                    .and_then(|v| v.trim().parse::<f64>().ok())
                    .unwrap_or(0.0);
                ensure!(n >= 1.0, "registry_check_unconfirmed_total {n}");
                Ok(n)
            },
        )
        .await?;
        let i = instance(&addr, "pay", "1").await?;
        ensure!(
            i["status"] == "passing",
            "one server's failure alone made it {i} ({unconfirmed})"
        );
        // A failure both see is confirmed.
        target.set(500);
        wait_status(
            &addr,
            "pay",
            "1",
            "critical",
            Duration::from_secs(1) + SLACK,
        )
        .await?;
        Ok(())
    })
    .await;
}

#[tokio::test]
async fn consul_agent_http_and_tcp_checks_become_active_checks() {
    let cluster = Cluster::start_single(&[]).await.expect("cluster");
    must_pass(async {
        wait_probers(&cluster, 1, &[1]).await?;
        let target = HttpTarget::start().await?;
        let addr = cluster.addr(1);
        let registration = json!({
            "Name": "legacy", "ID": "legacy-1", "Address": "127.0.0.1", "Port": 9000,
            "Check": {"CheckID": "legacy http", "HTTP": target.url(), "Interval": "1s"},
        });
        let response = http()
            .put(format!("http://{addr}/v1/agent/service/register"))
            .json(&registration)
            .send()
            .await?;
        ensure!(response.status() == 200, "register: {}", response.status());
        let i = wait_status(
            &addr,
            "legacy",
            "legacy-1",
            "passing",
            Duration::from_secs(1) + SLACK,
        )
        .await?;
        ensure!(
            i.get("lease").is_none() && i["checks"][0]["name"] == "legacy-http",
            "{i}"
        );
        let health: Value = http()
            .get(format!("http://{addr}/v1/health/service/legacy?passing"))
            .send()
            .await?
            .json()
            .await?;
        let checks = &health[0]["Checks"];
        ensure!(
            checks[0]["Type"] == "http" && checks[0]["Status"] == "passing",
            "{health}"
        );
        // Consul's default: critical at the first failure.
        target.set(500);
        wait_status(
            &addr,
            "legacy",
            "legacy-1",
            "critical",
            Duration::from_secs(1) + SLACK,
        )
        .await?;
        Ok(())
    })
    .await;
}

#[tokio::test]
async fn a_check_on_a_foreign_address_needs_cluster_write() {
    const BOOT: &str = "checks-bootstrap-secret-0123456789";
    let cluster = Cluster::start_single(&["--acl", "--acl-bootstrap-token", BOOT])
        .await
        .expect("cluster");
    must_pass(async {
        let addr = cluster.addr(1);
        let client = http();
        let token: Value = wait_until(Duration::from_secs(10), "a service:write token", || async {
            let response = client
                .post(format!("http://{addr}/v1/acl/tokens"))
                .bearer_auth(BOOT)
                .json(&json!({"description": "web", "rules": [
                    {"resource": "service", "prefix": "web", "access": "write"}]}))
                .send()
                .await?;
            ensure!(response.status() == 200, "{}", response.status());
            Ok(response.json().await?)
        })
        .await?;
        let secret = token["secret"].as_str().context("secret")?;
        // The instance is 127.0.0.1; its check aims at 127.0.0.2.
        let foreign = json!([{"name": "http", "http": "http://127.0.0.2:9/", "interval": "10s"}]);
        let (status, body) = register_as(
            &addr,
            "web",
            "1",
            check_body("127.0.0.1", foreign.clone()),
            Some(secret),
        )
        .await?;
        ensure!(status == 403, "{status} {body}");
        let message = body["error"]["message"].as_str().unwrap_or_default();
        ensure!(
            message.contains("127.0.0.2") && message.contains("cluster:write"),
            "{message}"
        );
        let tcp = json!([{"name": "tcp", "tcp": "10.1.2.3:5432"}]);
        let (status, _) = register_as(
            &addr,
            "web",
            "2",
            check_body("127.0.0.1", tcp),
            Some(secret),
        )
        .await?;
        ensure!(status == 403, "a TCP check elsewhere: {status}");
        // Its own address, written another way, is fine.
        let own = json!([{"name": "http", "http": "http://127.0.0.1:9/", "interval": "10s"}]);
        let (status, body) = register_as(
            &addr,
            "web",
            "3",
            check_body("127.0.0.1", own),
            Some(secret),
        )
        .await?;
        ensure!(status == 200, "own address: {status} {body}");
        // A management token may aim anywhere.
        let (status, body) = register_as(
            &addr,
            "web",
            "4",
            check_body("127.0.0.1", foreign),
            Some(BOOT),
        )
        .await?;
        ensure!(status == 200, "management: {status} {body}");
        Ok(())
    })
    .await;
}

#[tokio::test]
async fn bad_check_definitions_are_refused_with_400() {
    let cluster = Cluster::start_single(&[]).await.expect("cluster");
    must_pass(async {
        wait_probers(&cluster, 1, &[1]).await?;
        let addr = cluster.addr(1);
        let cases = [
            (json!([{"name": "x"}]), "give one of"),
            (
                json!([{"name": "x", "tcp": "127.0.0.1:1", "grpc": "127.0.0.1:2"}]),
                "only one",
            ),
            (
                json!([{"name": "x", "tcp": "127.0.0.1:1", "interval": "500ms"}]),
                "interval",
            ),
            (
                json!([{"name": "x", "tcp": "127.0.0.1:1", "timeout": "2m"}]),
                "timeout",
            ),
            (json!([{"name": "x", "tcp": "127.0.0.1"}]), "host:port"),
            (
                json!([{"name": "x", "tcp": "127.0.0.1:1", "method": "GET"}]),
                "belong to `http`",
            ),
            (
                json!([{"name": "x", "http": "ftp://127.0.0.1/"}]),
                "http://",
            ),
            (
                json!([{"name": "x", "http": "http://u:p@127.0.0.1/"}]),
                "user name",
            ),
            (
                json!([{"name": "x", "http": "http://127.0.0.1/", "method": "TRACE"}]),
                "method",
            ),
            (
                json!([{"name": "x", "http": "http://127.0.0.1/", "expect_status": "2x"}]),
                "expect_status",
            ),
            (
                json!([{"name": "x", "tcp": "127.0.0.1:1", "failures_before_critical": 0}]),
                "failures_before_critical",
            ),
            (
                json!([{"name": "a", "tcp": "127.0.0.1:1"}, {"name": "a", "tcp": "127.0.0.1:2"}]),
                "unique",
            ),
            (json!([{"name": "bad name", "tcp": "127.0.0.1:1"}]), "name"),
            (
                json!([{"name": "x", "tcp": "127.0.0.1:1", "bogus": 1}]),
                "bogus",
            ),
        ];
        for (checks, says) in cases {
            let (status, body) =
                register(&addr, "svc", "1", check_body("127.0.0.1", checks.clone())).await?;
            let message = body["error"]["message"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            ensure!(status == 400, "{checks}: {status} {body}");
            ensure!(
                message.contains(says),
                "{checks}: {message:?} should say {says:?}"
            );
        }
        // Nine checks are one too many.
        let many: Vec<Value> = (0..9)
            .map(|n| json!({"name": format!("c{n}"), "tcp": "127.0.0.1:1"}))
            .collect();
        let (status, body) = register(
            &addr,
            "svc",
            "1",
            check_body("127.0.0.1", Value::Array(many)),
        )
        .await?;
        ensure!(status == 400, "{status} {body}");
        Ok(())
    })
    .await;
}

#[tokio::test]
async fn a_server_with_no_probes_owns_no_checks() {
    let cluster = Cluster::start_single(&["--no-probes"])
        .await
        .expect("cluster");
    must_pass(async {
        let target = HttpTarget::start().await?;
        let addr = cluster.addr(1);
        let checks = json!([{"name": "http", "http": target.url(), "interval": "1s"}]);
        let (status, body) = register(&addr, "quiet", "1", check_body("127.0.0.1", checks)).await?;
        ensure!(status == 200, "{status} {body}");
        // Well past the first probe's second and the leader's first look at the probers.
        tokio::time::sleep(Duration::from_secs(4)).await;
        let i = instance(&addr, "quiet", "1").await?;
        ensure!(
            i["checks"][0]["output"] == "not probed yet" && i["checks"][0].get("owner").is_none(),
            "{i}"
        );
        ensure!(
            target.requests.load(Ordering::SeqCst) == 0,
            "the target was probed"
        );
        Ok(())
    })
    .await;
}
