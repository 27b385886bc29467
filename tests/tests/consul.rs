//! The Consul-compatible read API: Debian's VictoriaMetrics finds and scrapes targets
//! through `consul_sd_configs` (its Consul discovery: `/v1/agent/self`, blocking
//! `/v1/catalog/services` and `/v1/health/service/{name}`), and the answers keep
//! Consul's shapes, headers, blocking and filters. Everything on 127.0.0.1.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use api_spec::RegisterRequest;
use serde_json::Value;
use tests::{free_port, must_pass, wait_until, Cluster};

/// A VictoriaMetrics process, killed when dropped.
struct Victoria {
    child: Child,
    addr: String,
    _dir: tempfile::TempDir,
}

impl Drop for Victoria {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn registration(port: u16, ttl: &str, tags: &[&str], meta: Value) -> Result<RegisterRequest> {
    Ok(serde_json::from_value(serde_json::json!({
        "address": "127.0.0.1", "port": port, "ttl": ttl, "tags": tags, "meta": meta,
        "zone": "eu-1a", "weight": 7, "deregister_after": "5m"
    }))?)
}

#[tokio::test]
async fn victoria_metrics_discovers_targets_through_consul_sd() {
    let cluster = Cluster::start_single(&[]).await.expect("start a node");
    must_pass(async {
        let addr = cluster.addr(1);
        let port: u16 = addr.rsplit_once(':').context("a port")?.1.parse()?;
        // The target is the registry itself, so the scrape succeeds.
        let api = cluster.client_for(1);
        api.register("registry", "self", &registration(port, "1m", &["metrics"], serde_json::json!({"build": "41"}))?)
            .await?;
        let dir = tempfile::tempdir()?;
        let config = format!(
            "scrape_configs:\n  - job_name: consul\n    scrape_interval: 1s\n    consul_sd_configs:\n      - server: {addr}\n        services: [registry]\n"
        );
        let config_path = dir.path().join("scrape.yml");
        std::fs::write(&config_path, config)?;
        let vm_addr = format!("127.0.0.1:{}", free_port()?);
        let log = std::fs::File::create(dir.path().join("vm.log"))?;
        let child = Command::new("victoria-metrics")
            .arg(format!("-storageDataPath={}", dir.path().join("data").display()))
            .arg(format!("-httpListenAddr={vm_addr}"))
            .arg(format!("-promscrape.config={}", config_path.display()))
            .arg("-promscrape.consulSDCheckInterval=1s")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .context("start victoria-metrics (scripts/install-deps.sh installs Debian's)")?;
        let vm = Victoria {
            child,
            addr: vm_addr,
            _dir: dir,
        };
        let target = wait_until(Duration::from_secs(30), "VictoriaMetrics to scrape the target", || async {
            let body: Value = reqwest::get(format!("http://{}/api/v1/targets", vm.addr)).await?.json().await?;
            let targets = body["data"]["activeTargets"].as_array().cloned().unwrap_or_default();
            let target = targets
                .iter()
                .find(|t| t["discoveredLabels"]["__meta_consul_service"] == "registry")
                .cloned()
                .with_context(|| format!("not discovered yet: {body}"))?;
            ensure!(target["health"] == "up", "discovered, not scraped yet: {target}");
            Ok(target)
        })
        .await?;
        let labels = &target["discoveredLabels"];
        ensure!(labels["__address__"] == format!("127.0.0.1:{port}"), "{labels}");
        ensure!(labels["__meta_consul_service_id"] == "self", "{labels}");
        ensure!(labels["__meta_consul_tags"] == ",metrics,", "{labels}");
        ensure!(labels["__meta_consul_service_metadata_build"] == "41", "{labels}");
        ensure!(labels["__meta_consul_node"] == "self", "{labels}");
        ensure!(labels["__meta_consul_metadata_zone"] == "eu-1a", "{labels}");
        ensure!(labels["__meta_consul_dc"] == "dc1", "{labels}");
        Ok(())
    })
    .await;
}

async fn get(url: &str) -> Result<(u64, Value)> {
    let response = reqwest::get(url).await?;
    ensure!(response.status() == 200, "{url}: {}", response.status());
    let index = response
        .headers()
        .get("x-consul-index")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .context("no X-Consul-Index")?;
    ensure!(index > 0, "X-Consul-Index 0");
    ensure!(response.headers().get("x-consul-knownleader").is_some());
    Ok((index, response.json().await?))
}

#[tokio::test]
async fn consul_reads_keep_consul_s_shapes_blocking_and_filters() {
    let cluster = Cluster::start_single(&[]).await.expect("start a node");
    must_pass(async {
        let base = format!("http://{}", cluster.addr(1));
        let api = cluster.client_for(1);
        api.register("web", "w1", &registration(8080, "1m", &["v2", "canary"], serde_json::json!({"build": "41"}))?)
            .await?;
        api.register("web", "w2", &registration(8081, "1s", &["v2"], serde_json::json!({"build": "40"}))?)
            .await?;
        let (_, agent) = get(&format!("{base}/v1/agent/self")).await?;
        ensure!(agent["Config"]["Datacenter"] == "dc1", "{agent}");
        let (_, leader) = get(&format!("{base}/v1/status/leader")).await?;
        ensure!(leader == cluster.addr(1).as_str(), "{leader}");
        let (_, services) = get(&format!("{base}/v1/catalog/services?dc=dc1&stale")).await?;
        ensure!(services["web"] == serde_json::json!(["v2", "canary"]), "{services}");

        // w2 stops heartbeating: critical in health without `passing`, gone with it.
        wait_until(Duration::from_secs(10), "w2 critical", || async {
            let (_, all) = get(&format!("{base}/v1/health/service/web")).await?;
            let statuses: Vec<&Value> = all.as_array().context("an array")?.iter()
                .map(|e| &e["Checks"][0]["Status"]).collect();
            ensure!(statuses.contains(&&Value::from("critical")), "{all}");
            Ok(())
        })
        .await?;
        let (_, passing) = get(&format!("{base}/v1/health/service/web?passing")).await?;
        let passing = passing.as_array().context("an array")?.clone();
        ensure!(passing.len() == 1 && passing[0]["Service"]["ID"] == "w1", "{passing:?}");
        let entry = &passing[0];
        ensure!(entry["Service"]["Port"] == 8080 && entry["Service"]["Weights"]["Passing"] == 7, "{entry}");
        ensure!(entry["Node"]["Meta"]["zone"] == "eu-1a" && entry["Checks"][0]["CheckID"] == "service:w1", "{entry}");
        let (_, filtered) = get(&format!(
            "{base}/v1/health/service/web?filter={}",
            "Service.Meta.build%20%3D%3D%20%2240%22"
        ))
        .await?;
        ensure!(filtered.as_array().map(Vec::len) == Some(1) && filtered[0]["Service"]["ID"] == "w2", "{filtered}");
        let (_, tagged) = get(&format!("{base}/v1/catalog/service/web?tag=canary")).await?;
        ensure!(tagged.as_array().map(Vec::len) == Some(1) && tagged[0]["ServicePort"] == 8080, "{tagged}");
        let (_, critical) = get(&format!("{base}/v1/health/state/critical")).await?;
        ensure!(critical.as_array().map(Vec::len) == Some(1) && critical[0]["ServiceID"] == "w2", "{critical}");

        // Blocking: a query at the current index waits until the service changes.
        let (index, _) = get(&format!("{base}/v1/health/service/web")).await?;
        let started = Instant::now();
        let blocked = tokio::spawn({
            let url = format!("{base}/v1/health/service/web?index={index}&wait=20000ms");
            async move { get(&url).await }
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        ensure!(!blocked.is_finished(), "the blocking query answered at once");
        api.register("web", "w3", &registration(8082, "1m", &[], serde_json::json!({}))?).await?;
        let (after, body) = blocked.await??;
        ensure!(after > index, "X-Consul-Index {after} not above {index}");
        ensure!(started.elapsed() < Duration::from_secs(10), "took {:?}", started.elapsed());
        ensure!(body.as_array().map(Vec::len) == Some(3), "{body}");
        // What is not implemented (KV, sessions, Connect) is a JSON 404, never a crash.
        for (method, path) in [("GET", "/v1/kv/config"), ("PUT", "/v1/session/create"), ("GET", "/v1/connect/ca/roots")] {
            let response = reqwest::Client::new()
                .request(method.parse()?, format!("{base}{path}"))
                .send()
                .await?;
            ensure!(response.status() == 404, "{method} {path}: {}", response.status());
            let body: Value = response.json().await?;
            ensure!(body["error"]["code"] == "not_found", "{method} {path}: {body}");
        }
        // Unknown parameters are refused; Consul's own are accepted.
        let odd = reqwest::get(format!("{base}/v1/catalog/services?colour=red")).await?;
        ensure!(odd.status() == 400, "{}", odd.status());
        let (_, _) = get(&format!("{base}/v1/catalog/services?ns=default&partition=default&cached&near=_agent&node-meta=a:b")).await?;
        Ok(())
    })
    .await;
}

const BOOT: &str = "bootstrap-secret-for-consul-tests";

#[tokio::test]
async fn consul_tokens_come_as_header_query_or_bearer() {
    let cluster = Cluster::start_single(&["--acl", "--acl-bootstrap-token", BOOT])
        .await
        .expect("start a node with ACLs");
    must_pass(async {
        let base = format!("http://{}/v1/catalog/services", cluster.addr(1));
        let http = reqwest::Client::new();
        let status = http.get(&base).send().await?.status();
        ensure!(status == 401, "without a token: {status}");
        wait_until(Duration::from_secs(10), "the bootstrap token", || async {
            let status = http
                .get(&base)
                .header("X-Consul-Token", BOOT)
                .send()
                .await?
                .status();
            ensure!(status == 200, "X-Consul-Token: {status}");
            Ok(())
        })
        .await?;
        let status = http
            .get(format!("{base}?token={BOOT}"))
            .send()
            .await?
            .status();
        ensure!(status == 200, "?token=: {status}");
        let status = http.get(&base).bearer_auth(BOOT).send().await?.status();
        ensure!(status == 200, "Bearer: {status}");
        let status = http
            .get(format!("{base}?token=wrong-secret-of-some-length"))
            .send()
            .await?
            .status();
        ensure!(status == 401, "a wrong ?token=: {status}");
        Ok(())
    })
    .await;
}
