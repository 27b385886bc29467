//! Coalesced leadership confirmation (ReadIndex) for linearizable reads and keepalives.
//!
//! `Raft::ensure_linearizable` costs one heartbeat round to a quorum. Callers of
//! [`ReadBarrier::confirm`] join the next round; one round runs at a time, and each round
//! starts after every caller it answers had arrived, so its answer is as fresh as if each
//! caller had run its own round. Thousands of concurrent reads cost one round each
//! round-trip time, not one each.

use std::sync::{Arc, Mutex};

use openraft::error::{CheckIsLeaderError, RaftError};
use tokio::sync::oneshot;

use crate::raft::types::{LeaderError, Raft};

type Waiter = oneshot::Sender<Result<u64, LeaderError>>;

/// Rounds tried again after "not enough for a quorum" before a read answers 503: under
/// load a follower's heartbeat answer can miss the round while the leader still leads
/// (seen as a 503 in a flood of 600 blocking queries on a loaded 2-core machine).
const QUORUM_RETRIES: u32 = 3;
/// Pause before trying a round again.
const QUORUM_RETRY_PAUSE: std::time::Duration = std::time::Duration::from_millis(20);

#[derive(Default)]
struct Rounds {
    waiting: Vec<Waiter>,
    running: bool,
}

/// Cheap handle.
#[derive(Clone)]
pub struct ReadBarrier {
    raft: Raft,
    rounds: Arc<Mutex<Rounds>>,
}

impl std::fmt::Debug for ReadBarrier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadBarrier").finish_non_exhaustive()
    }
}

impl ReadBarrier {
    pub fn new(raft: Raft) -> Self {
        Self {
            raft,
            rounds: Arc::default(),
        }
    }

    /// Confirms this node is still the leader, after the call began, and that its state
    /// machine has applied everything committed before; returns that read index.
    pub async fn confirm(&self) -> Result<u64, LeaderError> {
        let (tx, rx) = oneshot::channel();
        let start = {
            let mut rounds = self.rounds.lock().unwrap_or_else(|e| e.into_inner());
            rounds.waiting.push(tx);
            !std::mem::replace(&mut rounds.running, true)
        };
        if start {
            tokio::spawn(self.clone().run());
        }
        rx.await
            .unwrap_or_else(|_| Err(LeaderError::Unavailable("shutting down".into())))
    }

    /// One confirmation, tried again up to [`QUORUM_RETRIES`] times when the quorum's
    /// answers did not all come back in time (a busy follower, not a lost leadership:
    /// each try is a whole new round, so a later success is as good as a first one).
    async fn round(&self) -> Result<u64, LeaderError> {
        let mut tries = 0;
        loop {
            tries += 1;
            return match self.raft.ensure_linearizable().await {
                Ok(log_id) => Ok(log_id.map_or(0, |l| l.index)),
                Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f))) => {
                    Err(LeaderError::NotLeader {
                        leader: f.leader_id.zip(f.leader_node.map(|n| n.addr)),
                    })
                }
                Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(_)))
                    if tries <= QUORUM_RETRIES =>
                {
                    tokio::time::sleep(QUORUM_RETRY_PAUSE).await;
                    continue;
                }
                Err(e) => Err(LeaderError::Unavailable(e.to_string())),
            };
        }
    }

    async fn run(self) {
        loop {
            let waiters = {
                let mut rounds = self.rounds.lock().unwrap_or_else(|e| e.into_inner());
                if rounds.waiting.is_empty() {
                    rounds.running = false;
                    return;
                }
                std::mem::take(&mut rounds.waiting)
            };
            let result = self.round().await;
            for waiter in waiters {
                let _ = waiter.send(result.clone());
            }
        }
    }
}
