//! What only the leader runs, in its memory: lease deadlines on its monotonic clock
//! ([`lease_clock`]), expiry storm protection ([`storm`]), and leader time
//! ([`leader_time`]), which it stamps entries with and checks lock-delays and reaps
//! against.
//!
//! **Invariant:** nothing here is replicated or persisted. A new leader rebuilds it from
//! the replicated state, restarting every lease's countdown at its full TTL, so a
//! failover can delay an expiry by up to one TTL but never hasten one.

pub mod leader_time;
pub mod lease_clock;
pub mod storm;
