//! Node-to-node RPC: openraft's `RaftNetwork` over HTTP with bincode bodies, and the
//! internal calls a follower makes to the leader (forwarded writes, keepalives, read
//! indexes).
//!
//! Every internal route lives under `/internal/`; bodies are bincode (compact, no JSON
//! escaping of log entries), requests go through one pooled keep-alive reqwest client.
//! Snapshots travel in openraft's chunks (`snapshot_max_chunk_size`), so a large state
//! never needs one huge request.

use std::collections::BTreeMap;
use std::time::Duration;

use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::state::{Command, Outcome};
use crate::types::{Node, NodeId, TypeConfig};

/// Content type of every internal request and response body.
pub const BINCODE: &str = "application/x-bincode";

/// Header carrying the cluster secret on internal requests (when one is configured).
pub const SECRET_HEADER: &str = "x-registry-cluster-secret";

/// Internal routes.
pub mod paths {
    pub const APPEND: &str = "/internal/raft/append";
    pub const VOTE: &str = "/internal/raft/vote";
    pub const SNAPSHOT: &str = "/internal/raft/snapshot";
    pub const PROPOSE: &str = "/internal/propose";
    pub const KEEPALIVE: &str = "/internal/keepalive";
    pub const READ_INDEX: &str = "/internal/read-index";
}

/// Why a call to a peer failed.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    /// The peer could not be reached (connection refused, reset before sending): the
    /// request certainly did not take effect.
    #[error("peer {addr} unreachable: {source}")]
    Unreachable {
        addr: String,
        source: reqwest::Error,
    },
    /// The peer answered with an HTTP error (wrong cluster secret, undecodable request):
    /// it cannot serve this node's calls until someone fixes the configuration.
    #[error("peer {addr} refused the call: {status}: {body}")]
    Rejected {
        addr: String,
        status: u16,
        body: String,
    },
    /// The request may or may not have reached the peer (timeout, broken response).
    #[error("call to peer {addr} failed: {message}")]
    Failed { addr: String, message: String },
}

/// A pooled HTTP client for node-to-node calls. Cheap to clone.
#[derive(Clone)]
pub struct PeerClient {
    http: reqwest::Client,
    /// Sent with every internal call; peers refuse internal calls without it.
    secret: Option<String>,
    /// `--peer-via`: peer address -> the address its traffic goes to.
    routes: std::sync::Arc<BTreeMap<String, String>>,
}

impl std::fmt::Debug for PeerClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerClient")
            .field("secret", &self.secret.as_ref().map(|_| "***"))
            .finish()
    }
}

impl PeerClient {
    pub fn new(secret: Option<String>, routes: BTreeMap<String, String>) -> Self {
        let http = reqwest::Client::builder()
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(64)
            .tcp_nodelay(true)
            .connect_timeout(Duration::from_secs(2))
            .build()
            .unwrap_or_default();
        Self {
            http,
            secret,
            routes: std::sync::Arc::new(routes),
        }
    }

    /// Where traffic for the peer at `addr` goes: its `--peer-via` route, or `addr`.
    pub fn route<'a>(&'a self, addr: &'a str) -> &'a str {
        self.routes.get(addr).map_or(addr, String::as_str)
    }

    /// The underlying client, for relaying public requests to the leader.
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// POSTs `body` in bincode to `addr` + `path` and decodes a bincode answer.
    pub async fn call<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        addr: &str,
        path: &str,
        body: &Req,
        timeout: Duration,
    ) -> Result<Resp, PeerError> {
        let failed = |message: String| PeerError::Failed {
            addr: addr.to_owned(),
            message,
        };
        let bytes = bincode::serialize(body).map_err(|e| failed(e.to_string()))?;
        let mut request = self.http.post(format!("http://{}{path}", self.route(addr)));
        if let Some(secret) = &self.secret {
            request = request.header(SECRET_HEADER, secret);
        }
        let response = request
            .header(reqwest::header::CONTENT_TYPE, BINCODE)
            .timeout(timeout)
            .body(bytes)
            .send()
            .await
            .map_err(|e| {
                if e.is_connect() {
                    PeerError::Unreachable {
                        addr: addr.to_owned(),
                        source: e,
                    }
                } else {
                    failed(e.to_string())
                }
            })?;
        let status = response.status();
        let bytes = response.bytes().await.map_err(|e| failed(e.to_string()))?;
        if !status.is_success() {
            return Err(failed(format!(
                "{status}: {}",
                String::from_utf8_lossy(&bytes)
            )));
        }
        bincode::deserialize(&bytes).map_err(|e| failed(format!("undecodable answer: {e}")))
    }
}

/// A write forwarded from a follower to the leader.
#[derive(Debug, Serialize, Deserialize)]
pub struct ProposeRequest {
    pub command: Command,
}

/// What a keepalive renews: a lease, or the lease of a registered instance (heartbeat).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum KeepaliveTarget {
    Lease(locks::LeaseId),
    Instance(crate::catalog::InstanceKey),
}

/// A keepalive forwarded from a follower to the leader.
#[derive(Debug, Serialize, Deserialize)]
pub struct KeepaliveRequest {
    pub target: KeepaliveTarget,
}

/// The leader's answer to a forwarded keepalive.
#[derive(Debug, Serialize, Deserialize)]
pub enum KeepaliveAnswer {
    /// Renewed: the lease and its new time remaining in ms.
    Renewed {
        lease: locks::Lease,
        remaining_ms: u64,
    },
    NotFound,
    /// Its deadline passed; the expiry is being committed.
    Expired,
    /// Heartbeat for an instance that is not registered.
    InstanceNotFound,
    /// Heartbeat for an instance whose lease has ended.
    InstanceCritical,
    NotLeader {
        leader: Option<(NodeId, String)>,
    },
    Unavailable(String),
}

/// The leader's answer to a forwarded write.
#[derive(Debug, Serialize, Deserialize)]
pub enum ProposeAnswer {
    /// Committed and applied at `index`.
    Applied { index: u64, outcome: Box<Outcome> },
    /// The answering node is not the leader (it names the leader if it knows one).
    /// The command was not appended.
    NotLeader { leader: Option<(NodeId, String)> },
    /// The outcome is unknown (e.g. leadership lost after appending).
    Unavailable(String),
}

/// The leader's answer to a read-index request.
#[derive(Debug, Serialize, Deserialize)]
pub enum ReadIndexAnswer {
    /// The follower may serve a linearizable read once it has applied `index`.
    Index(u64),
    NotLeader {
        leader: Option<(NodeId, String)>,
    },
    Unavailable(String),
}

/// Makes one [`Connection`] per target; all share the pooled client.
#[derive(Debug, Clone)]
pub struct Network {
    pub client: PeerClient,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Connection;

    async fn new_client(&mut self, target: NodeId, node: &Node) -> Self::Network {
        Connection {
            target,
            addr: node.addr.clone(),
            client: self.client.clone(),
        }
    }
}

/// openraft's connection to one peer.
#[derive(Debug)]
pub struct Connection {
    target: NodeId,
    addr: String,
    client: PeerClient,
}

impl Connection {
    async fn rpc<Req, Resp, E>(
        &self,
        path: &str,
        req: &Req,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<NodeId, Node, RaftError<NodeId, E>>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let answer: Result<Resp, RaftError<NodeId, E>> = self
            .client
            .call(&self.addr, path, req, option.hard_ttl())
            .await
            .map_err(|e| match e {
                // openraft backs off from unreachable peers instead of retrying at once;
                // a peer that refuses our calls is no more useful than an unreachable one.
                PeerError::Unreachable { .. } | PeerError::Rejected { .. } => {
                    RPCError::Unreachable(Unreachable::new(&e))
                }
                PeerError::Failed { .. } => RPCError::Network(NetworkError::new(&e)),
            })?;
        answer.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<TypeConfig> for Connection {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, Node, RaftError<NodeId>>> {
        self.rpc(paths::APPEND, &rpc, &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, Node, RaftError<NodeId, InstallSnapshotError>>,
    > {
        self.rpc(paths::SNAPSHOT, &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, Node, RaftError<NodeId>>> {
        self.rpc(paths::VOTE, &rpc, &option).await
    }
}
