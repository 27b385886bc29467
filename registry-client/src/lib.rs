//! Rust client for the registry: discovery, registration, locks, elections, leases and
//! cluster administration.
//!
//! - **Discovery** ([`Client::resolve`], [`Client::endpoints`]): answered from a local
//!   cache kept fresh by one background blocking-query watch per service in use; healthy
//!   instances only, client-side filters, stale-if-error with a visible age. `resolve`
//!   picks one endpoint: the caller's zone first, then region ([`locality`], with a panic
//!   threshold), minus endpoints ejected by passive health checks ([`outlier`], fed by
//!   [`Client::report`]), through the service's balancer ([`balance`]: round robin, smooth
//!   weighted round robin, random, power-of-two-choices least outstanding, consistent
//!   hashing).
//! - **Registration** ([`Client::register_instance`]): a guard that heartbeats in the
//!   background, registers again if the registry forgot the instance, and deregisters on
//!   shutdown. A registration may carry active health checks ([`CheckDefinition`]: HTTP,
//!   TCP, gRPC) that the cluster runs; one with checks and no `ttl` or `lease` has no
//!   lease, and its guard sends no heartbeats.
//! - **Locks and elections** ([`Client::lock`], [`Client::elect`], [`Client::observe`]):
//!   guards with the fencing token that renew their lease and say when the lock may be
//!   lost ([`LockGuard::lost`]) before the server could have given it to someone else.
//!   A [`Session`] ([`Client::session`]) renews one lease for many locks.
//! - **The raw API**, one method per route: catalog ([`Client::register`],
//!   [`Client::service`], ...), locks ([`Client::acquire`], [`Client::release`], ...),
//!   elections, leases ([`Client::create_lease`], [`Client::keepalive`], ...), cluster
//!   administration ([`Client::cluster_status`], [`Client::add_member`], ...), ACL tokens
//!   ([`Client::acl_bootstrap`], [`Client::acl_create_token`], ...).
//!
//! `regctl`, the command-line tool, is this crate's binary, behind the default `cli`
//! feature (it alone needs `clap` and `nix`): a program that only uses the library can
//! depend on the crate with `default-features = false`. `regctl lock` and `regctl elect`
//! hold their lock or lead with the same [`LockGuard`] and [`Leadership`] as any program.
//!
//! Transport: HTTP/1.1 to `host:port` endpoints, plain or over TLS, one pooled
//! connection set per [`Client`], a per-request timeout (default [`DEFAULT_TIMEOUT`];
//! requests the server holds, such as blocking queries and waiting acquires, get their
//! wait on top). A bare lease from [`Client::create_lease`] is not kept alive by itself;
//! the guards keep theirs, and a [`Session`] its own.
//!
//! TLS: `https://host:port` endpoints, or bare `host:port` ones once a TLS option is set,
//! are reached over TLS (rustls with the ring provider; no OpenSSL). The server's
//! certificate must be valid for the endpoint's host (name or IP address) and signed by
//! the CA given to [`ClientBuilder::tls_ca_pem`] (a private CA: then only its
//! certificates are trusted), or without one by a built-in (Mozilla) root.
//! [`ClientBuilder::tls_identity_pem`] presents a client certificate to servers that ask
//! for one (mutual TLS). A bad PEM fails [`ClientBuilder::build`] with
//! [`Error::InvalidTls`]; a handshake that fails is an [`Error::Transport`] for which
//! [`Error::is_tls`] is `true`. Connections are kept alive and TLS sessions resumed
//! across connections by the one connection pool a client and all its clones share, so
//! build one [`Client`] and clone it rather than building one per task.
//!
//! Authentication: on a registry with ACLs on, give the client a token's secret with
//! [`ClientBuilder::token`]; every request then carries `Authorization: Bearer <secret>`,
//! the background ones (discovery watches, heartbeats, lock and leadership renewals)
//! included. Without a token the server applies its anonymous rules (by default none). A
//! refused request is an [`Error::Api`] like any other, with code `unauthenticated` (401:
//! no token, or one the cluster does not know) or `permission_denied` (403); see
//! [`Error::is_unauthenticated`] and [`Error::is_permission_denied`]. For another scheme
//! (say an authenticating proxy in front of the servers), [`ClientBuilder::auth_header`]
//! adds a header of the caller's choosing instead.
//!
//! Failover: any server can take any request (followers forward writes to the leader),
//! so a call tries the endpoints in turn, starting with the one that last answered, and
//! goes round the list at most once, backing off (with jitter) between servers. What makes it move on depends on whether the call
//! may safely be repeated; see [`Client`].

mod api;
pub mod balance;
mod discovery;
mod error;
pub mod handles;
pub mod locality;
pub mod outlier;
pub mod registration;
mod tls;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

pub use api::{ReadOptions, ServiceQuery};
pub use api_spec::acl::{
    Access, CreateTokenRequest, Resource, RevokeTokenResponse, Rule, TokenCreated, TokenInfo,
    TokenList,
};
pub use api_spec::checks::{CheckDefinition, CheckInfo, CheckKind, CheckStatus};
pub use api_spec::{
    AcquireRequest, AddMemberRequest, CampaignRequest, CampaignResponse, ClusterStatus,
    DeregisterResponse, ElectionInfo, ElectionLeader, ElectionList, HeartbeatResponse, Instance,
    InstanceStatus, LeaseInfo, LockGrant, LockInfo, LockList, Member, MembershipResponse,
    RegisterRequest, ReleaseResponse, RevokeLeaseResponse, Role, ServiceInstances, ServiceList,
};
pub use discovery::{Endpoints, Resolved, ServicePolicy};
pub use error::{Conflict, Error, TlsInput};
pub use handles::{
    CampaignOptions, Leadership, LockGuard, LockOptions, LostReason, LostSignal, Observer, Session,
    SessionOptions,
};
pub use registration::{Registration, RegistrationState};
use reqwest::header::{HeaderName, HeaderValue, AUTHORIZATION};
use reqwest::Method;
use serde::de::DeserializeOwned;
use serde::Serialize;
pub use uuid::Uuid;

/// Result of every client call.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Per-request timeout unless [`ClientBuilder::timeout`] says otherwise. Long enough for
/// a write that waits out a leader election, short enough that a hung server is noticed.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// How a read of a lease may be served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Consistency {
    /// Reflects every write acknowledged before the read started, whichever node answers.
    #[default]
    Linearizable,
    /// Served from the answering node's local state (`?stale`): cheaper and available
    /// without a leader, but may miss recent writes or show a lease that just expired.
    Stale,
}

/// A successful answer together with the Raft log index the server says it reflects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response<T> {
    /// The decoded body.
    pub value: T,
    /// The `X-Registry-Index` header, when the server sent a readable one. Lets a caller
    /// order answers from different nodes, or tell how far a stale read lags.
    pub index: Option<u64>,
}

impl<T> Response<T> {
    /// Drops the index.
    pub fn into_value(self) -> T {
        self.value
    }
}

/// Whether a failed call may be sent again to the next endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Retry {
    /// Repeating it is harmless: retry on transport errors and 503.
    Idempotent,
    /// Repeating it could do it twice: retry only when the connection failed before
    /// anything was sent.
    OnlyIfNotSent,
}

/// A handle to the registry. Cheap to clone; clones share connections and the
/// remembered "last endpoint that answered".
///
/// Which failures move a call on to the next endpoint:
/// - calls that may be repeated ([`keepalive`](Self::keepalive),
///   [`revoke_lease`](Self::revoke_lease), [`get_lease`](Self::get_lease),
///   [`cluster_status`](Self::cluster_status), [`remove_member`](Self::remove_member)):
///   any transport error and any 503;
/// - calls that must not run twice ([`create_lease`](Self::create_lease),
///   [`add_member`](Self::add_member)): only a failure to connect, where the request
///   cannot have reached a server. After a timeout or a 503 the caller decides, since the
///   first attempt may have taken effect.
///
/// Any other error answer (400, 401, 403, 404, 409, ...) is final: another server would say
/// the same.
#[derive(Debug, Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    /// Built once per client: its pool keeps connections alive and its TLS configuration
    /// holds the session cache that lets new connections resume TLS sessions.
    http: reqwest::Client,
    /// `host:port`, as given (minus an `http://` or `https://` prefix); never empty.
    endpoints: Vec<String>,
    /// How every endpoint is reached: the builder allows one scheme per client.
    scheme: Scheme,
    /// Index into `endpoints` of the last one that answered; calls start there so a dead
    /// server costs one failed connect, not one per call.
    preferred: AtomicUsize,
    /// Adds a header (`Authorization: Bearer` for a token) to every request.
    auth: Option<AuthHook>,
    /// The per-request timeout (also how long a first discovery fetch may take).
    timeout: Duration,
    /// Discovery caches, one per service in use.
    caches: discovery::Caches,
    /// Locality, balancing and passive-health settings of the caches.
    discovery: discovery::DiscoveryConfig,
}

/// Called once per call (attempts on other endpoints reuse its answer); the header it
/// returns (if any) is added to the request. See [`ClientBuilder::auth_header`].
pub type AuthHook = Arc<dyn Fn() -> Option<(String, String)> + Send + Sync>;

impl Inner {
    /// The URL of `path` (which starts with `/`) on `endpoint`: the one place an endpoint
    /// becomes a URL, so every request (the raw API, discovery watches, registration
    /// heartbeats, lock and leadership renewals) uses the client's scheme.
    fn url(&self, endpoint: &str, path: &str) -> String {
        format!("{}://{endpoint}{path}", self.scheme.as_str())
    }
}

/// How a client reaches its servers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scheme {
    Http,
    Https,
}

impl Scheme {
    fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inner")
            .field("endpoints", &self.endpoints)
            .field("scheme", &self.scheme)
            .field("auth", &self.auth.is_some())
            .finish_non_exhaustive()
    }
}

/// Builds a [`Client`] with non-default settings.
#[derive(Clone)]
pub struct ClientBuilder {
    endpoints: Vec<String>,
    timeout: Duration,
    auth: Option<AuthHook>,
    discovery: discovery::DiscoveryConfig,
    /// PEM of the CA certificates to trust instead of the built-in roots.
    tls_ca: Option<Vec<u8>>,
    /// PEM of the client certificate chain and of its private key.
    tls_identity: Option<(Vec<u8>, Vec<u8>)>,
}

impl std::fmt::Debug for ClientBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientBuilder")
            .field("endpoints", &self.endpoints)
            .field("timeout", &self.timeout)
            .field("auth", &self.auth.is_some())
            .field("tls_ca", &self.tls_ca.is_some())
            // Never the key: it is a secret.
            .field("tls_identity", &self.tls_identity.is_some())
            .finish()
    }
}

impl ClientBuilder {
    /// Per-request timeout (connect, send, and read the whole answer).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Sends the registry token `secret` as `Authorization: Bearer <secret>` with every
    /// request, including those of the client's background tasks (discovery watches,
    /// registration heartbeats, lock and leadership renewals).
    ///
    /// Surrounding whitespace (a newline read from a file) is dropped, and an empty
    /// secret sends no token: the server's anonymous rules apply. A secret that cannot be
    /// sent in a header (a control character inside) fails each call with
    /// [`Error::InvalidHeader`], before anything is sent. This is the
    /// [`auth_header`](Self::auth_header) hook with a fixed header, so whichever of the
    /// two is set last is the one used.
    pub fn token(self, secret: impl Into<String>) -> Self {
        let secret = secret.into();
        let secret = secret.trim();
        if secret.is_empty() {
            return ClientBuilder { auth: None, ..self };
        }
        let value = format!("Bearer {secret}");
        self.auth_header(move || Some((AUTHORIZATION.as_str().to_owned(), value.clone())))
    }

    /// A hook whose `(name, value)` header is added to every request, for a scheme other
    /// than a registry token (say an authenticating proxy in front of the servers; for a
    /// token use [`token`](Self::token), which replaces this hook and is replaced by it).
    /// Called once per call (the attempts on other endpoints of one call reuse its
    /// answer), so it can hand out a refreshed credential. The value is marked sensitive
    /// and never appears in errors.
    pub fn auth_header(
        mut self,
        hook: impl Fn() -> Option<(String, String)> + Send + Sync + 'static,
    ) -> Self {
        self.auth = Some(Arc::new(hook));
        self
    }

    /// Where the caller runs: [`Client::resolve`] prefers endpoints in its zone, then its
    /// region, spilling over as `policy` says (and balancing over every registered
    /// endpoint below its panic threshold).
    pub fn locality(
        mut self,
        locality: locality::Locality,
        policy: locality::LocalityPolicy,
    ) -> Self {
        self.discovery.locality = locality;
        self.discovery.locality_policy = policy;
        self
    }

    /// Passive health checking settings (outlier ejection) for [`Client::report`].
    pub fn outlier_detection(mut self, config: outlier::OutlierConfig) -> Self {
        self.discovery.outliers = config;
        self
    }

    /// The balancer of services not set otherwise with [`Client::configure`].
    pub fn balancer(mut self, policy: balance::Policy) -> Self {
        self.discovery.policy = policy;
        self
    }

    /// Trusts the CA certificates of `pem` (a PEM bundle: one or more
    /// `-----BEGIN CERTIFICATE-----` blocks) to sign the servers' certificates, *instead
    /// of* the built-in roots: a registry's CA is a private one, and a server certificate
    /// any public CA could issue for the name should not pass. Calling it again replaces
    /// the bundle. Makes bare `host:port` endpoints `https://`.
    ///
    /// The PEM is read by [`build`](Self::build): one without a certificate, or with one
    /// that is not a certificate, is an [`Error::InvalidTls`] there.
    pub fn tls_ca_pem(mut self, pem: impl AsRef<[u8]>) -> Self {
        self.tls_ca = Some(pem.as_ref().to_vec());
        self
    }

    /// Presents a client certificate to servers that ask for one (mutual TLS):
    /// `cert_chain_pem` holds the client's certificate first, then any intermediate
    /// certificates the server needs to reach its CA; `key_pem` the certificate's
    /// private key (PKCS#8 `PRIVATE KEY`, `RSA PRIVATE KEY` or `EC PRIVATE KEY`,
    /// unencrypted). One file holding both may be given as both. Calling it again
    /// replaces the identity. Makes bare `host:port` endpoints `https://`.
    ///
    /// Read by [`build`](Self::build): no certificate, no key or more than one, an
    /// encrypted key, or a key that does not belong to the first certificate are an
    /// [`Error::InvalidTls`] there.
    pub fn tls_identity_pem(
        mut self,
        cert_chain_pem: impl AsRef<[u8]>,
        key_pem: impl AsRef<[u8]>,
    ) -> Self {
        self.tls_identity = Some((cert_chain_pem.as_ref().to_vec(), key_pem.as_ref().to_vec()));
        self
    }

    /// Checks the endpoints and the TLS inputs and builds the client.
    ///
    /// The endpoints share one scheme: `https://` ones, `http://` ones, or bare
    /// `host:port` ones, which are `https://` when a TLS option
    /// ([`tls_ca_pem`](Self::tls_ca_pem), [`tls_identity_pem`](Self::tls_identity_pem))
    /// is set and `http://` otherwise. Endpoints that end up with different schemes, or
    /// an `http://` endpoint with a TLS option set (which would silently go without
    /// TLS), are an [`Error::InvalidEndpoint`].
    pub fn build(self) -> Result<Client> {
        let parsed = self
            .endpoints
            .iter()
            .map(|e| normalize_endpoint(e))
            .collect::<Result<Vec<_>>>()?;
        let tls_options = self.tls_ca.is_some() || self.tls_identity.is_some();
        let scheme = one_scheme(&self.endpoints, &parsed, tls_options)?;
        let endpoints: Vec<String> = parsed.into_iter().map(|(_, endpoint)| endpoint).collect();

        // HTTP/1.1 whatever features another crate of the program turns on in reqwest:
        // one protocol to reason about (a TLS refusal of the client's certificate, for
        // one, reaches it as a TLS error, where over HTTP/2 it is a closed connection).
        let mut http = reqwest::Client::builder()
            .timeout(self.timeout)
            .http1_only();
        if scheme == Scheme::Https {
            // rustls even if another crate of the program turns on reqwest's native-tls.
            http = http.use_rustls_tls().https_only(true);
        }
        if let Some(pem) = &self.tls_ca {
            http = http.tls_built_in_root_certs(false);
            for root in tls::root_certificates(pem)? {
                http = http.add_root_certificate(root);
            }
        }
        if let Some((chain, key)) = &self.tls_identity {
            http = http.identity(tls::identity(chain, key)?);
        }
        let http = http.build().map_err(|source| Error::Transport {
            endpoint: endpoints.join(","),
            source,
        })?;
        Ok(Client {
            inner: Arc::new(Inner {
                http,
                endpoints,
                scheme,
                preferred: AtomicUsize::new(0),
                auth: self.auth,
                timeout: self.timeout,
                caches: discovery::Caches::default(),
                discovery: self.discovery,
            }),
        })
    }
}

/// Accepts `host:port`, `http://host:port` or `https://host:port` (a trailing `/` is
/// dropped) and returns the scheme it named, if any, and `host:port`.
fn normalize_endpoint(endpoint: &str) -> Result<(Option<Scheme>, String)> {
    let invalid = |reason| Error::InvalidEndpoint {
        endpoint: endpoint.to_owned(),
        reason,
    };
    let trimmed = endpoint.trim();
    let (scheme, rest) = match trimmed.split_once("://") {
        None => (None, trimmed),
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("http") => (Some(Scheme::Http), rest),
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("https") => (Some(Scheme::Https), rest),
        Some(_) => return Err(invalid("only http:// and https:// are supported")),
    };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.is_empty() {
        return Err(invalid("empty"));
    }
    if rest.contains('/') {
        return Err(invalid("expected host:port without a path"));
    }
    match rest.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => {
            Ok((scheme, rest.to_owned()))
        }
        _ => Err(invalid("expected host:port")),
    }
}

/// The one scheme of a client's endpoints (`given` as the caller wrote them, `parsed` by
/// [`normalize_endpoint`]); see [`ClientBuilder::build`].
fn one_scheme(
    given: &[String],
    parsed: &[(Option<Scheme>, String)],
    tls_options: bool,
) -> Result<Scheme> {
    let invalid = |which: usize, reason| Error::InvalidEndpoint {
        endpoint: given.get(which).cloned().unwrap_or_default(),
        reason,
    };
    if parsed.is_empty() {
        return Err(Error::NoEndpoints);
    }
    if tls_options {
        if let Some(which) = parsed.iter().position(|(s, _)| *s == Some(Scheme::Http)) {
            return Err(invalid(
                which,
                "http:// although a TLS option (CA or client certificate) is set: use \
                 https:// or a bare host:port",
            ));
        }
    }
    let bare = if tls_options {
        Scheme::Https
    } else {
        Scheme::Http
    };
    let first = parsed[0].0.unwrap_or(bare);
    for (which, (explicit, _)) in parsed.iter().enumerate() {
        let scheme = explicit.unwrap_or(bare);
        if scheme == first {
            continue;
        }
        let reason = if explicit.is_some() && parsed[0].0.is_some() {
            "mixes http:// and https:// endpoints: all endpoints of a client use one scheme"
        } else {
            "mixes https:// with bare host:port endpoints, which are http:// when no TLS \
             option is set: all endpoints of a client use one scheme, so write https:// \
             on each"
        };
        return Err(invalid(which, reason));
    }
    Ok(first)
}

impl Client {
    /// A client over `endpoints` (`host:port` or `http://host:port` for plain HTTP,
    /// `https://host:port` for TLS with the built-in roots) with the default timeout.
    /// For a private CA or a client certificate, see [`Client::builder`].
    pub fn new(endpoints: impl IntoIterator<Item = impl Into<String>>) -> Result<Self> {
        Self::builder(endpoints).build()
    }

    /// Starts building a client over `endpoints`.
    pub fn builder(endpoints: impl IntoIterator<Item = impl Into<String>>) -> ClientBuilder {
        ClientBuilder {
            endpoints: endpoints.into_iter().map(Into::into).collect(),
            timeout: DEFAULT_TIMEOUT,
            auth: None,
            discovery: discovery::DiscoveryConfig::default(),
            tls_ca: None,
            tls_identity: None,
        }
    }

    /// The registry servers this client talks to, as `host:port` (without the scheme:
    /// see [`uses_tls`](Self::uses_tls)).
    pub fn servers(&self) -> &[String] {
        &self.inner.endpoints
    }

    /// `true` when the client reaches its servers over TLS (`https://`).
    pub fn uses_tls(&self) -> bool {
        self.inner.scheme == Scheme::Https
    }

    /// Grants a lease that lives `ttl` unless kept alive (`POST /v1/leases`). The server
    /// accepts TTLs from [`api_spec::MIN_LEASE_TTL`] to [`api_spec::MAX_LEASE_TTL`].
    pub async fn create_lease(&self, ttl: Duration) -> Result<Response<LeaseInfo>> {
        let body = api_spec::CreateLeaseRequest {
            ttl: api_spec::format_duration(ttl),
        };
        self.call(
            Method::POST,
            "/v1/leases",
            Some(&body),
            Retry::OnlyIfNotSent,
        )
        .await
    }

    /// Restarts the lease's countdown at its full TTL
    /// (`PUT /v1/leases/{id}/keepalive`). An expired lease cannot be revived: that is an
    /// [`Error::Api`] with code `lease_not_found`.
    pub async fn keepalive(&self, lease: Uuid) -> Result<Response<LeaseInfo>> {
        let path = format!("/v1/leases/{lease}/keepalive");
        self.call(Method::PUT, &path, None::<&()>, Retry::Idempotent)
            .await
    }

    /// Revokes the lease now (`DELETE /v1/leases/{id}`).
    ///
    /// Retried on another endpoint after a transport error or 503, so if the first try
    /// did take effect the answer can be `lease_not_found` although the revoke worked.
    pub async fn revoke_lease(&self, lease: Uuid) -> Result<Response<RevokeLeaseResponse>> {
        let path = format!("/v1/leases/{lease}");
        self.call(Method::DELETE, &path, None::<&()>, Retry::Idempotent)
            .await
    }

    /// Reads a lease (`GET /v1/leases/{id}`, with `?stale` for [`Consistency::Stale`]).
    /// `remaining_ms` is only set when the leader answered.
    pub async fn get_lease(
        &self,
        lease: Uuid,
        consistency: Consistency,
    ) -> Result<Response<LeaseInfo>> {
        let path = match consistency {
            Consistency::Linearizable => format!("/v1/leases/{lease}"),
            Consistency::Stale => format!("/v1/leases/{lease}?stale"),
        };
        self.call(Method::GET, &path, None::<&()>, Retry::Idempotent)
            .await
    }

    /// The answering node's view of the cluster (`GET /v1/cluster`). With several
    /// endpoints, which node answers is up to failover: build a client over a single
    /// endpoint to ask a particular node.
    pub async fn cluster_status(&self) -> Result<Response<ClusterStatus>> {
        self.call(Method::GET, "/v1/cluster", None::<&()>, Retry::Idempotent)
            .await
    }

    /// A backup of the whole registry (`GET /v1/snapshot`, needs `cluster:write`): the
    /// state at one applied index, including every write acknowledged before the call.
    /// The bytes are checked here (header, length, checksum) before they are returned;
    /// the summary is `api_spec::backup::decode(&bytes)`'s. Waits up to `timeout` (a
    /// large registry's backup takes a while), on top of the client's.
    pub async fn snapshot(&self, timeout: Duration) -> Result<Response<Vec<u8>>> {
        let checked = |endpoint: &str, bytes: &[u8]| match api_spec::backup::decode(bytes) {
            Ok(_) => Ok(bytes.to_vec()),
            Err(e) => Err(Error::InvalidBackup {
                endpoint: endpoint.to_owned(),
                reason: e.to_string(),
            }),
        };
        let timeout = Some(self.inner.timeout + timeout);
        self.call_decoding(
            Method::GET,
            "/v1/snapshot",
            None::<&()>,
            Retry::Idempotent,
            timeout,
            checked,
        )
        .await
    }

    /// Adds a server to the cluster (`POST /v1/cluster/members`).
    pub async fn add_member(
        &self,
        request: &AddMemberRequest,
    ) -> Result<Response<MembershipResponse>> {
        self.call(
            Method::POST,
            "/v1/cluster/members",
            Some(request),
            Retry::OnlyIfNotSent,
        )
        .await
    }

    /// Removes a server from the cluster (`DELETE /v1/cluster/members/{id}`).
    ///
    /// Retried like [`revoke_lease`](Self::revoke_lease): if a first try took effect,
    /// the retry's answer says the member is unknown.
    pub async fn remove_member(&self, id: u64) -> Result<Response<MembershipResponse>> {
        let path = format!("/v1/cluster/members/{id}");
        self.call(Method::DELETE, &path, None::<&()>, Retry::Idempotent)
            .await
    }

    /// Sends one request, failing over between endpoints as [`Client`] describes.
    async fn call<B: Serialize + ?Sized, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
        retry: Retry,
    ) -> Result<Response<T>> {
        self.call_with(method, path, body, retry, None).await
    }

    /// [`Client::call`] with a per-request timeout replacing the client's (for requests
    /// the server holds, such as blocking queries and waiting acquires).
    async fn call_with<B: Serialize + ?Sized, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
        retry: Retry,
        timeout: Option<Duration>,
    ) -> Result<Response<T>> {
        let json = |endpoint: &str, bytes: &[u8]| {
            serde_json::from_slice(bytes).map_err(|source| Error::Decode {
                endpoint: endpoint.to_owned(),
                source,
            })
        };
        self.call_decoding(method, path, body, retry, timeout, json)
            .await
    }

    /// [`Client::call_with`] with the answer's body decoded by `decode` (JSON, or kept as
    /// bytes).
    async fn call_decoding<B: Serialize + ?Sized, T>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
        retry: Retry,
        timeout: Option<Duration>,
        decode: impl Fn(&str, &[u8]) -> Result<T>,
    ) -> Result<Response<T>> {
        let auth = self.auth()?;
        let endpoints = &self.inner.endpoints;
        let start = self.inner.preferred.load(Ordering::Relaxed) % endpoints.len();
        let mut last_error = Error::NoEndpoints;
        for offset in 0..endpoints.len() {
            let which = (start + offset) % endpoints.len();
            if offset > 0 {
                // Backing off before the next server: an election takes a moment, and
                // hammering every server at once only slows it down.
                tokio::time::sleep(retry_backoff(offset)).await;
            }
            match self
                .attempt(
                    &endpoints[which],
                    method.clone(),
                    path,
                    body,
                    timeout,
                    auth.as_ref(),
                    &decode,
                )
                .await
            {
                Ok(response) => {
                    self.inner.preferred.store(which, Ordering::Relaxed);
                    return Ok(response);
                }
                Err(failure) => {
                    let next = match retry {
                        Retry::Idempotent => failure.error.is_retryable(),
                        Retry::OnlyIfNotSent => !failure.may_have_been_sent,
                    };
                    last_error = failure.error;
                    if !next {
                        break;
                    }
                }
            }
        }
        Err(last_error)
    }

    /// The authentication header of one call, from the hook [`ClientBuilder::token`] or
    /// [`ClientBuilder::auth_header`] set: checked here, because one that cannot be sent
    /// would fail the same way on every endpoint.
    fn auth(&self) -> Result<Option<(HeaderName, HeaderValue)>> {
        let Some((name, value)) = self.inner.auth.as_ref().and_then(|hook| hook()) else {
            return Ok(None);
        };
        let Ok(header) = HeaderName::try_from(name.as_str()) else {
            return Err(Error::InvalidHeader {
                name,
                reason: "not a valid header name",
            });
        };
        let Ok(mut value) = HeaderValue::try_from(value) else {
            return Err(Error::InvalidHeader {
                name: header.as_str().to_owned(),
                reason: "the value holds characters a header cannot carry, such as a newline",
            });
        };
        // Kept out of debug output (reqwest's and hyper's), like a password.
        value.set_sensitive(true);
        Ok(Some((header, value)))
    }

    /// One request to one endpoint, with `auth` (see [`Client::auth`]) if any.
    #[allow(clippy::too_many_arguments)]
    async fn attempt<B: Serialize + ?Sized, T>(
        &self,
        endpoint: &str,
        method: Method,
        path: &str,
        body: Option<&B>,
        timeout: Option<Duration>,
        auth: Option<&(HeaderName, HeaderValue)>,
        decode: &impl Fn(&str, &[u8]) -> Result<T>,
    ) -> Result<Response<T>, Failure> {
        let url = self.inner.url(endpoint, path);
        let mut request = self.inner.http.request(method, url);
        if let Some(timeout) = timeout {
            request = request.timeout(timeout);
        }
        if let Some((name, value)) = auth {
            request = request.header(name.clone(), value.clone());
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        let transport = |source: reqwest::Error| Error::Transport {
            endpoint: endpoint.to_owned(),
            source,
        };
        let response = request.send().await.map_err(|source| Failure {
            // A connect error is the one case where the server cannot have seen the request.
            may_have_been_sent: !source.is_connect(),
            error: transport(source),
        })?;
        let status = response.status();
        let index = response
            .headers()
            .get(api_spec::INDEX_HEADER)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.trim().parse().ok());
        let bytes = response
            .bytes()
            .await
            .map_err(|source| Failure::sent(transport(source)))?;
        if !status.is_success() {
            return Err(Failure::sent(error::api_error(
                endpoint,
                status.as_u16(),
                &bytes,
            )));
        }
        let value = decode(endpoint, &bytes).map_err(Failure::sent)?;
        Ok(Response { value, index })
    }
}

/// The pause before trying the next endpoint: 25 ms, doubling, at most 400 ms, with up to
/// half again of random jitter so clients that failed together do not retry together.
fn retry_backoff(attempt: usize) -> Duration {
    let base = Duration::from_millis(25) * 2u32.saturating_pow(attempt.min(5) as u32 - 1);
    let base = base.min(Duration::from_millis(400));
    let jitter = rand::random_range(0..=base.as_millis() as u64 / 2);
    base + Duration::from_millis(jitter)
}

/// A failed attempt, and whether the server may have acted on it.
struct Failure {
    error: Error,
    may_have_been_sent: bool,
}

impl Failure {
    fn sent(error: Error) -> Self {
        Failure {
            error,
            may_have_been_sent: true,
        }
    }
}

#[cfg(test)]
mod auth_test;
#[cfg(test)]
mod failover_test;
#[cfg(test)]
mod tls_test;
#[cfg(test)]
#[allow(dead_code)]
mod tls_test_support;
