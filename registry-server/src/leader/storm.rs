//! Expiry storm protection (Eureka's self-preservation, done honestly).
//!
//! When the leader is about to expire leases, it first asks the [`StormGuard`] which of
//! them may go now. If more than `threshold` of a service's instances would turn critical
//! within one `window` (counting the ones this leader already expired in that window),
//! the service is in a storm: its instances are expired at no more than `rate` per second
//! and the other due leases are deferred. A deferred lease stays due; a heartbeat that
//! arrives meanwhile revives it. A registry-side hiccup (the registry, not the services,
//! lost contact) therefore cannot empty a service at once, while a single dead instance of
//! a healthy service is expired as usual.
//!
//! Leader-only and in memory: the decision affects *when* an expiry is proposed, never
//! what applying it does.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::time::Duration;

use api_spec::InstanceStatus;
use locks::LeaseId;
use tokio::time::Instant;

use crate::replicated::catalog::Catalog;

/// Services with fewer instances are never held back.
pub const MIN_STORM_INSTANCES: usize = 2;

/// Storm protection settings (flags `--expiry-storm-*`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StormConfig {
    pub enabled: bool,
    /// Share of a service's instances (0 < x ≤ 1) whose expiry within one window counts
    /// as a storm.
    pub threshold: f64,
    /// How far back expiries count.
    pub window: Duration,
    /// Instances per second per service expired while in a storm.
    pub rate: f64,
}

impl Default for StormConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            threshold: 0.5,
            window: Duration::from_secs(10),
            rate: 1.0,
        }
    }
}

#[derive(Debug)]
struct ServiceWindow {
    /// When this leader expired instances of the service, within the window.
    recent: VecDeque<Instant>,
    /// Token bucket for the storm rate.
    tokens: f64,
    refilled: Instant,
    /// In a storm as of the last decision (for logging transitions).
    active: bool,
}

/// What the guard decided for one batch of due leases.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Decision {
    pub expire: Vec<LeaseId>,
    pub defer: Vec<LeaseId>,
}

/// The leader's storm state.
#[derive(Debug, Default)]
pub struct StormGuard {
    config: StormConfig,
    services: HashMap<String, ServiceWindow>,
    /// Leases held back since this node started (exposed in `GET /v1/cluster`); a lease
    /// held back over several ticks counts once.
    deferred_total: u64,
    /// The leases held back by the last decision.
    deferred: HashSet<LeaseId>,
}

impl StormGuard {
    pub fn new(config: StormConfig) -> Self {
        Self {
            config,
            ..Default::default()
        }
    }

    /// Whether storm protection runs at all.
    pub fn enabled(&self) -> bool {
        self.config.enabled
    }

    /// Services currently in a storm.
    pub fn active(&self) -> Vec<String> {
        let mut active: Vec<String> = self
            .services
            .iter()
            .filter(|(_, w)| w.active)
            .map(|(s, _)| s.clone())
            .collect();
        active.sort();
        active
    }

    pub fn deferred_total(&self) -> u64 {
        self.deferred_total
    }

    /// Leases whose expiry the last decision held back: the instances they keep are
    /// still passing only because of storm protection.
    pub fn holding(&self) -> usize {
        self.deferred.len()
    }

    /// Splits due leases into those to expire now and those to defer.
    pub fn decide(&mut self, due: Vec<LeaseId>, catalog: &Catalog, now: Instant) -> Decision {
        if !self.config.enabled {
            return Decision {
                expire: due,
                defer: Vec::new(),
            };
        }
        // Which live instances of which services each lease would turn critical.
        let impact: Vec<(LeaseId, BTreeMap<String, usize>)> = due
            .into_iter()
            .map(|lease| {
                let mut per_service = BTreeMap::new();
                for key in catalog.bound_to(&lease) {
                    let live = catalog
                        .instance(key)
                        .is_some_and(|r| r.status != InstanceStatus::Critical);
                    if live {
                        *per_service.entry(key.0.to_string()).or_insert(0) += 1;
                    }
                }
                (lease, per_service)
            })
            .collect();
        let mut candidates: BTreeMap<&str, usize> = BTreeMap::new();
        for (_, per_service) in &impact {
            for (service, n) in per_service {
                *candidates.entry(service.as_str()).or_insert(0) += n;
            }
        }

        // How many instances of each service in a storm may be expired in this batch.
        let mut allowance: HashMap<String, f64> = HashMap::new();
        for (service, n) in &candidates {
            let total = catalog.instance_count(service);
            let (rate, threshold) = (self.config.rate, self.config.threshold);
            let window = self.window(service, now);
            // One instance alone is not a storm: holding it back protects nothing.
            let storm = total >= MIN_STORM_INSTANCES
                && (window.recent.len() + n) as f64 > threshold * total as f64;
            if storm {
                let elapsed = now.saturating_duration_since(window.refilled).as_secs_f64();
                window.tokens = (window.tokens + elapsed * rate).min(rate.max(1.0));
                window.refilled = now;
                allowance.insert((*service).to_owned(), window.tokens.floor());
            }
        }

        let mut decision = Decision::default();
        let mut deferred_services: BTreeMap<String, usize> = BTreeMap::new();
        for (lease, per_service) in impact {
            // A lease may go when each storming service it touches has a whole token; it
            // then costs one token per instance, which may leave the bucket in debt (a
            // lease shared by many instances would otherwise never fit), and the debt
            // delays the next expiry so the average rate stays bounded.
            let fits = per_service
                .keys()
                .all(|s| allowance.get(s).is_none_or(|a| *a >= 1.0));
            if !fits {
                for (service, n) in per_service {
                    *deferred_services.entry(service).or_insert(0) += n;
                }
                decision.defer.push(lease);
                continue;
            }
            for (service, n) in per_service {
                let window = self.window(&service, now);
                if let Some(a) = allowance.get_mut(&service) {
                    *a -= n as f64;
                    window.tokens -= n as f64;
                }
                window.recent.extend(std::iter::repeat_n(now, n));
            }
            decision.expire.push(lease);
        }
        let deferred: HashSet<LeaseId> = decision.defer.iter().copied().collect();
        self.deferred_total += deferred.difference(&self.deferred).count() as u64;
        self.deferred = deferred;

        // In a storm = had expiries held back in this decision. Log the transitions.
        for (service, window) in self.services.iter_mut() {
            let held = deferred_services.get(service).copied();
            match (window.active, held) {
                (false, Some(held)) => {
                    window.active = true;
                    tracing::warn!(
                        service = %service,
                        held_back = held,
                        instances = catalog.instance_count(service),
                        rate_per_s = self.config.rate,
                        "expiry storm protection engaged: too many instances would turn critical at once; expiring them at a bounded rate"
                    );
                }
                (true, None) => {
                    window.active = false;
                    tracing::info!(service = %service, "expiry storm protection disengaged");
                }
                _ => {}
            }
        }
        self.services
            .retain(|_, w| w.active || !w.recent.is_empty());
        decision
    }

    fn window(&mut self, service: &str, now: Instant) -> &mut ServiceWindow {
        let span = self.config.window;
        let window = self
            .services
            .entry(service.to_owned())
            .or_insert_with(|| ServiceWindow {
                recent: VecDeque::new(),
                tokens: 0.0,
                refilled: now,
                active: false,
            });
        while window
            .recent
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) > span)
        {
            window.recent.pop_front();
        }
        window
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replicated::catalog::test_spec;

    /// A catalog with `n` instances of `service`, each on its own lease numbered from
    /// `first`.
    fn add(catalog: &mut Catalog, service: &str, n: u128, first: u128) -> Vec<LeaseId> {
        (0..n)
            .map(|i| {
                let lease = LeaseId::from_u128(first + i);
                catalog.upsert(
                    (service.into(), format!("i{i}").into()),
                    test_spec(),
                    Some(lease),
                    true,
                    1,
                    0,
                );
                lease
            })
            .collect()
    }

    #[tokio::test(start_paused = true)]
    async fn one_dead_instance_of_a_healthy_service_expires_at_once() {
        let mut catalog = Catalog::default();
        let leases = add(&mut catalog, "web", 4, 0);
        let mut guard = StormGuard::new(StormConfig::default());
        let d = guard.decide(vec![leases[2]], &catalog, Instant::now());
        assert_eq!(
            d,
            Decision {
                expire: vec![leases[2]],
                defer: vec![]
            }
        );
        assert!(guard.active().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_whole_service_going_at_once_is_expired_at_the_bounded_rate() {
        let mut catalog = Catalog::default();
        let leases = add(&mut catalog, "web", 4, 0);
        let alone = add(&mut catalog, "db", 1, 100);
        let mut guard = StormGuard::new(StormConfig::default());
        let mut due: Vec<LeaseId> = leases.clone();
        due.push(alone[0]);
        // No tokens yet: all of `web` waits. `db`'s only instance is not a storm.
        let d = guard.decide(due.clone(), &catalog, Instant::now());
        assert_eq!(
            d,
            Decision {
                expire: vec![alone[0]],
                defer: leases.clone()
            }
        );
        assert_eq!(guard.active(), vec!["web".to_owned()]);
        // One second later one token: one `web` lease goes.
        tokio::time::advance(Duration::from_secs(1)).await;
        let d = guard.decide(leases.clone(), &catalog, Instant::now());
        assert_eq!(d.expire, vec![leases[0]]);
        assert_eq!(
            guard.deferred_total(),
            4,
            "a lease held back twice counts once"
        );
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(
            guard
                .decide(leases[1..].to_vec(), &catalog, Instant::now())
                .expire,
            vec![leases[1]]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_lease_shared_by_many_instances_still_expires() {
        let mut catalog = Catalog::default();
        let shared = LeaseId::from_u128(7);
        for i in 0..6 {
            catalog.upsert(
                ("web".into(), format!("s{i}").into()),
                test_spec(),
                Some(shared),
                false,
                1,
                0,
            );
        }
        let other = add(&mut catalog, "web", 2, 100);
        let mut guard = StormGuard::new(StormConfig::default());
        assert_eq!(
            guard.decide(vec![shared], &catalog, Instant::now()).defer,
            vec![shared]
        );
        tokio::time::advance(Duration::from_secs(1)).await;
        let d = guard.decide(vec![shared, other[0]], &catalog, Instant::now());
        assert_eq!(
            d,
            Decision {
                expire: vec![shared],
                defer: vec![other[0]]
            }
        );
        // Six instances cost six tokens: the next expiry waits until the debt is repaid.
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(
            guard
                .decide(vec![other[0]], &catalog, Instant::now())
                .expire,
            Vec::<LeaseId>::new()
        );
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(
            guard
                .decide(vec![other[0]], &catalog, Instant::now())
                .expire,
            vec![other[0]]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn expiries_within_the_window_count_toward_the_threshold() {
        let mut catalog = Catalog::default();
        let leases = add(&mut catalog, "web", 4, 0);
        let mut guard = StormGuard::new(StormConfig::default());
        assert_eq!(
            guard
                .decide(vec![leases[0]], &catalog, Instant::now())
                .expire
                .len(),
            1
        );
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(
            guard
                .decide(vec![leases[1]], &catalog, Instant::now())
                .expire
                .len(),
            1
        );
        tokio::time::advance(Duration::from_millis(100)).await;
        // Two more within the window: 4 of 4 > 50%, a storm. The rate (1/s) lets one go.
        let d = guard.decide(vec![leases[2], leases[3]], &catalog, Instant::now());
        assert_eq!(
            d,
            Decision {
                expire: vec![leases[2]],
                defer: vec![leases[3]]
            }
        );
        assert_eq!(guard.active(), vec!["web".to_owned()]);
        // After the window has passed, the earlier expiries no longer count: 1 of 4.
        tokio::time::advance(Duration::from_secs(11)).await;
        assert_eq!(
            guard
                .decide(vec![leases[3]], &catalog, Instant::now())
                .expire
                .len(),
            1
        );
        assert!(
            guard.active().is_empty(),
            "nothing held back: the storm is over"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn disabled_protection_and_leases_without_instances_pass_through() {
        let mut catalog = Catalog::default();
        let leases = add(&mut catalog, "web", 2, 0);
        let plain = LeaseId::from_u128(999);
        let mut off = StormGuard::new(StormConfig {
            enabled: false,
            ..Default::default()
        });
        assert_eq!(
            off.decide(leases.clone(), &catalog, Instant::now()).expire,
            leases
        );
        let mut on = StormGuard::new(StormConfig::default());
        assert_eq!(
            on.decide(vec![plain], &catalog, Instant::now()).expire,
            vec![plain]
        );
    }
}
