//! The probes against real servers started on 127.0.0.1 port 0: an axum HTTP server, a
//! TLS one with a CA made at test time, plain listeners and a tonic-health gRPC server.
#![allow(clippy::unwrap_used)] // a test: a failed unwrap is a failed test

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::http::{header, HeaderMap, StatusCode};
use axum::routing::get;
use axum::Router;
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::net::TcpListener;
use tonic_health::ServingStatus as ReportedStatus;

use super::*;

/// Long enough for any probe against a healthy local server.
const GENEROUS: Duration = Duration::from_secs(10);
/// Short enough to keep the timeout tests quick.
const SHORT: Duration = Duration::from_millis(200);
/// What the slow route waits before answering: far past [`SHORT`].
const SLOW_ROUTE_DELAY: Duration = Duration::from_secs(3600);
/// The header value the `/token` route wants.
const TOKEN: &str = "s3cret";

fn probes() -> Probes {
    Probes::new(None).unwrap()
}

fn no_headers() -> Vec<(String, String)> {
    Vec::new()
}

/// A port nothing listens on: bound, read, and closed again.
fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// Binds a listener on 127.0.0.1 port 0; the kernel queues connections from now on,
/// so a server spawned on it needs no waiting for.
async fn local_listener() -> (TcpListener, u16) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    (listener, port)
}

/// The HTTP test server's base URL (`http://127.0.0.1:PORT`).
async fn http_server() -> String {
    let app = Router::new()
        .route("/ok", get(|| async { "all good" }))
        .route("/empty", get(|| async { StatusCode::NO_CONTENT }))
        .route(
            "/fail",
            get(|| async { (StatusCode::INTERNAL_SERVER_ERROR, "broken") }),
        )
        .route(
            "/redirect",
            get(|| async { (StatusCode::FOUND, [(header::LOCATION, "/ok")], "moved") }),
        )
        .route(
            "/slow",
            get(|| async {
                tokio::time::sleep(SLOW_ROUTE_DELAY).await;
                "too late"
            }),
        )
        .route("/endless", get(|| async { endless_body() }))
        .route(
            "/noisy",
            get(|| async { "line one\r\n\t\tline\u{7}two\u{0}\n" }),
        )
        .route("/token", get(token))
        .route(
            "/agent",
            get(|headers: HeaderMap| async move { user_agent(&headers) }),
        );
    let (listener, port) = local_listener().await;
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://127.0.0.1:{port}")
}

/// A body that never ends, of multi-byte characters.
fn endless_body() -> Body {
    let chunk = Bytes::from_static("héllo wörld ".as_bytes());
    Body::from_stream(futures::stream::repeat_with(move || {
        Ok::<_, Infallible>(chunk.clone())
    }))
}

/// 200 with the `x-check-token` header's value when it is [`TOKEN`], else 401.
async fn token(headers: HeaderMap) -> (StatusCode, String) {
    match headers.get("x-check-token").map(|v| v.to_str()) {
        Some(Ok(value)) if value == TOKEN => (StatusCode::OK, format!("token {value}")),
        _ => (StatusCode::UNAUTHORIZED, "no token".to_owned()),
    }
}

/// The request's `User-Agent`, or "" without one.
fn user_agent(headers: &HeaderMap) -> String {
    headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

async fn get_ok(url: &str, expect: ExpectStatus) -> ProbeOutcome {
    probes()
        .http(url, "GET", &no_headers(), expect, GENEROUS)
        .await
}

#[tokio::test]
async fn http_200_passes_with_status_line_and_body() {
    let base = http_server().await;
    let outcome = get_ok(&format!("{base}/ok"), ExpectStatus::Class(2)).await;
    assert_eq!(
        outcome,
        ProbeOutcome {
            passing: true,
            output: "HTTP 200 OK: all good".to_owned()
        }
    );
}

#[tokio::test]
async fn http_204_matches_its_code_and_its_class() {
    let base = http_server().await;
    let empty = format!("{base}/empty");
    let by_code = get_ok(&empty, ExpectStatus::Code(204)).await;
    assert!(by_code.passing, "{by_code:?}");
    assert_eq!(by_code.output, "HTTP 204 No Content");
    let by_class = get_ok(&empty, ExpectStatus::Class(2)).await;
    assert!(by_class.passing, "{by_class:?}");

    let other_code = get_ok(&format!("{base}/ok"), ExpectStatus::Code(204)).await;
    assert!(!other_code.passing, "{other_code:?}");
    assert_eq!(other_code.output, "HTTP 200 OK: all good");
}

#[tokio::test]
async fn http_500_fails_unless_expected() {
    let base = http_server().await;
    let fail = format!("{base}/fail");
    let outcome = get_ok(&fail, ExpectStatus::Class(2)).await;
    assert!(!outcome.passing);
    assert_eq!(outcome.output, "HTTP 500 Internal Server Error: broken");
    assert!(get_ok(&fail, ExpectStatus::Class(5)).await.passing);
}

#[tokio::test]
async fn http_redirect_is_not_followed() {
    let base = http_server().await;
    let redirect = format!("{base}/redirect");
    let outcome = get_ok(&redirect, ExpectStatus::Class(2)).await;
    assert!(!outcome.passing, "{outcome:?}");
    assert_eq!(outcome.output, "HTTP 302 Found: moved");
    assert!(get_ok(&redirect, ExpectStatus::Code(302)).await.passing);
}

#[tokio::test]
async fn http_slow_answer_times_out() {
    let base = http_server().await;
    let started = Instant::now();
    let outcome = probes()
        .http(
            &format!("{base}/slow"),
            "GET",
            &no_headers(),
            ExpectStatus::Class(2),
            SHORT,
        )
        .await;
    assert_eq!(
        outcome,
        ProbeOutcome {
            passing: false,
            output: "timed out after 200ms".to_owned()
        }
    );
    assert!(started.elapsed() < GENEROUS, "{:?}", started.elapsed());
}

#[tokio::test]
async fn http_endless_body_is_read_only_in_part() {
    let base = http_server().await;
    let outcome = get_ok(&format!("{base}/endless"), ExpectStatus::Class(2)).await;
    // Passing (not "timed out") shows the probe stopped reading the endless body.
    assert!(outcome.passing, "{outcome:?}");
    assert!(
        outcome.output.starts_with("HTTP 200 OK: héllo wörld héllo"),
        "{outcome:?}"
    );
    assert!(outcome.output.len() <= MAX_CHECK_OUTPUT);
    assert!(outcome.output.len() > MAX_CHECK_OUTPUT - 4, "{outcome:?}");
}

#[tokio::test]
async fn http_body_control_characters_become_spaces() {
    let base = http_server().await;
    let outcome = get_ok(&format!("{base}/noisy"), ExpectStatus::Class(2)).await;
    assert_eq!(outcome.output, "HTTP 200 OK: line one line two");
}

#[tokio::test]
async fn http_head_works() {
    let base = http_server().await;
    let outcome = probes()
        .http(
            &format!("{base}/ok"),
            "HEAD",
            &no_headers(),
            ExpectStatus::Class(2),
            GENEROUS,
        )
        .await;
    assert_eq!(
        outcome,
        ProbeOutcome {
            passing: true,
            output: "HTTP 200 OK".to_owned()
        }
    );
}

#[tokio::test]
async fn http_method_is_the_checks() {
    let base = http_server().await;
    let outcome = probes()
        .http(
            &format!("{base}/ok"),
            "POST",
            &no_headers(),
            ExpectStatus::Class(2),
            GENEROUS,
        )
        .await;
    assert!(!outcome.passing);
    assert!(
        outcome.output.starts_with("HTTP 405 Method Not Allowed"),
        "{outcome:?}"
    );
}

#[tokio::test]
async fn http_headers_reach_the_server() {
    let base = http_server().await;
    let url = format!("{base}/token");
    let headers = vec![("X-Check-Token".to_owned(), TOKEN.to_owned())];
    let with = probes()
        .http(&url, "GET", &headers, ExpectStatus::Class(2), GENEROUS)
        .await;
    assert_eq!(
        with,
        ProbeOutcome {
            passing: true,
            output: format!("HTTP 200 OK: token {TOKEN}")
        }
    );
    let without = get_ok(&url, ExpectStatus::Class(2)).await;
    assert_eq!(without.output, "HTTP 401 Unauthorized: no token");
    assert!(!without.passing);
}

#[tokio::test]
async fn http_says_who_is_checking() {
    let base = http_server().await;
    let outcome = get_ok(&format!("{base}/agent"), ExpectStatus::Class(2)).await;
    assert_eq!(outcome.output, format!("HTTP 200 OK: {USER_AGENT}"));
}

#[tokio::test]
async fn http_bad_method_header_or_url_fails_without_sending() {
    let url = format!("http://127.0.0.1:{}/", closed_port());
    let probes = probes();
    let expect = ExpectStatus::Class(2);
    let bad_method = probes
        .http(&url, "NO SUCH", &no_headers(), expect, GENEROUS)
        .await;
    assert_eq!(bad_method.output, "invalid HTTP method \"NO SUCH\"");
    let bad_name = vec![("bad name".to_owned(), "x".to_owned())];
    let outcome = probes.http(&url, "GET", &bad_name, expect, GENEROUS).await;
    assert_eq!(outcome.output, "invalid header name \"bad name\"");
    let bad_value = vec![("x-ok".to_owned(), "line\nbreak".to_owned())];
    let outcome = probes.http(&url, "GET", &bad_value, expect, GENEROUS).await;
    assert_eq!(outcome.output, "invalid value of header \"x-ok\"");
    let outcome = probes
        .http("not a url", "GET", &no_headers(), expect, GENEROUS)
        .await;
    assert!(!outcome.passing);
    assert!(outcome.output.starts_with("invalid URL"), "{outcome:?}");
    let outcome = probes
        .http("ftp://127.0.0.1/", "GET", &no_headers(), expect, GENEROUS)
        .await;
    assert!(!outcome.passing);
    assert!(outcome.output.starts_with("request failed"), "{outcome:?}");
}

#[tokio::test]
async fn http_connection_refused() {
    let url = format!("http://127.0.0.1:{}/", closed_port());
    let outcome = get_ok(&url, ExpectStatus::Class(2)).await;
    assert_eq!(
        outcome,
        ProbeOutcome {
            passing: false,
            output: "connection refused".to_owned()
        }
    );
}

/// A test CA's PEM, and an HTTPS server on 127.0.0.1 with a certificate it issued; the
/// server's base URL.
async fn https_server() -> (String, String) {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_pem = ca_params.self_signed(&ca_key).unwrap().pem();
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["127.0.0.1".to_owned()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![cert.der().clone()], key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let (listener, port) = local_listener().await;
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let answer = hyper::service::service_fn(|_request| async {
                    Ok::<_, Infallible>(hyper::Response::new(Body::from("secure")))
                });
                let io = hyper_util::rt::TokioIo::new(tls);
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(io, answer)
                    .await;
            });
        }
    });
    (ca_pem, format!("https://127.0.0.1:{port}/"))
}

#[tokio::test]
async fn https_trusts_the_extra_roots_only_when_given() {
    let (ca_pem, url) = https_server().await;
    let trusting = Probes::new(Some(ca_pem.as_bytes())).unwrap();
    let outcome = trusting
        .http(&url, "GET", &no_headers(), ExpectStatus::Class(2), GENEROUS)
        .await;
    assert_eq!(
        outcome,
        ProbeOutcome {
            passing: true,
            output: "HTTP 200 OK: secure".to_owned()
        }
    );

    let outcome = get_ok(&url, ExpectStatus::Class(2)).await;
    assert!(!outcome.passing);
    assert!(outcome.output.contains("certificate"), "{outcome:?}");
}

#[test]
fn new_rejects_bad_pem() {
    let error = Probes::new(Some(b"not a certificate")).unwrap_err();
    assert!(error.contains("no PEM certificate"), "{error}");
    let broken = b"-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n";
    let error = Probes::new(Some(broken)).unwrap_err();
    assert!(error.contains("not readable as PEM"), "{error}");
}

#[tokio::test]
async fn tcp_listening_port_passes() {
    let (_listener, port) = local_listener().await;
    let outcome = probes().tcp("127.0.0.1", port, GENEROUS).await;
    assert_eq!(
        outcome,
        ProbeOutcome {
            passing: true,
            output: format!("TCP connect to 127.0.0.1:{port} succeeded")
        }
    );
}

#[tokio::test]
async fn tcp_closed_port_fails() {
    let port = closed_port();
    let outcome = probes().tcp("127.0.0.1", port, GENEROUS).await;
    assert_eq!(
        outcome,
        ProbeOutcome {
            passing: false,
            output: format!("TCP connect to 127.0.0.1:{port}: connection refused")
        }
    );
}

/// A tonic-health server: "" (the whole server) and `up` SERVING, `down` NOT_SERVING.
async fn grpc_server() -> u16 {
    let (reporter, service) = tonic_health::server::health_reporter();
    reporter
        .set_service_status("up", ReportedStatus::Serving)
        .await;
    reporter
        .set_service_status("down", ReportedStatus::NotServing)
        .await;
    let (listener, port) = local_listener().await;
    tokio::spawn(async move {
        let _reporter = reporter;
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener))
            .await
    });
    port
}

async fn grpc_check(port: u16, service: &str, timeout: Duration) -> ProbeOutcome {
    probes().grpc("127.0.0.1", port, service, timeout).await
}

#[tokio::test]
async fn grpc_serving_passes() {
    let port = grpc_server().await;
    for service in ["", "up"] {
        let outcome = grpc_check(port, service, GENEROUS).await;
        assert_eq!(
            outcome,
            ProbeOutcome {
                passing: true,
                output: "gRPC status SERVING".to_owned()
            },
            "{service:?}"
        );
    }
}

#[tokio::test]
async fn grpc_not_serving_fails() {
    let port = grpc_server().await;
    let outcome = grpc_check(port, "down", GENEROUS).await;
    assert_eq!(
        outcome,
        ProbeOutcome {
            passing: false,
            output: "gRPC status NOT_SERVING".to_owned()
        }
    );
}

#[tokio::test]
async fn grpc_unknown_service_fails_with_not_found() {
    let port = grpc_server().await;
    let outcome = grpc_check(port, "nobody", GENEROUS).await;
    assert!(!outcome.passing);
    assert!(
        outcome.output.starts_with("gRPC error NOT_FOUND"),
        "{outcome:?}"
    );
}

#[tokio::test]
async fn grpc_closed_port_fails() {
    let outcome = grpc_check(closed_port(), "", GENEROUS).await;
    assert_eq!(
        outcome,
        ProbeOutcome {
            passing: false,
            output: "connection refused".to_owned()
        }
    );
}

#[tokio::test]
async fn grpc_silent_server_times_out() {
    // The kernel accepts the connection; nobody ever reads from it or answers.
    let (_listener, port) = local_listener().await;
    let started = Instant::now();
    let outcome = grpc_check(port, "", SHORT).await;
    assert_eq!(
        outcome,
        ProbeOutcome {
            passing: false,
            output: "timed out after 200ms".to_owned()
        }
    );
    assert!(started.elapsed() < GENEROUS, "{:?}", started.elapsed());
}

#[test]
fn grpc_statuses_and_codes_are_named() {
    assert_eq!(
        serving_outcome(ServingStatus::Unknown as i32).output,
        "gRPC status UNKNOWN"
    );
    assert_eq!(serving_outcome(99).output, "gRPC status 99");
    assert!(!serving_outcome(99).passing);
    let status = tonic::Status::new(tonic::Code::Unimplemented, "no health service");
    assert_eq!(
        describe_status(&status),
        "gRPC error UNIMPLEMENTED: no health service"
    );
}

#[test]
fn truncation_keeps_whole_characters() {
    // 3-byte characters: 256 is not a boundary, 255 is.
    let euros = truncated("€".repeat(100));
    assert_eq!(euros.len(), 255);
    assert!(euros.chars().all(|c| c == '€'));
    // 1 + 85 * 3 = 256: exactly the limit.
    let exact = truncated(format!("a{}", "€".repeat(100)));
    assert_eq!(exact.len(), MAX_CHECK_OUTPUT);
    // A 4-byte character straddling the limit goes entirely.
    let emoji = truncated(format!("{}🦀", "a".repeat(254)));
    assert_eq!(emoji, "a".repeat(254));
    assert_eq!(truncated("short".to_owned()), "short");
    assert_eq!(truncated("x".repeat(300)).len(), MAX_CHECK_OUTPUT);
}

#[test]
fn body_text_is_one_clean_line() {
    assert_eq!(body_text(b"{\n  \"ok\": true\n}\n"), "{ \"ok\": true }");
    assert_eq!(body_text(b"bad \xff utf8"), "bad \u{fffd} utf8");
    assert_eq!(body_text(b""), "");
}

#[test]
fn authority_brackets_ipv6() {
    assert_eq!(authority("::1", 8080), "[::1]:8080");
    assert_eq!(authority("10.0.0.7", 80), "10.0.0.7:80");
    assert_eq!(authority("db.internal", 5432), "db.internal:5432");
}

#[test]
fn durations_read_as_written() {
    assert_eq!(format_duration(Duration::from_secs(2)), "2s");
    assert_eq!(format_duration(Duration::from_millis(200)), "200ms");
    assert_eq!(format_duration(Duration::from_millis(1500)), "1500ms");
}
