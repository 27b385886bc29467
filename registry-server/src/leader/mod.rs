//! What only the leader runs, in its memory: lease deadlines on its monotonic clock
//! ([`lease_clock`]) and expiry storm protection ([`storm`]).
//!
//! **Invariant:** nothing here is replicated or persisted. A new leader rebuilds it from
//! the replicated state, restarting every lease's countdown at its full TTL, so a
//! failover can delay an expiry by up to one TTL but never hasten one.

pub mod lease_clock;
pub mod storm;
