//! The OpenAPI document and the router agree: every documented route is served, every
//! served public route is documented, and `GET /v1/openapi.json` serves the document.

#![allow(clippy::unwrap_used)] // a test: a failed unwrap is a failed test

mod common;

use common::start;

use std::collections::BTreeSet;

use api_spec::{codes, ErrorBody, INDEX_HEADER};
use serde_json::Value;

/// HTTP methods as OpenAPI path items name them.
const METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "patch", "head", "options", "trace",
];

/// The document as JSON, the way any OpenAPI consumer sees it.
fn document() -> Value {
    serde_json::from_str(&api_spec::openapi::openapi_json()).unwrap()
}

/// (METHOD, path) of every documented operation, with the operation itself.
fn documented(doc: &Value) -> Vec<(String, String, Value)> {
    let mut operations = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in METHODS {
            if let Some(operation) = item.get(method) {
                operations.push((method.to_uppercase(), path.clone(), operation.clone()));
            }
        }
    }
    operations
}

#[test]
fn documented_routes_are_exactly_the_served_routes() {
    // axum 0.8 writes path parameters as `{id}`, like OpenAPI, so paths compare as they are.
    let served: BTreeSet<(String, String)> = registry_server::http::public_routes()
        .into_iter()
        .map(|(method, path, _)| (method.as_str().to_owned(), path.to_owned()))
        .collect();
    let documented: BTreeSet<(String, String)> = documented(&document())
        .into_iter()
        .map(|(method, path, _)| (method, path))
        .collect();
    let undocumented: Vec<_> = served.difference(&documented).collect();
    let unserved: Vec<_> = documented.difference(&served).collect();
    assert!(
        undocumented.is_empty() && unserved.is_empty(),
        "served but not documented: {undocumented:?}; documented but not served: {unserved:?}"
    );
    assert!(served.len() >= 16, "only {} routes", served.len());
}

#[test]
fn routes_that_act_for_a_caller_declare_the_token_and_its_refusals() {
    let doc = document();
    let schemes = &doc["components"]["securitySchemes"];
    assert_eq!(schemes["bearer"]["scheme"], "bearer", "{schemes}");
    assert_eq!(
        schemes["token_header"]["name"],
        api_spec::acl::TOKEN_HEADER,
        "{schemes}"
    );
    let operations = documented(&doc);
    for (method, path, auth) in registry_server::http::public_routes() {
        let (_, _, operation) = operations
            .iter()
            .find(|(m, p, _)| m == method.as_str() && p == path)
            .unwrap();
        let responses = &operation["responses"];
        let declared = operation.get("security").is_some()
            && responses.get("401").is_some()
            && responses.get("403").is_some();
        match auth {
            registry_server::http::Auth::Caller | registry_server::http::Auth::Renewal => assert!(
                declared,
                "{method} {path} acts for a caller but does not declare the token, 401 and 403"
            ),
            registry_server::http::Auth::Open => assert!(
                operation.get("security").is_none() && responses.get("401").is_none(),
                "{method} {path} is open but declares a token"
            ),
        }
    }
}

/// A concrete path for a documented template: each parameter gets a value of the
/// right shape (a lease id must be a UUID, a node id a number) that names nothing, so
/// no request changes anything.
fn concrete(path: &str) -> String {
    let id = if path.starts_with("/v1/leases/") {
        uuid::Uuid::new_v4().to_string()
    } else if path.starts_with("/v1/cluster/members/") {
        "9".to_owned()
    } else {
        "i1".to_owned()
    };
    let concrete = path
        .replace("{service}", "svc")
        .replace("{name}", "l1")
        .replace("{id}", &id)
        .replace("{accessor}", &uuid::Uuid::new_v4().to_string())
        .replace("{state}", "any")
        .replace("{check}", "service:i1");
    assert!(
        !concrete.contains('{'),
        "{path}: a path parameter this test does not know how to fill"
    );
    concrete
}

/// What the router answers when no route matched the method and path, if it did.
async fn router_miss(response: reqwest::Response) -> Option<String> {
    let status = response.status();
    if status == reqwest::StatusCode::METHOD_NOT_ALLOWED {
        return Some("405".to_owned());
    }
    if status != reqwest::StatusCode::NOT_FOUND {
        return None;
    }
    let body: ErrorBody = response.json().await.unwrap();
    (body.error.code == codes::NOT_FOUND).then(|| format!("404 {}", body.error.code))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_router_serves_every_documented_route_and_the_document() {
    let server = start(&[]).await;
    let (http, base) = (&server.http, server.base.as_str());

    // The document, as served.
    let response = http
        .get(format!("{base}/v1/openapi.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), reqwest::StatusCode::OK);
    assert_eq!(
        response.headers()[reqwest::header::CONTENT_TYPE],
        "application/json"
    );
    let served: Value = serde_json::from_str(&response.text().await.unwrap()).unwrap();
    assert_eq!(served, document());

    // The check below can tell a routed request from a miss: an unknown path and a
    // known path with a method it does not take are both recognised as misses.
    let miss = http
        .get(format!("{base}/v1/no-such-route"))
        .send()
        .await
        .unwrap();
    assert_eq!(router_miss(miss).await.as_deref(), Some("404 not_found"));
    let miss = http
        .patch(format!("{base}/v1/cluster"))
        .send()
        .await
        .unwrap();
    assert_eq!(router_miss(miss).await.as_deref(), Some("405"));

    // Every documented operation reaches a handler (whatever it then answers: these
    // requests name nothing that exists, or carry an empty body, so many are 4xx).
    let operations = documented(&document());
    assert!(
        operations.len() >= 16,
        "only {} operations",
        operations.len()
    );
    let mut misses = Vec::new();
    for (method, path, operation) in operations {
        let url = format!("{base}{}", concrete(&path));
        let mut request = http.request(method.parse().unwrap(), &url);
        if operation.get("requestBody").is_some() {
            request = request.json(&serde_json::json!({}));
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        assert!(
            response.headers().contains_key(INDEX_HEADER),
            "{method} {url} answered {status} without {INDEX_HEADER}"
        );
        if let Some(miss) = router_miss(response).await {
            misses.push(format!("{method} {path} answered {miss}"));
        }
    }
    assert!(misses.is_empty(), "documented but not routed: {misses:#?}");

    server.shutdown().await;
}
