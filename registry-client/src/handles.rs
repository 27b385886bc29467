//! Lock and leadership handles that renew their lease in the background and say, before
//! the server could have given the lock (or the lead) to someone else, when the client can
//! no longer be sure it holds it; and an observer that follows an election's leader.
//!
//! # When is a hold "lost"?
//!
//! The server promises that a lease does not expire earlier than its TTL after the last
//! keepalive the leader *accepted*, and the leader accepts a keepalive after the client
//! *sent* it. So a handle that notes the send time of every keepalive that succeeded knows
//! a lower bound of the moment the server could expire the lease:
//! `send time of the last successful keepalive + TTL` (for the first period: the send time
//! of the acquire or campaign, since granting starts the lease's countdown). The handle
//! calls its hold lost at that bound minus a safety margin (for clock rate differences and
//! scheduling delays), or as soon as a keepalive answers that the lease is gone, whichever
//! comes first. Once lost, a handle stays lost: it stops renewing and gives the lock back
//! (best effort, with its token), since its owner was told to stop using it; an owner that
//! must first stop the work itself (`regctl` stops its command) turns that off with
//! [`LockOptions::give_back_when_lost`] and releases once it is done.
//!
//! Lock-delay and the server's expiry tick only add time between that bound and a grant
//! to another client; a leader change restarts every lease's countdown, so failovers only
//! postpone it.
//!
//! # Many locks on one lease
//!
//! A [`Session`] ([`Client::session`]) holds one lease and renews it with the same task
//! and the same rule as a lock's own lease. Locks taken through it ([`Session::lock`]) are
//! bound to that lease: an acquire is one write that grants no lease, a release revokes
//! none, and their guards renew nothing. A session's lock guard is lost exactly when its
//! session is (the session's renewal task publishes into every guard bound to it, in the
//! same step), or once it is released. Closing or dropping the session revokes the lease,
//! which ends every lock still bound to it; a session that lapses revokes it too, unless
//! [`SessionOptions::give_back_when_lost`] leaves that to its owner.
//!
//! A lock acquired under a lease that someone else renews ([`LockOptions::lease`]: one
//! from [`Client::create_lease`] kept alive elsewhere, or a registration's) is not renewed
//! by its guard either, and the guard does not know when that lease could expire, so the
//! rule above does not hold for it. Its guard reads the lease every third of its TTL and
//! is lost ([`LostReason::LeaseEnded`]) once a read finds it gone: *after* the server
//! ended it, not before. Keeping that lease alive, and stopping the work before it could
//! expire, is up to whoever renews it.

use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use api_spec::{
    AcquireRequest, CampaignRequest, ElectionInfo, ElectionLeader, LeaseInfo, LockGrant,
    ReleaseResponse,
};
use reqwest::Method;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::{sleep, sleep_until, Instant};

use crate::{Client, Consistency, Error, ReadOptions, Response, Result, Retry, Uuid};

/// TTL of a lock's or candidacy's own lease when the options name none.
pub const DEFAULT_HOLD_TTL: Duration = Duration::from_secs(15);

/// The smallest default safety margin: room for scheduling and a clock running slightly
/// fast, on top of the share of the TTL in [`default_safety_margin`].
pub const MIN_SAFETY_MARGIN: Duration = Duration::from_millis(200);

/// How long an [`Observer`]'s blocking read may be held by the server.
const OBSERVE_WAIT: Duration = Duration::from_secs(60);

/// The safety margin used when the options give none: a tenth of the TTL, at least
/// [`MIN_SAFETY_MARGIN`].
pub fn default_safety_margin(ttl: Duration) -> Duration {
    (ttl / 10).max(MIN_SAFETY_MARGIN)
}

/// `d` shortened by a random share of up to `spread` (0..1), so that handles started
/// together do not renew together.
pub(crate) fn jittered(d: Duration, spread: f64) -> Duration {
    d.mul_f64(1.0 - rand::random_range(0.0..=spread))
}

/// The pause after `failures` failed attempts in a row: 50 ms doubling up to `cap`, then
/// a random half to all of it.
pub(crate) fn backoff(failures: u32, cap: Duration) -> Duration {
    let exponent = failures.clamp(1, 10) - 1;
    let base = (Duration::from_millis(50) * 2u32.pow(exponent)).min(cap);
    jittered(base, 0.5)
}

/// How long after a successful keepalive the next one goes out: a third of the TTL
/// (jittered), so two more tries fit before the lease could end.
fn renew_interval(ttl: Duration) -> Duration {
    jittered(ttl / 3, 0.1)
}

/// Longest pause between keepalive retries: several retries must fit in the time a
/// failed renewal leaves.
fn retry_cap(ttl: Duration) -> Duration {
    (ttl / 10).clamp(Duration::from_millis(100), Duration::from_secs(1))
}

/// How long one keepalive attempt to one endpoint may take. Much shorter than the
/// client's request timeout: a hung server must not eat the time left to renew, and the
/// call moves on to the next endpoint after it.
fn attempt_timeout(ttl: Duration) -> Duration {
    (ttl / 4).clamp(Duration::from_millis(500), Duration::from_secs(5))
}

/// One keepalive of `lease`, failing over between endpoints with a short per-attempt
/// timeout (see [`attempt_timeout`]).
async fn keepalive(client: &Client, lease: Uuid, ttl: Duration) -> Result<Response<LeaseInfo>> {
    let path = format!("/v1/leases/{lease}/keepalive");
    client
        .call_with(
            Method::PUT,
            &path,
            None::<&()>,
            Retry::Idempotent,
            Some(attempt_timeout(ttl)),
        )
        .await
}

/// Why a handle stopped holding its lock or leadership.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LostReason {
    /// A keepalive (or, for a lock under a lease it does not renew, a read) answered
    /// that the lease no longer exists: the server ended it.
    LeaseEnded,
    /// No keepalive was confirmed in time: from now on the server may expire the lease
    /// (it could not have before).
    Unconfirmed,
    /// The handle released (resigned) or was dropped; for a session's lock, also its
    /// session being closed or dropped.
    Released,
}

/// What a handle and its renewal task share.
#[derive(Debug, Clone)]
struct HoldState {
    /// Until when the hold is certain: the send time of the last successful keepalive
    /// (or of the grant's request) plus the TTL minus the safety margin. Only grows.
    valid_until: Instant,
    /// Set once, when the hold ends; never cleared.
    lost: Option<LostReason>,
    /// Keepalives the server accepted.
    renewals: u64,
    /// Failed keepalives since the last accepted one, so that an owner can report the
    /// start of a run of failures once rather than every retry.
    failures: u32,
    /// The last failed keepalive, kept after later successes.
    last_error: Option<Arc<Error>>,
}

/// A cheap, cloneable view of a handle's hold, for tasks that must stop when it is lost
/// (e.g. moved into a worker while the handle stays with its owner).
#[derive(Debug, Clone)]
pub struct LostSignal {
    state: watch::Receiver<HoldState>,
}

impl LostSignal {
    /// Completes as soon as the client can no longer be sure it holds the lock (or the
    /// lead), with the reason; at once if that is already so. See the module docs.
    pub async fn lost(&self) -> LostReason {
        let mut state = self.state.clone();
        loop {
            let (valid_until, lost) = {
                let s = state.borrow_and_update();
                (s.valid_until, s.lost)
            };
            if let Some(reason) = lost {
                return reason;
            }
            if Instant::now() >= valid_until {
                return LostReason::Unconfirmed;
            }
            tokio::select! {
                () = sleep_until(valid_until) => {}
                changed = state.changed() => {
                    if changed.is_err() {
                        // Nobody renews any more: the deadline is final.
                        sleep_until(valid_until).await;
                    }
                }
            }
        }
    }

    /// Whether the hold is lost, without waiting.
    pub fn is_lost(&self) -> bool {
        let s = self.state.borrow();
        s.lost.is_some() || Instant::now() >= s.valid_until
    }

    /// Until when the hold is certain (it may be renewed past this). Work guarded by the
    /// lock should finish before it.
    pub fn valid_until(&self) -> Instant {
        self.state.borrow().valid_until
    }

    /// Why the hold ended, if it has (a hold past its deadline whose renewal task has not
    /// noticed yet shows `None` here but is [`is_lost`](Self::is_lost)).
    pub fn reason(&self) -> Option<LostReason> {
        self.state.borrow().lost
    }

    /// Keepalives of the lease the server accepted.
    pub fn renewals(&self) -> u64 {
        self.state.borrow().renewals
    }

    /// The last failed keepalive, if any (kept after later successes).
    pub fn last_error(&self) -> Option<Arc<Error>> {
        self.state.borrow().last_error.clone()
    }

    /// Failed keepalives since the last accepted one (0 while renewals get through).
    pub fn failures(&self) -> u32 {
        self.state.borrow().failures
    }

    /// Waits for the hold's next change: a keepalive accepted or failed, or the hold's
    /// end; e.g. to report renewal trouble while it lasts. `false` once nothing will
    /// change any more. Cancel-safe. (A deadline passing is no change: wait for that
    /// with [`lost`](Self::lost).)
    pub async fn changed(&mut self) -> bool {
        self.state.changed().await.is_ok()
    }
}

/// What a hold gives back when it ends, and how.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Held {
    /// A lock, released with its token (which revokes its lease only if it is the
    /// lock's own).
    Lock { name: String, token: u64 },
    /// A leadership, resigned with its token.
    Election { name: String, token: u64 },
    /// A session's lease, revoked: every lock bound to it ends with it.
    Lease(Uuid),
}

impl Held {
    /// Releases, resigns or revokes, for a drop or a lapse: nobody waits for the answer.
    async fn give_back(&self, client: &Client) -> Result<()> {
        match self {
            Held::Lock { name, token } => client.release(name, *token).await.map(drop),
            Held::Election { name, token } => client.resign(name, *token).await.map(drop),
            Held::Lease(lease) => client.revoke_lease(*lease).await.map(drop),
        }
    }
}

/// How a renewal task keeps track of its lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Sends keepalives; each accepted one moves the deadline (the module's rule).
    Renew,
    /// Someone else renews the lease ([`LockOptions::lease`]): reads it instead, renews
    /// nothing and keeps no deadline; only a read that finds the lease gone ends the
    /// hold.
    Watch,
}

/// The list of states bound to a session's lease.
type Bound = Vec<Weak<watch::Sender<HoldState>>>;

/// Where a renewal task publishes its hold: the hold's own state and, for a session,
/// the state of every lock guard bound to its lease, changed in the same step, so that
/// such a lock is lost exactly when its session is.
#[derive(Debug)]
struct Published {
    own: Arc<watch::Sender<HoldState>>,
    /// The states of the locks bound to this hold's lease; those whose guard is gone are
    /// pruned as they are met.
    bound: Mutex<Bound>,
}

impl Published {
    fn new(state: HoldState) -> Arc<Published> {
        Arc::new(Published {
            own: Arc::new(watch::Sender::new(state)),
            bound: Mutex::new(Vec::new()),
        })
    }

    /// The bound states. Each change under this lock is a complete one, so a panic
    /// elsewhere leaves nothing half done.
    fn bound(&self) -> std::sync::MutexGuard<'_, Bound> {
        self.bound.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn valid_until(&self) -> Instant {
        self.own.borrow().valid_until
    }

    /// Applies `change` to the hold and to every bound lock whose guard still exists;
    /// returns why the hold had ended before, if it had.
    fn modify(&self, change: impl Fn(&mut HoldState)) -> Option<LostReason> {
        let mut bound = self.bound();
        let mut before = None;
        self.own.send_modify(|s| {
            before = s.lost;
            change(s);
        });
        bound.retain(|state| match state.upgrade() {
            Some(state) => {
                state.send_modify(&change);
                true
            }
            None => false,
        });
        before
    }

    /// The state of a lock bound to this hold's lease: the hold's as it stands now, and
    /// changed with it from now on.
    fn bind(&self) -> Arc<watch::Sender<HoldState>> {
        let mut bound = self.bound();
        bound.retain(|state| state.strong_count() > 0);
        let state = Arc::new(watch::Sender::new(self.own.borrow().clone()));
        bound.push(Arc::downgrade(&state));
        state
    }
}

/// The renewal task of one hold.
#[derive(Debug)]
struct Keeper {
    client: Client,
    /// What [`lapse`](Self::lapse) gives back.
    held: Held,
    lease: Uuid,
    ttl: Duration,
    margin: Duration,
    mode: Mode,
    /// Whether [`lapse`](Self::lapse) gives the hold back ([`LockOptions::give_back_when_lost`]).
    give_back_when_lost: bool,
    state: Arc<Published>,
}

impl Keeper {
    /// Renews (in [`Mode::Watch`]: reads) the lease until stopped or lost. `last_sent` is
    /// the send time the first renewal is scheduled from.
    async fn run(self, mut stop: oneshot::Receiver<()>, last_sent: Instant) {
        let mut next = last_sent + renew_interval(self.ttl);
        let mut failures = 0u32;
        loop {
            let valid_until = self.state.valid_until();
            tokio::select! {
                biased;
                _ = &mut stop => return,
                () = sleep_until(valid_until) => return self.lapse(stop).await,
                () = sleep_until(next) => {}
            }
            let sent = Instant::now();
            let answer = tokio::select! {
                biased;
                _ = &mut stop => return,
                () = sleep_until(valid_until) => return self.lapse(stop).await,
                answer = self.probe() => answer,
            };
            match answer {
                Ok(()) => {
                    let recovered = failures > 0;
                    failures = 0;
                    match self.mode {
                        Mode::Renew => {
                            let until = sent + self.ttl.saturating_sub(self.margin);
                            self.state.modify(|s| {
                                if s.lost.is_none() {
                                    s.valid_until = s.valid_until.max(until);
                                    s.renewals += 1;
                                    s.failures = 0;
                                }
                            });
                        }
                        // A read only says the lease is still there: nothing to publish
                        // unless it ends a run of failures.
                        Mode::Watch if recovered => {
                            self.state.modify(|s| s.failures = 0);
                        }
                        Mode::Watch => {}
                    }
                    next = sent + renew_interval(self.ttl);
                }
                Err(error) if error.is_lease_not_found() => {
                    let error = Arc::new(error);
                    self.state.modify(|s| {
                        s.lost.get_or_insert(LostReason::LeaseEnded);
                        s.last_error = Some(error.clone());
                    });
                    return;
                }
                Err(error) => {
                    failures += 1;
                    let error = Arc::new(error);
                    self.state.modify(|s| {
                        s.failures = failures;
                        s.last_error = Some(error.clone());
                    });
                    next = Instant::now() + backoff(failures, retry_cap(self.ttl));
                }
            }
        }
    }

    /// One keepalive ([`Mode::Renew`]) or linearizable read ([`Mode::Watch`]) of the
    /// lease.
    async fn probe(&self) -> Result<()> {
        match self.mode {
            Mode::Renew => keepalive(&self.client, self.lease, self.ttl)
                .await
                .map(drop),
            Mode::Watch => self
                .client
                .get_lease(self.lease, Consistency::Linearizable)
                .await
                .map(drop),
        }
    }

    /// The deadline passed without a confirmed renewal: mark the hold lost and (unless
    /// the owner gives it back itself) give it back, so that others need not wait for the
    /// expiry and the lock-delay.
    async fn lapse(self, mut stop: oneshot::Receiver<()>) {
        self.state.modify(|s| {
            s.lost.get_or_insert(LostReason::Unconfirmed);
        });
        if !self.give_back_when_lost {
            return;
        }
        tokio::select! {
            biased;
            _ = &mut stop => {}
            _ = self.held.give_back(&self.client) => {}
        }
    }
}

/// A lock, leadership or session lease with its renewal task, or a lock bound to a
/// session's lease (renewed by the session's task); what [`LockGuard`], [`Leadership`]
/// and [`Session`] share.
#[derive(Debug)]
struct Hold {
    client: Client,
    held: Held,
    state: Arc<Published>,
    /// Dropping it stops the renewal task. `None` once stopped, and for a lock bound to a
    /// session.
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
    /// Set once the hold was stopped: given back, or left to its owner to give back. A
    /// drop after that gives nothing back.
    ended: bool,
}

/// What a renewed hold starts from.
struct Grant {
    held: Held,
    lease: Uuid,
    ttl: Duration,
    margin: Duration,
    mode: Mode,
    /// See [`LockOptions::give_back_when_lost`].
    give_back_when_lost: bool,
    /// Send time of the request whose success the first period is measured from.
    sent: Instant,
}

/// Far enough ahead to stand for "no deadline" (tokio's own choice for that).
fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(86_400 * 365 * 30)
}

impl Hold {
    /// Watches a lease someone else renews ([`Mode::Watch`]: no margin, no deadline of
    /// its own), for a grant under [`LockOptions::lease`] or [`CampaignOptions::lease`].
    fn watch(
        client: &Client,
        held: Held,
        lease: Uuid,
        ttl: Duration,
        give_back_when_lost: bool,
        sent: Instant,
    ) -> Hold {
        Hold::start(
            client,
            Grant {
                held,
                lease,
                ttl,
                margin: Duration::ZERO,
                mode: Mode::Watch,
                give_back_when_lost,
                sent,
            },
        )
    }

    /// Starts renewing. Must run inside a tokio runtime.
    fn start(client: &Client, grant: Grant) -> Hold {
        let valid_until = match grant.mode {
            Mode::Renew => grant.sent + grant.ttl.saturating_sub(grant.margin),
            Mode::Watch => far_future(),
        };
        let state = Published::new(HoldState {
            valid_until,
            lost: None,
            renewals: 0,
            failures: 0,
            last_error: None,
        });
        let (stop, stopped) = oneshot::channel();
        let keeper = Keeper {
            client: client.clone(),
            held: grant.held.clone(),
            lease: grant.lease,
            ttl: grant.ttl,
            margin: grant.margin,
            mode: grant.mode,
            give_back_when_lost: grant.give_back_when_lost,
            state: state.clone(),
        };
        let task = tokio::spawn(keeper.run(stopped, grant.sent));
        Hold {
            client: client.clone(),
            held: grant.held,
            state,
            stop: Some(stop),
            task: Some(task),
            ended: false,
        }
    }

    /// A lock bound to the lease whose hold publishes to `session`: no task of its own,
    /// its state changes with the session's.
    fn bound(client: &Client, session: &Published, held: Held) -> Hold {
        let state = Arc::new(Published {
            own: session.bind(),
            bound: Mutex::new(Vec::new()),
        });
        Hold {
            client: client.clone(),
            held,
            state,
            stop: None,
            task: None,
            ended: false,
        }
    }

    fn signal(&self) -> LostSignal {
        LostSignal {
            state: self.state.own.subscribe(),
        }
    }

    /// Marks the hold released (or lost, if its deadline passed unnoticed by the renewal
    /// task, so that the reason agrees with what [`LostSignal::lost`] said) and stops the
    /// renewal task; for a session, marks every lock still bound to it the same way.
    /// Returns how the hold stood before.
    fn stop(&mut self) -> Option<LostReason> {
        let now = Instant::now();
        let before = self.state.modify(|s| {
            let reason = if now >= s.valid_until {
                LostReason::Unconfirmed
            } else {
                LostReason::Released
            };
            s.lost.get_or_insert(reason);
        });
        self.stop = None;
        self.ended = true;
        before
    }

    /// Stops renewing and waits for the renewal task to end. The owner then gives the
    /// hold back itself; a drop after this gives nothing back.
    async fn halt(&mut self) {
        self.stop();
        if let Some(task) = self.task.take() {
            // The task ends at its next await point; its outcome carries nothing.
            let _ = task.await;
        }
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        if self.ended {
            return;
        }
        let before = self.stop();
        // Nothing left to give back: the lease ended, or (a lock bound to a session) the
        // session ended first and gave its lease back.
        if matches!(before, Some(LostReason::LeaseEnded | LostReason::Released)) {
            return;
        }
        give_back_later(&self.client, self.held.clone(), self.task.take());
    }
}

/// Gives a hold back from a spawned task, after `after` (the renewal task) ended. Best
/// effort: without a runtime there is no way to send the release, and the lease simply
/// expires; a runtime that shuts down first (a program exiting) drops it too.
fn give_back_later(client: &Client, held: Held, after: Option<JoinHandle<()>>) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    let client = client.clone();
    runtime.spawn(async move {
        if let Some(task) = after {
            let _ = task.await;
        }
        let _ = held.give_back(&client).await;
    });
}

/// A grant that [`Client::lock`] or [`Client::elect`] is still confirming: if that call
/// is cancelled (its future dropped) before the grant becomes a [`Hold`], this gives the
/// grant back rather than leave it held until its lease expires.
struct Unheld<'a> {
    client: &'a Client,
    held: Held,
    /// Cleared once a [`Hold`] took over, or the grant is known to be gone.
    armed: bool,
}

impl Drop for Unheld<'_> {
    fn drop(&mut self) {
        if self.armed {
            give_back_later(self.client, self.held.clone(), None);
        }
    }
}

/// How [`Client::lock`] acquires and keeps a lock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockOptions {
    /// TTL of the lock's own lease: how long the lock outlives a client that stopped
    /// renewing (plus the lock-delay). Between 1 s and 1 day.
    pub ttl: Duration,
    /// How long to wait in line if the lock is held; `None` fails at once with
    /// `409 lock_held`.
    pub wait: Option<Duration>,
    /// Text others see as the holder (e.g. host and pid).
    pub holder: Option<String>,
    /// How long the lock stays ungranted if this holder's lease expires (server default
    /// 1 s).
    pub lock_delay: Option<Duration>,
    /// How long before the earliest possible expiry [`LockGuard::lost`] fires; `None`
    /// is [`default_safety_margin`]. A margin of the TTL or more makes the guard lost at
    /// once.
    pub safety_margin: Option<Duration>,
    /// Whether the guard gives the lock back by itself as soon as it is lost for want of
    /// a confirmed renewal (default `true`), so others need not wait for the expiry and
    /// the lock-delay. `false` leaves the lock to the owner, who may still be stopping
    /// the work it guards: it releases (or drops the guard) once that work has stopped.
    pub give_back_when_lost: bool,
    /// Hold the lock under this existing lease instead of one of its own (`ttl` is then
    /// not used): a lease from [`Client::create_lease`], or a registration's, that
    /// *someone else keeps alive*. The acquire grants no lease and a release revokes
    /// none; the lock ends when that lease does.
    ///
    /// The guard does not renew the lease, so it cannot know when the lease could expire
    /// and promises less than the module's rule: it reads the lease every third of its
    /// TTL, and [`LockGuard::lost`] fires ([`LostReason::LeaseEnded`]) once a read finds
    /// it gone — after the server ended it, not before. Its `valid_until` is far in the
    /// future and `safety_margin` is not used. Whoever renews the lease must stop the
    /// work before it could expire; with many locks on one lease this process renews,
    /// use a [`Session`] instead, whose locks keep the full rule.
    pub lease: Option<Uuid>,
}

impl Default for LockOptions {
    fn default() -> Self {
        LockOptions {
            ttl: DEFAULT_HOLD_TTL,
            wait: None,
            holder: None,
            lock_delay: None,
            safety_margin: None,
            give_back_when_lost: true,
            lease: None,
        }
    }
}

/// A held lock. Renews its lease in the background (every third of the TTL) until
/// [`release`](Self::release)d, dropped, or lost. A lock under a lease it does not own
/// renews nothing: one from a [`Session`] is lost when its session is, one under
/// [`LockOptions::lease`] when a read finds that lease gone (see there).
///
/// Dropping it stops renewing and releases the lock in a spawned task if a tokio runtime
/// is available (otherwise the lock ends when its lease expires, or, bound to another
/// lease, when that one ends).
#[derive(Debug)]
pub struct LockGuard {
    grant: LockGrant,
    hold: Hold,
}

impl LockGuard {
    /// The lock's name.
    pub fn name(&self) -> &str {
        &self.grant.name
    }

    /// The fencing token: pass it to the protected resource with every write.
    pub fn token(&self) -> u64 {
        self.grant.token
    }

    /// The lease the lock is bound to: its own, renewed by this guard
    /// ([`LockGrant::own_lease`]), or the session's or [`LockOptions::lease`] it was
    /// acquired under.
    pub fn lease(&self) -> Uuid {
        self.grant.lease
    }

    /// The server's grant as it answered.
    pub fn grant(&self) -> &LockGrant {
        &self.grant
    }

    /// Completes as soon as the client can no longer be sure it holds the lock: before
    /// the server could grant it to anyone else. See [`LostSignal::lost`].
    pub async fn lost(&self) -> LostReason {
        self.hold.signal().lost().await
    }

    /// Whether the lock is lost, without waiting.
    pub fn is_lost(&self) -> bool {
        self.hold.signal().is_lost()
    }

    /// A cloneable signal of this guard's loss, e.g. for a worker task.
    pub fn lost_signal(&self) -> LostSignal {
        self.hold.signal()
    }

    /// Until when the lock is certainly held (renewals push it later; a session's lock:
    /// its session's; under [`LockOptions::lease`]: far in the future, no deadline is
    /// known).
    pub fn valid_until(&self) -> Instant {
        self.hold.signal().valid_until()
    }

    /// Keepalives of its lease the server accepted (a session's lock: the session's;
    /// under [`LockOptions::lease`]: none, the guard only reads that lease).
    pub fn renewals(&self) -> u64 {
        self.hold.signal().renewals()
    }

    /// The last failed keepalive (or read of a lease it does not renew), if any.
    pub fn last_error(&self) -> Option<Arc<Error>> {
        self.hold.signal().last_error()
    }

    /// Stops renewing and releases the lock with its token, which revokes its lease if it
    /// is the lock's own (never a session's or [`LockOptions::lease`]). A lost lock
    /// answers `409 token_mismatch` (or the lock is already free).
    pub async fn release(mut self) -> Result<ReleaseResponse> {
        self.hold.halt().await;
        let answer = self.hold.client.release(&self.grant.name, self.grant.token);
        Ok(answer.await?.value)
    }
}

/// How [`Client::elect`] campaigns and keeps the lead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CampaignOptions {
    /// The value announced while leading (e.g. this process's address).
    pub candidate: String,
    /// TTL of the candidacy's own lease.
    pub ttl: Duration,
    /// How long to wait to lead; `None` fails at once with `409 election_held`.
    pub wait: Option<Duration>,
    /// As [`LockOptions::safety_margin`].
    pub safety_margin: Option<Duration>,
    /// As [`LockOptions::give_back_when_lost`]: resign by itself once lost (default).
    pub give_back_when_lost: bool,
    /// As [`LockOptions::lease`]: campaign under this existing lease, which someone else
    /// keeps alive (`ttl` and `safety_margin` are then not used). Resigning revokes no
    /// lease; the handle learns of the lease's end only after it (it reads the lease
    /// every third of its TTL). With a lease this process renews, use
    /// [`Session::elect`].
    pub lease: Option<Uuid>,
}

impl CampaignOptions {
    /// Campaign as `candidate` with the default TTL, not waiting.
    pub fn new(candidate: impl Into<String>) -> Self {
        CampaignOptions {
            candidate: candidate.into(),
            ttl: DEFAULT_HOLD_TTL,
            wait: None,
            safety_margin: None,
            give_back_when_lost: true,
            lease: None,
        }
    }
}

/// This client leads an election. Renews the candidacy's lease like [`LockGuard`];
/// dropping it stops renewing and resigns (best effort).
#[derive(Debug)]
pub struct Leadership {
    leader: ElectionLeader,
    ttl: Duration,
    hold: Hold,
}

impl Leadership {
    /// The election's name.
    pub fn name(&self) -> &str {
        &self.leader.name
    }

    /// The fencing token of this term.
    pub fn token(&self) -> u64 {
        self.leader.token
    }

    /// The lease it leads under: the candidacy's own, renewed by this handle, its
    /// session's ([`Session::elect`]), or one it was given ([`CampaignOptions::lease`]).
    pub fn lease(&self) -> Uuid {
        self.leader.lease
    }

    /// The lease's TTL as the server granted it.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// The leadership as last announced (after [`proclaim`](Self::proclaim), its value).
    pub fn leader(&self) -> &ElectionLeader {
        &self.leader
    }

    /// Completes as soon as the client can no longer be sure it leads.
    pub async fn lost(&self) -> LostReason {
        self.hold.signal().lost().await
    }

    /// Whether the lead is lost, without waiting.
    pub fn is_lost(&self) -> bool {
        self.hold.signal().is_lost()
    }

    /// A cloneable signal of this leadership's loss.
    pub fn lost_signal(&self) -> LostSignal {
        self.hold.signal()
    }

    /// Until when the lead is certainly held (renewals push it later).
    pub fn valid_until(&self) -> Instant {
        self.hold.signal().valid_until()
    }

    /// Keepalives the server accepted.
    pub fn renewals(&self) -> u64 {
        self.hold.signal().renewals()
    }

    /// The last failed keepalive, if any.
    pub fn last_error(&self) -> Option<Arc<Error>> {
        self.hold.signal().last_error()
    }

    /// Announces a new value for this term (same token).
    pub async fn proclaim(&mut self, candidate: impl Into<String>) -> Result<&ElectionLeader> {
        let candidate = candidate.into();
        let leader = self
            .hold
            .client
            .proclaim(&self.leader.name, self.leader.token, &candidate)
            .await?
            .value;
        self.leader = leader;
        Ok(&self.leader)
    }

    /// Stops renewing and gives up the lead (revoking the candidacy's own lease; a
    /// session's lease stays).
    pub async fn resign(mut self) -> Result<ReleaseResponse> {
        self.hold.halt().await;
        let answer = self
            .hold
            .client
            .resign(&self.leader.name, self.leader.token);
        Ok(answer.await?.value)
    }
}

/// Follows an election's leader with blocking reads: [`next`](Self::next) answers each
/// change of who leads, or of the value they announce.
#[derive(Debug)]
pub struct Observer {
    client: Client,
    name: String,
    /// The index the next blocking read waits past (from the last answer's
    /// `X-Registry-Index`).
    index: u64,
    /// What `next` returned last; `None` before the first call.
    last: Option<Option<ElectionLeader>>,
    /// Failed reads in a row; the next read waits out a backoff first.
    failures: u32,
}

impl Observer {
    /// The leader (or `None`: nobody leads) that differs from what the previous call
    /// returned; the first call answers at once with the current state.
    ///
    /// A failed read is returned as an error but does not end the observer: call
    /// `next` again and it reconnects (to any endpoint) after a backoff that grows with
    /// each failure in a row.
    pub async fn next(&mut self) -> Result<Option<ElectionLeader>> {
        Ok(self.next_info().await?.leader)
    }

    /// As [`next`](Self::next), answering the whole election as read with that change
    /// (its waiting candidates and modify index too), e.g. to print it.
    pub async fn next_info(&mut self) -> Result<ElectionInfo> {
        loop {
            if self.failures > 0 {
                sleep(backoff(self.failures, Duration::from_secs(5))).await;
            }
            let read = match self.last {
                None => ReadOptions::default(),
                Some(_) => ReadOptions::blocking(self.index, OBSERVE_WAIT),
            };
            let answer = match self.client.election(&self.name, read).await {
                Ok(answer) => answer,
                Err(error) => {
                    self.failures = self.failures.saturating_add(1);
                    return Err(error);
                }
            };
            self.failures = 0;
            // The header is the applied index, never below the election's own; a node
            // that lags behind the previous one simply makes the next read return early.
            let index = answer.index.unwrap_or(answer.value.modify_index);
            let stalled = self.last.is_some() && index <= self.index;
            self.index = index;
            if self.last.as_ref() != Some(&answer.value.leader) {
                self.last = Some(answer.value.leader.clone());
                return Ok(answer.value);
            }
            if stalled {
                // Nothing moved (the wait ran out, or a server answered without blocking):
                // a short pause keeps a misbehaving server from turning this into a
                // busy loop.
                sleep(Duration::from_millis(100)).await;
            }
        }
    }

    /// What [`next`](Self::next) returned last (`None` before the first call).
    pub fn current(&self) -> Option<&Option<ElectionLeader>> {
        self.last.as_ref()
    }
}

/// The acquire for `options`: under `lease` when given (`options.ttl` is then not sent),
/// else with a lease of the lock's own.
fn acquire_request(options: LockOptions, lease: Option<Uuid>) -> AcquireRequest {
    AcquireRequest {
        lease,
        ttl: match lease {
            Some(_) => None,
            None => Some(api_spec::format_duration(options.ttl)),
        },
        wait: options.wait.map(api_spec::format_duration),
        holder: options.holder,
        lock_delay: options.lock_delay.map(api_spec::format_duration),
    }
}

/// How [`Client::session`] creates and keeps its lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionOptions {
    /// TTL of the session's lease: how long its locks outlive a client that stopped
    /// renewing (plus each lock's lock-delay). Between 1 s and 1 day.
    pub ttl: Duration,
    /// How long before the earliest possible expiry [`Session::lost`] (and with it every
    /// lock guard of the session) fires; `None` is [`default_safety_margin`]. A margin
    /// of the TTL or more makes the session lost at once.
    pub safety_margin: Option<Duration>,
    /// Whether the session revokes its lease by itself as soon as it is lost for want of
    /// a confirmed renewal (default `true`), which ends every lock bound to it at once
    /// rather than after the expiry and their lock-delays. `false` leaves that to the
    /// owner, who may still be stopping the work the locks guard: it closes (or drops)
    /// the session, or releases the locks, once that work has stopped. What
    /// [`LockOptions::give_back_when_lost`] is for a lock of its own, for all the
    /// session's locks at once.
    pub give_back_when_lost: bool,
}

impl Default for SessionOptions {
    fn default() -> Self {
        SessionOptions {
            ttl: DEFAULT_HOLD_TTL,
            safety_margin: None,
            give_back_when_lost: true,
        }
    }
}

/// One lease that many locks are bound to, renewed in the background like a lock's own
/// (every third of the TTL): one keepalive stream for all of them, an acquire
/// ([`lock`](Self::lock)) that is one write and grants no lease, and a release that
/// revokes none.
///
/// The session is lost by the module's rule (see the [module docs](self)): no later
/// than the TTL after the send time of its last confirmed renewal, minus the safety
/// margin, or as soon as a keepalive answers that the lease is gone. Every lock guard
/// taken through it is lost at that same moment for the same reason: the session's
/// renewal task publishes into them in the same step, and they renew nothing themselves.
/// Such a guard is also lost once released, or once the session is closed or dropped
/// ([`LostReason::Released`]). It releases its lock on [`LockGuard::release`] or drop,
/// but never revokes the session's lease.
///
/// [`close`](Self::close) stops renewing and revokes the lease, which ends every lock
/// still bound to it. Dropping the session stops renewing too and revokes the lease in a
/// spawned task if a tokio runtime is available (otherwise the lease, and its locks,
/// expire after the TTL).
#[derive(Debug)]
pub struct Session {
    lease: LeaseInfo,
    ttl: Duration,
    hold: Hold,
}

impl Session {
    /// The session's lease.
    pub fn lease(&self) -> Uuid {
        self.lease.lease
    }

    /// The lease's TTL as the server granted it.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// The lease as the server granted it.
    pub fn lease_info(&self) -> &LeaseInfo {
        &self.lease
    }

    /// Acquires the lock `name` under the session's lease: one write, no lease granted.
    /// Of `options`, `wait`, `holder` and `lock_delay` apply; `ttl`, `lease`,
    /// `safety_margin` and `give_back_when_lost` are the session's and not used. The
    /// guard renews nothing and is lost when the session is (see [`Session`]).
    ///
    /// A session that is lost already gives a guard that is lost at once, if its lease
    /// still exists (else the acquire answers `404 lease_not_found`). Not retried once
    /// sent: if the answer is lost, the lock may have been granted, and it ends with the
    /// session's lease.
    pub async fn lock(&self, name: &str, options: LockOptions) -> Result<LockGuard> {
        let client = &self.hold.client;
        let request = acquire_request(options, Some(self.lease()));
        let grant = client.acquire(name, &request).await?.value;
        // Nothing is awaited from here on: a cancelled call cannot strand the grant.
        let held = Held::Lock {
            name: name.to_owned(),
            token: grant.token,
        };
        let hold = Hold::bound(client, &self.hold.state, held);
        Ok(LockGuard { grant, hold })
    }

    /// Campaigns in election `name` under the session's lease: one write, no lease
    /// granted. Of `options`, `candidate` and `wait` apply; `ttl`, `safety_margin` and
    /// `give_back_when_lost` are the session's and not used. The handle renews nothing,
    /// is lost when the session is, and resigning it leaves the session's lease alive.
    /// Not retried once sent, as [`Session::lock`].
    pub async fn elect(&self, name: &str, options: CampaignOptions) -> Result<Leadership> {
        let client = &self.hold.client;
        let request = CampaignRequest {
            candidate: options.candidate,
            lease: Some(self.lease()),
            ttl: None,
            wait: options.wait.map(api_spec::format_duration),
        };
        let answer = client.campaign(name, &request).await?.value;
        // Nothing is awaited from here on: a cancelled call cannot strand the lead.
        let held = Held::Election {
            name: name.to_owned(),
            token: answer.leader.token,
        };
        let hold = Hold::bound(client, &self.hold.state, held);
        Ok(Leadership {
            leader: answer.leader,
            ttl: self.ttl,
            hold,
        })
    }

    /// Completes as soon as the client can no longer be sure the lease lives: before the
    /// server could let it expire (and give the session's locks to anyone else). See
    /// [`LostSignal::lost`].
    pub async fn lost(&self) -> LostReason {
        self.hold.signal().lost().await
    }

    /// Whether the session is lost, without waiting.
    pub fn is_lost(&self) -> bool {
        self.hold.signal().is_lost()
    }

    /// A cloneable signal of this session's loss.
    pub fn lost_signal(&self) -> LostSignal {
        self.hold.signal()
    }

    /// Until when the lease certainly lives (renewals push it later).
    pub fn valid_until(&self) -> Instant {
        self.hold.signal().valid_until()
    }

    /// Keepalives the server accepted.
    pub fn renewals(&self) -> u64 {
        self.hold.signal().renewals()
    }

    /// The last failed keepalive, if any.
    pub fn last_error(&self) -> Option<Arc<Error>> {
        self.hold.signal().last_error()
    }

    /// Stops renewing and revokes the lease: every lock still bound to it ends (at once,
    /// without lock-delay) and every guard of one is lost ([`LostReason::Released`]). A
    /// lease that is gone already (it ended, or a first attempt whose answer was lost
    /// revoked it) counts as revoked. If the revoke fails, the lease and its locks end
    /// when it expires, the TTL after its last renewal.
    pub async fn close(mut self) -> Result<()> {
        self.hold.halt().await;
        match self.hold.client.revoke_lease(self.lease()).await {
            Ok(_) => Ok(()),
            Err(error) if error.is_lease_not_found() => Ok(()),
            Err(error) => Err(error),
        }
    }
}

impl Client {
    /// Acquires the lock `name` and keeps it: with a lease of its own that the guard
    /// renews or, with [`LockOptions::lease`], under a lease someone else renews; see
    /// [`LockGuard`]. (Many locks on one lease this client renews: [`Client::session`].)
    /// Not retried once sent: if the answer is lost the lock may have been granted, and
    /// it ends when its lease does (its own expires after the TTL, plus the lock-delay).
    pub async fn lock(&self, name: &str, options: LockOptions) -> Result<LockGuard> {
        let borrowed = options.lease;
        let give_back_when_lost = options.give_back_when_lost;
        let safety_margin = options.safety_margin;
        let request = acquire_request(options, borrowed);
        let sent = Instant::now();
        let grant = self.acquire(name, &request).await?.value;
        let held = Held::Lock {
            name: name.to_owned(),
            token: grant.token,
        };
        let ttl = Duration::from_millis(grant.ttl_ms);
        if borrowed.is_some() {
            // Someone else renews the lease: the guard only watches it. Nothing is
            // awaited between the grant and the hold, so no cancellation can strand it.
            let hold = Hold::watch(self, held, grant.lease, ttl, give_back_when_lost, sent);
            return Ok(LockGuard { grant, hold });
        }
        let mut unheld = Unheld {
            client: self,
            held: held.clone(),
            armed: true,
        };
        let margin = safety_margin.unwrap_or_else(|| default_safety_margin(ttl));
        let sent = self.confirm(grant.lease, ttl, sent, &mut unheld).await?;
        let hold = Hold::start(
            self,
            Grant {
                held,
                lease: grant.lease,
                ttl,
                margin,
                mode: Mode::Renew,
                give_back_when_lost,
                sent,
            },
        );
        unheld.armed = false;
        Ok(LockGuard { grant, hold })
    }

    /// Creates a lease (`POST /v1/leases`) and keeps it renewed, for many locks at once;
    /// see [`Session`]. Not retried once sent, like [`create_lease`](Self::create_lease):
    /// if the answer is lost, the lease expires after its TTL.
    pub async fn session(&self, options: SessionOptions) -> Result<Session> {
        let sent = Instant::now();
        let lease = self.create_lease(options.ttl).await?.value;
        let held = Held::Lease(lease.lease);
        let mut unheld = Unheld {
            client: self,
            held: held.clone(),
            armed: true,
        };
        let ttl = Duration::from_millis(lease.ttl_ms);
        let margin = options
            .safety_margin
            .unwrap_or_else(|| default_safety_margin(ttl));
        let sent = self.confirm(lease.lease, ttl, sent, &mut unheld).await?;
        let hold = Hold::start(
            self,
            Grant {
                held,
                lease: lease.lease,
                ttl,
                margin,
                mode: Mode::Renew,
                give_back_when_lost: options.give_back_when_lost,
                sent,
            },
        );
        unheld.armed = false;
        Ok(Session { lease, ttl, hold })
    }

    /// Campaigns in election `name` with a lease of its own (or, with
    /// [`CampaignOptions::lease`], under a lease someone else renews) and keeps leading
    /// until the handle is resigned, dropped or lost; see [`Leadership`]. (The raw call
    /// is [`Client::campaign`].)
    pub async fn elect(&self, name: &str, options: CampaignOptions) -> Result<Leadership> {
        let borrowed = options.lease;
        let request = CampaignRequest {
            candidate: options.candidate,
            lease: borrowed,
            ttl: borrowed
                .is_none()
                .then(|| api_spec::format_duration(options.ttl)),
            wait: options.wait.map(api_spec::format_duration),
        };
        let sent = Instant::now();
        let answer = self.campaign(name, &request).await?.value;
        let held = Held::Election {
            name: name.to_owned(),
            token: answer.leader.token,
        };
        if borrowed.is_some() {
            // Someone else renews the lease: the handle only watches it. Nothing is
            // awaited between the answer and the hold, so no cancellation can strand it.
            let ttl = Duration::from_millis(answer.ttl_ms);
            let leader = answer.leader;
            let hold = Hold::watch(
                self,
                held,
                leader.lease,
                ttl,
                options.give_back_when_lost,
                sent,
            );
            return Ok(Leadership { leader, ttl, hold });
        }
        let mut unheld = Unheld {
            client: self,
            held: held.clone(),
            armed: true,
        };
        let ttl = Duration::from_millis(answer.ttl_ms);
        let margin = options
            .safety_margin
            .unwrap_or_else(|| default_safety_margin(ttl));
        let sent = self
            .confirm(answer.leader.lease, ttl, sent, &mut unheld)
            .await?;
        let leader = answer.leader;
        let hold = Hold::start(
            self,
            Grant {
                held,
                lease: leader.lease,
                ttl,
                margin,
                mode: Mode::Renew,
                give_back_when_lost: options.give_back_when_lost,
                sent,
            },
        );
        unheld.armed = false;
        Ok(Leadership { leader, ttl, hold })
    }

    /// Follows election `name`; see [`Observer`].
    pub fn observe(&self, name: &str) -> Observer {
        Observer {
            client: self.clone(),
            name: name.to_owned(),
            index: 0,
            last: None,
            failures: 0,
        }
    }

    /// The send time a new hold's first period counts from. A grant that came after a
    /// wait says little about when the server granted it (and restarted the lease's
    /// countdown), only that it was after the request was sent; if that leaves less
    /// than two thirds of the TTL, one keepalive now gives a fresh starting point. If it
    /// fails for a reason other than the lease being gone, the hold starts from the
    /// request's send time and may be lost at once. A gone lease disarms `unheld`:
    /// there is nothing left to give back.
    async fn confirm(
        &self,
        lease: Uuid,
        ttl: Duration,
        sent: Instant,
        unheld: &mut Unheld<'_>,
    ) -> Result<Instant> {
        if sent.elapsed() < ttl / 3 {
            return Ok(sent);
        }
        let again = Instant::now();
        match keepalive(self, lease, ttl).await {
            Ok(_) => Ok(again),
            Err(error) if error.is_lease_not_found() => {
                unheld.armed = false;
                Err(error)
            }
            Err(_) => Ok(sent),
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    #[test]
    fn default_margin_is_a_tenth_of_the_ttl_but_at_least_200ms() {
        assert_eq!(
            default_safety_margin(Duration::from_secs(1)),
            MIN_SAFETY_MARGIN
        );
        assert_eq!(
            default_safety_margin(Duration::from_secs(15)),
            Duration::from_millis(1500)
        );
    }

    #[test]
    fn intervals_and_backoff_stay_in_bounds() {
        let ttl = Duration::from_secs(3);
        for failures in 0..20 {
            let interval = renew_interval(ttl);
            assert!(interval <= ttl / 3 && interval >= Duration::from_millis(900));
            let pause = backoff(failures, retry_cap(ttl));
            assert!(pause <= Duration::from_millis(300), "{pause:?}");
            assert!(pause >= Duration::from_millis(25), "{pause:?}");
        }
        assert_eq!(
            attempt_timeout(Duration::from_secs(1)),
            Duration::from_millis(500)
        );
        assert_eq!(
            attempt_timeout(Duration::from_secs(60)),
            Duration::from_secs(5)
        );
    }

    fn signal_until(valid_until: Instant) -> (watch::Sender<HoldState>, LostSignal) {
        let sender = watch::Sender::new(HoldState {
            valid_until,
            lost: None,
            renewals: 0,
            failures: 0,
            last_error: None,
        });
        let signal = LostSignal {
            state: sender.subscribe(),
        };
        (sender, signal)
    }

    #[tokio::test(start_paused = true)]
    async fn lost_fires_at_the_deadline_and_a_renewal_postpones_it() {
        let start = Instant::now();
        let (sender, signal) = signal_until(start + Duration::from_secs(1));
        let waiter = {
            let signal = signal.clone();
            tokio::spawn(async move {
                let reason = signal.lost().await;
                (reason, Instant::now())
            })
        };
        sleep(Duration::from_millis(900)).await;
        assert!(!signal.is_lost());
        sender.send_modify(|s| s.valid_until = start + Duration::from_secs(2));
        let (reason, at) = waiter.await.unwrap();
        assert_eq!(reason, LostReason::Unconfirmed);
        assert_eq!(at, start + Duration::from_secs(2));
        assert!(signal.is_lost());
    }

    #[tokio::test(start_paused = true)]
    async fn lost_fires_at_once_when_the_lease_ended() {
        let start = Instant::now();
        let (sender, signal) = signal_until(start + Duration::from_secs(10));
        let waiter = tokio::spawn({
            let signal = signal.clone();
            async move { signal.lost().await }
        });
        sleep(Duration::from_millis(10)).await;
        sender.send_modify(|s| s.lost = Some(LostReason::LeaseEnded));
        assert_eq!(waiter.await.unwrap(), LostReason::LeaseEnded);
        assert_eq!(Instant::now(), start + Duration::from_millis(10));
        // Once lost, a later deadline does not bring it back.
        sender.send_modify(|s| s.valid_until = start + Duration::from_secs(60));
        assert!(signal.is_lost());
        assert_eq!(signal.lost().await, LostReason::LeaseEnded);
    }

    /// A server answering every request with `status` and `body`.
    async fn canned(status: u16, body: &'static str) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                tokio::spawn(async move {
                    // Keepalives have no body: the head is all there is to read.
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 1024];
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        match socket.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let answer = format!(
                        "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\n\
                         content-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = socket.write_all(answer.as_bytes()).await;
                });
            }
        });
        addr
    }

    /// Request lines (`POST /v1/locks/l/release`) a [`scripted`] server received.
    type Seen = Arc<std::sync::Mutex<Vec<String>>>;

    /// A server that answers each request as `answer(request line)` says: status, body
    /// and a delay before answering; `None` never answers. Records every request line.
    async fn scripted(
        answer: impl Fn(&str) -> Option<(u16, &'static str, Duration)> + Send + Sync + 'static,
    ) -> (String, Seen) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let seen = Seen::default();
        let answer = Arc::new(answer);
        tokio::spawn({
            let seen = seen.clone();
            async move {
                while let Ok((mut socket, _)) = listener.accept().await {
                    let (seen, answer) = (seen.clone(), answer.clone());
                    tokio::spawn(async move {
                        // The head is enough to route; a small body arrives with it.
                        let mut buf = Vec::new();
                        let mut chunk = [0u8; 4096];
                        while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                            match socket.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            }
                        }
                        let head = String::from_utf8_lossy(&buf);
                        let line = head.lines().next().unwrap_or_default();
                        let line = line.trim_end_matches(" HTTP/1.1").to_owned();
                        seen.lock().unwrap().push(line.clone());
                        let Some((status, body, delay)) = answer(&line) else {
                            // Hold the connection open without answering.
                            let _ = socket.read(&mut chunk).await;
                            return;
                        };
                        sleep(delay).await;
                        let reply = format!(
                            "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\n\
                             content-length: {}\r\nconnection: close\r\n\r\n{body}",
                            body.len()
                        );
                        let _ = socket.write_all(reply.as_bytes()).await;
                    });
                }
            }
        });
        (addr, seen)
    }

    fn releases(seen: &Seen) -> usize {
        let seen = seen.lock().unwrap();
        seen.iter().filter(|l| l.ends_with("/release")).count()
    }

    /// Waits (up to 5 s) for the server to have seen a request line that `wanted`.
    async fn arrives(seen: &Seen, wanted: impl Fn(&str) -> bool) -> bool {
        let arrived = || seen.lock().unwrap().iter().any(|l| wanted(l));
        let wait = async {
            while !arrived() {
                sleep(Duration::from_millis(10)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(5), wait)
            .await
            .is_ok()
    }

    fn is_release(line: &str) -> bool {
        line.ends_with("/release")
    }

    const NO_LEADER: &str = r#"{"error":{"code":"no_leader","message":"electing"}}"#;
    const RELEASED: &str = r#"{"name":"l","token":7,"released":true,"lease_revoked":true}"#;

    fn grant(sent: Instant) -> Grant {
        Grant {
            held: Held::Lock {
                name: "l".into(),
                token: 7,
            },
            lease: Uuid::new_v4(),
            ttl: Duration::from_secs(1),
            margin: Duration::from_millis(200),
            mode: Mode::Renew,
            give_back_when_lost: true,
            sent,
        }
    }

    /// What [`LockGuard::release`] does with its hold.
    async fn finish(hold: &mut Hold) -> Result<ReleaseResponse> {
        hold.halt().await;
        Ok(hold.client.release("l", 7).await?.value)
    }

    #[tokio::test]
    async fn a_keepalive_answering_lease_not_found_loses_the_hold_at_once() {
        let addr = canned(
            404,
            r#"{"error":{"code":"lease_not_found","message":"gone"}}"#,
        )
        .await;
        let client = Client::new([addr]).unwrap();
        let sent = Instant::now();
        let hold = Hold::start(&client, grant(sent));
        let reason = hold.signal().lost().await;
        assert_eq!(reason, LostReason::LeaseEnded);
        // The first renewal goes out after about a third of the TTL, well before the
        // deadline at 800 ms.
        assert!(sent.elapsed() < Duration::from_millis(700), "{sent:?}");
        assert!(hold.signal().last_error().unwrap().is_lease_not_found());
    }

    #[tokio::test]
    async fn unreachable_registry_loses_the_hold_at_the_deadline_not_before() {
        // A port nobody listens on: every keepalive fails to connect.
        let addr = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().to_string()
        };
        let client = Client::new([addr]).unwrap();
        let sent = Instant::now();
        let hold = Hold::start(&client, grant(sent));
        let signal = hold.signal();
        assert_eq!(signal.lost().await, LostReason::Unconfirmed);
        let elapsed = sent.elapsed();
        assert!(
            elapsed >= Duration::from_millis(800) && elapsed < Duration::from_millis(1000),
            "{elapsed:?}"
        );
        assert!(signal.last_error().is_some_and(|e| e.is_retryable()));
        assert_eq!(signal.renewals(), 0);
        drop(hold);
        assert_eq!(signal.reason(), Some(LostReason::Unconfirmed));
    }

    #[tokio::test]
    async fn accepted_keepalives_move_the_deadline() {
        let addr = canned(
            200,
            r#"{"lease":"6f1e1c1e-0000-4000-8000-000000000000","ttl":"1s","ttl_ms":1000,"granted_index":3,"granted_at_ms":1,"remaining_ms":1000}"#,
        )
        .await;
        let client = Client::new([addr]).unwrap();
        let sent = Instant::now();
        let mut hold = Hold::start(&client, grant(sent));
        let signal = hold.signal();
        sleep(Duration::from_millis(1500)).await;
        assert!(!signal.is_lost(), "lost after {:?}", sent.elapsed());
        assert!(signal.renewals() >= 3, "{} renewals", signal.renewals());
        assert!(signal.valid_until() > sent + Duration::from_millis(1500));
        // Stopping marks it released; the release itself reaches the canned server,
        // whose body is no release answer.
        assert!(finish(&mut hold).await.is_err());
        assert_eq!(signal.reason(), Some(LostReason::Released));
        assert!(signal.is_lost());
    }

    #[tokio::test]
    async fn failures_count_a_run_and_changed_wakes_on_each() {
        let (addr, _) = scripted(|_| Some((503, NO_LEADER, Duration::ZERO))).await;
        let client = Client::new([addr]).unwrap();
        let hold = Hold::start(&client, grant(Instant::now()));
        let mut signal = hold.signal();
        assert_eq!(signal.failures(), 0);
        assert!(signal.changed().await);
        assert_eq!(signal.failures(), 1);
        assert!(signal.changed().await);
        assert!(signal.failures() >= 2, "{}", signal.failures());
        assert_eq!(signal.last_error().and_then(|e| e.status()), Some(503));
        assert_eq!(signal.renewals(), 0);
    }

    #[tokio::test]
    async fn a_lapsed_hold_is_given_back_at_once_unless_the_owner_does_it() {
        // Keepalives fail, releases succeed.
        let script = |line: &str| {
            let body = if line.ends_with("/release") {
                (200, RELEASED, Duration::ZERO)
            } else {
                (503, NO_LEADER, Duration::ZERO)
            };
            Some(body)
        };

        let (addr, seen) = scripted(script).await;
        let client = Client::new([addr]).unwrap();
        let hold = Hold::start(&client, grant(Instant::now()));
        assert_eq!(hold.signal().lost().await, LostReason::Unconfirmed);
        assert!(
            arrives(&seen, is_release).await,
            "no release after the lapse"
        );

        let (addr, seen) = scripted(script).await;
        let client = Client::new([addr]).unwrap();
        let mut hold = Hold::start(
            &client,
            Grant {
                give_back_when_lost: false,
                ..grant(Instant::now())
            },
        );
        assert_eq!(hold.signal().lost().await, LostReason::Unconfirmed);
        // The first test's release came within a round trip; give this one many.
        sleep(Duration::from_millis(300)).await;
        assert_eq!(releases(&seen), 0, "given back behind the owner's back");
        let released = finish(&mut hold).await.unwrap();
        assert!(released.released);
        assert_eq!(releases(&seen), 1);
    }

    #[tokio::test]
    async fn cancelling_lock_while_it_confirms_a_late_grant_gives_the_lock_back() {
        // The grant comes after 500 ms, more than a third of its 1 s TTL, so `lock`
        // confirms it with a keepalive, which never gets an answer.
        const GRANT: &str = r#"{"name":"l","token":7,"lease":"6f1e1c1e-0000-4000-8000-000000000000","own_lease":true,"ttl_ms":1000,"holder":"h","lock_delay_ms":1000,"granted_index":7,"granted_at_ms":1}"#;
        let (addr, seen) = scripted(|line| {
            if line.ends_with("/acquire") {
                Some((200, GRANT, Duration::from_millis(500)))
            } else if line.ends_with("/release") {
                Some((200, RELEASED, Duration::ZERO))
            } else {
                None
            }
        })
        .await;
        let client = Client::new([addr]).unwrap();
        let options = LockOptions {
            ttl: Duration::from_secs(1),
            wait: Some(Duration::from_secs(10)),
            ..LockOptions::default()
        };
        let confirming = |line: &str| line.starts_with("PUT /v1/leases/");
        tokio::select! {
            answer = client.lock("l", options) => panic!("lock returned: {answer:?}"),
            arrived = arrives(&seen, confirming) => assert!(arrived, "no confirming keepalive"),
        }
        // `lock` was dropped while its keepalive waited for an answer.
        assert!(
            arrives(&seen, is_release).await,
            "not given back: {:?}",
            seen.lock().unwrap()
        );
    }

    const LEASE: &str = r#"{"lease":"6f1e1c1e-0000-4000-8000-000000000000","ttl":"1s","ttl_ms":1000,"granted_index":3,"granted_at_ms":1,"remaining_ms":1000}"#;
    const LEASE_GONE: &str = r#"{"error":{"code":"lease_not_found","message":"gone"}}"#;

    #[test]
    fn a_session_can_be_shared_between_tasks() {
        fn shareable<T: Send + Sync>() {}
        shareable::<Session>();
        shareable::<LockGuard>();
    }

    fn session_grant(sent: Instant) -> Grant {
        Grant {
            held: Held::Lease(Uuid::new_v4()),
            ..grant(sent)
        }
    }

    fn bound_lock(client: &Client, session: &Hold, token: u64) -> Hold {
        let held = Held::Lock {
            name: format!("l{token}"),
            token,
        };
        Hold::bound(client, &session.state, held)
    }

    #[tokio::test]
    async fn locks_bound_to_a_session_share_its_renewals_and_its_end() {
        let (addr, seen) = scripted(|_| Some((200, LEASE, Duration::ZERO))).await;
        let client = Client::new([addr]).unwrap();
        let sent = Instant::now();
        let mut session = Hold::start(&client, session_grant(sent));
        let kept = bound_lock(&client, &session, 1);
        let mut released = bound_lock(&client, &session, 2);
        let (kept_signal, released_signal) = (kept.signal(), released.signal());

        // Past the TTL: the session's renewals carry both locks, which send nothing.
        sleep(Duration::from_millis(1500)).await;
        assert!(!session.signal().is_lost() && !kept_signal.is_lost());
        assert!(kept_signal.renewals() >= 3, "{}", kept_signal.renewals());
        assert_eq!(kept_signal.renewals(), session.signal().renewals());
        assert_eq!(kept_signal.valid_until(), session.signal().valid_until());
        let keepalives = seen.lock().unwrap().len();
        assert!(
            seen.lock()
                .unwrap()
                .iter()
                .all(|l| l.starts_with("PUT /v1/leases/")),
            "{:?}",
            seen.lock().unwrap()
        );

        // Releasing one lock ends that guard only.
        released.halt().await;
        assert_eq!(released_signal.reason(), Some(LostReason::Released));
        assert!(!session.signal().is_lost() && !kept_signal.is_lost());

        // A lock taken later starts from the session's state as it stands; dropping its
        // guard while the session lives releases it.
        let late = bound_lock(&client, &session, 3);
        assert_eq!(late.signal().valid_until(), session.signal().valid_until());
        drop(late);
        assert!(arrives(&seen, |l| l == "POST /v1/locks/l3/release").await);

        // The session's end is the locks' end, at once.
        session.halt().await;
        assert_eq!(kept_signal.reason(), Some(LostReason::Released));
        assert_eq!(released_signal.reason(), Some(LostReason::Released));
        assert!(keepalives >= 3, "{keepalives} keepalives");
        drop(kept);
        drop(released);
        // Those guards give nothing back when dropped: their locks end with the
        // session's lease (its owner revokes it).
        sleep(Duration::from_millis(100)).await;
        assert_eq!(releases(&seen), 1, "{:?}", seen.lock().unwrap());
    }

    #[tokio::test]
    async fn a_session_whose_lease_is_gone_loses_every_lock_bound_to_it() {
        let addr = canned(404, LEASE_GONE).await;
        let client = Client::new([addr]).unwrap();
        let sent = Instant::now();
        let session = Hold::start(&client, session_grant(sent));
        let lock = bound_lock(&client, &session, 1);
        assert_eq!(lock.signal().lost().await, LostReason::LeaseEnded);
        assert_eq!(session.signal().reason(), Some(LostReason::LeaseEnded));
        assert!(sent.elapsed() < Duration::from_millis(700), "{sent:?}");
        assert!(lock.signal().last_error().unwrap().is_lease_not_found());
    }

    #[tokio::test]
    async fn a_lapsed_session_revokes_its_lease_and_its_locks_are_lost_with_it() {
        let (addr, seen) = scripted(|line| {
            if line.starts_with("DELETE ") {
                Some((
                    200,
                    r#"{"lease":"6f1e1c1e-0000-4000-8000-000000000000","revoked":true}"#,
                    Duration::ZERO,
                ))
            } else {
                Some((503, NO_LEADER, Duration::ZERO))
            }
        })
        .await;
        let client = Client::new([addr]).unwrap();
        let session = Hold::start(&client, session_grant(Instant::now()));
        let lock = bound_lock(&client, &session, 1);
        assert_eq!(lock.signal().lost().await, LostReason::Unconfirmed);
        assert!(
            arrives(&seen, |l| l.starts_with("DELETE /v1/leases/")).await,
            "no revoke after the lapse: {:?}",
            seen.lock().unwrap()
        );
        // The renewal task said why, to the session and the lock alike, before revoking.
        assert_eq!(session.signal().reason(), Some(LostReason::Unconfirmed));
        assert_eq!(lock.signal().reason(), Some(LostReason::Unconfirmed));
    }

    #[tokio::test]
    async fn a_watched_lease_is_read_not_renewed_and_lost_only_once_gone() {
        let gone = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (addr, seen) = scripted({
            let gone = gone.clone();
            move |_| {
                if gone.load(std::sync::atomic::Ordering::SeqCst) {
                    Some((404, LEASE_GONE, Duration::ZERO))
                } else {
                    Some((200, LEASE, Duration::ZERO))
                }
            }
        })
        .await;
        let client = Client::new([addr]).unwrap();
        let sent = Instant::now();
        let hold = Hold::start(
            &client,
            Grant {
                mode: Mode::Watch,
                margin: Duration::ZERO,
                ..grant(sent)
            },
        );
        let signal = hold.signal();
        // Well past the TTL: no deadline, and nothing but reads went out.
        sleep(Duration::from_millis(1500)).await;
        assert!(!signal.is_lost());
        assert!(signal.valid_until() > sent + Duration::from_secs(3600));
        assert_eq!(signal.renewals(), 0);
        {
            let seen = seen.lock().unwrap();
            assert!(seen.len() >= 3, "{seen:?}");
            assert!(
                seen.iter().all(|l| l.starts_with("GET /v1/leases/")),
                "{seen:?}"
            );
        }
        gone.store(true, std::sync::atomic::Ordering::SeqCst);
        let lost = tokio::time::timeout(Duration::from_secs(2), signal.lost()).await;
        assert_eq!(lost, Ok(LostReason::LeaseEnded));
    }
}
