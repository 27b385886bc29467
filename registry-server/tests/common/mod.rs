//! A single-node server run in-process on 127.0.0.1 (real RocksDB in a temporary
//! directory, real HTTP), shared by the integration tests of this crate.

#![allow(clippy::unwrap_used, dead_code)] // test support: a failed unwrap is a failed test

use std::time::Duration;

use clap::Parser;
use registry_server::config::Config;

/// A free port on 127.0.0.1 (the server binds it right after).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A server running in this process; stops (gracefully) on [`Running::shutdown`].
pub struct Running {
    pub base: String,
    pub http: reqwest::Client,
    pub stop: tokio::sync::oneshot::Sender<()>,
    pub task: tokio::task::JoinHandle<anyhow::Result<()>>,
    pub dir: tempfile::TempDir,
}

/// Starts a single-node server with `extra` flags and waits until it is ready.
pub async fn start(extra: &[&str]) -> Running {
    let dir = tempfile::tempdir().unwrap();
    let addr = format!("127.0.0.1:{}", free_port());
    let mut args = vec![
        "registry-server",
        "--listen",
        &addr,
        "--data-dir",
        dir.path().to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let config = Config::parse_from(args);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(registry_server::server::run(config, async move {
        let _ = stopped.await;
    }));
    let base = format!("http://{addr}");
    // No test request blocks for long; a hung server fails the test instead of hanging it.
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !http
        .get(format!("{base}/readyz"))
        .send()
        .await
        .is_ok_and(|r| r.status().is_success())
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "server did not become ready"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Running {
        base,
        http,
        stop,
        task,
        dir,
    }
}

impl Running {
    /// Stops the server and checks it stopped cleanly.
    pub async fn shutdown(self) {
        self.stop.send(()).unwrap();
        self.task.await.unwrap().unwrap();
    }
}
