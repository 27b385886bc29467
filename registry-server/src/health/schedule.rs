//! The checks this server owns: when each is due, and what its probes add up to.
//!
//! Synchronous bookkeeping with time as an input: [`Schedule::sync`] follows the applied
//! state (which checks exist, which this server owns, what the log says of each),
//! [`Schedule::take_due`] hands out the probes to run, and [`Schedule::record`] counts
//! their outcomes against the thresholds and says when a transition should be proposed.
//! Probes keep a fixed rate: each is due one interval after the previous was due, not
//! after it finished, so a slow target does not drift its schedule.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use api_spec::checks::CheckStatus;
use tokio::time::Instant;

use crate::replicated::catalog::InstanceKey;
use crate::replicated::checks::CheckSpec;

/// One check: the instance and the check's name.
pub type CheckId = (InstanceKey, String);

/// A probe to run.
#[derive(Debug, Clone)]
pub struct Due {
    pub id: CheckId,
    pub generation: u64,
    pub spec: CheckSpec,
    /// When it was due (its lag is the time from here to when it starts).
    pub at: Instant,
}

/// A transition the probes call for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    pub id: CheckId,
    pub generation: u64,
    pub status: CheckStatus,
    pub output: String,
}

/// A check as the owning server sees it: what the log says of it, and the probes since.
#[derive(Debug)]
struct Owned {
    spec: CheckSpec,
    generation: u64,
    /// The status the applied state gives it.
    logged: CheckStatus,
    /// A transition to this status was proposed and has not shown in the state yet.
    proposed: Option<CheckStatus>,
    due: Instant,
    /// A probe is running (a check is probed once at a time).
    in_flight: bool,
    /// Never probed: its first outcome is written whatever it is, so the view shows
    /// why a check that fails from the start is critical.
    fresh: bool,
    /// Consecutive probes with the same result: `(passing, count)`.
    streak: (bool, u32),
}

/// The owned checks and their queue.
#[derive(Debug, Default)]
pub struct Schedule {
    checks: HashMap<CheckId, Owned>,
    queue: BTreeSet<(Instant, CheckId)>,
}

/// What the applied state says of one check this server owns.
#[derive(Debug, Clone)]
pub struct Logged<'a> {
    pub id: CheckId,
    pub spec: &'a CheckSpec,
    pub generation: u64,
    pub status: CheckStatus,
    /// Never probed yet (a new registration): probed soon, not within a whole interval.
    pub fresh: bool,
}

/// A fresh check is first probed within this long (or its interval, if shorter).
const FIRST_PROBE_WITHIN: Duration = Duration::from_secs(1);

impl Schedule {
    /// Follows the applied state: `owned` is every check this server owns now. Checks not
    /// in it are dropped (deregistered, redefined, or moved to another server); new ones
    /// are scheduled at a point of their interval that `jitter` picks (given the span, it
    /// answers an offset below it), so checks taken over at once are spread out.
    pub fn sync<'a>(
        &mut self,
        owned: impl IntoIterator<Item = Logged<'a>>,
        now: Instant,
        mut jitter: impl FnMut(Duration) -> Duration,
    ) {
        let mut kept: HashMap<CheckId, Owned> = HashMap::with_capacity(self.checks.len());
        for logged in owned {
            let current = match self.checks.remove(&logged.id) {
                Some(c) if c.generation == logged.generation => Some(c),
                Some(redefined) => {
                    self.queue.remove(&(redefined.due, logged.id.clone()));
                    None
                }
                None => None,
            };
            let check = match current {
                Some(mut check) => {
                    check.logged = logged.status;
                    check.fresh &= logged.fresh;
                    if check.proposed == Some(logged.status) {
                        check.proposed = None;
                    }
                    check
                }
                None => {
                    let interval = Duration::from_millis(logged.spec.interval_ms);
                    let span = if logged.fresh {
                        interval.min(FIRST_PROBE_WITHIN)
                    } else {
                        interval
                    };
                    let due = now + jitter(span).min(span);
                    self.queue.insert((due, logged.id.clone()));
                    Owned {
                        spec: logged.spec.clone(),
                        generation: logged.generation,
                        logged: logged.status,
                        proposed: None,
                        due,
                        in_flight: false,
                        fresh: logged.fresh,
                        streak: (logged.status == CheckStatus::Passing, 0),
                    }
                }
            };
            kept.insert(logged.id, check);
        }
        for (id, gone) in self.checks.drain() {
            self.queue.remove(&(gone.due, id));
        }
        self.checks = kept;
    }

    /// How many checks this server owns.
    pub fn len(&self) -> usize {
        self.checks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.checks.is_empty()
    }

    /// When the next probe is due.
    pub fn next_due(&self) -> Option<Instant> {
        self.queue.first().map(|(at, _)| *at)
    }

    /// The probes due at `now`, each rescheduled one interval on (or, if it fell a whole
    /// interval behind, one interval from now). A check whose previous probe still runs
    /// skips this round.
    pub fn take_due(&mut self, now: Instant) -> Vec<Due> {
        let mut due = Vec::new();
        while let Some((at, _)) = self.queue.first() {
            if *at > now {
                break;
            }
            let Some((at, id)) = self.queue.pop_first() else {
                break;
            };
            let Some(check) = self.checks.get_mut(&id) else {
                continue;
            };
            let interval = Duration::from_millis(check.spec.interval_ms);
            let mut next = at + interval;
            if next <= now {
                next = now + interval;
            }
            check.due = next;
            self.queue.insert((next, id.clone()));
            if check.in_flight {
                continue;
            }
            check.in_flight = true;
            due.push(Due {
                id,
                generation: check.generation,
                spec: check.spec.clone(),
                at,
            });
        }
        due
    }

    /// Counts a probe's outcome. Returns the transition to propose when the streak reached
    /// the check's threshold for the status the log does not have yet (and none is being
    /// proposed already). An outcome for a check no longer owned, or redefined, is
    /// dropped.
    pub fn record(
        &mut self,
        id: &CheckId,
        generation: u64,
        passing: bool,
        output: String,
    ) -> Option<Transition> {
        let check = self
            .checks
            .get_mut(id)
            .filter(|c| c.generation == generation)?;
        check.in_flight = false;
        check.streak = match check.streak {
            (same, count) if same == passing => (passing, count.saturating_add(1)),
            _ => (passing, 1),
        };
        let (target, needed) = if passing {
            (CheckStatus::Passing, check.spec.successes_before_passing)
        } else {
            (CheckStatus::Critical, check.spec.failures_before_critical)
        };
        let current = check.proposed.unwrap_or(check.logged);
        let first = std::mem::take(&mut check.fresh);
        if current == target || check.streak.1 < needed {
            if !first {
                return None;
            }
            // The first outcome of a new check: written with the status the log has,
            // for its output.
            return Some(Transition {
                id: id.clone(),
                generation,
                status: current,
                output,
            });
        }
        check.proposed = Some(target);
        Some(Transition {
            id: id.clone(),
            generation,
            status: target,
            output,
        })
    }

    /// A proposed transition did not make it into the log (not confirmed by a second
    /// server, or the proposal failed): forget it, and count the streak from zero, so it
    /// takes a whole threshold of probes before it is tried again.
    pub fn withdrawn(&mut self, transition: &Transition) {
        if let Some(check) = self
            .checks
            .get_mut(&transition.id)
            .filter(|c| c.generation == transition.generation)
        {
            if check.proposed == Some(transition.status) {
                check.proposed = None;
            }
            check.streak = (transition.status == CheckStatus::Passing, 0);
        }
    }

    /// A probe was handed out but never ran to an outcome (its task ended early).
    pub fn abandoned(&mut self, id: &CheckId) {
        if let Some(check) = self.checks.get_mut(id) {
            check.in_flight = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replicated::checks::Probe;

    fn spec(interval_ms: u64, failures: u32, successes: u32) -> CheckSpec {
        CheckSpec {
            name: "tcp".into(),
            probe: Probe::Tcp {
                host: "127.0.0.1".into(),
                port: 1,
            },
            interval_ms,
            timeout_ms: 100,
            failures_before_critical: failures,
            successes_before_passing: successes,
        }
    }

    fn id(n: usize) -> CheckId {
        (("web".into(), format!("i-{n}").into()), "tcp".into())
    }

    fn logged(n: usize, spec: &CheckSpec, status: CheckStatus, fresh: bool) -> Logged<'_> {
        Logged {
            id: id(n),
            spec,
            generation: 1,
            status,
            fresh,
        }
    }

    #[test]
    fn fresh_checks_come_due_within_a_second_and_taken_over_ones_within_an_interval() {
        let s = spec(10_000, 1, 1);
        let now = Instant::now();
        let mut schedule = Schedule::default();
        let mut spans = Vec::new();
        schedule.sync(
            [
                logged(1, &s, CheckStatus::Critical, true),
                logged(2, &s, CheckStatus::Passing, false),
            ],
            now,
            |span| {
                spans.push(span);
                span // the latest point jitter may pick
            },
        );
        assert_eq!(spans, vec![Duration::from_secs(1), Duration::from_secs(10)]);
        assert_eq!(schedule.next_due(), Some(now + Duration::from_secs(1)));
        assert!(schedule.take_due(now).is_empty());
        let due = schedule.take_due(now + Duration::from_secs(1));
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].id, id(1));
        assert_eq!(schedule.len(), 2);
    }

    #[test]
    fn probes_keep_a_fixed_rate_and_one_runs_at_a_time() {
        let s = spec(1_000, 1, 1);
        let now = Instant::now();
        let mut schedule = Schedule::default();
        schedule.sync([logged(1, &s, CheckStatus::Passing, false)], now, |_| {
            Duration::ZERO
        });
        let first = schedule.take_due(now);
        assert_eq!(first.len(), 1);
        // Still running at its next due time: skipped, and rescheduled.
        assert!(schedule
            .take_due(now + Duration::from_millis(1_000))
            .is_empty());
        assert_eq!(
            schedule.next_due(),
            Some(now + Duration::from_millis(2_000))
        );
        schedule.record(&id(1), 1, true, String::new());
        let third = schedule.take_due(now + Duration::from_millis(2_050));
        assert_eq!(
            third[0].at,
            now + Duration::from_millis(2_000),
            "due, not drifted"
        );
        // Far behind: the next one is an interval from now, not a burst of catch-ups.
        schedule.record(&id(1), 1, true, String::new());
        let late = now + Duration::from_millis(9_500);
        assert_eq!(schedule.take_due(late).len(), 1);
        assert_eq!(
            schedule.next_due(),
            Some(late + Duration::from_millis(1_000))
        );
    }

    #[test]
    fn thresholds_decide_transitions_and_a_pending_one_is_not_repeated() {
        let s = spec(1_000, 3, 2);
        let now = Instant::now();
        let mut schedule = Schedule::default();
        schedule.sync([logged(1, &s, CheckStatus::Passing, false)], now, |_| {
            Duration::ZERO
        });
        let probe = |schedule: &mut Schedule, passing: bool| {
            schedule.take_due(now + Duration::from_secs(3_600));
            schedule.record(&id(1), 1, passing, format!("passing={passing}"))
        };
        assert_eq!(probe(&mut schedule, false), None);
        assert_eq!(probe(&mut schedule, false), None);
        assert_eq!(probe(&mut schedule, true), None, "a pass breaks the streak");
        assert_eq!(probe(&mut schedule, false), None);
        assert_eq!(probe(&mut schedule, false), None);
        let critical = probe(&mut schedule, false).expect("three failures in a row");
        assert_eq!(critical.status, CheckStatus::Critical);
        assert_eq!(critical.output, "passing=false");
        assert_eq!(probe(&mut schedule, false), None, "already proposed");
        // The log takes it; two passes bring it back.
        schedule.sync([logged(1, &s, CheckStatus::Critical, false)], now, |_| {
            Duration::ZERO
        });
        assert_eq!(probe(&mut schedule, true), None);
        let passing = probe(&mut schedule, true).expect("two passes in a row");
        assert_eq!(passing.status, CheckStatus::Passing);
    }

    #[test]
    fn the_first_outcome_of_a_new_check_is_written_for_its_output() {
        let s = spec(1_000, 3, 2);
        let now = Instant::now();
        let mut schedule = Schedule::default();
        schedule.sync([logged(1, &s, CheckStatus::Critical, true)], now, |_| {
            Duration::ZERO
        });
        let probe = |schedule: &mut Schedule, passing: bool| {
            schedule.take_due(now + Duration::from_secs(3_600));
            schedule.record(&id(1), 1, passing, "connection refused".into())
        };
        let first = probe(&mut schedule, false).expect("the first outcome");
        assert_eq!(
            (first.status, first.output.as_str()),
            (CheckStatus::Critical, "connection refused")
        );
        assert_eq!(
            probe(&mut schedule, false),
            None,
            "later ones follow the thresholds"
        );
        // Likewise a first pass short of its threshold keeps the status, with its output.
        let mut schedule = Schedule::default();
        schedule.sync([logged(1, &s, CheckStatus::Critical, true)], now, |_| {
            Duration::ZERO
        });
        assert_eq!(
            probe(&mut schedule, true).map(|t| t.status),
            Some(CheckStatus::Critical)
        );
        assert_eq!(
            probe(&mut schedule, true).map(|t| t.status),
            Some(CheckStatus::Passing)
        );
    }

    #[test]
    fn a_flapping_target_faster_than_its_thresholds_writes_nothing() {
        let s = spec(1_000, 2, 2);
        let now = Instant::now();
        let mut schedule = Schedule::default();
        schedule.sync([logged(1, &s, CheckStatus::Passing, false)], now, |_| {
            Duration::ZERO
        });
        for round in 0..1_000 {
            schedule.take_due(now + Duration::from_secs(3_600));
            let t = schedule.record(&id(1), 1, round % 2 == 0, String::new());
            assert_eq!(t, None, "round {round}");
        }
    }

    #[test]
    fn a_withdrawn_transition_needs_a_whole_threshold_again() {
        let s = spec(1_000, 2, 1);
        let now = Instant::now();
        let mut schedule = Schedule::default();
        schedule.sync([logged(1, &s, CheckStatus::Passing, false)], now, |_| {
            Duration::ZERO
        });
        let probe = |schedule: &mut Schedule| {
            schedule.take_due(now + Duration::from_secs(3_600));
            schedule.record(&id(1), 1, false, String::new())
        };
        assert_eq!(probe(&mut schedule), None);
        let t = probe(&mut schedule).unwrap();
        schedule.withdrawn(&t);
        assert_eq!(probe(&mut schedule), None);
        assert!(probe(&mut schedule).is_some());
    }

    #[test]
    fn redefined_or_moved_checks_are_dropped_with_their_results() {
        let s = spec(1_000, 1, 1);
        let now = Instant::now();
        let mut schedule = Schedule::default();
        schedule.sync([logged(1, &s, CheckStatus::Passing, false)], now, |_| {
            Duration::ZERO
        });
        assert_eq!(schedule.take_due(now).len(), 1);
        let redefined = Logged {
            generation: 2,
            ..logged(1, &s, CheckStatus::Critical, true)
        };
        schedule.sync([redefined], now, |_| Duration::ZERO);
        assert_eq!(
            schedule.record(&id(1), 1, false, String::new()),
            None,
            "old generation"
        );
        assert_eq!(
            schedule.take_due(now).len(),
            1,
            "the new definition is probed"
        );
        schedule.sync([], now, |_| Duration::ZERO);
        assert!(schedule.is_empty());
        assert_eq!(schedule.next_due(), None);
    }
}
