//! What the application can answer instead of a result. `crate::http::error` maps each
//! variant to a status and a stable code; the forwarding call carries them between nodes
//! unchanged, so a follower answers exactly what the leader answered.

use locks::LeaseId;
use serde::{Deserialize, Serialize};

use crate::raft::types::NodeId;
use crate::replicated::catalog::CatalogError;

/// Errors the application reports.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum AppError {
    /// No leader could be found within the leader wait.
    #[error("no leader is known; retry shortly")]
    NoLeader,
    /// The node asked is not the leader; nothing was done there. Carries the leader it
    /// believes in, if any: "try X". Routing follows it; it reaches a client only as
    /// [`AppError::NoLeader`]'s answer.
    #[error("not the leader")]
    NotLeader { leader: Option<(NodeId, String)> },
    #[error("lease {0} not found")]
    LeaseNotFound(LeaseId),
    #[error("lease {0} has expired")]
    LeaseExpired(LeaseId),
    #[error("no such instance is registered; register it")]
    InstanceNotFound,
    #[error("the instance's lease has ended (it is critical); register it again")]
    InstanceCritical,
    /// A heartbeat for an instance that has no lease: its checks keep it registered.
    #[error("the instance has no lease to renew: it is kept registered by its active checks, which the cluster runs; it needs no heartbeats")]
    InstanceUnleased,
    #[error("member {0} is not part of the cluster")]
    MemberNotFound(NodeId),
    #[error("{0}")]
    MembershipConflict(String),
    #[error("{}", held_message(key, state))]
    LockHeld {
        key: locks::Key,
        state: Box<locks::LockState>,
    },
    #[error("{} is not the current holder's token", token_subject(key))]
    TokenMismatch {
        key: locks::Key,
        state: Box<locks::LockState>,
    },
    #[error("{} has {} waiters already; retry later", key_subject(.0), locks::MAX_WAITERS)]
    QueueFull(locks::Key),
    /// Too many writes are queued on the leader (503 `overloaded`, retry).
    #[error("{0}")]
    Overloaded(String),
    /// This node holds as many blocking queries or waiting requests as it allows (429).
    #[error("{0}")]
    TooManyWaiters(String),
    /// A forwarded command the leader's own check of the input rules refuses (400).
    #[error("{0}")]
    Invalid(String),
    /// No token, or one the cluster does not know, where one is needed (401).
    #[error("{0}")]
    Unauthenticated(String),
    /// The caller may not do this (401 without a token, 403 with one).
    #[error("{0}")]
    Denied(crate::replicated::acl::Denied),
    #[error("ACLs are off on this server; start every server with --acl to use tokens")]
    AclDisabled,
    #[error("the cluster's ACLs are bootstrapped already; bootstrap works once")]
    AclBootstrapped,
    #[error("no token has accessor {0}")]
    TokenNotFound(uuid::Uuid),
    /// The write was handed to Raft but not committed in time: its outcome is unknown.
    #[error("{0}")]
    Timeout(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Internal(String),
}

impl AppError {
    /// Whether a write that failed this way certainly did nothing. A timeout, an
    /// unavailable or stopping node, or an internal error leave the outcome unknown (the
    /// write may have committed, or may still). Every other error is a refusal: by a node
    /// that does not lead (openraft appends nothing then, and an entry it took back from
    /// its log can only commit before the next leader's first entry), by a full queue, or
    /// by the state machine, which changed nothing.
    pub fn nothing_done(&self) -> bool {
        !matches!(
            self,
            AppError::Timeout(_) | AppError::Unavailable(_) | AppError::Internal(_)
        )
    }
}

fn key_subject(key: &locks::Key) -> String {
    match key.kind {
        locks::Kind::Lock => format!("lock {:?}", key.name),
        locks::Kind::Election => format!("election {:?}", key.name),
    }
}

fn token_subject(key: &locks::Key) -> String {
    format!("the token given for {}", key_subject(key))
}

fn held_message(key: &locks::Key, state: &locks::LockState) -> String {
    let subject = key_subject(key);
    match (&state.holder, key.kind) {
        (Some(hold), locks::Kind::Lock) => {
            format!(
                "{subject} is held by {:?} (token {})",
                hold.holder, hold.token
            )
        }
        (Some(hold), locks::Kind::Election) => {
            format!(
                "{subject} is led by {:?} (token {})",
                hold.holder, hold.token
            )
        }
        (None, _) if state.delay_until_ms.is_some() => {
            format!("{subject} is in its lock-delay after its holder's lease expired")
        }
        (None, _) => format!("{subject} has waiters ahead of this request"),
    }
}

impl From<CatalogError> for AppError {
    fn from(e: CatalogError) -> Self {
        match e {
            CatalogError::InstanceNotFound => AppError::InstanceNotFound,
            CatalogError::InstanceCritical => AppError::InstanceCritical,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_refusals_count_as_nothing_done() {
        let unknown = [
            AppError::Timeout("not committed in time".into()),
            AppError::Unavailable("stopping".into()),
            AppError::Internal("mismatch".into()),
        ];
        for e in unknown {
            assert!(!e.nothing_done(), "{e:?} may still commit");
        }
        let refused = [
            AppError::NotLeader { leader: None },
            AppError::Overloaded("queue full".into()),
            AppError::LeaseNotFound(LeaseId::from_u128(1)),
        ];
        for e in refused {
            assert!(e.nothing_done(), "{e:?} changed nothing");
        }
    }
}
