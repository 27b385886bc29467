//! Group commit for client writes: many concurrent commands, one Raft entry.
//!
//! Handlers hand a [`Command`] to the [`Proposer`] and await its outcome. A driver task
//! takes every command waiting at that moment (up to [`MAX_BATCH`]), stamps them with
//! leader time ([`LeaderClock`]) into one [`Request`], and calls `client_write` once. openraft 0.9
//! appends (and fsyncs) one entry at a time, so this batching is what turns N concurrent
//! writes into one log append, one fsync and one replication round instead of N.
//! [`PIPELINE_DEPTH`] drivers run, so the next batch fills while one is being committed.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use openraft::error::{ClientWriteError, RaftError};
use tokio::sync::{mpsc, oneshot, Mutex};

use crate::leader_time::LeaderClock;
use crate::state::{Command, Outcome};
use crate::types::{LeaderError, NodeId, Raft, Request};

/// Most commands packed into one entry.
pub const MAX_BATCH: usize = 1024;

/// Batches in flight at once.
pub const PIPELINE_DEPTH: usize = 2;

impl LeaderError {
    /// A failed `client_write`: "not the leader" means nothing was appended.
    pub(crate) fn from_raft(
        e: RaftError<NodeId, ClientWriteError<NodeId, crate::types::Node>>,
    ) -> Self {
        match e {
            RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => LeaderError::NotLeader {
                leader: f.leader_id.zip(f.leader_node.map(|n| n.addr)),
            },
            other => LeaderError::Unavailable(other.to_string()),
        }
    }
}

type Reply = oneshot::Sender<Result<(u64, Outcome), LeaderError>>;

struct Pending {
    command: Command,
    reply: Reply,
}

/// Handle to the batching drivers. Cheap to clone.
#[derive(Clone)]
pub struct Proposer {
    tx: mpsc::UnboundedSender<Pending>,
}

impl std::fmt::Debug for Proposer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proposer").finish_non_exhaustive()
    }
}

/// Milliseconds since the Unix epoch on this node's wall clock (an input of leader time).
pub fn wall_clock_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Proposer {
    /// Starts the drivers; they end when every `Proposer` handle is dropped.
    pub fn start(raft: Raft, time: LeaderClock) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let rx = Arc::new(Mutex::new(rx));
        for _ in 0..PIPELINE_DEPTH {
            tokio::spawn(drive(raft.clone(), time.clone(), rx.clone()));
        }
        Self { tx }
    }

    /// Proposes one command on this node (which must be the leader) and waits until it
    /// is committed and applied; returns the entry's log index and the outcome.
    pub async fn propose(&self, command: Command) -> Result<(u64, Outcome), LeaderError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Pending { command, reply })
            .map_err(|_| LeaderError::Unavailable("server is shutting down".into()))?;
        rx.await
            .unwrap_or_else(|_| Err(LeaderError::Unavailable("server is shutting down".into())))
    }
}

async fn drive(raft: Raft, time: LeaderClock, rx: Arc<Mutex<mpsc::UnboundedReceiver<Pending>>>) {
    loop {
        let batch = {
            let mut rx = rx.lock().await;
            let Some(first) = rx.recv().await else { return };
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(p) => batch.push(p),
                    Err(_) => break,
                }
            }
            batch
        };
        let (commands, replies): (Vec<_>, Vec<_>) =
            batch.into_iter().map(|p| (p.command, p.reply)).unzip();
        let request = Request {
            now_ms: time.now_ms(tokio::time::Instant::now(), wall_clock_ms()),
            commands,
        };
        match raft.client_write(request).await {
            Ok(response) => {
                let index = response.log_id.index;
                let mut outcomes = response.data.outcomes.into_iter();
                for reply in replies {
                    let result = outcomes.next().map(|o| (index, o)).ok_or_else(|| {
                        LeaderError::Unavailable("state machine returned too few outcomes".into())
                    });
                    let _ = reply.send(result);
                }
            }
            Err(e) => {
                let error = LeaderError::from_raft(e);
                for reply in replies {
                    let _ = reply.send(Err(error.clone()));
                }
            }
        }
    }
}
