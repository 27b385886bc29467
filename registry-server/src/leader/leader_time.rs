//! Leader time: the time the leader stamps into log entries (`Request::now_ms`) and checks
//! its deadlines against (lock-delay ends, deregistration of critical instances).
//!
//! Pure and synchronous: the caller passes the monotonic [`Instant`] and the wall clock
//! (ms since the Unix epoch) in; nothing here reads a clock. [`LeaderTime`] is the logic;
//! [`LeaderClock`] is the node's shared handle to it (the proposer stamps with it, the
//! leader's due checks read it, the app re-anchors it when it starts leading a term), which
//! adds only the last applied time from the state and the skew warning's log line.
//!
//! A wall clock can be wrong by any amount and can jump, and each leader has its own. If
//! entries carried the leader's wall clock, a failover to a node a day ahead would end
//! every lock-delay and reap every critical instance at once, and one a day behind would
//! keep expired locks in lock-delay for a day. So a leader's time continues the replicated
//! time instead: when this node starts leading a term it anchors at `S0`, the last applied
//! replicated time (`AppState::clock_ms`; the wall clock if nothing was ever stamped, i.e.
//! 0) plus the time since this node applied the entry that carried it, measured on its
//! own monotonic clock (so an election gap or an idle spell still counts), and the
//! monotonic instant; from then on
//!
//! ```text
//! now = max(applied, S0 + elapsed, min(wall, S0 + elapsed + MAX_WALL_LEAD))
//! ```
//!
//! It runs at the monotonic clock's speed from the last replicated time. The wall clock
//! seeds a cluster's very first entry, and otherwise may move leader time forward by at
//! most [`MAX_WALL_LEAD`] (never backward): on a healthy cluster the two agree within a
//! few milliseconds, so entries carry the wall clock exactly, while a clock that is off
//! by more moves nothing. When the wall clock and leader time differ by more than
//! [`MAX_SKEW`], [`LeaderTime::read`] asks the caller (at most every
//! [`SKEW_WARNING_EVERY`]) to warn about it.
//!
//! Consequences:
//! - Replicated time never runs ahead of the previous leader's by more than
//!   [`MAX_WALL_LEAD`]: the entry was stamped before this node applied it, so the time
//!   since it was applied here is at most the time since it was stamped. Deadlines are
//!   therefore never cut short by a failover or a skewed clock by more than
//!   [`MAX_WALL_LEAD`] (100 ms), and are otherwise delayed by at most the replication
//!   delay of the last entry.
//! - Replicated time stands still only where no node measured it passing: a whole-cluster
//!   outage (a restarted process has not applied anything yet, so it anchors at the last
//!   applied time itself), and it then lags wall time by the downtime, for good: a wall
//!   clock that is ahead cannot be told from one that is wrong, so it is not trusted to
//!   close the gap (the leader warns about it). Pending deadlines are delayed by the
//!   downtime, as lease expiries are (a new leader restarts every lease countdown, see
//!   `crate::leader::lease_clock`). Times shown to users (`registered_at_ms`,
//!   `delay_until_ms`, ...) are replicated time.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::time::Instant;

use crate::raft::store::log::StampSeen;
use crate::raft::store::state_machine::SharedState;

/// How far the wall clock may move leader time ahead of `S0 + elapsed`: enough for what
/// a new leader's continuation lags (the last entry's trip to this node, a few ms, more
/// on a loaded machine), so a healthy cluster stamps its wall clock; little enough that a
/// clock that jumped ends no deadline noticeably early (a lock-delay is seconds).
pub const MAX_WALL_LEAD: Duration = Duration::from_millis(100);

/// The skew between the wall clock and leader time above which [`LeaderTime::read`] asks
/// for a warning.
pub const MAX_SKEW: Duration = Duration::from_secs(1);

/// Shortest interval between two skew warnings.
pub const SKEW_WARNING_EVERY: Duration = Duration::from_secs(60);

/// Where leader time started in the term this node leads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Anchor {
    term: u64,
    /// `S0`: replicated time (ms since the Unix epoch) when the term's leadership began.
    start_ms: u64,
    /// The monotonic instant of `start_ms`.
    at: Instant,
}

/// This node's leader time. Not leading: no time (a follower stamps nothing).
#[derive(Debug, Clone, Default)]
pub struct LeaderTime {
    anchor: Option<Anchor>,
    /// When the last skew warning was asked for.
    last_warning: Option<Instant>,
}

/// One reading of leader time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reading {
    /// Leader time, ms since the Unix epoch.
    pub now_ms: u64,
    /// `wall - now_ms` when it is beyond [`MAX_SKEW`] either way and no warning was
    /// asked for in the last [`SKEW_WARNING_EVERY`]: the caller logs it.
    pub warn_skew_ms: Option<i64>,
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl LeaderTime {
    /// This node leads `term`. The first call for a term anchors leader time at the last
    /// applied replicated time `applied_ms` plus `since_applied`, the time since this node
    /// applied the entry that carried it (or at `wall_ms` if `applied_ms` is 0: nothing
    /// was ever stamped), and `now`; later calls for the same term change nothing.
    /// Returns whether it anchored.
    pub fn lead(
        &mut self,
        term: u64,
        applied_ms: u64,
        since_applied: Duration,
        now: Instant,
        wall_ms: u64,
    ) -> bool {
        if self.leading_term() == Some(term) {
            return false;
        }
        let start_ms = if applied_ms == 0 {
            wall_ms
        } else {
            applied_ms.saturating_add(millis(since_applied))
        };
        self.anchor = Some(Anchor {
            term,
            start_ms,
            at: now,
        });
        true
    }

    /// This node no longer leads.
    pub fn step_down(&mut self) {
        self.anchor = None;
    }

    /// The term leader time is anchored in, if this node leads.
    pub fn leading_term(&self) -> Option<u64> {
        self.anchor.map(|a| a.term)
    }

    /// Leader time at `now` (monotonic) and `wall_ms`, given the last applied replicated
    /// time; `None` when not leading.
    pub fn now_ms(&self, applied_ms: u64, now: Instant, wall_ms: u64) -> Option<u64> {
        let anchor = self.anchor?;
        let monotonic = anchor
            .start_ms
            .saturating_add(millis(now.saturating_duration_since(anchor.at)));
        let nudged = wall_ms.min(monotonic.saturating_add(millis(MAX_WALL_LEAD)));
        Some(applied_ms.max(monotonic).max(nudged))
    }

    /// [`now_ms`](Self::now_ms), and whether the caller should warn about the wall clock's
    /// skew from it (rate-limited to one warning per [`SKEW_WARNING_EVERY`]).
    pub fn read(&mut self, applied_ms: u64, now: Instant, wall_ms: u64) -> Option<Reading> {
        let now_ms = self.now_ms(applied_ms, now, wall_ms)?;
        let skew_ms = i64::try_from(i128::from(wall_ms) - i128::from(now_ms)).unwrap_or(i64::MAX);
        let skewed = skew_ms.unsigned_abs() > millis(MAX_SKEW);
        let quiet = self
            .last_warning
            .is_some_and(|at| now.saturating_duration_since(at) < SKEW_WARNING_EVERY);
        let warn_skew_ms = (skewed && !quiet).then(|| {
            self.last_warning = Some(now);
            skew_ms
        });
        Some(Reading {
            now_ms,
            warn_skew_ms,
        })
    }
}

/// The node's leader time, shared; cheap to clone. `std::sync::Mutex` because nothing
/// awaits while holding it.
#[derive(Debug, Clone)]
pub struct LeaderClock {
    time: Arc<Mutex<LeaderTime>>,
    /// Where the last applied replicated time (`AppState::clock_ms`) is read.
    state: SharedState,
    /// The latest leader time this node appended to its log, and when: usually later
    /// than the applied one (a follower applies an entry only once it learns it
    /// committed), so a new leader anchored there lags its predecessor least.
    stamps: StampSeen,
}

impl LeaderClock {
    pub fn new(state: SharedState, stamps: StampSeen) -> Self {
        Self {
            time: Arc::default(),
            state,
            stamps,
        }
    }

    fn lock(&self) -> MutexGuard<'_, LeaderTime> {
        self.time.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn applied_ms(&self) -> u64 {
        self.state.read().app.clock_ms
    }

    /// This node leads `term`: anchors leader time on the term's first call.
    pub fn lead(&self, term: u64, now: Instant, wall_ms: u64) {
        let (applied_ms, since_applied) = {
            let state = self.state.read();
            let since = state
                .clock_applied_at
                .map_or(Duration::ZERO, |at| now.saturating_duration_since(at));
            (state.app.clock_ms, since)
        };
        // Of the two readings (the last applied time, the last appended one), each plus
        // the time since this node had it, the later: both are behind the leader that
        // stamped them.
        let (applied_ms, since_applied) = match self.stamps.latest() {
            Some((seen_ms, at))
                if applied_ms > 0
                    && seen_ms.saturating_add(millis(now.saturating_duration_since(at)))
                        > applied_ms.saturating_add(millis(since_applied)) =>
            {
                (seen_ms, now.saturating_duration_since(at))
            }
            _ => (applied_ms, since_applied),
        };
        if self
            .lock()
            .lead(term, applied_ms, since_applied, now, wall_ms)
        {
            tracing::info!(
                term,
                replicated_ms = applied_ms,
                since_applied_ms = millis(since_applied),
                wall_ms,
                "leading: replicated time continues from the last applied entry"
            );
        }
    }

    /// This node no longer leads.
    pub fn step_down(&self) {
        self.lock().step_down();
    }

    /// Leader time (ms since the Unix epoch) while leading; otherwise, and before the app
    /// has anchored a new term, the last applied replicated time (the wall clock if there
    /// is none yet): a node without a term of its own lets time stand still rather than
    /// guess. Warns (rate-limited) when the
    /// wall clock is more than [`MAX_SKEW`] away.
    pub fn now_ms(&self, now: Instant, wall_ms: u64) -> u64 {
        let applied_ms = self.applied_ms();
        let Some(reading) = self.lock().read(applied_ms, now, wall_ms) else {
            // Nothing was ever stamped: a fresh cluster's first entries take the wall
            // clock, as its first anchor would.
            return if applied_ms == 0 { wall_ms } else { applied_ms };
        };
        if let Some(skew_ms) = reading.warn_skew_ms {
            tracing::warn!(
                skew_ms,
                wall_ms,
                replicated_ms = reading.now_ms,
                "this node's wall clock is {skew_ms} ms off replicated time (a skewed clock, or \
                 downtime of the whole cluster); replicated time continues on the \
                 monotonic clock"
            );
        }
        reading.now_ms
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000;
    /// Some replicated time (ms since the epoch).
    const T0: u64 = 1_700_000_000_000;
    const DAY: u64 = 86_400 * S;
    const LEAD: u64 = 100;

    fn at(start: Instant, ms: u64) -> Instant {
        start + Duration::from_millis(ms)
    }

    #[test]
    fn not_leading_has_no_time() {
        let mut t = LeaderTime::default();
        let i = Instant::now();
        assert_eq!(t.now_ms(T0, i, T0), None);
        assert!(t.lead(3, T0, Duration::ZERO, i, T0));
        assert!(t.now_ms(T0, i, T0).is_some());
        t.step_down();
        assert_eq!((t.now_ms(T0, i, T0), t.leading_term()), (None, None));
    }

    #[test]
    fn a_fresh_cluster_starts_at_the_wall_clock() {
        let mut t = LeaderTime::default();
        let i = Instant::now();
        t.lead(1, 0, Duration::ZERO, i, T0);
        assert_eq!(t.now_ms(0, i, T0), Some(T0));
        assert_eq!(t.now_ms(0, at(i, 5 * S), T0 + 5 * S), Some(T0 + 5 * S));
    }

    #[test]
    fn a_wall_clock_a_day_ahead_moves_time_by_at_most_the_lead() {
        let mut t = LeaderTime::default();
        let i = Instant::now();
        t.lead(2, T0, Duration::ZERO, i, T0 + DAY);
        assert_eq!(t.now_ms(T0, i, T0 + DAY), Some(T0 + LEAD));
        assert_eq!(
            t.now_ms(T0, at(i, 10 * S), T0 + DAY),
            Some(T0 + 10 * S + LEAD)
        );
    }

    #[test]
    fn a_wall_clock_a_few_ms_ahead_is_stamped_as_it_is() {
        // A new leader's continuation lags the old leader's clock by the replication
        // delay; the wall clock closes that.
        let mut t = LeaderTime::default();
        let i = Instant::now();
        t.lead(2, T0, Duration::from_millis(300), i, T0 + 308);
        assert_eq!(t.now_ms(T0, i, T0 + 308), Some(T0 + 308));
        assert_eq!(t.now_ms(T0, at(i, S), T0 + 1_308), Some(T0 + 1_308));
    }

    #[test]
    fn a_wall_clock_a_day_behind_does_not_hold_time_back() {
        let mut t = LeaderTime::default();
        let i = Instant::now();
        t.lead(2, T0, Duration::ZERO, i, T0 - DAY);
        assert_eq!(t.now_ms(T0, i, T0 - DAY), Some(T0));
        assert_eq!(t.now_ms(T0, at(i, 10 * S), T0 - DAY), Some(T0 + 10 * S));
    }

    #[test]
    fn a_gap_nobody_measured_is_not_taken_from_the_wall_clock() {
        // A restarted process never applied the last entry itself (no time since then is
        // known): however far ahead the wall clock is, time continues from the entry.
        let mut t = LeaderTime::default();
        let i = Instant::now();
        t.lead(3, T0, Duration::ZERO, i, T0 + 3_600 * S);
        assert_eq!(t.now_ms(T0, at(i, S), T0 + 3_601 * S), Some(T0 + S + LEAD));
    }

    #[test]
    fn the_time_since_the_last_entry_was_applied_here_counts() {
        // The last entry (stamped T0) was applied here 2.5 s before this node leads: an
        // election gap, or an idle cluster. Leader time starts there, whatever the wall
        // clock says.
        let mut t = LeaderTime::default();
        let i = Instant::now();
        t.lead(2, T0, Duration::from_millis(2_500), i, T0 - DAY);
        assert_eq!(t.now_ms(T0, i, T0 - DAY), Some(T0 + 2_500));
        let mut t = LeaderTime::default();
        t.lead(2, T0, Duration::from_millis(2_500), i, T0 + DAY);
        assert_eq!(t.now_ms(T0, at(i, S), T0 + DAY), Some(T0 + 3_500 + LEAD));
    }

    #[test]
    fn time_never_runs_backwards() {
        let mut t = LeaderTime::default();
        let i = Instant::now();
        t.lead(2, T0, Duration::ZERO, i, T0);
        // The wall clock jumps back: leader time goes on.
        assert_eq!(t.now_ms(T0, at(i, 2 * S), T0 - 60 * S), Some(T0 + 2 * S));
        // Entries of an earlier term applied after the anchor carry later times.
        assert_eq!(t.now_ms(T0 + 9 * S, at(i, 2 * S), T0), Some(T0 + 9 * S));
    }

    #[test]
    fn leading_the_same_term_again_keeps_the_anchor_a_new_term_reanchors() {
        let mut t = LeaderTime::default();
        let i = Instant::now();
        assert!(t.lead(2, T0, Duration::ZERO, i, T0));
        assert!(!t.lead(2, T0 + 50 * S, Duration::ZERO, at(i, 5 * S), T0 + 5 * S));
        assert_eq!(t.now_ms(T0, at(i, 5 * S), T0 + 5 * S), Some(T0 + 5 * S));
        // A later term anchors at the replicated time applied by then.
        assert!(t.lead(4, T0 + 7 * S, Duration::ZERO, at(i, 20 * S), T0 + 20 * S));
        assert_eq!(t.now_ms(T0 + 7 * S, at(i, 21 * S), T0), Some(T0 + 8 * S));
    }

    #[test]
    fn skew_beyond_a_second_is_reported_once_a_minute() {
        let mut t = LeaderTime::default();
        let i = Instant::now();
        t.lead(2, T0, Duration::ZERO, i, T0);
        let r = t.read(T0, i, T0 + 900).unwrap();
        assert_eq!(r.warn_skew_ms, None, "within a second: no warning");
        let r = t.read(T0, i, T0 + DAY).unwrap();
        assert_eq!(r.warn_skew_ms, Some(i64::try_from(DAY - LEAD).unwrap()));
        let r = t.read(T0, at(i, 30 * S), T0 - DAY).unwrap();
        assert_eq!(r.warn_skew_ms, None, "rate-limited");
        let r = t.read(T0, at(i, 61 * S), T0 - DAY).unwrap();
        assert_eq!(
            r.warn_skew_ms,
            Some(-i64::try_from(DAY + 61 * S).unwrap()),
            "behind counts too"
        );
    }
}
