//! Internal node-to-node handlers (`/internal/...`): bincode in, bincode out.

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

fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, Response> {
    bincode::deserialize(body)
        .map_err(|e| (StatusCode::BAD_REQUEST, format!("undecodable internal request: {e}")).into_response())
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
    match decode::<AppendEntriesRequest<TypeConfig>>(&body) {
        Ok(rpc) => encode(&app.raft().append_entries(rpc).await),
        Err(r) => r,
    }
}

pub async fn vote(State(app): State<App>, body: Bytes) -> Response {
    match decode::<VoteRequest<NodeId>>(&body) {
        Ok(rpc) => encode(&app.raft().vote(rpc).await),
        Err(r) => r,
    }
}

pub async fn snapshot(State(app): State<App>, body: Bytes) -> Response {
    match decode::<InstallSnapshotRequest<TypeConfig>>(&body) {
        Ok(rpc) => encode(&app.raft().install_snapshot(rpc).await),
        Err(r) => r,
    }
}

pub async fn propose(State(app): State<App>, body: Bytes) -> Response {
    match decode::<ProposeRequest>(&body) {
        Ok(req) => encode(&app.propose_forwarded(req.command).await),
        Err(r) => r,
    }
}

pub async fn keepalive(State(app): State<App>, body: Bytes) -> Response {
    match decode::<KeepaliveRequest>(&body) {
        Ok(req) => encode(&app.keepalive_forwarded(req.lease).await),
        Err(r) => r,
    }
}

pub async fn read_index(State(app): State<App>) -> Response {
    encode(&app.read_index_forwarded().await)
}
