//! Zone and region preference: which of a service's instances a request may go to,
//! before the [`Balancer`](crate::balance::Balancer) picks one of them.
//!
//! [`select`] prefers healthy instances in the caller's zone, spills over to its region
//! and then to every healthy instance when too few local ones are healthy, and, when so
//! little of the service is healthy that the health signal itself is suspect, balances
//! over every instance that may take traffic (panic mode, as Envoy does) rather than
//! pile all requests onto the few that look healthy.
//!
//! Terms used throughout:
//! - **registered**: an instance whose status is not [`Draining`](InstanceStatus::Draining),
//!   i.e. passing or critical. A draining instance asked to be taken out of traffic, so it
//!   counts nowhere: not in shares, not in panic mode. A draining fleet (a rolling
//!   deploy) therefore does not push the service into panic.
//! - **healthy**: registered, [`Passing`](InstanceStatus::Passing), and accepted by the
//!   caller's predicate (typically "not ejected by outlier detection"). This module checks
//!   the status itself, so the predicate need only add what the caller knows.
//! - **serving**: healthy with a weight above 0. Only serving instances count towards
//!   [`LocalityPolicy::min_local`]: a weight-0 instance takes no traffic while others can,
//!   so it cannot absorb this zone's load. Weight-0 instances still appear among the
//!   candidates; the balancer skips them unless every candidate has weight 0.
//!
//! Pure: no IO, no clock; the caller passes instances, its own locality and the predicate.

use std::borrow::Borrow;
use std::fmt;

use api_spec::{Instance, InstanceStatus};

/// Where the caller runs. Instances in the same zone are preferred, then the same
/// region. Both unset means no preference: every healthy instance is a candidate.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Locality {
    /// The caller's zone (matched exactly against [`Instance::zone`]); zone names are
    /// assumed unique across regions, as cloud providers' are.
    pub zone: Option<String>,
    /// The caller's region (matched exactly against [`Instance::region`]).
    pub region: Option<String>,
}

/// When to leave the caller's zone or region, and when to stop trusting health.
///
/// Shares are fractions in `0.0..=1.0`; a value outside behaves like the nearest end,
/// and NaN like 0 (the check is off).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LocalityPolicy {
    /// Stay in a zone (or region) only while it has at least this many serving instances.
    /// Default 1: prefer local whenever any local instance can take traffic; 0 behaves
    /// as 1 (an empty tier is never chosen). Raise it when a lone local instance could
    /// not carry all of this zone's callers.
    pub min_local: usize,
    /// Stay in a zone (or region) only while at least this share of its registered
    /// instances is healthy. Default 0.5: when most of a zone is down, its few survivors
    /// would take the whole zone's load (more than twice their usual share), so spill
    /// over. 0 disables this check.
    pub min_local_share: f64,
    /// When fewer than this share of the service's registered instances are healthy,
    /// balance over all registered instances ([`Tier::Panic`]). Default 0.5, Envoy's
    /// default healthy panic threshold: below it the health signal (or outlier
    /// detection) is more likely wrong than half the fleet, and the healthy remainder
    /// would be overloaded anyway. 0 disables panic mode.
    pub panic_threshold: f64,
}

impl Default for LocalityPolicy {
    fn default() -> Self {
        LocalityPolicy {
            min_local: 1,
            min_local_share: 0.5,
            panic_threshold: 0.5,
        }
    }
}

/// Which set [`select`] chose; for callers, metrics and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Tier {
    /// Healthy instances in the caller's zone.
    Zone,
    /// Healthy instances in the caller's region (its zone had too few).
    Region,
    /// Every healthy instance (no locality given, or the region had too few too). May be
    /// empty when nothing is healthy and panic mode is off.
    Any,
    /// Every registered instance, healthy or not: too little of the service was healthy.
    Panic,
}

impl Tier {
    /// Lower-case name for metric labels and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Zone => "zone",
            Tier::Region => "region",
            Tier::Any => "any",
            Tier::Panic => "panic",
        }
    }
}

impl fmt::Display for Tier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What [`select`] decided.
#[derive(Debug, Clone, PartialEq)]
pub struct Selection<'a, T> {
    /// The set chosen.
    pub tier: Tier,
    /// The instances the balancer may pick from, in the order given. Pass them straight
    /// to [`Balancer::pick`](crate::balance::Balancer::pick).
    pub candidates: Vec<&'a T>,
    /// Healthy instances in the whole service, for metrics.
    pub healthy: usize,
    /// Registered (not draining) instances in the whole service, for metrics.
    pub registered: usize,
}

/// Chooses the candidates for one request among all of a service's `instances` (any
/// status; `T` is `Instance`, `&Instance`, `Arc<Instance>`, ...). `healthy` is asked
/// only about passing, not draining instances, and says whether the caller still trusts
/// it (typically: not ejected by outlier detection).
///
/// In order:
/// 1. **Panic**: when fewer than `policy.panic_threshold` of the registered instances
///    are healthy, all registered instances (passing and critical, ejected or not; never
///    draining). Checked first, as in Envoy: it overrides locality, since a service this
///    degraded needs every instance that might answer.
/// 2. **Zone**: healthy instances in `locality.zone`, if it has at least
///    `policy.min_local` serving ones and at least `policy.min_local_share` of its
///    registered instances are healthy.
/// 3. **Region**: the same test on `locality.region`.
/// 4. **Any**: every healthy instance (possibly none).
///
/// O(n) in the number of instances, one allocation (the candidate list).
pub fn select<'a, T, F>(
    instances: &'a [T],
    locality: &Locality,
    policy: &LocalityPolicy,
    healthy: F,
) -> Selection<'a, T>
where
    T: Borrow<Instance>,
    F: Fn(&Instance) -> bool,
{
    // One pass to classify every instance; the predicate runs once per passing one.
    let mut zone = Count::default();
    let mut region = Count::default();
    let mut service = Count::default();
    let mut health = Vec::with_capacity(instances.len());
    for t in instances {
        let inst = t.borrow();
        let h = classify(inst, &healthy);
        health.push(h);
        service.add(inst, h);
        if locality.zone.is_some() && inst.zone == locality.zone {
            zone.add(inst, h);
        }
        if locality.region.is_some() && inst.region == locality.region {
            region.add(inst, h);
        }
    }

    let pick = |keep: &dyn Fn(&Instance, Health) -> bool| -> Vec<&'a T> {
        instances
            .iter()
            .zip(&health)
            .filter(|(t, &h)| keep((*t).borrow(), h))
            .map(|(t, _)| t)
            .collect()
    };
    let finish = |tier: Tier, candidates: Vec<&'a T>| Selection {
        tier,
        candidates,
        healthy: service.healthy,
        registered: service.registered,
    };

    if share_below(service.healthy, service.registered, policy.panic_threshold) {
        return finish(Tier::Panic, pick(&|_, h| h != Health::Draining));
    }
    if locality.zone.is_some() && zone.enough(policy) {
        return finish(
            Tier::Zone,
            pick(&|inst, h| h == Health::Healthy && inst.zone == locality.zone),
        );
    }
    if locality.region.is_some() && region.enough(policy) {
        return finish(
            Tier::Region,
            pick(&|inst, h| h == Health::Healthy && inst.region == locality.region),
        );
    }
    finish(Tier::Any, pick(&|_, h| h == Health::Healthy))
}

/// One instance as [`select`] sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Health {
    /// Passing and trusted by the caller.
    Healthy,
    /// Registered (passing or critical) but not healthy.
    Unhealthy,
    /// Asked to be taken out of traffic.
    Draining,
}

fn classify(inst: &Instance, healthy: &impl Fn(&Instance) -> bool) -> Health {
    match inst.status {
        InstanceStatus::Draining => Health::Draining,
        InstanceStatus::Critical => Health::Unhealthy,
        InstanceStatus::Passing if healthy(inst) => Health::Healthy,
        InstanceStatus::Passing => Health::Unhealthy,
    }
}

/// Instance counts for one zone, region or the whole service.
#[derive(Debug, Default, Clone, Copy)]
struct Count {
    /// Not draining.
    registered: usize,
    /// Healthy.
    healthy: usize,
    /// Healthy with weight above 0.
    serving: usize,
}

impl Count {
    fn add(&mut self, inst: &Instance, h: Health) {
        match h {
            Health::Draining => {}
            Health::Unhealthy => self.registered += 1,
            Health::Healthy => {
                self.registered += 1;
                self.healthy += 1;
                if inst.weight > 0 {
                    self.serving += 1;
                }
            }
        }
    }

    /// Whether this zone or region can keep its callers' traffic.
    fn enough(&self, policy: &LocalityPolicy) -> bool {
        self.serving >= policy.min_local.max(1)
            && !share_below(self.healthy, self.registered, policy.min_local_share)
    }
}

/// `part / whole < threshold`, with the threshold clamped to `0.0..=1.0`; false for NaN
/// thresholds and empty wholes.
fn share_below(part: usize, whole: usize, threshold: f64) -> bool {
    // Counts are far below 2^52, so the conversions are exact.
    whole > 0 && (part as f64) < threshold.clamp(0.0, 1.0) * whole as f64
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::sync::Arc;

    use super::*;

    fn inst(id: &str, zone: &str, region: &str, status: InstanceStatus) -> Instance {
        Instance {
            service: "web".into(),
            id: id.into(),
            address: "10.0.0.1".into(),
            port: 80,
            tags: vec![],
            meta: Default::default(),
            zone: (!zone.is_empty()).then(|| zone.into()),
            region: (!region.is_empty()).then(|| region.into()),
            weight: 1,
            status,
            lease: Some(uuid::Uuid::nil()),
            own_lease: true,
            ttl: Some("10s".into()),
            ttl_ms: Some(10_000),
            deregister_after: "1m".into(),
            deregister_after_ms: 60_000,
            registered_at_ms: 0,
            modify_index: 1,
            critical_since_ms: None,
            checks: Vec::new(),
        }
    }

    use InstanceStatus::{Critical, Draining, Passing};

    fn here() -> Locality {
        Locality {
            zone: Some("eu-1a".into()),
            region: Some("eu".into()),
        }
    }

    fn ids<T: Borrow<Instance>>(s: &Selection<'_, T>) -> Vec<String> {
        s.candidates
            .iter()
            .map(|t| (*t).borrow().id.clone())
            .collect()
    }

    fn all_healthy(_: &Instance) -> bool {
        true
    }

    /// Two per zone in eu-1a and eu-1b, two in us-1a.
    fn fleet() -> Vec<Instance> {
        vec![
            inst("a1", "eu-1a", "eu", Passing),
            inst("a2", "eu-1a", "eu", Passing),
            inst("b1", "eu-1b", "eu", Passing),
            inst("b2", "eu-1b", "eu", Passing),
            inst("u1", "us-1a", "us", Passing),
            inst("u2", "us-1a", "us", Passing),
        ]
    }

    #[test]
    fn prefers_the_callers_zone() {
        let all = fleet();
        let s = select(&all, &here(), &LocalityPolicy::default(), all_healthy);
        assert_eq!(s.tier, Tier::Zone);
        assert_eq!(ids(&s), ["a1", "a2"]);
        assert_eq!((s.healthy, s.registered), (6, 6));
    }

    #[test]
    fn spills_to_the_region_then_anywhere() {
        let mut all = fleet();
        // One of two in eu-1a ejected: 50% healthy, still enough by default.
        let not_a2 = |i: &Instance| i.id != "a2";
        let s = select(&all, &here(), &LocalityPolicy::default(), not_a2);
        assert_eq!((s.tier, ids(&s)), (Tier::Zone, vec!["a1".to_string()]));

        // With min_local 2, one healthy local is too few: the region's healthy ones.
        let policy = LocalityPolicy {
            min_local: 2,
            ..Default::default()
        };
        let s = select(&all, &here(), &policy, not_a2);
        assert_eq!(s.tier, Tier::Region);
        assert_eq!(ids(&s), ["a1", "b1", "b2"]);

        // Too small a share of the zone healthy: spill even though one is left.
        all.push(inst("a3", "eu-1a", "eu", Critical));
        let s = select(&all, &here(), &LocalityPolicy::default(), not_a2);
        assert_eq!(s.tier, Tier::Region, "1 of 3 healthy in the zone");

        // The whole region mostly down: everything healthy.
        let only_us_and_a1 = |i: &Instance| i.id == "a1" || i.region.as_deref() == Some("us");
        let all = fleet();
        let policy = LocalityPolicy {
            min_local: 2,
            panic_threshold: 0.0,
            ..Default::default()
        };
        let s = select(&all, &here(), &policy, only_us_and_a1);
        assert_eq!(s.tier, Tier::Any);
        assert_eq!(ids(&s), ["a1", "u1", "u2"]);
    }

    #[test]
    fn zone_without_a_region_skips_to_any() {
        let all = fleet();
        let caller = Locality {
            zone: Some("eu-1a".into()),
            region: None,
        };
        let none_in_a = |i: &Instance| i.zone.as_deref() != Some("eu-1a");
        let s = select(&all, &caller, &LocalityPolicy::default(), none_in_a);
        assert_eq!(s.tier, Tier::Any);
        assert_eq!(ids(&s), ["b1", "b2", "u1", "u2"]);
    }

    #[test]
    fn weight_zero_instances_do_not_make_a_zone_enough() {
        let mut all = fleet();
        all[0].weight = 0;
        all[1].weight = 0;
        let s = select(&all, &here(), &LocalityPolicy::default(), all_healthy);
        assert_eq!(s.tier, Tier::Region);
        // They stay candidates; the balancer skips them while others have weight.
        assert_eq!(ids(&s), ["a1", "a2", "b1", "b2"]);
    }

    #[test]
    fn panic_mode_balances_over_all_registered_but_not_draining() {
        let all = vec![
            inst("a1", "eu-1a", "eu", Passing),
            inst("a2", "eu-1a", "eu", Critical),
            inst("b1", "eu-1b", "eu", Passing),
            inst("b2", "eu-1b", "eu", Critical),
            inst("u1", "us-1a", "us", Passing),
            inst("u2", "us-1a", "us", Draining),
        ];
        // 3 of 5 registered healthy (60%): no panic; a1 alone is 50% of eu-1a: stays.
        let s = select(&all, &here(), &LocalityPolicy::default(), all_healthy);
        assert_eq!((s.tier, s.healthy, s.registered), (Tier::Zone, 3, 5));

        // Eject b1 too: 2 of 5 (40%) < 50%: panic, over everything not draining,
        // including the ejected and the critical.
        let not_b1 = |i: &Instance| i.id != "b1";
        let s = select(&all, &here(), &LocalityPolicy::default(), not_b1);
        assert_eq!(s.tier, Tier::Panic);
        assert_eq!(ids(&s), ["a1", "a2", "b1", "b2", "u1"]);

        // Panic threshold 0 turns it off.
        let off = LocalityPolicy {
            panic_threshold: 0.0,
            ..Default::default()
        };
        let s = select(&all, &here(), &off, not_b1);
        assert_eq!(s.tier, Tier::Zone);

        // Nothing healthy at all: panic mode still has candidates.
        let s = select(
            &all,
            &Locality::default(),
            &LocalityPolicy::default(),
            |_| false,
        );
        assert_eq!(s.tier, Tier::Panic);
        assert_eq!(s.candidates.len(), 5);
        // And with panic off, nothing.
        let s = select(&all, &Locality::default(), &off, |_| false);
        assert_eq!((s.tier, s.candidates.len()), (Tier::Any, 0));
    }

    #[test]
    fn a_draining_fleet_does_not_cause_panic() {
        let mut all = fleet();
        for i in &mut all[2..] {
            i.status = Draining;
        }
        let s = select(&all, &here(), &LocalityPolicy::default(), all_healthy);
        assert_eq!(s.tier, Tier::Zone);
        assert_eq!((s.healthy, s.registered), (2, 2));
    }

    #[test]
    fn no_locality_means_every_healthy_instance() {
        let mut all = fleet();
        all[3].status = Critical;
        all[4].status = Draining;
        let s = select(
            &all,
            &Locality::default(),
            &LocalityPolicy::default(),
            all_healthy,
        );
        assert_eq!(s.tier, Tier::Any);
        assert_eq!(ids(&s), ["a1", "a2", "b1", "u2"]);
        // The predicate is never asked about draining or critical instances.
        let asked = std::cell::RefCell::new(HashSet::new());
        let _ = select(
            &all,
            &Locality::default(),
            &LocalityPolicy::default(),
            |i| {
                asked.borrow_mut().insert(i.id.clone());
                true
            },
        );
        assert!(!asked.borrow().contains("b2") && !asked.borrow().contains("u1"));
    }

    #[test]
    fn empty_service() {
        let none: Vec<Instance> = vec![];
        let s = select(&none, &here(), &LocalityPolicy::default(), all_healthy);
        assert_eq!(
            (s.tier, s.candidates.len(), s.healthy, s.registered),
            (Tier::Any, 0, 0, 0)
        );
        // Only draining instances: nothing to send to, and no panic either.
        let draining = vec![inst("a1", "eu-1a", "eu", Draining)];
        let s = select(&draining, &here(), &LocalityPolicy::default(), all_healthy);
        assert_eq!((s.tier, s.candidates.len()), (Tier::Any, 0));
    }

    #[test]
    fn accepts_references_and_arcs_and_feeds_the_balancer() {
        let all: Vec<Arc<Instance>> = fleet().into_iter().map(Arc::new).collect();
        let s = select(&all, &here(), &LocalityPolicy::default(), all_healthy);
        assert_eq!(s.tier, Tier::Zone);
        let b = crate::balance::Balancer::default();
        let pick = b.pick(&s.candidates, None).unwrap();
        assert_eq!(s.candidates[pick.index].id, "a1");

        let refs: Vec<&Instance> = all.iter().map(|a| a.as_ref()).collect();
        let s = select(&refs, &here(), &LocalityPolicy::default(), all_healthy);
        assert_eq!(ids(&s), ["a1", "a2"]);
    }
}
