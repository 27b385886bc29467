//! Typed proposals: each command together with the one shape of answer it can have.
//!
//! A log entry answers a batch of commands with a `Vec<Outcome>`, one loose enum for all
//! of them. Whoever proposes a command wants the answer of *that* command: an [`Op`]
//! names the command and decodes its outcome into its own output type, so callers match
//! exhaustively on what can really happen (a grant, a queue place, a busy lock...) and
//! the one "the state machine answered something else" case is decided here, once.

use locks::{Hold, Key, Lease, LeaseId, LockState};

use crate::replicated::acl::{AclCommand, AclOutcome};
use crate::replicated::catalog::{CatalogError, InstanceKey, InstanceRecord, InstanceSpec};
use crate::replicated::state::{Binding, Command, Outcome};

/// A command and the typed answer to it.
pub trait Op {
    /// What the proposer of this command learns.
    type Output;
    /// The replicated command.
    fn command(self) -> Command;
    /// The output, or [`Mismatch`] when the outcome is not one this command gives.
    fn output(outcome: Outcome) -> Result<Self::Output, Mismatch>;
}

/// An outcome that another command gives: a bug in the server, never a client's doing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mismatch(pub Box<Outcome>);

fn mismatch(outcome: Outcome) -> Mismatch {
    Mismatch(Box::new(outcome))
}

fn coordinate(outcome: Outcome) -> Result<locks::Outcome, Mismatch> {
    match outcome {
        Outcome::Coordinate(o) => Ok(o),
        other => Err(mismatch(other)),
    }
}

/// Grant a new lease.
#[derive(Debug, Clone)]
pub struct GrantLease {
    pub id: LeaseId,
    pub ttl_ms: u64,
}

impl Op for GrantLease {
    type Output = Lease;
    fn command(self) -> Command {
        Command::Coordinate(locks::Command::GrantLease {
            id: self.id,
            ttl_ms: self.ttl_ms,
        })
    }
    fn output(outcome: Outcome) -> Result<Lease, Mismatch> {
        match coordinate(outcome)? {
            locks::Outcome::LeaseGranted(lease) => Ok(lease),
            other => Err(mismatch(Outcome::Coordinate(other))),
        }
    }
}

/// Revoke a lease; `None` when it does not exist.
#[derive(Debug, Clone)]
pub struct RevokeLease(pub LeaseId);

impl Op for RevokeLease {
    type Output = Option<Lease>;
    fn command(self) -> Command {
        Command::Coordinate(locks::Command::RevokeLease { id: self.0 })
    }
    fn output(outcome: Outcome) -> Result<Option<Lease>, Mismatch> {
        match coordinate(outcome)? {
            locks::Outcome::LeaseRevoked(lease) => Ok(Some(lease)),
            locks::Outcome::LeaseNotFound(_) => Ok(None),
            other => Err(mismatch(Outcome::Coordinate(other))),
        }
    }
}

/// Expire leases whose deadline passed on the leader's countdowns of `term`; the output
/// is those that still existed, or `None` when the entry was appended in another term
/// (whose leader restarted the countdowns), which expires nothing.
#[derive(Debug, Clone)]
pub struct ExpireLeases {
    pub term: u64,
    pub ids: Vec<LeaseId>,
}

impl Op for ExpireLeases {
    type Output = Option<Vec<Lease>>;
    fn command(self) -> Command {
        Command::InTerm {
            term: self.term,
            command: Box::new(Command::Coordinate(locks::Command::ExpireLeases {
                ids: self.ids,
            })),
        }
    }
    fn output(outcome: Outcome) -> Result<Option<Vec<Lease>>, Mismatch> {
        if outcome == Outcome::OtherTerm {
            return Ok(None);
        }
        match coordinate(outcome)? {
            locks::Outcome::LeasesExpired(leases) => Ok(Some(leases)),
            other => Err(mismatch(Outcome::Coordinate(other))),
        }
    }
}

/// Why a registration changed nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegisterRefused {
    /// It named a lease that does not exist.
    LeaseNotFound(LeaseId),
    Catalog(CatalogError),
}

/// Register or update an instance.
#[derive(Debug, Clone)]
pub struct Register {
    pub key: InstanceKey,
    pub spec: InstanceSpec,
    pub binding: Binding,
}

impl Op for Register {
    type Output = Result<(InstanceRecord, Option<Lease>), RegisterRefused>;
    fn command(self) -> Command {
        Command::Register {
            key: self.key,
            spec: self.spec,
            binding: self.binding,
        }
    }
    fn output(outcome: Outcome) -> Result<Self::Output, Mismatch> {
        match outcome {
            Outcome::Registered { record, lease } => Ok(Ok((record, lease))),
            Outcome::LeaseNotFound(id) => Ok(Err(RegisterRefused::LeaseNotFound(id))),
            Outcome::Catalog(e) => Ok(Err(RegisterRefused::Catalog(e))),
            other => Err(mismatch(other)),
        }
    }
}

/// Deregister an instance.
#[derive(Debug, Clone)]
pub struct Deregister(pub InstanceKey);

impl Op for Deregister {
    type Output = Result<InstanceRecord, CatalogError>;
    fn command(self) -> Command {
        Command::Deregister { key: self.0 }
    }
    fn output(outcome: Outcome) -> Result<Self::Output, Mismatch> {
        match outcome {
            Outcome::Deregistered(record) => Ok(Ok(record)),
            Outcome::Catalog(e) => Ok(Err(e)),
            other => Err(mismatch(other)),
        }
    }
}

/// Set an instance `draining` or back to `passing`.
#[derive(Debug, Clone)]
pub struct SetStatus {
    pub key: InstanceKey,
    pub draining: bool,
}

impl Op for SetStatus {
    type Output = Result<InstanceRecord, CatalogError>;
    fn command(self) -> Command {
        Command::SetStatus {
            key: self.key,
            draining: self.draining,
        }
    }
    fn output(outcome: Outcome) -> Result<Self::Output, Mismatch> {
        match outcome {
            Outcome::StatusSet(record) => Ok(Ok(record)),
            Outcome::Catalog(e) => Ok(Err(e)),
            other => Err(mismatch(other)),
        }
    }
}

/// Deregister critical instances whose `deregister_after` passed (each with the index it
/// turned critical at); the output is those deregistered.
#[derive(Debug, Clone)]
pub struct Reap(pub Vec<(InstanceKey, u64)>);

impl Op for Reap {
    type Output = Vec<InstanceKey>;
    fn command(self) -> Command {
        Command::Reap { instances: self.0 }
    }
    fn output(outcome: Outcome) -> Result<Vec<InstanceKey>, Mismatch> {
        match outcome {
            Outcome::Reaped(keys) => Ok(keys),
            other => Err(mismatch(other)),
        }
    }
}

/// Check transitions seen by a prober; the output is how many changed a check.
#[derive(Debug, Clone)]
pub struct CheckResults(pub Vec<crate::replicated::checks::CheckResult>);

impl Op for CheckResults {
    type Output = usize;
    fn command(self) -> Command {
        Command::CheckResults { results: self.0 }
    }
    fn output(outcome: Outcome) -> Result<usize, Mismatch> {
        match outcome {
            Outcome::CheckResults(changed) => Ok(changed),
            other => Err(mismatch(other)),
        }
    }
}

/// The servers that run active checks (the leader's own command).
#[derive(Debug, Clone)]
pub struct SetProbers(pub Vec<u64>);

impl Op for SetProbers {
    type Output = ();
    fn command(self) -> Command {
        Command::SetProbers { probers: self.0 }
    }
    fn output(outcome: Outcome) -> Result<(), Mismatch> {
        match outcome {
            Outcome::ProbersSet => Ok(()),
            other => Err(mismatch(other)),
        }
    }
}

/// What an acquire (or campaign) got at once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Acquired {
    Granted(Hold),
    /// In the queue, to be woken by the entry that grants it.
    Queued,
    /// Held, has waiters or is in lock-delay, and the request does not wait.
    Busy(LockState),
    QueueFull,
    LeaseNotFound(LeaseId),
}

/// Take a lock (or lead an election), or queue for it.
#[derive(Debug, Clone)]
pub struct Acquire(pub locks::Acquire);

impl Op for Acquire {
    type Output = Acquired;
    fn command(self) -> Command {
        Command::Coordinate(locks::Command::Acquire(self.0))
    }
    fn output(outcome: Outcome) -> Result<Acquired, Mismatch> {
        match coordinate(outcome)? {
            locks::Outcome::Granted(hold) => Ok(Acquired::Granted(hold)),
            locks::Outcome::Queued { .. } => Ok(Acquired::Queued),
            locks::Outcome::Busy(state) => Ok(Acquired::Busy(state)),
            locks::Outcome::QueueFull => Ok(Acquired::QueueFull),
            locks::Outcome::LeaseNotFound(id) => Ok(Acquired::LeaseNotFound(id)),
            other => Err(mismatch(Outcome::Coordinate(other))),
        }
    }
}

/// What a withdrawal found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Withdrawal {
    /// The request had been granted meanwhile and keeps the grant.
    Kept(Hold),
    /// The request had been granted meanwhile; the grant was released.
    Released(Hold),
    /// It left the queue (or was not in it).
    Withdrawn,
}

/// A waiting request gives up.
#[derive(Debug, Clone)]
pub struct Withdraw {
    pub key: Key,
    pub ticket: locks::Ticket,
    /// Release a grant that came meanwhile (nobody will hear of it) rather than keep it.
    pub release_if_granted: bool,
}

impl Op for Withdraw {
    type Output = Withdrawal;
    fn command(self) -> Command {
        Command::Coordinate(locks::Command::Withdraw {
            key: self.key,
            ticket: self.ticket,
            release_if_granted: self.release_if_granted,
        })
    }
    fn output(outcome: Outcome) -> Result<Withdrawal, Mismatch> {
        match coordinate(outcome)? {
            locks::Outcome::Granted(hold) => Ok(Withdrawal::Kept(hold)),
            locks::Outcome::Released(hold) => Ok(Withdrawal::Released(hold)),
            locks::Outcome::Withdrawn => Ok(Withdrawal::Withdrawn),
            other => Err(mismatch(Outcome::Coordinate(other))),
        }
    }
}

/// A command only the holder of `token` may make: release (resign) or proclaim. The
/// output is the hold it acted on, or the lock as it is when the token is not current.
#[derive(Debug, Clone)]
pub enum ByHolder {
    Release {
        key: Key,
        token: u64,
    },
    Proclaim {
        key: Key,
        token: u64,
        holder: String,
    },
}

impl Op for ByHolder {
    type Output = Result<Hold, LockState>;
    fn command(self) -> Command {
        Command::Coordinate(match self {
            ByHolder::Release { key, token } => locks::Command::Release { key, token },
            ByHolder::Proclaim { key, token, holder } => {
                locks::Command::Proclaim { key, token, holder }
            }
        })
    }
    fn output(outcome: Outcome) -> Result<Self::Output, Mismatch> {
        match coordinate(outcome)? {
            locks::Outcome::Released(hold) | locks::Outcome::Proclaimed(hold) => Ok(Ok(hold)),
            locks::Outcome::TokenMismatch(state) => Ok(Err(state)),
            other => Err(mismatch(Outcome::Coordinate(other))),
        }
    }
}

/// End the lock-delays that passed; the output is the locks that left theirs.
#[derive(Debug, Clone)]
pub struct GrantDelayed(pub Vec<Key>);

impl Op for GrantDelayed {
    type Output = Vec<Key>;
    fn command(self) -> Command {
        Command::Coordinate(locks::Command::GrantDelayed { keys: self.0 })
    }
    fn output(outcome: Outcome) -> Result<Vec<Key>, Mismatch> {
        match coordinate(outcome)? {
            locks::Outcome::DelaysEnded(keys) => Ok(keys),
            other => Err(mismatch(Outcome::Coordinate(other))),
        }
    }
}

/// A token or bootstrap command; the output is what it did.
#[derive(Debug, Clone)]
pub struct Acl(pub AclCommand);

impl Op for Acl {
    type Output = AclOutcome;
    fn command(self) -> Command {
        Command::Acl(self.0)
    }
    fn output(outcome: Outcome) -> Result<AclOutcome, Mismatch> {
        match outcome {
            Outcome::Acl(done) => Ok(done),
            other => Err(mismatch(other)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replicated::catalog::test_spec;
    use crate::replicated::state::{AppState, Effects};

    /// Applies `op` as the only command of the entry at `index`, appended in term 1.
    fn run<O: Op>(state: &mut AppState, op: O, index: u64) -> O::Output {
        let command = op.command();
        let outcome = state.apply_logged(command, 1, index, 1_000, &mut Effects::default());
        match O::output(outcome) {
            Ok(output) => output,
            Err(other) => panic!("outcome of another command: {other:?}"),
        }
    }

    #[test]
    fn each_op_decodes_the_outcomes_its_command_gives() {
        let mut s = AppState::default();
        let lease = run(
            &mut s,
            GrantLease {
                id: LeaseId::from_u128(1),
                ttl_ms: 5_000,
            },
            1,
        );
        assert_eq!(lease.id, LeaseId::from_u128(1));
        let other = LeaseId::from_u128(2);
        run(
            &mut s,
            GrantLease {
                id: other,
                ttl_ms: 5_000,
            },
            2,
        );
        let key = crate::replicated::catalog::key("web", "i1");
        let register = |binding| Register {
            key: key.clone(),
            spec: test_spec(),
            binding,
        };
        let missing = LeaseId::from_u128(9);
        assert_eq!(
            run(&mut s, register(Binding::Existing(missing)), 2),
            Err(RegisterRefused::LeaseNotFound(missing))
        );
        let (record, _) =
            run(&mut s, register(Binding::Existing(lease.id)), 3).expect("registered");
        assert_eq!(record.lease, Some(lease.id));
        let drained = run(
            &mut s,
            SetStatus {
                key: key.clone(),
                draining: true,
            },
            4,
        );
        assert!(drained.is_ok());

        let acquire = |ticket: u128, wait: bool| {
            let lease = if ticket == 1 { lease.id } else { other };
            Acquire(locks::Acquire {
                key: Key::lock("db"),
                ticket: locks::Ticket::from_u128(ticket),
                binding: locks::Binding::Existing(lease),
                holder: String::new(),
                wait,
                lock_delay_ms: 0,
            })
        };
        let Acquired::Granted(hold) = run(&mut s, acquire(1, false), 5) else {
            panic!("a free lock is granted");
        };
        assert!(matches!(
            run(&mut s, acquire(2, false), 6),
            Acquired::Busy(_)
        ));
        assert_eq!(run(&mut s, acquire(3, true), 7), Acquired::Queued);
        let withdraw = Withdraw {
            key: Key::lock("db"),
            ticket: locks::Ticket::from_u128(3),
            release_if_granted: true,
        };
        assert_eq!(run(&mut s, withdraw, 8), Withdrawal::Withdrawn);
        let wrong = ByHolder::Release {
            key: Key::lock("db"),
            token: hold.token + 1,
        };
        assert!(run(&mut s, wrong, 9).is_err());
        let release = ByHolder::Release {
            key: Key::lock("db"),
            token: hold.token,
        };
        assert_eq!(run(&mut s, release, 10).map(|h| h.token), Ok(hold.token));

        assert_eq!(
            run(&mut s, Deregister(key.clone()), 11).map(|r| r.lease),
            Ok(Some(lease.id))
        );
        assert_eq!(
            run(&mut s, Deregister(key), 12),
            Err(CatalogError::InstanceNotFound)
        );
        assert_eq!(
            run(&mut s, RevokeLease(lease.id), 13).map(|l| l.id),
            Some(lease.id)
        );
        assert_eq!(run(&mut s, RevokeLease(lease.id), 14), None);
        let expire = |term| ExpireLeases {
            term,
            ids: vec![lease.id],
        };
        assert_eq!(run(&mut s, expire(1), 15), Some(Vec::new()));
        assert_eq!(run(&mut s, expire(2), 15), None, "decided in another term");
        assert!(run(&mut s, Reap(Vec::new()), 16).is_empty());
        assert!(run(&mut s, GrantDelayed(vec![Key::lock("db")]), 17).is_empty());
    }

    #[test]
    fn another_commands_outcome_is_handed_back() {
        assert_eq!(
            Reap::output(Outcome::Catalog(CatalogError::InstanceNotFound)),
            Err(mismatch(Outcome::Catalog(CatalogError::InstanceNotFound)))
        );
        assert!(GrantLease::output(Outcome::Reaped(Vec::new())).is_err());
    }
}
