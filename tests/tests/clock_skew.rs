//! Replicated time when a new leader's wall clock is a day off: a lock in its lock-delay
//! and a critical instance waiting for deregistration, both set up under a leader with a
//! right clock, must neither end early nor hang once a node whose wall clock is shifted
//! by +1 day (or -1 day, with libfaketime; its monotonic clock is left alone) takes over.
//!
//! Which node wins the election after the first leader is SIGKILLed is made certain with
//! the log rather than with timeouts (a long `--election-timeout` would not do: an
//! openraft follower also refuses votes for twice its election timeout after it last
//! heard from a leader): the surviving normal node is paused (SIGSTOP) while one more
//! entry is committed by the leader and the skewed node, and resumed as the leader is
//! killed. Its log is then shorter than the skewed node's, so it cannot be elected, and
//! it votes for the skewed node.
//!
//! The skewed node starts once the normal two have a leader: at a fresh start every node
//! stands for election at once, and the last one up tends to win.

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, ensure, Context as _, Result};
use api_spec::{AcquireRequest, InstanceStatus, LockGrant, RegisterRequest};
use registry_client::{Client, Consistency, ReadOptions, ServiceQuery};
use tests::{faketime_env, free_ports, must_pass, wait_until, Cluster, NodeSetup};

/// The lock's lock-delay and the instance's `deregister_after`.
const DELAY: Duration = Duration::from_secs(12);
const DELAY_TEXT: &str = "12s";
/// How long after its deadline a lock-delay may end or a critical instance be
/// deregistered: replicated time stands still while there is no leader, so a deadline
/// moves out by the failover's leaderless gap, plus ticks and commits. The gap is 7–8 s
/// here, up to 10 s if the resumed node's own candidacies get in the way: the skewed
/// node stands after its leader lease (2 s) and drawn timeout (1–2 s) plus openraft's
/// 4 s penalty for having met a longer log (at its start-up candidacy).
const BOUND: Duration = Duration::from_secs(12);
/// The TTL of the leases that are left to expire.
const SHORT_TTL: &str = "1s";
/// How much earlier than its replicated deadline a leader whose wall clock is ahead may
/// end one: the server's `leader_time::MAX_WALL_LEAD`, the most its wall clock may move
/// replicated time past the monotonic continuation. Without the fix it was a day.
const WALL_LEAD_MS: u64 = 100;
/// How long the setup (grant, queue, expiry) may take.
const SETUP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the skewed node may take to be elected.
const FAILOVER_TIMEOUT: Duration = Duration::from_secs(20);

/// The node whose wall clock is shifted.
const SKEWED: u64 = 3;
const LOCK: &str = "skew-lock";
const SERVICE: &str = "skew-svc";
const INSTANCE: &str = "i1";

/// The host's wall clock in ms since the epoch: the first leader's clock, which stamped
/// the deadlines.
fn wall_clock_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Starts the three nodes, node `SKEWED` with its wall clock shifted by `offset` and
/// started only once one of the others leads; again (on new ports) if a node could not
/// bind, or if the skewed node took the lead when it joined.
async fn start(offset: &str) -> Result<Cluster> {
    let setup = NodeSetup {
        env: BTreeMap::from([(SKEWED, faketime_env(offset)?)]),
        late: vec![SKEWED],
        ..NodeSetup::default()
    };
    let mut seen = Vec::new();
    for _ in 0..3 {
        let cluster = Cluster::start_with(&free_ports(3)?, &[], &setup).await?;
        let leader = cluster.leader_id().await?;
        if cluster.live_ids().len() == 3 && leader != SKEWED {
            return Ok(cluster);
        }
        seen.push(format!("live {:?}, leader {leader}", cluster.live_ids()));
    }
    bail!("no start had three nodes and a normal leader: {seen:?}")
}

fn register_request(ttl: &str) -> RegisterRequest {
    RegisterRequest {
        address: "127.0.0.1".into(),
        port: 9,
        tags: Vec::new(),
        meta: BTreeMap::new(),
        zone: None,
        region: None,
        weight: None,
        ttl: Some(ttl.into()),
        deregister_after: Some(DELAY_TEXT.into()),
        lease: None,
        checks: Vec::new(),
    }
}

fn acquire_request(ttl: &str, wait: Option<&str>, holder: &str) -> AcquireRequest {
    AcquireRequest {
        ttl: Some(ttl.to_owned()),
        wait: wait.map(str::to_owned),
        holder: Some(holder.to_owned()),
        lock_delay: Some(DELAY_TEXT.into()),
        ..AcquireRequest::default()
    }
}

fn stale() -> ReadOptions {
    ReadOptions {
        consistency: Consistency::Stale,
        ..ReadOptions::default()
    }
}

/// Instances of any status.
fn any_status() -> ServiceQuery {
    ServiceQuery {
        status: Some(None),
        ..ServiceQuery::default()
    }
}

/// The instance as node `client` has applied it (`None`: deregistered).
async fn instance(client: &Client) -> Result<Option<api_spec::Instance>> {
    let listed = client.service(SERVICE, &any_status(), stale()).await?.value;
    Ok(listed.instances.into_iter().find(|i| i.id == INSTANCE))
}

/// The whole scenario, with node 3's wall clock shifted by `offset`.
async fn deadlines_survive_a_skewed_leader(offset: &str) {
    let cluster = start(offset).await.expect("cluster start");
    must_pass(async {
        let first = cluster.leader_id().await?;
        let other = if first == 1 { 2 } else { 1 };
        let leader = cluster.client_for(first);
        let skewed = cluster.client_for(SKEWED);

        // (a) A holder that never renews, so its lease expires and the lock enters its
        // lock-delay; a waiter (parked on the skewed node, which keeps its lease alive)
        // is next in line. (b) An instance that never heartbeats.
        let registered_sent_ms = wall_clock_ms();
        leader
            .register(SERVICE, INSTANCE, &register_request(SHORT_TTL))
            .await
            .context("register")?;
        let held = leader
            .acquire(LOCK, &acquire_request(SHORT_TTL, None, "lapsing holder"))
            .await
            .context("first acquire")?
            .value;
        let waiter = tokio::spawn({
            let skewed = skewed.clone();
            async move {
                let request = acquire_request("30s", Some("40s"), "waiter");
                let answer = skewed.acquire(LOCK, &request).await;
                (answer.map(|r| r.value), wall_clock_ms())
            }
        });
        let (delay_until_ms, critical_since_ms) = wait_until(
            SETUP_TIMEOUT,
            "lock-delay with a waiter, and a critical instance",
            || {
                let leader = leader.clone();
                async move {
                    let lock = leader.lock_info(LOCK, stale()).await?.value;
                    let inst = instance(&leader).await?;
                    let delay_until = lock
                        .delay_until_ms
                        .filter(|_| lock.holder.is_none() && lock.waiters.len() == 1);
                    let critical = inst
                        .as_ref()
                        .filter(|i| i.status == InstanceStatus::Critical)
                        .and_then(|i| i.critical_since_ms);
                    match (delay_until, critical) {
                        (Some(d), Some(c)) => Ok((d, c)),
                        _ => bail!("lock {lock:?}, instance {inst:?}"),
                    }
                }
            },
        )
        .await?;
        ensure!(
            delay_until_ms >= held.granted_at_ms + millis(DELAY),
            "delay_until_ms {delay_until_ms} is less than {DELAY:?} after the grant at {}",
            held.granted_at_ms
        );
        let reap_due_ms = critical_since_ms + millis(DELAY);
        ensure!(
            critical_since_ms >= registered_sent_ms + 1_000,
            "critical at {critical_since_ms}, less than its 1 s TTL after {registered_sent_ms}"
        );

        // One entry the paused normal node misses: the skewed node's log is the longest.
        cluster.pause(other)?;
        leader
            .register(SERVICE, "marker", &register_request("1m"))
            .await
            .context("register the marker")?;
        wait_until(
            SETUP_TIMEOUT,
            "the skewed node to apply the marker",
            || async {
                let listed = skewed.service(SERVICE, &any_status(), stale()).await?.value;
                ensure!(
                    listed.instances.iter().any(|i| i.id == "marker"),
                    "{listed:?}"
                );
                Ok(())
            },
        )
        .await?;
        cluster.kill(first).await?;
        let killed_ms = wall_clock_ms();
        cluster.resume(other)?;
        let new = cluster
            .wait_for_leader(Some(first), FAILOVER_TIMEOUT)
            .await?;
        ensure!(
            new == SKEWED,
            "node {new} took over, expected the skewed node {SKEWED}"
        );
        println!(
            "skewed node {SKEWED} ({offset}) leads {} ms after the kill; lock-delay ends at \
             +{} ms, reap due at +{} ms (from the kill)",
            wall_clock_ms() - killed_ms,
            delay_until_ms.saturating_sub(killed_ms),
            reap_due_ms.saturating_sub(killed_ms),
        );

        let lock_check = async {
            let deadline = Instant::now()
                + Duration::from_millis(delay_until_ms.saturating_sub(wall_clock_ms()))
                + BOUND;
            let (answer, granted_wall_ms) =
                tokio::time::timeout(deadline.saturating_duration_since(Instant::now()), waiter)
                    .await
                    .map_err(|_| {
                        anyhow!(
                            "lock not granted within {BOUND:?} after its lock-delay ended at \
                             {delay_until_ms} (now {})",
                            wall_clock_ms()
                        )
                    })?
                    .context("waiter task")?;
            let grant: LockGrant = answer.context("the waiter's acquire")?;
            ensure!(
                granted_wall_ms + WALL_LEAD_MS >= delay_until_ms,
                "lock granted {} ms before its lock-delay ended ({grant:?})",
                delay_until_ms - granted_wall_ms
            );
            println!(
                "lock granted {} ms after its lock-delay ended",
                granted_wall_ms as i64 - delay_until_ms as i64
            );
            Ok::<_, anyhow::Error>(())
        };
        let reap_check = async {
            let what = format!("the critical instance to be deregistered (due at {reap_due_ms})");
            let timeout =
                Duration::from_millis(reap_due_ms.saturating_sub(wall_clock_ms())) + BOUND;
            let gone_ms = wait_until(timeout, &what, || async {
                let inst = instance(&skewed).await?;
                let now = wall_clock_ms();
                match inst {
                    Some(i) => bail!("still listed at {now}: {:?}", i.status),
                    None => Ok(now),
                }
            })
            .await?;
            ensure!(
                gone_ms + WALL_LEAD_MS >= reap_due_ms,
                "critical instance deregistered {} ms before its deregister_after passed",
                reap_due_ms - gone_ms
            );
            println!(
                "instance deregistered {} ms after it was due",
                gone_ms as i64 - reap_due_ms as i64
            );
            Ok(())
        };
        let (lock, reap) = tokio::join!(lock_check, reap_check);
        let describe = |r: &Result<()>| match r {
            Ok(()) => "ok".to_owned(),
            Err(e) => format!("{e:#}"),
        };
        ensure!(
            lock.is_ok() && reap.is_ok(),
            "lock: {}; instance: {}",
            describe(&lock),
            describe(&reap)
        );
        Ok(())
    })
    .await;
}

#[tokio::test]
async fn a_leader_a_day_ahead_ends_no_deadline_early() {
    deadlines_survive_a_skewed_leader("+1d").await;
}

#[tokio::test]
async fn a_leader_a_day_behind_still_ends_deadlines() {
    deadlines_survive_a_skewed_leader("-1d").await;
}
