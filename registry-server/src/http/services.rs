//! Service catalog handlers: registration, heartbeat, status, discovery with filters and
//! blocking queries. Extract and check input, call one `App` method, map the result.

use api_spec::{
    codes, DeregisterResponse, HeartbeatResponse, InstanceStatus, RegisterRequest,
    ServiceInstances, ServiceList, SetStatusRequest,
};
use axum::extract::{Path, RawQuery};
use axum::http::StatusCode;
use axum::response::Response;
use locks::LeaseId;

use super::auth::Acting;
use super::error::{ApiError, Json};
use super::query::{self, Blocking};
use super::views::{self, indexed};
use crate::app::AppError;
use crate::replicated::catalog::{Filter, InstanceKey};
use crate::validate;

fn instance_key(service: String, id: String) -> Result<InstanceKey, ApiError> {
    validate::service_name(&service)?;
    validate::instance_id(&id)?;
    Ok((service.into(), id.into()))
}

pub async fn register(
    Acting(app): Acting,
    Path((service, id)): Path<(String, String)>,
    Json(req): Json<RegisterRequest>,
) -> Result<Response, ApiError> {
    let key = instance_key(service, id)?;
    let (spec, binding) = validate::registration(req, LeaseId::new_v4())?;
    let (index, record, lease) = app.register(key.clone(), spec, binding).await?;
    Ok(indexed(
        index,
        views::instance(&key.0, &key.1, &record, lease.as_ref(), &app.probers()),
    ))
}

pub async fn deregister(
    Acting(app): Acting,
    Path((service, id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let key = instance_key(service, id)?;
    let index = app.deregister(key.clone()).await?;
    Ok(indexed(
        index,
        DeregisterResponse {
            service: key.0.to_string(),
            id: key.1.to_string(),
            deregistered: true,
        },
    ))
}

pub async fn heartbeat(
    Acting(app): Acting,
    Path((service, id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let key = instance_key(service, id)?;
    let (lease, remaining) = app.heartbeat(key.clone()).await?;
    let body = HeartbeatResponse {
        service: key.0.to_string(),
        id: key.1.to_string(),
        lease: lease.id,
        ttl_ms: lease.ttl_ms,
        remaining_ms: remaining.as_millis() as u64,
    };
    Ok(indexed(app.state().applied_index(), body))
}

pub async fn set_status(
    Acting(app): Acting,
    Path((service, id)): Path<(String, String)>,
    Json(req): Json<SetStatusRequest>,
) -> Result<Response, ApiError> {
    let key = instance_key(service, id)?;
    let draining = api_spec::rules::settable_status(req.status)?;
    let (index, record, lease) =
        app.set_status(key.clone(), draining)
            .await
            .map_err(|e| match e {
                AppError::InstanceCritical => ApiError::new(
                    StatusCode::CONFLICT,
                    codes::INSTANCE_CRITICAL,
                    e.to_string(),
                ),
                e => e.into(),
            })?;
    Ok(indexed(
        index,
        views::instance(&key.0, &key.1, &record, lease.as_ref(), &app.probers()),
    ))
}

pub async fn list_services(
    Acting(app): Acting,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let query = query::parse(raw, Blocking::Yes, &[], query::none)?;
    let (index, services) = app.services(query.consistency(), query.block()).await?;
    let services = services.into_iter().map(views::service_summary).collect();
    Ok(indexed(index, ServiceList { services }))
}

pub async fn get_service(
    Acting(app): Acting,
    Path(service): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    validate::service_name(&service)?;
    let mut filter = Filter::healthy();
    let own = ["tag", "zone", "region", "meta.KEY", "status"];
    let query = query::parse(raw, Blocking::Yes, &own, |key, value| {
        match key {
            "tag" => filter.tags.push(value),
            "zone" => filter.zone = Some(value),
            "region" => filter.region = Some(value),
            "status" => filter.status = status_filter(&value)?,
            _ => match key.strip_prefix("meta.") {
                Some(meta_key) if !meta_key.is_empty() => {
                    filter.meta.push((meta_key.to_owned(), value))
                }
                _ => return Ok(false),
            },
        }
        Ok(true)
    })?;
    let (index, instances) = app
        .service(
            &service,
            &filter,
            query.consistency(),
            query.block(),
            |id, record, lease, probers| views::instance(&service, id, record, lease, probers),
        )
        .await?;
    Ok(indexed(index, ServiceInstances { service, instances }))
}

pub(super) fn status_filter(value: &str) -> Result<Option<InstanceStatus>, ApiError> {
    match value {
        "any" => Ok(None),
        "passing" | "healthy" => Ok(Some(InstanceStatus::Passing)),
        "draining" => Ok(Some(InstanceStatus::Draining)),
        "critical" => Ok(Some(InstanceStatus::Critical)),
        v => Err(ApiError::invalid_argument(format!(
            "`status` is passing, draining, critical or any, not {v:?}"
        ))),
    }
}
