//! The openraft type configuration and the replicated log entry payload.
//!
//! One log entry carries a [`Request`]: every command the proposer collected while the
//! previous entry was in flight, stamped with the leader's wall-clock time. Batching is
//! what lets many concurrent writes share one Raft round and one fsync.

use std::io::Cursor;

use serde::{Deserialize, Serialize};

use crate::replicated::state::{Command, Outcome};

/// Node ids are the `--node-id` numbers.
pub type NodeId = u64;

/// A member's address book entry: its advertised `host:port`.
pub type Node = openraft::BasicNode;

openraft::declare_raft_types!(
    /// The registry's openraft type configuration.
    pub TypeConfig:
        D = Request,
        R = Response,
        NodeId = NodeId,
        Node = Node,
);

/// The running Raft node.
pub type Raft = openraft::Raft<TypeConfig>;

/// The payload of one normal log entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    /// The proposing leader's wall clock, ms since the Unix epoch. The state machine uses
    /// this instead of reading a clock, so every replica computes the same state.
    pub now_ms: u64,
    /// The commands, applied in order.
    pub commands: Vec<Command>,
}

/// What applying a [`Request`] produced: one outcome per command, in order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response {
    pub outcomes: Vec<Outcome>,
}

/// Why something that must run on the leader did not run here.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LeaderError {
    /// This node is not the leader; nothing was done. Carries the leader if known.
    #[error("not the leader")]
    NotLeader { leader: Option<(NodeId, String)> },
    /// The command was handed to Raft but not committed in time (no quorum?): its
    /// outcome is unknown, it may still take effect.
    #[error("{0}")]
    Timeout(String),
    /// The node is stopping, has no quorum, or the outcome is unknown.
    #[error("{0}")]
    Unavailable(String),
    /// The proposer's queue is full: nothing was done.
    #[error("{0}")]
    Overloaded(String),
}
