//! Access control on a single node run in-process (real RocksDB, real HTTP): every route
//! with no token, a token of the wrong scope and the right token; bootstrap once; lease
//! ownership; filtered lists and hidden lock tokens; anonymous rules; token expiry and
//! revocation; forged internal commands; refusing to run open on a network.

#![allow(clippy::unwrap_used)] // a test: a failed unwrap is a failed test

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use api_spec::acl::{CreateTokenRequest, Rule, TokenCreated};
use clap::Parser;
use common::{free_port, start, Running};
use registry_server::app::{Forward, ForwardAnswer};
use registry_server::config::Config;
use registry_server::http::{public_routes, Auth};
use registry_server::replicated::acl::{Need, Principal};
use registry_server::replicated::state::Command;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

const BOOT: &str = "bootstrap-secret-for-tests-0123";

/// A request with an optional token; answers the status and the JSON body (or null).
async fn call(
    server: &Running,
    token: Option<&str>,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut request = server
        .http
        .request(method, format!("{}{path}", server.base));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    let status = response.status();
    let body = response.json().await.unwrap_or(Value::Null);
    (status, body)
}

fn code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or("")
}

/// Makes a token with `rules` (written `resource:access[:prefix]`) as `admin`.
async fn token(server: &Running, admin: &str, rules: &[&str]) -> TokenCreated {
    let request = CreateTokenRequest {
        description: format!("test {rules:?}"),
        rules: rules.iter().map(|r| r.parse::<Rule>().unwrap()).collect(),
        ..Default::default()
    };
    let (status, body) = call(
        server,
        Some(admin),
        Method::POST,
        "/v1/acl/tokens",
        Some(serde_json::to_value(&request).unwrap()),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    serde_json::from_value(body).unwrap()
}

/// Starts a server with ACLs on and waits until the configured bootstrap token works.
async fn start_with_acl(extra: &[&str]) -> Running {
    let mut args = vec!["--acl", "--acl-bootstrap-token", BOOT];
    args.extend_from_slice(extra);
    let server = start(&args).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (status, _) = call(
            &server,
            Some(BOOT),
            Method::GET,
            "/v1/acl/tokens/self",
            None,
        )
        .await;
        if status == StatusCode::OK {
            return server;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the configured bootstrap token never worked ({status})"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One route tried three ways.
struct Case {
    method: Method,
    /// The route template, as the router has it.
    route: &'static str,
    /// The concrete path (may name things `setup` made).
    path: String,
    body: Option<Value>,
    /// The rules of the token that may do it.
    right: &'static [&'static str],
    /// The rules of a token that may not (another name, another resource, read only).
    wrong: &'static [&'static str],
    /// What the right token gets.
    expect: StatusCode,
}

/// The things the cases act on, made by the management token before each case.
struct Fixtures {
    lease: String,
    accessor: String,
}

async fn fixtures(server: &Running) -> Fixtures {
    let (status, body) = call(
        server,
        Some(BOOT),
        Method::PUT,
        "/v1/services/web/instances/i1",
        Some(json!({"address": "127.0.0.1", "port": 8080, "ttl": "30s"})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = call(
        server,
        Some(BOOT),
        Method::POST,
        "/v1/leases",
        Some(json!({"ttl": "30s"})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let lease = body["lease"].as_str().unwrap().to_owned();
    let throwaway = token(server, BOOT, &[]).await;
    Fixtures {
        lease,
        accessor: throwaway.token.accessor.to_string(),
    }
}

fn cases(f: &Fixtures, own_addr: &str) -> Vec<Case> {
    use StatusCode as S;
    let lease = &f.lease;
    let case = |method: Method,
                route: &'static str,
                path: String,
                body: Option<Value>,
                right: &'static [&'static str],
                wrong: &'static [&'static str],
                expect: StatusCode| Case {
        method,
        route,
        path,
        body,
        right,
        wrong,
        expect,
    };
    let inst = "/v1/services/web/instances/i1";
    vec![
        case(
            Method::POST,
            "/v1/leases",
            "/v1/leases".into(),
            Some(json!({"ttl": "30s"})),
            &["service:write:web"],
            &["service:read"],
            S::OK,
        ),
        case(
            Method::GET,
            "/v1/leases/{id}",
            format!("/v1/leases/{lease}"),
            None,
            &["lease:read"],
            &["service:write"],
            S::OK,
        ),
        case(
            Method::PUT,
            "/v1/leases/{id}/keepalive",
            format!("/v1/leases/{lease}/keepalive"),
            None,
            &["lease:write"],
            &["lease:read"],
            S::OK,
        ),
        case(
            Method::DELETE,
            "/v1/leases/{id}",
            format!("/v1/leases/{lease}"),
            None,
            &["lease:write"],
            &["service:write"],
            S::OK,
        ),
        case(
            Method::GET,
            "/v1/cluster",
            "/v1/cluster".into(),
            None,
            &["cluster:read"],
            &["service:read"],
            S::OK,
        ),
        case(
            Method::PUT,
            "/v1/agent/service/register",
            "/v1/agent/service/register".into(),
            Some(
                json!({"name": "web", "id": "i9", "address": "127.0.0.1", "port": 80, "check": {"ttl": "30s"}}),
            ),
            &["service:write:web"],
            &["service:read"],
            S::OK,
        ),
        case(
            Method::PUT,
            "/v1/agent/check/pass/{check}",
            "/v1/agent/check/pass/service:i9".into(),
            None,
            &["service:write:web"],
            &["service:read"],
            S::OK,
        ),
        case(
            Method::PUT,
            "/v1/agent/check/warn/{check}",
            "/v1/agent/check/warn/service:i9".into(),
            None,
            &["service:write:web"],
            &["service:read"],
            S::OK,
        ),
        case(
            Method::PUT,
            "/v1/agent/check/update/{check}",
            "/v1/agent/check/update/service:i9".into(),
            Some(json!({"Status": "passing"})),
            &["service:write:web"],
            &["service:read"],
            S::OK,
        ),
        case(
            Method::PUT,
            "/v1/agent/service/maintenance/{id}",
            "/v1/agent/service/maintenance/i9?enable=true".into(),
            None,
            &["service:write:web"],
            &["service:read"],
            S::OK,
        ),
        case(
            Method::PUT,
            "/v1/agent/check/fail/{check}",
            "/v1/agent/check/fail/service:i9".into(),
            None,
            &["lease:write"],
            &["service:write"],
            S::OK,
        ),
        case(
            Method::PUT,
            "/v1/agent/service/deregister/{id}",
            "/v1/agent/service/deregister/i9".into(),
            None,
            &["service:write:web"],
            &["service:read"],
            S::OK,
        ),
        case(
            Method::GET,
            "/v1/agent/self",
            "/v1/agent/self".into(),
            None,
            &["service:read"],
            &["lock:read"],
            S::OK,
        ),
        case(
            Method::GET,
            "/v1/status/leader",
            "/v1/status/leader".into(),
            None,
            &["cluster:read"],
            &["service:read"],
            S::OK,
        ),
        case(
            Method::GET,
            "/v1/status/peers",
            "/v1/status/peers".into(),
            None,
            &["cluster:read"],
            &["service:read"],
            S::OK,
        ),
        case(
            Method::GET,
            "/v1/catalog/services",
            "/v1/catalog/services".into(),
            None,
            &["service:read"],
            &["lock:read"],
            S::OK,
        ),
        case(
            Method::GET,
            "/v1/catalog/nodes",
            "/v1/catalog/nodes".into(),
            None,
            &["service:read"],
            &["lock:read"],
            S::OK,
        ),
        case(
            Method::GET,
            "/v1/catalog/service/{name}",
            "/v1/catalog/service/web".into(),
            None,
            &["service:read:web"],
            &["service:read:db"],
            S::OK,
        ),
        case(
            Method::GET,
            "/v1/health/service/{name}",
            "/v1/health/service/web".into(),
            None,
            &["service:read:web"],
            &["service:read:db"],
            S::OK,
        ),
        case(
            Method::GET,
            "/v1/health/state/{state}",
            "/v1/health/state/any".into(),
            None,
            &["service:read"],
            &["lock:read"],
            S::OK,
        ),
        case(
            Method::GET,
            "/v1/sd/prometheus",
            "/v1/sd/prometheus".into(),
            None,
            &["service:read"],
            &["lock:read"],
            S::OK,
        ),
        case(
            Method::GET,
            "/v1/snapshot",
            "/v1/snapshot".into(),
            None,
            &["cluster:write"],
            &["cluster:read"],
            S::OK,
        ),
        case(
            Method::GET,
            "/metrics",
            "/metrics".into(),
            None,
            &["cluster:read"],
            &["service:read"],
            S::OK,
        ),
        // Adding this server again changes nothing; the point is getting past the check.
        case(
            Method::POST,
            "/v1/cluster/members",
            "/v1/cluster/members".into(),
            Some(json!({"id": 1, "addr": own_addr})),
            &["cluster:write"],
            &["cluster:read"],
            S::OK,
        ),
        case(
            Method::DELETE,
            "/v1/cluster/members/{id}",
            "/v1/cluster/members/9".into(),
            None,
            &["cluster:write"],
            &["cluster:read"],
            S::NOT_FOUND,
        ),
        case(
            Method::GET,
            "/v1/services",
            "/v1/services".into(),
            None,
            &["service:read:web"],
            &["lock:read"],
            S::OK,
        ),
        case(
            Method::GET,
            "/v1/services/{service}",
            "/v1/services/web".into(),
            None,
            &["service:read:web"],
            &["service:read:db"],
            S::OK,
        ),
        case(
            Method::PUT,
            "/v1/services/{service}/instances/{id}",
            inst.into(),
            Some(json!({"address": "127.0.0.1", "port": 8081})),
            &["service:write:web"],
            &["service:read:web", "service:write:db"],
            S::OK,
        ),
        case(
            Method::PUT,
            "/v1/services/{service}/instances/{id}/heartbeat",
            format!("{inst}/heartbeat"),
            None,
            &["service:write:we"],
            &["service:read"],
            S::OK,
        ),
        case(
            Method::PUT,
            "/v1/services/{service}/instances/{id}/status",
            format!("{inst}/status"),
            Some(json!({"status": "draining"})),
            &["service:write:web"],
            &["service:write:webx"],
            S::OK,
        ),
        case(
            Method::DELETE,
            "/v1/services/{service}/instances/{id}",
            inst.into(),
            None,
            &["service:write"],
            &["lock:write"],
            S::OK,
        ),
        case(
            Method::GET,
            "/v1/locks",
            "/v1/locks".into(),
            None,
            &["lock:read"],
            &["service:read"],
            S::OK,
        ),
        case(
            Method::GET,
            "/v1/locks/{name}",
            "/v1/locks/job".into(),
            None,
            &["lock:read:job"],
            &["lock:read:other", "election:read:job"],
            S::OK,
        ),
        case(
            Method::POST,
            "/v1/locks/{name}/acquire",
            "/v1/locks/job/acquire".into(),
            Some(json!({"ttl": "10s"})),
            &["lock:write:job"],
            &["lock:read:job"],
            S::OK,
        ),
        case(
            Method::POST,
            "/v1/locks/{name}/release",
            "/v1/locks/job/release".into(),
            Some(json!({"token": 1})),
            &["lock:write:job"],
            &["lock:read"],
            S::CONFLICT,
        ),
        case(
            Method::GET,
            "/v1/elections",
            "/v1/elections".into(),
            None,
            &["election:read"],
            &["lock:read"],
            S::OK,
        ),
        case(
            Method::GET,
            "/v1/elections/{name}",
            "/v1/elections/boss".into(),
            None,
            &["election:read:boss"],
            &["lock:read:boss"],
            S::OK,
        ),
        case(
            Method::POST,
            "/v1/elections/{name}/campaign",
            "/v1/elections/boss/campaign".into(),
            Some(json!({"candidate": "a", "ttl": "10s"})),
            &["election:write:boss"],
            &["election:read"],
            S::OK,
        ),
        case(
            Method::POST,
            "/v1/elections/{name}/proclaim",
            "/v1/elections/boss/proclaim".into(),
            Some(json!({"token": 1, "candidate": "b"})),
            &["election:write"],
            &["lock:write"],
            S::CONFLICT,
        ),
        case(
            Method::POST,
            "/v1/elections/{name}/resign",
            "/v1/elections/boss/resign".into(),
            Some(json!({"token": 1})),
            &["election:write:b"],
            &["election:read:boss"],
            S::CONFLICT,
        ),
        case(
            Method::POST,
            "/v1/acl/tokens",
            "/v1/acl/tokens".into(),
            Some(json!({"description": "x"})),
            &["acl:write"],
            &["acl:read"],
            S::OK,
        ),
        case(
            Method::GET,
            "/v1/acl/tokens",
            "/v1/acl/tokens".into(),
            None,
            &["acl:read"],
            &["cluster:write"],
            S::OK,
        ),
        case(
            Method::DELETE,
            "/v1/acl/tokens/{accessor}",
            format!("/v1/acl/tokens/{}", f.accessor),
            None,
            &["acl:write"],
            &["acl:read"],
            S::OK,
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_refuses_no_token_and_the_wrong_token_and_serves_the_right_one() {
    let server = start_with_acl(&[]).await;
    let own_addr = server.base.trim_start_matches("http://").to_owned();
    // Routes checked below in their own way; every other route needs a case.
    let special = ["/v1/acl/bootstrap", "/v1/acl/tokens/self"];
    let mut covered = BTreeMap::new();
    let probe = fixtures(&server).await;
    for case in cases(&probe, &own_addr) {
        covered.insert((case.method.to_string(), case.route), ());
    }
    for (method, route, auth) in public_routes() {
        let key = (method.to_string(), route);
        match auth {
            Auth::Open => assert!(!covered.contains_key(&key)),
            _ if special.contains(&route) => {}
            Auth::Caller | Auth::Renewal => {
                assert!(covered.contains_key(&key), "no case for {method} {route}")
            }
        }
    }

    for n in 0.. {
        let f = fixtures(&server).await;
        let Some(case) = cases(&f, &own_addr).into_iter().nth(n) else {
            break;
        };
        let what = format!("{} {}", case.method, case.path);
        let (status, body) = call(
            &server,
            None,
            case.method.clone(),
            &case.path,
            case.body.clone(),
        )
        .await;
        assert_eq!(
            status,
            StatusCode::UNAUTHORIZED,
            "{what} without a token: {body}"
        );
        assert_eq!(code(&body), "unauthenticated", "{what}");

        let wrong = token(&server, BOOT, case.wrong).await;
        let (status, body) = call(
            &server,
            Some(&wrong.secret),
            case.method.clone(),
            &case.path,
            case.body.clone(),
        )
        .await;
        assert_eq!(
            status,
            StatusCode::FORBIDDEN,
            "{what} with {:?}: {body}",
            case.wrong
        );
        assert_eq!(code(&body), "permission_denied", "{what}");

        let right = token(&server, BOOT, case.right).await;
        let (status, body) = call(
            &server,
            Some(&right.secret),
            case.method.clone(),
            &case.path,
            case.body.clone(),
        )
        .await;
        assert_eq!(status, case.expect, "{what} with {:?}: {body}", case.right);
    }

    // Open routes stay open, whatever is presented.
    for (_, route, auth) in public_routes() {
        if auth == Auth::Open {
            let (status, _) = call(&server, None, Method::GET, route, None).await;
            assert_eq!(status, StatusCode::OK, "{route}");
        }
    }
    // A token made with no rules sees itself, and only itself.
    let nobody = token(&server, BOOT, &[]).await;
    let (status, body) = call(
        &server,
        Some(&nobody.secret),
        Method::GET,
        "/v1/acl/tokens/self",
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["accessor"], nobody.token.accessor.to_string());
    assert!(body.get("secret").is_none(), "{body}");
    let (status, body) = call(&server, None, Method::GET, "/v1/acl/tokens/self", None).await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::UNAUTHORIZED, "unauthenticated")
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bootstrap_works_once_and_shows_the_secret_only_then() {
    let server = start(&["--acl"]).await;
    let (status, body) = call(&server, None, Method::POST, "/v1/acl/bootstrap", None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let created: TokenCreated = serde_json::from_value(body).unwrap();
    assert!(created.token.management && created.secret.len() >= 32);
    let (status, body) = call(&server, None, Method::POST, "/v1/acl/bootstrap", None).await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::CONFLICT, "acl_bootstrapped")
    );
    // The secret works; listing shows the token but never a secret.
    let (status, body) = call(
        &server,
        Some(&created.secret),
        Method::GET,
        "/v1/acl/tokens",
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let listed = body.to_string();
    assert!(listed.contains(&created.token.accessor.to_string()));
    assert!(
        !listed.contains(&created.secret),
        "a secret was listed: {listed}"
    );
    // Secrets are compared by hash: the stored state never holds one.
    let (_, body) = call(
        &server,
        Some(&created.secret),
        Method::GET,
        "/v1/acl/tokens/self",
        None,
    )
    .await;
    assert!(!body.to_string().contains(&created.secret));
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_configured_bootstrap_token_bootstrap_answers_409() {
    let server = start_with_acl(&[]).await;
    let (status, body) = call(&server, None, Method::POST, "/v1/acl/bootstrap", None).await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::CONFLICT, "acl_bootstrapped")
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_cannot_be_kept_alive_revoked_or_bound_through_another_token() {
    let server = start_with_acl(&[]).await;
    let alice = token(&server, BOOT, &["service:write", "lock:write"]).await;
    let mallory = token(&server, BOOT, &["service:write", "lock:write"]).await;
    let (status, body) = call(
        &server,
        Some(&alice.secret),
        Method::POST,
        "/v1/leases",
        Some(json!({"ttl": "30s"})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let lease = body["lease"].as_str().unwrap().to_owned();

    let attempts = [
        (Method::PUT, format!("/v1/leases/{lease}/keepalive"), None),
        (Method::GET, format!("/v1/leases/{lease}"), None),
        (
            Method::PUT,
            "/v1/services/web/instances/m1".to_owned(),
            Some(json!({"address": "127.0.0.1", "port": 1, "lease": lease})),
        ),
        (
            Method::POST,
            "/v1/locks/job/acquire".to_owned(),
            Some(json!({"lease": lease})),
        ),
        (Method::DELETE, format!("/v1/leases/{lease}"), None),
    ];
    for (method, path, body) in &attempts {
        let (status, answer) = call(
            &server,
            Some(&mallory.secret),
            method.clone(),
            path,
            body.clone(),
        )
        .await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{method} {path}: {answer}");
        assert!(
            answer["error"]["message"]
                .as_str()
                .unwrap()
                .contains(&lease),
            "the refusal names the lease: {answer}"
        );
    }
    // The owner may do all of it, the revoke last.
    for (method, path, body) in &attempts {
        let (status, answer) = call(
            &server,
            Some(&alice.secret),
            method.clone(),
            path,
            body.clone(),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{method} {path}: {answer}");
    }
    // An instance's own lease belongs to whoever registered it: another token with
    // service:write may heartbeat the instance (the route's permission), not its lease.
    let (_, body) = call(
        &server,
        Some(&alice.secret),
        Method::PUT,
        "/v1/services/web/instances/a1",
        Some(json!({"address": "127.0.0.1", "port": 1})),
    )
    .await;
    let own = body["lease"].as_str().unwrap().to_owned();
    let (status, _) = call(
        &server,
        Some(&mallory.secret),
        Method::PUT,
        &format!("/v1/leases/{own}/keepalive"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = call(
        &server,
        Some(&mallory.secret),
        Method::PUT,
        "/v1/services/web/instances/a1/heartbeat",
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_show_only_readable_names_and_lock_tokens_only_to_writers() {
    let server = start_with_acl(&[]).await;
    for service in ["web", "db"] {
        let (status, _) = call(
            &server,
            Some(BOOT),
            Method::PUT,
            &format!("/v1/services/{service}/instances/i1"),
            Some(json!({"address": "127.0.0.1", "port": 1})),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
    }
    let (status, _) = call(
        &server,
        Some(BOOT),
        Method::POST,
        "/v1/locks/job/acquire",
        Some(json!({"ttl": "30s"})),
    )
    .await;
    assert_eq!(status, StatusCode::OK);

    let reader = token(&server, BOOT, &["service:read:web", "lock:read"]).await;
    let (_, body) = call(
        &server,
        Some(&reader.secret),
        Method::GET,
        "/v1/services",
        None,
    )
    .await;
    let names: Vec<&str> = body["services"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["web"]);
    for path in ["/v1/locks/job", "/v1/locks"] {
        let (_, body) = call(&server, Some(&reader.secret), Method::GET, path, None).await;
        let text = body.to_string();
        assert!(text.contains("\"held\":true"), "{text}");
        assert!(
            !text.contains("\"token\"") && !text.contains("\"lease\""),
            "a reader sees the holder's token or lease: {text}"
        );
    }
    let writer = token(&server, BOOT, &["lock:write:job"]).await;
    let (_, body) = call(
        &server,
        Some(&writer.secret),
        Method::GET,
        "/v1/locks/job",
        None,
    )
    .await;
    assert!(
        body["holder"]["token"].is_u64() && body["holder"]["lease"].is_string(),
        "{body}"
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_rules_open_what_they_name_and_nothing_else() {
    let server = start_with_acl(&["--acl-anonymous", "service:read"]).await;
    let (status, body) = call(&server, None, Method::GET, "/v1/services/web", None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = call(
        &server,
        None,
        Method::PUT,
        "/v1/services/web/instances/i1",
        Some(json!({"address": "127.0.0.1", "port": 1})),
    )
    .await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::UNAUTHORIZED, "unauthenticated")
    );
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("service") && message.contains("write") && message.contains("\"web\""),
        "{message}"
    );
    // A wrong secret is refused outright, not treated as anonymous.
    let (status, body) = call(
        &server,
        Some("not-a-real-token-secret"),
        Method::GET,
        "/v1/services/web",
        None,
    )
    .await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::UNAUTHORIZED, "unauthenticated")
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_or_expired_token_is_refused_and_the_header_forms_agree() {
    let server = start_with_acl(&[]).await;
    let reader = token(&server, BOOT, &["service:read"]).await;
    let via_header = server
        .http
        .get(format!("{}/v1/services", server.base))
        .header(api_spec::acl::TOKEN_HEADER, &reader.secret)
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(via_header, StatusCode::OK);
    let (status, body) = call(
        &server,
        Some(BOOT),
        Method::DELETE,
        &format!("/v1/acl/tokens/{}", reader.token.accessor),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["unconfirmed_members"], json!([]));
    let (status, _) = call(
        &server,
        Some(&reader.secret),
        Method::GET,
        "/v1/services",
        None,
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, body) = call(
        &server,
        Some(BOOT),
        Method::DELETE,
        &format!("/v1/acl/tokens/{}", reader.token.accessor),
        None,
    )
    .await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::NOT_FOUND, "token_not_found")
    );

    let (status, body) = call(
        &server,
        Some(BOOT),
        Method::POST,
        "/v1/acl/tokens",
        Some(json!({"rules": [{"resource": "service", "access": "read"}], "ttl": "1s"})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let brief: TokenCreated = serde_json::from_value(body).unwrap();
    assert!(brief.token.expires_at_ms.is_some());
    let (status, _) = call(
        &server,
        Some(&brief.secret),
        Method::GET,
        "/v1/services",
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while call(
        &server,
        Some(&brief.secret),
        Method::GET,
        "/v1/services",
        None,
    )
    .await
    .0 == StatusCode::OK
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "a 1s token still works after 10s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The leader purges it: it leaves the list too.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (_, body) = call(&server, Some(BOOT), Method::GET, "/v1/acl/tokens", None).await;
        if !body.to_string().contains(&brief.token.accessor.to_string()) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the expired token was never purged"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_acls_off_tokens_are_ignored_and_the_acl_routes_say_so() {
    let server = start(&[]).await;
    let (status, _) = call(
        &server,
        Some("whatever-this-is-ignored"),
        Method::GET,
        "/v1/services",
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = call(&server, None, Method::POST, "/v1/acl/bootstrap", None).await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::BAD_REQUEST, "acl_disabled")
    );
    server.shutdown().await;
}

/// Sends `op` to `/internal/forward` as a peer would.
async fn forward(server: &Running, secret: &str, op: &Forward) -> ForwardAnswer {
    let response = server
        .http
        .post(format!("{}/internal/forward", server.base))
        .header("x-registry-cluster-secret", secret)
        .header("content-type", "application/octet-stream")
        .body(bincode::serialize(op).unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    bincode::deserialize(&response.bytes().await.unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_internal_commands_are_refused() {
    let server = start_with_acl(&["--cluster-secret", "peer-secret"]).await;
    let propose = |command: Command| Forward::Propose {
        command,
        caller: Principal::Anonymous,
    };
    // Commands only the leader's own tasks make: refused whoever asks.
    let reap = propose(Command::Reap { instances: vec![] });
    match forward(&server, "peer-secret", &reap).await {
        Err(registry_server::app::AppError::Denied(denied)) => {
            assert_eq!(denied.need, Need::Internal)
        }
        other => panic!("a forged reap got {other:?}"),
    }
    // A public command without the caller's permission.
    let deregister = propose(Command::Deregister {
        key: ("web".into(), "i1".into()),
    });
    assert!(matches!(
        forward(&server, "peer-secret", &deregister).await,
        Err(registry_server::app::AppError::Denied(_))
    ));
    // A command no public route would make: validated again.
    let (spec, binding) = registry_server::validate::registration(
        serde_json::from_value(json!({"address": "127.0.0.1", "port": 1})).unwrap(),
        uuid::Uuid::new_v4(),
    )
    .unwrap();
    let bad = Command::Register {
        key: ("not a name".into(), "i1".into()),
        spec,
        binding,
    };
    let admin = {
        let (_, body) = call(
            &server,
            Some(BOOT),
            Method::GET,
            "/v1/acl/tokens/self",
            None,
        )
        .await;
        body["accessor"].as_str().unwrap().parse().unwrap()
    };
    let forged = Forward::Propose {
        command: bad,
        caller: Principal::Token(admin),
    };
    assert!(matches!(
        forward(&server, "peer-secret", &forged).await,
        Err(registry_server::app::AppError::Invalid(_))
    ));
    // Nothing of it reached the catalog.
    let (_, body) = call(&server, Some(BOOT), Method::GET, "/v1/services", None).await;
    assert_eq!(body["services"], json!([]));
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_with_a_non_loopback_member_refuses_to_start_without_a_secret() {
    let dir = tempfile::tempdir().unwrap();
    let addr = format!("127.0.0.1:{}", free_port());
    let config = Config::parse_from([
        "registry-server",
        "--listen",
        &addr,
        "--advertise",
        "10.11.12.13:7400",
        "--data-dir",
        dir.path().to_str().unwrap(),
    ]);
    let error = registry_server::server::run(config, std::future::pending())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("10.11.12.13:7400") && error.contains("--cluster-secret"),
        "{error}"
    );
    assert_eq!(error.lines().count(), 1, "{error}");
    // The same with a secret starts (its one member is itself).
    let dir = tempfile::tempdir().unwrap();
    let config = Config::parse_from([
        "registry-server",
        "--listen",
        &addr,
        "--advertise",
        "10.11.12.13:7400",
        "--cluster-secret",
        "s3cret",
        "--data-dir",
        dir.path().to_str().unwrap(),
    ]);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(registry_server::server::run(config, async move {
        let _ = stopped.await;
    }));
    let http = reqwest::Client::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !http
        .get(format!("http://{addr}/healthz"))
        .send()
        .await
        .is_ok_and(|r| r.status().is_success())
    {
        assert!(tokio::time::Instant::now() < deadline, "did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.send(()).unwrap();
    task.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_secret_only_loopback_members_may_be_added() {
    let server = start(&[]).await;
    let (status, body) = call(
        &server,
        None,
        Method::POST,
        "/v1/cluster/members",
        Some(json!({"id": 5, "addr": "10.0.0.5:7400"})),
    )
    .await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::CONFLICT, "membership_conflict"),
        "{body}"
    );
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("--cluster-secret"));
    server.shutdown().await;
}

/// Collects what the server logs (this test binary runs one test per process under
/// nextest, so a global subscriber sees only this test's server).
#[derive(Clone, Default)]
struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_write_by_a_token_is_one_audit_line() {
    let captured = Captured::default();
    let writer = captured.clone();
    tracing_subscriber::fmt()
        .with_env_filter("registry::audit=info")
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .init();
    let server = start_with_acl(&[]).await;
    let web = token(&server, BOOT, &["service:write:web", "service:read:web"]).await;
    let register = || {
        call(
            &server,
            Some(&web.secret),
            Method::PUT,
            "/v1/services/web/instances/i1",
            Some(json!({"address": "127.0.0.1", "port": 1})),
        )
    };
    assert_eq!(register().await.0, StatusCode::OK);
    let (status, _) = call(
        &server,
        Some(&web.secret),
        Method::PUT,
        "/v1/services/db/instances/i1",
        Some(json!({"address": "127.0.0.1", "port": 1})),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    // Reads and heartbeats are not audited.
    call(
        &server,
        Some(&web.secret),
        Method::GET,
        "/v1/services/web",
        None,
    )
    .await;
    call(
        &server,
        Some(&web.secret),
        Method::PUT,
        "/v1/services/web/instances/i1/heartbeat",
        None,
    )
    .await;
    server.shutdown().await;

    let log = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    let accessor = web.token.accessor.to_string();
    let lines: Vec<&str> = log.lines().filter(|l| l.contains(&accessor)).collect();
    assert_eq!(lines.len(), 2, "{log}");
    assert!(
        lines[0].contains("route=\"/v1/services/{service}/instances/{id}\"")
            && lines[0].contains("name=\"web/i1\"")
            && lines[0].contains("status=200")
            && lines[0].contains("method=PUT"),
        "{}",
        lines[0]
    );
    assert!(
        lines[1].contains("name=\"db/i1\"")
            && lines[1].contains("status=403")
            && lines[1].contains("outcome=\"refused\""),
        "{}",
        lines[1]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_chunk_past_the_largest_snapshot_is_refused() {
    use registry_server::raft::types::TypeConfig;
    let server = start(&["--cluster-secret", "peer-secret"]).await;
    let chunk = |offset: u64| openraft::raft::InstallSnapshotRequest::<TypeConfig> {
        vote: openraft::Vote::new(1, 1),
        meta: openraft::SnapshotMeta {
            last_log_id: None,
            last_membership: Default::default(),
            snapshot_id: "forged".into(),
        },
        offset,
        data: vec![0; 16],
        done: false,
    };
    let max = registry_server::http::MAX_SNAPSHOT_BYTES;
    for offset in [max, u64::MAX - 8] {
        let response = server
            .http
            .post(format!(
                "{}{}",
                server.base,
                registry_server::raft::network::paths::SNAPSHOT
            ))
            .header("x-registry-cluster-secret", "peer-secret")
            .body(bincode::serialize(&chunk(offset)).unwrap())
            .send()
            .await
            .unwrap();
        assert_eq!(
            response.status(),
            StatusCode::BAD_REQUEST,
            "offset {offset}"
        );
        let text = response.text().await.unwrap();
        assert!(text.contains("largest snapshot"), "{text}");
    }
    // The server is unharmed and still serves.
    let (status, _) = call(&server, None, Method::GET, "/v1/cluster", None).await;
    assert_eq!(status, StatusCode::OK);
    server.shutdown().await;
}
