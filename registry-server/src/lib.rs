//! The registry server as a library: the binary in `main.rs` is a thin wrapper, and tests
//! can build the router or run a whole server in-process.
//!
//! The folders are the layers, from the inside out (`ARCHITECTURE.md` at the repository
//! root has the map):
//! - `replicated/` — the pure replicated state (catalog + the `locks` core): no IO, no
//!   clock, no async;
//! - `raft/` — Raft plumbing: type config, log and state machine storage, group commit,
//!   read barriers, node-to-node network;
//! - `leader/` — what only the leader runs: lease deadlines, expiry storm protection;
//! - `app/` — the application: what each request does and where it runs;
//! - `http/` — the HTTP edge: routes, handlers, wire views, errors;
//! - `config`, `server` — flags and start-up; `validate` — client input checks;
//!   `watch` — where blocking queries and parked requests wait; `dns` — the DNS face of
//!   the catalog (`--dns-listen`).

pub mod app;
pub mod config;
pub mod dns;
pub mod health;
pub mod http;
pub mod leader;
pub mod listener;
pub mod metrics;
pub mod raft;
pub mod replicated;
pub mod server;
pub mod throttle;
pub mod tls;
pub mod validate;
pub mod watch;

/// Certificates made at test time (a CA, members', servers' and clients'), shared with
/// the client's TLS tests.
#[cfg(test)]
#[allow(dead_code)]
#[path = "../../registry-client/src/tls_test_support.rs"]
mod test_certs;
