//! Active health checks in the application: the loop every server runs over the checks it
//! owns ([`App::run_checks`]), the second opinion asked of another server before a check
//! is marked critical, and the prober set the leader keeps ([`App::keep_probers`]).
//!
//! **Who probes.** Every server that probes tells the leader so once a second
//! (`Forward::ProberAlive`); the leader keeps `AppState::probers`, the voters it heard
//! from within [`PROBER_TIMEOUT`] (itself, unless `--no-probes`), written only when that
//! set changes.
//! Every server derives the owner of each check from the applied state by rendezvous
//! hashing over that set, so owners agree without talking, and a server that dies loses
//! its checks to the survivors once the leader drops it from the set.
//!
//! **False alarms.** A server that lost its own network would see every target fail. So
//! a critical transition is proposed only if the check's second-ranked prober, probing
//! the same target at once, also sees it fail; a passing one needs no second opinion (a
//! broken network does not make answers up). With a single prober there is nobody to
//! ask. A second opinion that cannot be had counts as "not confirmed": the check stays as
//! it is and needs a whole threshold of failures again before it asks again.

use std::sync::Arc;
use std::time::Duration;

use api_spec::checks::CheckStatus;
use rand::Rng;
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::time::Instant;

use super::routing::{Forward, Forwarded};
use super::{App, AppError};
use crate::health::probe::ProbeOutcome;
use crate::health::schedule::{CheckId, Due, Logged, Schedule, Transition};
use crate::raft::types::NodeId;
use crate::replicated::checks::{ranked, CheckResult, CheckState};
use crate::replicated::ops::{CheckResults, SetProbers};

/// How often a server compares the applied state with its schedule (only a change in the
/// catalog or the prober set makes it walk the checked instances).
const RESYNC_EVERY: Duration = Duration::from_millis(500);

/// A voter the leader has not heard "I probe" from for this long stops being a prober.
pub const PROBER_TIMEOUT: Duration = Duration::from_secs(3);

/// How often a server that probes tells the leader so.
const ANNOUNCE_EVERY: Duration = Duration::from_secs(1);

/// How often the leader looks at the prober set.
const PROBERS_EVERY: Duration = Duration::from_secs(1);

/// For this long after it starts leading, the leader only adds probers (it may not have
/// heard from every prober yet: each announces itself every [`ANNOUNCE_EVERY`]).
const PROBERS_GRACE: Duration = Duration::from_secs(2);

/// Most transitions one log entry carries.
const SUBMIT_BATCH: usize = 1_000;

/// Settings of the active checks.
#[derive(Debug, Clone)]
pub struct ChecksConfig {
    /// The probe runners (HTTP client pool, gRPC settings).
    pub probes: crate::health::probe::Probes,
    /// `--check-concurrency`: probes running at once on this server.
    pub concurrency: usize,
    /// `false` with `--no-probes`: this server runs no probes and is never a prober.
    pub enabled: bool,
}

/// The leader's view of when it last looked at the prober set.
#[derive(Debug, Default)]
pub(super) struct ProberKeeper {
    /// The term it leads and when it started leading it (as far as this loop saw).
    leading: Option<(u64, Instant)>,
    last_look: Option<Instant>,
    /// When each server that probes last said so.
    heard: std::collections::HashMap<NodeId, Instant>,
}

/// A probe's end, back to the loop: `None` when the probe never ran.
type ProbeDone = (CheckId, u64, Option<ProbeOutcome>);

impl App {
    /// Background task on every server: probes the checks this server owns and proposes
    /// their transitions, until shutdown.
    pub async fn run_checks(self, mut shutdown: watch::Receiver<bool>) {
        if !self.inner.checks.enabled {
            tracing::info!("--no-probes: this server runs no active checks");
            return;
        }
        let announcer = tokio::spawn(self.clone().announce_prober());
        let mut schedule = Schedule::default();
        let slots = Arc::new(Semaphore::new(self.inner.checks.concurrency.max(1)));
        let (done_tx, mut done_rx) = mpsc::unbounded_channel::<ProbeDone>();
        let (submit_tx, submit_rx) = mpsc::unbounded_channel::<Transition>();
        let (back_tx, mut back_rx) = mpsc::unbounded_channel::<Transition>();
        let submitter = tokio::spawn(self.clone().submit_transitions(submit_rx, back_tx));
        let mut resync = tokio::time::interval(RESYNC_EVERY);
        resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut seen: Option<(u64, Vec<u64>)> = None;
        loop {
            let next = schedule.next_due();
            let sleep = tokio::time::sleep_until(next.unwrap_or_else(Instant::now));
            tokio::select! {
                _ = shutdown.changed() => break,
                _ = resync.tick() => self.resync(&mut schedule, &mut seen),
                () = sleep, if next.is_some() => {
                    for due in schedule.take_due(Instant::now()) {
                        self.spawn_probe(due, &slots, done_tx.clone());
                    }
                }
                Some((id, generation, outcome)) = done_rx.recv() => match outcome {
                    Some(o) => {
                        if let Some(t) = schedule.record(&id, generation, o.passing, o.output) {
                            let _ = submit_tx.send(t);
                        }
                    }
                    None => schedule.abandoned(&id),
                },
                Some(t) = back_rx.recv() => schedule.withdrawn(&t),
            }
        }
        submitter.abort();
        announcer.abort();
    }

    /// Tells the leader, every second, that this server probes (the leader keeps the
    /// servers it heard from lately as probers).
    async fn announce_prober(self) {
        let mut every = tokio::time::interval(ANNOUNCE_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            let op = Forward::ProberAlive(self.inner.id);
            match tokio::time::timeout(PROBER_TIMEOUT, self.on_leader(op)).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "could not tell the leader this server probes")
                }
                Err(_) => tracing::debug!("telling the leader this server probes timed out"),
            }
        }
    }

    /// Notes that server `id` probes (on the leader).
    pub(super) fn prober_alive_here(&self, id: NodeId) -> Result<Forwarded, AppError> {
        if self.inner.clock.leading_term().is_none() {
            return Err(AppError::NotLeader {
                leader: self.leader(),
            });
        }
        self.keeper().heard.insert(id, Instant::now());
        Ok(Forwarded::Noted)
    }

    /// Brings the schedule in line with the applied state, if the catalog or the prober
    /// set changed since the last look.
    fn resync(&self, schedule: &mut Schedule, seen: &mut Option<(u64, Vec<u64>)>) {
        let state = self.inner.state.read();
        let app = &state.app;
        let now = (app.catalog.catalog_index(), app.probers.clone());
        if seen.as_ref() == Some(&now) {
            return;
        }
        let me = self.inner.id;
        let probers = &app.probers;
        let owned = app.catalog.checked().filter_map(|key| {
            let record = app.catalog.instance(key)?;
            Some(
                record
                    .spec
                    .checks
                    .iter()
                    .zip(record.checks())
                    .filter(move |(spec, _)| {
                        crate::replicated::checks::owner(probers, key, &spec.name) == Some(me)
                    })
                    .map(move |(spec, logged)| Logged {
                        id: (key.clone(), spec.name.clone()),
                        spec,
                        generation: record.checks_index(),
                        status: logged.status,
                        fresh: logged.output == CheckState::NOT_PROBED,
                    }),
            )
        });
        let mut rng = rand::rng();
        schedule.sync(owned.flatten(), Instant::now(), |span| {
            let ms = u64::try_from(span.as_millis()).unwrap_or(u64::MAX);
            Duration::from_millis(rng.random_range(0..=ms))
        });
        drop(state);
        crate::metrics::checks_owned(schedule.len());
        *seen = Some(now);
    }

    /// Runs one probe on its own task once a concurrency slot is free, and reports its
    /// outcome to the loop.
    fn spawn_probe(
        &self,
        due: Due,
        slots: &Arc<Semaphore>,
        done: mpsc::UnboundedSender<ProbeDone>,
    ) {
        let probes = self.inner.checks.probes.clone();
        let slots = Arc::clone(slots);
        tokio::spawn(async move {
            let Ok(_slot) = slots.acquire_owned().await else {
                let _ = done.send((due.id, due.generation, None));
                return;
            };
            let started = Instant::now();
            let timeout = Duration::from_millis(due.spec.timeout_ms);
            let outcome = crate::health::run(&probes, &due.spec.probe, timeout).await;
            crate::metrics::check_probe(
                due.spec.probe.kind().as_str(),
                outcome.passing,
                started.saturating_duration_since(due.at),
                started.elapsed(),
            );
            let _ = done.send((due.id, due.generation, Some(outcome)));
        });
    }

    /// Proposes transitions as they come, batched: critical ones once a second server
    /// confirms them. Those that do not make it go back to the loop.
    async fn submit_transitions(
        self,
        mut incoming: mpsc::UnboundedReceiver<Transition>,
        back: mpsc::UnboundedSender<Transition>,
    ) {
        while let Some(first) = incoming.recv().await {
            let mut batch = vec![first];
            while batch.len() < SUBMIT_BATCH {
                match incoming.try_recv() {
                    Ok(t) => batch.push(t),
                    Err(_) => break,
                }
            }
            let opinions =
                futures::future::join_all(batch.into_iter().map(|t| self.confirm(t))).await;
            let mut go = Vec::new();
            for (t, confirmed) in opinions {
                if confirmed {
                    go.push(t);
                } else {
                    let _ = back.send(t);
                }
            }
            if go.is_empty() {
                continue;
            }
            let results: Vec<CheckResult> = go
                .iter()
                .map(|t| CheckResult {
                    key: t.id.0.clone(),
                    check: t.id.1.clone(),
                    generation: t.generation,
                    status: t.status,
                    output: t.output.clone(),
                })
                .collect();
            match self.on_leader(Forward::CheckResults(results)).await {
                Ok(Forwarded::Applied { index, .. }) => {
                    for t in &go {
                        let ((service, id), check) = &t.id;
                        tracing::info!(
                            index,
                            service = %service,
                            instance = %id,
                            check = %check,
                            status = t.status.as_str(),
                            output = %t.output,
                            "check turned {}",
                            t.status.as_str()
                        );
                    }
                    let critical = go
                        .iter()
                        .filter(|t| t.status == CheckStatus::Critical)
                        .count();
                    crate::metrics::check_transitions("critical", critical);
                    crate::metrics::check_transitions("passing", go.len() - critical);
                }
                other => {
                    let error = match other {
                        Err(e) => e.to_string(),
                        Ok(answer) => format!("unexpected answer {answer:?}"),
                    };
                    tracing::warn!(transitions = go.len(), %error, "check transitions were not written; they are tried again after the next threshold of probes");
                    for t in go {
                        let _ = back.send(t);
                    }
                }
            }
        }
    }

    /// Whether `t` may be proposed: a passing one always; a critical one if the check's
    /// second-ranked prober also sees the target fail (or there is no second prober).
    async fn confirm(&self, t: Transition) -> (Transition, bool) {
        if t.status == CheckStatus::Passing {
            return (t, true);
        }
        let probers = self.inner.state.read().app.probers.clone();
        let me = self.inner.id;
        let Some(second) = ranked(&probers, &t.id.0, &t.id.1)
            .into_iter()
            .find(|&node| node != me)
        else {
            return (t, true);
        };
        let Some(addr) = self
            .members()
            .into_iter()
            .find(|(id, _)| *id == second)
            .map(|(_, addr)| addr)
        else {
            return (t, false);
        };
        let op = Forward::Probe {
            key: t.id.0.clone(),
            check: t.id.1.clone(),
            generation: t.generation,
        };
        let ((service, id), check) = &t.id;
        match self.forward_to(&addr, &op).await {
            Ok(Forwarded::Probed { passing: false, .. }) => (t, true),
            Ok(Forwarded::Probed {
                passing: true,
                output,
            }) => {
                crate::metrics::check_unconfirmed();
                tracing::warn!(
                    service = %service,
                    instance = %id,
                    check = %check,
                    confirmer = second,
                    here = %t.output,
                    there = %output,
                    "check fails from this server but passes from server {second}: not marking it critical (this server may have lost its network)"
                );
                (t, false)
            }
            other => {
                crate::metrics::check_unconfirmed();
                tracing::warn!(
                    service = %service,
                    instance = %id,
                    check = %check,
                    confirmer = second,
                    answer = ?other.err(),
                    "check fails from this server and server {second} could not give a second opinion: not marking it critical yet"
                );
                (t, false)
            }
        }
    }

    /// Runs one probe of a check this node knows, for another server's second opinion
    /// ([`Forward::Probe`]). Only checks in the applied state are probed, so the
    /// internal route cannot be used to probe arbitrary targets.
    pub(super) async fn probe_here(
        &self,
        key: crate::replicated::catalog::InstanceKey,
        check: String,
        generation: u64,
    ) -> Result<Forwarded, AppError> {
        let spec = {
            let state = self.inner.state.read();
            state
                .app
                .catalog
                .instance(&key)
                .filter(|r| r.checks_index() == generation)
                .and_then(|r| r.spec.checks.iter().find(|c| c.name == check).cloned())
        };
        let Some(spec) = spec else {
            return Err(AppError::InstanceNotFound);
        };
        let timeout = Duration::from_millis(spec.timeout_ms);
        let outcome = crate::health::run(&self.inner.checks.probes, &spec.probe, timeout).await;
        Ok(Forwarded::Probed {
            passing: outcome.passing,
            output: outcome.output,
        })
    }

    /// Proposes check transitions sent by a prober (on the leader).
    pub(super) async fn check_results_here(
        &self,
        mut results: Vec<CheckResult>,
    ) -> Result<Forwarded, AppError> {
        for result in &mut results {
            result.output = crate::health::probe::truncated(std::mem::take(&mut result.output));
        }
        let (index, changed) = self.propose_here(CheckResults(results)).await?;
        Ok(Forwarded::Applied {
            index,
            outcome: crate::replicated::state::Outcome::CheckResults(changed),
        })
    }

    /// On the leader (the leader's loop calls this each tick): once a second, makes the
    /// prober set the voters it heard "I probe" from within [`PROBER_TIMEOUT`] (itself
    /// unless `--no-probes`), and proposes it if that differs from the applied one.
    pub(super) async fn keep_probers(&self) {
        let Some(term) = self.inner.clock.leading_term() else {
            return;
        };
        let now = Instant::now();
        let in_grace = {
            let mut keeper = self.keeper();
            let since = match keeper.leading {
                Some((t, since)) if t == term => since,
                _ => {
                    keeper.leading = Some((term, now));
                    now
                }
            };
            let looked_lately = keeper
                .last_look
                .is_some_and(|at| now.duration_since(at) < PROBERS_EVERY);
            if looked_lately {
                return;
            }
            keeper.last_look = Some(now);
            keeper
                .heard
                .retain(|_, at| now.duration_since(*at) < PROBER_TIMEOUT);
            now.duration_since(since) < PROBERS_GRACE
        };
        let voters: Vec<NodeId> = {
            let metrics = self.inner.raft.metrics();
            let metrics = metrics.borrow();
            metrics.membership_config.membership().voter_ids().collect()
        };
        let heard: Vec<NodeId> = self.keeper().heard.keys().copied().collect();
        let me = (self.inner.id, self.inner.checks.enabled);
        let mut live: Vec<u64> = voters
            .into_iter()
            .filter(|&id| {
                if id == me.0 {
                    me.1
                } else {
                    heard.contains(&id)
                }
            })
            .collect();
        let current = self.inner.state.read().app.probers.clone();
        if in_grace {
            // Not every prober has reached a new leader yet: add, never remove.
            live.extend(current.iter().copied());
            live.dedup();
        }
        live.sort_unstable();
        live.dedup();
        if live == current {
            return;
        }
        match self.propose_here(SetProbers(live.clone())).await {
            Ok((index, ())) => tracing::info!(
                index,
                probers = ?live,
                before = ?current,
                "the servers that run active checks changed"
            ),
            Err(e) => {
                tracing::warn!(error = %e, "could not update the servers that run active checks; trying again")
            }
        }
    }

    fn keeper(&self) -> std::sync::MutexGuard<'_, ProberKeeper> {
        self.inner.keeper.lock().unwrap_or_else(|e| e.into_inner())
    }
}
