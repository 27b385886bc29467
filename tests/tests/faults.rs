//! Fault injection with checked histories (see `tests::faults`): a few seeded schedules
//! of partitions, one-way loss, delays, SIGKILL, SIGSTOP and whole-cluster restarts
//! against real clusters, while lock, registry, register and lease workloads record
//! what they saw. Every history must pass its checker. A failing run prints its seed;
//! `scripts/soak.sh --seed <seed> --nodes <n>` runs it again. The long soak is
//! `scripts/soak.sh`.

use std::time::Duration;

use tests::faults::{self, RunConfig};

/// Length of each schedule here; the soak runs longer ones.
const LENGTH: Duration = Duration::from_secs(20);

async fn run(seed: u64, nodes: u64) {
    let report = faults::run(RunConfig {
        seed,
        nodes,
        length: LENGTH,
    })
    .await
    .unwrap_or_else(|e| panic!("seed {seed}: the run itself failed: {e:#}"));
    eprintln!("{report}");
    assert!(
        report.passed(),
        "{report}\nrun log:\n{}",
        report.log.join("\n")
    );
    // A run in which nothing succeeded checked nothing: every workload must have made
    // progress between the faults.
    for (workload, (ok, _, _)) in &report.operations {
        assert!(*ok > 0, "seed {seed}: no {workload} succeeded\n{report}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_seed_1() {
    run(1, 3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_seed_2() {
    run(2, 3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_nodes_seed_3() {
    run(3, 5).await;
}
