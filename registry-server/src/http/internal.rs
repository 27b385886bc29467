//! Internal node-to-node handlers (`/internal/...`): bincode in, bincode out.

use std::future::Future;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use openraft::raft::{AppendEntriesRequest, InstallSnapshotRequest, VoteRequest};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::app::App;
use crate::network::{KeepaliveRequest, ProposeRequest, BINCODE};
use crate::types::{NodeId, TypeConfig};

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

pub async fn propose(State(app): State<App>, body: Bytes) -> Response {
    handle(body, |req: ProposeRequest| async move {
        app.propose_forwarded(req.command).await
    })
    .await
}

pub async fn keepalive(State(app): State<App>, body: Bytes) -> Response {
    handle(body, |req: KeepaliveRequest| async move {
        app.keepalive_forwarded(req.lease).await
    })
    .await
}

pub async fn read_index(State(app): State<App>) -> Response {
    encode(&app.read_index_forwarded().await)
}
