//! One lock's (or election's) replicated state: its holder, its FIFO queue of waiters and
//! its lock-delay.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use crate::{LeaseId, Ticket};

/// A grant: who holds the lock, under which lease, with which fencing token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hold {
    /// The request that was granted (so a parked request recognises its grant).
    pub ticket: Ticket,
    /// The fencing token: strictly greater than every token granted before it.
    pub token: u64,
    /// The lease the hold is bound to; the hold ends when the lease does.
    pub lease: LeaseId,
    /// The lease was made for this lock: releasing the lock revokes it.
    pub own_lease: bool,
    /// Free text shown to others (an election's value).
    pub holder: String,
    /// Delay before the lock is granted again if this holder's lease expires.
    pub lock_delay_ms: u64,
    /// Index of the entry that granted it.
    pub granted_index: u64,
    /// Leader's wall-clock stamp on that entry (ms since the Unix epoch).
    pub granted_at_ms: u64,
}

/// A request waiting in a lock's queue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Waiter {
    pub ticket: Ticket,
    pub lease: LeaseId,
    pub own_lease: bool,
    pub holder: String,
    pub lock_delay_ms: u64,
    /// Index of the entry that queued it.
    pub queued_index: u64,
    /// Leader's wall-clock stamp on that entry.
    pub queued_at_ms: u64,
}

/// A lock that is held, has waiters, or is in its lock-delay.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockState {
    pub holder: Option<Hold>,
    /// Waiters in arrival order; the front one is granted next.
    pub waiters: VecDeque<Waiter>,
    /// After the holder's lease expired: no grant before this leader time (ms since the
    /// Unix epoch).
    pub delay_until_ms: Option<u64>,
    /// Index of the last entry that changed this lock.
    pub modify_index: u64,
}

impl LockState {
    /// Nobody holds, waits for or delays the lock: it needs no entry.
    pub fn is_free(&self) -> bool {
        self.holder.is_none() && self.waiters.is_empty() && self.delay_until_ms.is_none()
    }
}
