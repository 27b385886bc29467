//! Fault injection with checked histories (see `tests::faults`): a few seeded schedules
//! of partitions, one-way loss, delays, SIGKILL, SIGSTOP and whole-cluster restarts
//! against real clusters, while lock, registry, register and lease workloads record
//! what they saw. Every history must pass its checker. A failing run prints its seed;
//! `scripts/soak.sh --seed <seed> --nodes <n>` runs it again. The long soak is
//! `scripts/soak.sh`.

use std::time::{Duration, Instant};

use anyhow::{bail, ensure};

use tests::faults::{self, FaultCluster, RunClock, RunConfig};
use tests::history::{Op, Outcome};
use tests::linearizable::{self, Register, RegisterAnswer, RegisterOp, Verdict};
use tests::{must_pass, wait_until};

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

/// Writes `value` to the register instance through `addr`; the op as recorded.
async fn write(
    http: &reqwest::Client,
    clock: &RunClock,
    addr: &str,
    value: &str,
) -> Op<RegisterOp, RegisterAnswer> {
    let invoke = clock.now();
    let body = serde_json::json!({
        "address": "127.0.0.1", "port": 1, "ttl": "10m", "meta": { "v": value },
    });
    let answer = http
        .put(format!("http://{addr}/v1/services/stale-check/instances/x"))
        .json(&body)
        .timeout(Duration::from_secs(2))
        .send()
        .await;
    let outcome = match answer {
        Ok(r) if r.status().is_success() => Outcome::Ok(RegisterAnswer::Written),
        Ok(r) if r.status().is_client_error() => Outcome::Failed(r.status().to_string()),
        Ok(r) => Outcome::Unknown(r.status().to_string()),
        Err(e) => Outcome::Unknown(e.to_string()),
    };
    Op {
        process: 0,
        invoke,
        complete: clock.now(),
        input: RegisterOp::Write(value.to_owned()),
        outcome,
    }
}

/// Reads the register through `addr` (with `?stale` if asked); the op as recorded.
async fn read(
    http: &reqwest::Client,
    clock: &RunClock,
    addr: &str,
    stale: bool,
) -> Op<RegisterOp, RegisterAnswer> {
    let invoke = clock.now();
    let query = if stale { "?stale" } else { "" };
    let answer = http
        .get(format!("http://{addr}/v1/services/stale-check{query}"))
        .timeout(Duration::from_secs(2))
        .send()
        .await;
    let outcome = match answer {
        Ok(r) if r.status().is_success() => {
            let body: serde_json::Value = r.json().await.unwrap_or_default();
            let value = body["instances"][0]["meta"]["v"]
                .as_str()
                .map(str::to_owned);
            Outcome::Ok(RegisterAnswer::Value(value))
        }
        Ok(r) => Outcome::Unknown(r.status().to_string()),
        Err(e) => Outcome::Unknown(e.to_string()),
    };
    Op {
        process: 1,
        invoke,
        complete: clock.now(),
        input: RegisterOp::Read,
        outcome,
    }
}

/// The checkers can fail on a real cluster: a leader cut off from the others still
/// answers `?stale` reads with the value it had, after the majority acknowledged a newer
/// write, and the linearizability checker says so. Default (linearizable) reads on the
/// cut-off leader do not answer, and that history passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_reads_from_an_isolated_leader_are_caught() {
    let clock = RunClock::start();
    let cluster = FaultCluster::start(3, clock).await.expect("start");
    let http = reqwest::Client::new();
    let old = cluster.current_leader().await;
    let old_addr = cluster.nodes.addr(old);
    let other = cluster.nodes.ids().into_iter().find(|&id| id != old);
    let other_addr = cluster.nodes.addr(other.expect("three nodes"));

    let mut history = vec![write(&http, &clock, &old_addr, "before").await];
    assert!(history[0].outcome.is_ok(), "{:?}", history[0]);
    cluster.links.isolate(old);
    // The majority elects a new leader; retry the newer write until it is acknowledged.
    for attempt in 0.. {
        let op = write(&http, &clock, &other_addr, &format!("after-{attempt}")).await;
        let acknowledged = op.outcome.is_ok();
        history.push(op);
        if acknowledged {
            break;
        }
        assert!(
            attempt < 30,
            "the majority never accepted a write: {history:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let stale = read(&http, &clock, &old_addr, true).await;
    assert_eq!(
        stale.outcome,
        Outcome::Ok(RegisterAnswer::Value(Some("before".to_owned()))),
        "the cut-off leader should still serve its old value to ?stale"
    );
    let mut with_stale = history.clone();
    with_stale.push(stale);
    let verdict = linearizable::check(&Register, &with_stale, linearizable::DEFAULT_BUDGET);
    assert!(
        matches!(verdict, Verdict::NotLinearizable { .. }),
        "a stale read after an acknowledged newer write must be caught: {verdict:?}"
    );

    let linearizable_read = read(&http, &clock, &old_addr, false).await;
    assert!(
        !linearizable_read.outcome.is_ok(),
        "a cut-off leader answered a linearizable read: {linearizable_read:?}"
    );
    history.push(linearizable_read);
    let verdict = linearizable::check(&Register, &history, linearizable::DEFAULT_BUDGET);
    assert_eq!(verdict, Verdict::Linearizable);
}

/// A lease expiry that a cut-off leader proposed and stopped waiting for (a timeout: the
/// outcome is unknown) commits once the leader reaches its followers again. A keepalive
/// accepted in between would be promised a TTL the lease does not get: that was the
/// lease-expired-early anomaly of a fault run. Whatever a keepalive after the heal is
/// told must hold: refused, or accepted and the lease lives a TTL.
///
/// The timings make the window wide: proposals give up after 300 ms, the expiry loop
/// runs every 2 s (so a lease unmarked after the timeout would stay unmarked until the
/// next tick), and the followers would replace a silent leader only after 6 s to 8 s
/// (its lease of twice the 2 s election timeout, then one timeout), so the cut-off
/// leader keeps its term.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keepalive_after_an_expiry_in_doubt_is_not_outlived_by_it() {
    let flags = [
        "--propose-timeout",
        "300ms",
        "--lease-tick",
        "2s",
        "--election-timeout",
        "2s",
    ];
    let cluster = FaultCluster::start_with(3, RunClock::start(), &flags)
        .await
        .expect("start");
    must_pass(async {
        let http = reqwest::Client::new();
        let leader = cluster
            .nodes
            .wait_for_leader(None, Duration::from_secs(20))
            .await?;
        let addr = cluster.nodes.addr(leader);
        let granted: serde_json::Value = http
            .post(format!("http://{addr}/v1/leases"))
            .json(&serde_json::json!({ "ttl": "1s" }))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        let lease = granted["lease"].as_str().expect("a lease id").to_owned();
        cluster.links.isolate(leader);

        // The countdown runs out, the leader proposes the expiry and gives up on it.
        wait_until(
            Duration::from_secs(6),
            "the cut-off leader to stop waiting for the lease's expiry",
            || async {
                let log = cluster.nodes.log_tail(leader, 10_000);
                let gave_up = log.lines().any(|line| {
                    line.contains("lease expiry") && line.contains("not committed within")
                });
                ensure!(gave_up, "no such line yet");
                Ok(())
            },
        )
        .await?;
        cluster.links.heal();

        let keepalive = format!("http://{addr}/v1/leases/{lease}/keepalive");
        let (invoked, status) = wait_until(
            Duration::from_secs(5),
            "a keepalive to the leader to be answered 200 or 404",
            || async {
                let invoked = Instant::now();
                let response = http
                    .put(&keepalive)
                    .timeout(Duration::from_secs(1))
                    .send()
                    .await?;
                let status = response.status().as_u16();
                ensure!(matches!(status, 200 | 404), "answered {status}");
                Ok((invoked, status))
            },
        )
        .await?;
        eprintln!("the keepalive after the heal was answered {status}");

        let read = format!("http://{addr}/v1/leases/{lease}");
        if status == 200 {
            // Accepted: the lease must live until at least a TTL after the keepalive was
            // sent (checked up to 900 ms, with a margin for the read itself).
            while invoked.elapsed() < Duration::from_millis(900) {
                let answer = http
                    .get(&read)
                    .timeout(Duration::from_secs(1))
                    .send()
                    .await;
                if let Ok(answer) = answer {
                    if answer.status() == 404 && invoked.elapsed() < Duration::from_millis(900) {
                        bail!(
                            "a keepalive was accepted, yet the lease was gone {:?} after it was sent \
                             (its TTL is 1 s): the expiry in doubt committed after it",
                            invoked.elapsed()
                        );
                    }
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        } else {
            // Refused: the lease is gone for good, and says so once the expiry commits.
            wait_until(Duration::from_secs(5), "the lease to be gone", || async {
                let status = http.get(&read).send().await?.status().as_u16();
                ensure!(status == 404, "read answered {status}");
                Ok(())
            })
            .await?;
            let again = http.put(&keepalive).send().await?.status().as_u16();
            ensure!(again == 404, "a refused lease was renewed later ({again})");
        }
        Ok(())
    })
    .await;
}
