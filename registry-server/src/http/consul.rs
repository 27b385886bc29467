//! A Consul-compatible read API, so tools that discover services through Consul
//! (Prometheus' `consul_sd_configs`, VictoriaMetrics, Traefik, Consul client libraries)
//! work against the registry unchanged.
//!
//! The mapping (see the README):
//! - each instance is a Consul *node* named after the instance id, running one service
//!   instance of the same id; its zone and region are the node's `NodeMeta`
//!   (`zone`, `region`);
//! - its health is one check, `service:<id>`: `passing` while its lease lives,
//!   `critical` once it ended; a draining instance has a second, `_service_maintenance:<id>`,
//!   `critical`, as Consul shows maintenance mode;
//! - the weight is `Weights.Passing` (`Warning` is 1);
//! - `X-Consul-Index` is the registry's index (never 0), so Consul's blocking queries
//!   (`index`, `wait`) work; `X-Consul-KnownLeader` and `X-Consul-LastContact` are set.
//!
//! Accepted and ignored: `dc`, `cached`, `ns`, `partition`, `near`, `node-meta`, `token`
//! (read by the auth layer). `stale` and `consistent` choose the read's consistency.

use std::collections::BTreeMap;

use api_spec::acl::{Access, Resource};
use api_spec::InstanceStatus;
use axum::extract::{Path, RawQuery};
use axum::http::HeaderValue;
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

use super::auth::Acting;
use super::error::ApiError;
use super::query::{self, Blocking};
use crate::app::{App, Consistency};
use crate::replicated::catalog::{Filter, InstanceRecord};
use crate::replicated::intern;
use crate::validate;

/// The datacenter every answer names.
pub const DATACENTER: &str = "dc1";

/// The parameters Consul's clients send that change nothing here.
const IGNORED: [&str; 7] = [
    "dc",
    "cached",
    "ns",
    "partition",
    "near",
    "node-meta",
    "token",
];

/// A Consul-style answer: the JSON, `X-Consul-Index` (never 0) and the leader headers.
fn consul(app: &App, index: u64, body: Value) -> Response {
    let mut response = axum::Json(body).into_response();
    let headers = response.headers_mut();
    headers.insert("x-consul-index", HeaderValue::from(index.max(1)));
    let known = app.leader().is_some();
    headers.insert(
        "x-consul-knownleader",
        HeaderValue::from_static(if known { "true" } else { "false" }),
    );
    headers.insert("x-consul-lastcontact", HeaderValue::from_static("0"));
    response
}

/// Parses a Consul read's query: blocking and consistency, the ignored parameters, and
/// `own` for the route's own ones.
fn parse(
    raw: Option<String>,
    own_names: &[&str],
    mut own: impl FnMut(&str, String) -> Result<bool, ApiError>,
) -> Result<(Consistency, Option<crate::app::Block>), ApiError> {
    let mut consistent = false;
    let mut names: Vec<&str> = own_names.to_vec();
    names.extend(IGNORED);
    names.push("consistent");
    let query = query::parse(raw, Blocking::Yes, &names, |key, value| {
        if key == "consistent" {
            consistent = true;
            return Ok(true);
        }
        if IGNORED.contains(&key) {
            return Ok(true);
        }
        own(key, value)
    })?;
    let consistency = if consistent {
        Consistency::Linearizable
    } else {
        query.consistency()
    };
    Ok((consistency, query.block()))
}

/// `GET /v1/agent/self`.
pub async fn agent_self(Acting(app): Acting) -> Result<Response, ApiError> {
    app.caller()
        .require_some(Resource::Service, Access::Read)
        .map_err(crate::app::AppError::from)?;
    let status = app.cluster_status();
    let name = format!("registry-{}", status.node_id);
    let addr = status
        .members
        .iter()
        .find(|m| m.id == status.node_id)
        .map(|m| m.addr.clone())
        .unwrap_or_default();
    let (host, port) = addr.rsplit_once(':').unwrap_or((addr.as_str(), "0"));
    let body = json!({
        "Config": {
            "Datacenter": DATACENTER,
            "NodeName": name,
            "NodeID": format!("{:08x}-0000-0000-0000-000000000000", status.node_id),
            "Server": true,
            "Version": concat!("registry-", env!("CARGO_PKG_VERSION")),
        },
        "Member": {
            "Name": name,
            "Addr": host.trim_start_matches('[').trim_end_matches(']'),
            "Port": port.parse::<u16>().unwrap_or(0),
            "Status": 1,
            "Tags": {"dc": DATACENTER, "role": "consul", "id": status.node_id.to_string()},
        },
    });
    Ok(consul(&app, status.applied_index, body))
}

/// `GET /v1/status/leader`: the leader's address, `""` when none is known.
pub async fn status_leader(Acting(app): Acting) -> Result<Response, ApiError> {
    let status = app.cluster()?;
    let leader = status.leader_addr.clone().unwrap_or_default();
    Ok(consul(&app, status.applied_index, json!(leader)))
}

/// `GET /v1/status/peers`: the voters' addresses.
pub async fn status_peers(Acting(app): Acting) -> Result<Response, ApiError> {
    let status = app.cluster()?;
    let peers: Vec<&str> = status
        .members
        .iter()
        .filter(|m| m.voter)
        .map(|m| m.addr.as_str())
        .collect();
    Ok(consul(&app, status.applied_index, json!(peers)))
}

/// `GET /v1/catalog/services`: every service with the tags of its instances.
pub async fn catalog_services(
    Acting(app): Acting,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let (consistency, block) = parse(raw, &[], query::none)?;
    let (index, _) = app.services(consistency, block).await?;
    let any = any_status();
    let (_, instances) = app
        .instances_everywhere(None, &any, Consistency::Stale, |service, _, record| {
            (service.to_owned(), record.spec.tags.clone())
        })
        .await?;
    let mut services: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (service, instance_tags) in instances {
        let tags = services.entry(service).or_default();
        for tag in instance_tags.iter() {
            if !tags.iter().any(|t| **t == **tag) {
                tags.push(tag.to_string());
            }
        }
    }
    Ok(consul(&app, index, json!(services)))
}

/// `GET /v1/catalog/nodes`: one node per instance.
pub async fn catalog_nodes(
    Acting(app): Acting,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let (consistency, _) = parse(raw, &[], query::none)?;
    let any = any_status();
    let (index, nodes) = app
        .instances_everywhere(None, &any, consistency, |_, id, record| node(id, record))
        .await?;
    Ok(consul(&app, index, json!(nodes)))
}

/// `GET /v1/catalog/service/{name}`: every instance of the service (whatever its health).
pub async fn catalog_service(
    Acting(app): Acting,
    Path(service): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    validate::service_name(&service)?;
    let mut filter = any_status();
    let (consistency, block) = parse(raw, &["tag"], |key, value| {
        match key {
            "tag" => filter.tags.push(value),
            _ => return Ok(false),
        }
        Ok(true)
    })?;
    let (index, entries) = app
        .service(&service, &filter, consistency, block, |id, record, _, _| {
            catalog_entry(&service, id, record)
        })
        .await?;
    Ok(consul(&app, index, json!(entries)))
}

/// `GET /v1/health/service/{name}`: instances with their checks; `passing` keeps the
/// passing ones only (without it, critical ones are included, as in Consul).
pub async fn health_service(
    Acting(app): Acting,
    Path(service): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    validate::service_name(&service)?;
    let mut filter = any_status();
    let mut expression = None;
    let own = ["passing", "tag", "filter"];
    let (consistency, block) = parse(raw, &own, |key, value| {
        match key {
            "passing" => match value.as_str() {
                "" | "true" | "1" => filter.status = Some(InstanceStatus::Passing),
                "false" => {}
                v => {
                    return Err(ApiError::invalid_argument(format!(
                        "`passing` takes no value or true/false, not {v:?}"
                    )))
                }
            },
            "tag" => filter.tags.push(value),
            "filter" => expression = Some(parse_filter(&value)?),
            _ => return Ok(false),
        }
        Ok(true)
    })?;
    let (index, entries) = app
        .service(&service, &filter, consistency, block, |id, record, _, _| {
            let keep = expression
                .as_ref()
                .is_none_or(|clauses: &Vec<Clause>| clauses.iter().all(|c| c.matches(record)));
            keep.then(|| health_entry(&service, id, record))
        })
        .await?;
    let entries: Vec<Value> = entries.into_iter().flatten().collect();
    Ok(consul(&app, index, json!(entries)))
}

/// `GET /v1/health/state/{state}`: the checks in that state (`any`, `passing`,
/// `warning`, `critical`), across every service the caller may read.
pub async fn health_state(
    Acting(app): Acting,
    Path(state): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let wanted = match state.as_str() {
        "any" | "passing" | "warning" | "critical" => state,
        other => {
            return Err(ApiError::invalid_argument(format!(
                "the state is any, passing, warning or critical, not {other:?}"
            )))
        }
    };
    let (consistency, _) = parse(raw, &[], query::none)?;
    let any = any_status();
    let (index, per_instance) = app
        .instances_everywhere(None, &any, consistency, checks)
        .await?;
    let checks: Vec<Value> = per_instance
        .into_iter()
        .flatten()
        .filter(|check| wanted == "any" || check["Status"] == wanted.as_str())
        .collect();
    Ok(consul(&app, index, json!(checks)))
}

/// Every instance, whatever its health (Consul's catalog lists them all).
fn any_status() -> Filter {
    Filter {
        status: None,
        ..Filter::healthy()
    }
}

fn node_meta(record: &InstanceRecord) -> Value {
    let mut meta = serde_json::Map::new();
    if let Some(zone) = record.spec.zone() {
        meta.insert("zone".into(), json!(zone));
    }
    if let Some(region) = record.spec.region() {
        meta.insert("region".into(), json!(region));
    }
    Value::Object(meta)
}

fn node(id: &str, record: &InstanceRecord) -> Value {
    let address = &record.spec.address;
    json!({
        "ID": "",
        "Node": id,
        "Address": address,
        "Datacenter": DATACENTER,
        "TaggedAddresses": {"lan": address, "wan": address},
        "Meta": node_meta(record),
        "CreateIndex": record.modify_index,
        "ModifyIndex": record.modify_index,
    })
}

fn weights(record: &InstanceRecord) -> Value {
    json!({"Passing": record.spec.weight, "Warning": 1})
}

fn catalog_entry(service: &str, id: &str, record: &InstanceRecord) -> Value {
    let spec = &record.spec;
    json!({
        "ID": "",
        "Node": id,
        "Address": spec.address,
        "Datacenter": DATACENTER,
        "TaggedAddresses": {"lan": spec.address, "wan": spec.address},
        "NodeMeta": node_meta(record),
        "ServiceKind": "",
        "ServiceID": id,
        "ServiceName": service,
        "ServiceAddress": spec.address,
        "ServicePort": spec.port,
        "ServiceTags": spec.tags,
        "ServiceMeta": meta_object(&spec.meta),
        "ServiceWeights": weights(record),
        "ServiceEnableTagOverride": false,
        "CreateIndex": record.modify_index,
        "ModifyIndex": record.modify_index,
    })
}

fn health_entry(service: &str, id: &str, record: &InstanceRecord) -> Value {
    let spec = &record.spec;
    json!({
        "Node": node(id, record),
        "Service": {
            "ID": id,
            "Service": service,
            "Tags": spec.tags,
            "Address": spec.address,
            "Port": spec.port,
            "Meta": meta_object(&spec.meta),
            "Weights": weights(record),
            "EnableTagOverride": false,
            "CreateIndex": record.modify_index,
            "ModifyIndex": record.modify_index,
        },
        "Checks": checks(service, id, record),
    })
}

/// An instance's checks: its lease (if it has one), each active check, and maintenance
/// while draining.
fn checks(service: &str, id: &str, record: &InstanceRecord) -> Vec<Value> {
    let check = |check_id: String, name: &str, status: &str, output: &str, kind: &str| {
        json!({
            "Node": id,
            "CheckID": check_id,
            "Name": name,
            "Status": status,
            "Notes": "",
            "Output": output,
            "ServiceID": id,
            "ServiceName": service,
            "ServiceTags": record.spec.tags,
            "Type": kind,
            "CreateIndex": record.modify_index,
            "ModifyIndex": record.modify_index,
        })
    };
    let mut checks = Vec::new();
    if record.lease.is_some() {
        let (status, output) = match record.lease_ended {
            true => ("critical", "the instance's lease ended"),
            false => ("passing", "the instance's lease is alive"),
        };
        checks.push(check(
            format!("service:{id}"),
            &format!("Service '{service}' check"),
            status,
            output,
            "ttl",
        ));
    }
    for (spec, state) in record.spec.checks.iter().zip(record.checks()) {
        checks.push(check(
            format!("check:{id}:{}", spec.name),
            &spec.name,
            state.status.as_str(),
            &state.output,
            spec.probe.kind().as_str(),
        ));
    }
    if record.draining {
        checks.push(check(
            format!("_service_maintenance:{id}"),
            "Service Maintenance Mode",
            "critical",
            "the instance is draining",
            "maintenance",
        ));
    }
    checks
}

/// One clause of a `filter` expression: the forms supported.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Clause {
    /// `Service.Tags contains "x"` (`not contains` negates).
    TagContains { tag: String, negated: bool },
    /// `Service.Meta.key == "v"` (`!=` negates).
    MetaEquals {
        key: String,
        value: String,
        negated: bool,
    },
}

impl Clause {
    fn matches(&self, record: &InstanceRecord) -> bool {
        match self {
            Clause::TagContains { tag, negated } => {
                record.spec.tags.iter().any(|t| **t == **tag) != *negated
            }
            Clause::MetaEquals {
                key,
                value,
                negated,
            } => (intern::meta_get(&record.spec.meta, key) == Some(value.as_str())) != *negated,
        }
    }
}

/// Parses the `filter` forms supported: clauses joined by `and`, each
/// `Service.Tags contains "x"`, `Service.Tags not contains "x"`,
/// `Service.Meta.key == "v"` or `Service.Meta.key != "v"` (also `"x" in Service.Tags`).
fn parse_filter(text: &str) -> Result<Vec<Clause>, ApiError> {
    let unsupported = || {
        ApiError::invalid_argument(format!(
            "unsupported filter {text:?}: this server takes clauses joined by `and`, each \
             `Service.Tags contains \"x\"` (or `not contains`, or `\"x\" in Service.Tags`) or \
             `Service.Meta.key == \"v\"` (or `!=`)"
        ))
    };
    let quoted = |s: &str| {
        let s = s.trim();
        s.strip_prefix('"')
            .and_then(|s| s.strip_suffix('"'))
            .or_else(|| s.strip_prefix('`').and_then(|s| s.strip_suffix('`')))
            .map(str::to_owned)
    };
    let mut clauses = Vec::new();
    for clause in text.split(" and ") {
        let clause = clause.trim();
        let parsed = if let Some((left, right)) = clause.split_once(" not contains ") {
            (left.trim() == "Service.Tags")
                .then(|| quoted(right))
                .flatten()
                .map(|tag| Clause::TagContains { tag, negated: true })
        } else if let Some((left, right)) = clause.split_once(" contains ") {
            (left.trim() == "Service.Tags")
                .then(|| quoted(right))
                .flatten()
                .map(|tag| Clause::TagContains {
                    tag,
                    negated: false,
                })
        } else if let Some((left, right)) = clause.split_once(" in ") {
            (right.trim() == "Service.Tags")
                .then(|| quoted(left))
                .flatten()
                .map(|tag| Clause::TagContains {
                    tag,
                    negated: false,
                })
        } else {
            let (op, negated) = if clause.contains("!=") {
                ("!=", true)
            } else {
                ("==", false)
            };
            clause.split_once(op).and_then(|(left, right)| {
                let key = left.trim().strip_prefix("Service.Meta.")?;
                (!key.is_empty()).then_some(())?;
                Some(Clause::MetaEquals {
                    key: key.to_owned(),
                    value: quoted(right)?,
                    negated,
                })
            })
        };
        clauses.push(parsed.ok_or_else(unsupported)?);
    }
    Ok(clauses)
}

/// An instance's meta as the JSON object Consul sends (the catalog keeps it as a sorted
/// list of shared pairs, which would serialize as a list).
fn meta_object(meta: &[(intern::Name, intern::Name)]) -> serde_json::Value {
    serde_json::Value::Object(
        meta.iter()
            .map(|(k, v)| (k.to_string(), serde_json::Value::String(v.to_string())))
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::{parse_filter, Clause};

    #[test]
    fn the_common_filter_forms_parse() {
        let tag = |t: &str, negated| Clause::TagContains {
            tag: t.into(),
            negated,
        };
        assert_eq!(
            parse_filter(r#"Service.Tags contains "v2""#).ok(),
            Some(vec![tag("v2", false)])
        );
        assert_eq!(
            parse_filter(r#""v2" in Service.Tags and Service.Tags not contains "old""#).ok(),
            Some(vec![tag("v2", false), tag("old", true)])
        );
        assert_eq!(
            parse_filter(r#"Service.Meta.build == "41""#).ok(),
            Some(vec![Clause::MetaEquals {
                key: "build".into(),
                value: "41".into(),
                negated: false
            }])
        );
        for bad in [
            "Service.Port == 80",
            "Node.Meta.zone == \"a\"",
            "Service.Tags contains v2",
            "",
        ] {
            assert!(parse_filter(bad).is_err(), "{bad:?}");
        }
    }
}
