//! The one way onto the leader.
//!
//! Everything that must run on the leader is a [`Forward`]: a write to propose, a
//! keepalive, a read-index round, a membership change. [`App::on_leader`] runs it here
//! when this node leads, or sends it to the leader it knows of over the one internal
//! route (`/internal/forward`); the leader runs it with [`App::serve_forwarded`] and
//! answers a [`Forwarded`] or the [`AppError`] a local call would have returned. "Not the
//! leader, try X" ([`AppError::NotLeader`]) is followed here, for up to the leader wait;
//! every other answer is final and reaches the client as it is.
//!
//! **Invariant:** a forwarded operation runs at most once per attempt, and an attempt is
//! retried elsewhere only when it certainly did not run: the node answered "not the
//! leader", or could not be reached at all.

use std::time::Duration;

use locks::Lease;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::{App, AppError};
use crate::raft::network::{paths, PeerError};
use crate::raft::types::{LeaderError, NodeId};
use crate::replicated::acl::Principal;
use crate::replicated::catalog::InstanceKey;
use crate::replicated::ops::Op;
use crate::replicated::state::{Command, Outcome};

/// How long a forwarded call may take, unless the operation says otherwise.
pub(super) const FORWARD_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a forwarded membership change may take: adding a server waits for it to
/// catch up (`CATCH_UP_TIMEOUT`), then for the voter change to commit.
const MEMBERSHIP_TIMEOUT: Duration = Duration::from_secs(60);

/// What a keepalive renews: a lease, or the lease of a registered instance (heartbeat).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum KeepaliveTarget {
    Lease(locks::LeaseId),
    Instance(InstanceKey),
}

/// An operation that runs on the leader (all but [`Forward::AwaitApplied`]).
///
/// Writes and keepalives carry the [`Principal`] of the request they come from: the
/// leader checks them against its own state ([`App::authorize`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Forward {
    /// Propose a replicated command and wait until it is applied.
    Propose { command: Command, caller: Principal },
    /// Renew a lease on the leader's lease clock.
    Keepalive {
        target: KeepaliveTarget,
        caller: Principal,
    },
    /// Confirm leadership with a quorum; answers the index a linearizable read must see.
    ReadIndex,
    /// Add a server as a learner that catches up, then (unless `learner`) as a voter.
    AddMember {
        id: NodeId,
        addr: String,
        learner: bool,
    },
    /// Remove a server (voter or learner).
    RemoveMember(NodeId),
    /// On any member: answer once this node has applied the index (a token revoke waits
    /// for every member this way).
    AwaitApplied(u64),
    /// On any member: probe this check once, for its owner's second opinion before a
    /// critical transition (the check must be in this member's applied state).
    Probe {
        key: InstanceKey,
        check: String,
        generation: u64,
    },
    /// Propose check transitions a prober saw (from the server that owns the checks).
    CheckResults(Vec<crate::replicated::checks::CheckResult>),
    /// A server that runs probes says so (every second): the leader keeps the ones it
    /// heard from lately in the prober set.
    ProberAlive(NodeId),
}

impl Forward {
    fn timeout(&self) -> Duration {
        match self {
            Forward::AddMember { .. } | Forward::RemoveMember(_) => MEMBERSHIP_TIMEOUT,
            // The probe's own timeout is at most a minute.
            Forward::Probe { .. } => api_spec::checks::MAX_CHECK_TIMEOUT + FORWARD_TIMEOUT,
            _ => FORWARD_TIMEOUT,
        }
    }

    fn name(&self) -> &'static str {
        match self {
            Forward::Propose { .. } => "propose",
            Forward::Keepalive { .. } => "keepalive",
            Forward::ReadIndex => "read index",
            Forward::AddMember { .. } => "add member",
            Forward::RemoveMember(_) => "remove member",
            Forward::AwaitApplied(_) => "await applied",
            Forward::Probe { .. } => "probe",
            Forward::CheckResults(_) => "check results",
            Forward::ProberAlive(_) => "prober alive",
        }
    }
}

/// What the leader answers to a [`Forward`], one variant per operation.
// One value per call, moved once: boxing the large outcome would only add an allocation.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Serialize, Deserialize)]
pub enum Forwarded {
    /// Committed and applied at `index`.
    Applied { index: u64, outcome: Outcome },
    /// The lease and the time it now has left.
    Renewed { lease: Lease, remaining_ms: u64 },
    /// A linearizable read may be served once this index is applied.
    ReadIndex(u64),
    /// The membership change committed at `index`.
    Membership { index: u64 },
    /// This node has applied at least this index.
    AppliedHere(u64),
    /// What a probe for a second opinion saw.
    Probed { passing: bool, output: String },
    /// The leader took note.
    Noted,
}

/// The internal call's answer.
pub type ForwardAnswer = Result<Forwarded, AppError>;

impl From<LeaderError> for AppError {
    fn from(e: LeaderError) -> Self {
        match e {
            LeaderError::NotLeader { leader } => AppError::NotLeader { leader },
            LeaderError::Timeout(m) => AppError::Timeout(m),
            LeaderError::Unavailable(m) => AppError::Unavailable(m),
            LeaderError::Overloaded(m) => AppError::Overloaded(m),
        }
    }
}

impl From<PeerError> for AppError {
    fn from(e: PeerError) -> Self {
        match e {
            // Nothing reached the peer: as good as "not the leader", try again.
            PeerError::Unreachable { .. } => AppError::NotLeader { leader: None },
            // The peer refused the call itself (wrong cluster secret, a version that does
            // not know the call): retrying will not help until someone fixes it.
            PeerError::Rejected { .. } => AppError::Unavailable(e.to_string()),
            // It may or may not have run there.
            PeerError::Failed { .. } => AppError::Unavailable(e.to_string()),
        }
    }
}

/// The leader answered with another operation's result: a bug, never a client's doing.
fn mismatch(op: &str, answer: &Forwarded) -> AppError {
    AppError::Internal(format!("the leader answered {op} with {answer:?}"))
}

impl App {
    /// Runs `op` on the leader: here if this node leads, else on the leader it knows of.
    /// Follows "not the leader" answers and waits up to the leader wait for a leader to be
    /// known before answering [`AppError::NoLeader`].
    pub(super) async fn on_leader(&self, op: Forward) -> Result<Forwarded, AppError> {
        let deadline = Instant::now() + self.inner.leader_wait;
        let mut hint: Option<(NodeId, String)> = None;
        loop {
            let target = match hint.take().or_else(|| self.leader()) {
                Some(t) => t,
                None => {
                    if Instant::now() >= deadline {
                        return Err(AppError::NoLeader);
                    }
                    self.wait_for_metrics_change(deadline).await;
                    continue;
                }
            };
            // Boxed: serving any operation or calling a peer is a large future, and
            // every request that reaches the leader awaits this one (a parked blocking
            // query would otherwise carry its space while it waits).
            let answer = if target.0 == self.inner.id {
                Box::pin(self.serve_forwarded(op.clone())).await
            } else {
                Box::pin(self.forward_to(&target.1, &op)).await
            };
            match answer {
                Err(AppError::NotLeader { leader: next }) => {
                    if Instant::now() >= deadline {
                        return Err(AppError::NoLeader);
                    }
                    // A hint naming the node just asked (or none) means an election is
                    // under way: wait for news rather than spin.
                    match next {
                        Some(next) if next.0 != target.0 => hint = Some(next),
                        _ => {
                            tokio::time::sleep(Duration::from_millis(20)).await;
                            self.wait_for_metrics_change(deadline).await;
                        }
                    }
                }
                other => return other,
            }
        }
    }

    /// Sends `op` to the node at `addr` over the internal forwarding route.
    pub(super) async fn forward_to(&self, addr: &str, op: &Forward) -> ForwardAnswer {
        match self
            .inner
            .peers
            .call::<Forward, ForwardAnswer>(addr, paths::FORWARD, op, op.timeout())
            .await
        {
            Ok(answer) => answer,
            Err(e) => {
                tracing::debug!(op = op.name(), %addr, error = %e, "forwarding failed");
                Err(e.into())
            }
        }
    }

    /// Runs `op` on this node, which must be the leader (else it answers
    /// [`AppError::NotLeader`] and does nothing; [`Forward::AwaitApplied`] and
    /// [`Forward::Probe`] run anywhere).
    /// Serves `/internal/forward`.
    pub async fn serve_forwarded(&self, op: Forward) -> ForwardAnswer {
        match op {
            Forward::Propose { command, caller } => {
                let command = self.authorize(caller, command)?;
                let (index, outcome) = self.inner.proposer.propose(command).await?;
                Ok(Forwarded::Applied { index, outcome })
            }
            Forward::Keepalive { target, caller } => {
                let (lease, remaining) = self.renew_here(target, caller).await?;
                Ok(Forwarded::Renewed {
                    lease,
                    remaining_ms: u64::try_from(remaining.as_millis()).unwrap_or(u64::MAX),
                })
            }
            Forward::ReadIndex => Ok(Forwarded::ReadIndex(self.inner.barrier.confirm().await?)),
            Forward::AddMember { id, addr, learner } => {
                let index = self.add_member_here(id, addr, learner).await?;
                Ok(Forwarded::Membership { index })
            }
            Forward::RemoveMember(id) => {
                let index = self.remove_member_here(id).await?;
                Ok(Forwarded::Membership { index })
            }
            Forward::AwaitApplied(index) => {
                self.wait_applied(index).await?;
                Ok(Forwarded::AppliedHere(index))
            }
            Forward::Probe {
                key,
                check,
                generation,
            } => self.probe_here(key, check, generation).await,
            Forward::CheckResults(results) => self.check_results_here(results).await,
            Forward::ProberAlive(id) => self.prober_alive_here(id),
        }
    }

    /// Waits (at most 200 ms, and not past `deadline`) for news of the leader: a change
    /// of role, vote, leader or membership (openraft's server metrics).
    async fn wait_for_metrics_change(&self, deadline: Instant) {
        let mut metrics = self.inner.raft.server_metrics();
        let wait = deadline
            .saturating_duration_since(Instant::now())
            .min(Duration::from_millis(200));
        let _ = tokio::time::timeout(wait, metrics.changed()).await;
    }

    /// Proposes a command through the leader; returns the entry's index and the outcome.
    async fn propose(&self, command: Command) -> Result<(u64, Outcome), AppError> {
        let caller = self.caller.principal;
        match self.on_leader(Forward::Propose { command, caller }).await? {
            Forwarded::Applied { index, outcome } => Ok((index, outcome)),
            other => Err(mismatch("propose", &other)),
        }
    }

    /// Proposes a typed operation through the leader; returns the entry's index and the
    /// operation's own answer.
    pub(super) async fn propose_op<O: Op>(&self, op: O) -> Result<(u64, O::Output), AppError> {
        let (index, outcome) = self.propose(op.command()).await?;
        O::output(outcome)
            .map(|output| (index, output))
            .map_err(super::unexpected)
    }

    /// Proposes a typed operation on this node, which must be the leader (the leader's
    /// own tasks): not forwarded anywhere.
    pub(super) async fn propose_here<O: Op>(&self, op: O) -> Result<(u64, O::Output), AppError> {
        let (index, outcome) = self.inner.proposer.propose(op.command()).await?;
        O::output(outcome)
            .map(|output| (index, output))
            .map_err(super::unexpected)
    }

    /// Renews a lease on the leader; returns it with the time it now has left.
    pub(super) async fn renew(
        &self,
        target: KeepaliveTarget,
    ) -> Result<(Lease, Duration), AppError> {
        let caller = self.caller.principal;
        match self
            .on_leader(Forward::Keepalive { target, caller })
            .await?
        {
            Forwarded::Renewed {
                lease,
                remaining_ms,
            } => Ok((lease, Duration::from_millis(remaining_ms))),
            other => Err(mismatch("keepalive", &other)),
        }
    }

    /// Runs a membership change on the leader; returns the index it committed at.
    pub(super) async fn change_membership(&self, op: Forward) -> Result<u64, AppError> {
        match self.on_leader(op).await? {
            Forwarded::Membership { index } => Ok(index),
            other => Err(mismatch("a membership change", &other)),
        }
    }

    /// The index a read must reflect: this node's applied index for a stale read; for a
    /// linearizable one, the leader's confirmed read index, once applied here.
    pub(super) async fn read_index(
        &self,
        consistency: super::Consistency,
    ) -> Result<u64, AppError> {
        if consistency == super::Consistency::Stale {
            return Ok(self.inner.state.applied_index());
        }
        // Boxed, as the wait below: every read awaits this first, and a blocking query
        // keeps the space of what it awaited before while it waits.
        let index = match Box::pin(self.on_leader(Forward::ReadIndex)).await? {
            Forwarded::ReadIndex(index) => index,
            other => return Err(mismatch("read index", &other)),
        };
        Box::pin(self.wait_applied(index)).await?;
        Ok(self.inner.state.applied_index().max(index))
    }

    /// Waits until this node has applied `index` (immediate on the leader).
    pub(super) async fn wait_applied(&self, index: u64) -> Result<(), AppError> {
        if self.inner.state.applied_index() >= index {
            return Ok(());
        }
        self.inner
            .raft
            .wait(Some(FORWARD_TIMEOUT))
            .applied_index_at_least(Some(index), "catching up to the leader")
            .await
            .map(|_| ())
            .map_err(|e| AppError::Unavailable(format!("catching up to the leader: {e}")))
    }
}
