//! The registry server as a library: the binary in `main.rs` is a thin wrapper, and tests
//! can build the router or run a whole server in-process.
//!
//! See `ARCHITECTURE.md` at the repository root for the map of these modules.

pub mod app;
pub mod catalog;
pub mod config;
pub mod http;
pub mod leader_time;
pub mod lease_clock;
pub mod network;
pub mod proposer;
pub mod read_barrier;
pub mod server;
pub mod state;
pub mod store;
pub mod storm;
pub mod types;
pub mod validate;
pub mod watch;
