//! The replicated application state: everything the Raft log builds, in memory.
//!
//! [`AppState::apply`] is deterministic and reads no clock; the leader's time arrives in
//! the entry. Leases live in the `locks` crate's [`locks::Coordinator`]; the catalog of
//! services will sit beside it.

use serde::{Deserialize, Serialize};

/// One replicated command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// A lease grant, revocation or expiry.
    Lease(locks::Command),
}

/// What one [`Command`] did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    Lease(locks::Outcome),
}

/// The state machine's application data (what snapshots contain besides Raft metadata).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppState {
    /// Leases (and later locks and elections).
    pub coordinator: locks::Coordinator,
}

impl AppState {
    /// Applies one command from the entry at `index`, stamped `now_ms` by the leader.
    pub fn apply(&mut self, command: Command, index: u64, now_ms: u64) -> Outcome {
        match command {
            Command::Lease(cmd) => Outcome::Lease(self.coordinator.apply(cmd, index, now_ms)),
        }
    }
}
