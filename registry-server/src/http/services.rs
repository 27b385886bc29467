//! Service catalog handlers: registration, heartbeat, status, discovery with filters and
//! blocking queries. Extract and check input, call one `App` method, map the result.

use api_spec::{
    codes, DeregisterResponse, HeartbeatResponse, InstanceStatus, RegisterRequest,
    ServiceInstances, ServiceList, SetStatusRequest,
};
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::Response;
use locks::LeaseId;

use super::error::{ApiError, Json};
use super::public::indexed;
use super::query::{query_pairs, unknown_parameter, ReadQuery};
use crate::app::{instance_view, App, AppError};
use crate::catalog::{Filter, InstanceKey};
use crate::validate;

fn instance_key(service: String, id: String) -> Result<InstanceKey, ApiError> {
    validate::service_name(&service)?;
    validate::instance_id(&id)?;
    Ok((service, id))
}

pub async fn register(
    State(app): State<App>,
    Path((service, id)): Path<(String, String)>,
    Json(req): Json<RegisterRequest>,
) -> Result<Response, ApiError> {
    let key = instance_key(service, id)?;
    let (spec, binding) = validate::registration(req, LeaseId::new_v4())?;
    let (index, record, lease) = app.register(key.clone(), spec, binding).await?;
    Ok(indexed(
        index,
        instance_view(&key.0, &key.1, &record, Some(&lease)),
    ))
}

pub async fn deregister(
    State(app): State<App>,
    Path((service, id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let key = instance_key(service, id)?;
    let index = app.deregister(key.clone()).await?;
    Ok(indexed(
        index,
        DeregisterResponse {
            service: key.0,
            id: key.1,
            deregistered: true,
        },
    ))
}

pub async fn heartbeat(
    State(app): State<App>,
    Path((service, id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let key = instance_key(service, id)?;
    let (lease, remaining) = app.heartbeat(key.clone()).await?;
    let body = HeartbeatResponse {
        service: key.0,
        id: key.1,
        lease: lease.id,
        ttl_ms: lease.ttl_ms,
        remaining_ms: remaining.as_millis() as u64,
    };
    Ok(indexed(app.state().applied_index(), body))
}

pub async fn set_status(
    State(app): State<App>,
    Path((service, id)): Path<(String, String)>,
    Json(req): Json<SetStatusRequest>,
) -> Result<Response, ApiError> {
    let key = instance_key(service, id)?;
    let draining =
        match req.status {
            InstanceStatus::Passing => false,
            InstanceStatus::Draining => true,
            InstanceStatus::Critical => return Err(ApiError::invalid_argument(
                "status may be set to `passing` or `draining`; `critical` follows from the lease",
            )),
        };
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
        instance_view(&key.0, &key.1, &record, lease.as_ref()),
    ))
}

pub async fn list_services(
    State(app): State<App>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let mut query = ReadQuery::default();
    for (key, value) in query_pairs(raw)? {
        if !query.take(&key, &value)? {
            return Err(unknown_parameter(&key, "index, wait, stale, consistency"));
        }
    }
    let (index, services) = app.services(query.consistency(), query.block()).await?;
    Ok(indexed(index, ServiceList { services }))
}

pub async fn get_service(
    State(app): State<App>,
    Path(service): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    validate::service_name(&service)?;
    let mut query = ReadQuery::default();
    let mut filter = Filter::healthy();
    for (key, value) in query_pairs(raw)? {
        if query.take(&key, &value)? {
            continue;
        }
        match key.as_str() {
            "tag" => filter.tags.push(value),
            "zone" => filter.zone = Some(value),
            "region" => filter.region = Some(value),
            "status" => {
                filter.status = match value.as_str() {
                    "any" => None,
                    "passing" | "healthy" => Some(InstanceStatus::Passing),
                    "draining" => Some(InstanceStatus::Draining),
                    "critical" => Some(InstanceStatus::Critical),
                    v => {
                        return Err(ApiError::invalid_argument(format!(
                            "`status` is passing, draining, critical or any, not {v:?}"
                        )))
                    }
                }
            }
            _ => match key.strip_prefix("meta.") {
                Some(meta_key) if !meta_key.is_empty() => {
                    filter.meta.push((meta_key.to_owned(), value))
                }
                _ => {
                    return Err(unknown_parameter(
                        &key,
                        "tag, zone, region, meta.KEY, status, index, wait, stale, consistency",
                    ))
                }
            },
        }
    }
    let (index, instances) = app
        .service(&service, &filter, query.consistency(), query.block())
        .await?;
    Ok(indexed(index, ServiceInstances { service, instances }))
}
