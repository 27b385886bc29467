//! Debian's Prometheus (2.42) finds its targets through `GET /v1/sd/prometheus`
//! (`http_sd_configs`) and scrapes them: here the one target is the registry itself, so
//! Prometheus also scrapes `/metrics` and parses it. Everything on 127.0.0.1.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use api_spec::RegisterRequest;
use serde_json::Value;
use tests::{free_port, must_pass, wait_until, Cluster};

/// A Prometheus process, killed when dropped.
struct Prometheus {
    child: Child,
    addr: String,
    _dir: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    fn start(sd_url: &str) -> Result<Prometheus> {
        let dir = tempfile::tempdir()?;
        let config = format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n\
             scrape_configs:\n  - job_name: registry\n    metrics_path: /metrics\n\
             \x20   http_sd_configs:\n      - url: {sd_url}\n        refresh_interval: 1s\n"
        );
        let config_path = dir.path().join("prometheus.yml");
        std::fs::write(&config_path, config)?;
        let addr = format!("127.0.0.1:{}", free_port()?);
        let log = std::fs::File::create(dir.path().join("prometheus.log"))?;
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .context("start prometheus (scripts/install-deps.sh installs Debian's)")?;
        Ok(Prometheus {
            child,
            addr,
            _dir: dir,
        })
    }

    async fn targets(&self) -> Result<Vec<Value>> {
        let url = format!("http://{}/api/v1/targets", self.addr);
        let body: Value = reqwest::get(url).await?.json().await?;
        Ok(body["data"]["activeTargets"]
            .as_array()
            .cloned()
            .unwrap_or_default())
    }
}

#[tokio::test]
async fn prometheus_discovers_and_scrapes_registered_instances() {
    let cluster = Cluster::start_single(&[]).await.expect("start a node");
    must_pass(async {
        let addr = cluster.addr(1);
        let port: u16 = addr.rsplit_once(':').context("a port")?.1.parse()?;
        let api = cluster.client_for(1);
        let registration: RegisterRequest = serde_json::from_value(serde_json::json!({
            "address": "127.0.0.1", "port": port, "ttl": "1m",
            "zone": "eu-1a", "tags": ["metrics"], "meta": {"build": "41"}
        }))?;
        api.register("registry", "self", &registration).await?;
        let prometheus = Prometheus::start(&format!("http://{addr}/v1/sd/prometheus?tag=metrics"))?;
        let target = wait_until(
            Duration::from_secs(30),
            "Prometheus to scrape the discovered target",
            || async {
                let targets = prometheus.targets().await?;
                let target = targets
                    .iter()
                    .find(|t| t["discoveredLabels"]["__meta_registry_instance"] == "self")
                    .cloned()
                    .with_context(|| format!("not discovered yet: {targets:?}"))?;
                ensure!(
                    target["health"] == "up",
                    "discovered, not scraped yet: {target}"
                );
                Ok(target)
            },
        )
        .await?;
        let labels = &target["discoveredLabels"];
        ensure!(
            labels["__address__"] == format!("127.0.0.1:{port}"),
            "{labels}"
        );
        ensure!(labels["__meta_registry_service"] == "registry", "{labels}");
        ensure!(labels["__meta_registry_zone"] == "eu-1a", "{labels}");
        ensure!(labels["__meta_registry_tags"] == ",metrics,", "{labels}");
        ensure!(labels["__meta_registry_meta_build"] == "41", "{labels}");
        // An instance without the tag is not a target; a deregistered one goes away.
        api.deregister("registry", "self").await?;
        wait_until(Duration::from_secs(30), "the target to go away", || async {
            let targets = prometheus.targets().await?;
            ensure!(targets.is_empty(), "still {targets:?}");
            Ok(())
        })
        .await?;
        Ok(())
    })
    .await;
}

#[tokio::test]
async fn the_target_groups_follow_the_filters() {
    let cluster = Cluster::start_single(&[]).await.expect("start a node");
    must_pass(async {
        let api = cluster.client_for(1);
        for (id, zone, tags) in [
            ("a", "eu", vec!["x"]),
            ("b", "us", vec!["x", "y"]),
            ("c", "eu", vec![]),
        ] {
            let registration: RegisterRequest = serde_json::from_value(serde_json::json!({
                "address": "127.0.0.1", "port": 9000, "ttl": "1m", "zone": zone, "tags": tags
            }))?;
            api.register("web", id, &registration).await?;
        }
        let ipv6: RegisterRequest = serde_json::from_value(serde_json::json!({
            "address": "::1", "port": 9100, "ttl": "1m"
        }))?;
        api.register("db", "d", &ipv6).await?;
        let groups = |query: &str| {
            let url = format!("http://{}/v1/sd/prometheus{query}", cluster.addr(1));
            async move {
                let response = reqwest::get(url).await?;
                ensure!(response.status() == 200, "{}", response.status());
                let body: Vec<api_spec::PrometheusTargetGroup> = response.json().await?;
                let mut ids: Vec<String> = body
                    .iter()
                    .map(|g| g.labels["__meta_registry_instance"].clone())
                    .collect();
                ids.sort();
                Ok::<_, anyhow::Error>((ids, body))
            }
        };
        ensure!(groups("").await?.0 == ["a", "b", "c", "d"]);
        ensure!(groups("?service=web&zone=eu").await?.0 == ["a", "c"]);
        ensure!(groups("?tag=x&tag=y").await?.0 == ["b"]);
        let (_, db) = groups("?service=db").await?;
        ensure!(db[0].targets == ["[::1]:9100"], "{db:?}");
        let bad = reqwest::get(format!(
            "http://{}/v1/sd/prometheus?colour=red",
            cluster.addr(1)
        ))
        .await?;
        ensure!(bad.status() == 400, "unknown parameter: {}", bad.status());
        Ok(())
    })
    .await;
}
