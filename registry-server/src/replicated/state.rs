//! The replicated application state: everything the Raft log builds, in memory.
//!
//! [`AppState::apply`] is deterministic and reads no clock; the leader's time arrives in
//! the entry, and replicated time never runs backwards: every command is applied at
//! `max(entry time, last applied time)` ([`AppState::clock_ms`]), whatever the clock of
//! the leader that stamped it. Leases live in the `locks` crate's [`locks::Coordinator`], instances in the
//! [`Catalog`]; this module is where the two meet (an instance's own lease is granted and
//! revoked with it, a lease's end turns its instances critical). What an apply did that
//! the rest of the server must hear about (leases granted or ended, services changed) is
//! collected in [`Effects`].

use std::collections::BTreeSet;

use locks::{Lease, LeaseId};
use serde::{Deserialize, Serialize};

use crate::replicated::acl::{Accessor, Acl, AclCommand, AclOutcome};
use crate::replicated::catalog::{
    Catalog, CatalogError, InstanceKey, InstanceRecord, InstanceSpec,
};
use crate::replicated::checks::CheckResult;
use crate::replicated::intern::Name;

/// Which lease a registration binds to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Binding {
    /// A lease of the instance's own with this TTL. The proposer picks `new_lease` in case
    /// one is needed: an instance that already has a live own lease with the same TTL
    /// keeps it.
    Own { new_lease: LeaseId, ttl_ms: u64 },
    /// An existing lease, named by the client.
    Existing(LeaseId),
    /// No lease: the instance is kept by its active checks (validation makes sure it has
    /// some).
    Unleased,
}

/// One replicated command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// A lease, lock or election command for the coordination core.
    Coordinate(locks::Command),
    /// Register or update an instance.
    Register {
        key: InstanceKey,
        spec: InstanceSpec,
        binding: Binding,
    },
    /// Deregister an instance (and revoke its own lease).
    Deregister { key: InstanceKey },
    /// Take an instance out of healthy discovery (`draining`) or put it back.
    SetStatus { key: InstanceKey, draining: bool },
    /// Deregister critical instances whose `deregister_after` passed, each unless it was
    /// registered again since it turned critical at the given index.
    Reap { instances: Vec<(InstanceKey, u64)> },
    /// Tokens and bootstrap.
    Acl(AclCommand),
    /// Check transitions probers saw (only transitions: probes themselves are not
    /// written).
    CheckResults { results: Vec<CheckResult> },
    /// The servers that run active checks, as the leader last saw them answer (the
    /// leader's own command, proposed only when that set changes).
    SetProbers { probers: Vec<u64> },
    /// A command made by a token: the leases it grants belong to that token. The leader
    /// wraps commands in this; its outcome is the inner command's.
    Owned {
        owner: Accessor,
        command: Box<Command>,
    },
    /// A command the leader decided from what it holds in memory for one term only (lease
    /// deadlines, which every new leader restarts): it takes effect only if its entry was
    /// appended in that term, and otherwise changes nothing ([`Outcome::OtherTerm`]). So a
    /// proposal that waited out a change of leader cannot act on the old term's
    /// countdowns. Bound to the term of the entry it is a command of
    /// ([`AppState::apply_logged`]); nested in another command it changes nothing.
    InTerm { term: u64, command: Box<Command> },
}

/// What one [`Command`] did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    Coordinate(locks::Outcome),
    /// The instance as registered, with the lease it is bound to.
    Registered {
        record: InstanceRecord,
        lease: Option<Lease>,
    },
    Deregistered(InstanceRecord),
    StatusSet(InstanceRecord),
    Reaped(Vec<InstanceKey>),
    Acl(AclOutcome),
    /// How many check results changed a check.
    CheckResults(usize),
    ProbersSet,
    /// The command named a lease that does not exist.
    LeaseNotFound(LeaseId),
    Catalog(CatalogError),
    /// A [`Command::InTerm`] whose entry was appended in another term: nothing was done.
    OtherTerm,
}

/// Side effects of applying commands, for the parts of the server outside the state.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Effects {
    /// What the coordination core reported: leases granted and ended, locks changed,
    /// parked requests decided, leases handed a lock from a queue.
    pub coordination: locks::Effects,
    /// Services whose instances changed (their watchers are woken).
    pub services: BTreeSet<Name>,
}

/// The state machine's application data (what snapshots contain besides Raft metadata).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppState {
    /// Leases, locks and elections.
    pub coordinator: locks::Coordinator,
    /// Registered service instances.
    pub catalog: Catalog,
    /// Replicated time: the latest time any applied entry carried (ms since the Unix
    /// epoch; 0 before the first). Commands apply at no earlier time, so a leader whose
    /// clock is behind cannot move time back; a new leader's time starts from here
    /// (`crate::leader_time`).
    pub clock_ms: u64,
    /// Tokens and lease owners.
    pub acl: Acl,
    /// The servers that run active checks (node ids, sorted): each check belongs to one
    /// of them ([`crate::replicated::checks::owner`]). Kept by the leader.
    pub probers: Vec<u64>,
}

impl AppState {
    /// Applies one command of the entry at `index` that was appended in `term`: as
    /// [`AppState::apply`], except that a command bound to another term
    /// ([`Command::InTerm`]) changes nothing.
    pub fn apply_logged(
        &mut self,
        command: Command,
        term: u64,
        index: u64,
        now_ms: u64,
        fx: &mut Effects,
    ) -> Outcome {
        match command {
            Command::InTerm {
                term: decided,
                command,
            } if decided == term => self.apply(*command, index, now_ms, fx),
            Command::InTerm { .. } => Outcome::OtherTerm,
            command => self.apply(command, index, now_ms, fx),
        }
    }

    /// Applies one command from the entry at `index`, stamped `now_ms` by the leader; it
    /// applies at `max(now_ms, clock_ms)`, which becomes the new `clock_ms`.
    pub fn apply(
        &mut self,
        command: Command,
        index: u64,
        now_ms: u64,
        fx: &mut Effects,
    ) -> Outcome {
        let now_ms = now_ms.max(self.clock_ms);
        self.clock_ms = now_ms;
        match command {
            Command::Coordinate(cmd) => Outcome::Coordinate(self.lease(cmd, index, now_ms, fx)),
            Command::Register { key, spec, binding } => {
                self.register(key, spec, binding, index, now_ms, fx)
            }
            Command::Deregister { key } => match self.catalog.remove(&key, index) {
                Ok(record) => {
                    fx.services.insert(key.0);
                    if let (true, Some(id)) = (record.own_lease, record.lease) {
                        self.lease(locks::Command::RevokeLease { id }, index, now_ms, fx);
                    }
                    Outcome::Deregistered(record)
                }
                Err(e) => Outcome::Catalog(e),
            },
            Command::SetStatus { key, draining } => {
                match self.catalog.set_status(&key, draining, index, now_ms) {
                    Ok(record) => {
                        fx.services.insert(key.0);
                        Outcome::StatusSet(record)
                    }
                    Err(e) => Outcome::Catalog(e),
                }
            }
            Command::Reap { instances } => {
                let mut reaped = Vec::new();
                for (key, critical_index) in instances {
                    if let Some(record) = self.catalog.reap(&key, critical_index, index) {
                        if let (true, Some(id)) = (record.own_lease, record.lease) {
                            // Usually already ended (that made it critical); revoking an
                            // unknown lease changes nothing.
                            self.lease(locks::Command::RevokeLease { id }, index, now_ms, fx);
                        }
                        fx.services.insert(key.0.clone());
                        reaped.push(key);
                    }
                }
                Outcome::Reaped(reaped)
            }
            Command::Acl(cmd) => Outcome::Acl(self.acl.apply(cmd, index, now_ms)),
            Command::CheckResults { results } => {
                let changed = self.catalog.check_results(results, index, now_ms);
                let count = changed.len();
                fx.services.extend(changed);
                Outcome::CheckResults(count)
            }
            Command::SetProbers { mut probers } => {
                probers.sort_unstable();
                probers.dedup();
                self.probers = probers;
                Outcome::ProbersSet
            }
            Command::Owned { owner, command } => {
                let before = fx.coordination.granted.len();
                let outcome = self.apply(*command, index, now_ms, fx);
                for lease in &fx.coordination.granted[before..] {
                    self.acl.own_lease(lease.id, owner);
                }
                outcome
            }
            // Only an entry's own commands are bound to its term (`apply_logged`); here
            // the term cannot be checked, so the command does nothing.
            Command::InTerm { .. } => Outcome::OtherTerm,
        }
    }

    /// Applies a coordination command and carries the end of any lease over to the
    /// instances bound to it.
    fn lease(
        &mut self,
        cmd: locks::Command,
        index: u64,
        now_ms: u64,
        fx: &mut Effects,
    ) -> locks::Outcome {
        // A fresh `locks::Effects` per command: the core reads it back ("did this key
        // change during this apply?"), so it must not see earlier commands' changes.
        let mut coordination = locks::Effects::default();
        let outcome = self
            .coordinator
            .apply(cmd, index, now_ms, &mut coordination);
        for id in &coordination.ended {
            self.acl.lease_ended(id);
            fx.services
                .extend(self.catalog.lease_ended(id, index, now_ms));
        }
        let into = &mut fx.coordination;
        into.granted.extend(coordination.granted);
        into.ended.extend(coordination.ended);
        into.changed.extend(coordination.changed);
        into.woken.extend(coordination.woken);
        into.handed.extend(coordination.handed);
        outcome
    }

    fn register(
        &mut self,
        key: InstanceKey,
        spec: InstanceSpec,
        binding: Binding,
        index: u64,
        now_ms: u64,
        fx: &mut Effects,
    ) -> Outcome {
        let (lease, own) = match binding {
            Binding::Unleased => (None, false),
            Binding::Existing(id) => match self.coordinator.lease(&id) {
                Some(lease) => (Some(lease), false),
                None => return Outcome::LeaseNotFound(id),
            },
            Binding::Own { new_lease, ttl_ms } => {
                // Keep the instance's live own lease when the TTL is unchanged, so a
                // re-registration does not reset who holds what.
                let current = self
                    .catalog
                    .instance(&key)
                    .filter(|r| r.own_lease)
                    .and_then(|r| self.coordinator.lease(r.lease.as_ref()?))
                    .filter(|l| l.ttl_ms == ttl_ms);
                match current {
                    Some(lease) => (Some(lease), true),
                    None => {
                        let grant = locks::Command::GrantLease {
                            id: new_lease,
                            ttl_ms,
                        };
                        match self.lease(grant, index, now_ms, fx) {
                            locks::Outcome::LeaseGranted(lease) => (Some(lease), true),
                            // A grant always answers `LeaseGranted`; were `locks` ever to
                            // say otherwise, refuse the registration rather than panic.
                            _ => return Outcome::LeaseNotFound(new_lease),
                        }
                    }
                }
            }
        };
        let replaced = self.catalog.upsert(
            key.clone(),
            spec,
            lease.as_ref().map(|l| l.id),
            own,
            index,
            now_ms,
        );
        if let Some(old) = replaced {
            self.lease(locks::Command::RevokeLease { id: old }, index, now_ms, fx);
        }
        fx.services.insert(key.0.clone());
        match self.catalog.instance(&key) {
            Some(record) => Outcome::Registered {
                record: record.clone(),
                lease,
            },
            None => Outcome::Catalog(CatalogError::InstanceNotFound),
        }
    }
}

#[cfg(test)]
mod tests {
    use api_spec::InstanceStatus;

    use super::*;
    use crate::replicated::catalog::test_spec;

    fn key(s: &str, i: &str) -> InstanceKey {
        crate::replicated::catalog::key(s, i)
    }

    fn spec() -> InstanceSpec {
        InstanceSpec {
            deregister_after_ms: 1_000,
            ..test_spec()
        }
    }

    fn own(n: u128, ttl_ms: u64) -> Binding {
        Binding::Own {
            new_lease: LeaseId::from_u128(n),
            ttl_ms,
        }
    }

    fn register(
        state: &mut AppState,
        k: InstanceKey,
        binding: Binding,
        index: u64,
    ) -> (Outcome, Effects) {
        let mut fx = Effects::default();
        let out = state.apply(
            Command::Register {
                key: k,
                spec: spec(),
                binding,
            },
            index,
            0,
            &mut fx,
        );
        (out, fx)
    }

    #[test]
    fn a_command_bound_to_a_term_acts_only_in_an_entry_of_that_term() {
        let mut s = AppState::default();
        let mut fx = Effects::default();
        let id = LeaseId::from_u128(1);
        let grant = Command::Coordinate(locks::Command::GrantLease { id, ttl_ms: 1000 });
        s.apply_logged(grant, 4, 1, 0, &mut fx);
        let expire_in = |term| Command::InTerm {
            term,
            command: Box::new(Command::Coordinate(locks::Command::ExpireLeases {
                ids: vec![id],
            })),
        };
        // Decided on term 4's countdowns, appended by a later leadership: nothing ends.
        let out = s.apply_logged(expire_in(4), 6, 2, 0, &mut fx);
        assert_eq!(out, Outcome::OtherTerm);
        assert!(s.coordinator.lease(&id).is_some());
        // Nested, the term cannot be checked: nothing ends either.
        let owned = Command::Owned {
            owner: Accessor::from_u128(1),
            command: Box::new(expire_in(6)),
        };
        assert_eq!(s.apply_logged(owned, 6, 3, 0, &mut fx), Outcome::OtherTerm);
        assert!(s.coordinator.lease(&id).is_some());
        // Appended in the term that decided it (committed later or not): it ends.
        let out = s.apply_logged(expire_in(6), 6, 4, 0, &mut fx);
        assert!(
            matches!(&out, Outcome::Coordinate(locks::Outcome::LeasesExpired(l)) if l.len() == 1),
            "{out:?}"
        );
        assert!(s.coordinator.lease(&id).is_none());
    }

    #[test]
    fn commands_keep_their_encoding_and_in_term_comes_last() {
        // bincode numbers variants in declaration order: entries written before
        // `InTerm` existed (log format 2) must decode as the same commands.
        let tag = |c: &Command| bincode::serialize(c).unwrap()[..4].to_vec();
        let expire = Command::Coordinate(locks::Command::ExpireLeases { ids: vec![] });
        assert_eq!(tag(&expire), [0, 0, 0, 0]);
        assert_eq!(tag(&Command::SetProbers { probers: vec![] }), [7, 0, 0, 0]);
        let in_term = Command::InTerm {
            term: 1,
            command: Box::new(expire),
        };
        assert_eq!(tag(&in_term), [9, 0, 0, 0]);
    }

    #[test]
    fn replicated_time_never_runs_backwards() {
        let mut s = AppState::default();
        let mut fx = Effects::default();
        let grant = |n: u128| {
            Command::Coordinate(locks::Command::GrantLease {
                id: LeaseId::from_u128(n),
                ttl_ms: 1000,
            })
        };
        let day = 86_400_000;
        s.apply(grant(1), 1, day + 50_000, &mut fx);
        assert_eq!(s.clock_ms, day + 50_000);
        // A leader a day behind: the entry applies at the last applied time.
        s.apply(grant(2), 2, 50_000, &mut fx);
        assert_eq!(s.clock_ms, day + 50_000);
        assert_eq!(
            s.coordinator
                .lease(&LeaseId::from_u128(2))
                .map(|l| l.granted_at_ms),
            Some(day + 50_000)
        );
        s.apply(grant(3), 3, day + 51_000, &mut fx);
        assert_eq!(s.clock_ms, day + 51_000);
    }

    #[test]
    fn a_lock_delay_cannot_be_ended_by_an_entry_stamped_in_the_past() {
        let mut s = AppState::default();
        let mut fx = Effects::default();
        let holder = LeaseId::from_u128(1);
        let db = locks::Key::lock("db");
        s.apply(
            Command::Coordinate(locks::Command::GrantLease {
                id: holder,
                ttl_ms: 1000,
            }),
            1,
            10_000,
            &mut fx,
        );
        s.apply(
            Command::Coordinate(locks::Command::Acquire(locks::Acquire {
                key: db.clone(),
                ticket: locks::Ticket::from_u128(1),
                binding: locks::Binding::Existing(holder),
                holder: String::new(),
                wait: false,
                lock_delay_ms: 5_000,
            })),
            2,
            10_000,
            &mut fx,
        );
        s.apply(
            Command::Coordinate(locks::Command::ExpireLeases { ids: vec![holder] }),
            3,
            20_000,
            &mut fx,
        );
        assert_eq!(
            s.coordinator.lock(&db).and_then(|l| l.delay_until_ms),
            Some(25_000)
        );
        // An entry stamped far in the past still applies at 20 s: the delay stays.
        let delayed = Command::Coordinate(locks::Command::GrantDelayed {
            keys: vec![db.clone()],
        });
        let out = s.apply(delayed.clone(), 4, 0, &mut fx);
        assert_eq!(
            out,
            Outcome::Coordinate(locks::Outcome::DelaysEnded(vec![]))
        );
        let out = s.apply(delayed, 5, 25_000, &mut fx);
        assert_eq!(
            out,
            Outcome::Coordinate(locks::Outcome::DelaysEnded(vec![db]))
        );
    }

    #[test]
    fn the_core_bounds_agree_with_the_api() {
        assert_eq!(
            Some(locks::MAX_LOCK_DELAY_MS),
            u64::try_from(api_spec::MAX_LOCK_DELAY.as_millis()).ok()
        );
    }

    #[test]
    fn registration_grants_an_own_lease_once() {
        let mut s = AppState::default();
        let (out, fx) = register(&mut s, key("a", "1"), own(1, 5000), 1);
        assert!(
            matches!(out, Outcome::Registered { ref lease, .. } if lease.as_ref().map(|l| l.id) == Some(LeaseId::from_u128(1)))
        );
        assert_eq!(fx.coordination.granted.len(), 1);
        // Same TTL: the live own lease is kept, the proposed new one is not granted.
        let (out, fx) = register(&mut s, key("a", "1"), own(2, 5000), 2);
        assert!(
            matches!(out, Outcome::Registered { ref lease, .. } if lease.as_ref().map(|l| l.id) == Some(LeaseId::from_u128(1)))
        );
        assert!(fx.coordination.granted.is_empty() && fx.coordination.ended.is_empty());
        assert_eq!(s.coordinator.lease_count(), 1);
        // New TTL: a new own lease, and the old one is revoked.
        let (_, fx) = register(&mut s, key("a", "1"), own(3, 9000), 3);
        assert_eq!(
            fx.coordination
                .granted
                .iter()
                .map(|l| l.id)
                .collect::<Vec<_>>(),
            vec![LeaseId::from_u128(3)]
        );
        assert_eq!(fx.coordination.ended, vec![LeaseId::from_u128(1)]);
        assert_eq!(s.coordinator.lease_count(), 1);
        assert_eq!(
            s.catalog.instance(&key("a", "1")).unwrap().status,
            InstanceStatus::Passing
        );
    }

    #[test]
    fn binding_to_an_unknown_lease_changes_nothing() {
        let mut s = AppState::default();
        let before = s.clone();
        let (out, fx) = register(
            &mut s,
            key("a", "1"),
            Binding::Existing(LeaseId::from_u128(7)),
            1,
        );
        assert_eq!(out, Outcome::LeaseNotFound(LeaseId::from_u128(7)));
        assert_eq!(fx, Effects::default());
        assert_eq!(s, before);
    }

    #[test]
    fn lease_expiry_makes_instances_critical_then_reap_deregisters() {
        let mut s = AppState::default();
        let mut fx = Effects::default();
        let shared = LeaseId::from_u128(9);
        s.apply(
            Command::Coordinate(locks::Command::GrantLease {
                id: shared,
                ttl_ms: 1000,
            }),
            1,
            0,
            &mut fx,
        );
        register(&mut s, key("a", "1"), Binding::Existing(shared), 2);
        register(&mut s, key("b", "1"), Binding::Existing(shared), 3);
        let mut fx = Effects::default();
        s.apply(
            Command::Coordinate(locks::Command::ExpireLeases { ids: vec![shared] }),
            4,
            10_000,
            &mut fx,
        );
        assert_eq!(fx.coordination.ended, vec![shared]);
        assert_eq!(fx.services, [Name::from("a"), Name::from("b")].into());
        assert_eq!(
            s.catalog.instance(&key("a", "1")).unwrap().status,
            InstanceStatus::Critical
        );

        let due = s.catalog.due_reaps(11_000, 10);
        assert_eq!(due.len(), 2);
        let mut fx = Effects::default();
        let out = s.apply(Command::Reap { instances: due }, 5, 11_000, &mut fx);
        assert_eq!(out, Outcome::Reaped(vec![key("a", "1"), key("b", "1")]));
        assert_eq!(s.catalog.services().count(), 0);
    }

    #[test]
    fn deregister_revokes_the_own_lease_but_not_a_shared_one() {
        let mut s = AppState::default();
        let mut fx = Effects::default();
        let shared = LeaseId::from_u128(9);
        s.apply(
            Command::Coordinate(locks::Command::GrantLease {
                id: shared,
                ttl_ms: 1000,
            }),
            1,
            0,
            &mut fx,
        );
        register(&mut s, key("a", "1"), own(1, 5000), 2);
        register(&mut s, key("a", "2"), Binding::Existing(shared), 3);
        let mut fx = Effects::default();
        s.apply(Command::Deregister { key: key("a", "1") }, 4, 0, &mut fx);
        s.apply(Command::Deregister { key: key("a", "2") }, 5, 0, &mut fx);
        assert_eq!(fx.coordination.ended, vec![LeaseId::from_u128(1)]);
        assert!(s.coordinator.lease(&shared).is_some());
        let out = s.apply(Command::Deregister { key: key("a", "1") }, 6, 0, &mut fx);
        assert_eq!(out, Outcome::Catalog(CatalogError::InstanceNotFound));
    }

    #[test]
    fn a_lease_end_releases_its_locks_and_turns_its_instances_critical_together() {
        let mut s = AppState::default();
        let shared = LeaseId::from_u128(9);
        let other = LeaseId::from_u128(10);
        let mut fx = Effects::default();
        for id in [shared, other] {
            s.apply(
                Command::Coordinate(locks::Command::GrantLease { id, ttl_ms: 1000 }),
                1,
                0,
                &mut fx,
            );
        }
        register(&mut s, key("a", "1"), Binding::Existing(shared), 2);
        let acquire = |ticket: u128, lease: LeaseId, wait: bool| {
            Command::Coordinate(locks::Command::Acquire(locks::Acquire {
                key: locks::Key::lock("db"),
                ticket: locks::Ticket::from_u128(ticket),
                binding: locks::Binding::Existing(lease),
                holder: String::new(),
                wait,
                lock_delay_ms: 0,
            }))
        };
        s.apply(acquire(1, shared, false), 3, 0, &mut fx);
        s.apply(acquire(2, other, true), 4, 0, &mut fx);

        let mut fx = Effects::default();
        s.apply(
            Command::Coordinate(locks::Command::RevokeLease { id: shared }),
            5,
            0,
            &mut fx,
        );
        assert_eq!(fx.coordination.ended, vec![shared]);
        assert_eq!(fx.services, [Name::from("a")].into());
        assert_eq!(fx.coordination.changed, [locks::Key::lock("db")].into());
        assert_eq!(fx.coordination.woken, vec![locks::Ticket::from_u128(2)]);
        assert_eq!(
            s.catalog.instance(&key("a", "1")).unwrap().status,
            InstanceStatus::Critical
        );
        let holder = s.coordinator.lock(&locks::Key::lock("db")).unwrap();
        assert_eq!(
            holder.holder.as_ref().map(|h| (h.lease, h.token)),
            Some((other, 5))
        );
    }
}
