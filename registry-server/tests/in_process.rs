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
    // The leader writes the prober set once after it starts leading; let that pass, so
    // the entries counted are the writes' own.
    for _ in 0..200 {
        let status: serde_json::Value = http
            .get(format!("{base}/v1/cluster"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if status["probers"] == serde_json::json!([1]) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
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

/// Sends `request` on a new connection and returns the status line of the answer.
async fn status_line(addr: &str, request: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut answer = vec![0u8; 512];
    let n = tokio::time::timeout(std::time::Duration::from_secs(5), tcp.read(&mut answer))
        .await
        .unwrap()
        .unwrap_or(0);
    String::from_utf8_lossy(&answer[..n]).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_shared_listener_keeps_a_reserve_for_peers() {
    let server = start(&["--max-connections", "16"]).await;
    let addr = server.base.trim_start_matches("http://").to_owned();
    // The probe client of `start` may hold a pooled connection; fill the rest.
    let mut held = Vec::new();
    for _ in 0..16 {
        held.push(tokio::net::TcpStream::connect(&addr).await.unwrap());
    }
    // A client request on a connection of the reserve is refused...
    let client = status_line(&addr, "GET /v1/services HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(client.starts_with("HTTP/1.1 503"), "{client}");
    // ...a node-to-node call gets through to its handler (which refuses the garbage body).
    let peer = status_line(
        &addr,
        "POST /internal/forward HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\nx",
    )
    .await;
    assert!(peer.starts_with("HTTP/1.1 400"), "{peer}");
    drop(held);
    server.shutdown().await;
}
