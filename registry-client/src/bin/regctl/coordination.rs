//! Lock and election commands: `lock NAME -- CMD` and `elect NAME` hold a grant while a
//! command runs (or until Ctrl-C), `locks` and `lock-info` show locks, `elect --observe`
//! follows an election.

use std::future::Future;
use std::time::Duration;

use api_spec::{codes, CampaignResponse, LockInfo, ReleaseResponse};
use clap::Args;
use registry_client::{
    CampaignOptions, Error, Leadership, LockGuard, LockOptions, ReadOptions, Uuid,
};

use crate::output::{self, describe, warn, Failure};
use crate::supervise::{
    self, describe_status, exit_code, safety_margin, signal_exit_code, supervise, Ending, Job,
    Lost, Signals,
};
use crate::{duration, Context, EXIT_LOST};

#[derive(Debug, Args)]
pub struct LockArgs {
    /// The lock's name.
    pub name: String,
    /// TTL of the lock's own lease, renewed every TTL/3 while the command runs.
    #[arg(long, value_parser = duration, default_value = "15s")]
    pub ttl: Duration,
    /// Hold the lock under this existing lease (from `regctl lease create`, or a
    /// registration's) instead of a lease of its own. regctl does not renew it: the
    /// caller keeps it alive. The lock is released when the command ends and the lease
    /// is left alone; if the lease ends first (regctl reads it every third of its TTL),
    /// the command is stopped as for a lost lock.
    #[arg(long, value_name = "ID", conflicts_with = "ttl")]
    pub lease: Option<Uuid>,
    /// How long to wait in line when the lock is held (at most 10m; 0s: give up at once).
    #[arg(long, value_parser = duration, default_value = "1m")]
    pub wait: Duration,
    /// Who holds it, as others see it (default HOSTNAME/PID).
    #[arg(long)]
    pub holder: Option<String>,
    /// How long the lock stays ungranted if our lease expires instead of being released
    /// (server default 1s, at most 1m).
    #[arg(long, value_parser = duration)]
    pub lock_delay: Option<Duration>,
    /// After the lock is lost, how long the command has to exit after SIGTERM before it
    /// (and its process group) is sent SIGKILL.
    #[arg(long, value_parser = duration, default_value = "5s")]
    pub kill_after: Duration,
    /// Say on stderr when the lock is acquired and released.
    #[arg(short, long)]
    pub verbose: bool,
    /// The command and its arguments, after `--`. It gets REGISTRY_LOCK_TOKEN (the
    /// fencing token), REGISTRY_LOCK_LEASE and REGISTRY_LOCK_NAME.
    #[arg(last = true, required = true, value_name = "CMD")]
    pub command: Vec<String>,
}

#[derive(Debug, Args)]
pub struct ElectArgs {
    /// The election's name.
    name: String,
    /// The value announced while leading (e.g. this node's address).
    #[arg(long, required_unless_present = "observe")]
    candidate: Option<String>,
    /// TTL of the candidacy's own lease, renewed every TTL/3 while leading.
    #[arg(long, value_parser = duration, default_value = "10s")]
    ttl: Duration,
    /// Campaign under this existing lease (from `regctl lease create`, or a
    /// registration's) instead of a lease of its own. regctl does not renew it: the
    /// caller keeps it alive. Resigning leaves the lease alone; if the lease ends first
    /// (regctl reads it every third of its TTL), the command is stopped as for lost
    /// leadership.
    #[arg(long, value_name = "ID", conflicts_with_all = ["ttl", "observe"])]
    lease: Option<Uuid>,
    /// How long to wait for leadership (at most 10m).
    #[arg(long, value_parser = duration, default_value = "1m")]
    wait: Duration,
    /// After leadership is lost, how long the command has to exit after SIGTERM before
    /// SIGKILL.
    #[arg(long, value_parser = duration, default_value = "5s")]
    kill_after: Duration,
    /// Do not campaign: print the leader, then each change of leader.
    #[arg(long, conflicts_with_all = ["candidate", "command"])]
    observe: bool,
    /// With --observe: stop after printing this many leaders (the first one included).
    #[arg(long, requires = "observe")]
    count: Option<u64>,
    /// Say on stderr when leadership is won and given up.
    #[arg(short, long)]
    verbose: bool,
    /// A command to run while leading, after `--`. It gets REGISTRY_ELECTION_TOKEN,
    /// REGISTRY_ELECTION_LEASE, REGISTRY_ELECTION_NAME and REGISTRY_ELECTION_CANDIDATE.
    /// Without one, regctl leads until Ctrl-C or SIGTERM, then resigns.
    #[arg(last = true, value_name = "CMD")]
    command: Vec<String>,
}

/// `HOSTNAME/PID`: who we are, for others looking at the lock.
fn default_holder() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_owned());
    format!("{host}/{}", std::process::id())
}

pub async fn lock(cx: &Context, args: LockArgs) -> Result<u8, Failure> {
    let name = &args.name;
    // Caught from the start: a Ctrl-C while waiting in line abandons the request (the
    // server drops a waiter whose connection closed); one after the grant releases.
    let mut signals = Signals::install()?;
    let options = LockOptions {
        ttl: args.ttl,
        wait: Some(args.wait),
        holder: Some(args.holder.clone().unwrap_or_else(default_holder)),
        lock_delay: args.lock_delay,
        safety_margin: Some(safety_margin(args.ttl)),
        // Given back here, once the command has stopped.
        give_back_when_lost: false,
        lease: args.lease,
    };
    let guard = tokio::select! {
        answer = cx.client.lock(name, options) => match answer {
            Ok(guard) => guard,
            Err(e) if e.code() == Some(codes::LOCK_HELD) => {
                return Err(lock_not_acquired(cx, name, args.wait, &e).await);
            }
            Err(e) => return Err(e.into()),
        },
        signal = signals.recv() => return Ok(signal_exit_code(signal)),
    };
    let (token, lease) = (guard.token(), guard.lease());
    let ttl = Duration::from_millis(guard.grant().ttl_ms);
    let lost = supervise::lost(guard.lost_signal(), lease, ttl, args.lease.is_none());
    let give_back = |guard: LockGuard, quiet: bool| {
        GiveBack::lock(name, token, args.verbose).run(guard.release(), quiet)
    };
    if guard.is_lost() {
        // A grant that came late and whose confirming keepalive failed.
        warn(format!(
            "lost lock {name} before starting the command: {}",
            lost.await
        ));
        give_back(guard, true).await;
        return Ok(EXIT_LOST);
    }
    if args.verbose {
        warn(format!(
            "acquired lock {name} (token {token}, lease {lease})"
        ));
    }
    let env = [
        ("REGISTRY_LOCK_TOKEN", token.to_string()),
        ("REGISTRY_LOCK_LEASE", lease.to_string()),
        ("REGISTRY_LOCK_NAME", name.clone()),
    ];
    let job = match Job::spawn(&args.command, &env) {
        Ok(job) => job,
        Err(failure) => {
            give_back(guard, false).await;
            return Err(failure);
        }
    };
    let on_lost = |lost: Lost| {
        warn(format!(
            "lost lock {name} ({lost}); stopping the command (SIGTERM, SIGKILL after {})",
            api_spec::format_duration(args.kill_after)
        ));
    };
    let ending = supervise(job, lost, &mut signals, args.kill_after, on_lost).await;
    match ending {
        Ok(Ending::Exited(status)) => {
            give_back(guard, false).await;
            Ok(exit_code(status))
        }
        Ok(Ending::Lost { status, .. }) => {
            // If only our keepalives were cut off, the lock may still be ours: give it
            // back rather than leave it to expire.
            give_back(guard, true).await;
            warn(format!(
                "lost lock {name}: the command {}",
                describe_status(status)
            ));
            Ok(EXIT_LOST)
        }
        Err(failure) => {
            give_back(guard, false).await;
            Err(failure)
        }
    }
}

/// How long a give-back that is expected to fail (after a loss) may hold up the exit.
const BEST_EFFORT: Duration = Duration::from_secs(2);

/// What regctl says when it gives a lock or leadership back.
struct GiveBack {
    /// Said with `--verbose` once it is given back.
    done: String,
    /// Starts the warning when it could not be given back.
    failed: String,
    verbose: bool,
}

impl GiveBack {
    fn lock(name: &str, token: u64, verbose: bool) -> Self {
        GiveBack {
            done: format!("released lock {name} (token {token})"),
            failed: format!("could not release lock {name}"),
            verbose,
        }
    }

    fn election(name: &str, token: u64, verbose: bool) -> Self {
        GiveBack {
            done: format!("resigned from {name} (token {token})"),
            failed: format!("could not resign from {name}"),
            verbose,
        }
    }

    /// Awaits `release` (the guard's release or resign). `quiet`: after a loss, when it
    /// is expected to fail; then it complains about nothing and gives up after
    /// [`BEST_EFFORT`].
    async fn run(
        self,
        release: impl Future<Output = registry_client::Result<ReleaseResponse>>,
        quiet: bool,
    ) {
        let answer = if quiet {
            match tokio::time::timeout(BEST_EFFORT, release).await {
                Ok(answer) => answer,
                Err(_) => return,
            }
        } else {
            release.await
        };
        match answer {
            Ok(_) => {
                if self.verbose {
                    warn(self.done);
                }
            }
            // Not ours any more: nothing to give back.
            Err(e) if e.code() == Some(codes::TOKEN_MISMATCH) => {}
            Err(_) if quiet => {}
            Err(e) => warn(format!("{}: {}", self.failed, describe(&e))),
        }
    }
}

/// The failure for an acquire that found the lock held until its wait ran out, naming
/// the holder: as the refusal showed it, or as a read shows it now.
async fn lock_not_acquired(cx: &Context, name: &str, wait: Duration, error: &Error) -> Failure {
    let gave_up = if wait.is_zero() {
        String::new()
    } else {
        format!(" after waiting {}", api_spec::format_duration(wait))
    };
    let lock = match error.lock() {
        Some(lock) => lock.clone(),
        None => match cx.client.lock_info(name, ReadOptions::default()).await {
            Ok(answer) => answer.value,
            Err(_) => return Failure::new(format!("{}; not acquired{gave_up}", describe(error))),
        },
    };
    match &lock.holder {
        Some(holder) => Failure::new(format!(
            "lock {name} is held by {:?} (token {}, granted {}){}; not acquired{gave_up}",
            holder.holder,
            shown(holder.token),
            output::ago(holder.granted_at_ms),
            waiting(&lock),
        )),
        None => Failure::new(format!(
            "lock {name} was not free{gave_up}{}; not acquired",
            lock.delay_until_ms
                .map(|until| format!(" (lock-delay until {})", output::from_now(until)))
                .unwrap_or_default()
        )),
    }
}

fn waiting(lock: &LockInfo) -> String {
    match lock.waiters.len() {
        0 => String::new(),
        1 => ", 1 waiter".to_owned(),
        n => format!(", {n} waiters"),
    }
}

pub async fn locks(cx: &Context) -> Result<u8, Failure> {
    let list = cx.client.locks(ReadOptions::default()).await?.value;
    if cx.json {
        output::json(&list)?;
        return Ok(0);
    }
    let rows: Vec<Vec<String>> = list
        .locks
        .iter()
        .map(|lock| {
            let (holder, token, since) = match &lock.holder {
                Some(h) => (
                    h.holder.clone(),
                    shown(h.token),
                    output::ago(h.granted_at_ms),
                ),
                None => match lock.delay_until_ms {
                    Some(until) => (
                        format!("(lock-delay, free {})", output::from_now(until)),
                        "-".to_owned(),
                        "-".to_owned(),
                    ),
                    None => ("-".to_owned(), "-".to_owned(), "-".to_owned()),
                },
            };
            vec![
                lock.name.clone(),
                holder,
                token,
                since,
                lock.waiters.len().to_string(),
            ]
        })
        .collect();
    output::table(&["LOCK", "HOLDER", "TOKEN", "GRANTED", "WAITERS"], &rows)?;
    Ok(0)
}

pub async fn lock_info(cx: &Context, name: &str) -> Result<u8, Failure> {
    let lock = cx
        .client
        .lock_info(name, ReadOptions::default())
        .await?
        .value;
    if cx.json {
        output::json(&lock)?;
        return Ok(0);
    }
    match &lock.holder {
        Some(h) => {
            output::line(format!("lock {}: held by {:?}", lock.name, h.holder))?;
            output::line(format!("  token     {}", shown(h.token)))?;
            let own = if h.own_lease { " (its own)" } else { "" };
            output::line(format!("  lease     {}{own}", shown(h.lease)))?;
            output::line(format!("  granted   {}", output::ago(h.granted_at_ms)))?;
            output::line(format!("  lock-delay {}", output::millis(h.lock_delay_ms)))?;
        }
        None => output::line(format!("lock {}: free", lock.name))?,
    }
    if let Some(until) = lock.delay_until_ms {
        output::line(format!(
            "  in lock-delay: not granted before {}",
            output::from_now(until)
        ))?;
    }
    for (i, w) in lock.waiters.iter().enumerate() {
        output::line(format!(
            "  waiter {}: {:?} (lease {}, queued {})",
            i + 1,
            w.holder,
            shown(w.lease),
            output::ago(w.queued_at_ms)
        ))?;
    }
    Ok(0)
}

pub async fn elect(cx: &Context, args: ElectArgs) -> Result<u8, Failure> {
    let Some(candidate) = args.candidate.clone().filter(|_| !args.observe) else {
        return observe(cx, &args.name, args.count).await;
    };
    let name = &args.name;
    let mut signals = Signals::install()?;
    let options = CampaignOptions {
        candidate: candidate.clone(),
        ttl: args.ttl,
        wait: Some(args.wait),
        safety_margin: Some(safety_margin(args.ttl)),
        // Resigned here, once the command has stopped.
        give_back_when_lost: false,
        lease: args.lease,
    };
    let leadership = tokio::select! {
        answer = cx.client.elect(name, options) => match answer {
            Ok(leadership) => leadership,
            Err(e) if e.code() == Some(codes::ELECTION_HELD) => {
                return Err(not_elected(cx, name, args.wait, &e).await);
            }
            Err(e) => return Err(e.into()),
        },
        signal = signals.recv() => return Ok(signal_exit_code(signal)),
    };
    let (token, lease) = (leadership.token(), leadership.lease());
    let lost = supervise::lost(
        leadership.lost_signal(),
        lease,
        leadership.ttl(),
        args.lease.is_none(),
    );
    let give_up = |leadership: Leadership, quiet: bool| {
        GiveBack::election(name, token, args.verbose).run(leadership.resign(), quiet)
    };
    if leadership.is_lost() {
        warn(format!("lost leadership of {name} at once: {}", lost.await));
        give_up(leadership, true).await;
        return Ok(EXIT_LOST);
    }
    if args.command.is_empty() {
        if cx.json {
            let won = CampaignResponse {
                leader: leadership.leader().clone(),
                ttl_ms: u64::try_from(leadership.ttl().as_millis()).unwrap_or(u64::MAX),
            };
            output::json(&won)?;
        } else {
            output::line(format!("leading {name} as {candidate:?} (token {token})"))?;
        }
        let ended = tokio::select! {
            lost = lost => Err(lost),
            signal = signals.recv() => Ok(signal),
        };
        return match ended {
            Ok(_) => {
                give_up(leadership, false).await;
                if !cx.json {
                    output::line(format!("resigned from {name}"))?;
                }
                Ok(0)
            }
            Err(lost) => {
                warn(format!("lost leadership of {name} ({lost})"));
                give_up(leadership, true).await;
                Ok(EXIT_LOST)
            }
        };
    }
    if args.verbose {
        warn(format!("leading {name} as {candidate:?} (token {token})"));
    }
    let env = [
        ("REGISTRY_ELECTION_TOKEN", token.to_string()),
        ("REGISTRY_ELECTION_LEASE", lease.to_string()),
        ("REGISTRY_ELECTION_NAME", name.clone()),
        ("REGISTRY_ELECTION_CANDIDATE", candidate.clone()),
    ];
    let job = match Job::spawn(&args.command, &env) {
        Ok(job) => job,
        Err(failure) => {
            give_up(leadership, false).await;
            return Err(failure);
        }
    };
    let on_lost = |lost: Lost| {
        warn(format!(
            "lost leadership of {name} ({lost}); stopping the command (SIGTERM, SIGKILL after {})",
            api_spec::format_duration(args.kill_after)
        ));
    };
    let ending = supervise(job, lost, &mut signals, args.kill_after, on_lost).await;
    give_up(leadership, matches!(ending, Ok(Ending::Lost { .. }))).await;
    match ending? {
        Ending::Exited(status) => Ok(exit_code(status)),
        Ending::Lost { status, .. } => {
            warn(format!(
                "lost leadership of {name}: the command {}",
                describe_status(status)
            ));
            Ok(EXIT_LOST)
        }
    }
}

/// The failure for a campaign whose wait ran out, naming the leader: as the refusal
/// showed it, or as a read shows it now.
async fn not_elected(cx: &Context, name: &str, wait: Duration, error: &Error) -> Failure {
    let election = match error.election() {
        Some(election) => election.clone(),
        None => match cx.client.election(name, ReadOptions::default()).await {
            Ok(answer) => answer.value,
            Err(_) => return Failure::new(format!("{}; not elected", describe(error))),
        },
    };
    match &election.leader {
        Some(leader) => Failure::new(format!(
            "election {name} is led by {:?} (token {}, since {}); not elected after waiting {}",
            leader.candidate,
            leader.token,
            output::ago(leader.since_ms),
            api_spec::format_duration(wait)
        )),
        None => Failure::new(format!(
            "election {name}: not elected after waiting {}",
            api_spec::format_duration(wait)
        )),
    }
}

/// `elect NAME --observe`: prints the leader, then every change (the library's
/// [`registry_client::Observer`]: blocking reads, reconnecting after a backoff).
async fn observe(cx: &Context, name: &str, count: Option<u64>) -> Result<u8, Failure> {
    let mut observer = cx.client.observe(name);
    let mut printed = 0u64;
    while count.is_none_or(|count| printed < count) {
        let info = match observer.next_info().await {
            Ok(info) => info,
            Err(e) if e.is_retryable() => {
                warn(format!(
                    "observing {name} failed, retrying: {}",
                    describe(&e)
                ));
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        if cx.json {
            output::json_line(&info)?;
        } else {
            match &info.leader {
                Some(l) => output::line(format!(
                    "{name}: led by {:?} (token {}, since {})",
                    l.candidate,
                    l.token,
                    output::ago(l.since_ms)
                ))?,
                None => output::line(format!("{name}: no leader"))?,
            }
        }
        printed += 1;
    }
    Ok(0)
}

/// A lock's token or lease as text: the server shows them only to callers that may
/// write to the lock.
fn shown<T: std::fmt::Display>(value: Option<T>) -> String {
    value.map_or_else(
        || "(hidden: needs lock write access)".to_owned(),
        |v| v.to_string(),
    )
}
