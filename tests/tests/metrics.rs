//! `GET /metrics` on real servers: the exposition parses as Prometheus text, carries the
//! families an operator needs, and follows what the cluster does; with ACLs it needs
//! `cluster:read` unless `--metrics-public`. Also the JSON log format.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use api_spec::RegisterRequest;
use registry_client::LockOptions;
use tests::{must_pass, wait_until, Cluster};

/// One sample: name, labels, value.
type Sample = (String, BTreeMap<String, String>, f64);

/// Parses the text exposition strictly: `# HELP`/`# TYPE` comments, and samples
/// `name{label="value",...} number`. Any other line is an error.
fn parse(text: &str) -> Result<(Vec<Sample>, BTreeMap<String, String>)> {
    let mut samples = Vec::new();
    let mut types = BTreeMap::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').context("a TYPE line without a type")?;
            ensure!(
                ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind),
                "unknown type in {line:?}"
            );
            types.insert(name.to_owned(), kind.to_owned());
            continue;
        }
        if line.starts_with("# HELP ") {
            continue;
        }
        ensure!(!line.starts_with('#'), "unexpected comment {line:?}");
        let (series, value) = line.rsplit_once(' ').context("a sample without a value")?;
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            "NaN" => f64::NAN,
            v => v.parse().with_context(|| format!("value of {line:?}"))?,
        };
        let (name, labels) = match series.split_once('{') {
            None => (series, BTreeMap::new()),
            Some((name, rest)) => {
                let body = rest.strip_suffix('}').context("unclosed labels")?;
                let mut labels = BTreeMap::new();
                for pair in split_labels(body)? {
                    let (k, v) = pair.split_once('=').context("a label without =")?;
                    let v = v
                        .strip_prefix('"')
                        .and_then(|v| v.strip_suffix('"'))
                        .context("an unquoted label value")?;
                    labels.insert(k.to_owned(), v.to_owned());
                }
                (name, labels)
            }
        };
        ensure!(
            name.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "bad metric name {name:?}"
        );
        samples.push((name.to_owned(), labels, value));
    }
    Ok((samples, types))
}

/// Splits `a="x",b="y,z"` at the commas between labels.
fn split_labels(body: &str) -> Result<Vec<&str>> {
    let mut parts = Vec::new();
    let (mut start, mut quoted, mut escaped) = (0, false, false);
    for (i, c) in body.char_indices() {
        match c {
            '\\' if quoted && !escaped => escaped = true,
            '"' if !escaped => quoted = !quoted,
            ',' if !quoted => {
                parts.push(&body[start..i]);
                start = i + 1;
            }
            _ => escaped = false,
        }
        if c != '\\' {
            escaped = false;
        }
    }
    ensure!(!quoted, "unterminated label value in {body:?}");
    if start < body.len() {
        parts.push(&body[start..]);
    }
    Ok(parts)
}

fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .find(|(n, l, _)| {
            n == name
                && labels
                    .iter()
                    .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|(_, _, v)| *v)
}

async fn scrape(addr: &str, token: Option<&str>) -> Result<(u16, String)> {
    let mut request = reqwest::Client::new().get(format!("http://{addr}/metrics"));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await?;
    let status = response.status().as_u16();
    Ok((status, response.text().await?))
}

fn registration(ttl: &str) -> RegisterRequest {
    serde_json::from_value(serde_json::json!({
        "address": "127.0.0.1", "port": 9000, "ttl": ttl, "deregister_after": "5m"
    }))
    .expect("a valid registration")
}

#[tokio::test]
async fn the_exposition_parses_and_follows_the_cluster() {
    // Snapshots often, so that their build metrics exist too.
    let cluster = Cluster::start(3, &["--snapshot-every", "5"])
        .await
        .expect("start a cluster");
    must_pass(async {
        let leader = cluster.leader_id().await?;
        let api = cluster.client_for(leader);
        api.register("web", "w1", &registration("30s")).await?;
        api.register("web", "w2", &registration("1s")).await?;
        api.heartbeat("web", "w1").await?;
        let guard = api.lock("db", LockOptions::default()).await?;
        // w2 sends no heartbeat: its lease ends, it turns critical, and an expiry counts.
        let addr = cluster.addr(leader);
        let samples = wait_until(
            Duration::from_secs(15),
            "w2 critical in /metrics",
            || async {
                let (status, text) = scrape(&addr, None).await?;
                ensure!(status == 200, "/metrics answered {status}");
                let (samples, types) = parse(&text)?;
                let critical = value(&samples, "registry_instances", &[("status", "critical")]);
                ensure!(critical == Some(1.0), "critical instances: {critical:?}");
                Ok((samples, types))
            },
        )
        .await?;
        let (samples, types) = samples;
        let expect = |name: &str, labels: &[(&str, &str)], wanted: f64| -> Result<()> {
            let got = value(&samples, name, labels);
            ensure!(
                got == Some(wanted),
                "{name}{labels:?}: {got:?}, wanted {wanted}"
            );
            Ok(())
        };
        expect("registry_raft_is_leader", &[], 1.0)?;
        expect("registry_raft_members", &[], 3.0)?;
        expect("registry_instances", &[("status", "passing")], 1.0)?;
        expect("registry_services", &[], 1.0)?;
        expect("registry_locks_held", &[], 1.0)?;
        ensure!(value(&samples, "registry_lease_expiries_total", &[]).unwrap_or(0.0) >= 1.0);
        ensure!(value(&samples, "registry_lease_keepalives_total", &[]).unwrap_or(0.0) >= 1.0);
        ensure!(value(&samples, "registry_fencing_token", &[]).unwrap_or(0.0) >= 1.0);
        let term = value(&samples, "registry_raft_term", &[]).context("a term")?;
        ensure!(term >= 1.0, "term {term}");
        // Requests by route template, not by the path with its names in it.
        let route = "/v1/services/{service}/instances/{id}";
        let registered = value(
            &samples,
            "registry_http_requests_total",
            &[("route", route), ("method", "PUT"), ("status", "200")],
        );
        ensure!(
            registered.is_some_and(|n| n >= 2.0),
            "PUT {route}: {registered:?}"
        );
        // The leader hears from both peers.
        for peer in cluster.ids().into_iter().filter(|&id| id != leader) {
            let contact = value(
                &samples,
                "registry_raft_peer_last_contact_seconds",
                &[("peer", &peer.to_string())],
            )
            .with_context(|| format!("no last contact with peer {peer}"))?;
            ensure!(contact < 5.0, "peer {peer} last answered {contact}s ago");
        }
        for name in [
            "registry_raft_proposer_batch_size",
            "registry_raft_commit_duration_seconds",
            "registry_raft_log_fsync_duration_seconds",
            "registry_http_request_duration_seconds",
        ] {
            ensure!(
                types.get(name).map(String::as_str) == Some("histogram"),
                "{name}: {:?}",
                types.get(name)
            );
            let count = value(&samples, &format!("{name}_count"), &[]).context("a count")?;
            let inf = samples
                .iter()
                .filter(|(n, l, _)| {
                    *n == format!("{name}_bucket")
                        && l.get("le").map(String::as_str) == Some("+Inf")
                })
                .map(|(_, _, v)| v)
                .sum::<f64>();
            ensure!(count >= 1.0, "{name}_count {count}");
            ensure!(
                inf >= count,
                "{name}: +Inf bucket {inf} under count {count}"
            );
        }
        for name in [
            "registry_process_resident_memory_bytes",
            "registry_process_open_fds",
            "registry_process_threads",
        ] {
            let v = value(&samples, name, &[]).unwrap_or(0.0);
            ensure!(v > 0.0, "{name} = {v}");
        }
        // Every series the shipped Grafana dashboard queries exists (a snapshot install
        // only happens on a follower that fell behind, so it may not have yet).
        let dashboard = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../docs/grafana-dashboard.json"
        ))?;
        let families: std::collections::BTreeSet<&str> = samples
            .iter()
            .map(|(n, _, _)| family(n))
            .chain(types.keys().map(String::as_str))
            .collect();
        for name in metric_names(&dashboard) {
            if family(&name) == "registry_raft_snapshot_install_duration_seconds" {
                continue;
            }
            ensure!(
                families.contains(family(&name)),
                "the dashboard queries {name}, which /metrics lacks"
            );
        }
        guard.release().await?;
        Ok(())
    })
    .await;
}

/// A sample's family: its name without a histogram's `_bucket`, `_sum` or `_count`.
fn family(name: &str) -> &str {
    ["_bucket", "_sum", "_count"]
        .iter()
        .find_map(|suffix| name.strip_suffix(suffix))
        .unwrap_or(name)
}

/// Every `registry_...` name in `text`.
fn metric_names(text: &str) -> std::collections::BTreeSet<String> {
    let mut names = std::collections::BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("registry_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
            .unwrap_or(tail.len());
        names.insert(tail[..end].to_owned());
        rest = &tail[end..];
    }
    names
}

const BOOT: &str = "bootstrap-secret-for-metrics-tests";

#[tokio::test]
async fn with_acls_metrics_need_cluster_read_unless_public() {
    // Single nodes: the harness waits for /readyz, which is open, so no anonymous rule
    // (which would open /metrics too) is needed.
    let guarded = Cluster::start_single(&["--acl", "--acl-bootstrap-token", BOOT])
        .await
        .expect("start a node with ACLs");
    let open =
        Cluster::start_single(&["--acl", "--metrics-public", "--no-expiry-storm-protection"])
            .await
            .expect("start a node with public metrics");
    must_pass(async {
        let addr = guarded.addr(1);
        let (status, _) = scrape(&addr, None).await?;
        ensure!(status == 401, "without a token: {status}");
        let (status, text) = wait_until(Duration::from_secs(10), "the bootstrap token", || async {
            let (status, text) = scrape(&addr, Some(BOOT)).await?;
            if status != 200 {
                bail!("with the bootstrap token: {status}");
            }
            Ok((status, text))
        })
        .await?;
        ensure!(
            status == 200 && text.contains("registry_raft_term"),
            "{status}"
        );
        let (status, text) = scrape(&open.addr(1), None).await?;
        ensure!(
            status == 200 && text.contains("registry_raft_term"),
            "public: {status}"
        );
        // Storm protection turned off is told apart from inactive.
        let (samples, _) = parse(&text)?;
        let enabled = value(&samples, "registry_expiry_storm_enabled", &[]);
        ensure!(enabled == Some(0.0), "storm protection off: {enabled:?}");
        let (_, text) = scrape(&addr, Some(BOOT)).await?;
        let (samples, _) = parse(&text)?;
        let enabled = value(&samples, "registry_expiry_storm_enabled", &[]);
        ensure!(enabled == Some(1.0), "storm protection on: {enabled:?}");
        Ok(())
    })
    .await;
}

#[tokio::test]
async fn json_logs_are_one_object_per_line() {
    let cluster = Cluster::start_single(&["--log-format", "json"])
        .await
        .expect("start");
    must_pass(async {
        let log = cluster.log_tail(1, 200);
        let lines: Vec<&str> = log
            .lines()
            .filter(|l| !l.starts_with("=== harness") && !l.starts_with("    (the line above"))
            .collect();
        ensure!(!lines.is_empty(), "no log lines");
        for line in lines {
            let value: serde_json::Value =
                serde_json::from_str(line).with_context(|| format!("not JSON: {line:?}"))?;
            ensure!(
                value["level"].is_string() && value["timestamp"].is_string(),
                "{line}"
            );
        }
        ensure!(
            log.contains("\"message\":\"registry-server listening on"),
            "{log}"
        );
        Ok(())
    })
    .await;
}

#[tokio::test]
async fn a_dead_peer_is_logged_once_not_at_every_retry() {
    let cluster = Cluster::start(3, &[]).await.expect("start a cluster");
    must_pass(async {
        let leader = cluster.leader_id().await?;
        let dead = cluster
            .ids()
            .into_iter()
            .find(|&id| id != leader)
            .context("a follower")?;
        // Only what is logged after the kill counts (a peer still starting up may have
        // missed a call or two at the very start).
        let earlier = cluster.log_tail(leader, 100_000).lines().count();
        cluster.kill(dead).await?;
        // openraft retries the dead peer several times a second; give it a few seconds.
        wait_until(
            Duration::from_secs(10),
            "the dead peer in the leader's log",
            || async {
                let log = cluster.log_tail(leader, 100_000);
                let since: Vec<&str> = log.lines().skip(earlier).collect();
                ensure!(
                    since
                        .iter()
                        .any(|l| l.contains("Raft calls to this peer fail")),
                    "not yet"
                );
                Ok(())
            },
        )
        .await?;
        tokio::time::sleep(Duration::from_secs(3)).await;
        let full = cluster.log_tail(leader, 100_000);
        let lines: Vec<&str> = full.lines().skip(earlier).collect();
        let log = lines.join("\n");
        // The harness folds repeated lines into one and a "(the line above, N times)".
        let about: Vec<usize> = (0..lines.len())
            .filter(|&i| {
                lines[i].contains("Raft calls to this peer")
                    && lines[i].contains(&format!("peer={dead}"))
            })
            .collect();
        let repeated = about.iter().any(|&i| {
            lines
                .get(i + 1)
                .is_some_and(|next| next.contains("(the line above"))
        });
        ensure!(
            about.len() == 1 && !repeated,
            "logged more than once:\n{log}"
        );
        ensure!(
            !log.contains("RPCError"),
            "openraft's per-retry line is back:\n{log}"
        );
        Ok(())
    })
    .await;
}

/// A survivor's `registry_raft_leader_changes_total` (0 before its first change).
async fn leader_changes(cluster: &Cluster, id: u64) -> Result<f64> {
    let (status, text) = scrape(&cluster.addr(id), None).await?;
    ensure!(status == 200, "/metrics on {id} answered {status}");
    let (samples, _) = parse(&text)?;
    Ok(value(&samples, "registry_raft_leader_changes_total", &[]).unwrap_or(0.0))
}

#[tokio::test]
async fn a_new_leader_is_counted_by_every_survivor() {
    let cluster = Cluster::start(3, &[]).await.expect("start a cluster");
    must_pass(async {
        // `leader_id` returns once every node reports the leader, so what a survivor
        // counts after the kill is the new leader, not a late count of the first one.
        let old = cluster.leader_id().await?;
        let survivors: Vec<u64> = cluster.ids().into_iter().filter(|&id| id != old).collect();
        let mut before = Vec::new();
        for &id in &survivors {
            before.push(leader_changes(&cluster, id).await?);
        }
        cluster.kill(old).await?;
        cluster
            .wait_for_leader(Some(old), Duration::from_secs(15))
            .await?;
        for (&id, before) in survivors.iter().zip(before) {
            wait_until(
                Duration::from_secs(10),
                &format!("node {id} to count the new leader"),
                || async {
                    let now = leader_changes(&cluster, id).await?;
                    ensure!(
                        now > before,
                        "node {id}: {now} leader changes, {before} before"
                    );
                    Ok(())
                },
            )
            .await?;
        }
        Ok(())
    })
    .await;
}
