//! Public HTTP handlers: extract, call one `App` method, map the result. No logic here.

use std::time::Duration;

use api_spec::{
    AddMemberRequest, ClusterStatus, CreateLeaseRequest, HealthStatus, LeaseInfo,
    MembershipResponse, RevokeLeaseResponse, INDEX_HEADER, MAX_LEASE_TTL, MIN_LEASE_TTL,
};
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use uuid::Uuid;

use super::error::{ApiError, Json};
use super::query::{query_pairs, unknown_parameter, ReadQuery};
use crate::app::{App, AppError};

/// A JSON answer carrying the index it reflects.
pub(super) fn indexed<T: serde::Serialize>(index: u64, body: T) -> Response {
    let mut response = axum::Json(body).into_response();
    response
        .headers_mut()
        .insert(INDEX_HEADER, HeaderValue::from(index));
    response
}

fn parse_lease_id(text: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(text)
        .map_err(|_| ApiError::invalid_argument(format!("{text:?} is not a lease id (a UUID)")))
}

fn parse_ttl(text: &str) -> Result<Duration, ApiError> {
    Ok(crate::validate::duration(
        "ttl",
        text,
        MIN_LEASE_TTL,
        MAX_LEASE_TTL,
    )?)
}

fn lease_info(lease: &locks::Lease, remaining: Option<Duration>) -> LeaseInfo {
    LeaseInfo {
        lease: lease.id,
        ttl: api_spec::format_duration(Duration::from_millis(lease.ttl_ms)),
        ttl_ms: lease.ttl_ms,
        granted_index: lease.granted_index,
        granted_at_ms: lease.granted_at_ms,
        remaining_ms: remaining.map(|d| d.as_millis() as u64),
    }
}

pub async fn create_lease(
    State(app): State<App>,
    Json(req): Json<CreateLeaseRequest>,
) -> Result<Response, ApiError> {
    let ttl = parse_ttl(&req.ttl)?;
    let (index, lease) = app.create_lease(ttl).await?;
    Ok(indexed(index, lease_info(&lease, Some(ttl))))
}

pub async fn get_lease(
    State(app): State<App>,
    Path(id): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let id = parse_lease_id(&id)?;
    let mut query = ReadQuery::default();
    for (key, value) in query_pairs(raw)? {
        if !query.take(&key, &value)? || query.index.is_some() || query.wait.is_some() {
            return Err(unknown_parameter(&key, "stale, consistency"));
        }
    }
    let (index, lease, remaining) = app.get_lease(id, query.consistency()).await?;
    Ok(indexed(index, lease_info(&lease, remaining)))
}

pub async fn keepalive(
    State(app): State<App>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = parse_lease_id(&id)?;
    let (lease, remaining) = app.keepalive(id).await?;
    Ok(indexed(
        app.state().applied_index(),
        lease_info(&lease, Some(remaining)),
    ))
}

pub async fn revoke_lease(
    State(app): State<App>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = parse_lease_id(&id)?;
    let (index, lease) = app.revoke_lease(id).await?;
    Ok(indexed(
        index,
        RevokeLeaseResponse {
            lease: lease.id,
            revoked: true,
        },
    ))
}

pub async fn cluster(State(app): State<App>) -> Response {
    let status: ClusterStatus = app.cluster_status();
    indexed(status.applied_index, status)
}

pub async fn add_member(
    State(app): State<App>,
    Json(req): Json<AddMemberRequest>,
) -> Result<Response, ApiError> {
    crate::config::check_addr(&req.addr)
        .map_err(|e| ApiError::invalid_argument(format!("addr: {e}")))?;
    if req.id == 0 {
        return Err(ApiError::invalid_argument("id: node ids start at 1"));
    }
    if !app.is_leader() {
        return relay_to_leader(&app, Method::POST, "/v1/cluster/members", Some(&req)).await;
    }
    let index = app.add_member(req.id, req.addr, req.learner).await?;
    Ok(membership_response(&app, index))
}

pub async fn remove_member(
    State(app): State<App>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id: u64 = id
        .parse()
        .map_err(|_| ApiError::invalid_argument(format!("{id:?} is not a node id")))?;
    if !app.is_leader() {
        let path = format!("/v1/cluster/members/{id}");
        return relay_to_leader::<()>(&app, Method::DELETE, &path, None).await;
    }
    let index = app.remove_member(id).await?;
    Ok(membership_response(&app, index))
}

fn membership_response(app: &App, index: u64) -> Response {
    let members = app.cluster_status().members;
    indexed(index, MembershipResponse { index, members })
}

/// Membership changes run on the leader; a follower passes the request on as it came
/// and returns the leader's answer unchanged.
async fn relay_to_leader<B: serde::Serialize>(
    app: &App,
    method: Method,
    path: &str,
    body: Option<&B>,
) -> Result<Response, ApiError> {
    let (_, addr) = app.leader().ok_or(AppError::NoLeader)?;
    let mut request = app
        .peers()
        .http()
        .request(method, format!("http://{}{path}", app.peers().route(&addr)));
    if let Some(body) = body {
        request = request.json(body);
    }
    let answer = request
        .timeout(Duration::from_secs(60))
        .send()
        .await
        .map_err(|e| AppError::Unavailable(format!("relaying to the leader at {addr}: {e}")))?;
    let status = StatusCode::from_u16(answer.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    let index = answer.headers().get(INDEX_HEADER).cloned();
    let bytes = answer
        .bytes()
        .await
        .map_err(|e| AppError::Unavailable(format!("relaying to the leader at {addr}: {e}")))?;
    let mut response = (
        status,
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        bytes,
    )
        .into_response();
    if let Some(index) = index {
        response.headers_mut().insert(INDEX_HEADER, index);
    }
    Ok(response)
}

pub async fn healthz(State(app): State<App>) -> Response {
    let leader = app.leader().map(|(id, _)| id);
    axum::Json(HealthStatus {
        ok: true,
        node_id: app.id(),
        leader,
        reason: None,
    })
    .into_response()
}

pub async fn readyz(State(app): State<App>) -> Response {
    let status = app.cluster_status();
    let member = status.members.iter().any(|m| m.id == status.node_id);
    let reason = match (member, status.leader) {
        (false, _) => Some("this server is not a member of a cluster yet".to_owned()),
        (true, None) => Some("no leader is known".to_owned()),
        (true, Some(_)) => None,
    };
    let ok = reason.is_none();
    let body = HealthStatus {
        ok,
        node_id: status.node_id,
        leader: status.leader,
        reason,
    };
    if ok {
        return (StatusCode::OK, axum::Json(body)).into_response();
    }
    let retry = [(axum::http::header::RETRY_AFTER, "1")];
    (StatusCode::SERVICE_UNAVAILABLE, retry, axum::Json(body)).into_response()
}
