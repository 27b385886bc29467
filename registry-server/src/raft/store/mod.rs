//! Durable storage: the Raft log in RocksDB and the in-memory state machine with its
//! snapshots on disk.

pub mod backup;
pub mod format;
pub mod log;
pub mod snapshot_file;
pub mod state_machine;
