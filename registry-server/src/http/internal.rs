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

/// Refuses internal requests that do not carry the configured cluster secret; without
/// one, refuses every internal request that does not come from this machine (the server
/// refuses to start with non-loopback members and no secret, so a peer on another
/// machine is never legitimate then).
pub async fn check_secret(
    State(secret): State<Arc<Option<String>>>,
    request: Request,
    next: Next,
) -> Response {
    let Some(secret) = secret.as_deref() else {
        let peer = request.extensions().get::<ConnectInfo<SocketAddr>>();
        if peer.is_some_and(|ConnectInfo(addr)| addr.ip().is_loopback()) {
            return next.run(request).await;
        }
        warn_rarely(&request, "refusing internal requests from a non-loopback address: this cluster has no cluster secret");
        return (
            StatusCode::FORBIDDEN,
            "internal routes without a cluster secret serve loopback peers only",
        )
            .into_response();
    };
    {
        let given = request
            .headers()
            .get(SECRET_HEADER)
            .map(|v| v.as_bytes())
            .unwrap_or_default();
        let same: bool = given.ct_eq(secret.as_bytes()).into();
        if !same {
            warn_rarely(
                &request,
                "refusing internal requests without the right cluster secret (is a peer misconfigured?)",
            );
            return (StatusCode::UNAUTHORIZED, "cluster secret required").into_response();
        }
    }
    next.run(request).await
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
pub async fn forward(State(app): State<App>, body: Bytes) -> Response {
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

    /// A router of one internal route behind [`super::check_secret`].
    fn guarded(secret: Option<&str>) -> Router {
        Router::new()
            .route("/internal/x", post(|| async { "ran" }))
            .layer(axum::middleware::from_fn_with_state(
                Arc::new(secret.map(str::to_owned)),
                super::check_secret,
            ))
    }

    async fn status(router: Router, from: Option<&str>, secret: Option<&str>) -> StatusCode {
        let mut request = Request::post("/internal/x");
        if let Some(secret) = secret {
            request = request.header(crate::raft::network::SECRET_HEADER, secret);
        }
        let mut request = request.body(Body::empty()).unwrap_or_default();
        if let Some(from) = from {
            let addr: SocketAddr = from.parse().unwrap_or_else(|_| ([0, 0, 0, 0], 0).into());
            request.extensions_mut().insert(ConnectInfo(addr));
        }
        match router.oneshot(request).await {
            Ok(response) => response.status(),
            Err(never) => match never {},
        }
    }

    #[tokio::test]
    async fn without_a_secret_internal_routes_serve_loopback_peers_only() {
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
