//! Leases: granting, revoking, reading, and keepalives (instance heartbeats included).
//!
//! **Invariant:** a keepalive is not a Raft write. Only the leader holds deadlines; it
//! confirms its leadership with a quorum *after* the keepalive arrived, so a deposed
//! leader that has not noticed yet never accepts a keepalive the new leader will not hear
//! of (the new leader's countdown started at its election, after that confirmation, so it
//! ends later than the deadline set here).

use std::time::Duration;

use locks::{Lease, LeaseId};

use super::routing::KeepaliveTarget;
use super::{App, AppError, Consistency};
use crate::leader::lease_clock::KeepaliveError;
use crate::replicated::acl::Principal;
use crate::replicated::catalog::InstanceKey;
use crate::replicated::ops::{GrantLease, RevokeLease};
use api_spec::acl::Access;

impl App {
    /// Grants a new lease.
    pub async fn create_lease(&self, ttl: Duration) -> Result<(u64, Lease), AppError> {
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
        let id = LeaseId::new_v4();
        self.propose_op(GrantLease { id, ttl_ms }).await
    }

    /// Revokes a lease: its locks are released and its instances turn critical.
    pub async fn revoke_lease(&self, id: LeaseId) -> Result<(u64, Lease), AppError> {
        match self.propose_op(RevokeLease(id)).await? {
            (index, Some(lease)) => Ok((index, lease)),
            (_, None) => Err(AppError::LeaseNotFound(id)),
        }
    }

    /// Renews a lease on the leader; returns the lease and the time it now has left.
    pub async fn keepalive(&self, id: LeaseId) -> Result<(Lease, Duration), AppError> {
        self.renew(KeepaliveTarget::Lease(id)).await
    }

    /// Renews a registered instance's lease (its heartbeat).
    pub async fn heartbeat(&self, key: InstanceKey) -> Result<(Lease, Duration), AppError> {
        self.renew(KeepaliveTarget::Instance(key)).await
    }

    /// Reads a lease (after the read index); `remaining` is known only on the leader.
    pub async fn get_lease(
        &self,
        id: LeaseId,
        consistency: Consistency,
    ) -> Result<(u64, Lease, Option<Duration>), AppError> {
        let index = self.read_index(consistency).await?;
        self.require_lease(&id, Access::Read)?;
        let lease = self.inner.state.read().app.coordinator.lease(&id);
        let lease = lease.ok_or(AppError::LeaseNotFound(id))?;
        Ok((index, lease, self.inner.clock.remaining(&id)))
    }

    /// Renews a lease (or an instance's lease) on this node, which must be the leader,
    /// for `caller`: a lease's keepalive needs its owner or `lease:write`, a heartbeat
    /// `service:write` on the service.
    pub(super) async fn renew_here(
        &self,
        target: KeepaliveTarget,
        caller: Principal,
    ) -> Result<(Lease, Duration), AppError> {
        self.authorize_keepalive(&target, caller)?;
        self.inner.barrier.confirm().await?;
        self.observe_leadership();
        let id = match &target {
            KeepaliveTarget::Lease(id) => *id,
            KeepaliveTarget::Instance(key) => {
                match self.inner.state.read().app.catalog.instance(key) {
                    None => return Err(AppError::InstanceNotFound),
                    Some(r) if r.lease_ended => return Err(AppError::InstanceCritical),
                    Some(r) => r.lease.ok_or(AppError::InstanceUnleased)?,
                }
            }
        };
        // A lease that is gone or going; for an instance, both mean "register again".
        let ended = |expired: bool| match target {
            KeepaliveTarget::Lease(id) if expired => AppError::LeaseExpired(id),
            KeepaliveTarget::Lease(id) => AppError::LeaseNotFound(id),
            KeepaliveTarget::Instance(_) => AppError::InstanceCritical,
        };
        match self.inner.clock.keepalive(&id) {
            Ok(remaining) => match self.inner.state.read().app.coordinator.lease(&id) {
                Some(lease) => {
                    crate::metrics::keepalive();
                    Ok((lease, remaining))
                }
                None => Err(ended(false)),
            },
            Err(KeepaliveError::NotFound) => Err(ended(false)),
            Err(KeepaliveError::Expired) => Err(ended(true)),
            Err(KeepaliveError::NotLeader) => Err(AppError::NotLeader {
                leader: self.leader(),
            }),
        }
    }
}
