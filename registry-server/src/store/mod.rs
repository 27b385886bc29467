//! Durable storage: the Raft log in RocksDB and the in-memory state machine with its
//! snapshots on disk.

pub mod log;
pub mod state_machine;
