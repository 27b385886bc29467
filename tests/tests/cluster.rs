//! Three-node clusters of real `registry-server` processes: leader and follower crashes,
//! whole-cluster restarts, lease liveness across failover, follower reads and writes,
//! and membership changes.

use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _, Result};
use registry_client::{Client, Consistency, LeaseInfo, ReadOptions, ServiceQuery, Uuid};
use tests::{must_pass, wait_until, Cluster, ELECTION_TIMEOUT_MAX, LEASE_TICK};
use tokio::task::JoinSet;

/// A TTL no test outlives: leases that must not expire during the test.
const LONG_TTL: Duration = Duration::from_secs(3600);
/// How long a failover (election of a new leader, writes accepted again) may take.
/// The election timeout is 1–2s; the rest is headroom for a loaded CI machine.
const FAILOVER_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a restarted node gets to catch up.
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(30);
/// Allowance on top of the documented expiry bounds for what they leave out: the
/// commit of the expiry entry, one test poll interval, request latency.
const EXPIRY_SLACK: Duration = Duration::from_secs(1);

/// Creates `n` leases concurrently through `client`, every one of which must be
/// acknowledged; returns their ids.
async fn create_leases(client: &Client, n: usize, ttl: Duration) -> Result<Vec<Uuid>> {
    let mut tasks = JoinSet::new();
    for _ in 0..n {
        let client = client.clone();
        tasks.spawn(async move { client.create_lease(ttl).await });
    }
    let mut ids = Vec::with_capacity(n);
    while let Some(joined) = tasks.join_next().await {
        ids.push(joined?.context("create a lease")?.value.lease);
    }
    Ok(ids)
}

/// Creates a lease, retrying every error for up to [`FAILOVER_TIMEOUT`]: for writes
/// during a failover.
/// A retry after an ambiguous failure may create a second lease; tests do not care.
async fn create_lease_retrying(client: &Client, ttl: Duration) -> Result<LeaseInfo> {
    wait_until(
        FAILOVER_TIMEOUT,
        "a lease creation to be accepted",
        || async { Ok(client.create_lease(ttl).await?.value) },
    )
    .await
}

/// Checks that every lease in `ids` exists, read through `client`.
async fn ensure_all_present(client: &Client, ids: &[Uuid], consistency: Consistency) -> Result<()> {
    for id in ids {
        client
            .get_lease(*id, consistency)
            .await
            .with_context(|| format!("lease {id} ({consistency:?} read)"))?;
    }
    Ok(())
}

/// A node other than `leader`.
fn a_follower(cluster: &Cluster, leader: u64) -> u64 {
    cluster
        .ids()
        .into_iter()
        .find(|&id| id != leader)
        .expect("a cluster of one has no follower")
}

/// Polls a linearizable read of `lease` through `client` until it says the lease does
/// not exist, and fails if that takes past `deadline`. Other errors (no leader during a
/// failover) are retried.
async fn wait_expired(client: &Client, lease: Uuid, deadline: Instant) -> Result<()> {
    let timeout = deadline.saturating_duration_since(Instant::now());
    wait_until(timeout, &format!("lease {lease} to expire"), || async {
        match client.get_lease(lease, Consistency::Linearizable).await {
            Err(e) if e.is_lease_not_found() => Ok(()),
            Err(e) => Err(e.into()),
            Ok(info) => bail!("still there: {:?}", info.value),
        }
    })
    .await
}

#[tokio::test]
async fn leader_sigkill_elects_a_new_leader_and_keeps_every_acknowledged_lease() {
    let cluster = Cluster::start(3, &[]).await.expect("start the cluster");
    must_pass(async {
        let old = cluster.leader_id().await?;
        let old_term = cluster.status(old).await?.term;
        let acknowledged = create_leases(&cluster.client(), 50, LONG_TTL).await?;

        cluster.kill(old).await?;
        let new = cluster.wait_for_leader(Some(old), FAILOVER_TIMEOUT).await?;
        let status = cluster.status(new).await?;
        ensure!(
            status.term > old_term,
            "new leader's term {} <= old {old_term}",
            status.term
        );

        let after = create_lease_retrying(&cluster.client(), LONG_TTL).await?;
        let leader = cluster.client_for(new);
        ensure_all_present(&leader, &acknowledged, Consistency::Linearizable).await?;
        ensure_all_present(&leader, &[after.lease], Consistency::Linearizable).await
    })
    .await;
}

#[tokio::test]
async fn restarted_follower_catches_up_on_writes_it_missed() {
    let cluster = Cluster::start(3, &[]).await.expect("start the cluster");
    must_pass(async {
        let leader = cluster.leader_id().await?;
        let follower = a_follower(&cluster, leader);
        let mut ids = create_leases(&cluster.client(), 10, LONG_TTL).await?;

        cluster.kill(follower).await?;
        ids.extend(create_leases(&cluster.client(), 40, LONG_TTL).await?);

        cluster.restart(follower).await?;
        let local = cluster.client_for(follower);
        wait_until(
            CATCH_UP_TIMEOUT,
            "the follower's local state to hold every lease",
            || ensure_all_present(&local, &ids, Consistency::Stale),
        )
        .await?;
        cluster
            .wait_caught_up(follower, leader, CATCH_UP_TIMEOUT)
            .await?;
        ensure!(
            cluster.leader_id().await? == leader,
            "leadership moved during the test"
        );
        Ok(())
    })
    .await;
}

#[tokio::test]
async fn follower_behind_the_leaders_purged_log_is_sent_a_snapshot() {
    let cluster = Cluster::start(3, &["--snapshot-every", "20"])
        .await
        .expect("start the cluster");
    must_pass(async {
        let leader = cluster.leader_id().await?;
        let follower = a_follower(&cluster, leader);
        let mut ids = create_leases(&cluster.client(), 5, LONG_TTL).await?;
        cluster.wait_caught_up(follower, leader, CATCH_UP_TIMEOUT).await?;
        let follower_last = cluster.status(follower).await?.last_log_index;

        cluster.kill(follower).await?;
        // Write until the entries the follower lacks are gone from the leader's log, so
        // only a snapshot can bring it up to date. One at a time: the server batches
        // concurrent grants into one entry, and the log is what has to grow here.
        let client = cluster.client();
        let mut purged = None;
        for _ in 0..40 {
            for _ in 0..10 {
                ids.push(client.create_lease(LONG_TTL).await?.value.lease);
            }
            purged = cluster.status(leader).await?.purged_index;
            if purged.is_some_and(|p| p > follower_last) {
                break;
            }
        }
        ensure!(
            purged.is_some_and(|p| p > follower_last),
            "after {} leases the leader's purged_index is {purged:?}, follower's last index {follower_last}",
            ids.len()
        );

        cluster.restart(follower).await?;
        let local = cluster.client_for(follower);
        wait_until(CATCH_UP_TIMEOUT, "the follower's local state to hold every lease", || {
            ensure_all_present(&local, &ids, Consistency::Stale)
        })
        .await?;
        cluster.wait_caught_up(follower, leader, CATCH_UP_TIMEOUT).await?;
        let status = cluster.status(follower).await?;
        ensure!(
            status.snapshot_index.is_some_and(|s| s > follower_last),
            "follower's snapshot_index {:?} should be past its old last index {follower_last}",
            status.snapshot_index
        );
        Ok(())
    })
    .await;
}

#[tokio::test]
async fn whole_cluster_restart_after_sigterm_and_after_sigkill_keeps_acknowledged_leases() {
    let cluster = Cluster::start(3, &[]).await.expect("start the cluster");
    must_pass(async {
        let mut ids = create_leases(&cluster.client(), 30, LONG_TTL).await?;

        // Clean shutdown of every node (each must exit with success), then start again.
        cluster.stop_all().await?;
        let leader = cluster.restart_all().await?;
        ensure_all_present(&cluster.client_for(leader), &ids, Consistency::Linearizable).await?;
        ids.extend(create_leases(&cluster.client(), 30, LONG_TTL).await?);

        // Power cut: what was acknowledged was fsynced on a majority and must survive.
        cluster.kill_all().await?;
        let leader = cluster.restart_all().await?;
        ensure_all_present(&cluster.client_for(leader), &ids, Consistency::Linearizable).await?;
        create_leases(&cluster.client(), 1, LONG_TTL).await?;
        Ok(())
    })
    .await;
}

#[tokio::test]
async fn abandoned_lease_expires_after_its_ttl_and_within_ttl_plus_tick() {
    let cluster = Cluster::start(3, &[]).await.expect("start the cluster");
    must_pass(async {
        let ttl = Duration::from_secs(2);
        let leader = cluster.client_for(cluster.leader_id().await?);
        let sent = Instant::now();
        let lease = leader.create_lease(ttl).await?.value.lease;
        let acknowledged = Instant::now();

        // The leader's deadline is at least TTL after it granted, which was after `sent`.
        tokio::time::sleep_until((sent + ttl - Duration::from_millis(300)).into()).await;
        leader
            .get_lease(lease, Consistency::Linearizable)
            .await
            .context("the lease was gone before its TTL had passed")?;

        // Without failover: gone by TTL + lease tick (+ commit time).
        wait_expired(
            &leader,
            lease,
            acknowledged + ttl + LEASE_TICK + EXPIRY_SLACK,
        )
        .await
    })
    .await;
}

#[tokio::test]
async fn kept_alive_lease_survives_a_leader_kill_and_abandoned_one_expires_within_bound() {
    let cluster = Cluster::start(3, &[]).await.expect("start the cluster");
    must_pass(async {
        let kept_ttl = Duration::from_secs(3);
        let abandoned_ttl = Duration::from_secs(2);
        let old = cluster.leader_id().await?;
        let client = cluster.client();
        let kept = client.create_lease(kept_ttl).await?.value.lease;
        let sent = Instant::now();
        let abandoned = client.create_lease(abandoned_ttl).await?.value.lease;
        let acknowledged = Instant::now();

        // Keep `kept` alive every TTL/4 through any live node, retrying errors sooner.
        let (stop_tx, mut stop_rx) = tokio::sync::oneshot::channel::<()>();
        let keeper = tokio::spawn({
            let client = client.clone();
            async move {
                let mut successes: Vec<Instant> = Vec::new();
                loop {
                    let pause = match client.keepalive(kept).await {
                        Ok(_) => {
                            successes.push(Instant::now());
                            kept_ttl / 4
                        }
                        Err(e) if e.is_lease_not_found() => {
                            bail!("the kept-alive lease expired: {e}")
                        }
                        Err(_) => Duration::from_millis(100),
                    };
                    tokio::select! {
                        _ = &mut stop_rx => return Ok(successes),
                        _ = tokio::time::sleep(pause) => {}
                    }
                }
            }
        });

        tokio::time::sleep(Duration::from_millis(500)).await;
        cluster.kill(old).await?;
        let killed = Instant::now();

        // The abandoned lease must outlive its TTL from creation even across the kill.
        // Read it from the survivors' local state: no leader is needed for that, and no
        // expiry can have been committed before the old leader's deadline.
        tokio::time::sleep_until((sent + abandoned_ttl - Duration::from_millis(300)).into()).await;
        for id in cluster.live_ids() {
            cluster
                .client_for(id)
                .get_lease(abandoned, Consistency::Stale)
                .await
                .with_context(|| format!("abandoned lease gone on node {id} before its TTL"))?;
        }
        // With a failover in between: gone by 2·TTL + failover time + tick (+ commit), the
        // README's bound. Failover time: a follower honours the dead leader's lease
        // (openraft: the maximum election timeout) and then waits one random election
        // timeout (at most the maximum) before it campaigns.
        let failover = 2 * ELECTION_TIMEOUT_MAX;
        let bound = 2 * abandoned_ttl + failover + LEASE_TICK + EXPIRY_SLACK;
        wait_expired(&cluster.client(), abandoned, acknowledged + bound).await?;

        let new = cluster.wait_for_leader(Some(old), FAILOVER_TIMEOUT).await?;
        let elected = Instant::now();
        // Three TTLs after the kill, the kept lease must still be there.
        tokio::time::sleep_until((killed + 3 * kept_ttl).into()).await;
        let _ = stop_tx.send(());
        let successes = keeper.await??;
        ensure!(
            successes.iter().any(|t| *t > elected),
            "no keepalive succeeded after node {new} became leader"
        );
        cluster
            .client_for(new)
            .get_lease(kept, Consistency::Linearizable)
            .await
            .context("the kept-alive lease is gone after the failover")?;
        Ok(())
    })
    .await;
}

#[tokio::test]
async fn followers_accept_writes_and_serve_stale_and_linearizable_reads() {
    let cluster = Cluster::start(3, &[]).await.expect("start the cluster");
    must_pass(async {
        let leader = cluster.leader_id().await?;
        let followers: Vec<u64> = cluster
            .ids()
            .into_iter()
            .filter(|&id| id != leader)
            .collect();
        let [f1, f2] = followers[..] else {
            bail!("expected two followers, got {followers:?}")
        };
        let on_leader = cluster.client_for(leader);
        for id in cluster.ids() {
            let ready = tests::http_status(&cluster.addr(id), "/readyz").await?;
            ensure!(ready == 200, "/readyz on node {id} answered {ready}");
        }

        let mut last = None;
        for round in 0..10 {
            let (via, other) = if round % 2 == 0 { (f1, f2) } else { (f2, f1) };
            let created = cluster.client_for(via).create_lease(LONG_TTL).await?.value;
            let lease = created.lease;
            on_leader
                .get_lease(lease, Consistency::Linearizable)
                .await
                .with_context(|| format!("lease {lease} created via follower {via}, on leader"))?;
            // Linearizable on the other follower: must see the write `via` acknowledged.
            let read = cluster
                .client_for(other)
                .get_lease(lease, Consistency::Linearizable)
                .await
                .with_context(|| format!("lease {lease} created via {via}, read on {other}"))?;
            ensure!(
                read.index.is_some_and(|i| i >= created.granted_index),
                "read on node {other} reflects index {:?}, before the grant at {}",
                read.index,
                created.granted_index
            );
            ensure!(read.value.lease == lease && read.value.ttl_ms == created.ttl_ms);
            // Stale reads come from local state, which catches up shortly.
            let local = cluster.client_for(other);
            wait_until(
                Duration::from_secs(5),
                "a stale read on a follower",
                || async { Ok(local.get_lease(lease, Consistency::Stale).await?) },
            )
            .await?;
            last = Some(lease);
        }
        let lease = last.context("no lease created")?;

        // Keepalive through a follower reaches the leader's clock.
        let kept = cluster.client_for(f1).keepalive(lease).await?.value;
        ensure!(
            kept.remaining_ms.is_some(),
            "keepalive via a follower had no remaining_ms"
        );

        // Revoke through a follower; the other follower and the leader see it gone.
        let revoked = cluster.client_for(f2).revoke_lease(lease).await?.value;
        ensure!(
            revoked.revoked && revoked.lease == lease,
            "unexpected answer {revoked:?}"
        );
        let err = cluster
            .client_for(f1)
            .get_lease(lease, Consistency::Linearizable)
            .await;
        ensure!(
            err.as_ref().is_err_and(|e| e.is_lease_not_found()),
            "revoked lease read on follower: {err:?}"
        );
        let err = on_leader.keepalive(lease).await;
        ensure!(
            err.as_ref().is_err_and(|e| e.is_lease_not_found()),
            "keepalive of a revoked lease: {err:?}"
        );
        Ok(())
    })
    .await;
}

#[tokio::test]
async fn joined_server_becomes_a_voter_and_can_be_removed() {
    let mut cluster = Cluster::start(3, &[]).await.expect("start the cluster");
    let leader = cluster.leader_id().await.expect("a leader");
    cluster
        .start_joining(4, leader)
        .await
        .expect("start node 4 with --join");
    must_pass(async {
        let addr4 = cluster.addr(4);
        wait_until(FAILOVER_TIMEOUT, "node 4 to be a voter", || async {
            let members = cluster.status(leader).await?.members;
            ensure!(
                members
                    .iter()
                    .any(|m| m.id == 4 && m.voter && m.addr == addr4),
                "members: {members:?}"
            );
            Ok(())
        })
        .await?;
        // It replicates: a new lease shows up in its local state.
        let lease = cluster
            .client_for(leader)
            .create_lease(LONG_TTL)
            .await?
            .value
            .lease;
        let local = cluster.client_for(4);
        wait_until(
            CATCH_UP_TIMEOUT,
            "node 4 to replicate a new lease",
            || async { Ok(local.get_lease(lease, Consistency::Stale).await?) },
        )
        .await?;

        let removed = cluster.client_for(leader).remove_member(4).await?.value;
        ensure!(
            removed.members.iter().all(|m| m.id != 4),
            "node 4 still listed after removal: {:?}",
            removed.members
        );
        wait_until(FAILOVER_TIMEOUT, "every node to drop node 4", || async {
            for id in [1, 2, 3] {
                let members = cluster.status(id).await?.members;
                ensure!(
                    members.iter().all(|m| m.id != 4),
                    "node {id} lists {members:?}"
                );
            }
            Ok(())
        })
        .await?;
        cluster.stop(4).await?;
        // The remaining three still take writes.
        create_lease_retrying(&cluster.client(), LONG_TTL).await?;
        Ok(())
    })
    .await;
}

#[tokio::test]
async fn a_learner_serves_stale_reads_and_blocking_queries_without_voting() {
    let mut cluster = Cluster::start(3, &[]).await.expect("start the cluster");
    let leader = cluster.leader_id().await.expect("a leader");
    cluster
        .start_joining_with(4, leader, &["--learner"])
        .await
        .expect("start node 4 with --join --learner");
    must_pass(async {
        wait_until(FAILOVER_TIMEOUT, "node 4 to be a learner", || async {
            let members = cluster.status(leader).await?.members;
            ensure!(
                members.iter().any(|m| m.id == 4 && !m.voter),
                "members: {members:?}"
            );
            Ok(())
        })
        .await?;
        let registration = serde_json::from_value(serde_json::json!({
            "address": "127.0.0.1", "port": 9000, "ttl": "1h"
        }))?;
        let writer = cluster.client_for(leader);
        writer.register("web", "a", &registration).await?;
        let learner = cluster.client_for(4);
        let stale = ReadOptions {
            consistency: Consistency::Stale,
            ..ReadOptions::default()
        };
        let query = ServiceQuery::default();
        let seen = wait_until(
            CATCH_UP_TIMEOUT,
            "node 4 to replicate the instance",
            || async {
                let answer = learner.service("web", &query, stale).await?;
                ensure!(answer.value.instances.len() == 1, "{:?}", answer.value);
                answer.index.context("an index header")
            },
        )
        .await?;
        // A blocking query parked on the learner returns with the next change.
        let blocking = ReadOptions {
            consistency: Consistency::Stale,
            ..ReadOptions::blocking(seen, Duration::from_secs(30))
        };
        let parked = {
            let learner = learner.clone();
            let query = query.clone();
            tokio::spawn(async move { learner.service("web", &query, blocking).await })
        };
        writer.register("web", "b", &registration).await?;
        let woken = tokio::time::timeout(CATCH_UP_TIMEOUT, parked)
            .await
            .context("the blocking query on the learner did not return")???;
        ensure!(
            woken.value.instances.len() == 2,
            "woken with {:?}",
            woken.value
        );
        // It does not vote: it sees itself as a learner, and the voters are the three
        // that started. (Stopping voters would not tell: with the learner counted or
        // not, one voter of three and a learner are no quorum either way.)
        let status = cluster.status(4).await?;
        ensure!(
            status.role == registry_client::Role::Learner,
            "node 4's role is {:?}",
            status.role
        );
        let mut voters: Vec<u64> = cluster
            .status(leader)
            .await?
            .members
            .iter()
            .filter(|m| m.voter)
            .map(|m| m.id)
            .collect();
        voters.sort_unstable();
        ensure!(voters == [1, 2, 3], "voters: {voters:?}");
        Ok(())
    })
    .await;
}

#[tokio::test]
async fn survivor_without_quorum_refuses_writes_with_503_until_quorum_returns() {
    let cluster = Cluster::start(3, &[]).await.expect("start the cluster");
    must_pass(async {
        let leader = cluster.leader_id().await?;
        let survivor = a_follower(&cluster, leader);
        let other = cluster
            .ids()
            .into_iter()
            .find(|&id| id != leader && id != survivor);
        let other = other.context("a third node")?;
        cluster.kill(leader).await?;
        cluster.kill(other).await?;

        // Every write is refused with a 503 (never another error), and once the survivor
        // knows it has no leader it says so with `no_leader` and a Retry-After.
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()?;
        let url = format!("http://{}/v1/leases", cluster.addr(survivor));
        wait_until(
            FAILOVER_TIMEOUT,
            "a 503 no_leader with Retry-After",
            || async {
                let response = http
                    .post(&url)
                    .json(&serde_json::json!({"ttl": "1h"}))
                    .send()
                    .await?;
                let status = response.status().as_u16();
                let retry_after = response
                    .headers()
                    .contains_key(reqwest::header::RETRY_AFTER);
                let body = response.text().await?;
                if status != 503 {
                    // Not retryable: a write without quorum must never be acknowledged.
                    panic!("a write without quorum answered {status}: {body}");
                }
                let error: api_spec::ErrorBody = serde_json::from_str(&body)
                    .with_context(|| format!("503 without an error body: {body:?}"))?;
                ensure!(
                    error.error.code == api_spec::codes::NO_LEADER,
                    "code {:?}",
                    error.error.code
                );
                ensure!(retry_after, "no Retry-After header");
                Ok(())
            },
        )
        .await?;
        // It may remember the dead leader until its election timeout; after that it is
        // a candidate that cannot win, and not ready.
        let addr = cluster.addr(survivor);
        wait_until(
            FAILOVER_TIMEOUT,
            "/readyz to fail without a leader",
            || async {
                let ready = tests::http_status(&addr, "/readyz").await?;
                ensure!(ready == 503, "/readyz answered {ready}");
                Ok(())
            },
        )
        .await?;

        // One node back is a majority again: a leader is elected and writes go through.
        cluster.restart(other).await?;
        cluster.wait_for_leader(None, FAILOVER_TIMEOUT).await?;
        create_lease_retrying(&cluster.client(), LONG_TTL).await?;
        Ok(())
    })
    .await;
}
