//! The client's error type, and how an error response body becomes one.

use api_spec::{ElectionInfo, ErrorBody, LockInfo};

/// Everything a [`crate::Client`] call can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The client was built with an empty endpoint list, so there is nobody to ask.
    #[error("no endpoints configured")]
    NoEndpoints,

    /// An endpoint is not `host:port`, `http://host:port` or `https://host:port`, or the
    /// endpoints do not agree on one scheme (see [`crate::ClientBuilder::build`]): found
    /// when the client is built rather than failing later.
    #[error("invalid endpoint {endpoint:?}: {reason}")]
    InvalidEndpoint {
        endpoint: String,
        reason: &'static str,
    },

    /// A TLS input given to the builder cannot be used: a CA bundle
    /// ([`crate::ClientBuilder::tls_ca_pem`]) with no certificate in it, or one that is not
    /// a certificate; a client certificate chain or private key
    /// ([`crate::ClientBuilder::tls_identity_pem`]) that is missing, unreadable,
    /// encrypted, or a key that does not belong to the certificate. Found by
    /// [`crate::ClientBuilder::build`], before anything is sent. The key itself never
    /// appears in the message.
    #[error("invalid {input}: {reason}")]
    InvalidTls { input: TlsInput, reason: String },

    /// The server answered with a non-success status.
    ///
    /// `code` is one of [`api_spec::codes`] when the body was a registry error body
    /// (`{"error":{"code","message"}}`). When it was not (say a proxy's HTML page), `code`
    /// is empty and `message` holds the start of the body, so nothing is silently lost.
    /// `conflict` is the lock or election the body described (with a `409`
    /// `lock_held`, `election_held` or `token_mismatch`); read it with [`Error::lock`]
    /// and [`Error::election`]. A request the registry's ACLs refuse is one too: `401`
    /// `unauthenticated` or `403` `permission_denied` ([`Error::is_unauthenticated`],
    /// [`Error::is_permission_denied`]), the message saying what was missing.
    #[error("{endpoint} answered {status} {code}: {message}")]
    Api {
        endpoint: String,
        status: u16,
        code: String,
        message: String,
        /// Boxed: it is rare and large, and every `Result` of the crate carries an
        /// `Error`'s size.
        conflict: Option<Box<Conflict>>,
    },

    /// The authentication header (from [`crate::ClientBuilder::token`] or
    /// [`crate::ClientBuilder::auth_header`]) cannot be sent: its name is not a header
    /// name, or its value holds a character headers cannot carry (a newline, say).
    /// Nothing was sent. The value is left out: it is a secret.
    #[error("cannot send the {name} header: {reason}")]
    InvalidHeader { name: String, reason: &'static str },

    /// The request could not be sent, or the answer could not be read (connection
    /// refused or reset, timeout). Carries the endpoint it happened on.
    #[error("transport error talking to {endpoint}: {}", chain(source))]
    Transport {
        endpoint: String,
        #[source]
        source: reqwest::Error,
    },

    /// A service was never fetched successfully, so the discovery cache has nothing to
    /// serve (once it has a list, it serves the last good one instead of failing).
    #[error("service {service:?} could not be fetched from the registry yet")]
    Unavailable { service: String },

    /// The service has no instance to pick (none registered, or none passes the filter).
    #[error("service {service:?} has no endpoint to pick")]
    NoEndpoint { service: String },

    /// A success answer whose body is not the JSON the API promises.
    #[error("could not decode the answer from {endpoint}: {source}")]
    Decode {
        endpoint: String,
        #[source]
        source: serde_json::Error,
    },

    /// A backup (`GET /v1/snapshot`) that arrived damaged: truncated, or not matching
    /// its checksum.
    #[error("the backup from {endpoint} {reason}")]
    InvalidBackup { endpoint: String, reason: String },
}

/// Which of the builder's TLS inputs an [`Error::InvalidTls`] is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsInput {
    /// The CA bundle of [`crate::ClientBuilder::tls_ca_pem`].
    CaCertificates,
    /// The certificate chain of [`crate::ClientBuilder::tls_identity_pem`].
    ClientCertificate,
    /// The private key of [`crate::ClientBuilder::tls_identity_pem`].
    ClientKey,
}

impl std::fmt::Display for TlsInput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TlsInput::CaCertificates => "TLS CA certificates",
            TlsInput::ClientCertificate => "TLS client certificate chain",
            TlsInput::ClientKey => "TLS client private key",
        })
    }
}

/// What an error body says about the lock or election a request conflicted with: who
/// holds it now, who waits. The server sends it with `409 lock_held`, `election_held`
/// and `token_mismatch`, so a caller can name the holder without another read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    /// The lock as it was when the server refused (on lock routes).
    pub lock: Option<LockInfo>,
    /// The election as it was when the server refused (on election routes).
    pub election: Option<ElectionInfo>,
}

impl Error {
    /// The HTTP status, for [`Error::Api`].
    pub fn status(&self) -> Option<u16> {
        match self {
            Error::Api { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The stable error code, for [`Error::Api`] with a registry error body.
    pub fn code(&self) -> Option<&str> {
        match self {
            Error::Api { code, .. } if !code.is_empty() => Some(code),
            _ => None,
        }
    }

    /// The lock the request conflicted with, as the server's error body showed it.
    pub fn lock(&self) -> Option<&LockInfo> {
        self.conflict()?.lock.as_ref()
    }

    /// The election the request conflicted with, as the server's error body showed it.
    pub fn election(&self) -> Option<&ElectionInfo> {
        self.conflict()?.election.as_ref()
    }

    fn conflict(&self) -> Option<&Conflict> {
        match self {
            Error::Api { conflict, .. } => conflict.as_deref(),
            _ => None,
        }
    }

    /// `true` when the lease does not exist (never did, was revoked, or expired).
    pub fn is_lease_not_found(&self) -> bool {
        self.code() == Some(api_spec::codes::LEASE_NOT_FOUND)
    }

    /// `true` when the registry wants a token it did not get: the request carried none,
    /// or one the cluster does not know (never made, revoked or expired). `401
    /// unauthenticated`.
    pub fn is_unauthenticated(&self) -> bool {
        self.code() == Some(api_spec::codes::UNAUTHENTICATED)
    }

    /// `true` when the request's token (or, without one, the anonymous rules) does not
    /// allow it; the message names the access it would need. `403 permission_denied`.
    pub fn is_permission_denied(&self) -> bool {
        self.code() == Some(api_spec::codes::PERMISSION_DENIED)
    }

    /// A copy of an [`Error::Api`], for handing one answer to several callers; `None`
    /// for the other kinds (a transport error's source cannot be copied).
    pub(crate) fn copy_api(&self) -> Option<Error> {
        match self {
            Error::Api {
                endpoint,
                status,
                code,
                message,
                conflict,
            } => Some(Error::Api {
                endpoint: endpoint.clone(),
                status: *status,
                code: code.clone(),
                message: message.clone(),
                conflict: conflict.clone(),
            }),
            _ => None,
        }
    }

    /// `true` for a transport error that TLS raised: the server's certificate is not
    /// trusted (not signed by the CA of [`crate::ClientBuilder::tls_ca_pem`], or by
    /// none of the built-in roots without one), not valid for the endpoint's host or
    /// expired; the server refused the client certificate, or wanted one and got none;
    /// or the other end does not speak TLS. Such an error is still
    /// [retryable](Self::is_retryable): another server may have a certificate that
    /// passes.
    pub fn is_tls(&self) -> bool {
        match self {
            Error::Transport { source, .. } => crate::tls::failure(source).is_some(),
            _ => false,
        }
    }

    /// `true` for errors that say nothing about the request itself and may well pass
    /// on another try: transport failures and 503 (no leader, shutting down).
    pub fn is_retryable(&self) -> bool {
        matches!(self, Error::Transport { .. }) || self.status() == Some(503)
    }
}

/// How much of a non-registry error body is kept in [`Error::Api::message`].
const MAX_FOREIGN_BODY: usize = 512;

/// Turns an error response into [`Error::Api`]. Never fails: a body that is not a
/// registry error body is kept (truncated) as the message with an empty code.
pub(crate) fn api_error(endpoint: &str, status: u16, body: &[u8]) -> Error {
    let (code, message, conflict) = match serde_json::from_slice::<ErrorBody>(body) {
        Ok(ErrorBody {
            error,
            lock,
            election,
        }) => {
            let conflict = (lock.is_some() || election.is_some())
                .then(|| Box::new(Conflict { lock, election }));
            (error.code, error.message, conflict)
        }
        Err(_) => {
            let text = String::from_utf8_lossy(body);
            let mut end = text.len().min(MAX_FOREIGN_BODY);
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            (String::new(), text[..end].to_owned(), None)
        }
    };
    Error::Api {
        endpoint: endpoint.to_owned(),
        status,
        code,
        message,
        conflict,
    }
}

/// An error and its sources, `outer: inner: innermost` (reqwest's own message leaves out
/// the cause, such as "connection refused").
pub(crate) fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_error_body_gives_code_and_message() {
        let body = br#"{"error":{"code":"lease_not_found","message":"no lease 42"}}"#;
        let err = api_error("127.0.0.1:1", 404, body);
        assert_eq!(err.status(), Some(404));
        assert_eq!(err.code(), Some("lease_not_found"));
        assert!(err.is_lease_not_found());
        assert!(!err.is_retryable());
        match err {
            Error::Api { message, .. } => assert_eq!(message, "no lease 42"),
            other => panic!("expected Api, got {other:?}"),
        }
    }

    #[test]
    fn foreign_body_is_kept_with_an_empty_code() {
        let err = api_error("127.0.0.1:1", 502, b"<html>Bad Gateway</html>");
        assert_eq!(err.code(), None);
        match err {
            Error::Api {
                status,
                code,
                message,
                ..
            } => {
                assert_eq!(status, 502);
                assert_eq!(code, "");
                assert_eq!(message, "<html>Bad Gateway</html>");
            }
            other => panic!("expected Api, got {other:?}"),
        }
    }

    #[test]
    fn long_foreign_body_is_truncated_on_a_char_boundary() {
        // 'é' is two bytes, so byte MAX_FOREIGN_BODY falls inside a character.
        let body = format!("a{}", "é".repeat(MAX_FOREIGN_BODY));
        let err = api_error("127.0.0.1:1", 500, body.as_bytes());
        match err {
            Error::Api { message, .. } => {
                assert!(message.len() < MAX_FOREIGN_BODY);
                assert!(body.starts_with(&message));
            }
            other => panic!("expected Api, got {other:?}"),
        }
    }

    #[test]
    fn lock_held_body_keeps_the_lock_as_the_server_showed_it() {
        let body = br#"{
            "error": {"code": "lock_held", "message": "lock job is held"},
            "lock": {
                "name": "job", "held": true,
                "holder": {"holder": "host-a/17", "token": 42,
                           "lease": "6f1e1c1e-0000-4000-8000-000000000001",
                           "own_lease": true, "lock_delay_ms": 1000,
                           "granted_index": 41, "granted_at_ms": 1700000000000},
                "waiters": [{"holder": "host-b/18",
                             "lease": "6f1e1c1e-0000-4000-8000-000000000002",
                             "queued_index": 43, "queued_at_ms": 1700000000500}],
                "modify_index": 43
            }
        }"#;
        let err = api_error("127.0.0.1:1", 409, body);
        assert_eq!(err.code(), Some(api_spec::codes::LOCK_HELD));
        let lock = err.lock().expect("the lock from the body");
        let holder = lock.holder.as_ref().expect("a holder");
        assert_eq!(
            (lock.name.as_str(), holder.holder.as_str()),
            ("job", "host-a/17")
        );
        assert_eq!(holder.token, Some(42));
        assert_eq!(lock.waiters.len(), 1);
        assert_eq!(lock.waiters[0].holder, "host-b/18");
        assert!(err.election().is_none());
        match &err {
            Error::Api { message, .. } => assert_eq!(message, "lock job is held"),
            other => panic!("expected Api, got {other:?}"),
        }
    }

    #[test]
    fn election_held_body_keeps_the_election() {
        let body = br#"{
            "error": {"code": "election_held", "message": "primary has a leader"},
            "election": {
                "name": "primary",
                "leader": {"name": "primary", "candidate": "node-a", "token": 9,
                           "lease": "6f1e1c1e-0000-4000-8000-000000000003",
                           "own_lease": true, "since_index": 9, "since_ms": 1700000000000},
                "candidates": [],
                "modify_index": 9
            }
        }"#;
        let err = api_error("127.0.0.1:1", 409, body);
        assert_eq!(err.code(), Some(api_spec::codes::ELECTION_HELD));
        let election = err.election().expect("the election from the body");
        let leader = election.leader.as_ref().expect("a leader");
        assert_eq!((leader.candidate.as_str(), leader.token), ("node-a", 9));
        assert!(err.lock().is_none());
    }

    #[test]
    fn a_body_without_detail_and_other_errors_have_none() {
        let plain = br#"{"error":{"code":"token_mismatch","message":"not yours"}}"#;
        let err = api_error("127.0.0.1:1", 409, plain);
        assert!(err.lock().is_none() && err.election().is_none());
        assert!(matches!(err, Error::Api { conflict: None, .. }));
        let foreign = api_error("127.0.0.1:1", 409, b"conflict");
        assert!(foreign.lock().is_none() && foreign.election().is_none());
        assert!(Error::NoEndpoints.lock().is_none());
    }

    #[test]
    fn the_detail_does_not_make_every_error_larger() {
        // `Api` is three strings (endpoint, code, message) plus the status and one
        // pointer; a lock or election inline would add hundreds of bytes to every
        // `Result` of the crate.
        let strings = 3 * std::mem::size_of::<String>();
        let size = std::mem::size_of::<Error>();
        assert!(size <= strings + 24, "Error is {size} bytes");
    }

    #[test]
    fn acl_refusals_keep_their_code_and_message_and_are_final() {
        let body =
            br#"{"error":{"code":"unauthenticated","message":"this request needs a token"}}"#;
        let err = api_error("127.0.0.1:1", 401, body);
        assert!(err.is_unauthenticated() && !err.is_permission_denied());
        assert!(!err.is_retryable());
        assert_eq!(
            err.to_string(),
            "127.0.0.1:1 answered 401 unauthenticated: this request needs a token"
        );

        let body =
            br#"{"error":{"code":"permission_denied","message":"needs service:write on web"}}"#;
        let err = api_error("127.0.0.1:1", 403, body);
        assert!(err.is_permission_denied() && !err.is_unauthenticated());
        assert!(!err.is_retryable());
        assert_eq!(err.status(), Some(403));
        match &err {
            Error::Api { message, .. } => assert_eq!(message, "needs service:write on web"),
            other => panic!("expected Api, got {other:?}"),
        }

        // A proxy's 401 page is no registry refusal: the code tells them apart.
        let foreign = api_error("127.0.0.1:1", 401, b"<html>401</html>");
        assert!(!foreign.is_unauthenticated());
        assert_eq!(foreign.status(), Some(401));
    }

    #[test]
    fn unavailable_is_retryable() {
        let body = br#"{"error":{"code":"no_leader","message":"election in progress"}}"#;
        assert!(api_error("127.0.0.1:1", 503, body).is_retryable());
    }
}
