//! Internal node-to-node handlers (`/internal/...`): bincode in, bincode out.

use std::future::Future;

use axum::body::Bytes;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use openraft::raft::{AppendEntriesRequest, InstallSnapshotRequest, VoteRequest};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::app::{App, Forward};
use crate::raft::network::{BINCODE, SECRET_HEADER};
use crate::raft::types::{NodeId, TypeConfig};

/// Refuses internal requests that do not carry the configured cluster secret.
pub async fn check_secret(
    State(secret): State<Arc<Option<String>>>,
    request: Request,
    next: Next,
) -> Response {
    if let Some(secret) = secret.as_deref() {
        let given = request
            .headers()
            .get(SECRET_HEADER)
            .map(|v| v.as_bytes())
            .unwrap_or_default();
        if !constant_time_eq(given, secret.as_bytes()) {
            // A misconfigured peer retries quickly: warn once per interval, not per request.
            static LAST_WARNING: Mutex<Option<Instant>> = Mutex::new(None);
            let mut last = LAST_WARNING.lock().unwrap_or_else(|e| e.into_inner());
            if last.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
                *last = Some(Instant::now());
                tracing::warn!(
                    path = %request.uri().path(),
                    "refusing internal requests without the right cluster secret (is a peer misconfigured?)"
                );
            }
            return (StatusCode::UNAUTHORIZED, "cluster secret required").into_response();
        }
    }
    next.run(request).await
}

/// Compares without returning early, so response time does not reveal how much matched.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
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
        Err(e) => (
            StatusCode::BAD_REQUEST,
            format!("undecodable internal request: {e}"),
        )
            .into_response(),
    }
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

pub async fn snapshot(State(app): State<App>, body: Bytes) -> Response {
    handle(body, |rpc: InstallSnapshotRequest<TypeConfig>| async move {
        app.raft().install_snapshot(rpc).await
    })
    .await
}

pub async fn forward(State(app): State<App>, body: Bytes) -> Response {
    handle(
        body,
        |op: Forward| async move { app.serve_forwarded(op).await },
    )
    .await
}
