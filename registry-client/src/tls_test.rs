//! Tests of TLS: endpoints and their one scheme, trusting a private CA (and nothing else
//! then), mutual TLS, TLS session resumption, the background tasks over TLS, and the
//! errors of bad PEM, against HTTPS servers on 127.0.0.1 with certificates made at test
//! time ([`crate::tls_test_support`]).

use std::time::Duration;

use crate::auth_test::{DEREGISTERED, GRANT, HEARTBEAT, INSTANCE, INSTANCES, LEASE, RELEASED};
use crate::tls_test_support::{Ca, Issued, TlsServer};
use crate::*;

const SERVICES: &str = r#"{"services":[]}"#;

/// A server for 127.0.0.1 signed by `ca`, asking no client certificate.
async fn server(ca: &Ca) -> TlsServer {
    TlsServer::start(&ca.server(&["127.0.0.1"]), None, SERVICES).await
}

fn with_ca(endpoints: &[&str], ca: &Ca) -> Client {
    Client::builder(endpoints.iter().copied())
        .timeout(Duration::from_secs(5))
        .tls_ca_pem(&ca.cert_pem)
        .build()
        .unwrap()
}

fn with_identity(endpoints: &[&str], ca: &Ca, me: &Issued) -> Client {
    Client::builder(endpoints.iter().copied())
        .timeout(Duration::from_secs(5))
        .tls_ca_pem(&ca.cert_pem)
        .tls_identity_pem(&me.cert_pem, &me.key_pem)
        .build()
        .unwrap()
}

#[tokio::test]
async fn with_the_ca_the_client_talks_https_and_gets_the_answer() {
    let ca = Ca::new("registry test CA");
    let server = server(&ca).await;
    let client = with_ca(&[&format!("https://{}", server.addr)], &ca);
    assert!(client.uses_tls());
    assert_eq!(client.servers(), [server.addr.as_str()]);

    let answer = client.services(ReadOptions::default()).await.unwrap();
    assert!(answer.value.services.is_empty());
    assert_eq!(answer.index, Some(7));

    let seen = server.try_handshake().await.expect("a TLS connection");
    assert_eq!(seen.error, None);
    assert_eq!(seen.request.as_deref(), Some("GET /v1/services"));
    // HTTP/1.1 is all the client offers: a server's ALPN list must hold it.
    assert_eq!(seen.alpn.as_deref(), Some(&b"http/1.1"[..]));
    assert_eq!(seen.client_cert, None);
}

#[tokio::test]
async fn a_bare_host_port_with_a_ca_is_https() {
    let ca = Ca::new("registry test CA");
    let server = server(&ca).await;
    let client = with_ca(&[&server.addr], &ca);
    assert!(client.uses_tls());
    client.services(ReadOptions::default()).await.unwrap();
    let seen = server.try_handshake().await.expect("a TLS connection");
    assert_eq!(seen.request.as_deref(), Some("GET /v1/services"));

    // The same bare endpoint without a TLS option is plain HTTP, which a TLS server
    // cannot answer: proof that it was TLS above.
    let plain = Client::builder([server.addr.as_str()])
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    assert!(!plain.uses_tls());
    let err = plain
        .services(ReadOptions::default())
        .await
        .expect_err("plain HTTP to a TLS server");
    assert!(!err.is_tls(), "{err}");
}

#[tokio::test]
async fn without_the_ca_the_built_in_roots_do_not_trust_the_server() {
    let ca = Ca::new("registry test CA");
    let server = server(&ca).await;
    let client = Client::builder([format!("https://{}", server.addr)])
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    assert!(client.uses_tls());
    let err = client
        .services(ReadOptions::default())
        .await
        .expect_err("an unknown CA");
    assert!(matches!(err, Error::Transport { .. }), "{err:?}");
    assert!(err.is_tls(), "{err}");
    assert!(err.is_retryable());
    let text = err.to_string();
    assert!(
        text.contains("invalid peer certificate") && text.contains("UnknownIssuer"),
        "{text}"
    );
    // The server saw the client give up in the handshake: no request got through.
    let seen = server.next_handshake().await;
    assert!(seen.error.is_some() && seen.request.is_none(), "{seen:?}");
}

#[tokio::test]
async fn another_ca_is_not_trusted_either() {
    let ca = Ca::new("registry test CA");
    let server = server(&ca).await;
    let other = Ca::new("someone else's CA");
    let err = with_ca(&[&server.addr], &other)
        .services(ReadOptions::default())
        .await
        .expect_err("a CA the client was not given");
    assert!(err.is_tls(), "{err}");
    assert!(err.to_string().contains("UnknownIssuer"), "{err}");
}

#[tokio::test]
async fn the_certificate_must_be_for_the_endpoint_host() {
    let ca = Ca::new("registry test CA");
    let server = TlsServer::start(&ca.server(&["registry.example"]), None, SERVICES).await;
    let err = with_ca(&[&server.addr], &ca)
        .services(ReadOptions::default())
        .await
        .expect_err("a certificate for another name");
    assert!(err.is_tls(), "{err}");
    assert!(err.to_string().contains("not valid for name"), "{err}");
}

#[tokio::test]
async fn mutual_tls_presents_the_client_certificate_the_server_requires() {
    let ca = Ca::new("registry test CA");
    let server = TlsServer::start(
        &ca.server(&["127.0.0.1"]),
        Some(ca.cert_pem.as_str()),
        SERVICES,
    )
    .await;

    // No client certificate: the server refuses the handshake.
    let err = with_ca(&[&server.addr], &ca)
        .services(ReadOptions::default())
        .await
        .expect_err("no client certificate");
    assert!(err.is_tls(), "{err}");
    assert!(err.to_string().contains("CertificateRequired"), "{err}");
    let refused = server.next_handshake().await;
    assert!(
        refused
            .error
            .as_deref()
            .is_some_and(|e| e.contains("no certificates")),
        "{refused:?}"
    );

    // With one: the server got it.
    let me = ca.client("worker-1");
    let client = with_identity(&[&server.addr], &ca, &me);
    let answer = client.services(ReadOptions::default()).await.unwrap();
    assert!(answer.value.services.is_empty());
    let seen = server.next_handshake().await;
    assert_eq!(seen.error, None);
    assert_eq!(seen.client_cert.as_deref(), Some(me.der.as_slice()));
    assert_eq!(seen.request.as_deref(), Some("GET /v1/services"));
}

#[tokio::test]
async fn a_client_certificate_of_another_ca_is_refused() {
    let ca = Ca::new("registry test CA");
    let server = TlsServer::start(
        &ca.server(&["127.0.0.1"]),
        Some(ca.cert_pem.as_str()),
        SERVICES,
    )
    .await;
    let stranger = Ca::new("someone else's CA").client("intruder");
    let err = with_identity(&[&server.addr], &ca, &stranger)
        .services(ReadOptions::default())
        .await
        .expect_err("a client certificate the server does not trust");
    assert!(err.is_tls(), "{err}");
    let seen = server.next_handshake().await;
    assert!(seen.error.is_some() && seen.request.is_none(), "{seen:?}");
}

#[tokio::test]
async fn one_client_and_its_clones_resume_tls_sessions() {
    let ca = Ca::new("registry test CA");
    let server = server(&ca).await;
    let client = with_ca(&[&server.addr], &ca);
    // The server closes every connection, so each call is a new TLS connection.
    client.services(ReadOptions::default()).await.unwrap();
    client.services(ReadOptions::default()).await.unwrap();
    client
        .clone()
        .services(ReadOptions::default())
        .await
        .unwrap();
    let resumed: Vec<bool> = [
        server.next_handshake().await,
        server.next_handshake().await,
        server.next_handshake().await,
    ]
    .iter()
    .map(|h| h.resumed)
    .collect();
    assert_eq!(resumed, [false, true, true]);

    // A second client has a session cache of its own: a full handshake.
    with_ca(&[&server.addr], &ca)
        .services(ReadOptions::default())
        .await
        .unwrap();
    assert!(!server.next_handshake().await.resumed);
}

#[tokio::test]
async fn background_tasks_use_tls_too() {
    let ca = Ca::new("registry test CA");
    let server = TlsServer::scripted(&ca.server(&["127.0.0.1"]), None, |line| {
        if line.ends_with("/acquire") {
            GRANT
        } else if line.ends_with("/release") {
            RELEASED
        } else if line.ends_with("/keepalive") {
            LEASE
        } else if line.ends_with("/heartbeat") {
            HEARTBEAT
        } else if line.starts_with("DELETE /v1/services/") {
            DEREGISTERED
        } else if line.starts_with("PUT /v1/services/") {
            INSTANCE
        } else {
            INSTANCES
        }
    })
    .await;
    let client = with_ca(&[&server.addr], &ca);

    // Discovery: the first fetch, then the watch's blocking queries.
    let endpoints = client
        .endpoints("web", &ServiceQuery::default())
        .await
        .unwrap();
    assert_eq!(endpoints.instances.len(), 1);
    let watch = server.request_where(|line| line.contains("index=")).await;
    assert_eq!(watch.error, None);

    // A lock guard's lease renewals.
    let options = LockOptions {
        ttl: Duration::from_secs(1),
        ..LockOptions::default()
    };
    let guard = client.lock("job", options).await.unwrap();
    let renewal = server.request_where(|l| l.ends_with("/keepalive")).await;
    assert_eq!(renewal.error, None);
    guard.release().await.unwrap();

    // A registration's heartbeats.
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
    let heartbeat = server.request_where(|l| l.ends_with("/heartbeat")).await;
    assert_eq!(heartbeat.error, None);
    registration.shutdown().await.unwrap();
}

/// The `Error::InvalidTls` of building with a CA bundle of `pem`.
fn ca_error(pem: &str) -> (TlsInput, String) {
    let err = Client::builder(["127.0.0.1:1"])
        .tls_ca_pem(pem)
        .build()
        .expect_err("a bad CA bundle");
    match err {
        Error::InvalidTls { input, reason } => (input, reason),
        other => panic!("expected InvalidTls, got {other:?}"),
    }
}

/// The `Error::InvalidTls` of building with a client identity of `cert` and `key`.
fn identity_error(cert: &[u8], key: &[u8]) -> (TlsInput, String) {
    let err = Client::builder(["127.0.0.1:1"])
        .tls_identity_pem(cert, key)
        .build()
        .expect_err("a bad identity");
    match err {
        Error::InvalidTls { input, reason } => (input, reason),
        other => panic!("expected InvalidTls, got {other:?}"),
    }
}

#[test]
fn a_bad_ca_bundle_fails_at_build() {
    let ca = Ca::new("registry test CA");
    let me = ca.client("worker-1");

    let (input, reason) = ca_error("not a certificate");
    assert_eq!(input, TlsInput::CaCertificates);
    assert!(reason.starts_with("no certificate found"), "{reason}");

    // A key is no CA certificate.
    let (_, reason) = ca_error(&me.key_pem);
    assert!(reason.starts_with("no certificate found"), "{reason}");

    let (_, reason) = ca_error("-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n");
    assert!(reason.starts_with("not readable as PEM"), "{reason}");

    let (_, reason) = ca_error("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n");
    assert!(
        reason.starts_with("certificate 1 of 1 is not a usable X.509 certificate"),
        "{reason}"
    );

    let (_, reason) = ca_error(&String::from_utf8_lossy(&me.der));
    assert!(reason.contains("binary DER"), "{reason}");

    let err = Client::builder(["127.0.0.1:1"])
        .tls_ca_pem("")
        .build()
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "invalid TLS CA certificates: no certificate found: expected PEM with \
         `-----BEGIN CERTIFICATE-----` blocks"
    );

    // Several certificates in one bundle are all trusted.
    let bundle = format!("{}{}", Ca::new("other").cert_pem, ca.cert_pem);
    Client::builder(["127.0.0.1:1"])
        .tls_ca_pem(bundle)
        .build()
        .unwrap();
}

#[test]
fn a_bad_client_identity_fails_at_build_without_showing_the_key() {
    let ca = Ca::new("registry test CA");
    let me = ca.client("worker-1");
    let someone = ca.client("worker-2");
    let (cert, key) = (me.cert_pem.as_bytes(), me.key_pem.as_bytes());

    let (input, reason) = identity_error(key, key);
    assert_eq!(input, TlsInput::ClientCertificate);
    assert!(reason.starts_with("no certificate found"), "{reason}");

    let (input, reason) = identity_error(cert, cert);
    assert_eq!(input, TlsInput::ClientKey);
    assert!(reason.starts_with("no private key found"), "{reason}");

    let (input, reason) = identity_error(cert, b"unreadable");
    assert_eq!(input, TlsInput::ClientKey);
    assert!(reason.starts_with("no private key found"), "{reason}");

    let encrypted =
        b"-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----\n";
    let (input, reason) = identity_error(cert, encrypted);
    assert_eq!(input, TlsInput::ClientKey);
    assert!(reason.contains("encrypted"), "{reason}");

    let two = format!("{}{}", me.key_pem, someone.key_pem);
    let (_, reason) = identity_error(cert, two.as_bytes());
    assert!(reason.starts_with("2 private keys found"), "{reason}");

    let (input, reason) = identity_error(cert, someone.key_pem.as_bytes());
    assert_eq!(input, TlsInput::ClientKey);
    assert!(reason.contains("does not belong"), "{reason}");

    // A key block that does not decode: the message holds none of it.
    let secret_line = "c2VjcmV0LWtleS1tYXRlcmlhbA!";
    let broken = format!("-----BEGIN PRIVATE KEY-----\n{secret_line}\n-----END PRIVATE KEY-----\n");
    let err = Client::builder(["127.0.0.1:1"])
        .tls_identity_pem(cert, broken)
        .build()
        .unwrap_err();
    let text = format!("{err} {err:?}");
    assert!(!text.contains(secret_line), "{text}");
    assert!(text.contains("not readable as PEM"), "{text}");

    // The builder's debug output says whether there is an identity, not what it is.
    let builder = Client::builder(["127.0.0.1:1"]).tls_identity_pem(cert, key);
    let text = format!("{builder:?}");
    assert!(text.contains("tls_identity: true"), "{text}");
    assert!(!text.contains("PRIVATE KEY"), "{text}");
}

#[tokio::test]
async fn one_file_holding_certificate_and_key_may_be_given_as_both() {
    let ca = Ca::new("registry test CA");
    let server = TlsServer::start(
        &ca.server(&["127.0.0.1"]),
        Some(ca.cert_pem.as_str()),
        SERVICES,
    )
    .await;
    let me = ca.client("worker-1");
    let both = format!("{}{}", me.key_pem, me.cert_pem);
    let client = Client::builder([server.addr.as_str()])
        .tls_ca_pem(&ca.cert_pem)
        .tls_identity_pem(&both, &both)
        .build()
        .unwrap();
    client.services(ReadOptions::default()).await.unwrap();
    let seen = server.next_handshake().await;
    assert_eq!(seen.client_cert.as_deref(), Some(me.der.as_slice()));
}

#[test]
fn endpoints_share_one_scheme() {
    let ca = Ca::new("registry test CA");
    let invalid = |result: Result<Client>| match result {
        Err(Error::InvalidEndpoint { endpoint, reason }) => (endpoint, reason),
        other => panic!("expected InvalidEndpoint, got {other:?}"),
    };

    let (endpoint, reason) = invalid(Client::new(["https://a:1", "http://b:2"]));
    assert_eq!(endpoint, "http://b:2");
    assert!(reason.starts_with("mixes http:// and https://"), "{reason}");

    // Bare means http without a TLS option, so this mixes too.
    let (endpoint, reason) = invalid(Client::new(["https://a:1", "b:2"]));
    assert_eq!(endpoint, "b:2");
    assert!(reason.contains("bare host:port"), "{reason}");
    let (endpoint, _) = invalid(Client::new(["b:2", "https://a:1"]));
    assert_eq!(endpoint, "https://a:1");

    // With a TLS option bare means https, and http:// would go without TLS.
    let client = Client::builder(["https://a:1", "b:2"])
        .tls_ca_pem(&ca.cert_pem)
        .build()
        .unwrap();
    assert!(client.uses_tls());
    assert_eq!(client.servers(), ["a:1", "b:2"]);
    let (endpoint, reason) = invalid(
        Client::builder(["a:1", "http://b:2"])
            .tls_ca_pem(&ca.cert_pem)
            .build(),
    );
    assert_eq!(endpoint, "http://b:2");
    assert!(reason.contains("TLS option"), "{reason}");

    let plain = Client::new(["a:1", "http://b:2"]).unwrap();
    assert!(!plain.uses_tls());
    let tls = Client::new(["HTTPS://a:1/", "https://b:2"]).unwrap();
    assert!(tls.uses_tls());
    assert_eq!(tls.servers(), ["a:1", "b:2"]);
    let (_, reason) = invalid(Client::new(["ftp://a:1"]));
    assert_eq!(reason, "only http:// and https:// are supported");
}
