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
//! What a request may hold comes from [`crate::rules`], the rules the server checks
//! with: [`RequestRules`] narrows each request field the types derive to its rule
//! (pattern, lengths, bounds, enum, item and pair counts, which of `lease`/`ttl` may be
//! given), and each path and query parameter the server checks to its rule. A duration's
//! range, which no pattern can say, is in its description and, for tools, in
//! `x-duration-min-ms`/`x-duration-max-ms`.
//!
//! The server serves [`openapi_json`] at `GET /v1/openapi.json`, and a test there checks
//! that the routes documented here are exactly the routes it serves.

use serde::Deserialize;
use utoipa::openapi::extensions::Extensions;
use utoipa::openapi::header::HeaderBuilder;
use utoipa::openapi::path::{Operation, Parameter, ParameterIn};
use utoipa::openapi::schema::{
    AdditionalProperties, ArrayBuilder, KnownFormat, Object, ObjectBuilder, Schema, SchemaFormat,
    SchemaType, Type,
};
use utoipa::openapi::{RefOr, Response};
use utoipa::{IntoParams, Modify, OpenApi, PartialSchema, ToSchema};

use crate::rules::{self, DurationRange, StringRule};
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
Any route may answer `500` with code `internal`; the details are in the server's log, \
and `503` with code `overloaded` when the server has as many connections, or the leader \
as many queued writes, as it allows.
- Every answer carries `X-Registry-Index`: the Raft log index it reflects.
- Reads are linearizable by default (a ReadIndex round through the leader); `?stale` \
(or `?consistency=stale`) answers from the receiving server's memory instead.
- Blocking queries: pass the `X-Registry-Index` of a previous answer as `?index=`, and the \
server holds the request until something changes past that index or `wait` runs out.
- Writes may be sent to any server; followers forward them to the leader.
- Every lock grant and election win carries a fencing `token` that strictly increases \
across all grants; a resource the holder acts on should reject any token lower than the \
highest it has seen.
- Access control (servers started with `--acl`): send a token's secret as \
`Authorization: Bearer <secret>` or `X-Registry-Token`. Without one a request gets the \
anonymous rules the servers were started with (none by default). `401 unauthenticated`: \
no token where one is needed, or a token the cluster does not know; `403 \
permission_denied`: the token's rules do not allow it (the message says what is needed). \
`/healthz`, `/readyz` and this document are open to all.";

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
        routes::acquire_lock,
        routes::release_lock,
        routes::get_lock,
        routes::list_locks,
        routes::campaign,
        routes::proclaim,
        routes::resign,
        routes::get_election,
        routes::list_elections,
        routes::cluster_status,
        routes::add_member,
        routes::remove_member,
        routes::acl_bootstrap,
        routes::create_token,
        routes::list_tokens,
        routes::own_token,
        routes::revoke_token,
        routes::prometheus_sd,
        routes::consul_register,
        routes::consul_deregister,
        routes::consul_maintenance,
        routes::consul_check_pass,
        routes::consul_check_warn,
        routes::consul_check_fail,
        routes::consul_check_update,
        routes::consul_agent_self,
        routes::consul_status_leader,
        routes::consul_status_peers,
        routes::consul_catalog_services,
        routes::consul_catalog_nodes,
        routes::consul_catalog_service,
        routes::consul_health_service,
        routes::consul_health_state,
        routes::snapshot,
        routes::metrics,
        routes::healthz,
        routes::readyz,
        routes::openapi_document,
    ),
    // Schemas reached from request and response bodies are collected on their own; the
    // enums used only by query parameters are not, so they are listed here.
    components(schemas(ReadConsistency, StatusFilter, CheckState)),
    modifiers(&Security, &Limits, &CommonHeaders, &RequestRules),
    tags(
        (name = "services", description = "Register instances and discover them."),
        (name = "leases", description = "Time-limited liveness tokens that instances, locks and elections hang on."),
        (name = "locks", description = "Distributed locks: one holder at a time, bound to a lease, with a FIFO wait queue and fencing tokens."),
        (name = "elections", description = "Leader election: one leader at a time, bound to a lease, announcing a value that observers follow with blocking queries."),
        (name = "cluster", description = "Raft membership and status."),
        (name = "acl", description = "Access control: tokens with rules, and the one-time bootstrap."),
        (name = "probes", description = "Liveness and readiness for orchestrators."),
        (name = "consul", description = "Consul-compatible routes, for tools that discover and register services through Consul. The reads also accept (and ignore) `dc`, `cached`, `ns`, `partition`, `near` and `node-meta`, and take `stale` or `consistent`; a token comes as `X-Consul-Token`, `?token=` or `Authorization: Bearer`; answers carry `X-Consul-Index`, `X-Consul-KnownLeader` and `X-Consul-LastContact`."),
        (name = "operations", description = "Metrics for Prometheus, and backups."),
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
                    if (status == "503" || status == "429") && is_error_body(response) {
                        response
                            .headers
                            .insert("Retry-After".to_owned(), retry_after.clone());
                    }
                }
            }
        }
    }
}

/// The routes open to every caller whatever ACLs say: the probes and this document.
pub const OPEN_PATHS: [&str; 3] = ["/healthz", "/readyz", "/v1/openapi.json"];

/// Declares how a caller presents a token, and on every route but [`OPEN_PATHS`] the
/// token (or none: the anonymous rules) and the `401`/`403` answers.
#[derive(Debug)]
struct Security;

impl Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{
            ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme,
        };
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("A token's secret: `Authorization: Bearer <secret>`."))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "token_header",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                crate::acl::TOKEN_HEADER,
                "A token's secret, for clients that cannot set `Authorization`.",
            ))),
        );
        let requirements = vec![
            SecurityRequirement::new("bearer", Vec::<String>::new()),
            SecurityRequirement::new("token_header", Vec::<String>::new()),
            // No token: the anonymous rules.
            SecurityRequirement::default(),
        ];
        for (path, item) in openapi.paths.paths.iter_mut() {
            if OPEN_PATHS.contains(&path.as_str()) {
                continue;
            }
            let operations = [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
                &mut item.patch,
            ];
            for operation in operations.into_iter().flatten() {
                operation.security = Some(requirements.clone());
                let responses = &mut operation.responses.responses;
                responses.entry("401".to_owned()).or_insert_with(|| {
                    RefOr::T(error_response(
                        "`unauthenticated`: with ACLs on, no token was given and the anonymous \
                         rules do not allow this, or the token is not known (never made, \
                         revoked or expired).",
                    ))
                });
                responses.entry("403".to_owned()).or_insert_with(|| {
                    RefOr::T(error_response(
                        "`permission_denied`: the token's rules do not allow this; the message \
                         names the resource, name and access needed.",
                    ))
                });
            }
        }
    }
}

/// Routes whose requests may wait on the server (besides blocking queries, which take
/// `index`): they hold a slot while they do.
const WAITING_PATHS: [&str; 2] = ["/v1/locks/{name}/acquire", "/v1/elections/{name}/campaign"];

/// Declares the refusals of an overloaded server: `429 too_many_waiters` on every
/// blocking query and waiting request, `503 overloaded` named on every route.
#[derive(Debug)]
struct Limits;

impl Modify for Limits {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let too_many = error_response(
            "`too_many_waiters`: this server holds as many blocking queries (or waiting \
             lock and election requests) as it allows (`GET /v1/cluster` shows its \
             limits); retry after `Retry-After`, or ask another server.",
        );
        for (path, item) in openapi.paths.paths.iter_mut() {
            let operations = [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
            ];
            for operation in operations.into_iter().flatten() {
                let blocking = operation
                    .parameters
                    .iter()
                    .flatten()
                    .any(|p| p.name == "index" && p.parameter_in == ParameterIn::Query);
                if !(blocking || WAITING_PATHS.contains(&path.as_str())) {
                    continue;
                }
                match operation.responses.responses.get_mut("429") {
                    // A waiting request's own 429 (a full queue): name both.
                    Some(RefOr::T(existing)) => {
                        existing.description =
                            format!("{} Or {}", existing.description, too_many.description);
                    }
                    _ => {
                        operation
                            .responses
                            .responses
                            .insert("429".to_owned(), RefOr::T(too_many.clone()));
                    }
                }
            }
        }
    }
}

/// An error answer (a [`crate::ErrorBody`]) with `description`, for the modifiers that add
/// answers to many routes.
fn error_response(description: &str) -> Response {
    utoipa::openapi::ResponseBuilder::new()
        .description(description)
        .content(
            "application/json",
            utoipa::openapi::ContentBuilder::new()
                .schema(Some(RefOr::Ref(utoipa::openapi::Ref::from_schema_name(
                    "ErrorBody",
                ))))
                .build(),
        )
        .build()
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

/// A string schema for `rule`; `nullable` where the field may also be `null` (the same as
/// leaving it out).
fn string_schema(rule: StringRule, nullable: bool, description: Option<String>) -> Object {
    ObjectBuilder::new()
        .schema_type(types(Type::String, nullable))
        .pattern(rule.pattern)
        .min_length((rule.min_length > 0).then_some(rule.min_length))
        .max_length(rule.max_length)
        .description(description)
        .build()
}

fn types(ty: Type, nullable: bool) -> SchemaType {
    if nullable {
        SchemaType::from_iter([ty, Type::Null])
    } else {
        SchemaType::new(ty)
    }
}

/// A duration string within `range`: the pattern gives its syntax; the range, which a
/// pattern cannot say, is written into the description and the `x-duration-*-ms`
/// extensions.
fn duration_schema(range: DurationRange, nullable: bool, description: Option<String>) -> Object {
    let human = crate::format_duration;
    let bounds = match range.max {
        Some(max) => format!(
            "between `\"{}\"` and `\"{}\"`",
            human(range.min),
            human(max)
        ),
        None => format!("at least `\"{}\"`, with no upper limit", human(range.min)),
    };
    let prose = format!(
        "A duration: whole numbers each with a unit (`ns`, `us`, `ms`, `s`, `m`, `h`, `d` and \
         their longer names), at most one space between them, e.g. `\"15s\"`, `\"1m 30s\"`; \
         {bounds} (a range the pattern cannot express; also in `x-duration-min-ms` and \
         `x-duration-max-ms`). A number too large to represent is refused."
    );
    let description = match description {
        Some(d) => format!("{d}\n\n{prose}"),
        None => prose,
    };
    let mut schema = string_schema(rules::DURATION, nullable, Some(description));
    let mut extensions = Extensions::default();
    extensions.insert("x-duration-min-ms".into(), millis(range.min).into());
    if let Some(max) = range.max {
        extensions.insert("x-duration-max-ms".into(), millis(max).into());
    }
    schema.extensions = Some(extensions);
    schema
}

fn millis(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn integer_schema(min: u64, max: u64, nullable: bool, description: Option<String>) -> Object {
    ObjectBuilder::new()
        .schema_type(types(Type::Integer, nullable))
        .format(Some(SchemaFormat::KnownFormat(KnownFormat::Int64)))
        .minimum(Some(min))
        .maximum(Some(max))
        .description(description)
        .build()
}

fn uuid_schema(description: Option<String>) -> Object {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .format(Some(SchemaFormat::KnownFormat(KnownFormat::Uuid)))
        .description(description)
        .build()
}

/// How one request field is narrowed to its rule; gets the field's own description.
type Narrow = fn(Option<String>) -> Schema;

/// Every request field with a rule beyond its type: (schema, field, its schema).
/// An instance's `tags`: a bounded list of tag strings.
fn tags_schema(description: Option<String>) -> Schema {
    ArrayBuilder::new()
        .items(string_schema(rules::TAG, false, None))
        .max_items(Some(rules::MAX_TAGS))
        .description(description)
        .build()
        .into()
}

/// An instance's `meta`: a bounded map of names to text.
fn meta_schema(description: Option<String>) -> Schema {
    let mut meta = ObjectBuilder::new()
        .schema_type(Type::Object)
        .additional_properties(Some(AdditionalProperties::RefOr(RefOr::T(
            string_schema(rules::META_VALUE, false, None).into(),
        ))))
        .property_names(Some(string_schema(rules::NAME, false, None)))
        .max_properties(Some(rules::MAX_META))
        .description(description)
        .build();
    meta.properties.clear();
    meta.into()
}

fn request_field_rules() -> Vec<(&'static str, &'static str, Narrow)> {
    vec![
        ("CreateLeaseRequest", "ttl", |d| {
            duration_schema(rules::LEASE_TTL, false, d).into()
        }),
        ("RegisterRequest", "address", |d| {
            string_schema(rules::ADDRESS, false, d).into()
        }),
        ("RegisterRequest", "port", |d| {
            integer_schema(rules::MIN_PORT.into(), u16::MAX.into(), false, d).into()
        }),
        ("RegisterRequest", "tags", tags_schema),
        ("RegisterRequest", "meta", meta_schema),
        ("RegisterRequest", "zone", |d| {
            string_schema(rules::NAME, true, d).into()
        }),
        ("RegisterRequest", "region", |d| {
            string_schema(rules::NAME, true, d).into()
        }),
        ("RegisterRequest", "weight", |d| {
            integer_schema(0, rules::MAX_WEIGHT.into(), true, d).into()
        }),
        ("RegisterRequest", "ttl", |d| {
            duration_schema(rules::LEASE_TTL, false, d).into()
        }),
        ("RegisterRequest", "deregister_after", |d| {
            duration_schema(rules::DEREGISTER_AFTER, true, d).into()
        }),
        ("RegisterRequest", "lease", |d| uuid_schema(d).into()),
        ("RegisterRequest", "checks", |d| {
            ArrayBuilder::new()
                .items(RefOr::Ref(utoipa::openapi::Ref::from_schema_name(
                    "CheckDefinition",
                )))
                .max_items(Some(crate::checks::MAX_CHECKS))
                .description(d)
                .build()
                .into()
        }),
        ("ConsulRegistration", "Name", |d| {
            string_schema(rules::NAME, false, d).into()
        }),
        ("ConsulRegistration", "ID", |d| {
            string_schema(rules::INSTANCE_ID, true, d).into()
        }),
        ("ConsulRegistration", "Address", |d| {
            string_schema(rules::ADDRESS, true, d).into()
        }),
        ("ConsulRegistration", "Port", |d| {
            integer_schema(rules::MIN_PORT.into(), u16::MAX.into(), false, d).into()
        }),
        ("ConsulRegistration", "Tags", tags_schema),
        ("ConsulRegistration", "Meta", meta_schema),
        ("ConsulWeights", "Passing", |d| {
            integer_schema(0, rules::MAX_WEIGHT.into(), false, d).into()
        }),
        ("ConsulCheck", "TTL", |d| {
            duration_schema(rules::LEASE_TTL, false, d).into()
        }),
        ("ConsulCheck", "DeregisterCriticalServiceAfter", |d| {
            duration_schema(rules::DEREGISTER_AFTER, true, d).into()
        }),
        ("ConsulCheckUpdate", "Status", |d| {
            ObjectBuilder::new()
                .schema_type(Type::String)
                .enum_values(Some(["passing", "warning", "critical"]))
                .description(d)
                .build()
                .into()
        }),
        ("SetStatusRequest", "status", |d| {
            ObjectBuilder::new()
                .schema_type(Type::String)
                .enum_values(Some(rules::SETTABLE_STATUSES.map(status_name)))
                .description(d)
                .build()
                .into()
        }),
        ("AcquireRequest", "lease", |d| uuid_schema(d).into()),
        ("AcquireRequest", "ttl", |d| {
            duration_schema(rules::LEASE_TTL, false, d).into()
        }),
        ("AcquireRequest", "wait", |d| {
            duration_schema(rules::LOCK_WAIT, true, d).into()
        }),
        ("AcquireRequest", "holder", |d| {
            string_schema(rules::HOLDER, true, d).into()
        }),
        ("AcquireRequest", "lock_delay", |d| {
            duration_schema(rules::LOCK_DELAY, true, d).into()
        }),
        ("CampaignRequest", "candidate", |d| {
            string_schema(rules::CANDIDATE, false, d).into()
        }),
        ("CampaignRequest", "lease", |d| uuid_schema(d).into()),
        ("CampaignRequest", "ttl", |d| {
            duration_schema(rules::LEASE_TTL, false, d).into()
        }),
        ("CampaignRequest", "wait", |d| {
            duration_schema(rules::LOCK_WAIT, true, d).into()
        }),
        ("ProclaimRequest", "candidate", |d| {
            string_schema(rules::CANDIDATE, false, d).into()
        }),
        ("CreateTokenRequest", "description", |d| {
            string_schema(rules::DESCRIPTION, false, d).into()
        }),
        ("CreateTokenRequest", "rules", |d| {
            ArrayBuilder::new()
                .items(RefOr::Ref(utoipa::openapi::Ref::from_schema_name("Rule")))
                .max_items(Some(crate::acl::MAX_RULES))
                .description(d)
                .build()
                .into()
        }),
        ("CreateTokenRequest", "ttl", |d| {
            duration_schema(rules::TOKEN_TTL, true, d).into()
        }),
        ("Rule", "prefix", |d| {
            string_schema(rules::ACL_PREFIX, false, d).into()
        }),
        ("AddMemberRequest", "id", |d| {
            integer_schema(rules::MIN_NODE_ID, u64::MAX, false, d).into()
        }),
        ("AddMemberRequest", "addr", |d| {
            string_schema(rules::MEMBER_ADDR, false, d).into()
        }),
    ]
}

fn status_name(status: crate::InstanceStatus) -> &'static str {
    match status {
        crate::InstanceStatus::Passing => "passing",
        crate::InstanceStatus::Draining => "draining",
        crate::InstanceStatus::Critical => "critical",
    }
}

/// Requests that bind to a lease: `(schema, exactly one of lease/ttl required)`.
const LEASE_OR_TTL: [(&str, bool); 3] = [
    ("RegisterRequest", false),
    ("AcquireRequest", true),
    ("CampaignRequest", true),
];

/// Narrows the request schemas derived from the types to what [`crate::rules`] accepts
/// (see the module docs).
#[derive(Debug)]
struct RequestRules;

impl Modify for RequestRules {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        for (path, item) in openapi.paths.paths.iter_mut() {
            let operations = [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
            ];
            for operation in operations.into_iter().flatten() {
                for parameter in operation.parameters.iter_mut().flatten() {
                    if let Some(schema) = parameter_rule(path, parameter) {
                        parameter.schema = Some(RefOr::T(schema.into()));
                    }
                }
            }
        }
        let Some(components) = openapi.components.as_mut() else {
            return;
        };
        let schemas = &mut components.schemas;
        for (schema, field, narrow) in request_field_rules() {
            let property = object(schemas, schema)
                .properties
                .get_mut(field)
                .unwrap_or_else(|| panic!("{schema} has no field {field}"));
            *property = RefOr::T(narrow(description(property)));
        }
        let checks = object(schemas, "RegisterRequest")
            .properties
            .get_mut("checks")
            .expect("RegisterRequest has checks");
        if let RefOr::T(Schema::Array(array)) = checks {
            array
                .extensions
                .get_or_insert_with(Extensions::default)
                .insert("x-unique-items-by".into(), "name".into());
        }
        for (name, schema) in check_schemas() {
            schemas.insert(name.to_owned(), schema);
        }
        for (schema, one_required) in LEASE_OR_TTL {
            // utoipa's `Object` has no field for these JSON Schema keywords; extensions
            // are written into the object as they are, which is where they belong.
            let (keyword, value) = if one_required {
                (
                    "oneOf",
                    serde_json::json!([{"required": ["lease"]}, {"required": ["ttl"]}]),
                )
            } else {
                ("not", serde_json::json!({"required": ["lease", "ttl"]}))
            };
            object(schemas, schema)
                .extensions
                .get_or_insert_with(Extensions::default)
                .insert(keyword.into(), value);
        }
    }
}

/// `CheckDefinition` as what the server accepts: one of an HTTP, a TCP and a gRPC check,
/// each with only its own fields (the derived schema would allow any mix).
fn check_schemas() -> Vec<(&'static str, RefOr<Schema>)> {
    use crate::checks::{
        CHECK_METHODS, MAX_CHECK_HEADERS, MAX_CHECK_HEADER_VALUE_LEN, MAX_CHECK_TIMEOUT,
        MAX_CHECK_URL_LEN, MAX_THRESHOLD, MIN_CHECK_TIMEOUT,
    };
    let schema = |object: Object| serde_json::to_value(Schema::Object(object)).unwrap_or_default();
    let timeout = DurationRange {
        min: MIN_CHECK_TIMEOUT,
        max: Some(MAX_CHECK_TIMEOUT),
    };
    let threshold = |what: &str| {
        schema(integer_schema(
            1,
            u64::from(MAX_THRESHOLD),
            true,
            Some(format!(
                "Consecutive probes that {what}, 1 to {MAX_THRESHOLD}."
            )),
        ))
    };
    let common = serde_json::json!({
        "name": schema(string_schema(rules::NAME, false, Some("Unique among the instance's checks.".into()))),
        "interval": schema(duration_schema(rules::CHECK_INTERVAL, true, Some("Time between probes (default `\"10s\"`).".into()))),
        "timeout": schema(duration_schema(timeout, true, Some("How long one probe may take (default: the smaller of `\"5s\"` and the interval). A probe still running when the next is due makes that one skip.".into()))),
        "failures_before_critical": threshold("turn a passing check critical (default 3)"),
        "successes_before_passing": threshold("turn a critical check passing (default 1)"),
    });
    let with = |own: serde_json::Value| {
        let mut properties = common.clone();
        if let (Some(all), Some(own)) = (properties.as_object_mut(), own.as_object()) {
            all.extend(own.clone());
        }
        properties
    };
    let host_port = |what: &str| {
        schema(string_schema(
            StringRule {
                pattern: Some(rules::HOST_PORT_PATTERN),
                min_length: 3,
                max_length: Some(rules::MAX_ADDRESS_LEN + 2),
            },
            false,
            Some(format!("`host:port` {what}; the host must be the instance's `address` unless the token has `cluster:write`.")),
        ))
    };
    let http = serde_json::json!({
        "type": "object",
        "description": "An HTTP check: passes when the answer's status is `expect_status`. Redirects are not followed; at most 4 KiB of the body is read.",
        "required": ["name", "http"],
        "additionalProperties": false,
        "properties": with(serde_json::json!({
            "http": schema(string_schema(
                StringRule { pattern: Some(rules::CHECK_URL_PATTERN), min_length: 8, max_length: Some(MAX_CHECK_URL_LEN) },
                false,
                Some("An `http://` or `https://` URL; its host must be the instance's `address` unless the token has `cluster:write`. (The server accepts any such URL without user info; the pattern describes a safe part of them.)".into()),
            )),
            "method": {"type": ["string", "null"], "enum": CHECK_METHODS.iter().map(|m| serde_json::Value::from(*m)).chain([serde_json::Value::Null]).collect::<Vec<_>>(), "description": "Default `GET`."},
            "header": {
                "type": "object",
                "description": "Request headers, each name with its values.",
                "maxProperties": MAX_CHECK_HEADERS,
                "propertyNames": schema(string_schema(StringRule { pattern: Some(rules::HEADER_NAME_PATTERN), min_length: 1, max_length: Some(rules::MAX_NAME_LEN) }, false, None)),
                "additionalProperties": {
                    "type": "array",
                    "maxItems": MAX_CHECK_HEADERS,
                    "items": schema(string_schema(StringRule { pattern: Some(rules::HEADER_VALUE_PATTERN), min_length: 0, max_length: Some(MAX_CHECK_HEADER_VALUE_LEN) }, false, None)),
                },
            },
            "expect_status": schema(string_schema(
                StringRule { pattern: Some(rules::EXPECT_STATUS_PATTERN), min_length: 3, max_length: Some(3) },
                true,
                Some("A class such as `\"2xx\"` (the default) or one code such as `\"204\"`.".into()),
            )),
        })),
    });
    let tcp = serde_json::json!({
        "type": "object",
        "description": "A TCP check: passes when a connection opens.",
        "required": ["name", "tcp"],
        "additionalProperties": false,
        "properties": with(serde_json::json!({"tcp": host_port("to connect to")})),
    });
    let grpc = serde_json::json!({
        "type": "object",
        "description": "A gRPC check: `grpc.health.v1.Health/Check` over plaintext HTTP/2; passes on `SERVING`.",
        "required": ["name", "grpc"],
        "additionalProperties": false,
        "properties": with(serde_json::json!({
            "grpc": host_port("of the gRPC server"),
            "grpc_service": schema(string_schema(
                StringRule { pattern: Some(rules::TEXT_PATTERN), min_length: 0, max_length: Some(256) },
                true,
                Some("The service asked about (default `\"\"`: the server as a whole).".into()),
            )),
        })),
    });
    let definition = serde_json::json!({
        "description": "One active health check of a registration: an HTTP, a TCP or a gRPC check.",
        "oneOf": [
            {"$ref": "#/components/schemas/HttpCheck"},
            {"$ref": "#/components/schemas/TcpCheck"},
            {"$ref": "#/components/schemas/GrpcCheck"},
        ],
    });
    [
        ("CheckDefinition", definition),
        ("HttpCheck", http),
        ("TcpCheck", tcp),
        ("GrpcCheck", grpc),
    ]
    .into_iter()
    .map(|(name, value)| {
        let schema = serde_json::from_value(value)
            .unwrap_or_else(|e| panic!("the {name} schema does not read back: {e}"));
        (name, schema)
    })
    .collect()
}

/// The object schema `name` of the document's components.
fn object<'a>(
    schemas: &'a mut std::collections::BTreeMap<String, RefOr<Schema>>,
    name: &str,
) -> &'a mut Object {
    match schemas.get_mut(name) {
        Some(RefOr::T(Schema::Object(object))) => object,
        // A test builds the document, so a renamed type fails it, not a request.
        _ => panic!("the OpenAPI document has no object schema {name}"),
    }
}

/// A property's own description, kept when its schema is replaced.
fn description(schema: &RefOr<Schema>) -> Option<String> {
    match schema {
        RefOr::T(Schema::Object(o)) => o.description.clone(),
        RefOr::T(Schema::Array(a)) => a.description.clone(),
        RefOr::T(Schema::OneOf(o)) => o.description.clone(),
        RefOr::T(Schema::AllOf(o)) => o.description.clone(),
        RefOr::T(Schema::AnyOf(o)) => o.description.clone(),
        _ => None,
    }
}

/// The rule of a path or query parameter the server checks beyond its type, if any.
fn parameter_rule(path: &str, parameter: &Parameter) -> Option<Object> {
    let rule = match (&parameter.parameter_in, parameter.name.as_str()) {
        (ParameterIn::Path, "service" | "name") => rules::NAME,
        (ParameterIn::Query, "service") if path == "/v1/sd/prometheus" => rules::NAME,
        (ParameterIn::Path, "id") if path.starts_with("/v1/agent/service/") => rules::INSTANCE_ID,
        (ParameterIn::Path, "check") => rules::CHECK_ID,
        (ParameterIn::Path, "id") if path.starts_with("/v1/services/") => rules::INSTANCE_ID,
        (ParameterIn::Query, "wait") => {
            return Some(duration_schema(rules::BLOCKING_WAIT, false, None))
        }
        _ => return None,
    };
    Some(string_schema(rule, false, None))
}

/// The path of an instance: `/v1/services/{service}/instances/{id}...`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct InstancePath {
    /// The service name: letters, digits, `.`, `_`, `-`, starting with a letter or digit.
    pub service: String,
    /// The instance id, unique within its service: letters, digits, `.`, `_`, `-`, `:`,
    /// `@` (so `host:port` works), starting with a letter or digit.
    pub id: String,
}

/// The path of a service: `/v1/services/{service}`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct ServicePath {
    /// The service name: letters, digits, `.`, `_`, `-`, starting with a letter or digit.
    pub service: String,
}

/// The path of a lock: `/v1/locks/{name}...`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct LockPath {
    /// The lock name: letters, digits, `.`, `_`, `-`, starting with a letter or digit
    /// (the rule of service names). Locks and elections have separate name spaces.
    pub name: String,
}

/// The path of an election: `/v1/elections/{name}...`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct ElectionPath {
    /// The election name: letters, digits, `.`, `_`, `-`, starting with a letter or digit
    /// (the rule of service names). Elections and locks have separate name spaces.
    pub name: String,
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

/// The check state of `GET /v1/health/state/{state}` (Consul's).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CheckState {
    Any,
    Passing,
    Warning,
    Critical,
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

    use super::{
        BlockingQuery, CheckState, ElectionPath, InstanceFilter, InstancePath, LockPath, ReadQuery,
        ServicePath, StatusFilter,
    };
    use crate::acl::{CreateTokenRequest, RevokeTokenResponse, TokenCreated, TokenInfo, TokenList};
    use crate::{
        AcquireRequest, AddMemberRequest, CampaignRequest, CampaignResponse, ClusterStatus,
        CreateLeaseRequest, DeregisterResponse, ElectionInfo, ElectionLeader, ElectionList,
        ErrorBody, HealthStatus, HeartbeatResponse, Instance, LeaseInfo, LockGrant, LockInfo,
        LockList, MembershipResponse, ProclaimRequest, PrometheusTargetGroup, RegisterRequest,
        ReleaseRequest, ReleaseResponse, RevokeLeaseResponse, ServiceInstances, ServiceList,
        SetStatusRequest,
    };
    use crate::{ConsulCheckUpdate, ConsulRegistration};

    /// Register an instance, or update it.
    ///
    /// Registering the same `service`/`id` again replaces its address, tags and metadata
    /// (the call is idempotent, so retrying after a timeout is safe). Unless `lease` names an
    /// existing lease, the instance gets a lease of its own with TTL `ttl`, kept alive by
    /// `PUT .../heartbeat`; when the lease ends the instance turns `critical`, and is
    /// deregistered `deregister_after` later.
    ///
    /// `checks` are active health checks the cluster runs (HTTP, TCP, gRPC health): one
    /// server probes each and only transitions are written. An instance with checks and
    /// neither `ttl` nor `lease` has no lease and needs no heartbeats. A check may only
    /// probe the instance's own `address` unless the token has `cluster:write`.
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
            (status = 409, description = "`instance_unleased`: the instance has no lease (its active checks keep it registered); it needs no heartbeats.", body = ErrorBody),
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

    /// Acquire a lock, waiting in line for it if asked to.
    ///
    /// Give `lease` (hold the lock under a lease you keep alive) or `ttl` (the server makes
    /// a lease of the lock's own, returned in the answer: keep it alive with
    /// `PUT /v1/leases/{id}/keepalive`). The lock is held until it is released, or until its
    /// lease is revoked or expires.
    ///
    /// A free lock is granted at once. When it is held, has waiters or is in its
    /// lock-delay, the request answers `409` at once unless `wait` is given (at most
    /// `"10m"`): then it joins the lock's FIFO queue and the request blocks server-side until
    /// it reaches the front and is granted (`200`), or `wait` runs out (`409`). A release,
    /// or the end of the holder's lease, hands the lock to the next waiter only, so one
    /// release wakes one request. A waiter whose HTTP request goes away (the client
    /// disconnects or times out) leaves the queue, and a grant that reached it meanwhile is
    /// released, since nobody learns its token. While a request waits, the server keeps
    /// its lease alive. Set the client's HTTP timeout above `wait`.
    ///
    /// Every grant carries a fencing `token`, strictly greater than every earlier grant's
    /// (of any lock or election): pass it to the resource the lock protects, which should
    /// reject tokens lower than the highest it has seen. Acquiring again under the `lease`
    /// that already holds the lock answers that same grant (same token); under a lease that
    /// already waits, it takes over that place in line.
    ///
    /// Lock-delay: when a holder's lease *expires* (rather than the lock being released or
    /// the lease revoked), the lock is not granted again for that holder's `lock_delay`
    /// (default `"1s"`, at most `"1m"`), protecting resources that do not check tokens.
    #[utoipa::path(
        post,
        path = "/v1/locks/{name}/acquire",
        tag = "locks",
        params(LockPath),
        request_body = AcquireRequest,
        responses(
            (status = 200, description = "The caller holds the lock, with its fencing token.", body = LockGrant),
            (status = 400, description = "`invalid_json`: the body is not an `AcquireRequest`; `invalid_argument`: the name is not valid, both or neither of `lease` and `ttl` were given, or `holder` is longer than 256 characters or contains control characters; `invalid_duration`: `ttl`, `wait` or `lock_delay` cannot be read or is out of range (`ttl` 1s..24h, `wait` at most 10m, `lock_delay` at most 1m).", body = ErrorBody),
            (status = 404, description = "`lease_not_found`: `lease` names no live lease, or the request's lease ended while it waited in line.", body = ErrorBody),
            (status = 409, description = "`lock_held`: the lock is held, has waiters or is in its lock-delay, and `wait` was 0 or ran out. The body's `lock` shows the lock as it is (holder, waiters, `delay_until_ms`).", body = ErrorBody),
            (status = 413, description = "`payload_too_large`: the body is too large.", body = ErrorBody),
            (status = 415, description = "`unsupported_media_type`: the body is not declared as `application/json`.", body = ErrorBody),
            (status = 429, description = "`queue_full`: the lock's wait queue is full; nothing changed. Retry later.", body = ErrorBody),
            (status = 503, description = "`no_leader` or `unavailable`: retry later.", body = ErrorBody),
        )
    )]
    fn acquire_lock() {}

    /// Release a lock held with `token`.
    ///
    /// The lock passes to the next waiter, if any, in the same log entry. Releasing a lock
    /// acquired with `ttl` also revokes its own lease; a lease given as `lease` lives on.
    /// A release has no lock-delay.
    #[utoipa::path(
        post,
        path = "/v1/locks/{name}/release",
        tag = "locks",
        params(LockPath),
        request_body = ReleaseRequest,
        responses(
            (status = 200, description = "The lock is released.", body = ReleaseResponse),
            (status = 400, description = "`invalid_json`: the body is not a `ReleaseRequest`; `invalid_argument`: the name is not valid.", body = ErrorBody),
            (status = 409, description = "`token_mismatch`: `token` is not the current holder's (the lock was already released, its lease ended, or it passed on); nothing changed. The body's `lock` shows the lock as it is.", body = ErrorBody),
            (status = 413, description = "`payload_too_large`: the body is too large.", body = ErrorBody),
            (status = 415, description = "`unsupported_media_type`: the body is not declared as `application/json`.", body = ErrorBody),
            (status = 503, description = "`no_leader` or `unavailable`: retry later.", body = ErrorBody),
        )
    )]
    fn release_lock() {}

    /// Read a lock: its holder and waiters (a blocking query).
    ///
    /// A lock nobody holds answers 200 with `held: false`, no holder and no waiters, so a
    /// blocking query can wait for it to be taken. With `index`, the answer comes when the
    /// lock changes after that index, or when `wait` runs out.
    #[utoipa::path(
        get,
        path = "/v1/locks/{name}",
        tag = "locks",
        params(LockPath, BlockingQuery, ReadQuery),
        responses(
            (status = 200, description = "The lock as it is.", body = LockInfo),
            (status = 400, description = "`invalid_argument`: the name is not valid, `index`, `stale` or `consistency` cannot be read, or a query parameter is unknown; `invalid_duration`: `wait` cannot be read.", body = ErrorBody),
            (status = 503, description = "`no_leader` or `unavailable` (linearizable reads only): retry later, or read with `?stale`.", body = ErrorBody),
        )
    )]
    fn get_lock() {}

    /// List the locks that are held, have waiters or are in their lock-delay (a blocking
    /// query).
    ///
    /// With `index`, the answer comes when any lock changes after that index, or when
    /// `wait` runs out.
    #[utoipa::path(
        get,
        path = "/v1/locks",
        tag = "locks",
        params(BlockingQuery, ReadQuery),
        responses(
            (status = 200, description = "Every lock that is not free, by name.", body = LockList),
            (status = 400, description = "`invalid_argument`: `index`, `stale` or `consistency` cannot be read, or a query parameter is unknown; `invalid_duration`: `wait` cannot be read.", body = ErrorBody),
            (status = 503, description = "`no_leader` or `unavailable` (linearizable reads only): retry later, or read with `?stale`.", body = ErrorBody),
        )
    )]
    fn list_locks() {}

    /// Campaign to lead an election, waiting for leadership if asked to.
    ///
    /// An election is a lock whose holder announces a value (`candidate`, e.g. its
    /// address) for observers, who follow leadership with blocking queries on
    /// `GET /v1/elections/{name}`. Give `lease` or `ttl`, as for a lock; the candidate leads
    /// until it resigns or its lease is revoked or expires, and then the next waiting
    /// candidate leads. Elections have no lock-delay: when a leader's lease expires, the
    /// next candidate leads at once (tokens tell the old leader's actions from the new).
    ///
    /// When another candidate leads, the request answers `409` at once unless `wait` is
    /// given (at most `"10m"`): then it joins the FIFO line of candidates and blocks until
    /// it leads (`200`) or `wait` runs out (`409`). A candidate whose HTTP request goes away
    /// leaves the line; while it waits, the server keeps its lease alive.
    ///
    /// Each leadership term has a fencing `token`, strictly greater than every earlier
    /// grant's: pass it with the leader's actions so that a deposed leader's are rejected.
    #[utoipa::path(
        post,
        path = "/v1/elections/{name}/campaign",
        tag = "elections",
        params(ElectionPath),
        request_body = CampaignRequest,
        responses(
            (status = 200, description = "This candidate leads, with the term's fencing token.", body = CampaignResponse),
            (status = 400, description = "`invalid_json`: the body is not a `CampaignRequest`; `invalid_argument`: the name is not valid, both or neither of `lease` and `ttl` were given, or `candidate` is empty or longer than 4096 characters; `invalid_duration`: `ttl` or `wait` cannot be read or is out of range (`ttl` 1s..24h, `wait` at most 10m).", body = ErrorBody),
            (status = 404, description = "`lease_not_found`: `lease` names no live lease, or the candidacy's lease ended while it waited in line.", body = ErrorBody),
            (status = 409, description = "`election_held`: another candidate leads, and `wait` was 0 or ran out. The body's `election` shows the election as it is (leader, candidates).", body = ErrorBody),
            (status = 413, description = "`payload_too_large`: the body is too large.", body = ErrorBody),
            (status = 415, description = "`unsupported_media_type`: the body is not declared as `application/json`.", body = ErrorBody),
            (status = 429, description = "`queue_full`: the election's line of candidates is full; nothing changed. Retry later.", body = ErrorBody),
            (status = 503, description = "`no_leader` or `unavailable`: retry later.", body = ErrorBody),
        )
    )]
    fn campaign() {}

    /// Announce a new value as the election's leader.
    ///
    /// Only the current leader's `token` changes anything; observers blocked on the
    /// election are woken with the new value.
    #[utoipa::path(
        post,
        path = "/v1/elections/{name}/proclaim",
        tag = "elections",
        params(ElectionPath),
        request_body = ProclaimRequest,
        responses(
            (status = 200, description = "The leader with its new value.", body = ElectionLeader),
            (status = 400, description = "`invalid_json`: the body is not a `ProclaimRequest`; `invalid_argument`: the name is not valid, or `candidate` is empty or longer than 4096 characters.", body = ErrorBody),
            (status = 409, description = "`token_mismatch`: `token` is not the current leader's (it resigned, its lease ended, or leadership passed on); nothing changed. The body's `election` shows the election as it is.", body = ErrorBody),
            (status = 413, description = "`payload_too_large`: the body is too large.", body = ErrorBody),
            (status = 415, description = "`unsupported_media_type`: the body is not declared as `application/json`.", body = ErrorBody),
            (status = 503, description = "`no_leader` or `unavailable`: retry later.", body = ErrorBody),
        )
    )]
    fn proclaim() {}

    /// Resign the leadership held with `token`.
    ///
    /// The next waiting candidate, if any, leads from the same log entry. Resigning a
    /// candidacy made with `ttl` also revokes its own lease; a lease given as `lease` lives
    /// on.
    #[utoipa::path(
        post,
        path = "/v1/elections/{name}/resign",
        tag = "elections",
        params(ElectionPath),
        request_body = ReleaseRequest,
        responses(
            (status = 200, description = "The leadership is given up.", body = ReleaseResponse),
            (status = 400, description = "`invalid_json`: the body is not a `ReleaseRequest`; `invalid_argument`: the name is not valid.", body = ErrorBody),
            (status = 409, description = "`token_mismatch`: `token` is not the current leader's; nothing changed. The body's `election` shows the election as it is.", body = ErrorBody),
            (status = 413, description = "`payload_too_large`: the body is too large.", body = ErrorBody),
            (status = 415, description = "`unsupported_media_type`: the body is not declared as `application/json`.", body = ErrorBody),
            (status = 503, description = "`no_leader` or `unavailable`: retry later.", body = ErrorBody),
        )
    )]
    fn resign() {}

    /// Read an election: its leader and waiting candidates (a blocking query).
    ///
    /// Observers follow leadership with blocking queries: pass the `X-Registry-Index` of
    /// the previous answer as `index`, and the answer comes when the election changes
    /// after it (a new leader, a proclaimed value, a resignation) or when `wait` runs out.
    /// An election nobody leads answers 200 with no leader.
    #[utoipa::path(
        get,
        path = "/v1/elections/{name}",
        tag = "elections",
        params(ElectionPath, BlockingQuery, ReadQuery),
        responses(
            (status = 200, description = "The election as it is.", body = ElectionInfo),
            (status = 400, description = "`invalid_argument`: the name is not valid, `index`, `stale` or `consistency` cannot be read, or a query parameter is unknown; `invalid_duration`: `wait` cannot be read.", body = ErrorBody),
            (status = 503, description = "`no_leader` or `unavailable` (linearizable reads only): retry later, or read with `?stale`.", body = ErrorBody),
        )
    )]
    fn get_election() {}

    /// List the elections with a leader or candidates (a blocking query).
    ///
    /// With `index`, the answer comes when any election changes after that index, or when
    /// `wait` runs out.
    #[utoipa::path(
        get,
        path = "/v1/elections",
        tag = "elections",
        params(BlockingQuery, ReadQuery),
        responses(
            (status = 200, description = "Every election with a leader or candidates, by name.", body = ElectionList),
            (status = 400, description = "`invalid_argument`: `index`, `stale` or `consistency` cannot be read, or a query parameter is unknown; `invalid_duration`: `wait` cannot be read.", body = ErrorBody),
            (status = 503, description = "`no_leader` or `unavailable` (linearizable reads only): retry later, or read with `?stale`.", body = ErrorBody),
        )
    )]
    fn list_elections() {}

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

    /// Bootstrap ACLs: make the first management token. Works once per cluster.
    ///
    /// The answer is the only time the secret is shown. Servers started with
    /// `REGISTRY_ACL_BOOTSTRAP_TOKEN` bootstrap themselves, and this answers 409.
    #[utoipa::path(
        post,
        path = "/v1/acl/bootstrap",
        tag = "acl",
        responses(
            (status = 200, description = "The management token, with its secret.", body = TokenCreated),
            (status = 400, description = "`acl_disabled`: the server runs without `--acl`.", body = ErrorBody),
            (status = 409, description = "`acl_bootstrapped`: the cluster was bootstrapped already.", body = ErrorBody),
            (status = 503, description = "`no_leader` or `unavailable`: retry later.", body = ErrorBody),
        )
    )]
    fn acl_bootstrap() {}

    /// Make a token (needs `acl:write`).
    ///
    /// Rules grant `read` or `write` (which includes read) on the names of a resource that
    /// start with `prefix`. A token owns the leases it makes: only it, or a token with
    /// `lease:write`, may keep them alive, revoke them, or bind instances and locks to them.
    #[utoipa::path(
        post,
        path = "/v1/acl/tokens",
        tag = "acl",
        request_body = CreateTokenRequest,
        responses(
            (status = 200, description = "The token, with its secret (shown only now).", body = TokenCreated),
            (status = 400, description = "`invalid_json`: the body is not a `CreateTokenRequest`; `invalid_argument`: a rule or the description is out of range; `invalid_duration`: `ttl` cannot be read or is out of range; `acl_disabled`: the server runs without `--acl`.", body = ErrorBody),
            (status = 413, description = "`payload_too_large`: the body is too large.", body = ErrorBody),
            (status = 415, description = "`unsupported_media_type`: the body is not declared as `application/json`.", body = ErrorBody),
            (status = 503, description = "`no_leader` or `unavailable`: retry later.", body = ErrorBody),
        )
    )]
    fn create_token() {}

    /// List tokens (needs `acl:read`): accessors, descriptions and rules, never secrets.
    #[utoipa::path(
        get,
        path = "/v1/acl/tokens",
        tag = "acl",
        params(ReadQuery),
        responses(
            (status = 200, description = "Every token.", body = TokenList),
            (status = 400, description = "`acl_disabled`: the server runs without `--acl`; `invalid_argument`: a query parameter is not valid.", body = ErrorBody),
            (status = 503, description = "`no_leader` or `unavailable`: retry later.", body = ErrorBody),
        )
    )]
    fn list_tokens() {}

    /// The token the request presents.
    #[utoipa::path(
        get,
        path = "/v1/acl/tokens/self",
        tag = "acl",
        responses(
            (status = 200, description = "The caller's token (without its secret).", body = TokenInfo),
            (status = 400, description = "`acl_disabled`: the server runs without `--acl`.", body = ErrorBody),
        )
    )]
    fn own_token() {}

    /// Revoke a token (needs `acl:write`).
    ///
    /// The answer comes once every member has applied the revoke (members that did not
    /// confirm within 5s are listed in `unconfirmed_members`): from then on no member
    /// accepts the token.
    #[utoipa::path(
        delete,
        path = "/v1/acl/tokens/{accessor}",
        tag = "acl",
        params(("accessor" = uuid::Uuid, Path, description = "The token's accessor.")),
        responses(
            (status = 200, description = "The token is revoked.", body = RevokeTokenResponse),
            (status = 400, description = "`invalid_argument`: the accessor is not a UUID; `acl_disabled`: the server runs without `--acl`.", body = ErrorBody),
            (status = 404, description = "`token_not_found`: no token has this accessor.", body = ErrorBody),
            (status = 503, description = "`no_leader` or `unavailable`: retry later.", body = ErrorBody),
        )
    )]
    fn revoke_token() {}

    /// Registers (or updates) an instance the way Consul's agent registers a service: `ID` (default `Name`), `Name`, `Address` (default the caller's IP), `Port`, `Tags`, `Meta`, `Weights`, `Check`/`Checks`, keys in any case. A TTL check becomes the lease TTL; `DeregisterCriticalServiceAfter` the `deregister_after`. `HTTP`, `TCP` and `GRPC` checks (with `Interval`, `Timeout`, `Method`, `Header`, `FailuresBeforeCritical`, `SuccessBeforePassing`) become active checks the cluster runs; with them and no TTL check the instance has no lease; with no check at all the lease is 24h. Script, Docker, H2PING, UDP and OS service checks are refused (400). Needs `service:write` on the name.
    #[utoipa::path(
        put,
        path = "/v1/agent/service/register",
        tag = "consul",
        request_body = ConsulRegistration,
        responses(
            (status = 200, description = "Done (an empty body, as Consul answers)."),
            (status = 400, description = "`invalid_argument` or `invalid_json`: a malformed request, or an unsupported check.", body = ErrorBody),
            (status = 503, description = "`no_leader` or `unavailable`: retry later.", body = ErrorBody),
        )
    )]
    fn consul_register() {}

    /// Deregisters the instance with this id (in every service that has it).
    #[utoipa::path(
        put,
        path = "/v1/agent/service/deregister/{id}",
        tag = "consul",
        params(("id" = String, Path, description = "The instance (Consul service) id.")),
        responses(
            (status = 200, description = "Done (an empty body, as Consul answers)."),
            (status = 400, description = "`invalid_argument` or `invalid_json`: a malformed request, or an unsupported check.", body = ErrorBody),
            (status = 404, description = "`instance_not_found`: no instance has this id.", body = ErrorBody),
            (status = 503, description = "`no_leader` or `unavailable`: retry later.", body = ErrorBody),
        )
    )]
    fn consul_deregister() {}

    /// `enable=true` drains the instance (out of healthy discovery, a critical maintenance check in Consul's view); `enable=false` brings it back. `reason` is accepted.
    #[utoipa::path(
        put,
        path = "/v1/agent/service/maintenance/{id}",
        tag = "consul",
        params(("id" = String, Path, description = "The instance (Consul service) id."), ("enable" = bool, Query, description = "`true` drains, `false` brings back."), ("reason" = Option<String>, Query, description = "Ignored.")),
        responses(
            (status = 200, description = "Done (an empty body, as Consul answers)."),
            (status = 400, description = "`invalid_argument` or `invalid_json`: a malformed request, or an unsupported check.", body = ErrorBody),
            (status = 404, description = "`instance_not_found`: no instance has this id.", body = ErrorBody),
            (status = 503, description = "`no_leader` or `unavailable`: retry later.", body = ErrorBody),
        )
    )]
    fn consul_maintenance() {}

    /// Renews the lease of the instance whose check is `service:<id>`.
    #[utoipa::path(
        put,
        path = "/v1/agent/check/pass/{check}",
        tag = "consul",
        params(("check" = String, Path, description = "`service:<id>`.")),
        responses(
            (status = 200, description = "Done (an empty body, as Consul answers)."),
            (status = 400, description = "`invalid_argument` or `invalid_json`: a malformed request, or an unsupported check.", body = ErrorBody),
            (status = 404, description = "`instance_not_found`: no instance has this id.", body = ErrorBody),
            (status = 503, description = "`no_leader` or `unavailable`: retry later.", body = ErrorBody),
        )
    )]
    fn consul_check_pass() {}

    /// As `pass` (the registry has no warning state).
    #[utoipa::path(
        put,
        path = "/v1/agent/check/warn/{check}",
        tag = "consul",
        params(("check" = String, Path, description = "`service:<id>`.")),
        responses(
            (status = 200, description = "Done (an empty body, as Consul answers)."),
            (status = 400, description = "`invalid_argument` or `invalid_json`: a malformed request, or an unsupported check.", body = ErrorBody),
            (status = 404, description = "`instance_not_found`: no instance has this id.", body = ErrorBody),
            (status = 503, description = "`no_leader` or `unavailable`: retry later.", body = ErrorBody),
        )
    )]
    fn consul_check_warn() {}

    /// Revokes the instance's lease: it turns critical (register it again to bring it back).
    #[utoipa::path(
        put,
        path = "/v1/agent/check/fail/{check}",
        tag = "consul",
        params(("check" = String, Path, description = "`service:<id>`.")),
        responses(
            (status = 200, description = "Done (an empty body, as Consul answers)."),
            (status = 400, description = "`invalid_argument` or `invalid_json`: a malformed request, or an unsupported check.", body = ErrorBody),
            (status = 404, description = "`instance_not_found`: no instance has this id.", body = ErrorBody),
            (status = 503, description = "`no_leader` or `unavailable`: retry later.", body = ErrorBody),
        )
    )]
    fn consul_check_fail() {}

    /// `{"Status": "passing"|"warning"|"critical"}`: as pass, warn or fail.
    #[utoipa::path(
        put,
        path = "/v1/agent/check/update/{check}",
        tag = "consul",
        params(("check" = String, Path, description = "`service:<id>`.")),
        request_body = ConsulCheckUpdate,
        responses(
            (status = 200, description = "Done (an empty body, as Consul answers)."),
            (status = 400, description = "`invalid_argument` or `invalid_json`: a malformed request, or an unsupported check.", body = ErrorBody),
            (status = 404, description = "`instance_not_found`: no instance has this id.", body = ErrorBody),
            (status = 503, description = "`no_leader` or `unavailable`: retry later.", body = ErrorBody),
        )
    )]
    fn consul_check_update() {}

    /// The answering server as a Consul agent: `Config.Datacenter` (`dc1`), `Config.NodeName`, `Member`. Needs `service:read` on some name.
    #[utoipa::path(
        get,
        path = "/v1/agent/self",
        tag = "consul",
        responses(
            (status = 200, description = "Consul's JSON.", body = Object, content_type = "application/json"),
            (status = 400, description = "`invalid_argument`: a malformed parameter.", body = ErrorBody),
            (status = 503, description = "`no_leader` or `unavailable`: retry later.", body = ErrorBody),
        )
    )]
    fn consul_agent_self() {}

    /// The leader's address as a JSON string (`""` when none is known). Needs `cluster:read`.
    #[utoipa::path(
        get,
        path = "/v1/status/leader",
        tag = "consul",
        responses(
            (status = 200, description = "Consul's JSON.", body = Object, content_type = "application/json"),
            (status = 400, description = "`invalid_argument`: a malformed parameter.", body = ErrorBody),
            (status = 503, description = "`no_leader` or `unavailable`: retry later.", body = ErrorBody),
        )
    )]
    fn consul_status_leader() {}

    /// The voters' addresses. Needs `cluster:read`.
    #[utoipa::path(
        get,
        path = "/v1/status/peers",
        tag = "consul",
        responses(
            (status = 200, description = "Consul's JSON.", body = Object, content_type = "application/json"),
            (status = 400, description = "`invalid_argument`: a malformed parameter.", body = ErrorBody),
            (status = 503, description = "`no_leader` or `unavailable`: retry later.", body = ErrorBody),
        )
    )]
    fn consul_status_peers() {}

    /// Every service the caller may read, with its instances' tags: `{"name": ["tag", ...]}`. Blocking with `index` and `wait`.
    #[utoipa::path(
        get,
        path = "/v1/catalog/services",
        tag = "consul",
        params(ReadQuery, BlockingQuery),
        responses(
            (status = 200, description = "Consul's JSON.", body = Object, content_type = "application/json"),
            (status = 400, description = "`invalid_argument`: a malformed parameter.", body = ErrorBody),
            (status = 503, description = "`no_leader` or `unavailable`: retry later.", body = ErrorBody),
        )
    )]
    fn consul_catalog_services() {}

    /// One Consul node per instance (the instance id is the node name; zone and region are its `Meta`).
    #[utoipa::path(
        get,
        path = "/v1/catalog/nodes",
        tag = "consul",
        responses(
            (status = 200, description = "Consul's JSON.", body = Object, content_type = "application/json"),
            (status = 400, description = "`invalid_argument`: a malformed parameter.", body = ErrorBody),
            (status = 503, description = "`no_leader` or `unavailable`: retry later.", body = ErrorBody),
        )
    )]
    fn consul_catalog_nodes() {}

    /// Every instance of the service in Consul's catalog form (`Node`, `Address`, `NodeMeta`, `ServiceID`, `ServiceAddress`, `ServicePort`, `ServiceTags`, `ServiceMeta`, `ServiceWeights`, ...). Takes `tag` (repeatable); blocking with `index` and `wait`.
    #[utoipa::path(
        get,
        path = "/v1/catalog/service/{name}",
        tag = "consul",
        params(("name" = String, Path, description = "The service name."), ReadQuery, BlockingQuery),
        responses(
            (status = 200, description = "Consul's JSON.", body = Object, content_type = "application/json"),
            (status = 400, description = "`invalid_argument`: a malformed parameter.", body = ErrorBody),
            (status = 503, description = "`no_leader` or `unavailable`: retry later.", body = ErrorBody),
        )
    )]
    fn consul_catalog_service() {}

    /// The service's instances with their checks (`Node`, `Service`, `Checks`): `service:<id>` is passing while the lease lives and critical once it ended; a draining instance also has a critical `_service_maintenance:<id>`. `passing` keeps passing ones only; `tag` (repeatable); `filter` takes `Service.Tags contains "x"` and `Service.Meta.k == "v"` clauses joined by `and`. Blocking with `index` and `wait`.
    #[utoipa::path(
        get,
        path = "/v1/health/service/{name}",
        tag = "consul",
        params(("name" = String, Path, description = "The service name."), ReadQuery, BlockingQuery),
        responses(
            (status = 200, description = "Consul's JSON.", body = Object, content_type = "application/json"),
            (status = 400, description = "`invalid_argument`: a malformed parameter.", body = ErrorBody),
            (status = 503, description = "`no_leader` or `unavailable`: retry later.", body = ErrorBody),
        )
    )]
    fn consul_health_service() {}

    /// The checks in a state (`any`, `passing`, `warning`, `critical`) across every service the caller may read.
    #[utoipa::path(
        get,
        path = "/v1/health/state/{state}",
        tag = "consul",
        params(("state" = CheckState, Path, description = "`any`, `passing`, `warning` or `critical`."), ReadQuery),
        responses(
            (status = 200, description = "Consul's JSON.", body = Object, content_type = "application/json"),
            (status = 400, description = "`invalid_argument`: a malformed parameter.", body = ErrorBody),
            (status = 503, description = "`no_leader` or `unavailable`: retry later.", body = ErrorBody),
        )
    )]
    fn consul_health_state() {}

    /// Prometheus HTTP service discovery (`http_sd_configs`): one target group per
    /// instance, passing ones only unless `status` says otherwise, across every service the
    /// caller may read (or the one `service` names). Labels: `__meta_registry_service`,
    /// `__meta_registry_instance`, `__meta_registry_status`, `__meta_registry_zone`,
    /// `__meta_registry_region`, `__meta_registry_weight`, `__meta_registry_tags`
    /// (`,a,b,`), `__meta_registry_meta_<key>`.
    #[utoipa::path(
        get,
        path = "/v1/sd/prometheus",
        tag = "operations",
        params(
            ("service" = Option<String>, Query, description = "Only this service."),
            ("tag" = Option<Vec<String>>, Query, description = "Only instances with every one of these tags (repeat the parameter)."),
            ("zone" = Option<String>, Query, description = "Only instances in this zone."),
            ("region" = Option<String>, Query, description = "Only instances in this region."),
            ("status" = Option<StatusFilter>, Query, description = "`passing` (default), `draining`, `critical` or `any`."),
            ReadQuery,
        ),
        responses(
            (status = 200, description = "The target groups.", body = Vec<PrometheusTargetGroup>),
            (status = 400, description = "`invalid_argument`: a malformed parameter.", body = ErrorBody),
            (status = 503, description = "`no_leader` or `unavailable`: retry later.", body = ErrorBody),
        )
    )]
    fn prometheus_sd() {}

    /// A backup of the whole registry: the state at one applied index (after a
    /// linearizable read, so every write acknowledged before the call is in it), as a
    /// binary file with a format version, a JSON summary and a CRC-32 (`api_spec::backup`).
    /// Save it with `regctl snapshot save FILE`; restore with `registry-server --restore
    /// FILE --data-dir EMPTY_DIR`.
    #[utoipa::path(
        get,
        path = "/v1/snapshot",
        tag = "operations",
        responses(
            (status = 200, description = "The backup file.", body = Vec<u8>, content_type = "application/octet-stream"),
            (status = 503, description = "`no_leader` or `unavailable`: retry later.", body = ErrorBody),
        )
    )]
    fn snapshot() {}

    /// Prometheus metrics of this node, in the text exposition format: HTTP requests and
    /// durations, Raft (term, role, indexes, batches, commit and fsync latency,
    /// snapshots, last contact with each peer on the leader), the registry (leases,
    /// expiries, keepalives, instances by status, services, storm protection, blocking
    /// queries, locks, elections) and the process (memory, open files, threads). Needs
    /// `cluster:read` when ACLs are on, unless the server runs with `--metrics-public`.
    #[utoipa::path(
        get,
        path = "/metrics",
        tag = "operations",
        responses(
            (status = 200, description = "The exposition.", body = String, content_type = "text/plain; version=0.0.4"),
        )
    )]
    fn metrics() {}

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

    use std::time::Duration;

    use serde_json::Value;

    use super::*;
    use crate::{
        codes, DEFAULT_LOCK_DELAY, MAX_CANDIDATE_LEN, MAX_HOLDER_LEN, MAX_LEASE_TTL,
        MAX_LOCK_DELAY, MAX_LOCK_WAIT, MIN_LEASE_TTL,
    };

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
            ("POST", "/v1/locks/{name}/acquire"),
            ("POST", "/v1/locks/{name}/release"),
            ("GET", "/v1/locks/{name}"),
            ("GET", "/v1/locks"),
            ("POST", "/v1/elections/{name}/campaign"),
            ("POST", "/v1/elections/{name}/proclaim"),
            ("POST", "/v1/elections/{name}/resign"),
            ("GET", "/v1/elections/{name}"),
            ("GET", "/v1/elections"),
            ("GET", "/v1/cluster"),
            ("POST", "/v1/cluster/members"),
            ("DELETE", "/v1/cluster/members/{id}"),
            ("POST", "/v1/acl/bootstrap"),
            ("POST", "/v1/acl/tokens"),
            ("GET", "/v1/acl/tokens"),
            ("GET", "/v1/acl/tokens/self"),
            ("DELETE", "/v1/acl/tokens/{accessor}"),
            ("GET", "/v1/sd/prometheus"),
            ("PUT", "/v1/agent/service/register"),
            ("PUT", "/v1/agent/service/deregister/{id}"),
            ("PUT", "/v1/agent/service/maintenance/{id}"),
            ("PUT", "/v1/agent/check/pass/{check}"),
            ("PUT", "/v1/agent/check/warn/{check}"),
            ("PUT", "/v1/agent/check/fail/{check}"),
            ("PUT", "/v1/agent/check/update/{check}"),
            ("GET", "/v1/agent/self"),
            ("GET", "/v1/status/leader"),
            ("GET", "/v1/status/peers"),
            ("GET", "/v1/catalog/services"),
            ("GET", "/v1/catalog/nodes"),
            ("GET", "/v1/catalog/service/{name}"),
            ("GET", "/v1/health/service/{name}"),
            ("GET", "/v1/health/state/{state}"),
            ("GET", "/v1/snapshot"),
            ("GET", "/metrics"),
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
    fn errors_are_error_bodies_and_503s_and_429s_say_when_to_retry() {
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
                status == "503" || status == "429",
                "{method} {path} {status}: Retry-After on 503s and 429s only"
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

    /// The description of one response, e.g. `("post", "/v1/locks/{name}/acquire", "409")`.
    fn response_description(doc: &Value, method: &str, path: &str, status: &str) -> String {
        doc["paths"][path][method]["responses"][status]["description"]
            .as_str()
            .unwrap_or_else(|| panic!("{method} {path} has no {status} answer"))
            .to_owned()
    }

    #[test]
    fn lock_and_election_writes_document_their_conflicts() {
        let doc = document();
        // (method, path, tag, the 409's code, the ErrorBody field it fills).
        let writes = [
            (
                "post",
                "/v1/locks/{name}/acquire",
                "locks",
                codes::LOCK_HELD,
                "`lock`",
            ),
            (
                "post",
                "/v1/locks/{name}/release",
                "locks",
                codes::TOKEN_MISMATCH,
                "`lock`",
            ),
            (
                "post",
                "/v1/elections/{name}/campaign",
                "elections",
                codes::ELECTION_HELD,
                "`election`",
            ),
            (
                "post",
                "/v1/elections/{name}/proclaim",
                "elections",
                codes::TOKEN_MISMATCH,
                "`election`",
            ),
            (
                "post",
                "/v1/elections/{name}/resign",
                "elections",
                codes::TOKEN_MISMATCH,
                "`election`",
            ),
        ];
        for (method, path, tag, code, field) in writes {
            let op = &doc["paths"][path][method];
            assert_eq!(op["tags"], serde_json::json!([tag]), "{method} {path}");
            assert!(
                op["requestBody"].is_object(),
                "{method} {path} takes a body"
            );
            let name = op["parameters"]
                .as_array()
                .unwrap()
                .iter()
                .find(|p| p["name"] == "name")
                .unwrap_or_else(|| panic!("{method} {path}: no `name` parameter"));
            assert_eq!(name["in"], "path");
            assert_eq!(name["required"], true);
            assert_eq!(name["schema"]["maxLength"], 128);
            let conflict = response_description(&doc, method, path, "409");
            assert!(
                conflict.contains(&format!("`{code}`")) && conflict.contains(field),
                "{method} {path}: the 409 should name `{code}` and {field}: {conflict}"
            );
            for status in ["200", "400", "413", "415", "503"] {
                response_description(&doc, method, path, status);
            }
        }
        // Only the requests that bind a lease or join a queue can meet those errors.
        for path in ["/v1/locks/{name}/acquire", "/v1/elections/{name}/campaign"] {
            let not_found = response_description(&doc, "post", path, "404");
            assert!(not_found.contains(&format!("`{}`", codes::LEASE_NOT_FOUND)));
            let full = response_description(&doc, "post", path, "429");
            assert!(full.contains(&format!("`{}`", codes::QUEUE_FULL)));
        }
        // The error body can carry the lock or the election the 409 describes.
        let error_body = doc["components"]["schemas"]["ErrorBody"].to_string();
        assert!(error_body.contains("#/components/schemas/LockInfo"));
        assert!(error_body.contains("#/components/schemas/ElectionInfo"));
    }

    #[test]
    fn lock_and_election_reads_are_blocking_queries() {
        let doc = document();
        for (path, tag, in_path) in [
            ("/v1/locks/{name}", "locks", true),
            ("/v1/locks", "locks", false),
            ("/v1/elections/{name}", "elections", true),
            ("/v1/elections", "elections", false),
        ] {
            let op = &doc["paths"][path]["get"];
            assert_eq!(op["tags"], serde_json::json!([tag]), "{path}");
            let params = op["parameters"].as_array().unwrap();
            let named = |name: &str| params.iter().find(|p| p["name"] == name);
            for name in ["index", "wait", "stale", "consistency"] {
                let param = named(name).unwrap_or_else(|| panic!("{path}: no {name}"));
                assert_eq!(param["in"], "query", "{path} {name}");
                assert_ne!(param["required"], true, "{path} {name} is optional");
            }
            assert_eq!(named("name").is_some(), in_path, "{path}");
            assert!(
                op["responses"].get("409").is_none(),
                "{path}: reads do not conflict"
            );
            for status in ["200", "400", "503"] {
                response_description(&doc, "get", path, status);
            }
        }
        for tag in ["locks", "elections"] {
            assert!(
                doc["tags"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|t| t["name"] == tag),
                "tag {tag} has no description"
            );
        }
    }

    /// The limits written into the descriptions are the ones the server enforces.
    #[test]
    fn lock_limits_in_descriptions_match_the_constants() {
        let doc = document();
        // An operation's description and its answers' descriptions, as plain text.
        let text = |path: &str| {
            let op = &doc["paths"][path]["post"];
            let mut text = op["description"].as_str().unwrap().to_owned();
            for response in op["responses"].as_object().unwrap().values() {
                text.push('\n');
                text.push_str(response["description"].as_str().unwrap());
            }
            // Doc comments wrap lines wherever they like.
            text.replace('\n', " ")
        };
        let human = crate::format_duration;
        let hours = |d: Duration| format!("{}h", d.as_secs() / 3600);
        let ttl_range = format!("`ttl` {}..{}", human(MIN_LEASE_TTL), hours(MAX_LEASE_TTL));
        let wait = format!("`wait` at most {}", human(MAX_LOCK_WAIT));
        let acquire = text("/v1/locks/{name}/acquire");
        for needle in [
            ttl_range.clone(),
            wait.clone(),
            format!("at most `\"{}\"`", human(MAX_LOCK_WAIT)),
            format!("`lock_delay` at most {}", human(MAX_LOCK_DELAY)),
            format!(
                "default `\"{}\"`, at most `\"{}\"`",
                human(DEFAULT_LOCK_DELAY),
                human(MAX_LOCK_DELAY)
            ),
            format!("`holder` is longer than {MAX_HOLDER_LEN} characters"),
        ] {
            assert!(acquire.contains(&needle), "acquire lacks {needle:?}");
        }
        let campaign = text("/v1/elections/{name}/campaign");
        for needle in [
            ttl_range,
            wait,
            format!("at most `\"{}\"`", human(MAX_LOCK_WAIT)),
            format!("`candidate` is empty or longer than {MAX_CANDIDATE_LEN} characters"),
        ] {
            assert!(campaign.contains(&needle), "campaign lacks {needle:?}");
        }
        let proclaim = text("/v1/elections/{name}/proclaim");
        assert!(proclaim.contains(&format!(
            "empty or longer than {MAX_CANDIDATE_LEN} characters"
        )));
        let description = doc["info"]["description"].as_str().unwrap();
        assert!(description.contains("fencing `token` that strictly increases"));
    }

    /// The request schemas state the rules the server checks with (`crate::rules`).
    #[test]
    fn request_schemas_carry_the_rules() {
        use crate::rules;
        let doc = document();
        let schemas = &doc["components"]["schemas"];
        let register = &schemas["RegisterRequest"]["properties"];
        assert_eq!(register["address"]["pattern"], rules::ADDRESS_PATTERN);
        assert_eq!(register["address"]["maxLength"], rules::MAX_ADDRESS_LEN);
        assert_eq!(register["port"]["minimum"], 1);
        assert_eq!(register["port"]["maximum"], 65535);
        assert_eq!(register["weight"]["maximum"], rules::MAX_WEIGHT);
        assert_eq!(register["tags"]["maxItems"], rules::MAX_TAGS);
        assert_eq!(register["tags"]["items"]["pattern"], rules::TEXT_PATTERN);
        assert_eq!(register["meta"]["maxProperties"], rules::MAX_META);
        assert_eq!(
            register["meta"]["propertyNames"]["pattern"],
            rules::NAME_PATTERN
        );
        assert_eq!(
            register["meta"]["additionalProperties"]["maxLength"],
            rules::MAX_META_VALUE_LEN
        );
        assert_eq!(register["zone"]["pattern"], rules::NAME_PATTERN);
        assert!(register["tags"]["description"]
            .as_str()
            .unwrap()
            .contains("?tag="));
        assert_eq!(
            schemas["RegisterRequest"]["not"],
            serde_json::json!({"required": ["lease", "ttl"]})
        );
        for name in ["AcquireRequest", "CampaignRequest"] {
            assert_eq!(
                schemas[name]["oneOf"],
                serde_json::json!([{"required": ["lease"]}, {"required": ["ttl"]}]),
                "{name}"
            );
        }
        assert_eq!(
            schemas["SetStatusRequest"]["properties"]["status"]["enum"],
            serde_json::json!(["passing", "draining"])
        );
        let candidate = &schemas["CampaignRequest"]["properties"]["candidate"];
        assert_eq!(candidate["minLength"], 1);
        assert_eq!(candidate["maxLength"], MAX_CANDIDATE_LEN);
        // Every duration field: its syntax as a pattern, its range for tools and people.
        for (schema, field, range) in [
            ("CreateLeaseRequest", "ttl", rules::LEASE_TTL),
            ("RegisterRequest", "ttl", rules::LEASE_TTL),
            (
                "RegisterRequest",
                "deregister_after",
                rules::DEREGISTER_AFTER,
            ),
            ("AcquireRequest", "ttl", rules::LEASE_TTL),
            ("AcquireRequest", "wait", rules::LOCK_WAIT),
            ("AcquireRequest", "lock_delay", rules::LOCK_DELAY),
            ("CampaignRequest", "ttl", rules::LEASE_TTL),
            ("CampaignRequest", "wait", rules::LOCK_WAIT),
        ] {
            let field = &schemas[schema]["properties"][field];
            assert_eq!(
                field["pattern"],
                rules::DURATION_PATTERN,
                "{schema}.{field}"
            );
            assert_eq!(field["x-duration-min-ms"], range.min.as_millis() as u64);
            let max = range.max.unwrap();
            assert_eq!(field["x-duration-max-ms"], max.as_millis() as u64);
            let description = field["description"].as_str().unwrap();
            assert!(
                description.contains(&format!("`\"{}\"`", crate::format_duration(max))),
                "{schema}.{field}: {description}"
            );
        }
        // Path and query parameters the server checks.
        let parameter = |path: &str, method: &str, name: &str| {
            doc["paths"][path][method]["parameters"]
                .as_array()
                .unwrap()
                .iter()
                .find(|p| p["name"] == name)
                .unwrap_or_else(|| panic!("{method} {path}: no {name}"))
                .clone()
        };
        let instance = "/v1/services/{service}/instances/{id}";
        assert_eq!(
            parameter(instance, "put", "service")["schema"]["pattern"],
            rules::NAME_PATTERN
        );
        let id = parameter(instance, "put", "id");
        assert_eq!(id["schema"]["pattern"], rules::INSTANCE_ID_PATTERN);
        assert_eq!(id["required"], true);
        assert!(!id["description"].as_str().unwrap().is_empty());
        assert_eq!(
            parameter("/v1/locks/{name}", "get", "name")["schema"]["maxLength"],
            rules::MAX_NAME_LEN
        );
        assert_eq!(
            parameter("/v1/locks", "get", "wait")["schema"]["pattern"],
            rules::DURATION_PATTERN
        );
        assert_eq!(
            parameter("/v1/leases/{id}", "get", "id")["schema"]["format"],
            "uuid"
        );
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
