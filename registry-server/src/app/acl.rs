//! Access control in the application: who a request comes from, what it may do, and the
//! token routes.
//!
//! A request's token is resolved on the node that takes it, from that node's memory
//! ([`App::authenticate`]); the [`App`] handle the request then uses acts for that caller
//! ([`App::acting_for`]). Reads are checked here, on that node. Writes are checked again on
//! the leader, against the state the write applies to ([`App::authorize`]), whichever node
//! took the request: a token revoked, or a lease owned by someone else, is refused there
//! even when the node that took the request had not heard yet.
//!
//! **Invariant:** no check here waits for Raft, except when a presented secret is unknown
//! to this node: then it catches up with the leader once (the token may be newer than what
//! it applied) before answering 401.

use std::sync::Arc;
use std::time::Duration;

use api_spec::acl::{Access, Resource};
use futures::future::join_all;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::routing::{Forward, KeepaliveTarget};
use super::{App, AppError, Consistency};
use crate::raft::proposer::wall_clock_ms;
use crate::raft::types::NodeId;
use crate::replicated::acl::{
    Acl, AclCommand, AclOutcome, Caller, Denied, NewToken, Principal, SecretHash, TokenRecord,
};
use crate::replicated::ops::Acl as AclOp;
use crate::replicated::state::Command;

/// How long a revoke waits for every member to confirm it applied it.
const REVOKE_CONFIRM_TIMEOUT: Duration = Duration::from_secs(5);

/// Most expired tokens one entry purges.
const PURGE_BATCH: usize = 1_000;

/// SHA-256 of a secret: what the cluster stores and looks tokens up by.
pub fn hash_secret(secret: &str) -> SecretHash {
    Sha256::digest(secret.as_bytes()).into()
}

/// A fresh secret: two random UUIDs (244 random bits) in hex.
fn new_secret() -> String {
    format!("{}{}", Uuid::new_v4().simple(), Uuid::new_v4().simple())
}

/// A token to make, with the secret to show its maker once.
#[derive(Debug, Clone)]
pub struct TokenSpec {
    pub description: String,
    pub rules: Vec<api_spec::acl::Rule>,
    pub management: bool,
    pub ttl: Option<Duration>,
}

impl App {
    /// Whether this node enforces ACLs (`--acl`).
    pub fn acl_enabled(&self) -> bool {
        self.inner.authority.enabled
    }

    /// The caller this handle acts for.
    pub fn caller(&self) -> &Caller {
        &self.caller
    }

    /// A handle acting for `caller`: what it proposes is checked on the leader as theirs,
    /// what it reads is checked here.
    pub fn acting_for(&self, caller: Arc<Caller>) -> App {
        App {
            inner: self.inner.clone(),
            caller,
        }
    }

    /// Who a request comes from, given the secret it presented (if any). With ACLs off,
    /// everyone may do everything and tokens are not looked at.
    pub async fn authenticate(&self, secret: Option<&str>) -> Result<Arc<Caller>, AppError> {
        let secret = match secret {
            Some(secret) if self.inner.authority.enabled => secret,
            _ => return Ok(self.inner.anonymous.clone()),
        };
        let hash = hash_secret(secret);
        if let Some(caller) = self.caller_by_secret(&hash) {
            return Ok(Arc::new(caller));
        }
        // Perhaps made on the leader a moment ago: catch up once, then decide.
        self.read_index(Consistency::Linearizable).await?;
        self.caller_by_secret(&hash).map(Arc::new).ok_or_else(|| {
            AppError::Unauthenticated(
                "the token is not valid: it was never made, or was revoked, or expired".into(),
            )
        })
    }

    fn caller_by_secret(&self, hash: &SecretHash) -> Option<Caller> {
        let now_ms = wall_clock_ms();
        let state = self.inner.state.read();
        let acl = &state.app.acl;
        let token = acl.authenticate(hash, now_ms)?;
        self.inner
            .authority
            .resolve(acl, Principal::Token(token.accessor), now_ms)
    }

    /// `Ok` if this handle's caller may have `access` to `name` of `resource`.
    pub fn require(&self, resource: Resource, name: &str, access: Access) -> Result<(), AppError> {
        Ok(self.caller.require(resource, name, access)?)
    }

    /// Whether this handle's caller may have `access` to `name` of `resource`.
    pub fn permits(&self, resource: Resource, name: &str, access: Access) -> bool {
        self.caller.rights.permits(resource, name, access)
    }

    /// `Ok` if this handle's caller made `lease` or has `lease:{access}`.
    pub(super) fn require_lease(
        &self,
        lease: &locks::LeaseId,
        access: Access,
    ) -> Result<(), AppError> {
        let state = self.inner.state.read();
        Ok(self.caller.require_lease(&state.app.acl, lease, access)?)
    }

    /// On the leader: resolves `principal` against the current state, checks that it may
    /// have `command` proposed, and returns the command to propose (a token's command is
    /// marked as its own, so the leases it grants belong to it).
    pub(super) fn authorize(
        &self,
        principal: Principal,
        command: Command,
    ) -> Result<Command, AppError> {
        let state = self.inner.state.read();
        let acl = &state.app.acl;
        let caller = self.resolve_here(acl, principal)?;
        self.inner.authority.authorize(acl, &caller, &command)?;
        Ok(match principal {
            Principal::Token(owner) if self.inner.authority.enabled => Command::Owned {
                owner,
                command: Box::new(command),
            },
            _ => command,
        })
    }

    /// On the leader: whether `principal` may renew `target`: a lease needs its owner or
    /// `lease:write`, an instance's heartbeat `service:write` on its service.
    pub(super) fn authorize_keepalive(
        &self,
        target: &KeepaliveTarget,
        principal: Principal,
    ) -> Result<(), AppError> {
        // Every heartbeat comes through here: with ACLs off there is nothing to look up.
        if !self.inner.authority.enabled {
            return Ok(());
        }
        let state = self.inner.state.read();
        let acl = &state.app.acl;
        let caller = self.resolve_here(acl, principal)?;
        match target {
            KeepaliveTarget::Lease(id) => caller.require_lease(acl, id, Access::Write)?,
            KeepaliveTarget::Instance(key) => {
                caller.require(Resource::Service, &key.0, Access::Write)?
            }
        }
        Ok(())
    }

    /// The caller `principal` is by this node's state: the check the leader makes of what
    /// another node sends it.
    fn resolve_here(&self, acl: &Acl, principal: Principal) -> Result<Caller, AppError> {
        self.inner
            .authority
            .resolve(acl, principal, wall_clock_ms())
            .ok_or_else(|| AppError::Unauthenticated("the token was revoked or expired".into()))
    }

    /// `POST /v1/acl/bootstrap`: makes the first management token, once per cluster.
    pub async fn bootstrap_acl(&self) -> Result<(String, TokenRecord), AppError> {
        self.require_acl_enabled()?;
        let secret = new_secret();
        let bootstrap = bootstrap(&secret, "bootstrap management token");
        match self.propose_op(bootstrap).await? {
            (_, AclOutcome::Created(record)) => {
                tracing::info!(accessor = %record.accessor, "ACLs bootstrapped");
                Ok((secret, record))
            }
            (_, AclOutcome::AlreadyBootstrapped) => Err(AppError::AclBootstrapped),
            (_, other) => Err(acl_mismatch(other)),
        }
    }

    /// On the leader, when `REGISTRY_ACL_BOOTSTRAP_TOKEN` is set: bootstraps with that
    /// secret unless the cluster is bootstrapped already. Retried at each tick until done.
    pub(super) async fn bootstrap_from_config(&self) {
        let Some(secret) = self.inner.bootstrap_secret.as_deref() else {
            return;
        };
        if !self.acl_enabled() || self.inner.state.read().app.acl.bootstrapped() {
            return;
        }
        let bootstrap = bootstrap(
            secret,
            "bootstrap management token (set by the server's configuration)",
        );
        match self.propose_here(bootstrap).await {
            Ok((_, AclOutcome::Created(record))) => tracing::info!(
                accessor = %record.accessor,
                "ACLs bootstrapped with the configured token"
            ),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "ACL bootstrap not committed; will retry"),
        }
    }

    /// On the leader: forgets tokens whose TTL passed.
    pub(super) async fn purge_expired_tokens(&self, now_ms: u64) {
        let expired = self.inner.state.read().app.acl.expired(now_ms, PURGE_BATCH);
        if expired.is_empty() {
            return;
        }
        match self.propose_here(AclOp(AclCommand::Purge(expired))).await {
            Ok((index, AclOutcome::Purged(gone))) if !gone.is_empty() => {
                tracing::info!(index, tokens = gone.len(), "expired tokens purged");
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, "purging expired tokens not committed; will retry")
            }
        }
    }

    /// `POST /v1/acl/tokens`: makes a token; answers its secret (shown only now).
    pub async fn create_token(&self, spec: TokenSpec) -> Result<(String, TokenRecord), AppError> {
        self.require_acl_enabled()?;
        self.require(Resource::Acl, "", Access::Write)?;
        let secret = new_secret();
        let new = NewToken {
            accessor: Uuid::new_v4(),
            secret_hash: hash_secret(&secret),
            description: spec.description,
            rules: spec.rules,
            management: spec.management,
            ttl_ms: spec
                .ttl
                .map(|ttl| u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX)),
        };
        match self.propose_op(AclOp(AclCommand::CreateToken(new))).await? {
            (_, AclOutcome::Created(record)) => Ok((secret, record)),
            (_, other) => Err(acl_mismatch(other)),
        }
    }

    /// `GET /v1/acl/tokens`: every token (never a secret), after the read index.
    pub async fn tokens(
        &self,
        consistency: Consistency,
    ) -> Result<(u64, Vec<TokenRecord>), AppError> {
        self.require_acl_enabled()?;
        self.require(Resource::Acl, "", Access::Read)?;
        let index = self.read_index(consistency).await?;
        let state = self.inner.state.read();
        Ok((index, state.app.acl.tokens().cloned().collect()))
    }

    /// `GET /v1/acl/tokens/self`: the caller's own token.
    pub fn own_token(&self) -> Result<TokenRecord, AppError> {
        self.require_acl_enabled()?;
        let Some(accessor) = self.caller.accessor() else {
            return Err(AppError::Unauthenticated(
                "no token was given: send Authorization: Bearer <secret>".into(),
            ));
        };
        let state = self.inner.state.read();
        state
            .app
            .acl
            .token(&accessor)
            .cloned()
            .ok_or_else(|| AppError::Unauthenticated("the token was revoked".into()))
    }

    /// `DELETE /v1/acl/tokens/{accessor}`: revokes a token, then waits until every member
    /// has applied the revoke (so none accepts the token any more); answers the members
    /// that had not confirmed within [`REVOKE_CONFIRM_TIMEOUT`].
    pub async fn revoke_token(
        &self,
        accessor: Uuid,
    ) -> Result<(u64, TokenRecord, Vec<NodeId>), AppError> {
        self.require_acl_enabled()?;
        self.require(Resource::Acl, "", Access::Write)?;
        let (index, record) = match self
            .propose_op(AclOp(AclCommand::RevokeToken(accessor)))
            .await?
        {
            (index, AclOutcome::Revoked(record)) => (index, record),
            (_, AclOutcome::TokenNotFound(a)) => return Err(AppError::TokenNotFound(a)),
            (_, other) => return Err(acl_mismatch(other)),
        };
        self.wait_applied(index).await?;
        let unconfirmed = self.confirm_everywhere(index).await;
        if !unconfirmed.is_empty() {
            tracing::warn!(
                %accessor, index, members = ?unconfirmed,
                "token revoked; these members have not confirmed applying the revoke yet"
            );
        }
        Ok((index, record, unconfirmed))
    }

    /// Asks every other member to confirm it applied `index`; answers those that did not
    /// within [`REVOKE_CONFIRM_TIMEOUT`].
    async fn confirm_everywhere(&self, index: u64) -> Vec<NodeId> {
        let members: Vec<(NodeId, String)> = self
            .members()
            .into_iter()
            .filter(|(id, _)| *id != self.inner.id)
            .collect();
        let asks = members.iter().map(|(id, addr)| async move {
            let op = Forward::AwaitApplied(index);
            let ask = self.forward_to(addr, &op);
            match tokio::time::timeout(REVOKE_CONFIRM_TIMEOUT, ask).await {
                Ok(Ok(_)) => None,
                _ => Some(*id),
            }
        });
        join_all(asks).await.into_iter().flatten().collect()
    }

    fn require_acl_enabled(&self) -> Result<(), AppError> {
        if self.acl_enabled() {
            Ok(())
        } else {
            Err(AppError::AclDisabled)
        }
    }
}

impl From<Denied> for AppError {
    fn from(denied: Denied) -> Self {
        AppError::Denied(denied)
    }
}

/// The bootstrap of a management token with `secret`.
fn bootstrap(secret: &str, description: &str) -> AclOp {
    AclOp(AclCommand::Bootstrap(NewToken {
        accessor: Uuid::new_v4(),
        secret_hash: hash_secret(secret),
        description: description.to_owned(),
        rules: Vec::new(),
        management: true,
        ttl_ms: None,
    }))
}

fn acl_mismatch(outcome: AclOutcome) -> AppError {
    AppError::Internal(format!("unexpected ACL outcome {outcome:?}"))
}
