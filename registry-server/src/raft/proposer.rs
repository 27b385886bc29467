//! Group commit for client writes: many concurrent commands, one Raft entry.
//!
//! Handlers hand a [`Command`] to the [`Proposer`] and await its outcome. A driver task
//! takes every command waiting at that moment (up to [`MAX_BATCH`]), stamps them with
//! leader time ([`LeaderClock`]) into one [`Request`], and calls `client_write` once. openraft 0.9
//! appends (and fsyncs) one entry at a time, so this batching is what turns N concurrent
//! writes into one log append, one fsync and one replication round instead of N.
//! [`PIPELINE_DEPTH`] drivers run, so the next batch fills while one is being committed.
//!
//! **Invariant:** a caller waits at most the proposer's timeout for its command to
//! commit. A leader cut off from its quorum cannot commit, and openraft's `client_write`
//! then waits until leadership changes; the caller gets a [`LeaderError::Timeout`] (503
//! with `Retry-After`) instead of hanging, and the leader's own background tasks go on.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use openraft::error::{ClientWriteError, RaftError};
use tokio::sync::{mpsc, oneshot, Mutex};

use crate::leader::leader_time::LeaderClock;
use crate::raft::types::{LeaderError, NodeId, Raft, Request};
use crate::replicated::state::{Command, Outcome};

/// Most commands packed into one entry.
pub const MAX_BATCH: usize = 1024;

/// Batches in flight at once.
pub const PIPELINE_DEPTH: usize = 2;

/// Settings of the proposer.
#[derive(Debug, Clone, Copy)]
pub struct ProposerConfig {
    /// How long a caller waits for its command to commit.
    pub timeout: Duration,
    /// Most encoded command bytes in one entry (the first command of a batch is always
    /// taken): a quarter of the cluster's message limit, so that one entry always fits in
    /// an AppendEntries message.
    pub max_entry_bytes: u64,
    /// Most commands waiting for a driver; more are refused with
    /// [`LeaderError::Overloaded`].
    pub queue: usize,
}

impl LeaderError {
    /// A failed `client_write`: "not the leader" means nothing was appended.
    pub(crate) fn from_raft(
        e: RaftError<NodeId, ClientWriteError<NodeId, crate::raft::types::Node>>,
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
    tx: mpsc::Sender<Pending>,
    /// How long [`Proposer::propose`] waits for the commit.
    timeout: Duration,
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
    pub fn start(raft: Raft, config: ProposerConfig, time: LeaderClock) -> Self {
        let (tx, rx) = mpsc::channel(config.queue.max(1));
        let rx = Arc::new(Mutex::new(rx));
        for _ in 0..PIPELINE_DEPTH {
            tokio::spawn(drive(
                raft.clone(),
                time.clone(),
                rx.clone(),
                config.max_entry_bytes,
            ));
        }
        Self {
            tx,
            timeout: config.timeout,
        }
    }

    /// Commands waiting for a driver, and the most that may.
    pub fn queue(&self) -> (usize, usize) {
        let max = self.tx.max_capacity();
        (max - self.tx.capacity(), max)
    }

    /// Proposes one command on this node (which must be the leader) and waits until it
    /// is committed and applied; returns the entry's log index and the outcome. Gives up
    /// after the proposer's timeout with [`LeaderError::Timeout`]: the outcome is then
    /// unknown (the command may still commit).
    pub async fn propose(&self, command: Command) -> Result<(u64, Outcome), LeaderError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .try_send(Pending { command, reply })
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => LeaderError::Overloaded(format!(
                    "the leader has {} writes queued already; retry shortly",
                    self.tx.max_capacity()
                )),
                mpsc::error::TrySendError::Closed(_) => {
                    LeaderError::Unavailable("server is shutting down".into())
                }
            })?;
        match tokio::time::timeout(self.timeout, rx).await {
            Ok(answer) => answer.unwrap_or_else(|_| {
                Err(LeaderError::Unavailable("server is shutting down".into()))
            }),
            Err(_) => Err(LeaderError::Timeout(format!(
                "the write was not committed within {:?} (this leader may have lost its \
                 quorum); it may still take effect: retry, or read to check",
                self.timeout
            ))),
        }
    }
}

/// The encoded size of a command, as it will travel in an entry.
fn encoded_size(command: &Command) -> u64 {
    bincode::serialized_size(command).unwrap_or(0)
}

async fn drive(
    raft: Raft,
    time: LeaderClock,
    rx: Arc<Mutex<mpsc::Receiver<Pending>>>,
    max_bytes: u64,
) {
    // A command that did not fit in the previous batch starts the next one.
    let mut carried: Option<Pending> = None;
    loop {
        let batch = {
            let mut rx = rx.lock().await;
            let first = match carried.take() {
                Some(first) => first,
                None => match rx.recv().await {
                    Some(first) => first,
                    None => return,
                },
            };
            let mut bytes = encoded_size(&first.command);
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH && bytes < max_bytes {
                match rx.try_recv() {
                    Ok(p) => {
                        bytes += encoded_size(&p.command);
                        if bytes > max_bytes {
                            carried = Some(p);
                            break;
                        }
                        batch.push(p);
                    }
                    Err(_) => break,
                }
            }
            batch
        };
        let (commands, replies): (Vec<_>, Vec<_>) =
            batch.into_iter().map(|p| (p.command, p.reply)).unzip();
        // Anchor leader time as soon as this node leads a term (the app's tick may not have
        // come yet); a node that does not lead gets "not the leader" from client_write.
        let (now, wall) = (tokio::time::Instant::now(), wall_clock_ms());
        let leading = {
            let metrics = raft.metrics();
            let metrics = metrics.borrow();
            (metrics.state == openraft::ServerState::Leader).then_some(metrics.current_term)
        };
        if let Some(term) = leading {
            time.lead(term, now, wall);
        }
        let count = commands.len();
        let request = Request {
            now_ms: time.now_ms(now, wall),
            commands,
        };
        match raft.client_write(request).await {
            Ok(response) => {
                crate::metrics::batch_committed(count, now.elapsed());
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
