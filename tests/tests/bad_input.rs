//! Malformed and out-of-range requests against a single-node registry: each one gets a
//! 4xx with a JSON error body carrying the documented code, and none of them stops the
//! server from serving the next request.

use anyhow::ensure;
use api_spec::{codes, LeaseInfo};
use reqwest::Method;
use tests::{must_pass, BadRequest as Case, Cluster};

const JSON: Option<&str> = Some("application/json");

fn create(name: &'static str, body: &str, status: u16, code: &'static str) -> Case {
    Case {
        name,
        method: Method::POST,
        path: "/v1/leases".into(),
        content_type: JSON,
        body: body.as_bytes().to_vec(),
        status,
        code,
    }
}

fn no_body(
    name: &'static str,
    method: Method,
    path: String,
    status: u16,
    code: &'static str,
) -> Case {
    Case {
        name,
        method,
        path,
        content_type: None,
        body: Vec::new(),
        status,
        code,
    }
}

fn cases() -> Vec<Case> {
    let unknown = "67e55044-10b1-426f-9247-bb680e5fe0c8";
    let mut cases = vec![
        create("malformed JSON", r#"{"ttl":"#, 400, codes::INVALID_JSON),
        create("not an object", "[]", 400, codes::INVALID_JSON),
        create(
            "ttl of the wrong type",
            r#"{"ttl":5}"#,
            400,
            codes::INVALID_JSON,
        ),
        create("missing ttl", "{}", 400, codes::INVALID_JSON),
        create(
            "unknown field",
            r#"{"ttl":"5s","tll":"5s"}"#,
            400,
            codes::INVALID_JSON,
        ),
        create("zero ttl", r#"{"ttl":"0s"}"#, 400, codes::INVALID_DURATION),
        create(
            "negative ttl",
            r#"{"ttl":"-5s"}"#,
            400,
            codes::INVALID_DURATION,
        ),
        create(
            "ttl of ten years",
            r#"{"ttl":"10y"}"#,
            400,
            codes::INVALID_DURATION,
        ),
        create(
            "ttl without a unit",
            r#"{"ttl":"15"}"#,
            400,
            codes::INVALID_DURATION,
        ),
        create(
            "ttl below the minimum",
            r#"{"ttl":"500ms"}"#,
            400,
            codes::INVALID_DURATION,
        ),
        create(
            "ttl above the maximum",
            r#"{"ttl":"25h"}"#,
            400,
            codes::INVALID_DURATION,
        ),
        create(
            "ttl that is not a duration",
            r#"{"ttl":"soon"}"#,
            400,
            codes::INVALID_DURATION,
        ),
        Case {
            name: "body over 1 MiB",
            body: format!(r#"{{"ttl":"5s","pad":"{}"}}"#, "x".repeat(1024 * 1024)).into_bytes(),
            ..create("", "", 413, codes::PAYLOAD_TOO_LARGE)
        },
        Case {
            name: "JSON body without a content type",
            content_type: None,
            ..create("", r#"{"ttl":"5s"}"#, 415, codes::UNSUPPORTED_MEDIA_TYPE)
        },
        no_body(
            "get an unknown lease",
            Method::GET,
            format!("/v1/leases/{unknown}"),
            404,
            codes::LEASE_NOT_FOUND,
        ),
        no_body(
            "stale get of an unknown lease",
            Method::GET,
            format!("/v1/leases/{unknown}?stale"),
            404,
            codes::LEASE_NOT_FOUND,
        ),
        no_body(
            "keepalive of an unknown lease",
            Method::PUT,
            format!("/v1/leases/{unknown}/keepalive"),
            404,
            codes::LEASE_NOT_FOUND,
        ),
        no_body(
            "revoke an unknown lease",
            Method::DELETE,
            format!("/v1/leases/{unknown}"),
            404,
            codes::LEASE_NOT_FOUND,
        ),
        no_body(
            "non-UUID lease id",
            Method::GET,
            "/v1/leases/not-a-uuid".into(),
            400,
            codes::INVALID_ARGUMENT,
        ),
        no_body(
            "keepalive of a non-UUID lease id",
            Method::PUT,
            "/v1/leases/12345/keepalive".into(),
            400,
            codes::INVALID_ARGUMENT,
        ),
        no_body(
            "unknown route",
            Method::GET,
            "/v1/nothing-here".into(),
            404,
            codes::NOT_FOUND,
        ),
        no_body(
            "wrong method",
            Method::PATCH,
            "/v1/leases".into(),
            405,
            codes::METHOD_NOT_ALLOWED,
        ),
    ];
    cases.push(Case {
        name: "member with a non-numeric id",
        path: "/v1/cluster/members".into(),
        ..create(
            "",
            r#"{"id":"four","addr":"127.0.0.1:1"}"#,
            400,
            codes::INVALID_JSON,
        )
    });
    cases
}

#[tokio::test]
async fn bad_requests_get_4xx_json_errors_and_the_server_keeps_serving() {
    let cluster = Cluster::start_single(&[])
        .await
        .expect("start a single node");
    must_pass(async {
        let addr = cluster.addr(1);
        tests::check_bad_requests(&addr, &cases()).await?;

        // And it still does its job.
        let created = reqwest::Client::new()
            .post(format!("http://{addr}/v1/leases"))
            .json(&serde_json::json!({"ttl": "5s"}))
            .send()
            .await?;
        ensure!(
            created.status() == 200,
            "valid create answered {}",
            created.status()
        );
        let lease: LeaseInfo = created.json().await?;
        ensure!(lease.ttl_ms == 5000, "ttl_ms {}", lease.ttl_ms);
        Ok(())
    })
    .await;
}
