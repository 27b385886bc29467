//! Single-node servers run in-process on 127.0.0.1 (real RocksDB, real HTTP): group
//! commit, and the cluster secret on internal routes.

#![allow(clippy::unwrap_used)] // a test: a failed unwrap is a failed test

mod common;

use common::{free_port, start};

use clap::Parser;
use registry_server::config::Config;

async fn last_log_index(http: &reqwest::Client, base: &str) -> u64 {
    let status: serde_json::Value = http
        .get(format!("{base}/v1/cluster"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    status["last_log_index"].as_u64().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_share_log_entries() {
    let server = start(&[]).await;
    let (http, base) = (&server.http, server.base.as_str());

    const WRITES: u64 = 200;
    let before = last_log_index(http, base).await;
    let writes = (0..WRITES).map(|_| {
        let http = http.clone();
        let url = format!("{base}/v1/leases");
        async move {
            let response = http
                .post(url)
                .json(&serde_json::json!({"ttl": "1h"}))
                .send()
                .await
                .unwrap();
            assert!(
                response.status().is_success(),
                "write failed: {}",
                response.status()
            );
            let body: serde_json::Value = response.json().await.unwrap();
            body["granted_index"].as_u64().unwrap()
        }
    });
    let indexes = futures::future::join_all(writes).await;
    let entries = last_log_index(http, base).await - before;

    eprintln!("{WRITES} concurrent writes used {entries} log entries");
    let mut distinct = indexes.clone();
    distinct.sort_unstable();
    distinct.dedup();
    assert_eq!(
        entries,
        distinct.len() as u64,
        "every entry written carries some of the leases"
    );
    assert!(
        entries <= WRITES / 2,
        "{WRITES} concurrent writes took {entries} log entries: they are not being batched"
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn internal_routes_require_the_cluster_secret() {
    let server = start(&["--cluster-secret", "s3cret"]).await;
    let vote = format!("{}/internal/raft/vote", server.base);
    for secret in [None, Some("wrong"), Some("s3cre")] {
        let mut request = server.http.post(&vote).body(vec![0u8; 8]);
        if let Some(secret) = secret {
            request = request.header("x-registry-cluster-secret", secret);
        }
        let status = request.send().await.unwrap().status();
        assert_eq!(
            status,
            reqwest::StatusCode::UNAUTHORIZED,
            "secret {secret:?}"
        );
    }
    // With the secret the request gets through to the handler, which rejects the
    // garbage body as undecodable rather than as unauthorised.
    let status = server
        .http
        .post(&vote)
        .header("x-registry-cluster-secret", "s3cret")
        .body(vec![0u8; 8])
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, reqwest::StatusCode::BAD_REQUEST);
    // Public routes do not need it.
    let status = server
        .http
        .get(format!("{}/v1/cluster", server.base))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, reqwest::StatusCode::OK);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_dir_is_refused_to_another_node_id() {
    let server = start(&[]).await;
    let data_dir = server.dir.path().to_path_buf();
    let (_keep, stop, task) = (server.dir, server.stop, server.task);
    stop.send(()).unwrap();
    task.await.unwrap().unwrap();

    let addr = format!("127.0.0.1:{}", free_port());
    let data = data_dir.to_str().unwrap();
    let config = Config::parse_from([
        "registry-server",
        "--listen",
        &addr,
        "--data-dir",
        data,
        "--node-id",
        "2",
    ]);
    let error = registry_server::server::run(config, std::future::pending())
        .await
        .unwrap_err();
    assert!(
        error
            .to_string()
            .contains("belongs to node 1, not --node-id 2"),
        "unexpected error: {error:#}"
    );
}
