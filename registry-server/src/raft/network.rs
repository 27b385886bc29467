//! Node-to-node RPC: openraft's `RaftNetwork` over HTTP with bincode bodies, and the
//! pooled client the application's one forwarding call (`app::Forward`) goes through.
//!
//! Every internal route lives under `/internal/`; bodies are bincode (compact, no JSON
//! escaping of log entries), requests go through one pooled keep-alive reqwest client.
//! Snapshots travel in openraft's chunks (`snapshot_max_chunk_size`), so a large state
//! never needs one huge request.
//!
//! **Invariant:** no internal request is larger than the cluster's message limit
//! ([`PeerClient::max_message`], `--raft-max-message-bytes`): an AppendEntries that would
//! be is answered `PayloadTooLarge` here, before sending, so openraft sends fewer entries
//! (as it does when a peer answers 413 because its limit is lower). A peer's 4xx is a
//! refusal ([`PeerError::Rejected`]), never "unreachable".

use std::collections::BTreeMap;
use std::time::Duration;

use openraft::error::{
    InstallSnapshotError, NetworkError, PayloadTooLarge, RPCError, RaftError, RemoteError,
    Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::raft::types::{Node, NodeId, TypeConfig};

/// Content type of every internal request and response body.
pub const BINCODE: &str = "application/x-bincode";

/// Header carrying the cluster secret on internal requests (when one is configured).
pub const SECRET_HEADER: &str = "x-registry-cluster-secret";

/// Internal routes.
pub mod paths {
    pub const APPEND: &str = "/internal/raft/append";
    pub const VOTE: &str = "/internal/raft/vote";
    pub const SNAPSHOT: &str = "/internal/raft/snapshot";
    /// The one call that runs an operation on the leader (`app::Forward`).
    pub const FORWARD: &str = "/internal/forward";
}

/// The default `--raft-max-message-bytes`: the largest internal request a node sends
/// or accepts.
pub const DEFAULT_MAX_MESSAGE: u64 = 64 * 1024 * 1024;

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
    /// The peer refused the call with a 4xx (wrong cluster secret, undecodable request,
    /// a body over its limit): it did not run it, and will not until something changes.
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
    /// The largest request body sent (and accepted, by the router) between nodes.
    max_message: usize,
    /// `https` when the cluster runs TLS (`--tls-cert`), `http` otherwise.
    scheme: &'static str,
    /// How each peer answered Raft calls lately: for the leader's last-contact metric,
    /// and to log a peer that stops answering once, not at every retry.
    contacts: std::sync::Arc<std::sync::Mutex<BTreeMap<NodeId, Contact>>>,
}

/// What this node knows of one peer's answers to its Raft calls.
#[derive(Debug, Clone, Copy)]
struct Contact {
    /// The last call the peer answered.
    answered: Option<std::time::Instant>,
    /// Since when calls fail, if the last one did.
    failing_since: Option<std::time::Instant>,
    /// When a failure was last logged.
    logged: std::time::Instant,
    /// Calls failed since the last log line.
    failures: u64,
}

/// How often a peer that keeps failing is logged again.
const FAILING_LOG_EVERY: Duration = Duration::from_secs(60);

impl std::fmt::Debug for PeerClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerClient")
            .field("secret", &self.secret.as_ref().map(|_| "***"))
            .finish()
    }
}

impl PeerClient {
    pub fn new(
        secret: Option<String>,
        routes: BTreeMap<String, String>,
        max_message: usize,
        tls: Option<rustls::ClientConfig>,
    ) -> Result<Self, reqwest::Error> {
        let scheme = if tls.is_some() { "https" } else { "http" };
        let mut http = reqwest::Client::builder();
        if let Some(tls) = tls {
            // Peers' certificates checked against `--tls-ca`, this server's own as its
            // client certificate (`crate::tls`).
            http = http.use_preconfigured_tls(tls).https_only(true);
        }
        let http = http
            // Well under a peer's idle timeout (`--http-idle-timeout`, 2 s on a shared
            // listener's peer reserve): a pooled connection is dropped here before the
            // peer closes it, so no call is sent on a connection being closed.
            .pool_idle_timeout(Duration::from_secs(1))
            .pool_max_idle_per_host(64)
            .tcp_nodelay(true)
            .connect_timeout(Duration::from_secs(2))
            .build()?;
        Ok(Self {
            http,
            secret,
            routes: std::sync::Arc::new(routes),
            max_message,
            scheme,
            contacts: Default::default(),
        })
    }

    /// How long ago each peer last answered a Raft call (`None`: never, since start).
    pub fn contacts(&self) -> Vec<(NodeId, Option<Duration>)> {
        let contacts = self.contacts.lock().unwrap_or_else(|e| e.into_inner());
        contacts
            .iter()
            .map(|(id, c)| (*id, c.answered.map(|at| at.elapsed())))
            .collect()
    }

    /// Runs `f` on what is known of `peer`'s answers.
    fn with_contact(&self, peer: NodeId, f: impl FnOnce(&mut Contact, std::time::Instant)) {
        let now = std::time::Instant::now();
        let mut contacts = self.contacts.lock().unwrap_or_else(|e| e.into_inner());
        let contact = contacts.entry(peer).or_insert(Contact {
            answered: None,
            failing_since: None,
            logged: now,
            failures: 0,
        });
        f(contact, now);
    }

    /// Notes that `peer` answered a Raft call; logs it if it had stopped answering.
    fn answered(&self, peer: NodeId, addr: &str) {
        self.with_contact(peer, |contact, now| {
            if let Some(since) = contact.failing_since.take() {
                tracing::info!(
                    peer, %addr,
                    "Raft calls to this peer succeed again, after {} of failures",
                    api_spec::format_duration(since.elapsed())
                );
            }
            contact.answered = Some(now);
            contact.failures = 0;
        });
    }

    /// Notes that a Raft call to `peer` failed; logs it when the peer was answering
    /// before, and then once a minute while it keeps failing (openraft's own line for each
    /// failed call is filtered out, see `main.rs`).
    fn failed(&self, peer: NodeId, addr: &str, error: &PeerError) {
        self.with_contact(peer, |contact, now| {
            contact.failures += 1;
            match contact.failing_since {
                None => {
                    contact.failing_since = Some(now);
                    contact.logged = now;
                    contact.failures = 0;
                    tracing::warn!(peer, %addr, %error, "Raft calls to this peer fail");
                }
                Some(since) if now.duration_since(contact.logged) >= FAILING_LOG_EVERY => {
                    tracing::warn!(
                        peer, %addr, %error,
                        failed_calls = contact.failures,
                        "Raft calls to this peer still fail, for {}",
                        api_spec::format_duration(since.elapsed())
                    );
                    contact.logged = now;
                    contact.failures = 0;
                }
                Some(_) => {}
            }
        });
    }

    /// The largest internal request body this node sends.
    pub fn max_message(&self) -> usize {
        self.max_message
    }

    /// Where traffic for the peer at `addr` goes: its `--peer-via` route, or `addr`.
    pub fn route<'a>(&'a self, addr: &'a str) -> &'a str {
        self.routes.get(addr).map_or(addr, String::as_str)
    }

    /// The underlying client, for the public call a joining server makes.
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
        let bytes = bincode::serialize(body).map_err(|e| PeerError::Failed {
            addr: addr.to_owned(),
            message: e.to_string(),
        })?;
        self.send(addr, path, bytes, timeout).await
    }

    /// POSTs an encoded body to `addr` + `path` and decodes a bincode answer.
    async fn send<Resp: DeserializeOwned>(
        &self,
        addr: &str,
        path: &str,
        bytes: Vec<u8>,
        timeout: Duration,
    ) -> Result<Resp, PeerError> {
        let failed = |message: String| PeerError::Failed {
            addr: addr.to_owned(),
            message,
        };
        let mut request = self
            .http
            .post(format!("{}://{}{path}", self.scheme, self.route(addr)));
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
        if status.is_client_error() {
            return Err(PeerError::Rejected {
                addr: addr.to_owned(),
                status: status.as_u16(),
                body: String::from_utf8_lossy(&bytes).chars().take(512).collect(),
            });
        }
        if !status.is_success() {
            return Err(failed(format!(
                "{status}: {}",
                String::from_utf8_lossy(&bytes)
            )));
        }
        bincode::deserialize(&bytes).map_err(|e| failed(format!("undecodable answer: {e}")))
    }
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

type RpcResult<Resp, E> = Result<Resp, RPCError<NodeId, Node, RaftError<NodeId, E>>>;

impl Connection {
    async fn rpc<Req, Resp, E>(
        &self,
        path: &str,
        req: &Req,
        option: &RPCOption,
    ) -> RpcResult<Resp, E>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let bytes =
            bincode::serialize(req).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        self.send(bytes, path, option, None).await
    }

    /// Sends an encoded request; `entries` (for AppendEntries) lets a 413 become
    /// `PayloadTooLarge`, so openraft retries with fewer entries.
    async fn send<Resp, E>(
        &self,
        bytes: Vec<u8>,
        path: &str,
        option: &RPCOption,
        entries: Option<usize>,
    ) -> RpcResult<Resp, E>
    where
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let sent = self
            .client
            .send(&self.addr, path, bytes, option.hard_ttl())
            .await;
        match &sent {
            Ok(_) => self.client.answered(self.target, &self.addr),
            Err(e) => self.client.failed(self.target, &self.addr, e),
        }
        let answer: Result<Resp, RaftError<NodeId, E>> = sent.map_err(|e| match (&e, entries) {
            (PeerError::Rejected { status: 413, .. }, Some(n)) if n > 1 => {
                RPCError::PayloadTooLarge(PayloadTooLarge::new_entries_hint(n as u64 / 2))
            }
            // openraft backs off from unreachable peers instead of retrying at once;
            // a peer that refuses our calls is no more useful than an unreachable one.
            (PeerError::Unreachable { .. } | PeerError::Rejected { .. }, _) => {
                RPCError::Unreachable(Unreachable::new(&e))
            }
            (PeerError::Failed { .. }, _) => RPCError::Network(NetworkError::new(&e)),
        })?;
        answer.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

/// How many of `entries` entries fit in `limit` bytes when `size` bytes hold them all
/// (at least one: a single entry is never larger than the limit, the proposer sees to it).
pub fn entries_hint(entries: usize, size: usize, limit: usize) -> u64 {
    let fit = (entries as u128 * limit as u128 / size.max(1) as u128) as u64;
    fit.clamp(1, entries.saturating_sub(1).max(1) as u64)
}

impl RaftNetwork<TypeConfig> for Connection {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, Node, RaftError<NodeId>>> {
        let entries = rpc.entries.len();
        let bytes =
            bincode::serialize(&rpc).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let limit = self.client.max_message;
        if bytes.len() > limit && entries > 1 {
            let hint = entries_hint(entries, bytes.len(), limit);
            tracing::debug!(
                entries,
                bytes = bytes.len(),
                limit,
                hint,
                "append too large; sending fewer entries"
            );
            return Err(RPCError::PayloadTooLarge(
                PayloadTooLarge::new_entries_hint(hint),
            ));
        }
        self.send(bytes, paths::APPEND, &option, Some(entries))
            .await
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
