//! Holding a lock or leadership while a command runs: telling when the hold is lost
//! ([`lost`], over the library guard's [`LostSignal`], which renews), the command in its
//! own process group ([`Job`]), and signals ([`Signals`]).
//!
//! The renewal and the rule for when a hold is lost are the library's
//! (`registry_client::handles`); regctl only picks the safety margin, a third of the TTL
//! ([`safety_margin`]), and reports what happens.

use std::fmt;
use std::future::Future;
use std::pin::pin;
use std::process::ExitStatus;
use std::time::Duration;

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use registry_client::{LostReason, LostSignal, Uuid};
use tokio::signal::unix::{signal, SignalKind};
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

/// Why a lock or leadership was lost, as regctl tells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lost {
    reason: LostReason,
    /// How long no keepalive had got through when it was called lost.
    unconfirmed_for: Duration,
}

impl fmt::Display for Lost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.reason {
            LostReason::LeaseEnded => write!(f, "its lease ended"),
            LostReason::Unconfirmed => write!(
                f,
                "no keepalive got through for {}",
                crate::output::millis(
                    u64::try_from(self.unconfirmed_for.as_millis()).unwrap_or(u64::MAX)
                )
            ),
            LostReason::Released => write!(f, "it was given back"),
        }
    }
}

/// A third of the TTL: the hold counts as lost once no keepalive got through for two
/// thirds of it, leaving the last third to stop the command before the leader could
/// expire the lease (and lock-delay, default 1 s, after that).
pub fn safety_margin(ttl: Duration) -> Duration {
    ttl / 3
}

/// Resolves once the hold behind `signal` (the library guard's, renewing `lease` with
/// this `ttl` and [`safety_margin`]; with `renews` false, only reading a lease someone
/// else renews) is lost. On the way it says on stderr when a run of keepalive (or read)
/// failures starts (the retries would only repeat it; whether they cost the hold is the
/// guard's call).
pub async fn lost(mut signal: LostSignal, lease: Uuid, ttl: Duration, renews: bool) -> Lost {
    let attempt = if renews { "keepalive" } else { "read" };
    let trust = ttl.saturating_sub(safety_margin(ttl));
    let mut failing = false;
    let reason = loop {
        let deadline = signal.clone();
        tokio::select! {
            reason = deadline.lost() => break reason,
            more = signal.changed() => {
                if !more {
                    break signal.lost().await;
                }
                let now_failing = signal.failures() > 0;
                if now_failing && !failing {
                    if let Some(error) = signal.last_error() {
                        warn(format!(
                            "{attempt} of lease {lease} failed, retrying: {}",
                            describe(&error)
                        ));
                    }
                }
                failing = now_failing;
            }
        }
    };
    // The hold was sure until `valid_until`: `trust` after the last keepalive that got
    // through was sent.
    let confirmed_at = signal.valid_until().checked_sub(trust);
    Lost {
        reason,
        unconfirmed_for: confirmed_at.map_or(trust, |at| at.elapsed()),
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
            .ok_or_else(|| Failure::with_code(crate::EXIT_USAGE, "no command given"))?;
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

/// Runs `job` until it exits or `lost` (see [`lost`]) resolves, passing on SIGINT,
/// SIGTERM and SIGHUP to its group. On loss: `on_lost` is told, then the group gets
/// SIGTERM and, after `grace`, SIGKILL.
pub async fn supervise(
    mut job: Job,
    lost: impl Future<Output = Lost>,
    signals: &mut Signals,
    grace: Duration,
    on_lost: impl FnOnce(Lost),
) -> Result<Ending, Failure> {
    let mut lost = pin!(lost);
    loop {
        tokio::select! {
            status = job.wait() => return Ok(Ending::Exited(status?)),
            lost = &mut lost => {
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

    #[test]
    fn the_hold_is_trusted_for_two_thirds_of_its_ttl() {
        let ttl = Duration::from_secs(3);
        assert_eq!(
            ttl.saturating_sub(safety_margin(ttl)),
            Duration::from_secs(2)
        );
    }

    #[test]
    fn a_loss_says_why() {
        let gone = Lost {
            reason: LostReason::LeaseEnded,
            unconfirmed_for: Duration::ZERO,
        };
        assert_eq!(gone.to_string(), "its lease ended");
        let cut_off = Lost {
            reason: LostReason::Unconfirmed,
            unconfirmed_for: Duration::from_millis(1340),
        };
        assert_eq!(cut_off.to_string(), "no keepalive got through for 1s 340ms");
    }
}
