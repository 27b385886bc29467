//! Lock and election handlers: check input, call one `App` method, map the result.

use api_spec::acl::{Access, Resource};
use api_spec::{
    AcquireRequest, CampaignRequest, CampaignResponse, ElectionList, LockGrant, LockList,
    ProclaimRequest, ReleaseRequest, ReleaseResponse,
};
use axum::extract::{Path, RawQuery};
use axum::response::Response;
use locks::{Hold, Key, Kind, LeaseId};

use super::auth::Acting;
use super::error::{ApiError, Json};
use super::query::{self, Blocking, ReadQuery};
use super::views::{election_info, indexed, leader, lock_info};
use crate::app::Granted;
use crate::validate;

/// The query of a lock or election read: consistency and blocking parameters only.
fn read_query(raw: Option<String>) -> Result<ReadQuery, ApiError> {
    query::parse(raw, Blocking::Yes, &[], query::none)
}

fn released(name: String, hold: &Hold, index: u64) -> Response {
    indexed(
        index,
        ReleaseResponse {
            name,
            token: hold.token,
            released: true,
            lease_revoked: hold.own_lease,
        },
    )
}

pub async fn acquire(
    Acting(app): Acting,
    Path(name): Path<String>,
    Json(req): Json<AcquireRequest>,
) -> Result<Response, ApiError> {
    let spec = validate::acquire(&name, req, LeaseId::new_v4())?;
    let Granted { hold, ttl_ms } = app.acquire(spec).await?;
    let grant = LockGrant {
        name,
        token: hold.token,
        lease: hold.lease,
        own_lease: hold.own_lease,
        ttl_ms,
        holder: hold.holder,
        lock_delay_ms: hold.lock_delay_ms,
        granted_index: hold.granted_index,
        granted_at_ms: hold.granted_at_ms,
    };
    Ok(indexed(app.state().applied_index(), grant))
}

pub async fn release(
    Acting(app): Acting,
    Path(name): Path<String>,
    Json(req): Json<ReleaseRequest>,
) -> Result<Response, ApiError> {
    validate::lock_name(&name)?;
    let (index, hold) = app.release(Key::lock(&name), req.token).await?;
    Ok(released(name, &hold, index))
}

pub async fn get_lock(
    Acting(app): Acting,
    Path(name): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    validate::lock_name(&name)?;
    let query = read_query(raw)?;
    let (index, state) = app
        .lock(&Key::lock(&name), query.consistency(), query.block())
        .await?;
    let reveal = app.permits(Resource::Lock, &name, Access::Write);
    Ok(indexed(index, lock_info(&name, &state, reveal)))
}

pub async fn list_locks(
    Acting(app): Acting,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let query = read_query(raw)?;
    let (index, locks) = app
        .locks(Kind::Lock, query.consistency(), query.block())
        .await?;
    let locks = locks
        .iter()
        .map(|(name, state)| {
            let reveal = app.permits(Resource::Lock, name, Access::Write);
            lock_info(name, state, reveal)
        })
        .collect();
    Ok(indexed(index, LockList { locks }))
}

pub async fn campaign(
    Acting(app): Acting,
    Path(name): Path<String>,
    Json(req): Json<CampaignRequest>,
) -> Result<Response, ApiError> {
    let spec = validate::campaign(&name, req, LeaseId::new_v4())?;
    let Granted { hold, ttl_ms } = app.acquire(spec).await?;
    let body = CampaignResponse {
        leader: leader(&name, &hold),
        ttl_ms,
    };
    Ok(indexed(app.state().applied_index(), body))
}

pub async fn proclaim(
    Acting(app): Acting,
    Path(name): Path<String>,
    Json(req): Json<ProclaimRequest>,
) -> Result<Response, ApiError> {
    validate::lock_name(&name)?;
    validate::candidate(&req.candidate)?;
    let (index, hold) = app
        .proclaim(Key::election(&name), req.token, req.candidate)
        .await?;
    Ok(indexed(index, leader(&name, &hold)))
}

pub async fn resign(
    Acting(app): Acting,
    Path(name): Path<String>,
    Json(req): Json<ReleaseRequest>,
) -> Result<Response, ApiError> {
    validate::lock_name(&name)?;
    let (index, hold) = app.release(Key::election(&name), req.token).await?;
    Ok(released(name, &hold, index))
}

pub async fn get_election(
    Acting(app): Acting,
    Path(name): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    validate::lock_name(&name)?;
    let query = read_query(raw)?;
    let (index, state) = app
        .lock(&Key::election(&name), query.consistency(), query.block())
        .await?;
    Ok(indexed(index, election_info(&name, &state)))
}

pub async fn list_elections(
    Acting(app): Acting,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let query = read_query(raw)?;
    let (index, elections) = app
        .locks(Kind::Election, query.consistency(), query.block())
        .await?;
    let elections = elections
        .iter()
        .map(|(name, state)| election_info(name, state))
        .collect();
    Ok(indexed(index, ElectionList { elections }))
}
