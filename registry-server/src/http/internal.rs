//! Internal node-to-node handlers (`/internal/...`): bincode in, bincode out.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use openraft::raft::{AppendEntriesRequest, InstallSnapshotRequest, VoteRequest};
use serde::de::DeserializeOwned;
use serde::Serialize;
use subtle::ConstantTimeEq;

use crate::app::{App, AppError, Forward};
use crate::raft::network::{BINCODE, SECRET_HEADER};
use crate::raft::types::{NodeId, TypeConfig};
use crate::throttle::Throttle;
use crate::tls::PeerCertificate;

/// Who may make internal calls: the holders of the cluster secret, and peers whose TLS
/// client certificate names the host of a member.
#[derive(Clone)]
pub struct PeerAuth {
    pub secret: Option<String>,
    /// The member addresses now (the current membership, learners included).
    pub members: Arc<dyn Fn() -> Vec<String> + Send + Sync>,
}

impl std::fmt::Debug for PeerAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerAuth")
            .field("secret", &self.secret.as_ref().map(|_| "***"))
            .finish_non_exhaustive()
    }
}

/// A peer that authenticated with a certificate naming no member yet: the one call it may
/// make is a join that adds its own address ([`forward`] checks).
#[derive(Debug, Clone)]
pub struct Joining(PeerCertificate);

/// Lets an internal request through when it carries the cluster secret, or comes with a
/// verified TLS client certificate that names the host of a member (a certificate naming
/// none may only ask to join, as itself); without a secret, also when it comes from
/// this machine (the server refuses to start with non-loopback members and neither a
/// secret nor `--tls-ca`, so such a peer on another machine is never legitimate then).
pub async fn check_secret(
    State(auth): State<Arc<PeerAuth>>,
    mut request: Request,
    next: Next,
) -> Response {
    if let Some(secret) = auth.secret.as_deref() {
        let given = request
            .headers()
            .get(SECRET_HEADER)
            .map(|v| v.as_bytes())
            .unwrap_or_default();
        if bool::from(given.ct_eq(secret.as_bytes())) {
            return next.run(request).await;
        }
    } else {
        let peer = request.extensions().get::<ConnectInfo<SocketAddr>>();
        if peer.is_some_and(|ConnectInfo(addr)| addr.ip().is_loopback()) {
            return next.run(request).await;
        }
    }
    if let Some(certificate) = request.extensions().get::<PeerCertificate>().cloned() {
        if (auth.members)()
            .iter()
            .any(|member| certificate.names_host_of(member))
        {
            return next.run(request).await;
        }
        if request.uri().path() == crate::raft::network::paths::FORWARD {
            request.extensions_mut().insert(Joining(certificate));
            return next.run(request).await;
        }
    }
    match auth.secret {
        Some(_) => {
            warn_rarely(
                &request,
                "refusing internal requests without the right cluster secret or a member's certificate (is a peer misconfigured?)",
            );
            (StatusCode::UNAUTHORIZED, "cluster secret required").into_response()
        }
        None => {
            warn_rarely(&request, "refusing internal requests from a non-loopback address: this cluster has no cluster secret, and the caller presented no member's certificate");
            (
                StatusCode::FORBIDDEN,
                "internal routes without a cluster secret serve loopback peers and peers with a member's certificate only",
            )
                .into_response()
        }
    }
}

/// A misconfigured peer retries quickly: warn once per interval, not per request.
fn warn_rarely(request: &Request, message: &str) {
    static WARNED: Throttle = Throttle::new();
    if WARNED.ready() {
        tracing::warn!(path = %request.uri().path(), "{message}");
    }
}

/// Decodes a bincode request, runs `f`, encodes its answer.
async fn handle<Req, Resp, F, Fut>(body: Bytes, f: F) -> Response
where
    Req: DeserializeOwned,
    Resp: Serialize,
    F: FnOnce(Req) -> Fut,
    Fut: Future<Output = Resp>,
{
    match bincode::deserialize::<Req>(&body) {
        Ok(request) => encode(&f(request).await),
        Err(e) => undecodable(e),
    }
}

fn undecodable(e: bincode::Error) -> Response {
    (
        StatusCode::BAD_REQUEST,
        format!("undecodable internal request: {e}"),
    )
        .into_response()
}

fn encode<T: Serialize>(value: &T) -> Response {
    match bincode::serialize(value) {
        Ok(bytes) => ([(header::CONTENT_TYPE, BINCODE)], bytes).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "cannot encode internal answer");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

pub async fn append(State(app): State<App>, body: Bytes) -> Response {
    handle(body, |rpc: AppendEntriesRequest<TypeConfig>| async move {
        app.raft().append_entries(rpc).await
    })
    .await
}

pub async fn vote(State(app): State<App>, body: Bytes) -> Response {
    handle(body, |rpc: VoteRequest<NodeId>| async move {
        app.raft().vote(rpc).await
    })
    .await
}

/// Largest snapshot a node accepts, in bytes. A chunk is written at its offset into a
/// buffer in memory, so an offset past this is refused rather than allocated. A snapshot
/// of a million instances is a few hundred MiB.
pub const MAX_SNAPSHOT_BYTES: u64 = 4 << 30;

pub async fn snapshot(State(app): State<App>, body: Bytes) -> Response {
    let rpc = match bincode::deserialize::<InstallSnapshotRequest<TypeConfig>>(&body) {
        Ok(rpc) => rpc,
        Err(e) => return undecodable(e),
    };
    let end = rpc.offset.checked_add(rpc.data.len() as u64);
    if end.is_none_or(|end| end > MAX_SNAPSHOT_BYTES) {
        return (
            StatusCode::BAD_REQUEST,
            format!(
                "snapshot chunk at offset {} ({} bytes) ends past the largest snapshot accepted ({MAX_SNAPSHOT_BYTES} bytes)",
                rpc.offset,
                rpc.data.len()
            ),
        )
            .into_response();
    }
    encode(&app.raft().install_snapshot(rpc).await)
}

/// A command that arrives from another node is checked against the input rules again
/// (the node that took the request checked it, but this one cannot know that); a
/// command proposed here came through this node's own handlers.
pub async fn forward(
    State(app): State<App>,
    joining: Option<axum::Extension<Joining>>,
    body: Bytes,
) -> Response {
    if let Some(axum::Extension(Joining(certificate))) = joining {
        let own = match bincode::deserialize::<Forward>(&body) {
            Ok(Forward::AddMember { addr, .. }) => certificate.names_host_of(&addr),
            _ => false,
        };
        if !own {
            return (
                StatusCode::FORBIDDEN,
                "a certificate that names no member may only ask to add the address it names",
            )
                .into_response();
        }
    }
    handle(body, |op: Forward| async move {
        if let Forward::Propose { command, .. } = &op {
            crate::validate::command(command).map_err(|e| AppError::Invalid(e.to_string()))?;
        }
        app.serve_forwarded(op).await
    })
    .await
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::sync::Arc;

    use axum::body::Body;
    use axum::extract::ConnectInfo;
    use axum::http::{Request, StatusCode};
    use axum::routing::post;
    use axum::Router;
    use tower::ServiceExt;

    use super::{Joining, PeerAuth};
    use crate::raft::network::paths::FORWARD;
    use crate::tls::PeerCertificate;

    use crate::test_certs as certs;

    /// A router of internal routes behind [`super::check_secret`], in a cluster whose
    /// members are at 10.0.0.1:7400 and 10.0.0.2:7400. The forward route answers 202 to
    /// a peer let through only to join.
    fn guarded(secret: Option<&str>) -> Router {
        let auth = PeerAuth {
            secret: secret.map(str::to_owned),
            members: Arc::new(|| vec!["10.0.0.1:7400".to_owned(), "10.0.0.2:7400".to_owned()]),
        };
        let joining = |joining: Option<axum::Extension<Joining>>| async move {
            match joining {
                Some(_) => StatusCode::ACCEPTED,
                None => StatusCode::OK,
            }
        };
        Router::new()
            .route("/internal/x", post(|| async { "ran" }))
            .route(FORWARD, post(joining))
            .layer(axum::middleware::from_fn_with_state(
                Arc::new(auth),
                super::check_secret,
            ))
    }

    async fn status(router: Router, from: Option<&str>, secret: Option<&str>) -> StatusCode {
        call(router, "/internal/x", from, secret, None).await
    }

    async fn call(
        router: Router,
        path: &str,
        from: Option<&str>,
        secret: Option<&str>,
        certificate: Option<&certs::Issued>,
    ) -> StatusCode {
        let mut request = Request::post(path);
        if let Some(secret) = secret {
            request = request.header(crate::raft::network::SECRET_HEADER, secret);
        }
        let mut request = request.body(Body::empty()).unwrap_or_default();
        if let Some(from) = from {
            let addr: SocketAddr = from.parse().unwrap_or_else(|_| ([0, 0, 0, 0], 0).into());
            request.extensions_mut().insert(ConnectInfo(addr));
        }
        if let Some(issued) = certificate {
            let der = rustls::pki_types::CertificateDer::from(issued.der.clone());
            request
                .extensions_mut()
                .insert(PeerCertificate(Arc::new(der)));
        }
        match router.oneshot(request).await {
            Ok(response) => response.status(),
            Err(never) => match never {},
        }
    }

    #[tokio::test]
    async fn a_certificate_naming_a_member_s_host_authenticates_a_peer() {
        let ca = certs::Ca::new("test CA");
        let member = ca.member(&["10.0.0.2"]);
        let stranger = ca.member(&["10.0.0.9"]);
        let alice = ca.client("alice");
        let from = Some("10.0.0.2:50000");
        for secret in [None, Some("s3cret")] {
            let router = || guarded(secret);
            let at = |path| call(router(), path, from, None, Some(&member));
            assert_eq!(at("/internal/x").await, StatusCode::OK, "{secret:?}");
            assert_eq!(at(FORWARD).await, StatusCode::OK, "{secret:?}");
            // A certificate naming no member: only the forward route, marked as a join.
            let stranger_at = |path| call(router(), path, from, None, Some(&stranger));
            assert_ne!(stranger_at("/internal/x").await, StatusCode::OK);
            assert_eq!(stranger_at(FORWARD).await, StatusCode::ACCEPTED);
            let alice_at = |path| call(router(), path, from, None, Some(&alice));
            assert_ne!(alice_at("/internal/x").await, StatusCode::OK);
            // No certificate, no secret: refused off loopback.
            assert_ne!(
                call(router(), "/internal/x", from, None, None).await,
                StatusCode::OK
            );
        }
    }

    #[tokio::test]
    async fn without_a_secret_or_certificate_internal_routes_serve_loopback_peers_only() {
        assert_eq!(
            status(guarded(None), Some("127.0.0.1:5000"), None).await,
            StatusCode::OK
        );
        assert_eq!(
            status(guarded(None), Some("[::1]:5000"), None).await,
            StatusCode::OK
        );
        assert_eq!(
            status(guarded(None), Some("10.0.0.7:5000"), None).await,
            StatusCode::FORBIDDEN
        );
        // A request whose peer is unknown is refused too.
        assert_eq!(
            status(guarded(None), None, None).await,
            StatusCode::FORBIDDEN
        );
    }

    #[tokio::test]
    async fn with_a_secret_only_the_secret_counts() {
        let secret = Some("s3cret");
        assert_eq!(
            status(guarded(secret), Some("10.0.0.7:5000"), secret).await,
            StatusCode::OK
        );
        assert_eq!(
            status(guarded(secret), Some("127.0.0.1:5000"), None).await,
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            status(guarded(secret), Some("127.0.0.1:5000"), Some("s3cre")).await,
            StatusCode::UNAUTHORIZED
        );
    }
}
