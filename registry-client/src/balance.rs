//! Load balancing: which of a service's candidate endpoints takes the next request.
//!
//! A [`Balancer`] (one per service) picks an index into the candidate list it is given
//! on each call, by the service's [`Policy`]. The list may change between calls (the
//! discovery cache refreshed, the locality tier moved): every piece of state is keyed by
//! the endpoint's [`Endpoint::id`], never by its position, so a rotation, a weighted
//! credit, an in-flight count or a hash ring survives the list being reordered, grown or
//! shrunk.
//!
//! Weights (see [`Endpoint::weight`]): weight 0 means "send no traffic here", so an
//! endpoint with weight 0 is never picked while any candidate has a weight above 0. When
//! every candidate has weight 0 they are all treated as equal (weight 1): the caller asked
//! for an endpoint, and sending the request somewhere beats failing it, the same reasoning
//! as the panic threshold in [`locality`](crate::locality). A service that must get no
//! traffic at all should drain its instances, which takes them out of the candidates.
//!
//! No IO, no clock, no async. Randomness is an input too: [`Balancer::pick_with_rng`]
//! takes the generator, [`Balancer::pick`] uses the thread's.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use rand::Rng;

/// Virtual nodes per endpoint on the consistent-hash ring. 160 is what ketama (memcached)
/// uses: enough that each endpoint's share of the key space stays within about ±20% of
/// even, small enough that a rebuild (on every change of the endpoint set) is cheap.
pub const VIRTUAL_NODES: u32 = 160;

/// What the balancer needs to know about a candidate. Implemented for
/// [`api_spec::Instance`] and for references and `Arc`s to anything that implements it,
/// so a caller can pass `&[Instance]`, `&[&Instance]` (what
/// [`locality::select`](crate::locality::select) returns) or `&[Arc<Instance>]`.
pub trait Endpoint {
    /// Stable identity of the endpoint. All balancer state is keyed by it, so it must be
    /// unique within a service; the instance id is.
    fn id(&self) -> &str;
    /// Relative share of traffic; 0 means none while any other candidate has more.
    fn weight(&self) -> u32;
}

impl Endpoint for api_spec::Instance {
    fn id(&self) -> &str {
        &self.id
    }

    fn weight(&self) -> u32 {
        self.weight
    }
}

impl<T: Endpoint + ?Sized> Endpoint for &T {
    fn id(&self) -> &str {
        (**self).id()
    }

    fn weight(&self) -> u32 {
        (**self).weight()
    }
}

impl<T: Endpoint + ?Sized> Endpoint for Arc<T> {
    fn id(&self) -> &str {
        (**self).id()
    }

    fn weight(&self) -> u32 {
        (**self).weight()
    }
}

/// How a service's requests are spread over its endpoints. Chosen per service.
///
/// The default is [`WeightedRoundRobin`](Policy::WeightedRoundRobin): the registry
/// carries a weight for every instance, and an operator who sets one expects it to be
/// honoured without configuring every client; with equal weights (the registry's default
/// is 1) it is plain round robin.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Policy {
    /// Each endpoint in turn, in order of id, ignoring weights (other than 0).
    RoundRobin,
    /// Smooth weighted round robin (nginx's algorithm): over any run of picks as long as
    /// the total weight, each endpoint is picked exactly its weight's number of times,
    /// and the picks of a heavy endpoint are spread out rather than bunched.
    #[default]
    WeightedRoundRobin,
    /// Uniformly at random, ignoring weights (other than 0). Needs no coordination
    /// between clients to spread load, and has no per-pick state to contend on.
    Random,
    /// Power of two choices: two distinct endpoints at random, the one with fewer
    /// requests in flight from this balancer wins (ties go to the first drawn). Steers
    /// away from slow endpoints without a global view; ignores weights (other than 0).
    LeastOutstanding,
    /// Consistent hashing of a request key onto a ring of [`VIRTUAL_NODES`] points per
    /// endpoint, so the same key goes to the same endpoint while the set is unchanged,
    /// and adding or removing one of N endpoints moves only about 1/N of the keys.
    /// Ignores weights (other than 0): a weight change would otherwise move keys. A pick
    /// without a key falls back to [`Random`](Policy::Random).
    ConsistentHash,
}

impl Policy {
    /// Every policy, for help texts and exhaustive tests.
    pub const ALL: [Policy; 5] = [
        Policy::RoundRobin,
        Policy::WeightedRoundRobin,
        Policy::Random,
        Policy::LeastOutstanding,
        Policy::ConsistentHash,
    ];

    /// The name used in configuration and flags (`round_robin`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Policy::RoundRobin => "round_robin",
            Policy::WeightedRoundRobin => "weighted_round_robin",
            Policy::Random => "random",
            Policy::LeastOutstanding => "least_outstanding",
            Policy::ConsistentHash => "consistent_hash",
        }
    }
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A policy name that is none of [`Policy::as_str`]'s.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown balancing policy {0:?} (expected round_robin, weighted_round_robin, random, \
     least_outstanding or consistent_hash)"
)]
pub struct UnknownPolicy(pub String);

impl FromStr for Policy {
    type Err = UnknownPolicy;

    /// Parses the names [`Policy::as_str`] gives, so configuration and flags can name a
    /// policy.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Policy::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| UnknownPolicy(s.to_owned()))
    }
}

/// Counts one request as outstanding on an endpoint until dropped. Hold it for as long
/// as the request runs: [`Policy::LeastOutstanding`] compares these counts.
#[derive(Debug)]
#[must_use = "the request counts as outstanding only while the guard lives"]
pub struct InFlight {
    /// Shared with the balancer's table; decremented on drop. Holding the `Arc` (rather
    /// than a key into the table) keeps the decrement right even if the balancer
    /// forgot the endpoint meanwhile, and makes drop lock-free.
    count: Arc<AtomicUsize>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        // Relaxed: the count is a load hint, it orders nothing else.
        self.count.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The endpoint chosen for one request.
#[derive(Debug)]
#[must_use = "a pick is meant to be used; dropping the guard ends the request's in-flight count"]
pub struct Pick {
    /// Index into the candidate slice passed to [`Balancer::pick`].
    pub index: usize,
    /// Keeps the request counted as in flight on that endpoint; drop it when the
    /// request ends.
    pub guard: InFlight,
}

/// Picks endpoints for one service by one [`Policy`].
///
/// Thread safety: `Balancer` is `Send + Sync`; share it (e.g. in an `Arc`) and call
/// [`pick`](Self::pick) from any number of tasks. Each pick takes one `std::sync::Mutex`
/// for the few microseconds the choice takes (no `.await` can happen under it: there is
/// none in this module). Dropping an [`InFlight`] guard takes no lock.
///
/// Cost per pick: O(n) in the number of candidates (one pass over them), except
/// [`Policy::ConsistentHash`], which rebuilds its ring (O(n log n) in
/// n × [`VIRTUAL_NODES`]) only when the set of eligible ids changes and otherwise
/// checks the set in O(n log n) and finds the key in O(log n).
#[derive(Debug)]
pub struct Balancer {
    /// Fixed for the balancer's life: the state below is kept for this policy only.
    policy: Policy,
    /// Everything that changes between picks. One lock: a pick touches at most two parts.
    state: Mutex<State>,
}

/// A balancer's mutable state, all keyed by endpoint id.
#[derive(Debug, Default)]
struct State {
    /// Round robin: the id picked last; the next pick is the smallest eligible id after
    /// it (wrapping). Keyed by id so that endpoints joining or leaving do not shift the
    /// rotation of the others.
    last: Option<String>,
    /// Smooth weighted round robin: each endpoint's current credit.
    credit: HashMap<String, i64>,
    /// Requests in flight per endpoint, counted by the [`InFlight`] guards.
    in_flight: HashMap<String, Arc<AtomicUsize>>,
    /// Consistent hashing: the ring for the last eligible set seen.
    ring: Option<Ring>,
}

/// Which candidates may be picked: those with weight above 0, or all of them when none
/// has (see the module docs).
#[derive(Debug, Clone, Copy)]
struct Eligible {
    /// `true` when every candidate has weight 0 and all are treated as weight 1.
    all_zero: bool,
    /// How many candidates may be picked.
    count: usize,
}

impl Eligible {
    fn of<E: Endpoint>(candidates: &[E]) -> Eligible {
        let count = candidates.iter().filter(|c| c.weight() > 0).count();
        if count == 0 {
            Eligible {
                all_zero: true,
                count: candidates.len(),
            }
        } else {
            Eligible {
                all_zero: false,
                count,
            }
        }
    }

    /// The weight a candidate is balanced with (0 = not eligible).
    fn weight<E: Endpoint>(self, candidate: &E) -> u32 {
        if self.all_zero {
            1
        } else {
            candidate.weight()
        }
    }

    /// Indices of the eligible candidates, in order.
    fn indices<E: Endpoint>(self, candidates: &[E]) -> impl Iterator<Item = usize> + '_ {
        candidates
            .iter()
            .enumerate()
            .filter(move |(_, c)| self.weight(*c) > 0)
            .map(|(i, _)| i)
    }

    /// Index of the `n`th eligible candidate (`n < self.count`).
    fn nth<E: Endpoint>(self, candidates: &[E], n: usize) -> Option<usize> {
        if self.count == candidates.len() {
            Some(n).filter(|&n| n < candidates.len())
        } else {
            self.indices(candidates).nth(n)
        }
    }
}

impl Default for Balancer {
    /// A balancer with the default policy ([`Policy::WeightedRoundRobin`]).
    fn default() -> Self {
        Balancer::new(Policy::default())
    }
}

impl Balancer {
    /// A balancer with no history.
    pub fn new(policy: Policy) -> Self {
        Balancer {
            policy,
            state: Mutex::new(State::default()),
        }
    }

    /// The policy it balances by.
    pub fn policy(&self) -> Policy {
        self.policy
    }

    /// Picks one of `candidates` with the thread's random generator; see
    /// [`pick_with_rng`](Self::pick_with_rng).
    pub fn pick<E: Endpoint>(&self, candidates: &[E], key: Option<&[u8]>) -> Option<Pick> {
        self.pick_with_rng(candidates, key, &mut rand::rng())
    }

    /// Picks one of `candidates`, or `None` when there are none. `key` is the request's
    /// key for [`Policy::ConsistentHash`] and ignored by the other policies. Randomness
    /// ([`Policy::Random`], [`Policy::LeastOutstanding`], a keyless consistent-hash pick)
    /// comes from `rng`, so tests can seed it.
    ///
    /// The returned guard counts the request as in flight on the picked endpoint until
    /// dropped, whatever the policy (so [`in_flight`](Self::in_flight) is meaningful
    /// for metrics under any policy).
    pub fn pick_with_rng<E: Endpoint, R: Rng + ?Sized>(
        &self,
        candidates: &[E],
        key: Option<&[u8]>,
        rng: &mut R,
    ) -> Option<Pick> {
        if candidates.is_empty() {
            return None;
        }
        let eligible = Eligible::of(candidates);
        let mut state = self.lock();
        let index = match self.policy {
            Policy::RoundRobin => round_robin(&mut state, candidates, eligible),
            Policy::WeightedRoundRobin => smooth_weighted(&mut state, candidates, eligible),
            Policy::Random => random(candidates, eligible, rng),
            Policy::LeastOutstanding => least_outstanding(&state, candidates, eligible, rng),
            Policy::ConsistentHash => match key {
                Some(key) => consistent_hash(&mut state, candidates, eligible, key),
                None => random(candidates, eligible, rng),
            },
        }?;
        let id = candidates.get(index)?.id();
        let guard = state.start(id);
        state.prune_in_flight(candidates.len());
        Some(Pick { index, guard })
    }

    /// Counts a request the caller sent to `id` without [`pick`](Self::pick) (a retry
    /// pinned to one endpoint, say), so [`Policy::LeastOutstanding`] sees that load too.
    pub fn start(&self, id: &str) -> InFlight {
        self.lock().start(id)
    }

    /// Requests now in flight on `id` through this balancer's guards.
    pub fn in_flight(&self, id: &str) -> usize {
        self.lock()
            .in_flight
            .get(id)
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic under this lock cannot leave the state inconsistent in a way that
        // matters (worst case: one skewed pick), so a poisoned lock is used as is.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl State {
    fn start(&mut self, id: &str) -> InFlight {
        let count = match self.in_flight.get(id) {
            Some(count) => Arc::clone(count),
            None => {
                let count = Arc::new(AtomicUsize::new(0));
                self.in_flight.insert(id.to_owned(), Arc::clone(&count));
                count
            }
        };
        count.fetch_add(1, Ordering::Relaxed);
        InFlight { count }
    }

    /// Forgets counters no guard holds once the table is well past the candidate count,
    /// so endpoints that left do not accumulate. Lossless: a counter only the table
    /// holds is 0, which is what a new one starts at.
    fn prune_in_flight(&mut self, candidates: usize) {
        if self.in_flight.len() > 2 * candidates + 16 {
            self.in_flight.retain(|_, c| Arc::strong_count(c) > 1);
        }
    }
}

/// The smallest eligible id after the last one picked, or the smallest overall.
fn round_robin<E: Endpoint>(
    state: &mut State,
    candidates: &[E],
    eligible: Eligible,
) -> Option<usize> {
    let mut first: Option<usize> = None;
    let mut next: Option<usize> = None;
    for i in eligible.indices(candidates) {
        let id = candidates[i].id();
        if first.is_none_or(|f| id < candidates[f].id()) {
            first = Some(i);
        }
        let after_last = state.last.as_deref().is_none_or(|last| id > last);
        if after_last && next.is_none_or(|n| id < candidates[n].id()) {
            next = Some(i);
        }
    }
    let chosen = next.or(first)?;
    let last = state.last.get_or_insert_with(String::new);
    last.clear();
    last.push_str(candidates[chosen].id());
    Some(chosen)
}

/// nginx's smooth weighted round robin: every eligible endpoint gains its weight in
/// credit, the one with the most credit (ties: smallest id) is picked and pays the total
/// weight back. Credit is kept per id; credit of endpoints no longer among the candidates
/// is dropped (as nginx does on reconfiguration), and newcomers start at 0.
fn smooth_weighted<E: Endpoint>(
    state: &mut State,
    candidates: &[E],
    eligible: Eligible,
) -> Option<usize> {
    let mut total: i64 = 0;
    let mut best: Option<(usize, i64)> = None;
    for i in eligible.indices(candidates) {
        let c = &candidates[i];
        let weight = i64::from(eligible.weight(c));
        total += weight;
        let credit = match state.credit.get_mut(c.id()) {
            Some(credit) => credit,
            None => state.credit.entry(c.id().to_owned()).or_insert(0),
        };
        *credit += weight;
        let credit = *credit;
        let better = match best {
            None => true,
            Some((b, best_credit)) => {
                credit > best_credit || (credit == best_credit && c.id() < candidates[b].id())
            }
        };
        if better {
            best = Some((i, credit));
        }
    }
    let (chosen, _) = best?;
    if let Some(credit) = state.credit.get_mut(candidates[chosen].id()) {
        *credit -= total;
    }
    if state.credit.len() > eligible.count {
        let ids: std::collections::HashSet<&str> = eligible
            .indices(candidates)
            .map(|i| candidates[i].id())
            .collect();
        state.credit.retain(|id, _| ids.contains(id.as_str()));
    }
    Some(chosen)
}

/// Uniformly among the eligible.
fn random<E: Endpoint, R: Rng + ?Sized>(
    candidates: &[E],
    eligible: Eligible,
    rng: &mut R,
) -> Option<usize> {
    if eligible.count == 0 {
        return None;
    }
    eligible.nth(candidates, rng.random_range(0..eligible.count))
}

/// Power of two choices on in-flight counts.
fn least_outstanding<E: Endpoint, R: Rng + ?Sized>(
    state: &State,
    candidates: &[E],
    eligible: Eligible,
    rng: &mut R,
) -> Option<usize> {
    if eligible.count < 2 {
        return eligible.nth(candidates, 0);
    }
    let first = rng.random_range(0..eligible.count);
    let mut second = rng.random_range(0..eligible.count - 1);
    if second >= first {
        second += 1;
    }
    let a = eligible.nth(candidates, first)?;
    let b = eligible.nth(candidates, second)?;
    let load = |i: usize| {
        state
            .in_flight
            .get(candidates[i].id())
            .map_or(0, |c| c.load(Ordering::Relaxed))
    };
    Some(if load(b) < load(a) { b } else { a })
}

/// The endpoint owning `key` on the ring for the eligible set, rebuilding the ring first
/// if the set changed.
fn consistent_hash<E: Endpoint>(
    state: &mut State,
    candidates: &[E],
    eligible: Eligible,
    key: &[u8],
) -> Option<usize> {
    let current = state
        .ring
        .as_ref()
        .is_some_and(|ring| ring.built_from(candidates, eligible));
    if !current {
        state.ring = Some(Ring::build(candidates, eligible));
    }
    let id = state.ring.as_ref()?.owner(key)?;
    eligible
        .indices(candidates)
        .find(|&i| candidates[i].id() == id)
}

/// A consistent-hash ring: [`VIRTUAL_NODES`] points per endpoint.
///
/// The hash is fixed and documented, so every client (in any process, any build, any
/// language) maps a key to the same endpoint given the same set: [`hash`], i.e. 64-bit
/// FNV-1a followed by murmur3's `fmix64` finalizer (FNV-1a alone spreads short, similar
/// inputs such as `"a#1"`, `"a#2"` poorly). Virtual node `v` (0-based) of endpoint `id`
/// sits at `hash(id bytes ++ [0xff] ++ v as u32 little-endian)`; a key belongs to the
/// first point at or after `hash(key)`, wrapping round. Points that collide are ordered
/// by id, so the owner does not depend on the candidates' order.
#[derive(Debug)]
struct Ring {
    /// The eligible ids it was built from, sorted and deduplicated.
    ids: Vec<String>,
    /// `(point, index into ids)`, sorted.
    points: Vec<(u64, u32)>,
}

impl Ring {
    fn build<E: Endpoint>(candidates: &[E], eligible: Eligible) -> Ring {
        let mut ids: Vec<String> = eligible
            .indices(candidates)
            .map(|i| candidates[i].id().to_owned())
            .collect();
        ids.sort_unstable();
        ids.dedup();
        let mut points = Vec::with_capacity(ids.len() * VIRTUAL_NODES as usize);
        for (slot, id) in ids.iter().enumerate() {
            let slot = u32::try_from(slot).unwrap_or(u32::MAX);
            let mut input = Vec::with_capacity(id.len() + 5);
            for v in 0..VIRTUAL_NODES {
                input.clear();
                input.extend_from_slice(id.as_bytes());
                input.push(0xff);
                input.extend_from_slice(&v.to_le_bytes());
                points.push((hash(&input), slot));
            }
        }
        // Slots follow id order, so sorting by (point, slot) orders collisions by id.
        points.sort_unstable();
        Ring { ids, points }
    }

    /// Whether the eligible candidates are exactly the ids the ring holds.
    fn built_from<E: Endpoint>(&self, candidates: &[E], eligible: Eligible) -> bool {
        eligible.count == self.ids.len()
            && eligible.indices(candidates).all(|i| {
                self.ids
                    .binary_search_by(|id| id.as_str().cmp(candidates[i].id()))
                    .is_ok()
            })
    }

    fn owner(&self, key: &[u8]) -> Option<&str> {
        let h = hash(key);
        let at = self.points.partition_point(|&(p, _)| p < h);
        let (_, slot) = self.points.get(at).or_else(|| self.points.first())?;
        self.ids.get(*slot as usize).map(String::as_str)
    }
}

/// The ring's hash: 64-bit FNV-1a of `bytes`, then murmur3's `fmix64` to spread the
/// bits. Fixed forever (changing it would move every key), independent of platform and
/// Rust version, unlike `std`'s `DefaultHasher`.
pub fn hash(bytes: &[u8]) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut h = OFFSET;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(PRIME);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^= h >> 33;
    h
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use rand::rngs::StdRng;
    use rand::SeedableRng;

    use super::*;

    #[derive(Debug, Clone)]
    struct Ep {
        id: String,
        weight: u32,
    }

    impl Endpoint for Ep {
        fn id(&self) -> &str {
            &self.id
        }
        fn weight(&self) -> u32 {
            self.weight
        }
    }

    fn eps(weights: &[u32]) -> Vec<Ep> {
        weights
            .iter()
            .enumerate()
            .map(|(i, &weight)| Ep {
                id: format!("ep-{i}"),
                weight,
            })
            .collect()
    }

    /// Picks `n` times (guards dropped at once) and counts picks per id.
    fn shares(b: &Balancer, c: &[Ep], n: usize, rng: &mut StdRng) -> HashMap<String, usize> {
        let mut counts = HashMap::new();
        for i in 0..n {
            let key = format!("key-{i}");
            let pick = b.pick_with_rng(c, Some(key.as_bytes()), rng).unwrap();
            *counts.entry(c[pick.index].id.clone()).or_default() += 1;
        }
        counts
    }

    fn within(actual: usize, expected: f64, tolerance: f64) -> bool {
        (actual as f64 - expected).abs() <= expected * tolerance
    }

    #[test]
    fn empty_candidates_give_none_for_every_policy() {
        let none: [Ep; 0] = [];
        for policy in Policy::ALL {
            let b = Balancer::new(policy);
            assert!(b.pick(&none, Some(b"k")).is_none(), "{policy}");
            assert!(b.pick(&none, None).is_none(), "{policy}");
        }
    }

    #[test]
    fn smooth_weighted_round_robin_is_exactly_proportional_and_smooth() {
        let c = eps(&[1, 2, 3, 4]);
        let b = Balancer::new(Policy::WeightedRoundRobin);
        let counts = shares(&b, &c, 10_000, &mut StdRng::seed_from_u64(1));
        for (i, w) in [1, 2, 3, 4].into_iter().enumerate() {
            assert_eq!(counts[&format!("ep-{i}")], 1000 * w, "ep-{i}");
        }
        // Smooth: weights 5,1,1 give a a b a c a a, not a a a a a b c (nginx's example).
        let c = vec![
            Ep {
                id: "a".into(),
                weight: 5,
            },
            Ep {
                id: "b".into(),
                weight: 1,
            },
            Ep {
                id: "c".into(),
                weight: 1,
            },
        ];
        let b = Balancer::new(Policy::WeightedRoundRobin);
        let seq: String = (0..7)
            .map(|_| c[b.pick(&c, None).unwrap().index].id.clone())
            .collect();
        assert_eq!(seq, "aabacaa");
    }

    #[test]
    fn round_robin_and_random_and_p2c_give_equal_shares_ignoring_weights() {
        let c = eps(&[1, 2, 3, 4]);
        for policy in [Policy::RoundRobin, Policy::Random, Policy::LeastOutstanding] {
            let b = Balancer::new(policy);
            let counts = shares(&b, &c, 10_000, &mut StdRng::seed_from_u64(7));
            for ep in &c {
                assert!(
                    within(counts[&ep.id], 2500.0, 0.05),
                    "{policy}: {} got {}",
                    ep.id,
                    counts[&ep.id]
                );
            }
        }
        // Round robin is exact.
        let b = Balancer::new(Policy::RoundRobin);
        let counts = shares(&b, &c, 10_000, &mut StdRng::seed_from_u64(7));
        assert!(counts.values().all(|&n| n == 2500), "{counts:?}");
    }

    #[test]
    fn consistent_hash_spreads_keys_roughly_evenly() {
        let c = eps(&[1; 4]);
        let b = Balancer::new(Policy::ConsistentHash);
        let counts = shares(&b, &c, 10_000, &mut StdRng::seed_from_u64(7));
        for ep in &c {
            // 160 virtual nodes keep each share within about ±20% of even.
            assert!(within(counts[&ep.id], 2500.0, 0.2), "{counts:?}");
        }
    }

    #[test]
    fn round_robin_rotation_survives_list_changes() {
        let b = Balancer::new(Policy::RoundRobin);
        let abc = vec![
            Ep {
                id: "a".into(),
                weight: 1,
            },
            Ep {
                id: "b".into(),
                weight: 1,
            },
            Ep {
                id: "c".into(),
                weight: 1,
            },
        ];
        assert_eq!(abc[b.pick(&abc, None).unwrap().index].id, "a");
        assert_eq!(abc[b.pick(&abc, None).unwrap().index].id, "b");
        // Reordered, and "a" gone: the rotation continues after "b".
        let cb = vec![abc[2].clone(), abc[1].clone()];
        assert_eq!(cb[b.pick(&cb, None).unwrap().index].id, "c");
        assert_eq!(cb[b.pick(&cb, None).unwrap().index].id, "b");
    }

    #[test]
    fn weight_zero_is_never_picked_unless_all_are_zero() {
        let c = eps(&[0, 3, 0, 1]);
        let mut rng = StdRng::seed_from_u64(3);
        for policy in Policy::ALL {
            let b = Balancer::new(policy);
            let counts = shares(&b, &c, 2_000, &mut rng);
            assert!(!counts.contains_key("ep-0"), "{policy}: {counts:?}");
            assert!(!counts.contains_key("ep-2"), "{policy}: {counts:?}");
            assert!(
                counts["ep-1"] > 0 && counts["ep-3"] > 0,
                "{policy}: {counts:?}"
            );
        }
        // All zero: treated as equal weights.
        let c = eps(&[0, 0, 0]);
        for policy in Policy::ALL {
            let b = Balancer::new(policy);
            let counts = shares(&b, &c, 3_000, &mut rng);
            assert_eq!(counts.len(), 3, "{policy}: {counts:?}");
        }
        let b = Balancer::new(Policy::WeightedRoundRobin);
        let counts = shares(&b, &c, 3_000, &mut rng);
        assert!(counts.values().all(|&n| n == 1000), "{counts:?}");
    }

    #[test]
    fn p2c_with_two_endpoints_always_takes_the_less_loaded() {
        let c = eps(&[1, 1]);
        let b = Balancer::new(Policy::LeastOutstanding);
        let _busy = [b.start("ep-0"), b.start("ep-0")];
        let mut rng = StdRng::seed_from_u64(11);
        for _ in 0..1_000 {
            let pick = b.pick_with_rng(&c, None, &mut rng).unwrap();
            assert_eq!(pick.index, 1);
        }
        // Held picks count as load too: ep-1 wins while it has fewer in flight ...
        let mut held: Vec<Pick> = (0..2)
            .map(|_| b.pick_with_rng(&c, None, &mut rng).unwrap())
            .collect();
        assert!(held.iter().all(|p| p.index == 1));
        // ... and once it has more, ep-0 does.
        let extra = b.start("ep-1");
        assert_eq!((b.in_flight("ep-0"), b.in_flight("ep-1")), (2, 3));
        for _ in 0..100 {
            assert_eq!(b.pick_with_rng(&c, None, &mut rng).unwrap().index, 0);
        }
        held.clear();
        drop(extra);
        assert_eq!(b.in_flight("ep-1"), 0);
    }

    #[test]
    fn p2c_picks_a_loaded_endpoint_much_less() {
        let c = eps(&[1; 4]);
        let b = Balancer::new(Policy::LeastOutstanding);
        let _busy: Vec<InFlight> = (0..5).map(|_| b.start("ep-0")).collect();
        let counts = shares(&b, &c, 10_000, &mut StdRng::seed_from_u64(5));
        // Two distinct draws: the loaded one loses every time it is drawn.
        assert!(!counts.contains_key("ep-0"), "{counts:?}");

        // Keep requests outstanding on everyone, a few more on ep-0: it gets far fewer.
        let b = Balancer::new(Policy::LeastOutstanding);
        let mut rng = StdRng::seed_from_u64(6);
        let mut window = std::collections::VecDeque::new();
        let mut extra: Vec<InFlight> = (0..3).map(|_| b.start("ep-0")).collect();
        let mut counts = [0usize; 4];
        for _ in 0..10_000 {
            let pick = b.pick_with_rng(&c, None, &mut rng).unwrap();
            counts[pick.index] += 1;
            window.push_back(pick);
            if window.len() > 8 {
                window.pop_front();
            }
        }
        extra.clear();
        assert!(counts[0] * 3 < counts[1], "{counts:?}");
    }

    #[test]
    fn consistent_hash_is_stable_and_order_independent() {
        let c = eps(&[1; 5]);
        let mut reversed = c.clone();
        reversed.reverse();
        let b = Balancer::new(Policy::ConsistentHash);
        for i in 0..200 {
            let key = format!("user-{i}");
            let first = c[b.pick(&c, Some(key.as_bytes())).unwrap().index]
                .id
                .clone();
            let again = c[b.pick(&c, Some(key.as_bytes())).unwrap().index]
                .id
                .clone();
            let other_order = reversed[b.pick(&reversed, Some(key.as_bytes())).unwrap().index]
                .id
                .clone();
            let fresh = Balancer::new(Policy::ConsistentHash);
            let other_balancer = c[fresh.pick(&c, Some(key.as_bytes())).unwrap().index]
                .id
                .clone();
            assert_eq!(first, again);
            assert_eq!(first, other_order);
            assert_eq!(first, other_balancer);
        }
    }

    #[test]
    fn consistent_hash_moves_about_one_nth_of_keys_and_only_to_the_new_node() {
        let ten = eps(&[1; 10]);
        let eleven = eps(&[1; 11]);
        // One balancer per set, so the test does not rebuild the ring on every pick.
        let (b10, b11) = (
            Balancer::new(Policy::ConsistentHash),
            Balancer::new(Policy::ConsistentHash),
        );
        let owner = |b: &Balancer, c: &[Ep], key: &str| {
            c[b.pick(c, Some(key.as_bytes())).unwrap().index].id.clone()
        };
        let mut moved = 0;
        for i in 0..10_000 {
            let key = format!("key-{i}");
            let before = owner(&b10, &ten, &key);
            let after = owner(&b11, &eleven, &key);
            if before != after {
                assert_eq!(after, "ep-10", "{key} moved between old nodes");
                moved += 1;
            }
        }
        // Ideal: 10_000 / 11 ≈ 909. Allow the ring's unevenness on top.
        assert!(moved > 600 && moved <= 909 + 250, "moved {moved}");

        // One balancer seeing the set grow and shrink again: keys go back where they were.
        let b = Balancer::new(Policy::ConsistentHash);
        let before: Vec<String> = (0..100)
            .map(|i| owner(&b, &ten, &format!("k{i}")))
            .collect();
        let _ = owner(&b, &eleven, "k0");
        let after: Vec<String> = (0..100)
            .map(|i| owner(&b, &ten, &format!("k{i}")))
            .collect();
        assert_eq!(before, after);
    }

    #[test]
    fn consistent_hash_without_key_still_picks() {
        let c = eps(&[1; 3]);
        let b = Balancer::new(Policy::ConsistentHash);
        let counts = shares_without_key(&b, &c, 3_000);
        assert_eq!(counts.len(), 3, "{counts:?}");
    }

    fn shares_without_key(b: &Balancer, c: &[Ep], n: usize) -> HashMap<String, usize> {
        let mut rng = StdRng::seed_from_u64(9);
        let mut counts = HashMap::new();
        for _ in 0..n {
            let pick = b.pick_with_rng(c, None, &mut rng).unwrap();
            *counts.entry(c[pick.index].id.clone()).or_default() += 1;
        }
        counts
    }

    #[test]
    fn works_on_instances_and_references() {
        let instance = |id: &str, weight| api_spec::Instance {
            service: "web".into(),
            id: id.into(),
            address: "10.0.0.1".into(),
            port: 80,
            tags: vec![],
            meta: Default::default(),
            zone: None,
            region: None,
            weight,
            status: api_spec::InstanceStatus::Passing,
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
        };
        let all = vec![instance("a", 0), instance("b", 2)];
        let refs: Vec<&api_spec::Instance> = all.iter().collect();
        let b = Balancer::default();
        assert_eq!(b.policy(), Policy::WeightedRoundRobin);
        assert_eq!(b.pick(&all, None).unwrap().index, 1);
        assert_eq!(b.pick(&refs, None).unwrap().index, 1);
        let arcs: Vec<Arc<api_spec::Instance>> = all.into_iter().map(Arc::new).collect();
        assert_eq!(b.pick(&arcs, None).unwrap().index, 1);
    }

    #[test]
    fn in_flight_table_forgets_idle_endpoints_that_left() {
        let b = Balancer::new(Policy::RoundRobin);
        for i in 0..100 {
            let c = [Ep {
                id: format!("gone-{i}"),
                weight: 1,
            }];
            let _ = b.pick(&c, None);
        }
        let held = b.start("busy");
        let c = eps(&[1]);
        let _ = b.pick(&c, None);
        assert!(b.lock().in_flight.len() <= 20);
        assert_eq!(b.in_flight("busy"), 1);
        drop(held);
        assert_eq!(b.in_flight("busy"), 0);
    }

    #[test]
    fn policy_names_round_trip() {
        for p in Policy::ALL {
            assert_eq!(p.as_str().parse::<Policy>(), Ok(p));
        }
        assert!("fastest".parse::<Policy>().is_err());
    }

    #[test]
    fn hash_is_fnv1a_then_fmix64() {
        // Pinned values: changing the hash would move every key on every client.
        assert_eq!(hash(b""), fmix(0xcbf2_9ce4_8422_2325));
        assert_eq!(hash(b"a"), fmix(0xaf63_dc4c_8601_ec8c));
    }

    fn fmix(mut h: u64) -> u64 {
        h ^= h >> 33;
        h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^= h >> 33;
        h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        h ^= h >> 33;
        h
    }
}
