//! Consul's agent API for registration, so Consul client libraries (Spring Cloud Consul,
//! Go's `consul/api`, PyPI's clients) register through the registry unchanged.
//!
//! - `PUT /v1/agent/service/register` takes `ID` (default: `Name`), `Name`, `Address`
//!   (default: the caller's IP), `Port`, `Tags`, `Meta`, `Weights` and `Check`/`Checks`.
//!   Keys are read case-insensitively, as Consul's decoder does. A TTL check becomes the
//!   instance's lease TTL (the shortest, if several); `DeregisterCriticalServiceAfter`
//!   its `deregister_after`. `HTTP`, `TCP` and `GRPC` checks become the registry's active
//!   checks (`Interval`, `Timeout`, `Method`, `Header`, `FailuresBeforeCritical`,
//!   `SuccessBeforePassing`; Consul's default of critical at the first failure); with
//!   them and no TTL check the instance has no lease. With no check at all the lease is
//!   24 h (register again to keep it). Script, Docker, H2PING, UDP and OS service checks
//!   are refused with a 400.
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

use api_spec::checks::CheckDefinition;
use api_spec::{codes, RegisterRequest};
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

/// What a registration's checks say: the TTL (the shortest TTL check's),
/// `deregister_after`, and the active checks the cluster runs.
#[derive(Debug, Default)]
struct Checks {
    ttl: Option<String>,
    deregister_after: Option<String>,
    active: Vec<CheckDefinition>,
}

/// The checks of a registration (`Check` and `Checks`).
fn checks(service: &Map<String, Value>) -> Result<Checks, ApiError> {
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
    let mut shortest: Option<std::time::Duration> = None;
    let mut out = Checks::default();
    for check in all {
        for unsupported in [
            "Args",
            "Script",
            "DockerContainerID",
            "H2PING",
            "UDP",
            "OSService",
        ] {
            if field(check, unsupported).is_some() {
                return Err(ApiError::invalid_argument(format!(
                    "{unsupported} checks are not supported: the registry runs TTL, HTTP, TCP and gRPC checks"
                )));
            }
        }
        if let Some(text) = text(check, "TTL")? {
            let parsed = api_spec::parse_duration(&text)
                .map_err(|e| ApiError::invalid_argument(format!("check `TTL`: {e}")))?;
            if shortest.is_none_or(|s| parsed < s) {
                shortest = Some(parsed);
                out.ttl = Some(text);
            }
        } else if let Some(active) = active_check(check, out.active.len())? {
            out.active.push(active);
        }
        if let Some(text) = text(check, "DeregisterCriticalServiceAfter")? {
            out.deregister_after = Some(text);
        }
    }
    Ok(out)
}

/// A Consul HTTP, TCP or gRPC check as the registry's check definition; `None` for a
/// check of none of these kinds. The registry's rules (`validate::checks`) judge the
/// result, so a bad value is refused with the registry's message.
fn active_check(
    check: &Map<String, Value>,
    earlier: usize,
) -> Result<Option<CheckDefinition>, ApiError> {
    let mut def = CheckDefinition::default();
    if let Some(url) = text(check, "HTTP")? {
        def.http = Some(url);
        def.method = text(check, "Method")?;
        if let Some(header) = field(check, "Header") {
            def.header = serde_json::from_value(header.clone()).map_err(|_| {
                ApiError::invalid_argument("`Header` must map names to arrays of strings")
            })?;
        }
    } else if let Some(target) = text(check, "TCP")? {
        def.tcp = Some(target);
    } else if let Some(target) = text(check, "GRPC")? {
        // Consul writes the service after a slash: `host:port/service`.
        let (addr, service) = match target.split_once('/') {
            Some((addr, service)) => (addr.to_owned(), Some(service.to_owned())),
            None => (target, None),
        };
        def.grpc = Some(addr);
        def.grpc_service = service;
        if field(check, "GRPCUseTLS").and_then(Value::as_bool) == Some(true) {
            return Err(ApiError::invalid_argument(
                "`GRPCUseTLS` is not supported: gRPC checks speak plaintext HTTP/2",
            ));
        }
    } else {
        return Ok(None);
    }
    let kind = if def.http.is_some() {
        "http"
    } else if def.tcp.is_some() {
        "tcp"
    } else {
        "grpc"
    };
    let given = text(check, "CheckID")?.or(text(check, "Name")?);
    def.name = check_name(given.as_deref(), kind, earlier);
    def.interval = text(check, "Interval")?;
    def.timeout = text(check, "Timeout")?;
    let count = |key: &str| -> Result<Option<u32>, ApiError> {
        match field(check, key) {
            None => Ok(None),
            // Consul's 0 means "at once", the registry's 1.
            Some(v) => v
                .as_u64()
                .and_then(|n| u32::try_from(n.max(1)).ok())
                .map(Some)
                .ok_or_else(|| ApiError::invalid_argument(format!("`{key}` must be a number"))),
        }
    };
    // Consul turns a check critical at the first failure unless told otherwise.
    def.failures_before_critical = Some(count("FailuresBeforeCritical")?.unwrap_or(1));
    def.successes_before_passing = count("SuccessBeforePassing")?;
    Ok(Some(def))
}

/// A registry check name from a Consul check's id or name: characters outside letters,
/// digits, `.`, `_` and `-` become `-`; none usable gives the kind and its position.
fn check_name(given: Option<&str>, kind: &str, earlier: usize) -> String {
    let cleaned: String = given
        .unwrap_or("")
        .chars()
        .map(|c| match c {
            'a'..='z' | 'A'..='Z' | '0'..='9' | '.' | '_' | '-' => c,
            _ => '-',
        })
        .take(api_spec::rules::MAX_NAME_LEN)
        .collect();
    let cleaned = cleaned.trim_start_matches(['.', '_', '-']);
    if cleaned.is_empty() {
        format!("{kind}-{}", earlier + 1)
    } else {
        cleaned.to_owned()
    }
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
    let checks = checks(service)?;
    // An instance with active checks and no TTL check needs no lease; one with neither
    // gets a long one.
    let ttl = match (checks.ttl, checks.active.is_empty()) {
        (Some(ttl), _) => Some(ttl),
        (None, true) => Some(NO_CHECK_TTL.to_owned()),
        (None, false) => None,
    };
    let request = RegisterRequest {
        address,
        port,
        tags,
        meta,
        zone: None,
        region: None,
        weight,
        ttl,
        deregister_after: checks.deregister_after,
        lease: None,
        checks: checks.active,
    };
    let (spec, binding) = validate::registration(request, LeaseId::new_v4())?;
    app.register((name.into(), id.into()), spec, binding)
        .await?;
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
        .map(|(name, _)| name.to_string())
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
        app.deregister((service.into(), id.as_str().into())).await?;
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
        let key = (service.into(), id.as_str().into());
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
                    .filter(|r| !r.lease_ended)
                    .and_then(|r| r.lease);
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
        app.set_status((service.into(), id.as_str().into()), enable)
            .await?;
    }
    Ok(done())
}
