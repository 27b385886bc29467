//! One active health-check probe (HTTP, TCP or the gRPC health protocol), bounded by its
//! timeout, reported as passing or failing with a short output for the check's view.
//!
//! The scheduler owns the checks and calls these once per interval each; a probe never
//! panics on what the target answers, and its output is cut to
//! [`MAX_CHECK_OUTPUT`] bytes so that thousands of checks stay cheap to store and show.

use std::error::Error;
use std::sync::Arc;
use std::time::Duration;

use api_spec::checks::MAX_CHECK_OUTPUT;
use api_spec::rules::ExpectStatus;
use reqwest::header::{HeaderName, HeaderValue};
use reqwest::{Method, StatusCode};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use rustls::{ClientConfig, RootCertStore};
use tonic::transport::Endpoint;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

/// What probed targets see in `User-Agent` (gRPC adds tonic's own after it).
const USER_AGENT: &str = concat!("registry-health-check/", env!("CARGO_PKG_VERSION"));
/// Most body bytes an HTTP probe reads: enough for a status page's first words, and a
/// target streaming an endless body costs no more than this.
const MAX_BODY: usize = 4096;
/// Largest gRPC health answer accepted (a real one is a few bytes): a target cannot make
/// the probe buffer more.
const MAX_GRPC_RESPONSE: usize = 4096;
/// How long a pooled keep-alive connection to a target may sit idle: longer than the
/// default check interval, so a target probed every 10s keeps its connection.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Idle pooled connections kept per target: one server may probe 10,000 targets, and one
/// check needs only one connection at a time.
const POOL_MAX_IDLE_PER_HOST: usize = 4;

/// What a probe saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeOutcome {
    pub passing: bool,
    /// Human-readable: e.g. "HTTP 200 OK: <first bytes of body>", "connection refused",
    /// "timed out after 2s", "gRPC status NOT_SERVING". At most [`MAX_CHECK_OUTPUT`]
    /// bytes, cut on a UTF-8 char boundary.
    pub output: String,
}

impl ProbeOutcome {
    fn new(passing: bool, output: String) -> ProbeOutcome {
        ProbeOutcome {
            passing,
            output: truncated(output),
        }
    }

    fn passing(output: String) -> ProbeOutcome {
        ProbeOutcome::new(true, output)
    }

    fn failing(output: String) -> ProbeOutcome {
        ProbeOutcome::new(false, output)
    }

    fn timed_out(timeout: Duration) -> ProbeOutcome {
        ProbeOutcome::failing(format!("timed out after {}", format_duration(timeout)))
    }
}

/// Shared by all probes of one server: holds the HTTP client, whose connection pool
/// keeps connections to HTTP targets between probes. gRPC probes share no state: each
/// opens its own channel (see [`Probes::grpc`]).
#[derive(Debug, Clone)]
pub struct Probes {
    http: reqwest::Client,
}

impl Probes {
    /// `extra_roots`: PEM CA certificates (from the server's `--tls-ca`) trusted for https
    /// checks in addition to the Mozilla roots. Errors only if the PEM is bad.
    pub fn new(extra_roots: Option<&[u8]>) -> Result<Probes, String> {
        let http = reqwest::Client::builder()
            // A 3xx is the target's answer, judged by `expect_status` like any other.
            .redirect(reqwest::redirect::Policy::none())
            // Checks go straight to the instance, whatever HTTP_PROXY says.
            .no_proxy()
            .user_agent(USER_AGENT)
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .pool_max_idle_per_host(POOL_MAX_IDLE_PER_HOST)
            .use_preconfigured_tls(tls_config(extra_roots)?)
            .build()
            .map_err(|e| format!("health-check HTTP client: {}", describe_error(&e)))?;
        Ok(Probes { http })
    }

    /// Sends one `method` request to `url` with `headers` and passes when the status is
    /// `expect`; redirects are not followed. Reads at most 4 KiB of the body for the
    /// output. The whole exchange, body included, is bounded by `timeout`.
    pub async fn http(
        &self,
        url: &str,
        method: &str,
        headers: &[(String, String)],
        expect: ExpectStatus,
        timeout: Duration,
    ) -> ProbeOutcome {
        let request = match http_request(url, method, headers) {
            Ok(request) => request,
            Err(output) => return ProbeOutcome::failing(output),
        };
        match tokio::time::timeout(timeout, exchange(&self.http, request)).await {
            Err(_) => ProbeOutcome::timed_out(timeout),
            Ok(Err(error)) => ProbeOutcome::failing(describe_reqwest(&error)),
            Ok(Ok((status, body))) => {
                ProbeOutcome::new(expect.matches(status.as_u16()), http_output(status, &body))
            }
        }
    }

    /// Opens a TCP connection to `host:port` (an IPv6 host without brackets) and passes
    /// when it is established; the connection is closed at once.
    pub async fn tcp(&self, host: &str, port: u16, timeout: Duration) -> ProbeOutcome {
        let target = authority(host, port);
        match tokio::time::timeout(timeout, tokio::net::TcpStream::connect((host, port))).await {
            Err(_) => ProbeOutcome::timed_out(timeout),
            Ok(Err(error)) => {
                ProbeOutcome::failing(format!("TCP connect to {target}: {}", describe_io(&error)))
            }
            Ok(Ok(_stream)) => ProbeOutcome::passing(format!("TCP connect to {target} succeeded")),
        }
    }

    /// Calls `grpc.health.v1.Health/Check` for `service` ("" is the server as a whole)
    /// over plaintext HTTP/2 and passes when the answer is `SERVING`. Connect and call
    /// are bounded by `timeout`.
    ///
    /// Each probe opens a new channel and drops it after the call: a check runs once an
    /// interval (seconds apart), so one connection per probe costs little, and nothing
    /// per target outlives the check or needs bounding.
    pub async fn grpc(
        &self,
        host: &str,
        port: u16,
        service: &str,
        timeout: Duration,
    ) -> ProbeOutcome {
        match tokio::time::timeout(timeout, health_check(host, port, service)).await {
            Err(_) => ProbeOutcome::timed_out(timeout),
            Ok(Err(output)) => ProbeOutcome::failing(output),
            Ok(Ok(status)) => serving_outcome(status),
        }
    }
}

/// The TLS settings of https checks: ring, TLS 1.2 and 1.3, the Mozilla roots and
/// `extra_roots`, HTTP/1.1 by ALPN (the client speaks only HTTP/1.1).
fn tls_config(extra_roots: Option<&[u8]>) -> Result<ClientConfig, String> {
    let mut roots = RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    if let Some(pem) = extra_roots {
        for certificate in pem_certificates(pem)? {
            roots
                .add(certificate)
                .map_err(|e| format!("health-check CA certificates: {e}"))?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("health-check TLS: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// Every `CERTIFICATE` block of `pem`; at least one.
fn pem_certificates(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let certificates = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("health-check CA certificates: not readable as PEM: {e}"))?;
    if certificates.is_empty() {
        return Err("health-check CA certificates: no PEM certificate in them".to_owned());
    }
    Ok(certificates)
}

/// The request of an HTTP check; `Err` is the failing probe's output.
fn http_request(
    url: &str,
    method: &str,
    headers: &[(String, String)],
) -> Result<reqwest::Request, String> {
    let method = Method::from_bytes(method.as_bytes())
        .map_err(|_| format!("invalid HTTP method {method:?}"))?;
    let url = reqwest::Url::parse(url).map_err(|e| format!("invalid URL: {e}"))?;
    let mut request = reqwest::Request::new(method, url);
    for (name, value) in headers {
        let header = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| format!("invalid header name {name:?}"))?;
        let value = HeaderValue::from_str(value)
            .map_err(|_| format!("invalid value of header {name:?}"))?;
        request.headers_mut().append(header, value);
    }
    Ok(request)
}

/// Sends `request` and reads at most [`MAX_BODY`] bytes of the answer's body, chunk by
/// chunk; the rest is never read (the connection is then closed, not pooled).
async fn exchange(
    client: &reqwest::Client,
    request: reqwest::Request,
) -> Result<(StatusCode, Vec<u8>), reqwest::Error> {
    let mut response = client.execute(request).await?;
    let status = response.status();
    let mut body = Vec::new();
    while body.len() < MAX_BODY {
        let Some(chunk) = response.chunk().await? else {
            break;
        };
        let room = MAX_BODY - body.len();
        body.extend_from_slice(&chunk[..chunk.len().min(room)]);
    }
    Ok((status, body))
}

/// "HTTP 200 OK: <body text>", or the status line alone when the body shows nothing.
fn http_output(status: StatusCode, body: &[u8]) -> String {
    let line = match status.canonical_reason() {
        Some(reason) => format!("HTTP {} {reason}", status.as_u16()),
        None => format!("HTTP {}", status.as_u16()),
    };
    let text = body_text(body);
    if text.is_empty() {
        line
    } else {
        format!("{line}: {text}")
    }
}

/// The body as one line: lossy UTF-8, control characters replaced by spaces, and runs of
/// white space shown as one space (so indented JSON does not spend the output on blanks).
fn body_text(body: &[u8]) -> String {
    let text: String = String::from_utf8_lossy(body)
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Why an HTTP exchange failed: the innermost cause (a connect error says e.g.
/// "connection refused", a TLS one what was wrong with the certificate).
fn describe_reqwest(error: &reqwest::Error) -> String {
    let cause = describe_error(error);
    if error.is_connect() {
        cause
    } else if error.is_body() || error.is_decode() {
        format!("reading the body: {cause}")
    } else {
        format!("request failed: {cause}")
    }
}

/// The most telling message in an error's chain: the first I/O error's, else the
/// innermost error's (outer layers of reqwest and tonic only say "error sending request").
fn describe_error(error: &(dyn Error + 'static)) -> String {
    let mut innermost = error;
    let mut current = Some(error);
    while let Some(error) = current {
        if let Some(io) = error.downcast_ref::<std::io::Error>() {
            return describe_io(io);
        }
        innermost = error;
        current = error.source();
    }
    innermost.to_string()
}

/// An I/O error in words, with the common "connection refused" said plainly.
fn describe_io(error: &std::io::Error) -> String {
    match error.kind() {
        std::io::ErrorKind::ConnectionRefused => "connection refused".to_owned(),
        _ => error.to_string(),
    }
}

/// `host:port`, with an IPv6 host in brackets.
fn authority(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// Connects to `host:port` over h2c and asks for `service`'s status; `Err` is the failing
/// probe's output. The caller's timeout alone bounds it: a connect timeout or a call
/// deadline of the same length here would race it and report the same event in other
/// words ("Timeout expired").
async fn health_check(host: &str, port: u16, service: &str) -> Result<i32, String> {
    let endpoint = Endpoint::from_shared(format!("http://{}", authority(host, port)))
        .map_err(|e| format!("invalid gRPC target: {}", describe_error(&e)))?
        .user_agent(USER_AGENT)
        .map_err(|e| format!("gRPC user agent: {}", describe_error(&e)))?;
    let channel = endpoint.connect().await.map_err(|e| describe_error(&e))?;
    let mut client = HealthClient::new(channel).max_decoding_message_size(MAX_GRPC_RESPONSE);
    let request = tonic::Request::new(HealthCheckRequest {
        service: service.to_owned(),
    });
    let response = client
        .check(request)
        .await
        .map_err(|s| describe_status(&s))?;
    Ok(response.into_inner().status)
}

/// Passing only for `SERVING`; any other answer names the status.
fn serving_outcome(status: i32) -> ProbeOutcome {
    match ServingStatus::try_from(status) {
        Ok(ServingStatus::Serving) => ProbeOutcome::passing("gRPC status SERVING".to_owned()),
        Ok(other) => ProbeOutcome::failing(format!("gRPC status {}", other.as_str_name())),
        Err(_) => ProbeOutcome::failing(format!("gRPC status {status}")),
    }
}

/// A failed call: "gRPC error NOT_FOUND: <message>", with the transport's cause when the
/// call did not reach the server.
fn describe_status(status: &tonic::Status) -> String {
    let mut text = format!("gRPC error {}", code_name(status.code()));
    if !status.message().is_empty() {
        text.push_str(": ");
        text.push_str(status.message());
    }
    if let Some(source) = status.source() {
        text.push_str(": ");
        text.push_str(&describe_error(source));
    }
    text
}

/// A gRPC status code's canonical name, as in the gRPC documentation.
fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code;
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// A timeout as a check's definition would say it: whole seconds as "2s", else
/// milliseconds ("250ms").
fn format_duration(duration: Duration) -> String {
    if duration.subsec_nanos() == 0 && duration.as_secs() > 0 {
        format!("{}s", duration.as_secs())
    } else {
        format!("{}ms", duration.as_millis())
    }
}

/// `text` cut to at most [`MAX_CHECK_OUTPUT`] bytes, on a character boundary.
pub fn truncated(mut text: String) -> String {
    if text.len() > MAX_CHECK_OUTPUT {
        let mut end = MAX_CHECK_OUTPUT;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text
}

#[cfg(test)]
#[path = "probe_test.rs"]
mod tests;
