//! The client's discovery cache against real `registry-server` processes: serving the
//! last good list while every server is down and catching up when they return; resolves
//! and a heartbeating registration riding out a leader SIGKILL unnoticed; zone and region
//! preference with spill-over and the panic threshold; outlier ejection, return and the
//! ejected-share cap; and the balancing policies' spread over real instances.

#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context as _, Result};
use api_spec::{Instance, InstanceStatus, RegisterRequest};
use registry_client::balance::Policy;
use registry_client::locality::{Locality, LocalityPolicy, Tier};
use registry_client::outlier::{Outcome, OutlierConfig};
use registry_client::{Client, ReadOptions, ServicePolicy, ServiceQuery};
use tests::{must_pass, wait_until, Cluster};

/// How soon a change in the registry must show in a connected cache.
const SOON: Duration = Duration::from_secs(5);
/// How long a failover (new leader elected, requests served again) may take.
const FAILOVER_TIMEOUT: Duration = Duration::from_secs(20);
/// How soon a cache whose watch was failing (and backing off, up to 10 s plus jitter)
/// must catch up once the registry is back.
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(20);

/// An instance on 127.0.0.1:`port` whose lease outlives any test.
fn request(port: u16) -> RegisterRequest {
    RegisterRequest {
        address: "127.0.0.1".into(),
        port,
        tags: vec![],
        meta: BTreeMap::new(),
        zone: None,
        region: None,
        weight: None,
        ttl: Some("1h".into()),
        deregister_after: Some("1h".into()),
        lease: None,
        checks: Vec::new(),
    }
}

/// `request(port)` in `zone` of `region`.
fn located(port: u16, zone: &str, region: &str) -> RegisterRequest {
    RegisterRequest {
        zone: Some(zone.into()),
        region: Some(region.into()),
        ..request(port)
    }
}

/// Registers `id` of `service` with the raw API (no heartbeats).
async fn register(client: &Client, service: &str, id: &str, req: &RegisterRequest) -> Result<()> {
    client
        .register(service, id, req)
        .await
        .with_context(|| format!("register {service}/{id}"))?;
    Ok(())
}

/// Sorted ids of `instances`.
fn ids(instances: &[Instance]) -> Vec<String> {
    let mut ids: Vec<String> = instances.iter().map(|i| i.id.clone()).collect();
    ids.sort();
    ids
}

fn strings(ids: &[&str]) -> Vec<String> {
    ids.iter().map(|s| (*s).to_owned()).collect()
}

/// What `n` resolves of `service` picked: how often each id, and every tier seen.
#[derive(Debug, Default)]
struct Picks {
    counts: BTreeMap<String, usize>,
    tiers: HashSet<Tier>,
}

impl Picks {
    fn ids(&self) -> Vec<String> {
        self.counts.keys().cloned().collect()
    }

    fn share(&self, id: &str) -> f64 {
        let total: usize = self.counts.values().sum();
        self.counts.get(id).copied().unwrap_or(0) as f64 / total as f64
    }
}

async fn resolve_many(client: &Client, service: &str, n: usize) -> Result<Picks> {
    let mut picks = Picks::default();
    for _ in 0..n {
        let resolved = client
            .resolve(service)
            .await
            .with_context(|| format!("resolve {service}"))?;
        *picks
            .counts
            .entry(resolved.instance.id.clone())
            .or_default() += 1;
        picks.tiers.insert(resolved.tier);
    }
    Ok(picks)
}

/// Waits until the cache of `service` serves exactly the passing instances `expected`.
async fn wait_cached(client: &Client, service: &str, expected: &[&str]) -> Result<()> {
    let expected = strings(expected);
    let what = format!("the cache of {service} to serve {expected:?}");
    wait_until(SOON, &what, || async {
        let endpoints = client.endpoints(service, &ServiceQuery::default()).await?;
        let seen = ids(&endpoints.instances);
        ensure!(seen == expected, "serves {seen:?}");
        Ok(())
    })
    .await
}

/// Every instance of `service`, whatever its status, read from the registry.
async fn read_any(client: &Client, service: &str) -> Result<Vec<Instance>> {
    let any = ServiceQuery {
        status: Some(None),
        ..ServiceQuery::default()
    };
    Ok(client
        .service(service, &any, ReadOptions::default())
        .await?
        .value
        .instances)
}

#[tokio::test(flavor = "multi_thread")]
async fn resolve_serves_the_cache_while_every_server_is_down_then_catches_up() {
    let cluster = Cluster::start(3, &[]).await.unwrap();
    must_pass(async {
        let raw = cluster.client();
        for (n, id) in ["a", "b", "c"].into_iter().enumerate() {
            register(&raw, "web", id, &request(9000 + n as u16)).await?;
        }
        let addrs: Vec<String> = cluster
            .ids()
            .into_iter()
            .map(|id| cluster.addr(id))
            .collect();
        let cached = Client::builder(addrs)
            .timeout(Duration::from_secs(5))
            .build()?;
        wait_cached(&cached, "web", &["a", "b", "c"]).await?;
        let warm = resolve_many(&cached, "web", 6).await?;
        ensure!(warm.ids() == strings(&["a", "b", "c"]), "{warm:?}");

        cluster.stop_all().await?;
        let down_at = Instant::now();

        // The watch notices (its held query breaks, reconnects fail) and says so, but
        // keeps the list.
        let failing = wait_until(SOON, "the cache to report the outage", || async {
            let endpoints = cached.endpoints("web", &ServiceQuery::default()).await?;
            ensure!(endpoints.error.is_some(), "no error yet: {endpoints:?}");
            Ok(endpoints)
        })
        .await?;
        ensure!(
            ids(&failing.instances) == strings(&["a", "b", "c"]),
            "{failing:?}"
        );

        // Over ~2 s with every server down: the same three, an age that keeps growing.
        let mut last_age = failing.age;
        for round in 0..8 {
            tokio::time::sleep(Duration::from_millis(250)).await;
            let endpoints = cached.endpoints("web", &ServiceQuery::default()).await?;
            ensure!(
                ids(&endpoints.instances) == strings(&["a", "b", "c"]),
                "round {round}: {endpoints:?}"
            );
            ensure!(endpoints.error.is_some(), "round {round}: {endpoints:?}");
            ensure!(
                endpoints.age >= last_age + Duration::from_millis(200),
                "round {round}: age {:?} after {last_age:?}",
                endpoints.age
            );
            last_age = endpoints.age;
            let picks = resolve_many(&cached, "web", 3).await?;
            ensure!(
                picks.ids() == strings(&["a", "b", "c"]),
                "round {round}: {picks:?}"
            );
            let down_for = down_at.elapsed();
            let resolved = cached.resolve("web").await?;
            ensure!(
                resolved.age >= down_for,
                "resolve's age {:?} is younger than the outage ({down_for:?})",
                resolved.age
            );
        }

        cluster.restart_all().await?;
        let back_at = Instant::now();
        let fresh = cluster.client();
        wait_until(
            FAILOVER_TIMEOUT,
            "registering d after the restart",
            || async { register(&fresh, "web", "d", &request(9003)).await },
        )
        .await?;
        let endpoints = wait_until(CATCH_UP_TIMEOUT, "the cache to see d", || async {
            let endpoints = cached.endpoints("web", &ServiceQuery::default()).await?;
            ensure!(
                ids(&endpoints.instances) == strings(&["a", "b", "c", "d"]),
                "serves {:?} (age {:?}, error {:?})",
                ids(&endpoints.instances),
                endpoints.age,
                endpoints.error
            );
            Ok(endpoints)
        })
        .await?;
        eprintln!(
            "cache caught up {:?} after the cluster was back ({:?} down)",
            back_at.elapsed(),
            back_at - down_at
        );
        ensure!(endpoints.error.is_none(), "{endpoints:?}");
        ensure!(endpoints.age < Duration::from_secs(2), "{endpoints:?}");
        let picks = resolve_many(&cached, "web", 8).await?;
        ensure!(picks.ids() == strings(&["a", "b", "c", "d"]), "{picks:?}");
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn leader_kill_is_invisible_to_resolves_and_heartbeats() {
    let cluster = Cluster::start(3, &[]).await.unwrap();
    must_pass(async {
        let client = cluster.client();
        let registration = client
            .register_instance(
                "api",
                "a1",
                RegisterRequest {
                    ttl: Some("2s".into()),
                    deregister_after: Some("1m".into()),
                    ..request(9100)
                },
            )
            .await?;
        let lease = registration.lease();

        // Every lease and registration count the handle ever published.
        let leases = Arc::new(Mutex::new(BTreeSet::from([lease])));
        let mut states = registration.watch();
        let seen = leases.clone();
        let recorder = tokio::spawn(async move {
            let mut most_registrations = 1;
            while states.changed().await.is_ok() {
                let state = states.borrow_and_update().clone();
                seen.lock().unwrap().insert(state.instance.lease);
                most_registrations = most_registrations.max(state.registrations);
            }
            most_registrations
        });

        // A caller resolving every few ms, noting anything but a passing a1.
        wait_cached(&client, "api", &["a1"]).await?;
        let stop = Arc::new(AtomicBool::new(false));
        let resolves = Arc::new(AtomicU64::new(0));
        let resolver = {
            let (client, stop, resolves) = (client.clone(), stop.clone(), resolves.clone());
            tokio::spawn(async move {
                let mut problems = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    match client.resolve("api").await {
                        Ok(r)
                            if r.instance.id == "a1"
                                && r.instance.status == InstanceStatus::Passing
                                && r.tier == Tier::Any => {}
                        Ok(r) => problems.push(format!(
                            "picked {} ({:?}, tier {})",
                            r.instance.id, r.instance.status, r.tier
                        )),
                        Err(e) => problems.push(format!("resolve failed: {e}")),
                    }
                    resolves.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(3)).await;
                }
                problems
            })
        };

        // Some heartbeats before the kill, so the handle is in its stride.
        wait_until(SOON, "two heartbeats", || async {
            let heartbeats = registration.state().heartbeats;
            ensure!(heartbeats >= 2, "{heartbeats} heartbeats");
            Ok(())
        })
        .await?;
        let leader = cluster.leader_id().await?;
        cluster.kill(leader).await?;
        let killed_at = Instant::now();
        let new_leader = cluster
            .wait_for_leader(Some(leader), FAILOVER_TIMEOUT)
            .await?;
        eprintln!(
            "node {new_leader} leads {:?} after node {leader} was killed",
            killed_at.elapsed()
        );
        // Heartbeats go through again: the lease was renewed by the new leader.
        let beats = registration.state().heartbeats;
        wait_until(
            FAILOVER_TIMEOUT,
            "heartbeats through the new leader",
            || async {
                let state = registration.state();
                ensure!(
                    state.heartbeats >= beats + 3 && state.consecutive_failures == 0,
                    "{} heartbeats (from {beats}), {} failing in a row, last error {:?}",
                    state.heartbeats,
                    state.consecutive_failures,
                    state.last_error
                );
                Ok(())
            },
        )
        .await?;

        stop.store(true, Ordering::Relaxed);
        let problems = resolver.await?;
        let resolves = resolves.load(Ordering::Relaxed);
        ensure!(resolves > 100, "only {resolves} resolves");
        ensure!(
            problems.is_empty(),
            "{} of {resolves} resolves went wrong, first: {:?}",
            problems.len(),
            &problems[..problems.len().min(5)]
        );

        let now = cluster.client_for(new_leader);
        let instances = read_any(&now, "api").await?;
        ensure!(instances.len() == 1, "{instances:?}");
        let a1 = &instances[0];
        ensure!(
            a1.status == InstanceStatus::Passing && a1.critical_since_ms.is_none(),
            "{a1:?}"
        );
        ensure!(a1.lease == lease, "lease {:?} became {:?}", lease, a1.lease);
        let state = registration.state();
        ensure!(state.registrations == 1, "{state:?}");

        registration.shutdown().await?;
        let most_registrations = recorder.await?;
        ensure!(
            most_registrations == 1,
            "re-registered: {most_registrations}"
        );
        let leases = leases.lock().unwrap().clone();
        ensure!(leases == BTreeSet::from([lease]), "leases seen: {leases:?}");
        ensure!(read_any(&now, "api").await?.is_empty(), "not deregistered");
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn zone_preference_spill_over_and_panic_threshold() {
    let cluster = Cluster::start_single(&[]).await.unwrap();
    must_pass(async {
        let raw = cluster.client();
        for (port, id, zone, region) in [
            (9201, "z1a", "z1", "r1"),
            (9202, "z1b", "z1", "r1"),
            (9203, "z2a", "z2", "r1"),
            (9204, "z2b", "z2", "r1"),
            (9205, "z3a", "z3", "r2"),
        ] {
            register(&raw, "web", id, &located(port, zone, region)).await?;
        }
        let here = Locality {
            zone: Some("z1".into()),
            region: Some("r1".into()),
        };
        let client = Client::builder([cluster.addr(1)])
            .locality(here, LocalityPolicy::default())
            .build()?;
        wait_cached(&client, "web", &["z1a", "z1b", "z2a", "z2b", "z3a"]).await?;

        let picks = resolve_many(&client, "web", 20).await?;
        ensure!(picks.ids() == strings(&["z1a", "z1b"]), "{picks:?}");
        ensure!(picks.tiers == HashSet::from([Tier::Zone]), "{picks:?}");

        // The caller's zone drains: spill over to the rest of its region, not further.
        for id in ["z1a", "z1b"] {
            raw.set_status("web", id, InstanceStatus::Draining).await?;
        }
        wait_cached(&client, "web", &["z2a", "z2b", "z3a"]).await?;
        let picks = resolve_many(&client, "web", 20).await?;
        ensure!(picks.ids() == strings(&["z2a", "z2b"]), "{picks:?}");
        ensure!(picks.tiers == HashSet::from([Tier::Region]), "{picks:?}");

        // The whole region drains: anything healthy. Draining instances count nowhere,
        // so one healthy instance of one registered is no panic.
        for id in ["z2a", "z2b"] {
            raw.set_status("web", id, InstanceStatus::Draining).await?;
        }
        wait_cached(&client, "web", &["z3a"]).await?;
        let picks = resolve_many(&client, "web", 10).await?;
        ensure!(picks.ids() == strings(&["z3a"]), "{picks:?}");
        ensure!(picks.tiers == HashSet::from([Tier::Any]), "{picks:?}");

        // One of the caller's zone is back: home again.
        raw.set_status("web", "z1a", InstanceStatus::Passing)
            .await?;
        wait_cached(&client, "web", &["z1a", "z3a"]).await?;
        let picks = resolve_many(&client, "web", 10).await?;
        ensure!(picks.ids() == strings(&["z1a"]), "{picks:?}");
        ensure!(picks.tiers == HashSet::from([Tier::Zone]), "{picks:?}");

        // Panic: three of four registered instances lapse to critical (and stay listed).
        register(&raw, "pan", "p0", &located(9300, "z1", "r1")).await?;
        for (n, id) in ["p1", "p2", "p3"].into_iter().enumerate() {
            let short = RegisterRequest {
                ttl: Some("1s".into()),
                ..located(9301 + n as u16, "z1", "r1")
            };
            register(&raw, "pan", id, &short).await?;
        }
        wait_until(SOON, "p1..p3 to turn critical", || async {
            let endpoints = client.endpoints("pan", &ServiceQuery::default()).await?;
            ensure!(
                ids(&endpoints.instances) == strings(&["p0"]),
                "passing: {:?}",
                ids(&endpoints.instances)
            );
            Ok(())
        })
        .await?;
        let all = read_any(&raw, "pan").await?;
        ensure!(all.len() == 4, "{all:?}");
        let picks = resolve_many(&client, "pan", 40).await?;
        ensure!(
            picks.ids() == strings(&["p0", "p1", "p2", "p3"]),
            "{picks:?}"
        );
        ensure!(picks.tiers == HashSet::from([Tier::Panic]), "{picks:?}");
        for id in ["p0", "p1", "p2", "p3"] {
            let share = picks.share(id);
            ensure!((0.15..=0.35).contains(&share), "{id}: {share} of {picks:?}");
        }
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn outlier_ejection_and_return() {
    let cluster = Cluster::start_single(&[]).await.unwrap();
    must_pass(async {
        let raw = cluster.client();
        for (n, id) in ["o1", "o2", "o3"].into_iter().enumerate() {
            register(&raw, "out", id, &request(9400 + n as u16)).await?;
        }
        for (n, id) in ["p1", "p2"].into_iter().enumerate() {
            register(&raw, "pair", id, &request(9410 + n as u16)).await?;
        }
        let base_ejection = Duration::from_millis(500);
        let client = Client::builder([cluster.addr(1)])
            .outlier_detection(OutlierConfig {
                consecutive_failures: 2,
                base_ejection,
                max_ejection: Duration::from_secs(2),
                max_ejected_share: 0.5,
            })
            .build()?;
        wait_cached(&client, "out", &["o1", "o2", "o3"]).await?;
        wait_cached(&client, "pair", &["p1", "p2"]).await?;

        // A success in between breaks a run of failures.
        client.report("out", "o2", Outcome::Failure);
        client.report("out", "o2", Outcome::Success);
        client.report("out", "o2", Outcome::Failure);
        let picks = resolve_many(&client, "out", 30).await?;
        ensure!(picks.ids() == strings(&["o1", "o2", "o3"]), "{picks:?}");

        // Two in a row eject o1 for base_ejection.
        let ejected_at = Instant::now();
        client.report("out", "o1", Outcome::Failure);
        client.report("out", "o1", Outcome::Failure);
        let picks = resolve_many(&client, "out", 30).await?;
        ensure!(picks.ids() == strings(&["o2", "o3"]), "{picks:?}");
        ensure!(picks.tiers == HashSet::from([Tier::Any]), "{picks:?}");

        wait_until(SOON, "o1 to return", || async {
            let picks = resolve_many(&client, "out", 6).await?;
            ensure!(picks.counts.contains_key("o1"), "{picks:?}");
            Ok(())
        })
        .await?;
        let back_after = ejected_at.elapsed();
        ensure!(back_after >= base_ejection, "back after {back_after:?}");
        eprintln!("o1 back after {back_after:?}");

        // The cap: of two instances at most one (half) is ejected, whatever fails.
        for id in ["p1", "p2", "p1", "p2"] {
            client.report("pair", id, Outcome::Failure);
        }
        let picks = resolve_many(&client, "pair", 20).await?;
        ensure!(picks.ids() == strings(&["p2"]), "{picks:?}");
        ensure!(picks.tiers == HashSet::from([Tier::Any]), "{picks:?}");
        // p2's next failure while p1 is ejected is still over the cap.
        client.report("pair", "p2", Outcome::Failure);
        let picks = resolve_many(&client, "pair", 10).await?;
        ensure!(picks.ids() == strings(&["p2"]), "{picks:?}");
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn each_policy_spreads_as_configured_over_real_instances() {
    let cluster = Cluster::start_single(&[]).await.unwrap();
    must_pass(async {
        let raw = cluster.client();
        for (port, id, weight) in [(9501, "light", 1), (9502, "heavy", 3)] {
            let weighted = RegisterRequest {
                weight: Some(weight),
                ..request(port)
            };
            register(&raw, "bal", id, &weighted).await?;
        }
        let client = Client::new([cluster.addr(1)])?;
        wait_cached(&client, "bal", &["heavy", "light"]).await?;
        let configure = |policy| {
            client.configure(
                "bal",
                ServicePolicy {
                    policy,
                    filter: ServiceQuery::default(),
                },
            )
        };

        configure(Policy::WeightedRoundRobin).await?;
        let picks = resolve_many(&client, "bal", 10_000).await?;
        ensure!(
            (picks.share("heavy") - 0.75).abs() <= 0.05
                && (picks.share("light") - 0.25).abs() <= 0.05,
            "weighted round robin: {picks:?}"
        );

        configure(Policy::RoundRobin).await?;
        let picks = resolve_many(&client, "bal", 1_000).await?;
        ensure!(
            picks.counts.values().all(|&n| n == 500),
            "round robin ignores weights: {picks:?}"
        );

        configure(Policy::Random).await?;
        let picks = resolve_many(&client, "bal", 10_000).await?;
        ensure!(
            (picks.share("heavy") - 0.5).abs() <= 0.05,
            "random ignores weights: {picks:?}"
        );

        // Least outstanding: a request held on one sends the next ones to the other.
        configure(Policy::LeastOutstanding).await?;
        let held = client.resolve("bal").await?;
        for _ in 0..20 {
            let next = client.resolve("bal").await?;
            ensure!(
                next.instance.id != held.instance.id,
                "{} picked while a request is in flight there",
                next.instance.id
            );
        }
        drop(held);

        configure(Policy::ConsistentHash).await?;
        let mut placed = BTreeMap::new();
        for n in 0..200 {
            let key = format!("user-{n}");
            let first = client.resolve_by_key("bal", Some(key.as_bytes())).await?;
            placed.insert(key, first.instance.id.clone());
        }
        for (key, id) in &placed {
            for _ in 0..3 {
                let again = client.resolve_by_key("bal", Some(key.as_bytes())).await?;
                ensure!(
                    &again.instance.id == id,
                    "{key} went to {id}, then {}",
                    again.instance.id
                );
            }
        }
        let on_heavy = placed.values().filter(|id| *id == "heavy").count();
        ensure!(
            (50..=150).contains(&on_heavy),
            "keys spread badly: {on_heavy} of 200 on heavy"
        );

        // A new instance moves only some keys, never between the old two.
        let before = client.endpoints("bal", &ServiceQuery::default()).await?;
        register(&raw, "bal", "third", &request(9503)).await?;
        let after = tokio::time::timeout(SOON, client.changed("bal", before.index))
            .await
            .context("changed() did not wake")??;
        ensure!(after.index > before.index, "{before:?} then {after:?}");
        ensure!(
            ids(&after.instances) == strings(&["heavy", "light", "third"]),
            "{after:?}"
        );
        let mut moved = 0;
        for (key, id) in &placed {
            let now = client.resolve_by_key("bal", Some(key.as_bytes())).await?;
            if &now.instance.id != id {
                ensure!(
                    now.instance.id == "third",
                    "{key} moved from {id} to {}",
                    now.instance.id
                );
                moved += 1;
            }
        }
        ensure!((20..=120).contains(&moved), "{moved} of 200 keys moved");
        Ok(())
    })
    .await;
}
