//! Holding a lease while a command runs: the renewal loop and the rule for when the lease
//! must be taken as lost ([`LeaseKeeper`]), the command in its own process group
//! ([`Job`]), and signals ([`Signals`]).
//!
//! When is a lease lost? When a keepalive answers `lease_not_found`, or when no keepalive
//! has been confirmed for the TTL minus a safety margin of a third of the TTL, counted
//! from the moment the last confirmed keepalive was *sent*. The leader restarts the
//! countdown when it receives a keepalive, which is after we sent it, so the lease cannot
//! have expired on the leader before that point (clock rates aside). After a failover the
//! new leader restarts every countdown at the full TTL, which only makes it later.

use std::fmt;
use std::process::ExitStatus;
use std::time::Duration;

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use registry_client::{Client, Uuid};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::output::{describe, warn, Failure};

/// SIGINT, SIGTERM and SIGHUP, caught instead of ending regctl at once, so a held lock
/// can be released (and the command told) first.
#[derive(Debug)]
pub struct Signals {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
    hangup: tokio::signal::unix::Signal,
}

impl Signals {
    /// Catches the signals from now on, for the rest of the process's life.
    pub fn install() -> Result<Self, Failure> {
        let catch =
            |kind| signal(kind).map_err(|e| Failure::new(format!("cannot handle signals: {e}")));
        Ok(Signals {
            interrupt: catch(SignalKind::interrupt())?,
            terminate: catch(SignalKind::terminate())?,
            hangup: catch(SignalKind::hangup())?,
        })
    }

    /// The next signal to arrive. Cancel-safe: a signal is not lost if this is dropped.
    pub async fn recv(&mut self) -> Signal {
        tokio::select! {
            _ = self.interrupt.recv() => Signal::SIGINT,
            _ = self.terminate.recv() => Signal::SIGTERM,
            _ = self.hangup.recv() => Signal::SIGHUP,
        }
    }
}

/// The exit code for "ended by `signal`", as a shell reports it.
pub fn signal_exit_code(signal: Signal) -> u8 {
    128u8.saturating_add(u8::try_from(signal as i32).unwrap_or(0))
}

/// What the renewal loop last learned about the lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Renewal {
    /// Granted; no keepalive confirmed since.
    Pending,
    /// A keepalive sent at this instant was answered with success.
    Confirmed(Instant),
    /// The registry says the lease does not exist any more.
    Gone,
}

/// Why a lease counts as lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lost {
    /// A keepalive answered `lease_not_found`: revoked or expired.
    Gone,
    /// No keepalive got through for this long (the TTL minus the safety margin): it may
    /// expire any moment, if it has not already.
    Unconfirmed(Duration),
}

impl fmt::Display for Lost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Lost::Gone => write!(f, "its lease ended"),
            Lost::Unconfirmed(for_how_long) => write!(
                f,
                "no keepalive got through for {}",
                crate::output::millis(u64::try_from(for_how_long.as_millis()).unwrap_or(u64::MAX))
            ),
        }
    }
}

/// Keeps a lease alive from a background task (a keepalive at once, then every TTL/3,
/// sooner after a failure) and tells when it must be taken as lost. Dropping it stops the
/// renewing.
#[derive(Debug)]
pub struct LeaseKeeper {
    state: watch::Receiver<Renewal>,
    task: JoinHandle<()>,
    /// How long after the send time of the last confirmed keepalive the lease counts as
    /// lost: the TTL minus the safety margin.
    trust: Duration,
    /// When the grant was received: the deadline for the first keepalive.
    granted: Instant,
}

impl LeaseKeeper {
    /// Starts renewing `lease`, whose TTL is `ttl`, granted just now.
    pub fn start(client: Client, lease: Uuid, ttl: Duration) -> Self {
        let (tx, rx) = watch::channel(Renewal::Pending);
        let task = tokio::spawn(renew(client, lease, ttl, tx));
        LeaseKeeper {
            state: rx,
            task,
            trust: ttl.saturating_sub(safety_margin(ttl)),
            granted: Instant::now(),
        }
    }

    /// Waits for the first keepalive after the grant to be confirmed. A grant that waited
    /// in line was renewed by the server until the hand-off and then restarted at a full
    /// TTL at a moment we do not know, so nothing may start under it before a keepalive
    /// of our own got through.
    pub async fn confirmed(&mut self) -> Result<(), Lost> {
        loop {
            let state = *self.state.borrow_and_update();
            let since = match state {
                Renewal::Confirmed(_) => return Ok(()),
                Renewal::Gone => return Err(Lost::Gone),
                Renewal::Pending => self.granted,
            };
            if let Some(lost) = self.next_change(since).await {
                return Err(lost);
            }
        }
    }

    /// Resolves once the lease is lost (see the module docs). Cancel-safe.
    pub async fn lost(&mut self) -> Lost {
        loop {
            let state = *self.state.borrow_and_update();
            let since = match state {
                Renewal::Gone => return Lost::Gone,
                Renewal::Pending => self.granted,
                Renewal::Confirmed(sent) => sent,
            };
            if let Some(lost) = self.next_change(since).await {
                return lost;
            }
        }
    }

    /// Waits for news from the renewal loop (`None`) or for the lease confirmed at
    /// `since` to run out of trust (`Some`).
    async fn next_change(&mut self, since: Instant) -> Option<Lost> {
        let deadline = since + self.trust;
        tokio::select! {
            changed = self.state.changed() => {
                if changed.is_err() {
                    // The loop only ends after reporting `Gone`; if it died some other
                    // way, nothing renews the lease any more: wait out the trust.
                    tokio::time::sleep_until(deadline).await;
                    return Some(Lost::Unconfirmed(since.elapsed()));
                }
                None
            }
            () = tokio::time::sleep_until(deadline) => Some(Lost::Unconfirmed(since.elapsed())),
        }
    }
}

impl Drop for LeaseKeeper {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A third of the TTL: the lease is given up once no keepalive got through for two
/// thirds of it, leaving the last third to stop the command before the leader could
/// expire the lease (and lock-delay, default 1 s, after that).
fn safety_margin(ttl: Duration) -> Duration {
    ttl / 3
}

/// The renewal loop: keepalive at once, then every TTL/3; after a failure, retry soon.
/// The first failure of a run of them is reported on stderr (the rest would only repeat
/// it; whether they cost the lease is [`LeaseKeeper`]'s call).
async fn renew(client: Client, lease: Uuid, ttl: Duration, tx: watch::Sender<Renewal>) {
    let every = ttl / 3;
    let retry_after = (ttl / 10).clamp(Duration::from_millis(100), Duration::from_secs(1));
    let mut next = Instant::now();
    let mut failing = false;
    loop {
        tokio::time::sleep_until(next).await;
        let sent = Instant::now();
        // Bounded, so a hung request cannot keep the next try from being sent.
        let failure = match tokio::time::timeout(ttl, client.keepalive(lease)).await {
            Ok(Ok(_)) => {
                tx.send_replace(Renewal::Confirmed(sent));
                next = sent + every;
                failing = false;
                continue;
            }
            Ok(Err(e)) if e.is_lease_not_found() => {
                tx.send_replace(Renewal::Gone);
                return;
            }
            Ok(Err(e)) => describe(&e),
            Err(_) => format!("no answer within {}", api_spec::format_duration(ttl)),
        };
        if !failing {
            warn(format!(
                "keepalive of lease {lease} failed, retrying: {failure}"
            ));
            failing = true;
        }
        next = Instant::now() + retry_after;
    }
}

/// A command run in a process group of its own, so that it and everything it starts can
/// be signalled together, and a Ctrl-C on the terminal reaches regctl only (which passes
/// it on) instead of both. The price: the command is not in the terminal's foreground
/// group, so it cannot read from the terminal.
#[derive(Debug)]
pub struct Job {
    child: tokio::process::Child,
    /// The group's id: the child's pid.
    group: Pid,
}

impl Job {
    /// Starts `command` (program and arguments) with `env` added to regctl's environment.
    /// Fails with 127 (not found) or 126 (cannot be run), as a shell would.
    pub fn spawn(command: &[String], env: &[(&str, String)]) -> Result<Job, Failure> {
        let (program, args) = command
            .split_first()
            .ok_or_else(|| Failure::with_code(2, "no command given"))?;
        let mut builder = tokio::process::Command::new(program);
        builder.args(args).process_group(0);
        for (name, value) in env {
            builder.env(name, value);
        }
        let child = builder.spawn().map_err(|e| {
            let code = if e.kind() == std::io::ErrorKind::NotFound {
                127
            } else {
                126
            };
            Failure::with_code(code, format!("cannot run {program:?}: {e}"))
        })?;
        let pid = child
            .id()
            .and_then(|id| i32::try_from(id).ok())
            .ok_or_else(|| Failure::new("the command exited before regctl saw its pid"))?;
        Ok(Job {
            child,
            group: Pid::from_raw(pid),
        })
    }

    /// Sends `signal` to the command's whole process group. A group that is gone already
    /// is not an error.
    pub fn signal(&self, signal: Signal) {
        let _ = killpg(self.group, signal);
    }

    /// Whether any process of the group still runs. Zombies (dead, waiting for init to
    /// reap them once their parent is gone) do not count; `/proc` tells them apart, and
    /// without it the kernel's answer to signal 0 (which counts them) has to do.
    fn group_alive(&self) -> bool {
        match group_runs_per_proc(self.group) {
            Some(runs) => runs,
            None => killpg(self.group, None).is_ok(),
        }
    }

    /// Waits for the command to exit.
    pub async fn wait(&mut self) -> Result<ExitStatus, Failure> {
        self.child
            .wait()
            .await
            .map_err(|e| Failure::new(format!("cannot wait for the command: {e}")))
    }

    /// SIGTERM to the group; after `grace`, SIGKILL to whatever of it is left. Returns
    /// the command's exit status.
    pub async fn stop(&mut self, grace: Duration) -> Result<ExitStatus, Failure> {
        self.signal(Signal::SIGTERM);
        let deadline = Instant::now() + grace;
        let mut status = None;
        loop {
            if status.is_none() {
                status = self
                    .child
                    .try_wait()
                    .map_err(|e| Failure::new(format!("cannot wait for the command: {e}")))?;
            }
            // The command may have started others in its group: they get the grace
            // period too, then the same SIGKILL.
            if status.is_some() && !self.group_alive() {
                break;
            }
            if Instant::now() >= deadline {
                self.signal(Signal::SIGKILL);
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let status = match status {
            Some(status) => status,
            None => self.wait().await?,
        };
        // SIGKILL takes effect asynchronously: give the group a moment to be gone, so
        // that nothing of the command still runs once regctl says it was stopped.
        let settle = Instant::now() + Duration::from_secs(1);
        while self.group_alive() && Instant::now() < settle {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(status)
    }
}

/// Whether a process of `group` that is not a zombie is listed in `/proc`; `None` when
/// `/proc` cannot be read.
fn group_runs_per_proc(group: Pid) -> Option<bool> {
    let group = group.as_raw().to_string();
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        if !entry
            .file_name()
            .to_str()
            .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()))
        {
            continue;
        }
        // `pid (comm) state ppid pgrp ...`; comm may hold spaces and parentheses. A
        // process that is gone by now simply has no stat any more.
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let mut fields = rest.split_whitespace();
        let (state, pgrp) = (fields.next(), fields.nth(1));
        if pgrp == Some(group.as_str()) && state != Some("Z") {
            return Some(true);
        }
    }
    Some(false)
}

/// How a supervised command ended.
#[derive(Debug)]
pub enum Ending {
    /// It exited on its own (perhaps after a signal regctl passed on).
    Exited(ExitStatus),
    /// The lease was lost, so regctl stopped it.
    Lost { status: ExitStatus },
}

/// Runs `job` until it exits or the lease is lost, passing on SIGINT, SIGTERM and SIGHUP
/// to its group. On loss: `on_lost` is told, then the group gets SIGTERM and, after
/// `grace`, SIGKILL.
pub async fn supervise(
    mut job: Job,
    keeper: &mut LeaseKeeper,
    signals: &mut Signals,
    grace: Duration,
    on_lost: impl FnOnce(Lost),
) -> Result<Ending, Failure> {
    loop {
        tokio::select! {
            status = job.wait() => return Ok(Ending::Exited(status?)),
            lost = keeper.lost() => {
                on_lost(lost);
                let status = job.stop(grace).await?;
                return Ok(Ending::Lost { status });
            }
            signal = signals.recv() => job.signal(signal),
        }
    }
}

/// A command's exit status as an exit code: its own, or 128 + the signal that ended it.
pub fn exit_code(status: ExitStatus) -> u8 {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => u8::try_from(code).unwrap_or(crate::EXIT_FAILURE),
        (None, Some(signal)) => 128u8.saturating_add(u8::try_from(signal).unwrap_or(0)),
        (None, None) => crate::EXIT_FAILURE,
    }
}

/// "exited with 3", "killed by SIGKILL".
pub fn describe_status(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with {code}"),
        (None, Some(signal)) => match Signal::try_from(signal) {
            Ok(signal) => format!("killed by {signal}"),
            Err(_) => format!("killed by signal {signal}"),
        },
        (None, None) => status.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;

    #[test]
    fn exit_codes_follow_the_shell() {
        assert_eq!(exit_code(ExitStatus::from_raw(7 << 8)), 7);
        assert_eq!(exit_code(ExitStatus::from_raw(15)), 143);
        assert_eq!(
            describe_status(ExitStatus::from_raw(9)),
            "killed by SIGKILL"
        );
        assert_eq!(signal_exit_code(Signal::SIGINT), 130);
    }

    #[test]
    fn our_own_process_group_runs() {
        let group = nix::unistd::getpgrp();
        assert_eq!(group_runs_per_proc(group), Some(true));
        // No process has a group id this high.
        assert_eq!(group_runs_per_proc(Pid::from_raw(i32::MAX)), Some(false));
    }

    #[tokio::test]
    async fn an_unreachable_registry_loses_the_lease_after_two_thirds_of_the_ttl() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .unwrap()
            .port();
        let client = Client::builder([format!("127.0.0.1:{port}")])
            .timeout(Duration::from_millis(200))
            .build()
            .unwrap();
        let started = Instant::now();
        let mut keeper = LeaseKeeper::start(client, Uuid::nil(), Duration::from_millis(1500));
        let lost = keeper.confirmed().await.unwrap_err();
        let took = started.elapsed();
        assert!(matches!(lost, Lost::Unconfirmed(_)), "{lost:?}");
        assert!(
            took >= Duration::from_millis(1000) && took < Duration::from_millis(1400),
            "{took:?}"
        );
    }

    #[test]
    fn the_lease_is_trusted_for_two_thirds_of_its_ttl() {
        let ttl = Duration::from_secs(3);
        assert_eq!(
            ttl.saturating_sub(safety_margin(ttl)),
            Duration::from_secs(2)
        );
    }
}
