//! What every read shares: the consistency a client asked for and blocking queries.
//!
//! **Invariant:** a blocking query subscribes to its watch *before* it takes the read
//! index, so a change applied in between still wakes it; and a watcher of one service,
//! lock or election is woken only by changes to that one.

use std::time::Duration;

use tokio::time::Instant;

use super::{App, AppError};
use crate::replicated::state::AppState;

/// A blocking query's condition: answer once the index moves past `index`, or after
/// `wait` (already capped and jittered by the caller). `index` 0 answers at once, as in
/// Consul: a client that has seen nothing yet has nothing to wait for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Block {
    pub index: u64,
    pub wait: Duration,
}

/// Read consistency requested by a client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Consistency {
    /// ReadIndex through the leader (the default).
    Linearizable,
    /// Whatever this node has applied (`?stale`).
    Stale,
}

impl App {
    /// Waits, for a blocking query, until `index_of(state)` moves past `block.index` or the
    /// wait runs out; `watch` must have been subscribed before the read index was taken.
    /// A query that would wait takes one of the node's blocking-query slots first, and is
    /// refused with [`AppError::TooManyWaiters`] when there is none.
    pub(super) async fn block_until(
        &self,
        mut watch: tokio::sync::watch::Receiver<u64>,
        block: Option<Block>,
        index_of: impl Fn(&AppState) -> u64,
    ) -> Result<(), AppError> {
        let Some(block) = block else { return Ok(()) };
        if block.index == 0 || index_of(&self.inner.state.read().app) > block.index {
            return Ok(());
        }
        let _slot = self.inner.limits.blocking.take()?;
        let deadline = Instant::now() + block.wait;
        loop {
            watch.borrow_and_update();
            if index_of(&self.inner.state.read().app) > block.index {
                return Ok(());
            }
            tokio::select! {
                changed = watch.changed() => if changed.is_err() { return Ok(()) },
                _ = tokio::time::sleep_until(deadline) => return Ok(()),
            }
        }
    }
}
