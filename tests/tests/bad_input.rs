//! Malformed and out-of-range requests against a single-node registry: each one gets a
//! 4xx with a JSON error body carrying the documented code, and none of them stops the
//! server from serving the next request. On the lock and election routes none of them
//! changes a lock or an election either.

use anyhow::{ensure, Context as _};
use api_spec::{
    codes, CampaignResponse, ElectionList, LeaseInfo, LockGrant, LockList, MAX_CANDIDATE_LEN,
    MAX_HOLDER_LEN,
};
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
        no_body(
            "a blocking query of the cluster status",
            Method::GET,
            "/v1/cluster?index=3&wait=5m".into(),
            400,
            codes::INVALID_ARGUMENT,
        ),
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
            name: "a form body without a content type (JSON without one is accepted)",
            content_type: None,
            ..create("", "ttl=5s", 415, codes::UNSUPPORTED_MEDIA_TYPE)
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

fn post(name: &'static str, path: &str, body: &str, status: u16, code: &'static str) -> Case {
    Case {
        name,
        method: Method::POST,
        path: path.to_owned(),
        content_type: JSON,
        body: body.as_bytes().to_vec(),
        status,
        code,
    }
}

/// Bad requests on the lock and election routes. `held` is a lock and `leading` an
/// election that a valid request took before (with `token` and `leader_token`), so that
/// wrong tokens meet a real holder.
fn lock_cases(held: &str, token: u64, leading: &str, leader_token: u64) -> Vec<Case> {
    let unknown = "67e55044-10b1-426f-9247-bb680e5fe0c8";
    let acquire = |name: &'static str, body: &str, status: u16, code: &'static str| {
        post(name, "/v1/locks/x/acquire", body, status, code)
    };
    let campaign = |name: &'static str, body: &str, status: u16, code: &'static str| {
        post(name, "/v1/elections/x/campaign", body, status, code)
    };
    let long_name = "a".repeat(200);
    let too_long_name = "a".repeat(129);
    let long_holder = "h".repeat(MAX_HOLDER_LEN + 1);
    let long_candidate = "c".repeat(MAX_CANDIDATE_LEN + 1);
    let bad = codes::INVALID_ARGUMENT;
    let duration = codes::INVALID_DURATION;
    let json = codes::INVALID_JSON;
    vec![
        // Names.
        post(
            "name starting with '-'",
            "/v1/locks/-x/acquire",
            r#"{"ttl":"5s"}"#,
            400,
            bad,
        ),
        post(
            "name with a space",
            "/v1/locks/a%20b/acquire",
            r#"{"ttl":"5s"}"#,
            400,
            bad,
        ),
        post(
            "name with a slash",
            "/v1/locks/a%2Fb/acquire",
            r#"{"ttl":"5s"}"#,
            400,
            bad,
        ),
        post(
            "name of 200 characters",
            &format!("/v1/locks/{long_name}/acquire"),
            r#"{"ttl":"5s"}"#,
            400,
            bad,
        ),
        post(
            "name of 129 characters",
            &format!("/v1/locks/{too_long_name}/acquire"),
            r#"{"ttl":"5s"}"#,
            400,
            bad,
        ),
        post(
            "release on a bad name",
            "/v1/locks/-x/release",
            r#"{"token":1}"#,
            400,
            bad,
        ),
        no_body(
            "get a bad name",
            Method::GET,
            "/v1/locks/a%20b".into(),
            400,
            bad,
        ),
        no_body(
            "get a 200-character name",
            Method::GET,
            format!("/v1/locks/{long_name}"),
            400,
            bad,
        ),
        post(
            "campaign on a bad name",
            "/v1/elections/-x/campaign",
            r#"{"candidate":"c","ttl":"5s"}"#,
            400,
            bad,
        ),
        no_body(
            "get a bad election name",
            Method::GET,
            "/v1/elections/a%20b".into(),
            400,
            bad,
        ),
        // Lease or TTL.
        acquire(
            "both lease and ttl",
            &format!(r#"{{"lease":"{unknown}","ttl":"5s"}}"#),
            400,
            bad,
        ),
        acquire("neither lease nor ttl", "{}", 400, bad),
        acquire(
            "neither lease nor ttl, with a wait",
            r#"{"wait":"1s"}"#,
            400,
            bad,
        ),
        acquire(
            "unknown lease",
            &format!(r#"{{"lease":"{unknown}"}}"#),
            404,
            codes::LEASE_NOT_FOUND,
        ),
        acquire(
            "unknown lease, with a wait",
            &format!(r#"{{"lease":"{unknown}","wait":"2s"}}"#),
            404,
            codes::LEASE_NOT_FOUND,
        ),
        acquire(
            "lease that is not a UUID",
            r#"{"lease":"12345"}"#,
            400,
            json,
        ),
        acquire("zero ttl", r#"{"ttl":"0s"}"#, 400, duration),
        acquire("ttl below 1s", r#"{"ttl":"500ms"}"#, 400, duration),
        acquire("ttl of 100 days", r#"{"ttl":"100d"}"#, 400, duration),
        acquire("ttl without a unit", r#"{"ttl":"15"}"#, 400, duration),
        acquire("ttl of the wrong type", r#"{"ttl":15}"#, 400, json),
        // Wait and lock-delay.
        acquire(
            "wait above 10m",
            r#"{"ttl":"5s","wait":"11m"}"#,
            400,
            duration,
        ),
        acquire(
            "negative wait",
            r#"{"ttl":"5s","wait":"-1s"}"#,
            400,
            duration,
        ),
        acquire(
            "wait without a unit",
            r#"{"ttl":"5s","wait":"5"}"#,
            400,
            duration,
        ),
        acquire(
            "wait that is no duration",
            r#"{"ttl":"5s","wait":"later"}"#,
            400,
            duration,
        ),
        acquire(
            "lock_delay above 1m",
            r#"{"ttl":"5s","lock_delay":"2m"}"#,
            400,
            duration,
        ),
        acquire(
            "negative lock_delay",
            r#"{"ttl":"5s","lock_delay":"-1s"}"#,
            400,
            duration,
        ),
        // Holder.
        acquire(
            "holder over 256 bytes",
            &format!(r#"{{"ttl":"5s","holder":"{long_holder}"}}"#),
            400,
            bad,
        ),
        acquire(
            "holder with a control character",
            r#"{"ttl":"5s","holder":"host\u0007pid"}"#,
            400,
            bad,
        ),
        acquire(
            "holder with a newline",
            r#"{"ttl":"5s","holder":"a\nb"}"#,
            400,
            bad,
        ),
        // Shape and content type.
        acquire("unknown field", r#"{"ttl":"5s","tll":"5s"}"#, 400, json),
        acquire("malformed JSON", r#"{"ttl":"#, 400, json),
        Case {
            name: "acquire with a text/plain body that is not JSON",
            content_type: Some("text/plain"),
            ..acquire("", "ttl 5s", 415, codes::UNSUPPORTED_MEDIA_TYPE)
        },
        Case {
            name: "acquire with a form body and no content type",
            content_type: None,
            ..acquire("", "ttl=5s", 415, codes::UNSUPPORTED_MEDIA_TYPE)
        },
        Case {
            name: "acquire body over 1 MiB",
            body: format!(r#"{{"ttl":"5s","holder":"{}"}}"#, "x".repeat(1024 * 1024)).into_bytes(),
            ..acquire("", "", 413, codes::PAYLOAD_TOO_LARGE)
        },
        // Tokens.
        post(
            "token that is a string",
            &format!("/v1/locks/{held}/release"),
            r#"{"token":"abc"}"#,
            400,
            json,
        ),
        post(
            "negative token",
            &format!("/v1/locks/{held}/release"),
            r#"{"token":-1}"#,
            400,
            json,
        ),
        post(
            "token that is a fraction",
            &format!("/v1/locks/{held}/release"),
            r#"{"token":1.5}"#,
            400,
            json,
        ),
        post(
            "release without a token",
            &format!("/v1/locks/{held}/release"),
            "{}",
            400,
            json,
        ),
        post(
            "release with an unknown field",
            &format!("/v1/locks/{held}/release"),
            &format!(r#"{{"token":{token},"lease":"{unknown}"}}"#),
            400,
            json,
        ),
        post(
            "release with the wrong token",
            &format!("/v1/locks/{held}/release"),
            &format!(r#"{{"token":{}}}"#, token + 1000),
            409,
            codes::TOKEN_MISMATCH,
        ),
        post(
            "release with an older token",
            &format!("/v1/locks/{held}/release"),
            &format!(r#"{{"token":{}}}"#, token - 1),
            409,
            codes::TOKEN_MISMATCH,
        ),
        post(
            "release of a free lock",
            "/v1/locks/free/release",
            r#"{"token":1}"#,
            409,
            codes::TOKEN_MISMATCH,
        ),
        post(
            "release with the token of an election",
            &format!("/v1/locks/{held}/release"),
            &format!(r#"{{"token":{leader_token}}}"#),
            409,
            codes::TOKEN_MISMATCH,
        ),
        // Elections.
        campaign("campaign without a candidate", r#"{"ttl":"5s"}"#, 400, json),
        campaign(
            "campaign with an empty candidate",
            r#"{"candidate":"","ttl":"5s"}"#,
            400,
            bad,
        ),
        campaign(
            "campaign with a candidate over 4096 bytes",
            &format!(r#"{{"candidate":"{long_candidate}","ttl":"5s"}}"#),
            400,
            bad,
        ),
        campaign(
            "campaign with neither lease nor ttl",
            r#"{"candidate":"c"}"#,
            400,
            bad,
        ),
        campaign(
            "campaign with both lease and ttl",
            &format!(r#"{{"candidate":"c","lease":"{unknown}","ttl":"5s"}}"#),
            400,
            bad,
        ),
        campaign(
            "campaign with an unknown lease",
            &format!(r#"{{"candidate":"c","lease":"{unknown}"}}"#),
            404,
            codes::LEASE_NOT_FOUND,
        ),
        campaign(
            "campaign with ttl 500ms",
            r#"{"candidate":"c","ttl":"500ms"}"#,
            400,
            duration,
        ),
        campaign(
            "campaign with wait above 10m",
            r#"{"candidate":"c","ttl":"5s","wait":"11m"}"#,
            400,
            duration,
        ),
        campaign(
            "campaign with a lock_delay",
            r#"{"candidate":"c","ttl":"5s","lock_delay":"1s"}"#,
            400,
            json,
        ),
        Case {
            name: "campaign with a text/plain body that is not JSON",
            content_type: Some("text/plain"),
            ..campaign("", "candidate=c", 415, codes::UNSUPPORTED_MEDIA_TYPE)
        },
        post(
            "proclaim an empty candidate",
            &format!("/v1/elections/{leading}/proclaim"),
            &format!(r#"{{"token":{leader_token},"candidate":""}}"#),
            400,
            bad,
        ),
        post(
            "proclaim a candidate over 4096 bytes",
            &format!("/v1/elections/{leading}/proclaim"),
            &format!(r#"{{"token":{leader_token},"candidate":"{long_candidate}"}}"#),
            400,
            bad,
        ),
        post(
            "proclaim without a token",
            &format!("/v1/elections/{leading}/proclaim"),
            r#"{"candidate":"v2"}"#,
            400,
            json,
        ),
        post(
            "proclaim with the wrong token",
            &format!("/v1/elections/{leading}/proclaim"),
            &format!(r#"{{"token":{},"candidate":"v2"}}"#, leader_token + 1000),
            409,
            codes::TOKEN_MISMATCH,
        ),
        post(
            "resign with the wrong token",
            &format!("/v1/elections/{leading}/resign"),
            &format!(r#"{{"token":{}}}"#, leader_token + 1000),
            409,
            codes::TOKEN_MISMATCH,
        ),
        post(
            "resign with the lock's token",
            &format!("/v1/elections/{leading}/resign"),
            &format!(r#"{{"token":{token}}}"#),
            409,
            codes::TOKEN_MISMATCH,
        ),
        post(
            "resign with a token that is a string",
            &format!("/v1/elections/{leading}/resign"),
            r#"{"token":"1"}"#,
            400,
            json,
        ),
        // Reads.
        no_body(
            "unknown query parameter on a lock",
            Method::GET,
            "/v1/locks/x?foo=1".into(),
            400,
            bad,
        ),
        no_body(
            "unknown query parameter on the lock list",
            Method::GET,
            "/v1/locks?tag=x".into(),
            400,
            bad,
        ),
        no_body(
            "unknown query parameter on an election",
            Method::GET,
            "/v1/elections/x?foo=1".into(),
            400,
            bad,
        ),
        no_body(
            "index that is not a number",
            Method::GET,
            "/v1/locks/x?index=abc".into(),
            400,
            bad,
        ),
        no_body(
            "blocking wait without a unit",
            Method::GET,
            "/v1/locks/x?index=1&wait=5".into(),
            400,
            duration,
        ),
        no_body(
            "negative blocking wait",
            Method::GET,
            "/v1/elections?index=1&wait=-1s".into(),
            400,
            duration,
        ),
        no_body(
            "bad consistency",
            Method::GET,
            "/v1/locks?consistency=maybe".into(),
            400,
            bad,
        ),
        // Methods.
        no_body(
            "GET on acquire",
            Method::GET,
            "/v1/locks/x/acquire".into(),
            405,
            codes::METHOD_NOT_ALLOWED,
        ),
        no_body(
            "DELETE on a lock",
            Method::DELETE,
            "/v1/locks/x".into(),
            405,
            codes::METHOD_NOT_ALLOWED,
        ),
    ]
}

#[tokio::test]
async fn bad_lock_and_election_requests_get_4xx_and_change_nothing() {
    let cluster = Cluster::start_single(&[])
        .await
        .expect("start a single node");
    must_pass(async {
        let addr = cluster.addr(1);
        let http = reqwest::Client::new();
        let get = |path: &'static str| {
            let request = http.get(format!("http://{addr}{path}"));
            async move {
                let response = request.send().await?;
                ensure!(
                    response.status() == 200,
                    "GET {path}: {}",
                    response.status()
                );
                anyhow::Ok(response.text().await?)
            }
        };
        // A lock and an election held by valid requests, for the wrong-token cases.
        let grant: LockGrant = http
            .post(format!("http://{addr}/v1/locks/held/acquire"))
            .json(&serde_json::json!({"ttl": "1h", "holder": "valid"}))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        let leader: CampaignResponse = http
            .post(format!("http://{addr}/v1/elections/leading/campaign"))
            .json(&serde_json::json!({"candidate": "valid", "ttl": "1h"}))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        let locks_before = get("/v1/locks").await?;
        let elections_before = get("/v1/elections").await?;

        let cases = lock_cases("held", grant.token, "leading", leader.leader.token);
        tests::check_bad_requests(&addr, &cases).await?;

        // Nothing changed: no lock or election was created, taken, queued or released.
        let locks_after = get("/v1/locks").await?;
        ensure!(
            locks_after == locks_before,
            "locks changed:\nbefore {locks_before}\nafter  {locks_after}"
        );
        let elections_after = get("/v1/elections").await?;
        ensure!(
            elections_after == elections_before,
            "elections changed:\nbefore {elections_before}\nafter  {elections_after}"
        );

        // Give both back; then the lists are empty.
        for (path, token) in [
            ("/v1/locks/held/release", grant.token),
            ("/v1/elections/leading/resign", leader.leader.token),
        ] {
            let response = http
                .post(format!("http://{addr}{path}"))
                .json(&serde_json::json!({ "token": token }))
                .send()
                .await?;
            ensure!(response.status() == 200, "{path}: {}", response.status());
        }
        let locks: LockList = serde_json::from_str(&get("/v1/locks").await?)?;
        ensure!(locks.locks.is_empty(), "locks left: {locks:?}");
        let elections: ElectionList = serde_json::from_str(&get("/v1/elections").await?)?;
        ensure!(
            elections.elections.is_empty(),
            "elections left: {elections:?}"
        );
        let _ = get("/healthz").await.context("still serving")?;
        Ok(())
    })
    .await;
}

/// `curl -d '{...}'` sends `application/x-www-form-urlencoded`, and scripts forget
/// `-H 'content-type: application/json'`: a body that parses as JSON is accepted whatever
/// its content type. And a blocking query at index 0 answers at once, as in Consul.
#[tokio::test]
async fn json_without_a_json_content_type_is_accepted_and_index_zero_does_not_block() {
    let cluster = Cluster::start_single(&[])
        .await
        .expect("start a single node");
    must_pass(async {
        let addr = cluster.addr(1);
        let http = reqwest::Client::new();
        let send = |method: Method, path: &str, content_type: Option<&str>, body: &str| {
            let mut request = http.request(method, format!("http://{addr}{path}"));
            if let Some(content_type) = content_type {
                request = request.header(reqwest::header::CONTENT_TYPE, content_type);
            }
            request.body(body.to_owned()).send()
        };
        for content_type in [
            None,
            Some("application/x-www-form-urlencoded"),
            Some("text/plain"),
        ] {
            let lease = send(Method::POST, "/v1/leases", content_type, r#"{"ttl":"5s"}"#).await?;
            ensure!(
                lease.status() == 200,
                "create lease with {content_type:?}: {}",
                lease.status()
            );
            let registered = send(
                Method::PUT,
                "/v1/services/web/instances/i1",
                content_type,
                r#"{"address":"127.0.0.1","port":8080,"ttl":"10s"}"#,
            )
            .await?;
            ensure!(
                registered.status() == 200,
                "register with {content_type:?}: {} {}",
                registered.status(),
                registered.text().await?
            );
            let grant = send(
                Method::POST,
                "/v1/locks/ct/acquire",
                content_type,
                r#"{"ttl":"5s"}"#,
            )
            .await?;
            ensure!(
                grant.status() == 200,
                "acquire with {content_type:?}: {}",
                grant.status()
            );
            let grant: LockGrant = grant.json().await?;
            let released = send(
                Method::POST,
                "/v1/locks/ct/release",
                content_type,
                &format!(r#"{{"token":{}}}"#, grant.token),
            )
            .await?;
            ensure!(
                released.status() == 200,
                "release with {content_type:?}: {}",
                released.status()
            );
        }

        // A name that never changed, watched from index 0 with a long wait: at once.
        let started = std::time::Instant::now();
        for path in [
            "/v1/services/never-registered?index=0&wait=30s",
            "/v1/locks/never-taken?index=0&wait=30s",
            "/v1/services?index=0&wait=30s",
        ] {
            let answer = send(Method::GET, path, None, "").await?;
            ensure!(answer.status() == 200, "{path}: {}", answer.status());
        }
        ensure!(
            started.elapsed() < std::time::Duration::from_secs(10),
            "index=0 waited {:?}",
            started.elapsed()
        );
        Ok(())
    })
    .await;
}
