//! Access control, replicated: the tokens (only a hash of each secret), whether the
//! cluster's ACLs are bootstrapped, and which token owns each lease; and the pure policy
//! that decides, from those and a node's settings, whether a caller may do something.
//!
//! Every node holds the same [`Acl`] (it is part of the state the log builds), so a
//! permission check is a lookup in memory on whichever node serves the request; writes
//! are checked again on the leader ([`Authority::authorize`]) against the state the write
//! will apply to, so a forged or stale check cannot get a write past it.

use std::collections::BTreeMap;
use std::sync::Arc;

use api_spec::acl::{Access, Resource, Rule};
use locks::LeaseId;
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;
use uuid::Uuid;

use crate::replicated::state::{Binding, Command};

/// A token's public id.
pub type Accessor = Uuid;

/// SHA-256 of a token's secret: all the cluster keeps of it.
pub type SecretHash = [u8; 32];

/// The part of a secret's hash the token table is indexed by; the whole hash is then
/// compared in constant time.
type LookupKey = [u8; 16];

fn lookup_key(hash: &SecretHash) -> LookupKey {
    let mut key = [0; 16];
    key.copy_from_slice(&hash[..16]);
    key
}

/// A token as the cluster stores it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    pub accessor: Accessor,
    pub secret_hash: SecretHash,
    pub description: String,
    /// Shared with the callers resolved to this token, so a request copies no rules.
    pub rules: Arc<[Rule]>,
    /// Every permission, whatever the rules say.
    pub management: bool,
    pub create_index: u64,
    pub created_at_ms: u64,
    /// Replicated time after which the token no longer works; `None`: until revoked.
    pub expires_at_ms: Option<u64>,
}

impl TokenRecord {
    /// Whether the token is in force at `now_ms`.
    pub fn live_at(&self, now_ms: u64) -> bool {
        self.expires_at_ms.is_none_or(|end| now_ms < end)
    }
}

/// A token to make: the edge picks the accessor and secret and sends only its hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewToken {
    pub accessor: Accessor,
    pub secret_hash: SecretHash,
    pub description: String,
    pub rules: Vec<Rule>,
    pub management: bool,
    pub ttl_ms: Option<u64>,
}

/// A replicated ACL command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AclCommand {
    /// Make the first management token; refused once the cluster is bootstrapped.
    Bootstrap(NewToken),
    CreateToken(NewToken),
    RevokeToken(Accessor),
    /// Forget tokens whose time ran out (the leader's housekeeping).
    Purge(Vec<Accessor>),
}

/// What an [`AclCommand`] did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AclOutcome {
    Created(TokenRecord),
    AlreadyBootstrapped,
    /// An accessor or secret already in use (the edge draws them at random, so only a
    /// retried or forged command gets here); nothing changed.
    Duplicate,
    Revoked(TokenRecord),
    TokenNotFound(Accessor),
    Purged(Vec<Accessor>),
}

/// The replicated ACL data.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Acl {
    /// Set by the first bootstrap, never cleared: bootstrap works once per cluster.
    bootstrapped: bool,
    tokens: BTreeMap<Accessor, TokenRecord>,
    by_secret: BTreeMap<LookupKey, Accessor>,
    /// Leases made by a token. A lease not listed was made without one (anonymously, or
    /// with ACLs off): it belongs to the anonymous caller.
    lease_owners: imbl::OrdMap<LeaseId, Accessor>,
}

impl Acl {
    pub fn apply(&mut self, command: AclCommand, index: u64, now_ms: u64) -> AclOutcome {
        match command {
            AclCommand::Bootstrap(_) if self.bootstrapped => AclOutcome::AlreadyBootstrapped,
            AclCommand::Bootstrap(new) => {
                let outcome = self.create(new, index, now_ms);
                if matches!(outcome, AclOutcome::Created(_)) {
                    self.bootstrapped = true;
                }
                outcome
            }
            AclCommand::CreateToken(new) => self.create(new, index, now_ms),
            AclCommand::RevokeToken(accessor) => match self.remove(&accessor) {
                Some(record) => AclOutcome::Revoked(record),
                None => AclOutcome::TokenNotFound(accessor),
            },
            AclCommand::Purge(accessors) => {
                let expired: Vec<Accessor> = accessors
                    .into_iter()
                    .filter(|a| self.tokens.get(a).is_some_and(|t| !t.live_at(now_ms)))
                    .collect();
                let purged = expired
                    .into_iter()
                    .filter(|a| self.remove(a).is_some())
                    .collect();
                AclOutcome::Purged(purged)
            }
        }
    }

    fn create(&mut self, new: NewToken, index: u64, now_ms: u64) -> AclOutcome {
        let key = lookup_key(&new.secret_hash);
        if self.tokens.contains_key(&new.accessor) || self.by_secret.contains_key(&key) {
            return AclOutcome::Duplicate;
        }
        let record = TokenRecord {
            accessor: new.accessor,
            secret_hash: new.secret_hash,
            description: new.description,
            rules: new.rules.into(),
            management: new.management,
            create_index: index,
            created_at_ms: now_ms,
            expires_at_ms: new.ttl_ms.map(|ttl| now_ms.saturating_add(ttl)),
        };
        self.by_secret.insert(key, record.accessor);
        self.tokens.insert(record.accessor, record.clone());
        AclOutcome::Created(record)
    }

    fn remove(&mut self, accessor: &Accessor) -> Option<TokenRecord> {
        let record = self.tokens.remove(accessor)?;
        self.by_secret.remove(&lookup_key(&record.secret_hash));
        Some(record)
    }

    pub fn bootstrapped(&self) -> bool {
        self.bootstrapped
    }

    /// The token whose secret hashes to `hash`, if it exists and is in force at `now_ms`.
    pub fn authenticate(&self, hash: &SecretHash, now_ms: u64) -> Option<&TokenRecord> {
        let accessor = self.by_secret.get(&lookup_key(hash))?;
        let record = self.tokens.get(accessor)?;
        let same: bool = record.secret_hash.ct_eq(hash).into();
        (same && record.live_at(now_ms)).then_some(record)
    }

    pub fn token(&self, accessor: &Accessor) -> Option<&TokenRecord> {
        self.tokens.get(accessor)
    }

    pub fn tokens(&self) -> impl Iterator<Item = &TokenRecord> {
        self.tokens.values()
    }

    /// Tokens out of force at `now_ms`, at most `max` (for the leader to purge).
    pub fn expired(&self, now_ms: u64, max: usize) -> Vec<Accessor> {
        self.tokens
            .values()
            .filter(|t| !t.live_at(now_ms))
            .map(|t| t.accessor)
            .take(max)
            .collect()
    }

    /// The token that made `lease` (`None`: made without one).
    pub fn lease_owner(&self, lease: &LeaseId) -> Option<Accessor> {
        self.lease_owners.get(lease).copied()
    }

    pub(crate) fn own_lease(&mut self, lease: LeaseId, owner: Accessor) {
        self.lease_owners.insert(lease, owner);
    }

    pub(crate) fn lease_ended(&mut self, lease: &LeaseId) {
        self.lease_owners.remove(lease);
    }
}

/// Who is asking: what the edge learnt from the request's token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Principal {
    /// No token was presented.
    Anonymous,
    /// The token with this accessor.
    Token(Accessor),
}

/// What a caller may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rights {
    /// Everything: ACLs are off, or a management token.
    All,
    Rules(Arc<[Rule]>),
}

impl Rights {
    pub fn permits(&self, resource: Resource, name: &str, access: Access) -> bool {
        match self {
            Rights::All => true,
            Rights::Rules(rules) => rules.iter().any(|r| r.grants(resource, name, access)),
        }
    }

    /// Whether any name of `resource` could be granted `access` (a list is filtered to
    /// the names that are; with none at all it is refused).
    pub fn permits_some(&self, resource: Resource, access: Access) -> bool {
        match self {
            Rights::All => true,
            Rights::Rules(rules) => rules
                .iter()
                .any(|r| r.resource == resource && r.access >= access),
        }
    }

    /// Whether the caller may write to anything at all (a lease is only worth making to
    /// bind something the caller may write).
    fn writes_anything(&self) -> bool {
        match self {
            Rights::All => true,
            Rights::Rules(rules) => rules.iter().any(|r| r.access == Access::Write),
        }
    }
}

/// A caller resolved against the ACL state: who, and what they may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub principal: Principal,
    pub rights: Rights,
}

impl Caller {
    /// The caller when ACLs are off: anyone may do anything.
    pub fn unrestricted() -> Self {
        Caller {
            principal: Principal::Anonymous,
            rights: Rights::All,
        }
    }

    pub fn accessor(&self) -> Option<Accessor> {
        match self.principal {
            Principal::Anonymous => None,
            Principal::Token(a) => Some(a),
        }
    }

    /// `Ok` if the caller may have `access` to `name` of `resource`.
    pub fn require(&self, resource: Resource, name: &str, access: Access) -> Result<(), Denied> {
        if self.rights.permits(resource, name, access) {
            return Ok(());
        }
        Err(self.denied(Need::Permission {
            resource,
            name: name.to_owned(),
            access,
        }))
    }

    /// `Ok` if the caller may see some names of `resource` (lists are filtered).
    pub fn require_some(&self, resource: Resource, access: Access) -> Result<(), Denied> {
        if self.rights.permits_some(resource, access) {
            return Ok(());
        }
        Err(self.denied(Need::Permission {
            resource,
            name: String::new(),
            access,
        }))
    }

    /// `Ok` if the caller made `lease` (see [`Acl::lease_owner`]) or has `lease:{access}`.
    pub fn require_lease(&self, acl: &Acl, lease: &LeaseId, access: Access) -> Result<(), Denied> {
        // A lease made without a token is the anonymous caller's, for as far as the
        // anonymous rules let it write at all.
        let owns = acl.lease_owner(lease) == self.accessor()
            && (self.accessor().is_some() || self.rights.writes_anything());
        if owns || self.rights.permits(Resource::Lease, "", access) {
            return Ok(());
        }
        Err(self.denied(Need::Lease(*lease, access)))
    }

    fn denied(&self, need: Need) -> Denied {
        Denied {
            anonymous: self.principal == Principal::Anonymous,
            need,
        }
    }
}

/// What a refused request would have needed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Need {
    /// `access` to `name` of `resource` (`name` empty: any name, for a list).
    Permission {
        resource: Resource,
        name: String,
        access: Access,
    },
    /// To own the lease, or `lease:{access}`.
    Lease(LeaseId, Access),
    /// Write access to something (to make a lease).
    AnyWrite,
    /// The command is the leader's own housekeeping: no request may send it.
    Internal,
    /// `cluster:write`, to run check `check` against `host`, which is not the instance's
    /// own address (so a registration cannot aim probes at any host it likes).
    CheckTarget { check: String, host: String },
}

/// A refusal: 401 for a caller without a token, 403 for a token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{}", describe(.need, *.anonymous))]
pub struct Denied {
    pub anonymous: bool,
    pub need: Need,
}

fn describe(need: &Need, anonymous: bool) -> String {
    let what = match need {
        Need::Permission {
            resource,
            name,
            access,
        } if !resource.has_names() => format!("{access} access to {resource}"),
        Need::Permission {
            resource,
            name,
            access,
        } if name.is_empty() => format!("{access} access to some {resource} names"),
        Need::Permission {
            resource,
            name,
            access,
        } => format!("{access} access to {resource} {name:?} ({resource}:{access})"),
        Need::Lease(id, access) => {
            format!("to own lease {id} (it was made with another token) or lease:{access} access")
        }
        Need::AnyWrite => "write access to something (to make a lease)".to_owned(),
        Need::Internal => "to be the leader (this command is internal)".to_owned(),
        Need::CheckTarget { check, host } => format!(
            "cluster:write access, which check {check:?} needs to probe {host:?}: a check may only probe the instance's own address otherwise"
        ),
    };
    if anonymous {
        format!("a token is required: this needs {what}; send Authorization: Bearer <secret>")
    } else {
        format!("the token lacks {what}")
    }
}

/// A node's ACL settings: whether ACLs are on, and what a caller without a token may do.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Authority {
    pub enabled: bool,
    /// Rules for requests without a token (`--acl-anonymous`); none: deny.
    pub anonymous: Arc<[Rule]>,
}

impl Authority {
    /// The caller `principal` is, against `acl`; `None` for a token the state does not
    /// know (revoked, expired, or never made).
    pub fn resolve(&self, acl: &Acl, principal: Principal, now_ms: u64) -> Option<Caller> {
        if !self.enabled {
            return Some(Caller {
                principal,
                rights: Rights::All,
            });
        }
        let rights = match principal {
            Principal::Anonymous => return Some(self.anonymous()),
            Principal::Token(accessor) => {
                let token = acl.token(&accessor).filter(|t| t.live_at(now_ms))?;
                if token.management {
                    Rights::All
                } else {
                    Rights::Rules(Arc::clone(&token.rules))
                }
            }
        };
        Some(Caller { principal, rights })
    }

    /// A caller without a token: the anonymous rules (everything with ACLs off).
    pub fn anonymous(&self) -> Caller {
        if !self.enabled {
            return Caller::unrestricted();
        }
        Caller {
            principal: Principal::Anonymous,
            rights: Rights::Rules(Arc::clone(&self.anonymous)),
        }
    }

    /// Whether `caller` may have `command` proposed: what the leader checks before
    /// proposing a request's command, whichever node took the request. Commands only the
    /// leader's own tasks make are refused to everyone, ACLs on or off.
    pub fn authorize(&self, acl: &Acl, caller: &Caller, command: &Command) -> Result<(), Denied> {
        let kind = |key: &locks::Key| match key.kind {
            locks::Kind::Lock => Resource::Lock,
            locks::Kind::Election => Resource::Election,
        };
        let write = Access::Write;
        match command {
            Command::Coordinate(cmd) => match cmd {
                locks::Command::GrantLease { .. } => {
                    if caller.rights.writes_anything() {
                        Ok(())
                    } else {
                        Err(caller.denied(Need::AnyWrite))
                    }
                }
                locks::Command::RevokeLease { id } => caller.require_lease(acl, id, write),
                locks::Command::Acquire(acquire) => {
                    caller.require(kind(&acquire.key), &acquire.key.name, write)?;
                    match &acquire.binding {
                        locks::Binding::Existing(id) => caller.require_lease(acl, id, write),
                        locks::Binding::Own { .. } => Ok(()),
                    }
                }
                locks::Command::Release { key, .. }
                | locks::Command::Proclaim { key, .. }
                | locks::Command::Withdraw { key, .. } => {
                    caller.require(kind(key), &key.name, write)
                }
                locks::Command::ExpireLeases { .. } | locks::Command::GrantDelayed { .. } => {
                    Err(caller.denied(Need::Internal))
                }
            },
            Command::Register { key, binding, spec } => {
                caller.require(Resource::Service, &key.0, write)?;
                if let Some(check) = spec.checks.iter().find(|c| !c.probe.targets(&spec.address)) {
                    if caller.require(Resource::Cluster, "", write).is_err() {
                        return Err(caller.denied(Need::CheckTarget {
                            check: check.name.clone(),
                            host: check.probe.host().to_owned(),
                        }));
                    }
                }
                match binding {
                    Binding::Existing(id) => caller.require_lease(acl, id, write),
                    Binding::Own { .. } | Binding::Unleased => Ok(()),
                }
            }
            Command::Deregister { key } | Command::SetStatus { key, .. } => {
                caller.require(Resource::Service, &key.0, write)
            }
            // Anyone may try; the state machine lets only the first one through.
            Command::Acl(AclCommand::Bootstrap(_)) => Ok(()),
            Command::Acl(AclCommand::CreateToken(_) | AclCommand::RevokeToken(_)) => {
                caller.require(Resource::Acl, "", write)
            }
            Command::Acl(AclCommand::Purge(_))
            | Command::Reap { .. }
            | Command::Owned { .. }
            | Command::InTerm { .. }
            | Command::CheckResults { .. }
            | Command::SetProbers { .. } => Err(caller.denied(Need::Internal)),
        }
    }
}

#[cfg(test)]
#[path = "acl_test.rs"]
mod tests;
