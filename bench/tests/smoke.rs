//! Keeps the benchmark from rotting: the load generator, the cluster runner and one
//! registry workload, for about a second against a single-node debug registry (no etcd).

use std::path::{Path, PathBuf};
use std::time::Duration;

use bench::load::LoadConfig;
use bench::systems::{Registry, Side};
use bench::workloads::{self, Target, Workload};

/// `registry-server` next to this test's profile directory (`scripts/test.sh` builds it
/// first), or `REGISTRY_SERVER_BIN`.
fn server_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("REGISTRY_SERVER_BIN") {
        return PathBuf::from(path);
    }
    // Test executables live in target/<profile>/deps/, binaries in target/<profile>/.
    let exe = std::env::current_exe().expect("the test executable's path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>/");
    let path = profile_dir.join(format!("registry-server{}", std::env::consts::EXE_SUFFIX));
    assert!(
        path.is_file(),
        "{} not found: run `cargo build -p registry-server` (or set REGISTRY_SERVER_BIN)",
        path.display()
    );
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_workloads_run_without_errors() {
    let registry = Registry::start(&server_binary(), 1)
        .await
        .expect("start a single-node registry");
    run(registry, &[Workload::Register, Workload::LockUncontended]).await;
}

/// `--extra tls-overhead`'s registry: certificates made at run time, https workers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_serving_tls_runs_workloads_without_errors() {
    let registry = Registry::start_tls(&server_binary(), 1, &[])
        .await
        .expect("start a single-node registry serving TLS");
    assert!(registry.urls()[0].starts_with("https://"));
    run(registry, &[Workload::Heartbeat]).await;
}

async fn run(mut registry: Registry, plan: &[Workload]) {
    let leader = registry.wait_for_leader(None).await.expect("a leader");
    let target = Target {
        side: Side::Registry,
        urls: registry.urls().to_vec(),
        leader,
        spread: false,
        token: None,
        ca_pem: registry.ca_pem().map(str::to_owned),
    };
    for &workload in plan {
        let config = LoadConfig {
            concurrency: 4,
            warmup: Duration::from_millis(100),
            duration: Duration::from_millis(400),
            op_timeout: Duration::from_secs(5),
        };
        let m = workloads::run(workload, &target, config)
            .await
            .unwrap_or_else(|e| panic!("{}: {e:#}", workload.name()));
        assert!(
            m.ops > 0,
            "{}: no operation completed: {m:?}",
            workload.name()
        );
        assert_eq!(
            m.errors,
            0,
            "{}: errors: {:?}",
            workload.name(),
            m.error_samples
        );
        assert!(
            m.p50_us > 0 && m.p50_us <= m.p99_us && m.p99_us <= m.max_us,
            "{m:?}"
        );
    }
}
