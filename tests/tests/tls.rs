//! TLS on real servers (separate processes, certificates made at test time): a 3-node
//! cluster whose servers call each other over https and require client certificates
//! (no cluster secret), a certificate reload on SIGHUP, and start-up errors that name
//! the file at fault.
//!
//! Every node is on 127.0.0.1, so its internal routes would accept loopback peers even
//! without certificates; that a certificate names a member's host is what authenticates
//! a peer elsewhere, which `http::internal`'s unit tests check.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use api_spec::RegisterRequest;
use registry_client::{Client, Consistency, LockOptions, ReadOptions, ServiceQuery};
use tempfile::TempDir;
use tests::{free_ports, must_pass, wait_until, ClientTls, Cluster, NodeSetup};

#[cfg(test)]
#[allow(dead_code)]
#[path = "../../registry-client/src/tls_test_support.rs"]
mod certs;

use certs::{Ca, Issued};

const TIMEOUT: Duration = Duration::from_secs(20);

/// Certificate files in a temporary directory.
struct Files {
    dir: TempDir,
}

impl Files {
    fn new() -> Files {
        Files {
            dir: tempfile::tempdir().expect("a temp dir"),
        }
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, text).expect("write a certificate file");
        path
    }

    /// Writes `issued` as `name.pem` and `name.key`.
    fn issued(&self, name: &str, issued: &Issued) -> (PathBuf, PathBuf) {
        (
            self.write(&format!("{name}.pem"), &issued.cert_pem),
            self.write(&format!("{name}.key"), &issued.key_pem),
        )
    }
}

fn arg(path: &Path) -> String {
    path.display().to_string()
}

fn registration(port: u16) -> RegisterRequest {
    serde_json::from_value(serde_json::json!({
        "address": "127.0.0.1", "port": port, "ttl": "30s"
    }))
    .expect("a valid registration")
}

/// Starts `n` nodes with a member certificate each (for 127.0.0.1) issued by `ca`,
/// `--tls-ca` a file of `trusted` (PEM) and `extra` flags; the harness reaches them with
/// `client`.
async fn tls_cluster(
    n: u64,
    ca: &Ca,
    trusted: &str,
    files: &Files,
    extra: &[&str],
    client: ClientTls,
) -> Result<Cluster> {
    let ca_path = files.write("ca.pem", trusted);
    let mut setup = NodeSetup {
        client_tls: Some(client),
        ..NodeSetup::default()
    };
    for id in 1..=n {
        let (cert, key) = files.issued(&format!("node{id}"), &ca.member(&["127.0.0.1"]));
        setup.args.insert(
            id,
            vec![
                "--tls-cert".into(),
                arg(&cert),
                "--tls-key".into(),
                arg(&key),
                "--tls-ca".into(),
                arg(&ca_path),
            ],
        );
    }
    for attempt in 1..=3 {
        let cluster = Cluster::start_with(&free_ports(n)?, extra, &setup).await?;
        if cluster.live_ids().len() as u64 == n || attempt == 3 {
            return Ok(cluster);
        }
    }
    unreachable!("the last attempt returns")
}

#[tokio::test]
async fn a_mutual_tls_cluster_replicates_forwards_and_elects_over_https() {
    let ca = Ca::new("registry test CA");
    let files = Files::new();
    let ops = ca.client("ops");
    let client_tls = ClientTls {
        ca_pem: ca.cert_pem.clone(),
        identity: Some((ops.cert_pem.clone(), ops.key_pem.clone())),
    };
    let cluster = tls_cluster(
        3,
        &ca,
        &ca.cert_pem,
        &files,
        &["--tls-verify-clients"],
        client_tls,
    )
    .await
    .expect("start a TLS cluster");
    must_pass(async {
        let leader = cluster.leader_id().await?;
        let follower = cluster
            .ids()
            .into_iter()
            .find(|&id| id != leader)
            .context("a follower")?;

        // A write through a follower is forwarded to the leader over https, and
        // replicated to every node.
        let through_follower = cluster.client_for(follower);
        through_follower
            .register("web", "web-1", &registration(8080))
            .await?;
        let guard = through_follower.lock("db", LockOptions::default()).await?;
        ensure!(guard.token() > 0, "a fencing token");
        for id in cluster.ids() {
            let api = cluster.client_for(id);
            wait_until(TIMEOUT, "the instance on every node", || async {
                let read = ReadOptions {
                    consistency: Consistency::Stale,
                    ..ReadOptions::default()
                };
                let found = api
                    .service("web", &ServiceQuery::default(), read)
                    .await?
                    .value;
                ensure!(
                    found.instances.len() == 1,
                    "{} instances",
                    found.instances.len()
                );
                Ok(())
            })
            .await?;
        }
        guard.release().await?;

        // Without a client certificate, or trusting another CA: refused by TLS.
        let addr = cluster.addr(leader);
        let anonymous = Client::builder([format!("https://{addr}")])
            .tls_ca_pem(&ca.cert_pem)
            .timeout(Duration::from_secs(5))
            .build()?;
        let refused = anonymous
            .cluster_status()
            .await
            .err()
            .context("no client certificate accepted")?;
        ensure!(refused.is_tls(), "not a TLS refusal: {refused}");
        let stranger = Ca::new("another CA");
        let distrustful = Client::builder([format!("https://{addr}")])
            .tls_ca_pem(&stranger.cert_pem)
            .tls_identity_pem(&ops.cert_pem, &ops.key_pem)
            .timeout(Duration::from_secs(5))
            .build()?;
        let refused = distrustful
            .cluster_status()
            .await
            .err()
            .context("an untrusted server accepted")?;
        ensure!(refused.is_tls(), "not a TLS refusal: {refused}");

        // Plain HTTP to a TLS port: a 400 that says to use https.
        let plain = reqwest::Client::new()
            .get(format!("http://{addr}/v1/cluster"))
            .send()
            .await?;
        ensure!(
            plain.status() == 400,
            "plain HTTP answered {}",
            plain.status()
        );
        let body = plain.text().await?;
        ensure!(body.contains("https://"), "{body}");

        // A client that offers HTTP/2 in ALPN gets it.
        let identity = format!("{}{}", ops.cert_pem, ops.key_pem);
        let h2 = reqwest::Client::builder()
            .use_rustls_tls()
            .add_root_certificate(reqwest::Certificate::from_pem(ca.cert_pem.as_bytes())?)
            .identity(reqwest::Identity::from_pem(identity.as_bytes())?)
            .timeout(Duration::from_secs(5))
            .build()?;
        let answer = h2.get(format!("https://{addr}/v1/cluster")).send().await?;
        ensure!(
            answer.status() == 200 && answer.version() == reqwest::Version::HTTP_2,
            "a client offering h2 got {:?} {}",
            answer.version(),
            answer.status()
        );

        // Raft runs over https: a new leader once the old one is gone.
        cluster.kill(leader).await?;
        let next = cluster.wait_for_leader(Some(leader), TIMEOUT).await?;
        let survivor = cluster.client_for(next);
        survivor
            .register("web", "web-2", &registration(8081))
            .await?;
        Ok(())
    })
    .await;
}

#[tokio::test]
async fn the_certificate_is_reloaded_on_sighup() {
    let first_ca = Ca::new("first CA");
    let second_ca = Ca::new("second CA");
    let files = Files::new();
    // The nodes trust both CAs (as during a CA rotation); the harness too.
    let both = format!("{}{}", first_ca.cert_pem, second_ca.cert_pem);
    let client_tls = ClientTls {
        ca_pem: both.clone(),
        identity: None,
    };
    let cluster = tls_cluster(1, &first_ca, &both, &files, &[], client_tls)
        .await
        .expect("start a TLS node");
    must_pass(async {
        let addr = cluster.addr(1);
        let trusting_second = Client::builder([format!("https://{addr}")])
            .tls_ca_pem(&second_ca.cert_pem)
            .timeout(Duration::from_secs(5))
            .build()?;
        let before = trusting_second.cluster_status().await;
        ensure!(
            before.as_ref().is_err_and(|e| e.is_tls()),
            "before the reload: {before:?}"
        );

        // A bad pair first: the node keeps its certificate and says why.
        files.write(
            "node1.key",
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        );
        let pid = cluster.pid(1).context("node 1 runs")?;
        hangup(pid)?;
        wait_until(TIMEOUT, "the failed reload in the log", || async {
            let log = cluster.log_tail(1, 20);
            ensure!(log.contains("keeping the TLS certificate in use"), "{log}");
            Ok(())
        })
        .await?;
        cluster
            .status(1)
            .await
            .context("still serving the first certificate")?;

        files.issued("node1", &second_ca.member(&["127.0.0.1"]));
        hangup(pid)?;
        wait_until(TIMEOUT, "the second certificate to be served", || async {
            Ok(trusting_second.cluster_status().await?)
        })
        .await?;
        ensure!(cluster.pid(1) == Some(pid), "the node restarted");
        Ok(())
    })
    .await;
}

fn hangup(pid: u32) -> Result<()> {
    let pid = nix::unistd::Pid::from_raw(i32::try_from(pid)?);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP)?;
    Ok(())
}

/// The server's stderr when it stops at start-up with `args` (a fresh data dir).
fn start_up_error(args: &[String]) -> Result<String> {
    let data = tempfile::tempdir()?;
    tests::start_up_failure(data.path(), args)
}

#[test]
fn bad_certificates_stop_start_up_with_one_line_naming_the_file() {
    let ca = Ca::new("registry test CA");
    let files = Files::new();
    let (cert, key) = files.issued("node", &ca.member(&["127.0.0.1"]));
    let (_, other_key) = files.issued("other", &ca.member(&["127.0.0.1"]));
    let (no_ip_cert, no_ip_key) = files.issued("elsewhere", &ca.member(&["10.9.9.9"]));
    let ca_path = files.write("ca.pem", &ca.cert_pem);
    let missing = files.dir.path().join("missing.pem");
    let tls = |cert: &Path, key: &Path, ca: Option<&Path>| -> Vec<String> {
        let mut args = vec!["--tls-cert".into(), arg(cert), "--tls-key".into(), arg(key)];
        if let Some(ca) = ca {
            args.extend(["--tls-ca".into(), arg(ca)]);
        }
        args
    };
    let cases: BTreeMap<&str, (Vec<String>, Vec<String>)> = BTreeMap::from([
        (
            "missing key",
            (
                tls(&cert, &missing, None),
                vec![arg(&missing), "--tls-key".into()],
            ),
        ),
        (
            "missing CA",
            (
                tls(&cert, &key, Some(&missing)),
                vec![arg(&missing), "--tls-ca".into()],
            ),
        ),
        (
            "key of another certificate",
            (
                tls(&cert, &other_key, None),
                vec![arg(&other_key), "does not belong".into()],
            ),
        ),
        (
            "certificate not naming the address",
            (
                tls(&no_ip_cert, &no_ip_key, Some(&ca_path)),
                vec![arg(&no_ip_cert), "127.0.0.1".into()],
            ),
        ),
    ]);
    for (name, (args, wanted)) in cases {
        let stderr = start_up_error(&args).unwrap_or_else(|e| panic!("{name}: {e:#}"));
        let last = stderr.lines().last().unwrap_or_default();
        assert!(
            last.starts_with("registry-server: error: "),
            "{name}: {stderr}"
        );
        for word in wanted {
            assert!(last.contains(&word), "{name}: {word:?} not in {last:?}");
        }
    }
}
