//! Lease, cluster and probe handlers: extract, call one `App` method, map the result.

use std::time::Duration;

use api_spec::{
    AddMemberRequest, CreateLeaseRequest, HealthStatus, MembershipResponse, RevokeLeaseResponse,
    MAX_LEASE_TTL, MIN_LEASE_TTL,
};
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use uuid::Uuid;

use super::auth::Acting;
use super::error::{ApiError, Json};
use super::query::{self, Blocking};
use super::views::{self, indexed};
use crate::app::App;

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

pub async fn create_lease(
    Acting(app): Acting,
    Json(req): Json<CreateLeaseRequest>,
) -> Result<Response, ApiError> {
    let ttl = parse_ttl(&req.ttl)?;
    let (index, lease) = app.create_lease(ttl).await?;
    Ok(indexed(index, views::lease_info(&lease, Some(ttl))))
}

pub async fn get_lease(
    Acting(app): Acting,
    Path(id): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let id = parse_lease_id(&id)?;
    let query = query::parse(raw, Blocking::No, &[], query::none)?;
    let (index, lease, remaining) = app.get_lease(id, query.consistency()).await?;
    Ok(indexed(index, views::lease_info(&lease, remaining)))
}

pub async fn keepalive(Acting(app): Acting, Path(id): Path<String>) -> Result<Response, ApiError> {
    let id = parse_lease_id(&id)?;
    let (lease, remaining) = app.keepalive(id).await?;
    Ok(indexed(
        app.state().applied_index(),
        views::lease_info(&lease, Some(remaining)),
    ))
}

pub async fn revoke_lease(
    Acting(app): Acting,
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

pub async fn cluster(Acting(app): Acting, RawQuery(raw): RawQuery) -> Result<Response, ApiError> {
    // This node's own view: `stale` and `consistency` change nothing, but anything else
    // (a blocking `index`, a typo) is refused as on every other read.
    query::parse(raw, Blocking::No, &[], query::none)?;
    let status = views::cluster_status(app.cluster()?);
    Ok(indexed(status.applied_index, status))
}

/// `GET /v1/snapshot`: a backup file (`api_spec::backup`).
pub async fn snapshot(Acting(app): Acting) -> Result<Response, ApiError> {
    use axum::http::header;
    let (summary, bytes) = app.backup().await?;
    let disposition = format!("attachment; filename=\"registry-{}.backup\"", summary.index);
    let headers = [
        (header::CONTENT_TYPE, "application/octet-stream".to_owned()),
        (header::CONTENT_DISPOSITION, disposition),
    ];
    let mut response = (headers, bytes).into_response();
    response.headers_mut().insert(
        api_spec::INDEX_HEADER,
        axum::http::HeaderValue::from(summary.index),
    );
    Ok(response)
}

/// `GET /metrics`: Prometheus text format.
pub async fn metrics(Acting(app): Acting) -> Result<Response, ApiError> {
    let text = app.metrics_text()?;
    let content_type = "text/plain; version=0.0.4; charset=utf-8";
    Ok(([(axum::http::header::CONTENT_TYPE, content_type)], text).into_response())
}

pub async fn add_member(
    Acting(app): Acting,
    Json(req): Json<AddMemberRequest>,
) -> Result<Response, ApiError> {
    api_spec::rules::member_addr(&req.addr)?;
    api_spec::rules::member_id(req.id)?;
    let index = app.add_member(req.id, req.addr, req.learner).await?;
    Ok(membership_response(&app, index))
}

pub async fn remove_member(
    Acting(app): Acting,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id: u64 = id
        .parse()
        .map_err(|_| ApiError::invalid_argument(format!("{id:?} is not a node id")))?;
    let index = app.remove_member(id).await?;
    Ok(membership_response(&app, index))
}

fn membership_response(app: &App, index: u64) -> Response {
    let members = views::cluster_status(app.cluster_status()).members;
    indexed(index, MembershipResponse { index, members })
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
