//! Consul's agent API for registration, so Consul client libraries (Spring Cloud Consul,
//! Go's `consul/api`, PyPI's clients) register through the registry unchanged.
//!
//! - `PUT /v1/agent/service/register` takes `ID` (default: `Name`), `Name`, `Address`
//!   (default: the caller's IP), `Port`, `Tags`, `Meta`, `Weights` and `Check`/`Checks`.
//!   Keys are read case-insensitively, as Consul's decoder does. A TTL check becomes the
//!   instance's lease TTL (the shortest, if several); `DeregisterCriticalServiceAfter`
//!   its `deregister_after`. Without a TTL check the lease is 24 h (register again to keep
//!   it). HTTP, TCP, gRPC and script checks are refused with a 400 until the registry runs
//!   active checks.
//! - `PUT /v1/agent/service/deregister/{id}`.
//! - `PUT /v1/agent/check/pass|warn|fail/{check}` and `PUT /v1/agent/check/update/{check}`
//!   with `service:<id>` check ids (as Consul names a service's check): pass and warn
//!   renew the lease; fail revokes it (the instance turns critical; register it again to
//!   bring it back).
//! - `PUT /v1/agent/service/maintenance/{id}?enable=true|false&reason=` drains the
//!   instance or brings it back.
//!
//! Service ids are looked up across services (Consul's ids are unique per agent); an id
//! registered under several services is acted on in each.

use std::net::SocketAddr;

use api_spec::{codes, InstanceStatus, RegisterRequest};
use axum::body::Bytes;
use axum::extract::{ConnectInfo, Path, RawQuery};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use locks::LeaseId;
use serde_json::{Map, Value};

use super::auth::Acting;
use super::error::ApiError;
use crate::app::App;
use crate::validate;

/// The lease of an instance registered without a TTL check.
const NO_CHECK_TTL: &str = "24h";

/// Consul answers a successful agent write with 200 and an empty body.
fn done() -> Response {
    StatusCode::OK.into_response()
}

/// `key` in `object`, whatever its case.
fn field<'a>(object: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    object
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(key))
        .map(|(_, v)| v)
        .filter(|v| !v.is_null())
}

fn text(object: &Map<String, Value>, key: &str) -> Result<Option<String>, ApiError> {
    match field(object, key) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(ApiError::invalid_argument(format!(
            "`{key}` must be a string, not {other}"
        ))),
    }
}

fn invalid_json(message: String) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, codes::INVALID_JSON, message)
}

/// The checks of a registration: the TTL and `deregister_after` they give.
fn checks(service: &Map<String, Value>) -> Result<(Option<String>, Option<String>), ApiError> {
    let mut all: Vec<&Map<String, Value>> = Vec::new();
    if let Some(check) = field(service, "Check") {
        all.push(
            check
                .as_object()
                .ok_or_else(|| invalid_json("`Check` must be an object".into()))?,
        );
    }
    if let Some(list) = field(service, "Checks") {
        let list = list
            .as_array()
            .ok_or_else(|| invalid_json("`Checks` must be an array".into()))?;
        for check in list {
            all.push(
                check
                    .as_object()
                    .ok_or_else(|| invalid_json("each of `Checks` must be an object".into()))?,
            );
        }
    }
    let (mut ttl, mut deregister_after): (Option<(std::time::Duration, String)>, Option<String>) =
        (None, None);
    for check in all {
        for active in [
            "HTTP",
            "TCP",
            "GRPC",
            "Args",
            "Script",
            "DockerContainerID",
            "H2PING",
            "UDP",
            "OSService",
        ] {
            if field(check, active).is_some() {
                return Err(ApiError::invalid_argument(format!(
                    "{active} checks are not supported yet: this registry's instances stay \
                     healthy by TTL (use a `TTL` check and `PUT /v1/agent/check/pass/service:<id>`)"
                )));
            }
        }
        if let Some(text) = text(check, "TTL")? {
            let parsed = api_spec::parse_duration(&text)
                .map_err(|e| ApiError::invalid_argument(format!("check `TTL`: {e}")))?;
            if ttl.as_ref().is_none_or(|(shortest, _)| parsed < *shortest) {
                ttl = Some((parsed, text));
            }
        }
        if let Some(text) = text(check, "DeregisterCriticalServiceAfter")? {
            deregister_after = Some(text);
        }
    }
    Ok((ttl.map(|(_, text)| text), deregister_after))
}

/// `PUT /v1/agent/service/register`.
pub async fn register(
    Acting(app): Acting,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let value: Value = serde_json::from_slice(&body)
        .map_err(|e| invalid_json(format!("the body is not JSON: {e}")))?;
    let service = value
        .as_object()
        .ok_or_else(|| invalid_json("the body must be a JSON object".into()))?;
    let name =
        text(service, "Name")?.ok_or_else(|| ApiError::invalid_argument("`Name` is required"))?;
    let id = text(service, "ID")?.unwrap_or_else(|| name.clone());
    validate::service_name(&name)?;
    validate::instance_id(&id)?;
    let address = text(service, "Address")?
        .filter(|a| !a.is_empty())
        .unwrap_or_else(|| peer.ip().to_string());
    let port = match field(service, "Port") {
        None => 0,
        Some(v) => v
            .as_u64()
            .and_then(|p| u16::try_from(p).ok())
            .ok_or_else(|| {
                ApiError::invalid_argument(format!("`Port` must be 0 to 65535, not {v}"))
            })?,
    };
    let tags: Vec<String> = match field(service, "Tags") {
        None => Vec::new(),
        Some(v) => serde_json::from_value(v.clone())
            .map_err(|_| ApiError::invalid_argument("`Tags` must be an array of strings"))?,
    };
    let meta = match field(service, "Meta") {
        None => Default::default(),
        Some(v) => serde_json::from_value(v.clone())
            .map_err(|_| ApiError::invalid_argument("`Meta` must map strings to strings"))?,
    };
    let weight = match field(service, "Weights").and_then(|w| w.as_object()) {
        None => None,
        Some(weights) => field(weights, "Passing")
            .map(|p| {
                p.as_u64()
                    .and_then(|p| u32::try_from(p).ok())
                    .ok_or_else(|| {
                        ApiError::invalid_argument(format!(
                            "`Weights.Passing` must be a number, not {p}"
                        ))
                    })
            })
            .transpose()?,
    };
    let (ttl, deregister_after) = checks(service)?;
    let request = RegisterRequest {
        address,
        port,
        tags,
        meta,
        zone: None,
        region: None,
        weight,
        ttl: Some(ttl.unwrap_or_else(|| NO_CHECK_TTL.to_owned())),
        deregister_after,
        lease: None,
    };
    let (spec, binding) = validate::registration(request, LeaseId::new_v4())?;
    app.register((name, id), spec, binding).await?;
    Ok(done())
}

/// The services that hold an instance with this id.
fn services_of(app: &App, id: &str) -> Vec<String> {
    let state = app.state().read();
    state
        .app
        .catalog
        .services()
        .filter(|(_, service)| service.instances.contains_key(id))
        .map(|(name, _)| name.clone())
        .collect()
}

fn unknown_service(id: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        codes::INSTANCE_NOT_FOUND,
        format!("unknown service ID {id:?}"),
    )
}

/// The instance behind a check id `service:<id>`.
fn instance_of_check(app: &App, check: &str) -> Result<(Vec<String>, String), ApiError> {
    let id = check.strip_prefix("service:").ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            codes::INSTANCE_NOT_FOUND,
            format!("unknown check ID {check:?}: a service's check is `service:<service id>`"),
        )
    })?;
    let services = services_of(app, id);
    if services.is_empty() {
        return Err(unknown_service(id));
    }
    Ok((services, id.to_owned()))
}

/// `PUT /v1/agent/service/deregister/{id}`.
pub async fn deregister(Acting(app): Acting, Path(id): Path<String>) -> Result<Response, ApiError> {
    let services = services_of(&app, &id);
    if services.is_empty() {
        return Err(unknown_service(&id));
    }
    for service in services {
        app.deregister((service, id.clone())).await?;
    }
    Ok(done())
}

/// What a check update asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CheckStatus {
    Passing,
    Warning,
    Critical,
}

async fn set_check(app: &App, check: &str, status: CheckStatus) -> Result<Response, ApiError> {
    let (services, id) = instance_of_check(app, check)?;
    for service in services {
        let key = (service, id.clone());
        match status {
            CheckStatus::Passing | CheckStatus::Warning => {
                app.heartbeat(key).await?;
            }
            CheckStatus::Critical => {
                let lease = app
                    .state()
                    .read()
                    .app
                    .catalog
                    .instance(&key)
                    .filter(|r| r.status != InstanceStatus::Critical)
                    .map(|r| r.lease);
                if let Some(lease) = lease {
                    app.revoke_lease(lease).await?;
                }
            }
        }
    }
    Ok(done())
}

/// `PUT /v1/agent/check/pass/{check}`.
pub async fn check_pass(
    Acting(app): Acting,
    Path(check): Path<String>,
) -> Result<Response, ApiError> {
    set_check(&app, &check, CheckStatus::Passing).await
}

/// `PUT /v1/agent/check/warn/{check}`.
pub async fn check_warn(
    Acting(app): Acting,
    Path(check): Path<String>,
) -> Result<Response, ApiError> {
    set_check(&app, &check, CheckStatus::Warning).await
}

/// `PUT /v1/agent/check/fail/{check}`.
pub async fn check_fail(
    Acting(app): Acting,
    Path(check): Path<String>,
) -> Result<Response, ApiError> {
    set_check(&app, &check, CheckStatus::Critical).await
}

/// `PUT /v1/agent/check/update/{check}` with `{"Status": "passing|warning|critical"}`.
pub async fn check_update(
    Acting(app): Acting,
    Path(check): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let value: Value = serde_json::from_slice(&body)
        .map_err(|e| invalid_json(format!("the body is not JSON: {e}")))?;
    let object = value
        .as_object()
        .ok_or_else(|| invalid_json("the body must be a JSON object".into()))?;
    let status = match text(object, "Status")?.as_deref() {
        Some("passing") => CheckStatus::Passing,
        Some("warning") => CheckStatus::Warning,
        Some("critical") => CheckStatus::Critical,
        other => {
            return Err(ApiError::invalid_argument(format!(
                "`Status` is passing, warning or critical, not {other:?}"
            )))
        }
    };
    set_check(&app, &check, status).await
}

/// `PUT /v1/agent/service/maintenance/{id}?enable=true|false&reason=...`.
pub async fn maintenance(
    Acting(app): Acting,
    Path(id): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(raw.as_deref().unwrap_or(""))
        .map_err(|e| ApiError::invalid_argument(format!("malformed query string: {e}")))?;
    let mut enable = None;
    for (key, value) in pairs {
        match key.as_str() {
            "enable" => {
                enable = Some(match value.as_str() {
                    "true" => true,
                    "false" => false,
                    v => {
                        return Err(ApiError::invalid_argument(format!(
                            "`enable` is true or false, not {v:?}"
                        )))
                    }
                })
            }
            "reason" | "token" | "ns" | "partition" => {}
            other => {
                return Err(ApiError::invalid_argument(format!(
                    "unknown query parameter {other:?} (allowed: enable, reason)"
                )))
            }
        }
    }
    let enable = enable.ok_or_else(|| ApiError::invalid_argument("`enable` is required"))?;
    let services = services_of(&app, &id);
    if services.is_empty() {
        return Err(unknown_service(&id));
    }
    for service in services {
        app.set_status((service, id.clone()), enable).await?;
    }
    Ok(done())
}
