//! Operation histories recorded by the fault-injection workloads, and the checkers
//! that judge them.
//!
//! Everything here is pure: plain values in, a [`Report`] out; no IO, no clock, no async.
//! The harness records what its clients did while faults were injected, then hands the
//! history to a checker once the run is over.
//!
//! **Time.** Every time is a [`Duration`] since the start of the run, read from one
//! monotonic clock shared by every client (clients and servers run on one machine).
//! Operation A *precedes* B in real time only if `A.complete < B.invoke`, strictly: two
//! readings that are equal are treated as concurrent. Clocks are coarse enough for ties
//! to happen, and treating a tie as an order would turn a measurement artefact into a
//! false alarm; a missed exact tie costs nothing in practice.
//!
//! **Reports.** Every checker returns a [`Report`]: how many items it looked at
//! (`checked`), how many it could not judge either way (`unverified`, defined per
//! checker, so that a run that proved little is visible), and the [`Anomaly`]s it found.
//! An empty `anomalies` means the history passed. Each anomaly names the check that
//! failed (one of the `LOCK_*`, `REGISTRY_*` and `LEASE_*` constants) and says which
//! lock, instance, lease, token, process and times (in ms) were involved.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::Duration;

/// How an operation ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome<T> {
    /// It took effect and answered this.
    Ok(T),
    /// It definitely did not take effect (e.g. a 4xx answer).
    Failed(String),
    /// It may or may not have taken effect (timeout, 5xx, connection lost).
    Unknown(String),
}

impl<T> Outcome<T> {
    /// The answer, if the operation ended `Ok`.
    pub fn ok(&self) -> Option<&T> {
        match self {
            Outcome::Ok(value) => Some(value),
            Outcome::Failed(_) | Outcome::Unknown(_) => None,
        }
    }

    pub fn is_ok(&self) -> bool {
        matches!(self, Outcome::Ok(_))
    }

    pub fn is_failed(&self) -> bool {
        matches!(self, Outcome::Failed(_))
    }

    pub fn is_unknown(&self) -> bool {
        matches!(self, Outcome::Unknown(_))
    }
}

/// One operation by one client process: when it was invoked, when its answer came back
/// (for `Unknown`: when the client gave up), what it asked and how it ended.
#[derive(Debug, Clone)]
pub struct Op<I, O> {
    /// Which client issued it; a process issues one operation at a time.
    pub process: usize,
    /// When the client sent it.
    pub invoke: Duration,
    /// When the answer arrived, or for `Unknown` when the client stopped waiting.
    pub complete: Duration,
    /// What it asked.
    pub input: I,
    /// How it ended.
    pub outcome: Outcome<O>,
}

/// One violation found by a checker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Anomaly {
    /// The check that failed: one of the `LOCK_*`, `REGISTRY_*` or `LEASE_*` constants.
    pub checker: &'static str,
    /// What was seen, with names, tokens, processes and times in ms.
    pub message: String,
}

impl fmt::Display for Anomaly {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{}] {}", self.checker, self.message)
    }
}

/// What one checker found: the shape every checker in this module returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// The checker: `"locks"`, `"registry"` or `"leases"`.
    pub checker: &'static str,
    /// How many items it looked at (defined per checker).
    pub checked: usize,
    /// How many items it could not judge either way (defined per checker). Not a failure,
    /// but a run where most items are unverified proves little.
    pub unverified: usize,
    /// Every violation found; empty means the history passed.
    pub anomalies: Vec<Anomaly>,
}

/// How many anomalies a report's `Display` prints before summarising the rest.
const ANOMALIES_SHOWN: usize = 30;

impl Report {
    fn new(checker: &'static str) -> Report {
        Report {
            checker,
            checked: 0,
            unverified: 0,
            anomalies: Vec::new(),
        }
    }

    /// Whether the history passed: no anomaly.
    pub fn is_ok(&self) -> bool {
        self.anomalies.is_empty()
    }

    /// The anomalies reported by one check.
    pub fn of(&self, check: &str) -> Vec<&Anomaly> {
        self.anomalies
            .iter()
            .filter(|a| a.checker == check)
            .collect()
    }

    fn push(&mut self, checker: &'static str, message: String) {
        self.anomalies.push(Anomaly { checker, message });
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: checked {}, {} unverified, {} anomalies",
            self.checker,
            self.checked,
            self.unverified,
            self.anomalies.len()
        )?;
        for anomaly in self.anomalies.iter().take(ANOMALIES_SHOWN) {
            write!(f, "\n  {anomaly}")?;
        }
        if self.anomalies.len() > ANOMALIES_SHOWN {
            write!(
                f,
                "\n  ... and {} more",
                self.anomalies.len() - ANOMALIES_SHOWN
            )?;
        }
        Ok(())
    }
}

/// Shows a [`Duration`] since the start of the run as milliseconds, e.g. `1234.567ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Millis(pub Duration);

impl fmt::Display for Millis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:.3}ms", self.0.as_secs_f64() * 1e3)
    }
}

fn ms(d: Duration) -> Millis {
    Millis(d)
}

// ---------------------------------------------------------------------------------------
// Locks
// ---------------------------------------------------------------------------------------

/// Two holders' safe intervals overlap.
pub const LOCK_MUTUAL_EXCLUSION: &str = "lock-mutual-exclusion";
/// Two different processes were granted the same token on one lock.
pub const LOCK_UNIQUE_TOKEN: &str = "lock-unique-token";
/// A grant that came later in real time carries a lower token.
pub const LOCK_TOKEN_ORDER: &str = "lock-token-order";
/// The fenced resource accepted a lower token after a higher one.
pub const LOCK_RESOURCE_ORDER: &str = "lock-resource-order";

/// One successful acquire: a holder and the interval in which it believed it held.
#[derive(Debug, Clone)]
pub struct Grant {
    pub lock: String,
    /// The client that acquired it.
    pub process: usize,
    /// The fencing token the acquire answered with.
    pub token: u64,
    /// When the acquire was sent.
    pub acquire_invoked: Duration,
    /// When the acquire answered 200 with this token.
    pub acquired: Duration,
    /// End of the interval in which this holder may act: the earliest of its release's
    /// invocation and (send time of its last confirmed lease renewal, or of the acquire)
    /// + lease TTL.
    pub safe_until: Duration,
}

/// One write to the fenced resource a lock protects, as the resource saw it.
#[derive(Debug, Clone)]
pub struct ResourceWrite {
    pub lock: String,
    /// The order in which the resource saw the writes to this lock's resource.
    pub seq: u64,
    /// The client that wrote.
    pub process: usize,
    /// The fencing token the write carried.
    pub token: u64,
    /// When the resource received it.
    pub at: Duration,
    /// Whether the resource accepted it (its token was not below the highest it had seen).
    pub accepted: bool,
}

/// Checks a lock workload: who held which lock when, and what the fenced resource
/// accepted. Each lock is judged on its own.
///
/// - [`LOCK_MUTUAL_EXCLUSION`]: the safe intervals `[acquired, safe_until]` of two
///   holders never overlap. Sound because the server grants the lock again only after the
///   previous holder released it (after the release was invoked) or its lease expired, and
///   the server's countdown starts when it *receives* a renewal, after it was sent, so
///   expiry comes no earlier than `send time + TTL`; the next grant's answer arrives later
///   still. Empty intervals (`safe_until <= acquired`: the holder never got to act) are
///   ignored, and intervals that merely touch are not an overlap (see the module doc on
///   ties). Two grants with the same token *and* process are one holding reported twice
///   (an acquire by a lease that already holds is answered with the existing grant), not
///   two holders.
/// - [`LOCK_UNIQUE_TOKEN`]: no token is granted to two different processes. The same
///   process may see its token twice, for the reason above.
/// - [`LOCK_TOKEN_ORDER`]: if grant A was acquired before B's acquire was invoked, A's
///   token is lower. Tokens come from the Raft log index, so an acquire that finished
///   before another began must have a lower one. Equal tokens are left to
///   [`LOCK_UNIQUE_TOKEN`].
/// - [`LOCK_RESOURCE_ORDER`]: the resource, taken in `seq` order, never accepted a write
///   with a lower token after one with a higher token (equal tokens are the same holder
///   writing again). This is what fencing promises even when safe intervals were
///   misjudged.
///
/// An accepted write whose token no grant of its lock carries is counted in `unverified`,
/// not reported: the harness records a [`Grant`] only for acquires that answered 200, and a
/// holder may still learn its token another way (an acquire retried under the same lease
/// after a timed-out one is answered with the same grant, and a client that crashed after
/// its acquire answered may leave no record). Such a write still takes part in the
/// resource-order check.
///
/// `checked` = grants + writes.
pub fn check_locks(grants: &[Grant], writes: &[ResourceWrite]) -> Report {
    let mut report = Report::new("locks");
    report.checked = grants.len() + writes.len();
    let mut by_lock: BTreeMap<&str, (Vec<&Grant>, Vec<&ResourceWrite>)> = BTreeMap::new();
    for grant in grants {
        by_lock.entry(&grant.lock).or_default().0.push(grant);
    }
    for write in writes {
        by_lock.entry(&write.lock).or_default().1.push(write);
    }
    for (lock, (grants, writes)) in &by_lock {
        check_exclusion(&mut report, lock, grants);
        check_unique_tokens(&mut report, lock, grants);
        check_token_order(&mut report, lock, grants);
        check_resource(&mut report, lock, writes);
        let tokens: BTreeSet<u64> = grants.iter().map(|g| g.token).collect();
        report.unverified += writes
            .iter()
            .filter(|w| w.accepted && !tokens.contains(&w.token))
            .count();
    }
    report
}

fn describe_grant(g: &Grant) -> String {
    format!(
        "process {} with token {} (acquire invoked {}, held [{}, {}])",
        g.process,
        g.token,
        ms(g.acquire_invoked),
        ms(g.acquired),
        ms(g.safe_until)
    )
}

/// One holding: grants with the same token and process are the same holder.
fn holder(g: &Grant) -> (u64, usize) {
    (g.token, g.process)
}

/// Sweeps the safe intervals in start order, keeping the latest-ending interval seen so
/// far and the latest-ending one of any *other* holder, so that each interval is compared
/// with the earlier interval of a different holder that reaches furthest.
fn check_exclusion(report: &mut Report, lock: &str, grants: &[&Grant]) {
    let mut held: Vec<&Grant> = grants
        .iter()
        .copied()
        .filter(|g| g.safe_until > g.acquired)
        .collect();
    held.sort_by_key(|g| (g.acquired, g.safe_until, g.token, g.process));
    // `furthest` ends last; `other` ends last among holders other than `furthest`'s.
    let mut furthest: Option<&Grant> = None;
    let mut other: Option<&Grant> = None;
    for &g in &held {
        let rival = match furthest {
            Some(f) if holder(f) == holder(g) => other,
            f => f,
        };
        if let Some(r) = rival.filter(|r| g.acquired < r.safe_until) {
            report.push(
                LOCK_MUTUAL_EXCLUSION,
                format!(
                    "lock {lock:?}: {} and {} held it at the same time, for {}",
                    describe_grant(r),
                    describe_grant(g),
                    ms(r.safe_until.min(g.safe_until) - g.acquired)
                ),
            );
        }
        match furthest {
            Some(f) if g.safe_until <= f.safe_until => {
                if holder(f) != holder(g) && other.is_none_or(|o| g.safe_until > o.safe_until) {
                    other = Some(g);
                }
            }
            Some(f) if holder(f) == holder(g) => furthest = Some(g),
            f => {
                other = f;
                furthest = Some(g);
            }
        }
    }
}

fn check_unique_tokens(report: &mut Report, lock: &str, grants: &[&Grant]) {
    let mut by_token: BTreeMap<u64, Vec<&Grant>> = BTreeMap::new();
    for &g in grants {
        by_token.entry(g.token).or_default().push(g);
    }
    for (token, holders) in by_token {
        let processes: BTreeSet<usize> = holders.iter().map(|g| g.process).collect();
        if processes.len() > 1 {
            let who: Vec<String> = holders.iter().map(|g| describe_grant(g)).collect();
            report.push(
                LOCK_UNIQUE_TOKEN,
                format!(
                    "lock {lock:?}: token {token} was granted to processes {processes:?}: {}",
                    who.join("; ")
                ),
            );
        }
    }
}

/// Sorts by `acquired` and keeps a running maximum of tokens, so each grant is compared
/// with the highest token acquired before its acquire was invoked: O(n log n).
fn check_token_order(report: &mut Report, lock: &str, grants: &[&Grant]) {
    let mut by_acquired: Vec<&Grant> = grants.to_vec();
    by_acquired.sort_by_key(|g| (g.acquired, g.token, g.process));
    // highest[i]: the grant with the highest token among by_acquired[..=i].
    let mut highest: Vec<&Grant> = Vec::with_capacity(by_acquired.len());
    for &g in &by_acquired {
        let best = match highest.last() {
            Some(&h) if h.token >= g.token => h,
            _ => g,
        };
        highest.push(best);
    }
    let mut by_invoked: Vec<&Grant> = grants.to_vec();
    by_invoked.sort_by_key(|g| (g.acquire_invoked, g.token, g.process));
    for &b in &by_invoked {
        let before = by_acquired.partition_point(|a| a.acquired < b.acquire_invoked);
        let Some(&a) = before.checked_sub(1).and_then(|i| highest.get(i)) else {
            continue;
        };
        if a.token > b.token {
            report.push(
                LOCK_TOKEN_ORDER,
                format!(
                    "lock {lock:?}: {} was acquired at {}, before {} invoked its acquire at {}, \
                     yet got the higher token",
                    describe_grant(a),
                    ms(a.acquired),
                    describe_grant(b),
                    ms(b.acquire_invoked)
                ),
            );
        }
    }
}

fn check_resource(report: &mut Report, lock: &str, writes: &[&ResourceWrite]) {
    let mut in_order: Vec<&ResourceWrite> = writes.iter().copied().filter(|w| w.accepted).collect();
    in_order.sort_by_key(|w| w.seq);
    let mut highest: Option<&ResourceWrite> = None;
    for &w in &in_order {
        match highest {
            Some(h) if w.token < h.token => report.push(
                LOCK_RESOURCE_ORDER,
                format!(
                    "lock {lock:?}: the resource accepted token {} from process {} (seq {}, at {}) \
                     after accepting the higher token {} from process {} (seq {}, at {})",
                    w.token,
                    w.process,
                    w.seq,
                    ms(w.at),
                    h.token,
                    h.process,
                    h.seq,
                    ms(h.at)
                ),
            ),
            Some(h) if w.token <= h.token => {}
            _ => highest = Some(w),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Registry
// ---------------------------------------------------------------------------------------

/// An Ok Resolve invoked after an acknowledged Register lacks the instance.
pub const REGISTRY_ACKED_PRESENT: &str = "registry-acked-present";
/// An Ok Resolve invoked after an acknowledged Deregister still has the instance.
pub const REGISTRY_DEREGISTERED_GONE: &str = "registry-deregistered-gone";
/// An Ok Resolve returned an instance that was never (successfully) registered.
pub const REGISTRY_PHANTOM: &str = "registry-phantom";
/// The final read disagrees with what was acknowledged.
pub const REGISTRY_FINAL_READ: &str = "registry-final-read";
/// An instance was seen, then missing, then seen again.
pub const REGISTRY_CAME_BACK: &str = "registry-came-back";
/// The history breaks the workload contract, so the other checks may misjudge it.
pub const REGISTRY_CONTRACT: &str = "registry-contract";

/// What a registry workload client asks, all about one service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegistryOp {
    /// Register this instance id.
    Register(String),
    /// Deregister this instance id.
    Deregister(String),
    /// Read the service's instances.
    Resolve,
}

/// What a registry operation answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegistryAnswer {
    /// A Register or Deregister was applied.
    Done,
    /// A Resolve's instance ids.
    Instances(BTreeSet<String>),
}

/// What the checker knows about one instance id.
#[derive(Debug, Default)]
struct Instance<'a> {
    register: Option<&'a Op<RegistryOp, RegistryAnswer>>,
    deregister: Option<&'a Op<RegistryOp, RegistryAnswer>>,
    /// The Ok Resolve that returned it and completed first.
    first_seen: Option<usize>,
    /// The Ok Resolve that returned it and was invoked last.
    last_seen: Option<usize>,
}

/// An Ok Resolve.
#[derive(Debug)]
struct Resolve<'a> {
    process: usize,
    invoke: Duration,
    complete: Duration,
    instances: &'a BTreeSet<String>,
}

impl fmt::Display for Resolve<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the resolve by process {} over [{}, {}]",
            self.process,
            ms(self.invoke),
            ms(self.complete)
        )
    }
}

fn describe_op(what: &str, op: &Op<RegistryOp, RegistryAnswer>) -> String {
    let ended = match &op.outcome {
        Outcome::Ok(_) => "ok".to_owned(),
        Outcome::Failed(why) => format!("failed: {why}"),
        Outcome::Unknown(why) => format!("unknown: {why}"),
    };
    format!(
        "{what} by process {} over [{}, {}] ({ended})",
        op.process,
        ms(op.invoke),
        ms(op.complete)
    )
}

/// Checks a registry workload on one service.
///
/// **Workload contract.** Every instance id is registered at most once (one Register op)
/// and deregistered at most once, only after its Register was invoked; leases are long
/// enough that nothing expires during the run; Resolve ops are linearizable reads of the
/// service's instances. Breaches the checker can see are reported as
/// [`REGISTRY_CONTRACT`]. Because an id enters the service at most once and leaves at most
/// once, its presence over time is a single interval, which is what makes the checks below
/// sound:
///
/// - [`REGISTRY_ACKED_PRESENT`]: once Register(x) ended Ok at `t`, every Ok Resolve invoked
///   after `t` contains x, unless a Deregister(x) that did not fail was invoked before that
///   Resolve completed (it may have taken effect first). Acknowledged writes are never lost.
/// - [`REGISTRY_DEREGISTERED_GONE`]: once Deregister(x) ended Ok at `t`, no Ok Resolve
///   invoked after `t` contains x.
/// - [`REGISTRY_PHANTOM`]: an Ok Resolve never contains an x whose Register failed, was
///   never issued, or was invoked only after that Resolve completed.
/// - [`REGISTRY_FINAL_READ`] (when `final_read` is given: a Resolve taken after the faults
///   healed and every op finished): it contains every x with an Ok Register and no
///   Deregister that could have taken effect (none, or a Failed one); it contains no x
///   with an Ok Deregister; it contains no x whose Register failed or never happened.
/// - [`REGISTRY_CAME_BACK`]: if x was known present at some time (its Register ended Ok
///   then, or an Ok Resolve containing it completed then), an Ok Resolve R1 invoked after
///   that lacks x, and an Ok Resolve R2 invoked after R1 completed contains x, then x left
///   and came back, which needs a second registration. This catches a lost and later
///   restored registration even where [`REGISTRY_ACKED_PRESENT`] is excused by a
///   concurrent or unknown Deregister.
///
/// Cost: each instance scans the Resolves during its own lifetime (found by binary search
/// over Resolves sorted by invocation), about the size of the Resolve answers themselves.
/// Each check reports at most one anomaly per instance, with a count of further cases.
///
/// `checked` = ops (+ 1 for the final read); `unverified` = ops that ended `Unknown`.
pub fn check_registry(
    ops: &[Op<RegistryOp, RegistryAnswer>],
    final_read: Option<&BTreeSet<String>>,
) -> Report {
    let mut report = Report::new("registry");
    report.checked = ops.len() + usize::from(final_read.is_some());
    report.unverified = ops.iter().filter(|op| op.outcome.is_unknown()).count();

    let mut instances: BTreeMap<&str, Instance<'_>> = BTreeMap::new();
    let mut resolves: Vec<Resolve<'_>> = Vec::new();
    for op in ops {
        match (&op.input, &op.outcome) {
            (RegistryOp::Register(x), _) => {
                let slot = &mut instances.entry(x).or_default().register;
                match slot {
                    Some(first) => report.push(
                        REGISTRY_CONTRACT,
                        format!(
                            "instance {x:?} registered twice: {} and {}",
                            describe_op("register", first),
                            describe_op("register", op)
                        ),
                    ),
                    None => *slot = Some(op),
                }
            }
            (RegistryOp::Deregister(x), _) => {
                let slot = &mut instances.entry(x).or_default().deregister;
                match slot {
                    Some(first) => report.push(
                        REGISTRY_CONTRACT,
                        format!(
                            "instance {x:?} deregistered twice: {} and {}",
                            describe_op("deregister", first),
                            describe_op("deregister", op)
                        ),
                    ),
                    None => *slot = Some(op),
                }
            }
            (RegistryOp::Resolve, Outcome::Ok(RegistryAnswer::Instances(set))) => {
                resolves.push(Resolve {
                    process: op.process,
                    invoke: op.invoke,
                    complete: op.complete,
                    instances: set,
                });
            }
            (RegistryOp::Resolve, Outcome::Ok(RegistryAnswer::Done)) => report.push(
                REGISTRY_CONTRACT,
                format!(
                    "{} answered Done instead of instances",
                    describe_op("resolve", op)
                ),
            ),
            (RegistryOp::Resolve, Outcome::Failed(_) | Outcome::Unknown(_)) => {}
        }
    }
    resolves.sort_by_key(|r| (r.invoke, r.complete, r.process));
    for (i, r) in resolves.iter().enumerate() {
        for x in r.instances {
            let instance = instances.entry(x).or_default();
            if instance
                .first_seen
                .is_none_or(|f| resolves[f].complete > r.complete)
            {
                instance.first_seen = Some(i);
            }
            // Sorted by invoke, so the last one seen is the latest invoked.
            instance.last_seen = Some(i);
        }
    }

    for (x, instance) in &instances {
        check_instance(&mut report, x, instance, &resolves);
    }
    if let Some(final_read) = final_read {
        check_final_read(&mut report, final_read, &instances);
    }
    report
}

fn check_instance(report: &mut Report, x: &str, instance: &Instance<'_>, resolves: &[Resolve<'_>]) {
    let register = instance.register;
    let deregister = instance.deregister;
    if let (Some(d), r) = (deregister, register) {
        if r.is_none_or(|r| d.invoke < r.invoke) {
            report.push(
                REGISTRY_CONTRACT,
                format!(
                    "instance {x:?}: {} was not preceded by its register",
                    describe_op("deregister", d)
                ),
            );
        }
    }
    let first_seen = instance.first_seen.map(|i| &resolves[i]);
    let last_seen = instance.last_seen.map(|i| &resolves[i]);

    // Phantoms.
    if let Some(seen) = first_seen {
        match register {
            None => report.push(
                REGISTRY_PHANTOM,
                format!("{seen} returned instance {x:?}, which was never registered"),
            ),
            Some(r) if r.outcome.is_failed() => report.push(
                REGISTRY_PHANTOM,
                format!(
                    "{seen} returned instance {x:?}, whose {}",
                    describe_op("register", r)
                ),
            ),
            Some(r) if r.invoke > seen.complete => report.push(
                REGISTRY_PHANTOM,
                format!(
                    "{seen} returned instance {x:?} before its {}",
                    describe_op("register", r)
                ),
            ),
            Some(_) => {}
        }
    }

    // Deregistered instances stay gone.
    if let (Some(d), Some(seen)) = (deregister, last_seen) {
        if d.outcome.is_ok() && seen.invoke > d.complete {
            report.push(
                REGISTRY_DEREGISTERED_GONE,
                format!(
                    "{seen} returned instance {x:?} after its {}",
                    describe_op("deregister", d)
                ),
            );
        }
    }

    // Acknowledged registrations are present until a deregister may have taken effect.
    let registered_at = register.filter(|r| r.outcome.is_ok()).map(|r| r.complete);
    let may_leave_from = deregister
        .filter(|d| !d.outcome.is_failed())
        .map(|d| d.invoke);
    if let (Some(registered_at), Some(r)) = (registered_at, register) {
        let start = resolves.partition_point(|res| res.invoke <= registered_at);
        // A resolve invoked at or after `may_leave_from` also completes after it.
        let missing: Vec<&Resolve<'_>> = resolves[start..]
            .iter()
            .take_while(|res| may_leave_from.is_none_or(|d| res.invoke < d))
            .filter(|res| may_leave_from.is_none_or(|d| d > res.complete))
            .filter(|res| !res.instances.contains(x))
            .collect();
        if let Some(first) = missing.first() {
            report.push(
                REGISTRY_ACKED_PRESENT,
                format!(
                    "{first} lacks instance {x:?}, acknowledged by its {}; {}{}",
                    describe_op("register", r),
                    match deregister {
                        Some(d) if !d.outcome.is_failed() => format!(
                            "its {} came only after that resolve completed",
                            describe_op("deregister", d)
                        ),
                        Some(d) => format!("its only {}", describe_op("deregister", d)),
                        None => "it was never deregistered".to_owned(),
                    },
                    and_more(missing.len() - 1, "resolve")
                ),
            );
        }
    }

    // Seen, gone, seen again.
    let present_at = [registered_at, first_seen.map(|s| s.complete)]
        .into_iter()
        .flatten()
        .min();
    if let (Some(present_at), Some(again)) = (present_at, last_seen) {
        let start = resolves.partition_point(|res| res.invoke <= present_at);
        let gaps: Vec<&Resolve<'_>> = resolves[start..]
            .iter()
            .take_while(|res| res.invoke < again.invoke)
            .filter(|res| res.complete < again.invoke && !res.instances.contains(x))
            .collect();
        if let Some(gap) = gaps.first() {
            report.push(
                REGISTRY_CAME_BACK,
                format!(
                    "instance {x:?} was present by {}, missing from {gap}, and back in {again}{}",
                    ms(present_at),
                    and_more(gaps.len() - 1, "resolve")
                ),
            );
        }
    }
}

fn and_more(n: usize, what: &str) -> String {
    match n {
        0 => String::new(),
        1 => format!(" (and 1 more {what})"),
        n => format!(" (and {n} more {what}s)"),
    }
}

fn check_final_read(
    report: &mut Report,
    final_read: &BTreeSet<String>,
    instances: &BTreeMap<&str, Instance<'_>>,
) {
    for (x, instance) in instances {
        let present = final_read.contains(*x);
        let register = instance.register;
        let deregister = instance.deregister;
        let acknowledged = register.filter(|r| r.outcome.is_ok());
        let may_have_left = deregister.is_some_and(|d| !d.outcome.is_failed());
        if let (Some(r), false, false) = (acknowledged, may_have_left, present) {
            report.push(
                REGISTRY_FINAL_READ,
                format!(
                    "the final read lacks instance {x:?}, acknowledged by its {} and never \
                     deregistered",
                    describe_op("register", r)
                ),
            );
        }
        if let Some(d) = deregister.filter(|d| d.outcome.is_ok() && present) {
            report.push(
                REGISTRY_FINAL_READ,
                format!(
                    "the final read has instance {x:?} after its {}",
                    describe_op("deregister", d)
                ),
            );
        }
        if present {
            match register {
                None => report.push(
                    REGISTRY_FINAL_READ,
                    format!("the final read has instance {x:?}, which was never registered"),
                ),
                Some(r) if r.outcome.is_failed() => report.push(
                    REGISTRY_FINAL_READ,
                    format!(
                        "the final read has instance {x:?}, whose {}",
                        describe_op("register", r)
                    ),
                ),
                Some(_) => {}
            }
        }
    }
    for x in final_read {
        if !instances.contains_key(x.as_str()) {
            report.push(
                REGISTRY_FINAL_READ,
                format!("the final read has instance {x:?}, which was never registered"),
            );
        }
    }
}

// ---------------------------------------------------------------------------------------
// Leases
// ---------------------------------------------------------------------------------------

/// A lease answered "expired" before its TTL ran out since a confirmed renewal.
pub const LEASE_EXPIRED_EARLY: &str = "lease-expired-early";
/// A lease was renewed after the server said it no longer existed.
pub const LEASE_REVIVED: &str = "lease-revived";

/// Everything one client did to one lease.
#[derive(Debug, Clone)]
pub struct LeaseHistory {
    /// The lease's id, for messages.
    pub lease: String,
    /// The TTL it was granted with.
    pub ttl: Duration,
    /// The grant and every keepalive, in invocation order; `Ok(true)` = renewed / granted,
    /// `Ok(false)` = the server answered that the lease does not exist or has expired.
    /// The input is a note for messages: which node was asked, and a refusal's code.
    pub ops: Vec<Op<String, bool>>,
}

/// Checks that no lease renewed within its TTL expired.
///
/// - [`LEASE_EXPIRED_EARLY`]: the server restarts a lease's countdown at the full TTL
///   when it receives a renewal, which is after the renewal was sent, so an `Ok(true)` op
///   invoked at `t` proves the lease lives until at least `t + ttl`. An `Ok(false)` answer
///   that completed at `c` is an anomaly if `c < t + ttl` for the latest `Ok(true)` op
///   invoked before `c`. One exception: a keepalive invoked before the grant (the first op)
///   completed may have reached the server before the lease existed, so the grant does not
///   count against it.
/// - [`LEASE_REVIVED`]: an `Ok(true)` op invoked after an `Ok(false)` answer completed:
///   a lease came back to life. Reported once per lease.
///
/// Failed and Unknown ops prove nothing: an unknown renewal may have extended the lease,
/// so it cannot be held against a later `Ok(false)`, and it cannot be blamed either.
///
/// `checked` = ops over all leases; `unverified` = ops that ended Failed or Unknown.
pub fn check_leases(leases: &[LeaseHistory]) -> Report {
    let mut report = Report::new("leases");
    for lease in leases {
        report.checked += lease.ops.len();
        report.unverified += lease.ops.iter().filter(|op| !op.outcome.is_ok()).count();
        check_lease(&mut report, lease);
    }
    report
}

/// `", NOTE"` for an op's note, nothing for an empty one.
fn note(note: &str) -> String {
    if note.is_empty() {
        String::new()
    } else {
        format!(", {note}")
    }
}

fn check_lease(report: &mut Report, lease: &LeaseHistory) {
    let name = &lease.lease;
    let grant = lease.ops.first();
    let mut renewals: Vec<&Op<String, bool>> = lease
        .ops
        .iter()
        .filter(|op| op.outcome == Outcome::Ok(true))
        .collect();
    renewals.sort_by_key(|op| op.invoke);
    let mut refusals: Vec<&Op<String, bool>> = lease
        .ops
        .iter()
        .filter(|op| op.outcome == Outcome::Ok(false))
        .collect();
    refusals.sort_by_key(|op| (op.complete, op.invoke));

    for refusal in &refusals {
        let before = renewals.partition_point(|r| r.invoke < refusal.complete);
        let Some(&renewal) = before.checked_sub(1).and_then(|i| renewals.get(i)) else {
            continue;
        };
        let is_grant = grant.is_some_and(|g| std::ptr::eq(g, renewal));
        if is_grant && refusal.invoke <= renewal.complete {
            continue;
        }
        let alive_until = renewal.invoke + lease.ttl;
        if refusal.complete < alive_until {
            report.push(
                LEASE_EXPIRED_EARLY,
                format!(
                    "lease {name:?} (ttl {}): process {} was told it had expired by {} \
                     (keepalive invoked {}{}), but the {} invoked at {} by process {}{} \
                     keeps it alive until at least {}",
                    ms(lease.ttl),
                    refusal.process,
                    ms(refusal.complete),
                    ms(refusal.invoke),
                    note(&refusal.input),
                    if is_grant { "grant" } else { "renewal" },
                    ms(renewal.invoke),
                    renewal.process,
                    note(&renewal.input),
                    ms(alive_until)
                ),
            );
        }
    }

    if let Some(first_refusal) = refusals.first() {
        let after = renewals.partition_point(|r| r.invoke <= first_refusal.complete);
        if let Some(revival) = renewals.get(after) {
            report.push(
                LEASE_REVIVED,
                format!(
                    "lease {name:?}: process {} was told it no longer existed at {} \
                     (keepalive invoked {}{}), yet a renewal by process {} invoked at {} \
                     succeeded (answered {}{})",
                    first_refusal.process,
                    ms(first_refusal.complete),
                    ms(first_refusal.invoke),
                    note(&first_refusal.input),
                    revival.process,
                    ms(revival.invoke),
                    ms(revival.complete),
                    note(&revival.input)
                ),
            );
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// Asserts that `report` holds exactly one anomaly, from `check`, whose message
    /// contains every one of `needles`.
    fn assert_only(report: &Report, check: &str, needles: &[&str]) {
        assert_eq!(
            report.anomalies.len(),
            1,
            "expected exactly one {check} anomaly, got:\n{report}"
        );
        let anomaly = &report.anomalies[0];
        assert_eq!(anomaly.checker, check, "{report}");
        for needle in needles {
            assert!(
                anomaly.message.contains(needle),
                "{needle:?} missing from {:?}",
                anomaly.message
            );
        }
    }

    // --- locks -------------------------------------------------------------------------

    fn grant(lock: &str, process: usize, token: u64, times: [u64; 3]) -> Grant {
        Grant {
            lock: lock.to_owned(),
            process,
            token,
            acquire_invoked: ms(times[0]),
            acquired: ms(times[1]),
            safe_until: ms(times[2]),
        }
    }

    fn write(lock: &str, seq: u64, process: usize, token: u64, accepted: bool) -> ResourceWrite {
        ResourceWrite {
            lock: lock.to_owned(),
            seq,
            process,
            token,
            at: ms(seq * 10),
            accepted,
        }
    }

    /// Three holders of "a" one after the other (the second and third waited in the
    /// queue while the first held), a holder that never got to act, the same holder
    /// reported twice, and a second lock with lower tokens.
    fn good_locks() -> (Vec<Grant>, Vec<ResourceWrite>) {
        let grants = vec![
            grant("a", 1, 10, [0, 5, 100]),
            grant("a", 2, 20, [3, 100, 200]),
            grant("a", 2, 20, [150, 160, 210]),
            grant("a", 3, 30, [50, 210, 300]),
            // Acquired while process 3 held, but its lease had already run out: empty.
            grant("a", 4, 25, [50, 250, 240]),
            grant("b", 1, 3, [0, 1, 400]),
        ];
        let writes = vec![
            write("a", 1, 1, 10, true),
            write("a", 2, 1, 10, true),
            write("a", 3, 2, 20, true),
            write("a", 4, 1, 10, false),
            write("a", 5, 3, 30, true),
            write("a", 6, 4, 25, false),
            write("b", 1, 1, 3, true),
        ];
        (grants, writes)
    }

    #[test]
    fn locks_pass_a_correct_history() {
        let (grants, writes) = good_locks();
        let report = check_locks(&grants, &writes);
        assert!(report.is_ok(), "{report}");
        assert_eq!(report.checker, "locks");
        assert_eq!(report.checked, 13);
        assert_eq!(report.unverified, 0);
    }

    #[test]
    fn locks_report_overlapping_holders() {
        // Both acquires were in flight together, so the token order is fine; the
        // second holder got the lock while the first still held it.
        let grants = [
            grant("a", 1, 1, [0, 10, 100]),
            grant("a", 2, 2, [5, 50, 150]),
        ];
        let report = check_locks(&grants, &[]);
        assert_only(
            &report,
            LOCK_MUTUAL_EXCLUSION,
            &[
                "\"a\"",
                "process 1 with token 1",
                "process 2 with token 2",
                "50.000ms",
            ],
        );
    }

    #[test]
    fn locks_find_an_overlap_hidden_behind_a_repeated_holder() {
        // Process 1's two records of token 2 reach furthest; process 3's interval still
        // overlaps the second of them.
        let grants = [
            grant("a", 1, 2, [0, 0, 100]),
            grant("a", 3, 1, [0, 20, 80]),
            grant("a", 1, 2, [0, 30, 120]),
        ];
        let report = check_locks(&grants, &[]);
        let overlaps = report.of(LOCK_MUTUAL_EXCLUSION);
        assert_eq!(overlaps.len(), 2, "{report}");
        assert!(
            overlaps[1].message.contains("[30.000ms, 120.000ms]"),
            "{report}"
        );
        assert_eq!(report.anomalies.len(), 2, "{report}");
    }

    #[test]
    fn locks_report_a_token_granted_twice() {
        // Concurrent acquires, disjoint holdings, one token.
        let grants = [grant("a", 1, 5, [0, 10, 20]), grant("a", 2, 5, [5, 25, 30])];
        let report = check_locks(&grants, &[]);
        assert_only(&report, LOCK_UNIQUE_TOKEN, &["token 5", "processes {1, 2}"]);
    }

    #[test]
    fn locks_report_a_later_grant_with_a_lower_token() {
        let grants = [
            grant("a", 1, 9, [0, 10, 20]),
            grant("a", 2, 5, [30, 40, 50]),
        ];
        let report = check_locks(&grants, &[]);
        assert_only(
            &report,
            LOCK_TOKEN_ORDER,
            &[
                "process 1 with token 9",
                "process 2 with token 5",
                "30.000ms",
            ],
        );
    }

    #[test]
    fn locks_report_the_resource_accepting_a_stale_token() {
        let (grants, mut writes) = good_locks();
        writes.push(write("a", 7, 2, 20, true));
        let report = check_locks(&grants, &writes);
        assert_only(
            &report,
            LOCK_RESOURCE_ORDER,
            &[
                "token 20 from process 2 (seq 7",
                "token 30 from process 3 (seq 5",
            ],
        );
    }

    #[test]
    fn locks_count_writes_with_unknown_tokens_without_failing() {
        let (grants, mut writes) = good_locks();
        writes.push(write("a", 7, 5, 40, true));
        writes.push(write("c", 1, 5, 1, true));
        // Rejected writes are not counted.
        writes.push(write("a", 8, 6, 35, false));
        let report = check_locks(&grants, &writes);
        assert!(report.is_ok(), "{report}");
        assert_eq!(report.unverified, 2);
        assert_eq!(report.checked, 16);
    }

    // --- registry ----------------------------------------------------------------------

    type ROp = Op<RegistryOp, RegistryAnswer>;

    fn op(
        process: usize,
        at: [u64; 2],
        input: RegistryOp,
        outcome: Outcome<RegistryAnswer>,
    ) -> ROp {
        Op {
            process,
            invoke: ms(at[0]),
            complete: ms(at[1]),
            input,
            outcome,
        }
    }

    fn done() -> Outcome<RegistryAnswer> {
        Outcome::Ok(RegistryAnswer::Done)
    }

    fn failed<T>() -> Outcome<T> {
        Outcome::Failed("409".to_owned())
    }

    fn unknown<T>() -> Outcome<T> {
        Outcome::Unknown("timeout".to_owned())
    }

    fn register(process: usize, at: [u64; 2], x: &str, outcome: Outcome<RegistryAnswer>) -> ROp {
        op(process, at, RegistryOp::Register(x.to_owned()), outcome)
    }

    fn deregister(process: usize, at: [u64; 2], x: &str, outcome: Outcome<RegistryAnswer>) -> ROp {
        op(process, at, RegistryOp::Deregister(x.to_owned()), outcome)
    }

    fn set(xs: &[&str]) -> BTreeSet<String> {
        xs.iter().map(|x| (*x).to_owned()).collect()
    }

    fn resolve(process: usize, at: [u64; 2], xs: &[&str]) -> ROp {
        op(
            process,
            at,
            RegistryOp::Resolve,
            Outcome::Ok(RegistryAnswer::Instances(set(xs))),
        )
    }

    /// x: registered, seen, deregistered (a resolve concurrent with the deregister still
    /// sees it); y: registered with an unknown outcome, seen from some point on; z: its
    /// register failed, never seen; w: registered, then a deregister with an unknown
    /// outcome that took effect.
    fn good_registry() -> Vec<ROp> {
        vec![
            register(1, [0, 10], "x", done()),
            register(2, [0, 10], "y", unknown()),
            register(3, [0, 10], "z", failed()),
            resolve(4, [11, 12], &["x"]),
            resolve(4, [13, 14], &["x", "y"]),
            deregister(1, [20, 25], "x", done()),
            resolve(4, [21, 23], &["x", "y"]),
            resolve(5, [26, 27], &["y"]),
            register(1, [30, 31], "w", done()),
            resolve(4, [32, 33], &["w", "y"]),
            op(5, [34, 35], RegistryOp::Resolve, unknown()),
            op(5, [36, 37], RegistryOp::Resolve, failed()),
            deregister(1, [40, 41], "w", unknown()),
            resolve(4, [42, 43], &["y"]),
            resolve(5, [50, 51], &["y"]),
        ]
    }

    #[test]
    fn registry_passes_a_correct_history() {
        let ops = good_registry();
        let report = check_registry(&ops, Some(&set(&["y"])));
        assert!(report.is_ok(), "{report}");
        assert_eq!(report.checker, "registry");
        assert_eq!(report.checked, ops.len() + 1);
        assert_eq!(report.unverified, 3);
        // The unknown deregister of w may also have never happened.
        let report = check_registry(&ops, Some(&set(&["w", "y"])));
        assert!(report.is_ok(), "{report}");
    }

    #[test]
    fn registry_reports_a_lost_acknowledged_registration() {
        let ops = [register(1, [0, 10], "x", done()), resolve(2, [11, 12], &[])];
        let report = check_registry(&ops, None);
        assert_only(
            &report,
            REGISTRY_ACKED_PRESENT,
            &[
                "process 2 over [11.000ms, 12.000ms]",
                "\"x\"",
                "never deregistered",
            ],
        );
    }

    #[test]
    fn registry_excuses_a_missing_instance_only_while_a_deregister_may_act() {
        let ops = [
            register(1, [0, 10], "x", done()),
            deregister(1, [20, 30], "x", failed()),
            resolve(2, [21, 22], &[]),
            resolve(2, [23, 24], &[]),
        ];
        let report = check_registry(&ops, None);
        assert_only(
            &report,
            REGISTRY_ACKED_PRESENT,
            &[
                "[21.000ms, 22.000ms]",
                "(and 1 more resolve)",
                "failed: 409",
            ],
        );
        let ops = [
            register(1, [0, 10], "x", done()),
            deregister(1, [20, 30], "x", unknown()),
            resolve(2, [15, 20], &[]),
        ];
        assert!(check_registry(&ops, None).is_ok());
    }

    #[test]
    fn registry_reports_a_deregistered_instance_still_resolved() {
        let ops = [
            register(1, [0, 10], "x", done()),
            resolve(2, [11, 12], &["x"]),
            deregister(1, [20, 25], "x", done()),
            resolve(2, [30, 31], &["x"]),
        ];
        let report = check_registry(&ops, None);
        assert_only(
            &report,
            REGISTRY_DEREGISTERED_GONE,
            &[
                "[30.000ms, 31.000ms]",
                "deregister by process 1 over [20.000ms, 25.000ms]",
            ],
        );
    }

    #[test]
    fn registry_reports_phantom_instances() {
        // Never registered.
        let report = check_registry(&[resolve(2, [0, 5], &["ghost"])], None);
        assert_only(
            &report,
            REGISTRY_PHANTOM,
            &["\"ghost\"", "never registered"],
        );
        // Registered, but the register failed.
        let ops = [
            register(1, [0, 10], "x", failed()),
            resolve(2, [11, 12], &["x"]),
        ];
        let report = check_registry(&ops, None);
        assert_only(&report, REGISTRY_PHANTOM, &["\"x\"", "failed: 409"]);
        // Seen before its register was sent.
        let ops = [
            resolve(2, [0, 5], &["x"]),
            register(1, [10, 12], "x", done()),
        ];
        let report = check_registry(&ops, None);
        assert_only(&report, REGISTRY_PHANTOM, &["\"x\" before its register"]);
        // A register sent while the resolve was in flight may be what it saw.
        let ops = [
            resolve(2, [0, 5], &["x"]),
            register(1, [5, 12], "x", done()),
        ];
        assert!(check_registry(&ops, None).is_ok());
    }

    #[test]
    fn registry_reports_a_final_read_that_disagrees() {
        let ops = [
            register(1, [0, 10], "kept", done()),
            register(1, [0, 10], "gone", done()),
            deregister(1, [20, 25], "gone", done()),
            register(1, [0, 10], "refused", failed()),
        ];
        let report = check_registry(&ops, Some(&set(&[])));
        assert_only(&report, REGISTRY_FINAL_READ, &["lacks instance \"kept\""]);
        let report = check_registry(&ops, Some(&set(&["kept", "gone"])));
        assert_only(
            &report,
            REGISTRY_FINAL_READ,
            &["has instance \"gone\" after"],
        );
        let report = check_registry(&ops, Some(&set(&["kept", "refused"])));
        assert_only(
            &report,
            REGISTRY_FINAL_READ,
            &["\"refused\"", "failed: 409"],
        );
        let report = check_registry(&ops, Some(&set(&["kept", "stranger"])));
        assert_only(
            &report,
            REGISTRY_FINAL_READ,
            &["\"stranger\", which was never registered"],
        );
        assert!(check_registry(&ops, Some(&set(&["kept"]))).is_ok());
    }

    #[test]
    fn registry_reports_an_instance_that_came_back() {
        // The deregister's outcome is unknown, so missing from R1 is excused, but then
        // it cannot reappear.
        let ops = [
            register(1, [0, 10], "x", done()),
            deregister(1, [20, 21], "x", unknown()),
            resolve(2, [22, 23], &[]),
            resolve(2, [30, 31], &["x"]),
        ];
        let report = check_registry(&ops, None);
        assert_only(
            &report,
            REGISTRY_CAME_BACK,
            &[
                "\"x\" was present by 10.000ms",
                "[22.000ms, 23.000ms]",
                "[30.000ms, 31.000ms]",
            ],
        );
        // Known present only because a resolve saw it (its register's outcome is unknown).
        let ops = [
            register(1, [0, 10], "x", unknown()),
            resolve(2, [11, 12], &["x"]),
            resolve(2, [13, 14], &[]),
            resolve(3, [15, 16], &["x"]),
        ];
        let report = check_registry(&ops, None);
        assert_only(&report, REGISTRY_CAME_BACK, &["present by 12.000ms"]);
        // Overlapping resolves may see it in either order.
        let ops = [
            register(1, [0, 10], "x", unknown()),
            resolve(2, [11, 14], &["x"]),
            resolve(3, [12, 16], &[]),
            resolve(2, [15, 17], &["x"]),
        ];
        assert!(check_registry(&ops, None).is_ok());
    }

    #[test]
    fn registry_reports_contract_breaches() {
        let ops = [
            register(1, [0, 10], "x", done()),
            register(2, [20, 30], "x", done()),
            deregister(1, [0, 5], "y", done()),
            op(3, [1, 2], RegistryOp::Resolve, done()),
        ];
        let report = check_registry(&ops, None);
        let breaches = report.of(REGISTRY_CONTRACT);
        assert_eq!(breaches.len(), 3, "{report}");
        assert!(breaches[0].message.contains("registered twice"), "{report}");
        assert!(breaches[1].message.contains("answered Done"), "{report}");
        assert!(breaches[2].message.contains("\"y\""), "{report}");
    }

    #[test]
    fn registry_checks_a_large_history() {
        // 1,000 instances registered and deregistered in turn; 18,000 resolves, each
        // seeing exactly the instances that are live at the time.
        let mut ops = Vec::new();
        let mut t = 0;
        for i in 0..1_000u64 {
            let x = format!("i{i}");
            ops.push(register(0, [t, t + 1], &x, done()));
            if i >= 10 {
                ops.push(deregister(
                    0,
                    [t + 1, t + 2],
                    &format!("i{}", i - 10),
                    done(),
                ));
            }
            let live: Vec<String> = (i.saturating_sub(9)..=i).map(|j| format!("i{j}")).collect();
            let live: Vec<&str> = live.iter().map(String::as_str).collect();
            for k in 0..18u64 {
                let process = 1 + (k % 3) as usize;
                ops.push(resolve(process, [t + 3 + k, t + 4 + k], &live));
            }
            t += 30;
        }
        let live: Vec<String> = (990..1_000).map(|j| format!("i{j}")).collect();
        let live: BTreeSet<String> = live.into_iter().collect();
        let report = check_registry(&ops, Some(&live));
        assert!(report.is_ok(), "{report}");
        assert_eq!(report.checked, ops.len() + 1);
    }

    // --- leases ------------------------------------------------------------------------

    fn lease_op(process: usize, at: [u64; 2], outcome: Outcome<bool>) -> Op<String, bool> {
        Op {
            process,
            invoke: ms(at[0]),
            complete: ms(at[1]),
            input: String::new(),
            outcome,
        }
    }

    fn lease(name: &str, ops: Vec<Op<String, bool>>) -> LeaseHistory {
        LeaseHistory {
            lease: name.to_owned(),
            ttl: ms(100),
            ops,
        }
    }

    #[test]
    fn leases_pass_a_correct_history() {
        let leases = [
            lease(
                "kept",
                vec![
                    lease_op(1, [0, 5], Outcome::Ok(true)),
                    lease_op(1, [50, 55], Outcome::Ok(true)),
                    lease_op(1, [120, 125], Outcome::Ok(true)),
                    lease_op(1, [200, 205], failed()),
                    // An unknown renewal proves nothing, either way.
                    lease_op(1, [210, 300], unknown()),
                    lease_op(1, [310, 315], Outcome::Ok(false)),
                    lease_op(1, [320, 325], Outcome::Ok(false)),
                ],
            ),
            lease(
                "never granted",
                vec![
                    lease_op(2, [0, 5], failed()),
                    lease_op(2, [6, 7], Outcome::Ok(false)),
                ],
            ),
            lease(
                // A keepalive overlapping the grant may have arrived before it.
                "raced",
                vec![
                    lease_op(3, [0, 10], Outcome::Ok(true)),
                    lease_op(3, [5, 8], Outcome::Ok(false)),
                ],
            ),
        ];
        let report = check_leases(&leases);
        assert!(report.is_ok(), "{report}");
        assert_eq!(report.checker, "leases");
        assert_eq!(report.checked, 11);
        assert_eq!(report.unverified, 3);
    }

    #[test]
    fn leases_report_an_expiry_within_the_ttl() {
        let leases = [lease(
            "l1",
            vec![
                lease_op(1, [0, 5], Outcome::Ok(true)),
                lease_op(1, [80, 85], Outcome::Ok(true)),
                lease_op(2, [150, 160], Outcome::Ok(false)),
            ],
        )];
        let report = check_leases(&leases);
        assert_only(
            &report,
            LEASE_EXPIRED_EARLY,
            &[
                "\"l1\"",
                "process 2",
                "160.000ms",
                "renewal invoked at 80.000ms",
                "180.000ms",
            ],
        );
        // At exactly the TTL it may expire.
        let leases = [lease(
            "l1",
            vec![
                lease_op(1, [0, 5], Outcome::Ok(true)),
                lease_op(2, [90, 100], Outcome::Ok(false)),
            ],
        )];
        assert!(check_leases(&leases).is_ok());
    }

    #[test]
    fn leases_report_a_lease_that_came_back() {
        let leases = [lease(
            "l1",
            vec![
                lease_op(1, [0, 5], Outcome::Ok(true)),
                lease_op(1, [300, 310], Outcome::Ok(false)),
                lease_op(1, [320, 325], Outcome::Ok(true)),
            ],
        )];
        let report = check_leases(&leases);
        assert_only(
            &report,
            LEASE_REVIVED,
            &["\"l1\"", "310.000ms", "invoked at 320.000ms"],
        );
    }

    #[test]
    fn anomalies_and_reports_display_what_they_hold() {
        let report = check_registry(&[resolve(2, [0, 5], &["ghost"])], None);
        let text = report.to_string();
        assert!(
            text.starts_with("registry: checked 1, 0 unverified, 1 anomalies"),
            "{text}"
        );
        assert!(
            text.contains("[registry-phantom] the resolve by process 2"),
            "{text}"
        );
        assert_eq!(
            Millis(Duration::from_micros(1_234_567)).to_string(),
            "1234.567ms"
        );
    }
}
