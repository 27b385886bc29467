//! Three correctness holes of the server core, each on a real three-node cluster:
//! a leader cut off from its quorum answers writes with a 503 instead of hanging; a
//! waiting lock request that went away while there was no quorum is still withdrawn once
//! there is one; a follower behind entries larger than a node-to-node message still
//! catches up (replication sends fewer entries per message).

use std::time::{Duration, Instant};

use anyhow::{ensure, Context as _, Result};
use api_spec::{LockGrant, LockInfo};
use tests::{must_pass, wait_until, Cluster};

/// How long a failover or a catch-up may take on a loaded CI machine.
const SETTLE: Duration = Duration::from_secs(30);

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("an HTTP client")
}

/// Hole 4: with both followers frozen the leader cannot commit. Before, `client_write`
/// was awaited without bound and the request hung; now it is a 503 with `Retry-After`
/// after `--propose-timeout` (5 s by default).
#[tokio::test]
async fn a_leader_without_quorum_answers_writes_with_503_instead_of_hanging() {
    let cluster = Cluster::start(3, &[]).await.expect("start the cluster");
    must_pass(async {
        let leader = cluster.leader_id().await?;
        let followers: Vec<u64> = cluster
            .ids()
            .into_iter()
            .filter(|&id| id != leader)
            .collect();
        for &id in &followers {
            cluster.pause(id)?;
        }
        let started = Instant::now();
        let answer = http()
            .post(format!("http://{}/v1/leases", cluster.addr(leader)))
            .json(&serde_json::json!({"ttl": "1h"}))
            .send()
            .await
            .context("the write hung past the client's 30s timeout")?;
        let elapsed = started.elapsed();
        let status = answer.status().as_u16();
        let retry_after = answer.headers().contains_key(reqwest::header::RETRY_AFTER);
        let body = answer.text().await?;
        ensure!(status == 503, "answered {status}: {body}");
        ensure!(retry_after, "503 without Retry-After: {body}");
        // The propose timeout (1s) plus, should the leader step down meanwhile, the wait
        // for a new one (3 election timeouts): far below the client's 30s.
        ensure!(
            elapsed < Duration::from_secs(10),
            "answered after {elapsed:?}"
        );
        let error: api_spec::ErrorBody = serde_json::from_str(&body)?;
        ensure!(
            [api_spec::codes::UNAVAILABLE, api_spec::codes::NO_LEADER]
                .contains(&error.error.code.as_str()),
            "code {:?}",
            error.error.code
        );

        // With its quorum back, the same leader (or a new one) takes writes again.
        for &id in &followers {
            cluster.resume(id)?;
        }
        wait_until(SETTLE, "a write to be accepted again", || async {
            let answer = http()
                .post(format!("http://{}/v1/leases", cluster.addr(leader)))
                .json(&serde_json::json!({"ttl": "1h"}))
                .send()
                .await?;
            ensure!(answer.status() == 200, "{}", answer.status());
            Ok(())
        })
        .await
    })
    .await;
}

async fn lock_state(cluster: &Cluster, node: u64, name: &str) -> Result<LockInfo> {
    let answer = http()
        .get(format!("http://{}/v1/locks/{name}", cluster.addr(node)))
        .send()
        .await?;
    ensure!(answer.status() == 200, "GET lock: {}", answer.status());
    Ok(answer.json().await?)
}

/// Hole 3: a waiter parked on a follower disconnects while the follower has no leader,
/// so the first `Withdraw` cannot commit. Before, that failure was only logged and the
/// waiter stayed in the queue (its lease alive for an hour), to be handed the lock
/// nobody would ever use; now the withdrawal is retried until it commits.
#[tokio::test]
async fn a_waiter_that_went_away_without_quorum_is_withdrawn_once_there_is_one() {
    let cluster = Cluster::start(3, &[]).await.expect("start the cluster");
    must_pass(async {
        let leader = cluster.leader_id().await?;
        let mut others = cluster.ids().into_iter().filter(|&id| id != leader);
        let (follower, other) = (
            others.next().context("a follower")?,
            others.next().context("a third node")?,
        );
        let name = "abandoned";
        let held: LockGrant = http()
            .post(format!(
                "http://{}/v1/locks/{name}/acquire",
                cluster.addr(leader)
            ))
            .json(&serde_json::json!({"ttl": "1h", "holder": "a"}))
            .send()
            .await?
            .json()
            .await?;

        // The waiter, parked on the follower.
        let url = format!("http://{}/v1/locks/{name}/acquire", cluster.addr(follower));
        let waiter = tokio::spawn(async move {
            http()
                .post(url)
                .json(&serde_json::json!({"ttl": "1h", "holder": "b", "wait": "5m"}))
                .send()
                .await
        });
        wait_until(SETTLE, "the waiter to queue", || async {
            let lock = lock_state(&cluster, leader, name).await?;
            ensure!(lock.waiters.len() == 1, "waiters {:?}", lock.waiters);
            Ok(())
        })
        .await?;

        // No quorum for the follower, then the waiter goes away.
        cluster.pause(leader)?;
        cluster.pause(other)?;
        waiter.abort();
        let _ = waiter.await;
        wait_until(
            SETTLE,
            "the follower to fail to withdraw the waiter",
            || async {
                let log = cluster.log_tail(follower, 200);
                ensure!(
                    log.contains("could not withdraw an abandoned request"),
                    "no such line yet"
                );
                Ok(())
            },
        )
        .await?;
        cluster.resume(leader)?;
        cluster.resume(other)?;

        wait_until(
            SETTLE,
            "the abandoned waiter to leave the queue",
            || async {
                let lock = lock_state(&cluster, follower, name).await?;
                ensure!(lock.waiters.is_empty(), "waiters {:?}", lock.waiters);
                Ok(())
            },
        )
        .await?;
        // And releasing hands the lock to nobody.
        wait_until(SETTLE, "the holder's release", || async {
            let answer = http()
                .post(format!(
                    "http://{}/v1/locks/{name}/release",
                    cluster.addr(follower)
                ))
                .json(&serde_json::json!({"token": held.token}))
                .send()
                .await?;
            ensure!(answer.status() == 200, "release: {}", answer.status());
            Ok(())
        })
        .await?;
        let lock = lock_state(&cluster, follower, name).await?;
        ensure!(lock.holder.is_none(), "handed to {:?}", lock.holder);
        Ok(())
    })
    .await;
}

/// Hole 5: a follower that missed more than one message's worth of entries. Before,
/// the leader sent them all in one AppendEntries, the follower answered 413, openraft
/// took that for a network error and retried the same message forever. Now the leader
/// answers itself `PayloadTooLarge` before sending (and maps a peer's 413 to it), so
/// openraft sends fewer entries per message.
#[tokio::test]
async fn a_follower_behind_more_than_one_message_of_entries_catches_up() {
    // 1 MiB messages; each registration below is about 40 KB, so 60 of them need three
    // messages or more.
    let cluster = Cluster::start(3, &["--raft-max-message-bytes", "1048576"])
        .await
        .expect("start the cluster");
    must_pass(async {
        let leader = cluster.leader_id().await?;
        let follower = cluster
            .ids()
            .into_iter()
            .find(|&id| id != leader)
            .context("a follower")?;
        cluster.kill(follower).await?;

        let meta: serde_json::Map<String, serde_json::Value> = (0..api_spec::rules::MAX_META)
            .map(|i| {
                (
                    format!("key-{i}"),
                    "v".repeat(api_spec::rules::MAX_META_VALUE_LEN).into(),
                )
            })
            .collect();
        let count = 60;
        for i in 0..count {
            let answer = http()
                .put(format!(
                    "http://{}/v1/services/big/instances/i{i}",
                    cluster.addr(leader)
                ))
                .json(&serde_json::json!({
                    "address": "127.0.0.1", "port": 8000 + i, "ttl": "1h", "meta": meta,
                }))
                .send()
                .await?;
            let status = answer.status();
            ensure!(
                status == 200,
                "register i{i}: {status} {}",
                answer.text().await?
            );
        }

        cluster.restart(follower).await?;
        cluster.wait_caught_up(follower, leader, SETTLE).await?;
        let answer: api_spec::ServiceInstances = http()
            .get(format!(
                "http://{}/v1/services/big?stale",
                cluster.addr(follower)
            ))
            .send()
            .await?
            .json()
            .await?;
        ensure!(
            answer.instances.len() == count as usize,
            "the follower has {} instances",
            answer.instances.len()
        );
        Ok(())
    })
    .await;
}
