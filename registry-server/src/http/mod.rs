//! The HTTP surface: the public JSON API under `/v1`, probes, and the internal
//! node-to-node routes under `/internal`. [`router`] builds it without a socket, so tests
//! can drive it without a network.

mod acl;
mod auth;
mod consul;
mod consul_agent;
pub mod error;
mod internal;
mod locks;
mod public;
mod query;
mod sd;
mod services;
mod ui;
mod views;

use std::sync::{Arc, OnceLock};

use api_spec::INDEX_HEADER;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, HeaderValue, Method};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put, MethodRouter};
use axum::Router;

pub use self::internal::MAX_SNAPSHOT_BYTES;
use crate::app::App;
use crate::raft::network::paths;

/// Largest public request body. Registrations and lock requests are small; anything this
/// big is a mistake or an attack.
pub const PUBLIC_BODY_LIMIT: usize = 1024 * 1024;

/// Whether a route acts for a caller (its token is resolved before the handler runs, see
/// [`auth`]) or is open to everyone whatever they present (probes, the API document).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Auth {
    /// Acts for the caller; a write made with a token is one audit line.
    Caller,
    /// Acts for the caller, not audited: a heartbeat or keepalive changes nothing but a
    /// deadline, and comes every few seconds from every instance.
    Renewal,
    Open,
}

impl Auth {
    /// Whether the route acts for a caller.
    pub fn acts_for_caller(self) -> bool {
        self != Auth::Open
    }
}

/// Every public route: method, path (axum syntax), handler, and whether it acts for a
/// caller. The router is built from this table, and [`public_routes`] lists it, so the
/// OpenAPI document can be checked against exactly what is served.
fn public_table() -> Vec<(Method, &'static str, MethodRouter<App>, Auth)> {
    use Auth::{Caller, Open, Renewal};
    vec![
        (
            Method::POST,
            "/v1/leases",
            post(public::create_lease),
            Caller,
        ),
        (
            Method::GET,
            "/v1/leases/{id}",
            get(public::get_lease),
            Caller,
        ),
        (
            Method::DELETE,
            "/v1/leases/{id}",
            delete(public::revoke_lease),
            Caller,
        ),
        (
            Method::PUT,
            "/v1/leases/{id}/keepalive",
            put(public::keepalive),
            Renewal,
        ),
        (Method::GET, "/v1/cluster", get(public::cluster), Caller),
        (
            Method::POST,
            "/v1/cluster/members",
            post(public::add_member),
            Caller,
        ),
        (
            Method::DELETE,
            "/v1/cluster/members/{id}",
            delete(public::remove_member),
            Caller,
        ),
        (
            Method::GET,
            "/v1/services",
            get(services::list_services),
            Caller,
        ),
        (
            Method::GET,
            "/v1/services/{service}",
            get(services::get_service),
            Caller,
        ),
        (
            Method::PUT,
            "/v1/services/{service}/instances/{id}",
            put(services::register),
            Caller,
        ),
        (
            Method::DELETE,
            "/v1/services/{service}/instances/{id}",
            delete(services::deregister),
            Caller,
        ),
        (
            Method::PUT,
            "/v1/services/{service}/instances/{id}/heartbeat",
            put(services::heartbeat),
            Renewal,
        ),
        (
            Method::PUT,
            "/v1/services/{service}/instances/{id}/status",
            put(services::set_status),
            Caller,
        ),
        (Method::GET, "/v1/locks", get(locks::list_locks), Caller),
        (
            Method::GET,
            "/v1/locks/{name}",
            get(locks::get_lock),
            Caller,
        ),
        (
            Method::POST,
            "/v1/locks/{name}/acquire",
            post(locks::acquire),
            Caller,
        ),
        (
            Method::POST,
            "/v1/locks/{name}/release",
            post(locks::release),
            Caller,
        ),
        (
            Method::GET,
            "/v1/elections",
            get(locks::list_elections),
            Caller,
        ),
        (
            Method::GET,
            "/v1/elections/{name}",
            get(locks::get_election),
            Caller,
        ),
        (
            Method::POST,
            "/v1/elections/{name}/campaign",
            post(locks::campaign),
            Caller,
        ),
        (
            Method::POST,
            "/v1/elections/{name}/proclaim",
            post(locks::proclaim),
            Caller,
        ),
        (
            Method::POST,
            "/v1/elections/{name}/resign",
            post(locks::resign),
            Caller,
        ),
        (
            Method::POST,
            "/v1/acl/bootstrap",
            post(acl::bootstrap),
            Caller,
        ),
        (
            Method::POST,
            "/v1/acl/tokens",
            post(acl::create_token),
            Caller,
        ),
        (Method::GET, "/v1/acl/tokens", get(acl::list_tokens), Caller),
        (
            Method::GET,
            "/v1/acl/tokens/self",
            get(acl::own_token),
            Caller,
        ),
        (
            Method::DELETE,
            "/v1/acl/tokens/{accessor}",
            delete(acl::revoke_token),
            Caller,
        ),
        (
            Method::GET,
            "/v1/sd/prometheus",
            get(sd::prometheus),
            Caller,
        ),
        // Consul's agent API for registration (`consul_agent.rs`).
        (
            Method::PUT,
            "/v1/agent/service/register",
            put(consul_agent::register),
            Caller,
        ),
        (
            Method::PUT,
            "/v1/agent/service/deregister/{id}",
            put(consul_agent::deregister),
            Caller,
        ),
        (
            Method::PUT,
            "/v1/agent/service/maintenance/{id}",
            put(consul_agent::maintenance),
            Caller,
        ),
        (
            Method::PUT,
            "/v1/agent/check/pass/{check}",
            put(consul_agent::check_pass),
            Renewal,
        ),
        (
            Method::PUT,
            "/v1/agent/check/warn/{check}",
            put(consul_agent::check_warn),
            Renewal,
        ),
        (
            Method::PUT,
            "/v1/agent/check/fail/{check}",
            put(consul_agent::check_fail),
            Caller,
        ),
        (
            Method::PUT,
            "/v1/agent/check/update/{check}",
            put(consul_agent::check_update),
            Caller,
        ),
        // Consul-compatible reads (`consul.rs`).
        (
            Method::GET,
            "/v1/agent/self",
            get(consul::agent_self),
            Caller,
        ),
        (
            Method::GET,
            "/v1/status/leader",
            get(consul::status_leader),
            Caller,
        ),
        (
            Method::GET,
            "/v1/status/peers",
            get(consul::status_peers),
            Caller,
        ),
        (
            Method::GET,
            "/v1/catalog/services",
            get(consul::catalog_services),
            Caller,
        ),
        (
            Method::GET,
            "/v1/catalog/nodes",
            get(consul::catalog_nodes),
            Caller,
        ),
        (
            Method::GET,
            "/v1/catalog/service/{name}",
            get(consul::catalog_service),
            Caller,
        ),
        (
            Method::GET,
            "/v1/health/service/{name}",
            get(consul::health_service),
            Caller,
        ),
        (
            Method::GET,
            "/v1/health/state/{state}",
            get(consul::health_state),
            Caller,
        ),
        (Method::GET, "/v1/snapshot", get(public::snapshot), Caller),
        (Method::GET, "/metrics", get(public::metrics), Caller),
        (Method::GET, "/healthz", get(public::healthz), Open),
        (Method::GET, "/readyz", get(public::readyz), Open),
        (Method::GET, "/v1/openapi.json", get(openapi_document), Open),
    ]
}

/// `GET /v1/openapi.json`: the OpenAPI document of the public API. It never changes
/// while the process runs, so it is serialized once, on first request.
async fn openapi_document() -> Response {
    static JSON: OnceLock<String> = OnceLock::new();
    let json = JSON.get_or_init(api_spec::openapi::openapi_json);
    ([(header::CONTENT_TYPE, "application/json")], json.as_str()).into_response()
}

/// The public routes this server serves, as (method, path, auth).
pub fn public_routes() -> Vec<(Method, &'static str, Auth)> {
    public_table()
        .into_iter()
        .map(|(method, path, _, auth)| (method, path, auth))
        .collect()
}

/// Builds the whole router: the public API and the internal routes on one listener.
/// With a `cluster_secret`, internal routes answer 401 to requests that do not carry it;
/// internal bodies over `max_message` bytes (a batch of log entries, a snapshot chunk)
/// are refused with 413.
pub fn router(app: App, cluster_secret: Option<String>, max_message: usize) -> Router {
    finish(
        public_routes_of(&app).merge(internal_routes(&app, cluster_secret, max_message)),
        app,
    )
}

/// The public API alone, for a client listener when peers have their own
/// (`--peer-listen`).
pub fn public_router(app: App) -> Router {
    finish(public_routes_of(&app), app)
}

/// The internal routes alone, for the peer listener (`--peer-listen`).
pub fn peer_router(app: App, cluster_secret: Option<String>, max_message: usize) -> Router {
    finish(internal_routes(&app, cluster_secret, max_message), app)
}

fn public_routes_of(app: &App) -> Router<App> {
    // `route` merges the method routers of a path given more than once.
    public_table()
        .into_iter()
        .fold(Router::new(), |router, (_, path, handler, auth)| {
            let handler = match auth {
                Auth::Open => handler,
                Auth::Caller => handler.route_layer(axum::middleware::from_fn_with_state(
                    app.clone(),
                    auth::authenticate,
                )),
                Auth::Renewal => handler.route_layer(axum::middleware::from_fn_with_state(
                    app.clone(),
                    auth::authenticate_quietly,
                )),
            };
            router.route(path, handler)
        })
        .layer(DefaultBodyLimit::max(PUBLIC_BODY_LIMIT))
        .merge(ui::routes())
}

fn internal_routes(app: &App, cluster_secret: Option<String>, max_message: usize) -> Router<App> {
    let members = {
        let app = app.clone();
        Arc::new(move || app.member_addrs())
    };
    let auth = internal::PeerAuth {
        secret: cluster_secret,
        members,
    };
    Router::new()
        .route(paths::APPEND, post(internal::append))
        .route(paths::VOTE, post(internal::vote))
        .route(paths::SNAPSHOT, post(internal::snapshot))
        .route(paths::FORWARD, post(internal::forward))
        .layer(DefaultBodyLimit::max(max_message))
        .layer(axum::middleware::from_fn_with_state(
            Arc::new(auth),
            internal::check_secret,
        ))
}

fn finish(routes: Router<App>, app: App) -> Router {
    routes
        .layer(axum::middleware::from_fn(crate::metrics::track))
        .fallback(error::not_found)
        .method_not_allowed_fallback(error::method_not_allowed)
        .layer(axum::middleware::map_response_with_state(
            app.clone(),
            add_index_header,
        ))
        .with_state(app)
}

/// Every answer (errors and unknown routes included) says which index it reflects;
/// handlers that know better (writes, linearizable reads) set it themselves.
async fn add_index_header(State(app): State<App>, mut response: Response) -> Response {
    if !response.headers().contains_key(INDEX_HEADER) {
        let index = app.state().applied_index();
        response
            .headers_mut()
            .insert(INDEX_HEADER, HeaderValue::from(index));
    }
    response
}
