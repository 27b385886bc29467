//! Raft plumbing: openraft's type configuration ([`types`]), the RocksDB log and the
//! in-memory state machine with its snapshots ([`store`]), group commit of client
//! writes ([`proposer`]), coalesced leadership confirmation ([`read_barrier`]) and the
//! node-to-node HTTP transport ([`network`]).
//!
//! **Invariant:** nothing here knows what a request means: commands are opaque
//! `replicated::state::Command`s, and the application decides what to propose.
//! **Invariant:** an append is acknowledged to openraft only after the RocksDB WAL is
//! synced.

pub mod network;
pub mod proposer;
pub mod read_barrier;
pub mod store;
pub mod types;
