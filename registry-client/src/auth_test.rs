//! Tests of the token a client sends: on every call, on failover, from the background
//! tasks (discovery watch, registration heartbeats, lock renewals), and of the ACL
//! routes' requests, against the canned servers of [`crate::failover_test`].

use std::time::Duration;

use api_spec::acl::{Access, CreateTokenRequest, Resource, Rule};
use tokio::time::sleep;

use crate::failover_test::{Canned, Seen};
use crate::*;

const SECRET: &str = "0123456789abcdef-secret";
const BEARER: &str = "Bearer 0123456789abcdef-secret";

pub(crate) const LEASE: &str = r#"{"lease":"67e55044-10b1-426f-9247-bb680e5fe0c8","ttl":"1s","ttl_ms":1000,"granted_index":3,"granted_at_ms":1}"#;
const NO_LEADER: &str = r#"{"error":{"code":"no_leader","message":"election"}}"#;
const UNAUTHENTICATED: &str =
    r#"{"error":{"code":"unauthenticated","message":"this request needs a token"}}"#;
const PERMISSION_DENIED: &str =
    r#"{"error":{"code":"permission_denied","message":"needs lock:write on job"}}"#;
pub(crate) const INSTANCES: &str = r#"{"service":"web","instances":[{"service":"web","id":"w1","address":"10.0.0.1","port":80,"tags":[],"meta":{},"weight":1,"status":"passing","lease":"67e55044-10b1-426f-9247-bb680e5fe0c8","own_lease":true,"ttl":"1s","ttl_ms":1000,"deregister_after":"1m","deregister_after_ms":60000,"registered_at_ms":1,"modify_index":5}]}"#;
pub(crate) const INSTANCE: &str = r#"{"service":"web","id":"w1","address":"10.0.0.1","port":80,"tags":[],"meta":{},"weight":1,"status":"passing","lease":"67e55044-10b1-426f-9247-bb680e5fe0c8","own_lease":true,"ttl":"1s","ttl_ms":1000,"deregister_after":"1m","deregister_after_ms":60000,"registered_at_ms":1,"modify_index":5}"#;
pub(crate) const HEARTBEAT: &str = r#"{"service":"web","id":"w1","lease":"67e55044-10b1-426f-9247-bb680e5fe0c8","ttl_ms":1000,"remaining_ms":1000}"#;
pub(crate) const DEREGISTERED: &str = r#"{"service":"web","id":"w1","deregistered":true}"#;
pub(crate) const GRANT: &str = r#"{"name":"job","token":7,"lease":"67e55044-10b1-426f-9247-bb680e5fe0c8","own_lease":true,"ttl_ms":1000,"holder":"h","lock_delay_ms":1000,"granted_index":7,"granted_at_ms":1}"#;
pub(crate) const RELEASED: &str =
    r#"{"name":"job","token":7,"released":true,"lease_revoked":true}"#;
const CREATED: &str = r#"{"secret":"fresh-secret-0123456789","accessor":"6f1e1c1e-0000-4000-8000-000000000001","description":"ci","rules":[{"resource":"service","prefix":"web","access":"write"}],"management":false,"create_index":9,"created_at_ms":1700000000000,"expires_at_ms":1700086400000}"#;
const REVOKED: &str = r#"{"accessor":"6f1e1c1e-0000-4000-8000-000000000001","revoked":true,"unconfirmed_members":[3]}"#;

fn client_with(addrs: &[&str], secret: &str) -> Client {
    Client::builder(addrs.iter().copied())
        .timeout(Duration::from_secs(5))
        .token(secret)
        .build()
        .unwrap()
}

/// The `Authorization` header of every request `server` saw.
fn authorizations(server: &Canned) -> Vec<Option<String>> {
    server
        .seen()
        .iter()
        .map(|s| s.header("authorization").map(str::to_owned))
        .collect()
}

/// Waits (up to 5 s) until `server` saw a request whose line `wanted`; returns it.
async fn arrives(server: &Canned, wanted: impl Fn(&str) -> bool) -> Seen {
    let wait = async {
        loop {
            if let Some(seen) = server.seen().into_iter().find(|s| wanted(&s.line)) {
                return seen;
            }
            sleep(Duration::from_millis(10)).await;
        }
    };
    match tokio::time::timeout(Duration::from_secs(5), wait).await {
        Ok(seen) => seen,
        Err(_) => panic!("no such request; saw {:?}", server.seen()),
    }
}

#[tokio::test]
async fn every_request_carries_the_bearer_token_on_every_endpoint_it_tries() {
    let down = Canned::start(503, NO_LEADER).await;
    let up = Canned::start(200, LEASE).await;
    let client = client_with(&[&down.addr, &up.addr], SECRET);
    client
        .get_lease(Uuid::new_v4(), Consistency::Linearizable)
        .await
        .unwrap();
    client.keepalive(Uuid::new_v4()).await.unwrap();
    assert_eq!(authorizations(&down), [Some(BEARER.to_owned())]);
    assert_eq!(
        authorizations(&up),
        [Some(BEARER.to_owned()), Some(BEARER.to_owned())]
    );
    // Only the one header: the token is not sent twice.
    assert!(up
        .seen()
        .iter()
        .all(|s| s.header("x-registry-token").is_none()));
}

#[tokio::test]
async fn without_a_token_nothing_is_sent_and_whitespace_around_one_is_dropped() {
    let server = Canned::start(200, LEASE).await;
    let none = Client::new([server.addr.as_str()]).unwrap();
    none.keepalive(Uuid::new_v4()).await.unwrap();
    let empty = client_with(&[&server.addr], " \n");
    empty.keepalive(Uuid::new_v4()).await.unwrap();
    let from_a_file = client_with(&[&server.addr], format!("{SECRET}\n").as_str());
    from_a_file.keepalive(Uuid::new_v4()).await.unwrap();
    assert_eq!(
        authorizations(&server),
        [None, None, Some(BEARER.to_owned())]
    );
}

#[tokio::test]
async fn a_secret_that_cannot_be_a_header_fails_before_anything_is_sent() {
    let first = Canned::start(200, LEASE).await;
    let second = Canned::start(200, LEASE).await;
    let client = client_with(&[&first.addr, &second.addr], "abc\u{7}def-secret");
    let err = client
        .create_lease(Duration::from_secs(5))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::InvalidHeader { name, .. } if name == "authorization"),
        "{err:?}"
    );
    assert!(!err.is_retryable());
    let text = format!("{err} {err:?}");
    assert!(!text.contains("def-secret"), "the secret leaked: {text}");
    assert_eq!((first.hits(), second.hits()), (0, 0));
}

#[tokio::test]
async fn token_and_auth_header_replace_each_other() {
    let server = Canned::start(200, LEASE).await;
    let hooked_then_token = Client::builder([server.addr.as_str()])
        .auth_header(|| Some(("x-proxy-auth".to_owned(), "p".to_owned())))
        .token(SECRET)
        .build()
        .unwrap();
    hooked_then_token.keepalive(Uuid::new_v4()).await.unwrap();
    let token_then_hooked = Client::builder([server.addr.as_str()])
        .token(SECRET)
        .auth_header(|| Some(("x-proxy-auth".to_owned(), "p".to_owned())))
        .build()
        .unwrap();
    token_then_hooked.keepalive(Uuid::new_v4()).await.unwrap();
    let seen = server.seen();
    assert_eq!(seen[0].header("authorization"), Some(BEARER));
    assert_eq!(seen[0].header("x-proxy-auth"), None);
    assert_eq!(seen[1].header("authorization"), None);
    assert_eq!(seen[1].header("x-proxy-auth"), Some("p"));
}

#[test]
fn the_secret_stays_out_of_debug_output() {
    let builder = Client::builder(["127.0.0.1:1"]).token(SECRET);
    let client = builder.clone().build().unwrap();
    let text = format!("{builder:?} {client:?}");
    assert!(!text.contains(SECRET), "{text}");
    assert!(text.contains("auth: true"), "{text}");
}

#[tokio::test]
async fn refusals_are_final_api_errors_with_their_code() {
    let refusing = Canned::start(401, UNAUTHENTICATED).await;
    let other = Canned::start(200, LEASE).await;
    let client = client_with(&[&refusing.addr, &other.addr], SECRET);
    let err = client.keepalive(Uuid::new_v4()).await.unwrap_err();
    assert!(err.is_unauthenticated(), "{err:?}");
    assert_eq!(err.status(), Some(401));
    assert_eq!(
        other.hits(),
        0,
        "another server would refuse the same token"
    );

    let denying = Canned::start(403, PERMISSION_DENIED).await;
    let client = client_with(&[&denying.addr], SECRET);
    let err = client.release("job", 7).await.unwrap_err();
    assert!(err.is_permission_denied(), "{err:?}");
    match err {
        Error::Api { message, code, .. } => {
            assert_eq!(code, "permission_denied");
            assert_eq!(message, "needs lock:write on job");
        }
        other => panic!("expected Api, got {other:?}"),
    }
}

#[tokio::test]
async fn the_discovery_watch_sends_the_token() {
    let server = Canned::start(200, INSTANCES).await;
    let client = client_with(&[&server.addr], SECRET);
    // The first fetch and every blocking query after it run in the spawned watch task.
    let endpoints = client
        .endpoints("web", &ServiceQuery::default())
        .await
        .unwrap();
    assert_eq!(endpoints.instances.len(), 1);
    arrives(&server, |line| line.contains("index=")).await;
    let auths = authorizations(&server);
    assert!(auths.len() >= 2, "{auths:?}");
    assert!(
        auths.iter().all(|a| a.as_deref() == Some(BEARER)),
        "{auths:?}"
    );
}

#[tokio::test]
async fn a_refused_first_discovery_fetch_fails_at_once_with_the_refusal() {
    const DENIED: &str =
        r#"{"error":{"code":"permission_denied","message":"needs service:read on web"}}"#;
    let server = Canned::start(403, DENIED).await;
    let client = client_with(&[&server.addr], SECRET);
    let started = std::time::Instant::now();
    let err = client
        .endpoints("web", &ServiceQuery::default())
        .await
        .unwrap_err();
    assert!(err.is_permission_denied(), "{err:?}");
    // Well before the client's 5 s timeout, which a refusal would only wait out.
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    let err = client.resolve("web").await.unwrap_err();
    match err {
        Error::Api {
            status, message, ..
        } => {
            assert_eq!(
                (status, message.as_str()),
                (403, "needs service:read on web")
            );
        }
        other => panic!("expected the refusal, got {other:?}"),
    }
}

#[tokio::test]
async fn an_unanswered_first_discovery_fetch_still_waits_for_the_timeout() {
    let server = Canned::start(503, NO_LEADER).await;
    let client = Client::builder([server.addr.as_str()])
        .timeout(Duration::from_millis(300))
        .token(SECRET)
        .build()
        .unwrap();
    let started = std::time::Instant::now();
    let err = client
        .endpoints("web", &ServiceQuery::default())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Unavailable { .. }), "{err:?}");
    assert!(started.elapsed() >= Duration::from_millis(300));
}

#[tokio::test]
async fn a_refusal_after_a_good_list_keeps_serving_the_list() {
    // The first fetch is answered, the blocking queries after it refused.
    let server = Canned::scripted(|line| {
        if line.contains("index=") {
            (401, UNAUTHENTICATED)
        } else {
            (200, INSTANCES)
        }
    })
    .await;
    let client = client_with(&[&server.addr], SECRET);
    let first = client
        .endpoints("web", &ServiceQuery::default())
        .await
        .unwrap();
    assert_eq!((first.instances.len(), first.error), (1, None));
    let refused = async {
        loop {
            let now = client
                .endpoints("web", &ServiceQuery::default())
                .await
                .unwrap();
            if now.error.is_some() {
                return now;
            }
            sleep(Duration::from_millis(10)).await;
        }
    };
    let now = tokio::time::timeout(Duration::from_secs(5), refused)
        .await
        .expect("the refusal shows in the cache");
    assert_eq!(now.instances.len(), 1);
    assert!(
        now.error
            .as_deref()
            .is_some_and(|e| e.contains("401 unauthenticated")),
        "{:?}",
        now.error
    );
}

#[tokio::test]
async fn registration_heartbeats_and_deregistration_send_the_token() {
    let server = Canned::scripted(|line| {
        if line.ends_with("/heartbeat") {
            (200, HEARTBEAT)
        } else if line.starts_with("DELETE ") {
            (200, DEREGISTERED)
        } else {
            (200, INSTANCE)
        }
    })
    .await;
    let client = client_with(&[&server.addr], SECRET);
    let request = RegisterRequest {
        address: "10.0.0.1".into(),
        port: 80,
        tags: Vec::new(),
        meta: Default::default(),
        zone: None,
        region: None,
        weight: None,
        ttl: Some("1s".into()),
        deregister_after: None,
        lease: None,
        checks: Vec::new(),
    };
    let registration = client
        .register_instance("web", "w1", request)
        .await
        .unwrap();
    // A third of the 1 s TTL later, the background task heartbeats.
    let heartbeat = arrives(&server, |line| line.ends_with("/heartbeat")).await;
    assert_eq!(heartbeat.header("authorization"), Some(BEARER));
    registration.shutdown().await.unwrap();
    let deregister = arrives(&server, |line| line.starts_with("DELETE ")).await;
    assert_eq!(deregister.header("authorization"), Some(BEARER));
    let auths = authorizations(&server);
    assert!(
        auths.iter().all(|a| a.as_deref() == Some(BEARER)),
        "{auths:?}"
    );
}

#[tokio::test]
async fn lock_renewals_and_the_release_send_the_token() {
    let server = Canned::scripted(|line| {
        if line.ends_with("/acquire") {
            (200, GRANT)
        } else if line.ends_with("/release") {
            (200, RELEASED)
        } else {
            (200, LEASE)
        }
    })
    .await;
    let client = client_with(&[&server.addr], SECRET);
    let options = LockOptions {
        ttl: Duration::from_secs(1),
        ..LockOptions::default()
    };
    let guard = client.lock("job", options).await.unwrap();
    let renewal = arrives(&server, |line| line.ends_with("/keepalive")).await;
    assert_eq!(renewal.header("authorization"), Some(BEARER));
    guard.release().await.unwrap();
    let auths = authorizations(&server);
    assert!(auths.len() >= 3, "{auths:?}");
    assert!(
        auths.iter().all(|a| a.as_deref() == Some(BEARER)),
        "{auths:?}"
    );
}

#[tokio::test]
async fn acl_routes_send_what_the_contract_says() {
    let server = Canned::scripted(|line| match line {
        "POST /v1/acl/bootstrap" | "POST /v1/acl/tokens" => (200, CREATED),
        "GET /v1/acl/tokens" => (200, r#"{"tokens":[]}"#),
        "GET /v1/acl/tokens/self" => (
            200,
            r#"{"accessor":"6f1e1c1e-0000-4000-8000-000000000001","description":"","rules":[],"management":true,"create_index":2,"created_at_ms":1}"#,
        ),
        _ if line.starts_with("DELETE /v1/acl/tokens/") => (200, REVOKED),
        _ => (404, r#"{"error":{"code":"not_found","message":"no route"}}"#),
    })
    .await;
    let client = client_with(&[&server.addr], SECRET);

    let boot = client.acl_bootstrap().await.unwrap().value;
    assert_eq!(boot.secret, "fresh-secret-0123456789");
    assert_eq!(boot.token.create_index, 9);

    let request = CreateTokenRequest {
        description: "ci".into(),
        rules: vec![Rule {
            resource: Resource::Service,
            prefix: "web".into(),
            access: Access::Write,
        }],
        management: false,
        ttl: Some("24h".into()),
    };
    let created = client.acl_create_token(&request).await.unwrap().value;
    assert_eq!(created.token.rules, request.rules);
    assert_eq!(created.token.expires_at_ms, Some(1700086400000));

    assert!(client
        .acl_list_tokens()
        .await
        .unwrap()
        .value
        .tokens
        .is_empty());
    assert!(client.acl_token_self().await.unwrap().value.management);
    let accessor: Uuid = "6f1e1c1e-0000-4000-8000-000000000001".parse().unwrap();
    let revoked = client.acl_revoke_token(accessor).await.unwrap().value;
    assert_eq!(revoked.unconfirmed_members, [3]);

    let seen = server.seen();
    let lines: Vec<&str> = seen.iter().map(|s| s.line.as_str()).collect();
    assert_eq!(
        lines,
        [
            "POST /v1/acl/bootstrap",
            "POST /v1/acl/tokens",
            "GET /v1/acl/tokens",
            "GET /v1/acl/tokens/self",
            "DELETE /v1/acl/tokens/6f1e1c1e-0000-4000-8000-000000000001",
        ]
    );
    // Bootstrap has no body; create sends the request as JSON.
    assert_eq!(seen[0].body, "");
    assert_eq!(seen[1].header("content-type"), Some("application/json"));
    let sent: CreateTokenRequest = serde_json::from_str(&seen[1].body).unwrap();
    assert_eq!(sent, request);
    assert!(seen
        .iter()
        .all(|s| s.header("authorization") == Some(BEARER)));
}

#[tokio::test]
async fn a_bootstrap_is_not_repeated_on_another_server_after_a_503() {
    let down = Canned::start(503, NO_LEADER).await;
    let up = Canned::start(200, CREATED).await;
    let client = client_with(&[&down.addr, &up.addr], SECRET);
    let err = client.acl_bootstrap().await.unwrap_err();
    assert_eq!(err.code(), Some("no_leader"));
    assert_eq!((down.hits(), up.hits()), (1, 0));
}
