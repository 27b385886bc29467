//! The client's background handles against real `registry-server` processes: a
//! registration that heartbeats, comes back after being deregistered behind its back and
//! deregisters on shutdown and drop; a lock guard and a registration riding out a leader
//! SIGKILL; a lock guard cut off from the registry signalling `lost()` before the server
//! grants the lock to someone else; lock hand-over and release on drop; elections through
//! leadership handles and an observer; many locks on one session's lease, and a lock
//! under a lease someone else renews.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::future::Future;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, ensure, Context as _, Result};
use api_spec::{codes, ElectionLeader, Instance, InstanceStatus, RegisterRequest};
use registry_client::{
    CampaignOptions, Client, Consistency, LockOptions, LostReason, Observer, ReadOptions,
    ServiceQuery, SessionOptions,
};
use tests::{must_pass, wait_until, Cluster};

/// How long a failover (new leader elected, requests served again) may take.
const FAILOVER_TIMEOUT: Duration = Duration::from_secs(20);
/// How soon something the test caused must become visible.
const SOON: Duration = Duration::from_secs(5);
/// How long a waiting acquire or campaign may wait in line.
const LONG_WAIT: Duration = Duration::from_secs(30);

/// The host's wall clock in ms since the epoch: the clock the leader stamps grants with.
fn wall_clock_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn register_request(ttl: &str) -> RegisterRequest {
    RegisterRequest {
        address: "10.0.0.7".into(),
        port: 8080,
        tags: vec!["v1".into()],
        meta: BTreeMap::new(),
        zone: None,
        region: None,
        weight: None,
        ttl: Some(ttl.into()),
        deregister_after: Some("1m".into()),
        lease: None,
        checks: Vec::new(),
    }
}

/// The instance as the registry shows it, whatever its status; `None` if unknown.
async fn instance(client: &Client, service: &str, id: &str) -> Result<Option<Instance>> {
    let any_status = ServiceQuery {
        status: Some(None),
        ..ServiceQuery::default()
    };
    let answer = client
        .service(service, &any_status, ReadOptions::default())
        .await?;
    Ok(answer.value.instances.into_iter().find(|i| i.id == id))
}

/// Fails unless `check` passes at every probe for the whole of `duration`.
async fn ensure_for<F, Fut>(duration: Duration, what: &str, mut check: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<()>>,
{
    let started = Instant::now();
    loop {
        check()
            .await
            .with_context(|| format!("{what} (after {:?})", started.elapsed()))?;
        if started.elapsed() >= duration {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Reads observer changes until one satisfies `wanted`, within `timeout`; returns it.
async fn observe_until(
    observer: &mut Observer,
    what: &str,
    wanted: impl Fn(&Option<ElectionLeader>) -> bool,
) -> Result<Option<ElectionLeader>> {
    let mut seen = Vec::new();
    let search = async {
        loop {
            let change = observer.next().await?;
            if wanted(&change) {
                return Ok::<_, anyhow::Error>(change);
            }
            seen.push(change);
        }
    };
    match tokio::time::timeout(SOON, search).await {
        Ok(found) => found,
        Err(_) => Err(anyhow!(
            "observer did not see {what} within {SOON:?}; saw {seen:?}"
        )),
    }
}

#[tokio::test]
async fn registration_heartbeats_comes_back_and_deregisters() {
    let cluster = Cluster::start_single(&[]).await.expect("start the server");
    must_pass(async {
        let client = cluster.client();
        let service = "web";
        let reg = client
            .register_instance(service, "web-1", register_request("1s"))
            .await?;
        let first = reg.instance();
        ensure!(
            first.ttl_ms == Some(1000)
                && first.status == InstanceStatus::Passing
                && first.own_lease,
            "{first:?}"
        );

        // Heartbeats keep it passing, on the same lease, through several TTLs.
        ensure_for(
            Duration::from_millis(3500),
            "web-1 to stay passing",
            || async {
                let seen = instance(&client, service, "web-1").await?;
                ensure!(
                    seen.as_ref()
                        .is_some_and(|i| i.status == InstanceStatus::Passing
                            && i.lease == first.lease
                            && i.modify_index == first.modify_index),
                    "{seen:?}"
                );
                Ok(())
            },
        )
        .await?;
        let state = reg.state();
        ensure!(
            state.heartbeats >= 6 && state.registrations == 1 && state.consecutive_failures == 0,
            "{state:?}"
        );

        // Deregistered behind its back: the next heartbeat hears `instance_not_found` and
        // the handle registers it again, with a new lease it then keeps alive.
        client.deregister(service, "web-1").await?;
        let again = wait_until(SOON, "the handle to register web-1 again", || async {
            let state = reg.state();
            ensure!(state.registrations == 2, "{state:?}");
            let seen = instance(&client, service, "web-1")
                .await?
                .ok_or_else(|| anyhow!("web-1 is not registered; {state:?}"))?;
            ensure!(
                seen.status == InstanceStatus::Passing && seen.lease == reg.lease(),
                "{seen:?}, handle {state:?}"
            );
            Ok(seen)
        })
        .await?;
        ensure!(
            again.lease != first.lease,
            "same lease after re-registering"
        );
        let error = reg.last_error();
        ensure!(
            error
                .as_ref()
                .is_some_and(|e| e.code() == Some(codes::INSTANCE_NOT_FOUND)),
            "last error {error:?}"
        );
        ensure_for(
            Duration::from_millis(2500),
            "web-1 to stay passing after coming back",
            || async {
                let seen = instance(&client, service, "web-1").await?;
                ensure!(
                    seen.as_ref().is_some_and(
                        |i| i.status == InstanceStatus::Passing && i.lease == again.lease
                    ),
                    "{seen:?}"
                );
                Ok(())
            },
        )
        .await?;

        // Shutdown deregisters.
        reg.shutdown().await?;
        let seen = instance(&client, service, "web-1").await?;
        ensure!(seen.is_none(), "web-1 after shutdown: {seen:?}");

        // Drop deregisters too, and leaves no heartbeat task behind: an instance that
        // someone else registers under the same id afterwards turns critical after its
        // TTL (a leftover task would keep it passing, or register it back).
        let reg = client
            .register_instance(service, "web-2", register_request("1s"))
            .await?;
        drop(reg);
        wait_until(SOON, "the dropped handle to deregister web-2", || async {
            let seen = instance(&client, service, "web-2").await?;
            ensure!(seen.is_none(), "{seen:?}");
            Ok(())
        })
        .await?;
        let raw = client
            .register(service, "web-2", &register_request("1s"))
            .await?
            .value;
        let critical = wait_until(SOON, "web-2 to turn critical", || async {
            let seen = instance(&client, service, "web-2")
                .await?
                .ok_or_else(|| anyhow!("web-2 vanished"))?;
            ensure!(seen.status == InstanceStatus::Critical, "{seen:?}");
            Ok(seen)
        })
        .await?;
        ensure!(critical.lease == raw.lease, "{critical:?} after {raw:?}");
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn leader_kill_is_invisible_to_a_registration_and_a_lock_guard() {
    const LOCK_TTL: Duration = Duration::from_secs(5);
    let cluster = Cluster::start(3, &[]).await.expect("start the cluster");
    must_pass(async {
        let client = cluster.client(); // all three endpoints
        let reg = client
            .register_instance("api", "api-1", register_request("3s"))
            .await?;
        let registered = reg.instance();
        let guard = client
            .lock(
                "kill-proof",
                LockOptions {
                    ttl: LOCK_TTL,
                    holder: Some("kill-proof".into()),
                    ..LockOptions::default()
                },
            )
            .await?;
        let lost = guard.lost_signal();
        let lost_at = tokio::spawn({
            let lost = lost.clone();
            async move { (lost.lost().await, Instant::now()) }
        });
        wait_until(SOON, "a first renewal of both", || async {
            ensure!(
                guard.renewals() >= 1 && reg.state().heartbeats >= 1,
                "{} renewals, {:?}",
                guard.renewals(),
                reg.state()
            );
            Ok(())
        })
        .await?;

        let old = cluster.leader_id().await?;
        cluster.kill(old).await?;
        let killed = Instant::now();
        cluster.wait_for_leader(Some(old), FAILOVER_TIMEOUT).await?;
        let (renewals, heartbeats) = (guard.renewals(), reg.state().heartbeats);
        wait_until(
            FAILOVER_TIMEOUT,
            "renewals accepted after the failover",
            || async {
                ensure!(
                    guard.renewals() >= renewals + 2 && reg.state().heartbeats >= heartbeats + 2,
                    "{} renewals, {:?}",
                    guard.renewals(),
                    reg.state()
                );
                Ok(())
            },
        )
        .await?;

        // Until well past one lock TTL after the kill: the guard never doubted, and the
        // instance was never touched (same lease, same modify index: never critical, never
        // registered again).
        let survivors = cluster.client();
        let hold_until = killed + LOCK_TTL + Duration::from_secs(1);
        ensure_for(
            hold_until.saturating_duration_since(Instant::now()),
            "the handles to ride out the failover",
            || async {
                ensure!(
                    !lost.is_lost(),
                    "lock lost: {:?}, last error {:?}",
                    lost.reason(),
                    lost.last_error()
                );
                let state = reg.state();
                ensure!(
                    state.registrations == 1 && state.instance.lease == registered.lease,
                    "{state:?}"
                );
                let seen = instance(&survivors, "api", "api-1").await?;
                ensure!(
                    seen.as_ref()
                        .is_some_and(|i| i.status == InstanceStatus::Passing
                            && i.lease == registered.lease
                            && i.modify_index == registered.modify_index),
                    "{seen:?}, registered {registered:?}"
                );
                Ok(())
            },
        )
        .await?;
        ensure!(!lost_at.is_finished(), "lost() fired: {:?}", lost_at.await?);
        let info = survivors
            .lock_info("kill-proof", ReadOptions::default())
            .await?
            .value;
        ensure!(
            info.holder
                .as_ref()
                .is_some_and(|h| h.token == Some(guard.token()) && h.lease == Some(guard.lease())),
            "{info:?}, guard token {} lease {}",
            guard.token(),
            guard.lease()
        );

        let released = guard.release().await?;
        ensure!(released.released && released.lease_revoked, "{released:?}");
        reg.shutdown().await?;
        let seen = instance(&survivors, "api", "api-1").await?;
        ensure!(seen.is_none(), "api-1 after shutdown: {seen:?}");
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn lost_fires_before_the_lock_is_granted_to_another_client() {
    const TTL: Duration = Duration::from_secs(2);
    let cluster = Cluster::start(3, &[]).await.expect("start the cluster");
    must_pass(async {
        let name = "cut-off";
        let leader = cluster.leader_id().await?;
        let ids = cluster.ids();
        let follower = ids.iter().copied().find(|&id| id != leader).unwrap();
        // The holder talks to one follower only; killing it cuts the holder off while the
        // registry (two nodes, leader included) carries on.
        let holder = cluster
            .client_for(follower)
            .lock(
                name,
                LockOptions {
                    ttl: TTL,
                    holder: Some("cut-off holder".into()),
                    // No lock-delay: the grant may follow the expiry at once, so only the
                    // safety margin stands between lost() and the next grant.
                    lock_delay: Some(Duration::ZERO),
                    ..LockOptions::default()
                },
            )
            .await?;
        wait_until(SOON, "a first renewal", || async {
            ensure!(holder.renewals() >= 1, "{} renewals", holder.renewals());
            Ok(())
        })
        .await?;

        let others = Client::new(
            ids.iter()
                .filter(|&&id| id != follower)
                .map(|&id| cluster.addr(id)),
        )?;
        let waiter = tokio::spawn({
            let others = others.clone();
            async move {
                let options = LockOptions {
                    ttl: TTL,
                    wait: Some(LONG_WAIT),
                    holder: Some("waiter".into()),
                    ..LockOptions::default()
                };
                let guard = others.lock(name, options).await;
                (guard, Instant::now())
            }
        });
        wait_until(SOON, "the waiter to queue", || async {
            let info = others.lock_info(name, ReadOptions::default()).await?.value;
            ensure!(info.waiters.len() == 1, "{info:?}");
            Ok(())
        })
        .await?;

        let signal = holder.lost_signal();
        let lost = tokio::spawn(async move {
            let reason = signal.lost().await;
            (reason, Instant::now(), wall_clock_ms())
        });
        ensure!(!holder.is_lost(), "lost before the cut");
        cluster.kill(follower).await?;
        let killed = Instant::now();

        let (reason, lost_at, lost_wall_ms) = tokio::time::timeout(TTL + SOON, lost)
            .await
            .context("lost() did not fire")??;
        let (granted, granted_at) = tokio::time::timeout(TTL + SOON, waiter)
            .await
            .context("the waiter was not granted the lock")??;
        let granted = granted?;
        println!(
            "after the kill: lost() {:?}, grant arrived {:?}; lost at {lost_wall_ms} ms, \
             granted at {} ms (leader's clock)",
            lost_at - killed,
            granted_at.saturating_duration_since(killed),
            granted.grant().granted_at_ms
        );
        ensure!(reason == LostReason::Unconfirmed, "lost: {reason:?}");
        ensure!(
            granted.token() > holder.token(),
            "waiter token {} after {}",
            granted.token(),
            holder.token()
        );
        ensure!(
            lost_at < granted_at,
            "lost() fired {:?} after the kill, the waiter's grant arrived {:?} after it",
            lost_at - killed,
            granted_at.saturating_duration_since(killed)
        );
        // The leader stamps the grant with its wall clock when it proposes it; this host's
        // clock is the same one.
        let granted_at_ms = granted.grant().granted_at_ms;
        ensure!(
            lost_wall_ms < granted_at_ms,
            "lost() fired at {lost_wall_ms} ms, the leader granted the lock at {granted_at_ms} ms"
        );
        // Not eager either: the holder had renewed shortly before the cut (at most a third
        // of the TTL earlier), so it stayed sure for a good while after it.
        ensure!(
            lost_at >= killed + TTL / 2,
            "lost() fired only {:?} after the kill",
            lost_at - killed
        );
        drop(holder);
        let released = granted.release().await?;
        ensure!(released.released, "{released:?}");
        Ok(())
    })
    .await;
}

#[tokio::test]
async fn lock_guard_renews_hands_over_and_releases_on_drop() {
    const TTL: Duration = Duration::from_secs(1);
    let cluster = Cluster::start_single(&[]).await.expect("start the server");
    must_pass(async {
        let client = cluster.client();
        let name = "job";
        let options = |holder: &str, wait: Option<Duration>| LockOptions {
            ttl: TTL,
            wait,
            holder: Some(holder.into()),
            ..LockOptions::default()
        };
        let a = client.lock(name, options("a", None)).await?;
        ensure!(
            a.grant().ttl_ms == 1000 && a.grant().own_lease && a.grant().holder == "a",
            "{:?}",
            a.grant()
        );
        let refused = client.lock(name, options("x", None)).await;
        ensure!(
            refused
                .as_ref()
                .is_err_and(|e| e.status() == Some(409) && e.code() == Some(codes::LOCK_HELD)),
            "a second lock without wait: {refused:?}"
        );

        let b = tokio::spawn({
            let client = client.clone();
            async move { client.lock(name, options("b", Some(LONG_WAIT))).await }
        });
        // A keeps the lock through three TTLs while B waits.
        ensure_for(3 * TTL, "a to keep the lock", || async {
            ensure!(!a.is_lost(), "a lost: {:?}", a.last_error());
            ensure!(!b.is_finished(), "b answered while a held the lock");
            let info = client.lock_info(name, ReadOptions::default()).await?.value;
            ensure!(
                info.holder
                    .as_ref()
                    .is_some_and(|h| h.token == Some(a.token())),
                "{info:?}"
            );
            Ok(())
        })
        .await?;
        ensure!(a.renewals() >= 6, "{} renewals in 3 TTLs", a.renewals());

        let a_token = a.token();
        let released = a.release().await?;
        ensure!(
            released.released && released.lease_revoked && released.token == a_token,
            "{released:?}"
        );
        let b = tokio::time::timeout(SOON, b)
            .await
            .context("b was not granted the lock")???;
        ensure!(
            b.token() > a_token,
            "b's token {} after {a_token}",
            b.token()
        );
        // B waited for longer than a third of its TTL and still holds it for sure.
        ensure_for(2 * TTL, "b to keep the lock", || async {
            ensure!(!b.is_lost(), "b lost: {:?}", b.last_error());
            Ok(())
        })
        .await?;

        // Dropping the guard releases the lock (cleanly: no lock-delay).
        drop(b);
        wait_until(SOON, "the dropped guard to release the lock", || async {
            let info = client.lock_info(name, ReadOptions::default()).await?.value;
            ensure!(!info.held && info.delay_until_ms.is_none(), "{info:?}");
            Ok(())
        })
        .await?;
        Ok(())
    })
    .await;
}

#[tokio::test]
async fn elections_through_leadership_handles_and_an_observer() {
    const TTL: Duration = Duration::from_secs(1);
    let cluster = Cluster::start_single(&[]).await.expect("start the server");
    must_pass(async {
        let client = cluster.client();
        let name = "primary";
        let mut observer = client.observe(name);
        let first = tokio::time::timeout(SOON, observer.next()).await??;
        ensure!(first.is_none(), "a leader before any campaign: {first:?}");

        let mut a = client
            .elect(
                name,
                CampaignOptions {
                    ttl: TTL,
                    ..CampaignOptions::new("a")
                },
            )
            .await?;
        let a_token = a.token();
        observe_until(&mut observer, "a leading", |l| {
            l.as_ref()
                .is_some_and(|l| l.token == a_token && l.candidate == "a")
        })
        .await?;
        let refused = client.elect(name, CampaignOptions::new("x")).await;
        ensure!(
            refused
                .as_ref()
                .is_err_and(|e| e.code() == Some(codes::ELECTION_HELD)),
            "a campaign without wait: {refused:?}"
        );

        let b = tokio::spawn({
            let client = client.clone();
            async move {
                let options = CampaignOptions {
                    ttl: TTL,
                    wait: Some(LONG_WAIT),
                    ..CampaignOptions::new("b")
                };
                client.elect(name, options).await
            }
        });
        // A keeps leading through three TTLs while B waits.
        ensure_for(3 * TTL, "a to keep leading", || async {
            ensure!(!a.is_lost(), "a lost: {:?}", a.last_error());
            ensure!(!b.is_finished(), "b answered while a led");
            Ok(())
        })
        .await?;
        let info = client.election(name, ReadOptions::default()).await?.value;
        ensure!(
            info.leader.as_ref().is_some_and(|l| l.token == a_token)
                && info.candidates.iter().map(|c| c.holder.as_str()).eq(["b"]),
            "{info:?}"
        );

        let proclaimed = a.proclaim("a-2").await?.clone();
        ensure!(
            proclaimed.token == a_token && a.leader().candidate == "a-2",
            "{proclaimed:?}"
        );
        observe_until(&mut observer, "a-2 proclaimed", |l| {
            l.as_ref()
                .is_some_and(|l| l.token == a_token && l.candidate == "a-2")
        })
        .await?;

        // A's handle goes away (stops renewing, resigns): B leads with a higher token.
        drop(a);
        let b = tokio::time::timeout(SOON, b)
            .await
            .context("b did not come to lead")???;
        ensure!(
            b.token() > a_token && b.leader().candidate == "b",
            "{:?} after token {a_token}",
            b.leader()
        );
        let b_token = b.token();
        observe_until(&mut observer, "b leading", |l| {
            l.as_ref()
                .is_some_and(|l| l.token == b_token && l.candidate == "b")
        })
        .await?;
        ensure_for(2 * TTL, "b to keep leading", || async {
            ensure!(!b.is_lost(), "b lost: {:?}", b.last_error());
            Ok(())
        })
        .await?;

        let resigned = b.resign().await?;
        ensure!(
            resigned.released && resigned.lease_revoked && resigned.token == b_token,
            "{resigned:?}"
        );
        observe_until(&mut observer, "nobody leading", Option::is_none).await?;
        Ok(())
    })
    .await;
}

/// Leases alive, as `registry_leases` in the server's `/metrics` says (read from its
/// state at scrape time).
async fn lease_count(addr: &str) -> Result<u64> {
    let text = reqwest::get(format!("http://{addr}/metrics"))
        .await?
        .error_for_status()?
        .text()
        .await?;
    let value = text
        .lines()
        .find_map(|line| line.strip_prefix("registry_leases "))
        .with_context(|| format!("no registry_leases in /metrics:\n{text}"))?;
    let value: f64 = value.trim().parse().context("registry_leases")?;
    Ok(value as u64)
}

/// The token the lock's holder holds it with, `None` when it is free.
async fn holder_token(client: &Client, name: &str) -> Result<Option<u64>> {
    let info = client.lock_info(name, ReadOptions::default()).await?.value;
    Ok(info.holder.and_then(|h| h.token))
}

#[tokio::test]
async fn a_session_holds_many_locks_on_one_lease_and_ends_them_on_close() {
    const TTL: Duration = Duration::from_secs(1);
    let cluster = Cluster::start_single(&[]).await.expect("start the server");
    must_pass(async {
        let client = cluster.client();
        let addr = cluster.addr(1);
        let before = lease_count(&addr).await?;
        let session = client
            .session(SessionOptions {
                ttl: TTL,
                ..SessionOptions::default()
            })
            .await?;
        ensure!(session.ttl() == TTL, "ttl {:?}", session.ttl());
        let options = |holder: &str| LockOptions {
            holder: Some(holder.into()),
            ..LockOptions::default()
        };
        let a = session.lock("sess-a", options("a")).await?;
        let b = session.lock("sess-b", options("b")).await?;
        for guard in [&a, &b] {
            ensure!(
                guard.lease() == session.lease()
                    && !guard.grant().own_lease
                    && guard.grant().ttl_ms == 1000,
                "{:?}, session lease {}",
                guard.grant(),
                session.lease()
            );
        }
        ensure!(
            a.token() > 0 && b.token() > a.token(),
            "tokens {} and {}",
            a.token(),
            b.token()
        );
        // One lease for the session, none for either lock.
        let with_session = lease_count(&addr).await?;
        ensure!(
            with_session == before + 1,
            "{before} leases before, {with_session} with a session holding two locks"
        );

        // Through three TTLs the session's keepalives carry both locks.
        ensure_for(3 * TTL, "both locks to stay held", || async {
            ensure!(
                !session.is_lost(),
                "session lost: {:?}",
                session.last_error()
            );
            ensure!(!a.is_lost() && !b.is_lost(), "a lock guard lost");
            ensure!(holder_token(&client, "sess-a").await? == Some(a.token()));
            ensure!(holder_token(&client, "sess-b").await? == Some(b.token()));
            Ok(())
        })
        .await?;
        ensure!(
            session.renewals() >= 6,
            "{} renewals in 3 TTLs",
            session.renewals()
        );
        ensure!(
            a.renewals() >= 6 && b.renewals() >= 6,
            "the locks saw {} and {} of the session's renewals",
            a.renewals(),
            b.renewals()
        );

        // Releasing one lock revokes no lease: the other stays held, the session alive.
        let a_token = a.token();
        let released = a.release().await?;
        ensure!(
            released.released && !released.lease_revoked && released.token == a_token,
            "{released:?}"
        );
        ensure!(
            holder_token(&client, "sess-a").await?.is_none(),
            "sess-a still held"
        );
        ensure!(
            holder_token(&client, "sess-b").await? == Some(b.token()),
            "sess-b not held"
        );
        client
            .get_lease(session.lease(), Consistency::Linearizable)
            .await
            .context("the session's lease after releasing one lock")?;
        ensure!(
            !session.is_lost() && !b.is_lost(),
            "lost after releasing sess-a"
        );
        let after_release = lease_count(&addr).await?;
        ensure!(
            after_release == before + 1,
            "{after_release} leases after a release, {before} before the session"
        );

        // A lock taken again on the same session: still no lease of its own.
        let again = session.lock("sess-a", options("a again")).await?;
        ensure!(
            again.token() > b.token(),
            "token {} after {}",
            again.token(),
            b.token()
        );
        ensure!(
            lease_count(&addr).await? == before + 1,
            "a lease per acquire"
        );
        drop(again);
        wait_until(SOON, "the dropped guard to release sess-a", || async {
            ensure!(holder_token(&client, "sess-a").await?.is_none());
            Ok(())
        })
        .await?;
        client
            .get_lease(session.lease(), Consistency::Linearizable)
            .await
            .context("the session's lease after dropping a lock guard")?;

        // Closing the session revokes its lease, which ends the lock still bound to it
        // (cleanly: no lock-delay), and its guard knows.
        let lease = session.lease();
        let b_lost = b.lost_signal();
        session.close().await?;
        ensure!(
            b_lost.reason() == Some(LostReason::Released) && b.is_lost(),
            "b after close: {:?}",
            b_lost.reason()
        );
        let info = client
            .lock_info("sess-b", ReadOptions::default())
            .await?
            .value;
        ensure!(!info.held && info.delay_until_ms.is_none(), "{info:?}");
        let gone = client.get_lease(lease, Consistency::Linearizable).await;
        ensure!(
            gone.as_ref()
                .is_err_and(registry_client::Error::is_lease_not_found),
            "the session's lease after close: {gone:?}"
        );
        ensure!(
            lease_count(&addr).await? == before,
            "leases left after close"
        );
        Ok(())
    })
    .await;
}

#[tokio::test]
async fn a_session_leads_an_election_on_its_lease_and_resigning_keeps_the_lease() {
    const TTL: Duration = Duration::from_secs(1);
    let cluster = Cluster::start_single(&[]).await.expect("start the server");
    must_pass(async {
        let client = cluster.client();
        let addr = cluster.addr(1);
        let before = lease_count(&addr).await?;
        let session = client
            .session(SessionOptions {
                ttl: TTL,
                ..SessionOptions::default()
            })
            .await?;
        let lead = session
            .elect("sess-elect", CampaignOptions::new("10.0.0.1:80"))
            .await?;
        ensure!(
            lead.lease() == session.lease() && lead.ttl() == TTL && lead.token() > 0,
            "leads with lease {} (session {}), ttl {:?}",
            lead.lease(),
            session.lease(),
            lead.ttl()
        );
        ensure!(
            lease_count(&addr).await? == before + 1,
            "a campaign on the session made a lease of its own"
        );
        // Another candidate that does not wait is told who leads.
        let other = client
            .elect("sess-elect", CampaignOptions::new("10.0.0.2:80"))
            .await;
        ensure!(
            other
                .as_ref()
                .is_err_and(|e| e.code() == Some(codes::ELECTION_HELD)),
            "a second candidate: {other:?}"
        );
        // Through two TTLs the session's keepalives carry the leadership.
        tokio::time::sleep(TTL * 2).await;
        ensure!(
            !lead.is_lost() && lead.renewals() >= 3,
            "leadership lost: {:?}, {} renewals",
            lead.last_error(),
            lead.renewals()
        );
        // Resigning frees the election and leaves the session's lease alive.
        let first_token = lead.token();
        lead.resign().await?;
        let info = client
            .election("sess-elect", ReadOptions::default())
            .await?
            .value;
        ensure!(info.leader.is_none(), "after resigning: {info:?}");
        client
            .get_lease(session.lease(), Consistency::Linearizable)
            .await
            .context("the session's lease after resigning")?;
        ensure!(!session.is_lost(), "the session was lost by a resign");
        // Elected again on the same session (a higher token), then the session closes:
        // the leadership is lost as released and the election is free.
        let again = session
            .elect("sess-elect", CampaignOptions::new("10.0.0.1:80"))
            .await?;
        ensure!(again.token() > first_token, "token {}", again.token());
        let signal = again.lost_signal();
        session.close().await?;
        ensure!(
            signal.reason() == Some(LostReason::Released) && again.is_lost(),
            "after close: {:?}",
            signal.reason()
        );
        let info = client
            .election("sess-elect", ReadOptions::default())
            .await?
            .value;
        ensure!(info.leader.is_none(), "after the session closed: {info:?}");
        ensure!(
            lease_count(&addr).await? == before,
            "leases left after close"
        );
        Ok(())
    })
    .await;
}

#[tokio::test]
async fn a_revoked_lease_loses_its_session_and_locks_and_a_borrowed_lease_lock() {
    const TTL: Duration = Duration::from_secs(2);
    let cluster = Cluster::start_single(&[]).await.expect("start the server");
    must_pass(async {
        let client = cluster.client();
        let session = client
            .session(SessionOptions {
                ttl: TTL,
                ..SessionOptions::default()
            })
            .await?;
        let guard = session
            .lock("under-session", LockOptions::default())
            .await?;
        let lost = tokio::spawn({
            let signal = guard.lost_signal();
            async move { signal.lost().await }
        });

        // Revoked behind the session's back: its next keepalive hears that the lease is
        // gone, and the session and its lock are lost at once, for that reason.
        client.revoke_lease(session.lease()).await?;
        let revoked = Instant::now();
        let reason = tokio::time::timeout(TTL, session.lost())
            .await
            .context("the session did not notice its lease was revoked")?;
        ensure!(reason == LostReason::LeaseEnded, "session lost: {reason:?}");
        ensure!(
            session.last_error().is_some_and(|e| e.is_lease_not_found()),
            "{:?}",
            session.last_error()
        );
        let reason = tokio::time::timeout(SOON, lost).await??;
        ensure!(reason == LostReason::LeaseEnded, "lock lost: {reason:?}");
        ensure!(guard.is_lost(), "the guard does not say it is lost");
        println!("lost {:?} after the revoke", revoked.elapsed());
        ensure!(
            holder_token(&client, "under-session").await?.is_none(),
            "the lock outlived its lease"
        );
        drop(guard);
        // Nothing left to revoke: close says so without an error.
        session.close().await?;

        // A lock under a lease the caller keeps alive itself: its guard renews nothing,
        // but notices once the lease is gone.
        let lease = client.create_lease(TTL).await?.value.lease;
        let borrowed = client
            .lock(
                "under-lease",
                LockOptions {
                    lease: Some(lease),
                    ..LockOptions::default()
                },
            )
            .await?;
        ensure!(
            borrowed.lease() == lease && !borrowed.grant().own_lease,
            "{:?}",
            borrowed.grant()
        );
        // Kept alive by the test for two TTLs: the guard holds on, sending no keepalives.
        ensure_for(2 * TTL, "the borrowed-lease lock to stay held", || async {
            client.keepalive(lease).await?;
            ensure!(!borrowed.is_lost(), "lost: {:?}", borrowed.last_error());
            ensure!(holder_token(&client, "under-lease").await? == Some(borrowed.token()));
            Ok(())
        })
        .await?;
        ensure!(borrowed.renewals() == 0, "{} renewals", borrowed.renewals());
        // Releasing it leaves the lease alone.
        let released = borrowed.release().await?;
        ensure!(released.released && !released.lease_revoked, "{released:?}");
        client
            .keepalive(lease)
            .await
            .context("the lease after the release")?;

        let borrowed = client
            .lock(
                "under-lease",
                LockOptions {
                    lease: Some(lease),
                    ..LockOptions::default()
                },
            )
            .await?;
        client.revoke_lease(lease).await?;
        let reason = tokio::time::timeout(TTL + SOON, borrowed.lost())
            .await
            .context("the borrowed-lease guard did not notice the revoke")?;
        ensure!(reason == LostReason::LeaseEnded, "lost: {reason:?}");
        Ok(())
    })
    .await;
}
