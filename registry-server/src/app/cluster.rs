//! The cluster: its status as this node sees it, and membership changes (which run on
//! the leader, forwarded there like every other leader operation).

use std::collections::BTreeSet;
use std::time::Duration;

use api_spec::acl::{Access, Resource};
use api_spec::Role;
use openraft::error::{ClientWriteError, RaftError};
use openraft::{ChangeMembers, ServerState};

use super::routing::Forward;
use super::{App, AppError};
use crate::raft::types::{Node, NodeId};

/// How long adding a server waits for it to catch up before answering.
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(30);

/// A member as this node knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberInfo {
    pub id: NodeId,
    pub addr: String,
    pub voter: bool,
    pub role: Role,
}

/// Expiry storm protection on the leader.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StormInfo {
    /// Off with `--no-expiry-storm-protection`.
    pub enabled: bool,
    /// The services whose expiries it holds back now.
    pub active: Vec<String>,
    /// Expiries it deferred since this node started.
    pub deferred_total: u64,
}

/// The cluster as this node sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterInfo {
    pub node_id: NodeId,
    pub role: Role,
    pub leader: Option<NodeId>,
    pub leader_addr: Option<String>,
    pub term: u64,
    pub last_log_index: u64,
    pub commit_index: u64,
    pub applied_index: u64,
    pub snapshot_index: Option<u64>,
    pub purged_index: Option<u64>,
    pub members: Vec<MemberInfo>,
    /// On the leader: storm protection's state.
    pub expiry_storm: Option<StormInfo>,
    /// What this node holds against its limits.
    pub limits: super::LimitsInfo,
    /// The servers that run active checks.
    pub probers: Vec<NodeId>,
}

impl App {
    /// The cluster's status as this node sees it.
    pub fn cluster_status(&self) -> ClusterInfo {
        let metrics = self.inner.raft.metrics().borrow().clone();
        let membership = metrics.membership_config.membership();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        let members = membership
            .nodes()
            .map(|(id, node)| {
                let voter = voters.contains(id);
                let role = if metrics.current_leader == Some(*id) {
                    Role::Leader
                } else if voter {
                    Role::Follower
                } else {
                    Role::Learner
                };
                MemberInfo {
                    id: *id,
                    addr: node.addr.clone(),
                    voter,
                    role,
                }
            })
            .collect();
        let applied = metrics.last_applied.map_or(0, |l| l.index);
        // The leader knows the commit index from its followers' progress: the highest
        // index a majority of voters have. Others report what they applied.
        let commit_index = match &metrics.replication {
            Some(replication) => {
                let mut matched: Vec<u64> = voters
                    .iter()
                    .map(|id| {
                        if *id == self.inner.id {
                            metrics.last_log_index.unwrap_or(0)
                        } else {
                            replication
                                .get(id)
                                .and_then(|m| m.map(|l| l.index))
                                .unwrap_or(0)
                        }
                    })
                    .collect();
                matched.sort_unstable_by(|a, b| b.cmp(a));
                matched
                    .get(matched.len() / 2)
                    .copied()
                    .unwrap_or(applied)
                    .max(applied)
            }
            None => applied,
        };
        ClusterInfo {
            node_id: self.inner.id,
            role: role_of(metrics.state, voters.contains(&self.inner.id)),
            leader: metrics.current_leader,
            leader_addr: metrics
                .current_leader
                .and_then(|id| membership.get_node(&id).map(|n| n.addr.clone())),
            term: metrics.current_term,
            last_log_index: metrics.last_log_index.unwrap_or(0),
            commit_index,
            applied_index: applied,
            snapshot_index: metrics.snapshot.map(|l| l.index),
            purged_index: metrics.purged.map(|l| l.index),
            members,
            expiry_storm: (metrics.state == ServerState::Leader).then(|| {
                let storm = self.storm();
                StormInfo {
                    enabled: storm.enabled(),
                    active: storm.active(),
                    deferred_total: storm.deferred_total(),
                }
            }),
            limits: self.limits(),
            probers: self.probers(),
        }
    }

    /// `GET /v1/cluster`: the cluster's status, for a caller with `cluster:read`.
    pub fn cluster(&self) -> Result<ClusterInfo, AppError> {
        self.require(Resource::Cluster, "", Access::Read)?;
        Ok(self.cluster_status())
    }

    /// The Prometheus exposition of this node (`GET /metrics`): needs `cluster:read`
    /// unless the server runs with `--metrics-public`.
    pub fn metrics_text(&self) -> Result<String, AppError> {
        if !self.inner.metrics_public {
            self.require(Resource::Cluster, "", Access::Read)?;
        }
        Ok(crate::metrics::render(self))
    }

    /// A backup of the state (`GET /v1/snapshot`, needs `cluster:write`): after a
    /// linearizable read index, so it holds every write acknowledged before the call.
    pub async fn backup(&self) -> Result<(api_spec::backup::BackupSummary, Vec<u8>), AppError> {
        self.require(Resource::Cluster, "", Access::Write)?;
        self.read_index(super::Consistency::Linearizable).await?;
        let state = self.inner.state.clone();
        let id = self.inner.id;
        let now_ms = crate::raft::proposer::wall_clock_ms();
        tokio::task::spawn_blocking(move || crate::raft::store::backup::backup(&state, id, now_ms))
            .await
            .map_err(|e| AppError::Internal(format!("backup: {e}")))?
            .map_err(|e| AppError::Internal(format!("backup: {e}")))
    }

    /// Adds a server: as a learner that catches up, then (unless `learner`) a voter.
    /// Runs on the leader; returns the index the last change committed at. Needs
    /// `cluster:write`; without a cluster secret only a loopback address may join (the
    /// leader would send it everything, unauthenticated).
    pub async fn add_member(
        &self,
        id: NodeId,
        addr: String,
        learner: bool,
    ) -> Result<u64, AppError> {
        self.require(Resource::Cluster, "", Access::Write)?;
        self.require_authenticated_peer(&addr)?;
        let index = self
            .change_membership(Forward::AddMember { id, addr, learner })
            .await?;
        self.settle(index).await;
        Ok(index)
    }

    /// Removes a server (voter or learner). Runs on the leader. Needs `cluster:write`.
    pub async fn remove_member(&self, id: NodeId) -> Result<u64, AppError> {
        self.require(Resource::Cluster, "", Access::Write)?;
        let index = self.change_membership(Forward::RemoveMember(id)).await?;
        self.settle(index).await;
        Ok(index)
    }

    /// Lets this node catch up to a committed membership change, so the members it then
    /// shows include it. Best effort: a removed server may never hear of its removal, and
    /// the change committed either way.
    async fn settle(&self, index: u64) {
        if let Err(e) = self.wait_applied(index).await {
            tracing::debug!(index, error = %e, "membership change committed; not yet applied here");
        }
    }

    /// Every member (learners included) with its address, as this node last heard.
    pub fn members(&self) -> Vec<(NodeId, String)> {
        let metrics = self.inner.raft.metrics();
        let metrics = metrics.borrow();
        metrics
            .membership_config
            .membership()
            .nodes()
            .map(|(id, node)| (*id, node.addr.clone()))
            .collect()
    }

    /// The address of every member (learners included).
    pub fn member_addrs(&self) -> Vec<String> {
        self.members().into_iter().map(|(_, addr)| addr).collect()
    }

    /// Without a cluster secret, refuses a member the leader would reach over a network
    /// (it would send Raft traffic to it, and accept the same from anyone).
    fn require_authenticated_peer(&self, addr: &str) -> Result<(), AppError> {
        if self.inner.peers_authenticated || crate::config::is_loopback(addr) {
            return Ok(());
        }
        Err(AppError::MembershipConflict(format!(
            "this cluster has no cluster secret and no --tls-ca, so only loopback members may be \
             added, not {addr}: restart every server with --cluster-secret (or \
             REGISTRY_CLUSTER_SECRET), or with TLS certificates and --tls-ca, first"
        )))
    }

    pub(super) async fn add_member_here(
        &self,
        id: NodeId,
        addr: String,
        learner: bool,
    ) -> Result<u64, AppError> {
        self.require_authenticated_peer(&addr)?;
        let raft = &self.inner.raft;
        let catch_up = raft.add_learner(id, Node { addr: addr.clone() }, true);
        let response = tokio::time::timeout(CATCH_UP_TIMEOUT, catch_up)
            .await
            .map_err(|_| {
                AppError::Unavailable(format!(
                    "server {id} at {addr} was added as a learner but did not catch up within \
                     {CATCH_UP_TIMEOUT:?}; check that it runs and is reachable, then retry \
                     (or remove it)"
                ))
            })?
            .map_err(membership_error)?;
        let mut index = response.log_id.index;
        if !learner {
            let response = raft
                .change_membership(ChangeMembers::AddVoterIds([id].into()), false)
                .await
                .map_err(membership_error)?;
            index = response.log_id.index;
        }
        Ok(index)
    }

    pub(super) async fn remove_member_here(&self, id: NodeId) -> Result<u64, AppError> {
        let metrics = self.inner.raft.metrics().borrow().clone();
        if metrics.current_leader != Some(self.inner.id) {
            return Err(AppError::NotLeader {
                leader: self.leader(),
            });
        }
        let membership = metrics.membership_config.membership();
        if membership.get_node(&id).is_none() {
            return Err(AppError::MemberNotFound(id));
        }
        let change = if membership.voter_ids().any(|v| v == id) {
            ChangeMembers::RemoveVoters([id].into())
        } else {
            ChangeMembers::RemoveNodes([id].into())
        };
        let response = self
            .inner
            .raft
            .change_membership(change, false)
            .await
            .map_err(membership_error)?;
        Ok(response.log_id.index)
    }
}

fn role_of(state: ServerState, voter: bool) -> Role {
    match state {
        ServerState::Leader => Role::Leader,
        ServerState::Candidate => Role::Candidate,
        ServerState::Shutdown => Role::Shutdown,
        ServerState::Follower if voter => Role::Follower,
        ServerState::Follower | ServerState::Learner => Role::Learner,
    }
}

fn membership_error(e: RaftError<NodeId, ClientWriteError<NodeId, Node>>) -> AppError {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => AppError::NotLeader {
            leader: f.leader_id.zip(f.leader_node.map(|n| n.addr)),
        },
        RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => {
            AppError::MembershipConflict(e.to_string())
        }
        RaftError::Fatal(f) => AppError::Unavailable(f.to_string()),
    }
}
