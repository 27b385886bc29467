//! The OpenAPI 3 document of the public HTTP API. Request and response bodies are
//! derived from the wire types in this crate, so their schemas cannot drift from what the
//! server and client (de)serialize. Path and query parameters are described here by hand
//! (the server parses them itself, in `registry-server/src/http`): keep the two in step.
//!
//! Each public route has one doc-only function here carrying its `#[utoipa::path]`
//! annotation; the functions are never called. The function's doc comment becomes the
//! operation's summary (first line) and description (the rest).
//!
//! Two rules hold for every route, so `CommonHeaders` adds them to the document rather
//! than each annotation repeating them (and one of them forgetting):
//! - every response carries the [`INDEX_HEADER`] header;
//! - every `503` error answer carries `Retry-After`.
//!
//! The server serves [`openapi_json`] at `GET /v1/openapi.json`, and a test there checks
//! that the routes documented here are exactly the routes it serves.

use serde::Deserialize;
use utoipa::openapi::header::HeaderBuilder;
use utoipa::openapi::path::Operation;
use utoipa::openapi::{RefOr, Response};
use utoipa::{IntoParams, Modify, OpenApi, PartialSchema, ToSchema};

use crate::INDEX_HEADER;

/// The document, built from the annotations in this module.
pub fn openapi() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

/// The document as pretty-printed JSON, as `GET /v1/openapi.json` serves it.
pub fn openapi_json() -> String {
    // Serializing a tree of strings, maps and numbers that we built ourselves cannot
    // fail: there are no non-string map keys and no custom `Serialize` impls that error.
    openapi()
        .to_pretty_json()
        .expect("the OpenAPI document serializes to JSON")
}

const API_DESCRIPTION: &str = "\
A service registry and coordination service on Raft.

Conventions:
- Bodies are JSON. Durations are strings such as `\"15s\"`, `\"500ms\"`, `\"2m\"` \
(a bare number is rejected); responses also give them in milliseconds (`*_ms` fields).
- Every error answer is `{\"error\": {\"code\": \"...\", \"message\": \"...\"}}` \
(`ErrorBody`); `code` is stable, `message` is for people. A `503` carries `Retry-After`. \
Any route may answer `500` with code `internal`; the details are in the server's log.
- Every answer carries `X-Registry-Index`: the Raft log index it reflects.
- Reads are linearizable by default (a ReadIndex round through the leader); `?stale` \
(or `?consistency=stale`) answers from the receiving server's memory instead.
- Blocking queries: pass the `X-Registry-Index` of a previous answer as `?index=`, and the \
server holds the request until something changes past that index or `wait` runs out.
- Writes may be sent to any server; followers forward them to the leader.";

#[derive(OpenApi)]
#[openapi(
    info(
        title = "registry",
        description = API_DESCRIPTION,
        version = env!("CARGO_PKG_VERSION"),
    ),
    paths(
        routes::register_instance,
        routes::deregister_instance,
        routes::heartbeat_instance,
        routes::set_instance_status,
        routes::list_services,
        routes::get_service,
        routes::create_lease,
        routes::get_lease,
        routes::revoke_lease,
        routes::keepalive_lease,
        routes::cluster_status,
        routes::add_member,
        routes::remove_member,
        routes::healthz,
        routes::readyz,
        routes::openapi_document,
    ),
    // Schemas reached from request and response bodies are collected on their own; the
    // enums used only by query parameters are not, so they are listed here.
    components(schemas(ReadConsistency, StatusFilter)),
    modifiers(&CommonHeaders),
    tags(
        (name = "services", description = "Register instances and discover them."),
        (name = "leases", description = "Time-limited liveness tokens that instances (and later locks) hang on."),
        (name = "cluster", description = "Raft membership and status."),
        (name = "probes", description = "Liveness and readiness for orchestrators."),
        (name = "meta", description = "This document."),
    )
)]
struct ApiDoc;

/// Adds the headers every route shares (see the module docs).
#[derive(Debug)]
struct CommonHeaders;

impl Modify for CommonHeaders {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let index = HeaderBuilder::new()
            .schema(u64::schema())
            .description(Some(
                "The Raft log index this answer reflects: the entry a write was committed \
                 in, or the applied index a read was served at. Pass it as `?index=` to \
                 block until something changes.",
            ))
            .build();
        let retry_after = HeaderBuilder::new()
            .schema(u64::schema())
            .description(Some("Seconds to wait before retrying."))
            .build();
        for item in openapi.paths.paths.values_mut() {
            let operations = [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
                &mut item.patch,
                &mut item.head,
                &mut item.options,
                &mut item.trace,
            ];
            for operation in operations.into_iter().flatten() {
                for (status, response) in responses_mut(operation) {
                    response
                        .headers
                        .insert(INDEX_HEADER.to_owned(), index.clone());
                    if status == "503" && is_error_body(response) {
                        response
                            .headers
                            .insert("Retry-After".to_owned(), retry_after.clone());
                    }
                }
            }
        }
    }
}

/// The inline (not `$ref`) responses of an operation, with their status codes.
fn responses_mut(operation: &mut Operation) -> impl Iterator<Item = (&str, &mut Response)> {
    operation
        .responses
        .responses
        .iter_mut()
        .filter_map(|(status, response)| match response {
            RefOr::T(response) => Some((status.as_str(), response)),
            RefOr::Ref(_) => None,
        })
}

/// `true` when the response's JSON body is an [`ErrorBody`] (readiness answers 503 with
/// a [`HealthStatus`] instead, and without `Retry-After`).
fn is_error_body(response: &Response) -> bool {
    response
        .content
        .get("application/json")
        .and_then(|content| content.schema.as_ref())
        .is_some_and(|schema| {
            matches!(schema, RefOr::Ref(r) if r.ref_location == "#/components/schemas/ErrorBody")
        })
}

/// The path of an instance: `/v1/services/{service}/instances/{id}...`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct InstancePath {
    /// The service name: letters, digits, `.`, `_`, `-`, starting with a letter or digit.
    #[param(
        min_length = 1,
        max_length = 128,
        pattern = "^[A-Za-z0-9][A-Za-z0-9._-]*$"
    )]
    pub service: String,
    /// The instance id, unique within its service: letters, digits, `.`, `_`, `-`, `:`,
    /// `@` (so `host:port` works), starting with a letter or digit.
    #[param(
        min_length = 1,
        max_length = 128,
        pattern = "^[A-Za-z0-9][A-Za-z0-9._:@-]*$"
    )]
    pub id: String,
}

/// The path of a service: `/v1/services/{service}`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct ServicePath {
    /// The service name: letters, digits, `.`, `_`, `-`, starting with a letter or digit.
    #[param(
        min_length = 1,
        max_length = 128,
        pattern = "^[A-Za-z0-9][A-Za-z0-9._-]*$"
    )]
    pub service: String,
}

/// Query parameters every read takes.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ReadQuery {
    /// Answer from this server's memory without a ReadIndex round through the leader:
    /// faster and available without a leader, but possibly behind. `?stale` alone means
    /// `true`.
    pub stale: Option<bool>,
    /// `linearizable` (the default) or `stale`; `?stale` is a shorthand for the latter.
    pub consistency: Option<ReadConsistency>,
}

/// How fresh a read must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ReadConsistency {
    /// Reflects every write acknowledged before the read began (the default).
    Linearizable,
    /// Whatever the answering server has applied.
    Stale,
}

/// Query parameters of a blocking query.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct BlockingQuery {
    /// Block until what this query lists changes after this index (pass the
    /// `X-Registry-Index` of the previous answer), or until `wait` runs out. Without it
    /// the server answers at once.
    #[param(minimum = 0)]
    pub index: Option<u64>,
    /// How long to block, as a duration string; default `"5m"`, longer values are capped
    /// at `"10m"`. The server adds up to 1/16th at random, so watchers woken together do
    /// not all come back at once. When it runs out the server answers with what it has
    /// (status 200). Ignored without `index`.
    #[param(example = "30s")]
    pub wait: Option<String>,
}

/// Filters of `GET /v1/services/{service}`.
///
/// `meta.KEY=VALUE` filters on instance metadata; OpenAPI cannot name parameters by
/// prefix, so it is described on the operation instead of listed here.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct InstanceFilter {
    /// Only instances carrying this tag; repeat it (`?tag=a&tag=b`) to require all of them.
    #[param(style = Form, explode)]
    pub tag: Option<Vec<String>>,
    /// Only instances in this zone.
    pub zone: Option<String>,
    /// Only instances in this region.
    pub region: Option<String>,
    /// Which health states to list; default `passing` (healthy instances only).
    /// `healthy` is accepted as another name for `passing`.
    pub status: Option<StatusFilter>,
}

/// The `status` filter of a service query.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum StatusFilter {
    /// Only healthy instances (the default).
    Passing,
    /// Only instances that asked to be taken out of discovery.
    Draining,
    /// Only instances whose lease ended and that are not deregistered yet.
    Critical,
    /// Every registered instance, whatever its status.
    Any,
}

/// One doc-only function per route; nothing calls them, they exist for their
/// `#[utoipa::path]` attributes.
mod routes {
    #![allow(dead_code)]

    use super::{BlockingQuery, InstanceFilter, InstancePath, ReadQuery, ServicePath};
    use crate::{
        AddMemberRequest, ClusterStatus, CreateLeaseRequest, DeregisterResponse, ErrorBody,
        HealthStatus, HeartbeatResponse, Instance, LeaseInfo, MembershipResponse, RegisterRequest,
        RevokeLeaseResponse, ServiceInstances, ServiceList, SetStatusRequest,
    };

    /// Register an instance, or update it.
    ///
    /// Registering the same `service`/`id` again replaces its address, tags and metadata
    /// (the call is idempotent, so retrying after a timeout is safe). Unless `lease` names an
    /// existing lease, the instance gets a lease of its own with TTL `ttl`, kept alive by
    /// `PUT .../heartbeat`; when the lease ends the instance turns `critical`, and is
    /// deregistered `deregister_after` later.
    #[utoipa::path(
        put,
        path = "/v1/services/{service}/instances/{id}",
        tag = "services",
        params(InstancePath),
        request_body = RegisterRequest,
        responses(
            (status = 200, description = "The instance as registered.", body = Instance),
            (status = 400, description = "`invalid_json`: the body is not a `RegisterRequest`; `invalid_argument`: a field (or the service name or id) is out of range, or `ttl` was given with `lease`; `invalid_duration`: `ttl` or `deregister_after` cannot be read or is out of range.", body = ErrorBody),
            (status = 404, description = "`lease_not_found`: `lease` names no live lease.", body = ErrorBody),
            (status = 413, description = "`payload_too_large`: the body is too large.", body = ErrorBody),
            (status = 415, description = "`unsupported_media_type`: the body is not declared as `application/json`.", body = ErrorBody),
            (status = 503, description = "`no_leader` or `unavailable`: retry later.", body = ErrorBody),
        )
    )]
    fn register_instance() {}

    /// Deregister an instance.
    ///
    /// Its own lease (if it had one) ends with it; a shared lease it was bound to lives on.
    #[utoipa::path(
        delete,
        path = "/v1/services/{service}/instances/{id}",
        tag = "services",
        params(InstancePath),
        responses(
            (status = 200, description = "The instance is gone.", body = DeregisterResponse),
            (status = 400, description = "`invalid_argument`: the service name or id is not valid.", body = ErrorBody),
            (status = 404, description = "`instance_not_found`: no such instance is registered.", body = ErrorBody),
            (status = 503, description = "`no_leader` or `unavailable`: retry later.", body = ErrorBody),
        )
    )]
    fn deregister_instance() {}

    /// Renew an instance's lease.
    ///
    /// A 404 means the registry no longer keeps the instance alive: register it again.
    #[utoipa::path(
        put,
        path = "/v1/services/{service}/instances/{id}/heartbeat",
        tag = "services",
        params(InstancePath),
        responses(
            (status = 200, description = "The lease was renewed.", body = HeartbeatResponse),
            (status = 400, description = "`invalid_argument`: the service name or id is not valid.", body = ErrorBody),
            (status = 404, description = "`instance_not_found`: no such instance; `instance_critical`: its lease already ended. Either way, register it again.", body = ErrorBody),
            (status = 503, description = "`no_leader` or `unavailable`: retry later.", body = ErrorBody),
        )
    )]
    fn heartbeat_instance() {}

    /// Set an instance's status: `passing`, or `draining` to leave discovery gracefully.
    ///
    /// A draining instance keeps its lease (keep heartbeating) but is no longer listed by
    /// default queries. `critical` cannot be set: only the registry decides that.
    #[utoipa::path(
        put,
        path = "/v1/services/{service}/instances/{id}/status",
        tag = "services",
        params(InstancePath),
        request_body = SetStatusRequest,
        responses(
            (status = 200, description = "The instance with its new status.", body = Instance),
            (status = 400, description = "`invalid_argument`: the status is `critical`, or the service name or id is not valid; `invalid_json`: the body is not a `SetStatusRequest`.", body = ErrorBody),
            (status = 404, description = "`instance_not_found`: no such instance is registered.", body = ErrorBody),
            (status = 409, description = "`instance_critical`: its lease ended; register it again.", body = ErrorBody),
            (status = 413, description = "`payload_too_large`: the body is too large.", body = ErrorBody),
            (status = 415, description = "`unsupported_media_type`: the body is not declared as `application/json`.", body = ErrorBody),
            (status = 503, description = "`no_leader` or `unavailable`: retry later.", body = ErrorBody),
        )
    )]
    fn set_instance_status() {}

    /// List the services with registered instances (a blocking query).
    #[utoipa::path(
        get,
        path = "/v1/services",
        tag = "services",
        params(BlockingQuery, ReadQuery),
        responses(
            (status = 200, description = "Every service with at least one registered instance, by name.", body = ServiceList),
            (status = 400, description = "`invalid_argument`: `index`, `stale` or `consistency` cannot be read, or a query parameter is unknown; `invalid_duration`: `wait` cannot be read.", body = ErrorBody),
            (status = 503, description = "`no_leader` or `unavailable` (linearizable reads only): retry later, or read with `?stale`.", body = ErrorBody),
        )
    )]
    fn list_services() {}

    /// List a service's instances (a blocking query).
    ///
    /// By default only healthy (`passing`) instances are listed. All filters must match:
    /// every `tag` given, `zone`, `region`, `status`, and any number of metadata filters
    /// written `meta.KEY=VALUE` (e.g. `?meta.version=2&meta.canary=false`), each requiring
    /// the instance's `meta` to map `KEY` to exactly `VALUE`. A service without instances
    /// answers 200 with an empty list, so a blocking query can wait for its first one.
    #[utoipa::path(
        get,
        path = "/v1/services/{service}",
        tag = "services",
        params(
            ServicePath,
            InstanceFilter,
            BlockingQuery,
            ReadQuery,
        ),
        responses(
            (status = 200, description = "The matching instances, by id.", body = ServiceInstances),
            (status = 400, description = "`invalid_argument`: the service name is not valid, a filter, `index`, `stale` or `consistency` cannot be read, or a query parameter is unknown; `invalid_duration`: `wait` cannot be read.", body = ErrorBody),
            (status = 503, description = "`no_leader` or `unavailable` (linearizable reads only): retry later, or read with `?stale`.", body = ErrorBody),
        )
    )]
    fn get_service() {}

    /// Create a lease.
    #[utoipa::path(
        post,
        path = "/v1/leases",
        tag = "leases",
        request_body = CreateLeaseRequest,
        responses(
            (status = 200, description = "The new lease.", body = LeaseInfo),
            (status = 400, description = "`invalid_json`: the body is not a `CreateLeaseRequest`; `invalid_duration`: `ttl` cannot be read or is outside 1s..24h.", body = ErrorBody),
            (status = 413, description = "`payload_too_large`: the body is too large.", body = ErrorBody),
            (status = 415, description = "`unsupported_media_type`: the body is not declared as `application/json`.", body = ErrorBody),
            (status = 503, description = "`no_leader` or `unavailable`: retry later.", body = ErrorBody),
        )
    )]
    fn create_lease() {}

    /// Read a lease.
    ///
    /// `remaining_ms` is present only when the leader answered: only it keeps deadlines.
    #[utoipa::path(
        get,
        path = "/v1/leases/{id}",
        tag = "leases",
        params(
            ("id" = uuid::Uuid, Path, description = "The lease id."),
            ReadQuery,
        ),
        responses(
            (status = 200, description = "The lease.", body = LeaseInfo),
            (status = 400, description = "`invalid_argument`: the id is not a UUID, or `stale`/`consistency` cannot be read.", body = ErrorBody),
            (status = 404, description = "`lease_not_found`: the lease never existed, was revoked, or expired.", body = ErrorBody),
            (status = 503, description = "`no_leader` or `unavailable` (linearizable reads only): retry later, or read with `?stale`.", body = ErrorBody),
        )
    )]
    fn get_lease() {}

    /// Revoke a lease: everything bound to it ends with it.
    #[utoipa::path(
        delete,
        path = "/v1/leases/{id}",
        tag = "leases",
        params(("id" = uuid::Uuid, Path, description = "The lease id.")),
        responses(
            (status = 200, description = "The lease is revoked.", body = RevokeLeaseResponse),
            (status = 400, description = "`invalid_argument`: the id is not a UUID.", body = ErrorBody),
            (status = 404, description = "`lease_not_found`: the lease never existed, was revoked, or expired.", body = ErrorBody),
            (status = 503, description = "`no_leader` or `unavailable`: retry later.", body = ErrorBody),
        )
    )]
    fn revoke_lease() {}

    /// Keep a lease alive: restart its countdown at the full TTL.
    #[utoipa::path(
        put,
        path = "/v1/leases/{id}/keepalive",
        tag = "leases",
        params(("id" = uuid::Uuid, Path, description = "The lease id.")),
        responses(
            (status = 200, description = "The lease, with `remaining_ms` back at its TTL.", body = LeaseInfo),
            (status = 400, description = "`invalid_argument`: the id is not a UUID.", body = ErrorBody),
            (status = 404, description = "`lease_not_found`: the lease never existed, was revoked, or expired (too late: create a new one).", body = ErrorBody),
            (status = 503, description = "`no_leader` or `unavailable`: retry later.", body = ErrorBody),
        )
    )]
    fn keepalive_lease() {}

    /// The cluster as the answering server sees it: leader, term, members, indexes.
    #[utoipa::path(
        get,
        path = "/v1/cluster",
        tag = "cluster",
        responses(
            (status = 200, description = "The answering server's view.", body = ClusterStatus),
        )
    )]
    fn cluster_status() {}

    /// Add a server: it joins as a learner, catches up, then (unless `learner`) becomes a voter.
    ///
    /// Any server accepts the request and relays it to the leader. The answer comes once
    /// the change is committed, or 503 if the new server did not catch up within 30s.
    #[utoipa::path(
        post,
        path = "/v1/cluster/members",
        tag = "cluster",
        request_body = AddMemberRequest,
        responses(
            (status = 200, description = "The membership after the change.", body = MembershipResponse),
            (status = 400, description = "`invalid_json`: the body is not an `AddMemberRequest`; `invalid_argument`: `id` is 0 or `addr` is not `host:port`.", body = ErrorBody),
            (status = 409, description = "`membership_conflict`: the change conflicts with the current membership (e.g. another change is in progress).", body = ErrorBody),
            (status = 413, description = "`payload_too_large`: the body is too large.", body = ErrorBody),
            (status = 415, description = "`unsupported_media_type`: the body is not declared as `application/json`.", body = ErrorBody),
            (status = 503, description = "`no_leader` or `unavailable` (including a new server that did not catch up in time): retry later.", body = ErrorBody),
        )
    )]
    fn add_member() {}

    /// Remove a server (voter or learner).
    #[utoipa::path(
        delete,
        path = "/v1/cluster/members/{id}",
        tag = "cluster",
        params(("id" = u64, Path, description = "The server's node id.")),
        responses(
            (status = 200, description = "The membership after the change.", body = MembershipResponse),
            (status = 400, description = "`invalid_argument`: the id is not a node id.", body = ErrorBody),
            (status = 404, description = "`member_not_found`: the cluster has no member with this id.", body = ErrorBody),
            (status = 409, description = "`membership_conflict`: the change conflicts with the current membership.", body = ErrorBody),
            (status = 503, description = "`no_leader` or `unavailable`: retry later.", body = ErrorBody),
        )
    )]
    fn remove_member() {}

    /// Liveness: the process is up and serving HTTP.
    #[utoipa::path(
        get,
        path = "/healthz",
        tag = "probes",
        responses(
            (status = 200, description = "Always `ok: true` when the server answers at all.", body = HealthStatus),
        )
    )]
    fn healthz() {}

    /// Readiness: this server is a cluster member and knows a leader.
    #[utoipa::path(
        get,
        path = "/readyz",
        tag = "probes",
        responses(
            (status = 200, description = "Ready.", body = HealthStatus),
            (status = 503, description = "Not ready; `reason` says why. The body is a `HealthStatus`, not an `ErrorBody`.", body = HealthStatus),
        )
    )]
    fn readyz() {}

    /// This document.
    #[utoipa::path(
        get,
        path = "/v1/openapi.json",
        tag = "meta",
        responses(
            (status = 200, description = "The OpenAPI document of this API.", body = Object, content_type = "application/json"),
        )
    )]
    fn openapi_document() {}
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use serde_json::Value;

    use super::*;

    const METHODS: [&str; 8] = [
        "get", "put", "post", "delete", "patch", "head", "options", "trace",
    ];

    fn document() -> Value {
        serde_json::from_str(&openapi_json()).unwrap()
    }

    /// Every (method, path, status, response) in the document.
    fn responses(doc: &Value) -> Vec<(String, String, String, Value)> {
        let mut all = Vec::new();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for method in METHODS {
                let Some(op) = item.get(method) else { continue };
                for (status, response) in op["responses"].as_object().unwrap() {
                    all.push((
                        method.to_owned(),
                        path.clone(),
                        status.clone(),
                        response.clone(),
                    ));
                }
            }
        }
        all
    }

    #[test]
    fn document_names_the_api_and_its_version() {
        let doc = document();
        assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
        assert_eq!(doc["info"]["title"], "registry");
        assert_eq!(doc["info"]["version"], env!("CARGO_PKG_VERSION"));
        assert!(!doc["info"]["description"].as_str().unwrap().is_empty());
    }

    #[test]
    fn every_public_route_is_documented() {
        let doc = document();
        let mut routes = BTreeSet::new();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for method in METHODS {
                if item.get(method).is_some() {
                    routes.insert((method.to_uppercase(), path.clone()));
                }
            }
        }
        let expected: BTreeSet<(String, String)> = [
            ("PUT", "/v1/services/{service}/instances/{id}"),
            ("DELETE", "/v1/services/{service}/instances/{id}"),
            ("PUT", "/v1/services/{service}/instances/{id}/heartbeat"),
            ("PUT", "/v1/services/{service}/instances/{id}/status"),
            ("GET", "/v1/services"),
            ("GET", "/v1/services/{service}"),
            ("POST", "/v1/leases"),
            ("GET", "/v1/leases/{id}"),
            ("DELETE", "/v1/leases/{id}"),
            ("PUT", "/v1/leases/{id}/keepalive"),
            ("GET", "/v1/cluster"),
            ("POST", "/v1/cluster/members"),
            ("DELETE", "/v1/cluster/members/{id}"),
            ("GET", "/healthz"),
            ("GET", "/readyz"),
            ("GET", "/v1/openapi.json"),
        ]
        .into_iter()
        .map(|(m, p)| (m.to_owned(), p.to_owned()))
        .collect();
        assert_eq!(routes, expected);
    }

    #[test]
    fn every_response_carries_the_index_header() {
        let all = responses(&document());
        assert!(all.len() > 16, "expected many responses, got {}", all.len());
        for (method, path, status, response) in all {
            assert!(
                response["headers"].get(INDEX_HEADER).is_some(),
                "{method} {path} {status} lacks {INDEX_HEADER}"
            );
        }
    }

    #[test]
    fn errors_are_error_bodies_and_503s_say_when_to_retry() {
        let error_body = Value::from("#/components/schemas/ErrorBody");
        let mut errors = 0;
        for (method, path, status, response) in responses(&document()) {
            let schema = &response["content"]["application/json"]["schema"]["$ref"];
            if (method.as_str(), path.as_str()) == ("get", "/readyz") {
                // Readiness answers a `HealthStatus` either way: probes read `ok`.
                assert_eq!(schema, "#/components/schemas/HealthStatus");
                assert!(response["headers"].get("Retry-After").is_none());
                continue;
            }
            if status.starts_with('2') {
                assert_ne!(schema, &error_body, "{method} {path} {status}");
                continue;
            }
            errors += 1;
            assert_eq!(schema, &error_body, "{method} {path} {status}");
            assert_eq!(
                response["headers"].get("Retry-After").is_some(),
                status == "503",
                "{method} {path} {status}: Retry-After on 503s only"
            );
        }
        assert!(errors > 20, "expected many error answers, got {errors}");
    }

    #[test]
    fn every_referenced_schema_is_defined() {
        let doc = document();
        let text = doc.to_string();
        let schemas = doc["components"]["schemas"].as_object().unwrap();
        let prefix = "\"#/components/schemas/";
        let mut checked = 0;
        for piece in text.split(prefix).skip(1) {
            let name = &piece[..piece.find('"').unwrap()];
            assert!(
                schemas.contains_key(name),
                "{name} is referenced but missing"
            );
            checked += 1;
        }
        assert!(checked > 10, "expected many references, got {checked}");
    }

    #[test]
    fn query_parameters_of_the_service_query_are_documented() {
        let doc = document();
        let params = doc["paths"]["/v1/services/{service}"]["get"]["parameters"]
            .as_array()
            .unwrap();
        let named = |name: &str| {
            params
                .iter()
                .find(|p| p["name"] == name)
                .unwrap_or_else(|| panic!("no parameter {name}"))
        };
        assert_eq!(named("service")["in"], "path");
        for name in [
            "tag",
            "zone",
            "region",
            "status",
            "index",
            "wait",
            "stale",
            "consistency",
        ] {
            assert_eq!(named(name)["in"], "query", "{name}");
            assert_ne!(named(name)["required"], true, "{name} is optional");
        }
        assert_eq!(named("tag")["explode"], true);
        assert_eq!(named("tag")["schema"]["type"], "array");
        let description = doc["paths"]["/v1/services/{service}"]["get"]["description"]
            .as_str()
            .unwrap();
        assert!(description.contains("meta.KEY=VALUE"));
    }

    #[test]
    fn request_enums_match_their_serde_names() {
        let doc = document();
        let schemas = &doc["components"]["schemas"];
        assert_eq!(
            schemas["InstanceStatus"]["enum"],
            serde_json::json!(["passing", "draining", "critical"])
        );
        assert_eq!(
            schemas["ReadConsistency"]["enum"],
            serde_json::json!(["linearizable", "stale"])
        );
        assert_eq!(
            schemas["StatusFilter"]["enum"],
            serde_json::json!(["passing", "draining", "critical", "any"])
        );
        // `#[serde(default)]` fields are optional in the document too.
        let required = schemas["RegisterRequest"]["required"].as_array().unwrap();
        assert_eq!(required, &vec![Value::from("address"), Value::from("port")]);
    }
}
