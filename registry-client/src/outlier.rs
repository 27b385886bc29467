//! Passive health checking (outlier detection): endpoints that keep failing calls are
//! taken out of rotation for a while, and come back on their own.
//!
//! The caller reports how each call to an endpoint went ([`OutlierDetector::report`]);
//! after [`OutlierConfig::consecutive_failures`] failures in a row the endpoint is
//! ejected for a time that grows with each repeated ejection. The discovery cache asks
//! [`OutlierDetector::is_ejected`] when choosing candidates, typically as the predicate
//! of [`locality::select`](crate::locality::select), whose panic threshold puts ejected
//! endpoints back into rotation if too much of the service looks unhealthy.
//!
//! What counts as a failure is the caller's call (connection refused, timeout, 5xx, ...);
//! this module only counts. No IO, no clock: every method that needs the time takes it.

use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// How eagerly endpoints are ejected and for how long.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OutlierConfig {
    /// Failures in a row that eject an endpoint. Default 5 (Envoy's): one or two
    /// failures are often the request's fault, five in a row rarely are. 0 turns
    /// ejection off.
    pub consecutive_failures: u32,
    /// How long a first ejection lasts; the k-th ejection in a row lasts k times this.
    /// Default 30 s (Envoy's): long enough to stop hammering a broken endpoint, short
    /// enough that a blip does not cost much capacity.
    pub base_ejection: Duration,
    /// Upper bound on one ejection, however often the endpoint was ejected before.
    /// Default 5 min: an endpoint that is still broken will be ejected again within
    /// `consecutive_failures` calls of returning, so a longer bound buys little.
    pub max_ejection: Duration,
    /// Largest share (`0.0..=1.0`) of the service's endpoints ejected at once; an
    /// endpoint that reaches the failure threshold beyond it stays in rotation (and is
    /// tried again on its next failure). At least one endpoint may always be ejected,
    /// as in Envoy, unless this is 0 (or NaN), which turns ejection off.
    ///
    /// Default 0.5, not Envoy's 10%: with the small fleets typical here (2–10
    /// instances) 10% would mean one ejection at a time. 0.5 matches the default panic
    /// threshold of [`LocalityPolicy`](crate::locality::LocalityPolicy): ejections alone
    /// never take a fully passing service into panic mode, and when many endpoints fail
    /// at once (more likely the caller's or the network's fault than theirs) half of
    /// them stay in rotation.
    pub max_ejected_share: f64,
}

impl Default for OutlierConfig {
    fn default() -> Self {
        OutlierConfig {
            consecutive_failures: 5,
            base_ejection: Duration::from_secs(30),
            max_ejection: Duration::from_secs(5 * 60),
            max_ejected_share: 0.5,
        }
    }
}

/// How one call to an endpoint went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// The endpoint answered usefully; ends a run of failures.
    Success,
    /// The endpoint failed the call in a way that says something about the endpoint.
    Failure,
}

/// What a [`report`](OutlierDetector::report) did, for logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Counted; the endpoint stays in rotation.
    Counted,
    /// This failure ejected the endpoint, for this long from the report's `now`.
    Ejected {
        /// Length of this ejection (grows with each repeated ejection).
        duration: Duration,
    },
    /// The endpoint reached the failure threshold but was not ejected: as many
    /// endpoints as [`OutlierConfig::max_ejected_share`] allows already are. Its next
    /// failure tries again.
    CapReached,
    /// The endpoint is ejected; reports for it (late answers to calls made before the
    /// ejection) are ignored, so it comes back with a clean slate.
    Ignored,
}

/// Ejects failing endpoints of one service, keyed by endpoint (instance) id.
///
/// Thread safety: `Send + Sync`; share it (e.g. in an `Arc`) and report from any number
/// of tasks. Each call takes one `std::sync::Mutex` briefly (no `.await` can happen
/// under it: there is none in this module).
///
/// Memory: it remembers only endpoints that failed recently or were ejected before;
/// [`retain`](Self::retain) drops those no longer registered.
#[derive(Debug)]
pub struct OutlierDetector {
    /// Fixed for the detector's life.
    config: OutlierConfig,
    /// Per endpoint id. Endpoints with no failures and no ejection history are absent.
    endpoints: Mutex<HashMap<String, EndpointState>>,
}

/// What the detector knows about one endpoint.
#[derive(Debug, Clone, Copy, Default)]
struct EndpointState {
    /// Failures in a row since the last success or ejection.
    failures: u32,
    /// Ejections counted towards the next ejection's length (forgiven over time; see
    /// [`OutlierDetector::report`]).
    ejections: u32,
    /// Start and length of the last ejection, whether or not it is over. Kept as a
    /// start and a length rather than an end so that no `Instant` arithmetic can
    /// overflow, whatever the configured durations.
    last: Option<(Instant, Duration)>,
}

impl EndpointState {
    fn is_ejected(&self, now: Instant) -> bool {
        self.last
            .is_some_and(|(start, length)| now.saturating_duration_since(start) < length)
    }
}

impl Default for OutlierDetector {
    /// A detector with [`OutlierConfig::default`].
    fn default() -> Self {
        OutlierDetector::new(OutlierConfig::default())
    }
}

impl OutlierDetector {
    /// A detector that has seen nothing yet.
    pub fn new(config: OutlierConfig) -> Self {
        OutlierDetector {
            config,
            endpoints: Mutex::new(HashMap::new()),
        }
    }

    /// The configuration it runs with.
    pub fn config(&self) -> &OutlierConfig {
        &self.config
    }

    /// Records how a call to endpoint `id` went, at `now`. `endpoints` is how many
    /// endpoints the service has now (e.g. the length of the discovery cache's list of
    /// its instances); the share cap is taken of it when this report would eject.
    ///
    /// Ejection length: the k-th ejection lasts `k × base_ejection`, at most
    /// `max_ejection`. Good behaviour is forgiven: each full `base_ejection` the
    /// endpoint spends back in rotation after an ejection takes one off k, so an
    /// endpoint that failed once last week starts again from `base_ejection`.
    pub fn report(&self, id: &str, outcome: Outcome, now: Instant, endpoints: usize) -> Verdict {
        let mut map = self.lock();
        if map.get(id).is_some_and(|s| s.is_ejected(now)) {
            return Verdict::Ignored;
        }
        let state = match outcome {
            Outcome::Success => {
                if let Some(state) = map.get_mut(id) {
                    state.failures = 0;
                    if state.ejections == 0 {
                        map.remove(id);
                    }
                }
                return Verdict::Counted;
            }
            Outcome::Failure => match map.get_mut(id) {
                Some(state) => state,
                None => map.entry(id.to_owned()).or_default(),
            },
        };
        state.failures = state.failures.saturating_add(1);
        if self.config.consecutive_failures == 0
            || state.failures < self.config.consecutive_failures
        {
            return Verdict::Counted;
        }

        let ejected_now = map.values().filter(|s| s.is_ejected(now)).count();
        if ejected_now >= self.max_ejected(endpoints) {
            return Verdict::CapReached;
        }
        let Some(state) = map.get_mut(id) else {
            return Verdict::Counted;
        };
        let forgiven = match state.last {
            Some((start, length)) => {
                let back_for = now.saturating_duration_since(start).saturating_sub(length);
                match back_for
                    .as_nanos()
                    .checked_div(self.config.base_ejection.as_nanos())
                {
                    Some(n) => u32::try_from(n).unwrap_or(u32::MAX),
                    None => u32::MAX,
                }
            }
            None => 0,
        };
        let k = state.ejections.saturating_sub(forgiven).saturating_add(1);
        let duration = self
            .config
            .base_ejection
            .checked_mul(k)
            .unwrap_or(self.config.max_ejection)
            .min(self.config.max_ejection);
        state.ejections = k;
        state.failures = 0;
        state.last = Some((now, duration));
        Verdict::Ejected { duration }
    }

    /// Whether `id` is out of rotation at `now`. An ejection ends by itself when its
    /// time is up; nothing needs to be called for the endpoint to return.
    pub fn is_ejected(&self, id: &str, now: Instant) -> bool {
        self.lock().get(id).is_some_and(|s| s.is_ejected(now))
    }

    /// How many endpoints are ejected at `now`, for metrics.
    pub fn ejected_count(&self, now: Instant) -> usize {
        self.lock().values().filter(|s| s.is_ejected(now)).count()
    }

    /// Forgets every endpoint not in `ids` (the service's registered instances), so
    /// one that leaves and later returns under the same id starts afresh, and the
    /// detector's memory stays bounded by the service's size.
    pub fn retain<'a>(&self, ids: impl IntoIterator<Item = &'a str>) {
        let keep: HashSet<&str> = ids.into_iter().collect();
        self.lock().retain(|id, _| keep.contains(id.as_str()));
    }

    /// At most this many of `endpoints` may be ejected at once.
    fn max_ejected(&self, endpoints: usize) -> usize {
        let share = self.config.max_ejected_share;
        // NaN turns ejection off like 0.
        if share.is_nan() || share <= 0.0 {
            return 0;
        }
        // Counts are far below 2^52: the conversions are exact, and the float-to-int
        // `as` saturates.
        let allowed = (share.min(1.0) * endpoints as f64).floor() as usize;
        allowed.max(1)
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, EndpointState>> {
        // Every update leaves the map consistent before anything could panic, so a
        // poisoned lock is used as is.
        self.endpoints
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    /// Reports `n` failures at `now` and returns the last verdict.
    fn fail(d: &OutlierDetector, id: &str, n: u32, now: Instant, endpoints: usize) -> Verdict {
        let mut last = Verdict::Counted;
        for _ in 0..n {
            last = d.report(id, Outcome::Failure, now, endpoints);
        }
        last
    }

    #[test]
    fn ejects_after_consecutive_failures_and_returns_after_the_ejection_time() {
        let d = OutlierDetector::default();
        let t0 = Instant::now();
        assert_eq!(fail(&d, "a", 4, t0, 10), Verdict::Counted);
        assert!(!d.is_ejected("a", t0));
        assert_eq!(
            d.report("a", Outcome::Failure, t0, 10),
            Verdict::Ejected { duration: 30 * S }
        );
        assert!(d.is_ejected("a", t0));
        assert!(d.is_ejected("a", t0 + 30 * S - Duration::from_millis(1)));
        assert!(!d.is_ejected("a", t0 + 30 * S));
        assert!(!d.is_ejected("b", t0));
        assert_eq!(d.ejected_count(t0), 1);
        assert_eq!(d.ejected_count(t0 + 30 * S), 0);
    }

    #[test]
    fn reports_while_ejected_are_ignored_and_it_returns_with_a_clean_slate() {
        let d = OutlierDetector::default();
        let t0 = Instant::now();
        fail(&d, "a", 5, t0, 10);
        assert_eq!(fail(&d, "a", 10, t0 + S, 10), Verdict::Ignored);
        let back = t0 + 30 * S;
        assert_eq!(fail(&d, "a", 4, back, 10), Verdict::Counted);
        assert!(!d.is_ejected("a", back));
    }

    #[test]
    fn a_success_resets_the_failure_count() {
        let d = OutlierDetector::default();
        let t0 = Instant::now();
        fail(&d, "a", 4, t0, 10);
        assert_eq!(d.report("a", Outcome::Success, t0, 10), Verdict::Counted);
        assert_eq!(fail(&d, "a", 4, t0, 10), Verdict::Counted);
        assert!(!d.is_ejected("a", t0));
        assert!(matches!(fail(&d, "a", 1, t0, 10), Verdict::Ejected { .. }));
    }

    #[test]
    fn repeated_ejections_back_off_up_to_the_cap() {
        let d = OutlierDetector::default();
        let mut now = Instant::now();
        let mut lengths = vec![];
        for _ in 0..12 {
            match fail(&d, "a", 5, now, 10) {
                Verdict::Ejected { duration } => {
                    lengths.push(duration.as_secs());
                    // Fails again the moment it returns.
                    now += duration;
                }
                other => panic!("expected an ejection, got {other:?}"),
            }
        }
        assert_eq!(
            lengths,
            [30, 60, 90, 120, 150, 180, 210, 240, 270, 300, 300, 300]
        );
    }

    #[test]
    fn time_back_in_rotation_forgives_earlier_ejections() {
        let d = OutlierDetector::default();
        let mut now = Instant::now();
        for _ in 0..4 {
            let Verdict::Ejected { duration } = fail(&d, "a", 5, now, 10) else {
                panic!("not ejected");
            };
            now += duration;
        }
        // Fourth ejection lasted 120 s. Two base periods back in rotation forgive two of
        // the four: the next is the third (90 s), not the fifth (150 s).
        now += 2 * 30 * S + S;
        assert_eq!(
            fail(&d, "a", 5, now, 10),
            Verdict::Ejected { duration: 90 * S }
        );
        // A long healthy spell forgives all: back to the base.
        now += Duration::from_secs(3600);
        assert_eq!(
            fail(&d, "a", 5, now, 10),
            Verdict::Ejected { duration: 30 * S }
        );
    }

    #[test]
    fn never_ejects_more_than_the_share_cap() {
        let d = OutlierDetector::default();
        let t0 = Instant::now();
        // 5 endpoints, 50%: at most 2 at once.
        assert!(matches!(fail(&d, "a", 5, t0, 5), Verdict::Ejected { .. }));
        assert!(matches!(
            fail(&d, "b", 5, t0 + S, 5),
            Verdict::Ejected { .. }
        ));
        assert_eq!(fail(&d, "c", 5, t0 + 2 * S, 5), Verdict::CapReached);
        assert!(!d.is_ejected("c", t0 + 2 * S));
        // Still over the threshold: every further failure tries again...
        assert_eq!(fail(&d, "c", 1, t0 + 3 * S, 5), Verdict::CapReached);
        // ...and once "a" is back, the next one ejects "c".
        let later = t0 + 30 * S;
        assert!(!d.is_ejected("a", later));
        assert!(matches!(
            fail(&d, "c", 1, later, 5),
            Verdict::Ejected { .. }
        ));
        assert_eq!(d.ejected_count(later), 2);
        // A success while capped clears the run, as any success does.
        assert_eq!(fail(&d, "d", 5, later, 5), Verdict::CapReached);
        assert_eq!(d.report("d", Outcome::Success, later, 5), Verdict::Counted);
        assert_eq!(fail(&d, "d", 4, later + 31 * S, 5), Verdict::Counted);
    }

    #[test]
    fn at_least_one_may_be_ejected_unless_the_share_is_zero() {
        let t0 = Instant::now();
        let d = OutlierDetector::default();
        assert!(matches!(
            fail(&d, "only", 5, t0, 1),
            Verdict::Ejected { .. }
        ));

        let off = OutlierDetector::new(OutlierConfig {
            max_ejected_share: 0.0,
            ..Default::default()
        });
        assert_eq!(fail(&off, "only", 5, t0, 1), Verdict::CapReached);
        assert!(!off.is_ejected("only", t0));
    }

    #[test]
    fn zero_consecutive_failures_turns_ejection_off() {
        let d = OutlierDetector::new(OutlierConfig {
            consecutive_failures: 0,
            ..Default::default()
        });
        let t0 = Instant::now();
        assert_eq!(fail(&d, "a", 100, t0, 10), Verdict::Counted);
        assert!(!d.is_ejected("a", t0));
    }

    #[test]
    fn retain_forgets_endpoints_that_left() {
        let d = OutlierDetector::default();
        let t0 = Instant::now();
        fail(&d, "a", 5, t0, 10);
        fail(&d, "b", 5, t0, 10);
        d.retain(["b", "c"]);
        assert!(!d.is_ejected("a", t0));
        assert!(d.is_ejected("b", t0));
        // "a" re-registered: starts afresh (first ejection length again, after 5).
        assert_eq!(fail(&d, "a", 4, t0, 10), Verdict::Counted);
    }

    #[test]
    fn huge_durations_do_not_overflow() {
        let d = OutlierDetector::new(OutlierConfig {
            consecutive_failures: 1,
            base_ejection: Duration::MAX,
            max_ejection: Duration::MAX,
            ..Default::default()
        });
        let t0 = Instant::now();
        assert_eq!(
            fail(&d, "a", 1, t0, 10),
            Verdict::Ejected {
                duration: Duration::MAX
            }
        );
        assert!(d.is_ejected("a", t0 + Duration::from_secs(1 << 40)));
        // Zero-length ejections: ejected for no time at all, and nothing divides by 0.
        let z = OutlierDetector::new(OutlierConfig {
            consecutive_failures: 1,
            base_ejection: Duration::ZERO,
            ..Default::default()
        });
        assert_eq!(
            fail(&z, "a", 1, t0, 10),
            Verdict::Ejected {
                duration: Duration::ZERO
            }
        );
        assert_eq!(
            fail(&z, "a", 1, t0 + S, 10),
            Verdict::Ejected {
                duration: Duration::ZERO
            }
        );
        assert!(!z.is_ejected("a", t0));
    }
}
