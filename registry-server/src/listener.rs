//! Accepting connections with bounds: at most `max_connections` at once (one more is
//! answered `503` and closed), a header read timeout (a request's head must arrive within
//! it once its first byte has), an idle timeout (a connection with no request in flight
//! and no bytes for that long is closed), and a graceful drain on shutdown. Over TLS the
//! handshake is bounded by the header timeout too, and happens on the connection's own
//! task, never in the accept loop.
//!
//! hyper's own `header_read_timeout` also runs while a kept-alive connection waits for its
//! next request, so it cannot be an idle timeout and a header timeout at once; the two are
//! kept here instead, per connection, from what the connection reads and what its
//! requests do. A blocking query in flight keeps its connection however long it waits.
//!
//! Each connection speaks HTTP/1.1 or HTTP/2: cleartext HTTP/2 with prior knowledge
//! (the client's first bytes are the HTTP/2 preface) or, over TLS, when ALPN chose `h2`.
//! HTTP/2 carries up to [`MAX_STREAMS`] requests at once on one connection, so many
//! blocking queries cost one socket, not one each. Its frames are not request heads: on
//! an HTTP/2 connection the header timeout runs only until its first request, then only
//! the idle timeout does.
//!
//! **Invariant:** every accepted connection holds a permit until it closes; nothing
//! accepted waits unbounded for bytes that do not come.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use api_spec::codes;
use axum::extract::ConnectInfo;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::IntoResponse;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

use crate::http::error::ApiError;
use crate::throttle::Throttle;
use crate::tls::PeerCertificate;

/// The answer to a connection over the cap, written before closing it.
const OVER_CAPACITY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\n\
Content-Type: application/json\r\nRetry-After: 1\r\nConnection: close\r\nContent-Length: 94\r\n\r\n\
{\"error\":{\"code\":\"overloaded\",\"message\":\"too many connections to this server; retry shortly\"}}";

/// The answer to plain HTTP sent to a TLS listener (the first byte is not a TLS record's),
/// before closing it: without it the client would see a TLS alert as its answer.
const PLAINTEXT_ON_TLS: &[u8] = b"HTTP/1.1 400 Bad Request\r\n\
Content-Type: application/json\r\nConnection: close\r\nContent-Length: 100\r\n\r\n\
{\"error\":{\"code\":\"invalid_argument\",\"message\":\"this server speaks HTTPS: use https:// to reach it\"}}";

/// How long writing [`OVER_CAPACITY`] may take.
const REFUSAL_WRITE: Duration = Duration::from_secs(1);

/// Requests one HTTP/2 connection may have in flight at once (its
/// `SETTINGS_MAX_CONCURRENT_STREAMS`); more wait on the client's side. Every one still
/// counts against the server's own bounds (waiters, blocking queries).
pub const MAX_STREAMS: u32 = 1000;

/// Request body bytes an HTTP/2 client may send ahead on one stream, and on the whole
/// connection, before the server reads them (hyper's defaults are 1 MiB each). Bodies
/// here are small JSON; what is sent ahead waits in memory.
const HTTP2_STREAM_WINDOW: u32 = 64 * 1024;
const HTTP2_CONNECTION_WINDOW: u32 = 256 * 1024;

/// Answer bytes buffered per HTTP/2 stream for a client that does not read them
/// (hyper's default is 400 KiB): with [`MAX_STREAMS`] streams, a connection that stops
/// reading holds at most about 16 MiB of answers, where HTTP/1.1 holds one answer's.
const HTTP2_SEND_BUFFER: usize = 16 * 1024;

/// What an HTTP/2 client's connection starts with.
const HTTP2_PREFACE: &[u8] = b"PRI * HTTP/2.0";

/// Connections kept for peers on a listener that serves clients too: once clients hold
/// `max_connections`, up to this many more are accepted for node-to-node calls only.
pub const PEER_RESERVE: usize = 64;

/// Header and idle timeout of a connection of the peer reserve: peers keep theirs busy,
/// so one that sits is someone else's, and goes soon.
const RESERVE_IDLE: Duration = Duration::from_secs(2);

/// The bounds of one listener.
#[derive(Debug, Clone, Copy)]
pub struct ListenerConfig {
    pub max_connections: usize,
    /// Connections beyond `max_connections` that only node-to-node calls
    /// (`/internal/...`) may use ([`PEER_RESERVE`] on a shared listener, 0 on a listener
    /// of clients or peers alone).
    pub peer_reserve: usize,
    /// A request's head must be complete this long after its first byte.
    pub header_timeout: Duration,
    /// A connection without a request in flight is closed after this long without bytes.
    pub idle_timeout: Duration,
    /// How long in-flight requests may run after shutdown begins.
    pub drain_timeout: Duration,
    /// The longest a request that does not wait on purpose may take (blocking queries,
    /// `?index=`, and acquires and campaigns, which may wait in line, have their own
    /// bounds); past it the client gets 503 `unavailable` with `Retry-After`.
    pub request_timeout: Duration,
}

/// Connections open now on a listener (for `GET /v1/cluster`).
#[derive(Debug, Clone, Default)]
pub struct ConnectionCount(Arc<AtomicUsize>);

impl ConnectionCount {
    pub fn get(&self) -> usize {
        self.0.load(Ordering::Relaxed)
    }
}

/// Serves `router` on `listener` within `config` until `shutdown` resolves, then drains.
/// With `tls`, every connection is TLS: its handshake must complete within the header
/// timeout, and a client certificate it verified reaches the requests as a
/// [`PeerCertificate`].
pub async fn serve(
    listener: TcpListener,
    router: Router,
    config: ListenerConfig,
    open: ConnectionCount,
    tls: Option<TlsAcceptor>,
    shutdown: impl Future<Output = ()>,
) {
    let permits = Arc::new(Semaphore::new(config.max_connections));
    let reserve = Arc::new(Semaphore::new(config.peer_reserve));
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors, or the peer gave up before we took it: pause
                    // a moment rather than spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let _ = tcp.set_nodelay(true);
        let (permit, peers_only) = match permits.clone().try_acquire_owned() {
            Ok(permit) => (permit, false),
            Err(_) => match reserve.clone().try_acquire_owned() {
                Ok(permit) => (permit, true),
                Err(_) => {
                    refuse(tcp, tls.clone());
                    continue;
                }
            },
        };
        let config = if peers_only {
            ListenerConfig {
                header_timeout: config.header_timeout.min(RESERVE_IDLE),
                idle_timeout: config.idle_timeout.min(RESERVE_IDLE),
                ..config
            }
        } else {
            config
        };
        let connection = Connection {
            peer,
            peers_only,
            config,
            router: router.clone(),
            state: Arc::new(ConnState::new()),
        };
        let tls = tls.clone();
        let watcher = graceful.watcher();
        let open = open.clone();
        open.0.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(async move {
            let io = Tracked {
                inner: tcp,
                state: connection.state.clone(),
                read_any: false,
            };
            match tls {
                None => connection.serve(io, None, watcher).await,
                // Boxed: a TLS connection's future (the handshake, the session state) is
                // several times a plain one's, and inline every plain connection, parked
                // blocking queries included, would be sized for it.
                Some(acceptor) => Box::pin(async move {
                    let deadline = Instant::now() + config.header_timeout;
                    if speaks_plain_http(&io.inner, deadline).await {
                        tracing::debug!(%peer, "plain HTTP on a TLS listener: answering 400");
                        let _ = tokio::time::timeout(REFUSAL_WRITE, async {
                            let mut io = io;
                            io.write_all(PLAINTEXT_ON_TLS).await?;
                            io.shutdown().await
                        })
                        .await;
                    } else {
                        let handshake = tokio::time::timeout_at(deadline, acceptor.accept(io));
                        match handshake.await {
                            Ok(Ok(stream)) => {
                                let certificate = stream
                                    .get_ref()
                                    .1
                                    .peer_certificates()
                                    .and_then(|chain| chain.first())
                                    .map(|leaf| {
                                        PeerCertificate(Arc::new(leaf.clone().into_owned()))
                                    });
                                if stream.get_ref().1.alpn_protocol() == Some(b"h2") {
                                    connection.state.multiplexed.store(true, Ordering::Relaxed);
                                }
                                connection.state.handshake_done();
                                connection.serve(stream, certificate, watcher).await;
                            }
                            Ok(Err(e)) => {
                                tracing::debug!(%peer, error = %e, "TLS handshake failed")
                            }
                            Err(_) => {
                                tracing::debug!(%peer, "TLS handshake not done within the header timeout")
                            }
                        }
                    }
                })
                .await,
            }
            open.0.fetch_sub(1, Ordering::Relaxed);
            drop(permit);
        });
    }
    drop(listener);
    tracing::info!("shutting down: finishing in-flight requests");
    if tokio::time::timeout(config.drain_timeout, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            "requests still running after {:?}; stopping anyway",
            config.drain_timeout
        );
    }
}

/// Whether the first byte a client sent (waiting for it until `deadline`) is an ASCII
/// letter, as in `GET`, rather than a TLS record's content type (22, a handshake).
async fn speaks_plain_http(tcp: &TcpStream, deadline: Instant) -> bool {
    let mut first = [0u8; 1];
    matches!(
        tokio::time::timeout_at(deadline, tcp.peek(&mut first)).await,
        Ok(Ok(1)) if first[0].is_ascii_alphabetic()
    )
}

/// One accepted connection, before and while it is served.
struct Connection {
    peer: SocketAddr,
    /// Taken on the peer reserve: only node-to-node calls are served on it.
    peers_only: bool,
    config: ListenerConfig,
    router: Router,
    state: Arc<ConnState>,
}

impl Connection {
    /// Serves HTTP/1.1 or HTTP/2 on `io` until the connection ends, its watchdog closes
    /// it, or the drain after shutdown ends.
    async fn serve<I>(self, io: I, certificate: Option<PeerCertificate>, watcher: Watcher)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let Connection {
            peer,
            peers_only,
            config,
            router,
            state,
        } = self;
        let service = {
            let state = state.clone();
            hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
                request.extensions_mut().insert(ConnectInfo(peer));
                if let Some(certificate) = &certificate {
                    request.extensions_mut().insert(certificate.clone());
                }
                let in_flight = InFlight::start(state.clone());
                let router = router.clone();
                let refused = peers_only && !request.uri().path().starts_with("/internal/");
                let bound = (!waits_on_purpose(request.uri())).then_some(config.request_timeout);
                async move {
                    if refused {
                        return Ok(reserved_for_peers());
                    }
                    let served = router.oneshot(request.map(axum::body::Body::new));
                    let response = match bound {
                        None => served.await,
                        Some(limit) => match tokio::time::timeout(limit, served).await {
                            Ok(response) => response,
                            Err(_) => Ok(timed_out(limit)),
                        },
                    };
                    drop(in_flight);
                    response
                }
            })
        };
        let mut http = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
        http.http1()
            .timer(TokioTimer::new())
            .header_read_timeout(None)
            .keep_alive(true);
        http.http2()
            .timer(TokioTimer::new())
            .max_concurrent_streams(MAX_STREAMS)
            .initial_stream_window_size(HTTP2_STREAM_WINDOW)
            .initial_connection_window_size(HTTP2_CONNECTION_WINDOW)
            .max_send_buf_size(HTTP2_SEND_BUFFER);
        let connection = watcher.watch(http.serve_connection(TokioIo::new(io), service));
        tokio::select! {
            result = connection => {
                if let Err(e) = result {
                    tracing::debug!(%peer, error = %e, "connection ended with an error");
                }
            }
            reason = watchdog(&state, config) => {
                tracing::debug!(%peer, reason, "closing connection");
            }
        }
    }
}

/// Whether a request may wait on purpose: a blocking query (`index=` in its query), an
/// acquire or campaign (which may wait in line), or a node-to-node call (bounded by the
/// caller's own timeouts: a forwarded membership change waits for a catch-up).
fn waits_on_purpose(uri: &axum::http::Uri) -> bool {
    let path = uri.path();
    path.starts_with("/internal/")
        || path.ends_with("/acquire")
        || path.ends_with("/campaign")
        || uri
            .query()
            .is_some_and(|q| q.split('&').any(|pair| pair.starts_with("index=")))
}

/// The answer to a request that ran past the request timeout.
fn timed_out(limit: Duration) -> axum::response::Response {
    let message = format!(
        "the request took longer than {} (--request-timeout); a write may still take effect",
        api_spec::format_duration(limit)
    );
    ApiError::new(StatusCode::SERVICE_UNAVAILABLE, codes::UNAVAILABLE, message).into_response()
}

/// The 503 a client's request gets on a connection of the peer reserve (and the
/// connection is closed after it).
fn reserved_for_peers() -> axum::response::Response {
    let message = "too many connections to this server; retry shortly";
    let mut response =
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, codes::OVERLOADED, message).into_response();
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

/// Answers a connection over the cap with a 503 and closes it, without waiting for it
/// (over TLS, after a handshake bounded by the same time).
fn refuse(tcp: TcpStream, tls: Option<TlsAcceptor>) {
    static WARNED: Throttle = Throttle::new();
    if WARNED.ready() {
        tracing::warn!("connection limit reached: refusing new connections with 503");
    }
    tokio::spawn(async move {
        let _ = tokio::time::timeout(REFUSAL_WRITE, async {
            match tls {
                None => write_refusal(tcp).await,
                Some(acceptor) => write_refusal(acceptor.accept(tcp).await?).await,
            }
        })
        .await;
    });
}

async fn write_refusal(mut stream: impl AsyncWrite + Unpin) -> io::Result<()> {
    stream.write_all(OVER_CAPACITY).await?;
    stream.shutdown().await
}

/// What one connection's watchdog needs to know, updated by its reads and its requests.
/// Times are milliseconds since the connection was accepted.
struct ConnState {
    start: Instant,
    /// Requests being served.
    in_flight: AtomicUsize,
    /// The last time bytes were read or a request finished.
    last_active_ms: AtomicU64,
    /// When the first byte of a request head arrived (with no request in flight), plus
    /// one; 0: no head being read.
    head_started_ms: AtomicU64,
    /// The connection speaks HTTP/2 (its preface, or ALPN `h2`).
    multiplexed: AtomicBool,
    /// A request has reached the service (on HTTP/2, later bytes are frames, not heads).
    served: AtomicBool,
}

impl ConnState {
    fn new() -> Self {
        ConnState {
            start: Instant::now(),
            in_flight: AtomicUsize::new(0),
            last_active_ms: AtomicU64::new(0),
            head_started_ms: AtomicU64::new(0),
            multiplexed: AtomicBool::new(false),
            served: AtomicBool::new(false),
        }
    }

    /// Whether bytes read with no request in flight begin a request head: always on
    /// HTTP/1.1; on HTTP/2 only before its first request (the preface and settings).
    fn reads_heads(&self) -> bool {
        !(self.multiplexed.load(Ordering::Relaxed) && self.served.load(Ordering::Relaxed))
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// The TLS handshake is over: its bytes were not a request head, and the connection
    /// is idle from now until one begins.
    fn handshake_done(&self) {
        self.head_started_ms.store(0, Ordering::Relaxed);
        self.last_active_ms.store(self.now_ms(), Ordering::Relaxed);
    }

    fn at(&self, ms: u64) -> Instant {
        self.start + Duration::from_millis(ms)
    }
}

/// Marks a request in flight for as long as it lives.
struct InFlight(Arc<ConnState>);

impl InFlight {
    fn start(state: Arc<ConnState>) -> Self {
        state.in_flight.fetch_add(1, Ordering::Relaxed);
        // The head is complete: hyper called the service.
        state.head_started_ms.store(0, Ordering::Relaxed);
        state.served.store(true, Ordering::Relaxed);
        InFlight(state)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let now = self.0.now_ms();
        self.0.last_active_ms.store(now, Ordering::Relaxed);
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Resolves when the connection should be closed: its request head took longer than the
/// header timeout, or it sat idle (no request in flight, no bytes) past the idle timeout.
async fn watchdog(state: &ConnState, config: ListenerConfig) -> &'static str {
    loop {
        let head = state.head_started_ms.load(Ordering::Relaxed);
        let idle_since = state.last_active_ms.load(Ordering::Relaxed);
        let busy = state.in_flight.load(Ordering::Relaxed) > 0;
        let now = state.now_ms();
        let header_ms = u64::try_from(config.header_timeout.as_millis()).unwrap_or(u64::MAX);
        let idle_ms = u64::try_from(config.idle_timeout.as_millis()).unwrap_or(u64::MAX);
        let next = if busy {
            // Nothing to time while a request runs; look again later.
            now.saturating_add(idle_ms)
        } else if head > 0 {
            let deadline = (head - 1).saturating_add(header_ms);
            if now >= deadline {
                return "request head not received within the header timeout";
            }
            deadline
        } else {
            let deadline = idle_since.saturating_add(idle_ms);
            if now >= deadline {
                return "idle past the idle timeout";
            }
            deadline
        };
        tokio::time::sleep_until(state.at(next)).await;
    }
}

/// A TCP stream that tells its [`ConnState`] when bytes arrive (and whether its first
/// ones are the HTTP/2 preface).
struct Tracked {
    inner: TcpStream,
    state: Arc<ConnState>,
    read_any: bool,
}

impl AsyncRead for Tracked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            if !self.read_any {
                self.read_any = true;
                if buf.filled()[before..].starts_with(HTTP2_PREFACE) {
                    self.state.multiplexed.store(true, Ordering::Relaxed);
                }
            }
            let state = &self.state;
            let now = state.now_ms();
            state.last_active_ms.store(now, Ordering::Relaxed);
            if state.in_flight.load(Ordering::Relaxed) == 0 && state.reads_heads() {
                // The first bytes of a new request head (later ones keep the first time).
                let _ = state.head_started_ms.compare_exchange(
                    0,
                    now + 1,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                );
            }
        }
        polled
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Raises this process's open-file limit to its hard limit (each connection and each
/// RocksDB file is one), and says what it is.
pub fn raise_open_file_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => tracing::info!(from = soft, to = hard, "raised the open-file limit"),
            Err(e) => tracing::warn!(soft, hard, error = %e, "cannot raise the open-file limit"),
        },
        Ok((soft, _)) => tracing::debug!(limit = soft, "open-file limit already at its hard limit"),
        Err(e) => tracing::warn!(error = %e, "cannot read the open-file limit"),
    }
}

#[cfg(test)]
mod tests {
    use super::{waits_on_purpose, OVER_CAPACITY, PLAINTEXT_ON_TLS};

    #[test]
    fn only_blocking_queries_waiting_requests_and_peer_calls_wait_on_purpose() {
        let waits = |uri: &str| waits_on_purpose(&uri.parse().unwrap_or_default());
        assert!(waits("/v1/services/web?index=7&wait=1m"));
        assert!(waits("/v1/locks?stale&index=3"));
        assert!(waits("/v1/locks/db/acquire"));
        assert!(waits("/v1/elections/boss/campaign"));
        assert!(waits("/internal/forward"));
        assert!(!waits("/v1/services/web"));
        assert!(!waits("/v1/services/web?reindex=1"));
        assert!(!waits("/v1/leases"));
        assert!(!waits("/v1/locks/db/release"));
    }

    #[test]
    fn the_refusals_are_well_formed_http_with_a_json_error() {
        check_refusal(OVER_CAPACITY, "HTTP/1.1 503 ", api_spec::codes::OVERLOADED);
        check_refusal(
            PLAINTEXT_ON_TLS,
            "HTTP/1.1 400 ",
            api_spec::codes::INVALID_ARGUMENT,
        );
    }

    fn check_refusal(bytes: &[u8], status_line: &str, code: &str) {
        let text = std::str::from_utf8(bytes).unwrap_or_default();
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or_default();
        assert!(head.starts_with(status_line), "{head}");
        let length = head
            .lines()
            .find_map(|l| l.strip_prefix("Content-Length: "))
            .and_then(|n| n.parse::<usize>().ok());
        assert_eq!(length, Some(body.len()));
        let json: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
        assert_eq!(json["error"]["code"], code);
    }
}
