//! Command-line configuration (`registry-server --help`) and its validation.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

use crate::raft::types::NodeId;

/// Default client and peer address of a server started with no flags.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7400";

/// The longest `--dns-ttl`: DNS answers are about health, and a resolver holds on to an
/// answer that long after the instance failed.
pub const MAX_DNS_TTL: Duration = Duration::from_secs(3600);

/// A service registry and lock server on Raft. With no flags it runs a single-node
/// registry on 127.0.0.1:7400 with its data in ./data; the same flags on three or five
/// servers form a replicated cluster.
#[derive(Debug, Clone, Parser)]
#[command(name = "registry-server", version, about, long_about = None, after_help = EXAMPLES)]
pub struct Config {
    /// Address to serve HTTP on (clients and peers). Default: 127.0.0.1:7400, or this
    /// node's own address from --bootstrap. Port 0 picks a free port.
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<String>,

    /// Address other servers and clients use to reach this one, host:port: this
    /// server's member address. Default: the address actually listened on (the peer
    /// listener's with --peer-listen). Required when listening on 0.0.0.0 or [::].
    #[arg(long, value_name = "ADDR")]
    pub advertise: Option<String>,

    /// Serve node-to-node traffic (Raft, forwarded writes, joins) on this address of its
    /// own, so that client floods cannot starve it; --listen then serves only the public
    /// API. The member address (what --bootstrap lists and --join names) is then this
    /// one. Port 0 picks a free port.
    #[arg(long, value_name = "ADDR")]
    pub peer_listen: Option<String>,

    /// Answer DNS queries (UDP and TCP, same port) on this address: the passing
    /// instances of each service as `<service>.service.<domain>` (A, AAAA, SRV), from
    /// this node's memory. Off unless given. Port 0 picks a free port.
    #[arg(long, value_name = "ADDR")]
    pub dns_listen: Option<String>,

    /// The DNS domain this server is the authority for, with --dns-listen: names under
    /// it are answered, names outside it REFUSED. A trailing dot is optional.
    #[arg(long, value_name = "DOMAIN", default_value = "registry.", value_parser = crate::dns::parse_domain, requires = "dns_listen")]
    pub dns_domain: hickory_server::proto::rr::Name,

    /// The TTL of every DNS record (and how long resolvers may cache a "no such name"),
    /// with --dns-listen: whole seconds, at most 1h. 0s keeps resolvers from caching, so
    /// an instance that fails drops out of the next answer.
    #[arg(long, value_name = "DURATION", default_value = "0s", value_parser = parse_duration, requires = "dns_listen")]
    pub dns_ttl: Duration,

    /// Directory for the Raft log (RocksDB) and snapshots. Created if missing.
    #[arg(long, value_name = "DIR", default_value = "./data")]
    pub data_dir: PathBuf,

    /// This server's id in the cluster: a positive number, unique and never reused.
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub node_id: NodeId,

    /// Initial members of a new cluster, as ID=ADDR pairs separated by commas. Give every
    /// initial member the same list. Ignored once the data dir holds a cluster.
    #[arg(long, value_name = "1=ADDR,2=ADDR,3=ADDR", value_parser = parse_bootstrap, conflicts_with = "join")]
    pub bootstrap: Option<Bootstrap>,

    /// Disaster recovery: start a new one-node cluster from a backup (`GET /v1/snapshot`,
    /// `regctl snapshot save`) in an empty --data-dir; grow it with --join. Every lease
    /// starts again at its full TTL; fencing tokens continue above the backup's. Ignored
    /// once the data dir holds the restored cluster (a restart).
    #[arg(long, value_name = "FILE", conflicts_with_all = ["bootstrap", "join"])]
    pub restore: Option<PathBuf>,

    /// Join an existing cluster: ask the server at ADDR (any member) to add this one.
    /// Ignored once this server is a member.
    #[arg(long, value_name = "ADDR")]
    pub join: Option<String>,

    /// With --join: join as a learner, a member that replicates the log and serves
    /// stale reads, blocking queries, DNS and Consul reads but does not vote (more read
    /// capacity without a larger write quorum). Promote it later with
    /// `POST /v1/cluster/members` (`"learner": false`).
    #[arg(long, requires = "join")]
    pub learner: bool,

    /// How often the leader sends heartbeats to followers.
    #[arg(long, value_name = "DURATION", default_value = "100ms", value_parser = parse_duration)]
    pub heartbeat_interval: Duration,

    /// Election timeout (the minimum; each wait is random up to twice this). A follower
    /// that stops hearing from the leader first honours the leader's lease (twice this)
    /// and then waits one election timeout, so a dead leader is replaced after about
    /// three to four times this value.
    #[arg(long, value_name = "DURATION", default_value = "300ms", value_parser = parse_duration)]
    pub election_timeout: Duration,

    /// Take a snapshot every N log entries; entries behind a snapshot are then purged
    /// (keeping up to min(N, 1000) for followers that are only a little behind).
    #[arg(long, value_name = "N", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub snapshot_every: u64,

    /// Shared secret every server of the cluster must be given: node-to-node requests
    /// carry it and servers refuse internal requests without it. Prefer the environment
    /// variable, which other users cannot read from the process list.
    #[arg(
        long,
        value_name = "SECRET",
        env = "REGISTRY_CLUSTER_SECRET",
        hide_env_values = true
    )]
    pub cluster_secret: Option<String>,

    /// Serve HTTPS with this certificate chain (PEM, the server's certificate first) on
    /// --listen and --peer-listen, and call peers over https. It is also this server's
    /// client certificate to its peers, so give it extendedKeyUsage serverAuth and
    /// clientAuth and the member address's host in subjectAltName. Reloaded on SIGHUP.
    #[arg(
        long,
        value_name = "FILE",
        env = "REGISTRY_TLS_CERT",
        requires = "tls_key"
    )]
    pub tls_cert: Option<PathBuf>,

    /// The private key of --tls-cert (PEM, unencrypted). Reloaded on SIGHUP.
    #[arg(
        long,
        value_name = "FILE",
        env = "REGISTRY_TLS_KEY",
        requires = "tls_cert"
    )]
    pub tls_key: Option<PathBuf>,

    /// CA bundle (PEM) that peers' certificates are checked against, and clients' with
    /// --tls-verify-clients. With it, a peer whose certificate names a member's host is
    /// authenticated by it and needs no --cluster-secret. Without it, peers are checked
    /// against the Mozilla roots.
    #[arg(
        long,
        value_name = "FILE",
        env = "REGISTRY_TLS_CA",
        requires = "tls_cert"
    )]
    pub tls_ca: Option<PathBuf>,

    /// Mutual TLS: refuse clients that do not present a certificate signed by --tls-ca.
    #[arg(long, env = "REGISTRY_TLS_VERIFY_CLIENTS", requires = "tls_ca")]
    pub tls_verify_clients: bool,

    /// Expiry storm protection: when more than this share (0 < x ≤ 1) of a service's
    /// instances would turn critical within one --expiry-storm-window, expire them at
    /// --expiry-storm-rate instead of all at once.
    #[arg(long, value_name = "SHARE", default_value_t = 0.5, value_parser = parse_share)]
    pub expiry_storm_threshold: f64,

    /// The window over which expiries count toward the storm threshold.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    pub expiry_storm_window: Duration,

    /// Instances per second per service expired while storm protection holds it.
    #[arg(long, value_name = "N", default_value_t = 1.0, value_parser = parse_rate)]
    pub expiry_storm_rate: f64,

    /// Turn expiry storm protection off: expire every due lease at once.
    #[arg(long)]
    pub no_expiry_storm_protection: bool,

    /// How often the leader checks lease deadlines and expires the leases that are due.
    #[arg(long, value_name = "DURATION", default_value = "100ms", value_parser = parse_duration)]
    pub lease_tick: Duration,

    /// Reach peers through other addresses: PEER=VIA pairs separated by commas send this
    /// server's node-to-node traffic for the peer at address PEER to VIA instead (a
    /// tunnel, a sidecar, or the fault-injection tests' proxies). Clients and the
    /// cluster membership still see PEER.
    #[arg(long, value_name = "PEER=VIA,...", value_parser = parse_peer_via)]
    pub peer_via: Option<PeerVia>,

    /// How long a write waits on the leader to be committed before the client gets a 503
    /// with Retry-After (a leader cut off from its quorum cannot commit). Under 10s.
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = parse_duration)]
    pub propose_timeout: Duration,

    /// The largest node-to-node message in bytes, sent or accepted. Replication sends
    /// fewer entries per message to stay under it; one log entry holds at most a quarter
    /// of it. Give every server of a cluster the same value.
    #[arg(long, value_name = "BYTES", default_value_t = crate::raft::network::DEFAULT_MAX_MESSAGE, value_parser = clap::value_parser!(u64).range(65_536..=1_073_741_824))]
    pub raft_max_message_bytes: u64,

    /// Memory for RocksDB's memtables (all column families together; a full one is
    /// flushed to disk). Recent log entries are read from here.
    #[arg(long, value_name = "BYTES", default_value_t = 16 << 20, value_parser = clap::value_parser!(u64).range(1 << 20..=1 << 34))]
    pub rocksdb_write_buffer_bytes: u64,

    /// Memory for RocksDB's block cache (log entries already flushed, read when a
    /// follower is far behind).
    #[arg(long, value_name = "BYTES", default_value_t = 8 << 20, value_parser = clap::value_parser!(u64).range(0..=1 << 36))]
    pub rocksdb_block_cache_bytes: u64,

    /// Most client and peer connections open at once; one more is answered 503
    /// `overloaded` and closed. (The open-file limit is raised to its hard limit at
    /// start-up.)
    #[arg(long, value_name = "N", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(16..=1_000_000))]
    pub max_connections: u64,

    /// A request's head must arrive within this long of its first byte (slow clients are
    /// cut off).
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    pub http_header_timeout: Duration,

    /// A connection with no request in flight is closed after this long without a byte
    /// (a blocking query in flight keeps its connection however long it waits). Longer
    /// than clients keep idle pooled connections (90s for reqwest and Go), so a client
    /// never reuses one the server is closing.
    #[arg(long, value_name = "DURATION", default_value = "120s", value_parser = parse_duration)]
    pub http_idle_timeout: Duration,

    /// The longest a request that does not wait on purpose may take; past it the client
    /// gets 503 with Retry-After (a write may still take effect). Blocking queries,
    /// acquires and campaigns have their own bounds.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    pub request_timeout: Duration,

    /// Most blocking queries this server holds at once; more are answered 429
    /// `too_many_waiters` with Retry-After.
    #[arg(long, value_name = "N", default_value_t = 4096, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_blocking_queries: u64,

    /// Most lock and election requests waiting in line (`wait`) on this server at once;
    /// more are answered 429 `too_many_waiters` with Retry-After.
    #[arg(long, value_name = "N", default_value_t = 4096, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_parked_waiters: u64,

    /// Most writes queued for the leader's next entries; more are answered 503
    /// `overloaded` with Retry-After.
    #[arg(long, value_name = "N", default_value_t = 20_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_queued_writes: u64,

    /// Run no active-check probes on this server: the leader leaves it out of the servers
    /// that own checks (for a server with no network path to the services, or kept free
    /// of probe traffic). With every server so, checks are not probed at all.
    #[arg(long, env = "REGISTRY_NO_PROBES")]
    pub no_probes: bool,

    /// Most active-check probes this server runs at once (HTTP, TCP and gRPC checks of
    /// the instances it owns); more wait for a slot, which shows as probe lag.
    #[arg(long, value_name = "N", default_value_t = 512, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub check_concurrency: u64,

    /// Serve `GET /metrics` to everyone; without it, with --acl, scraping needs a token
    /// with `cluster:read`.
    #[arg(long, env = "REGISTRY_METRICS_PUBLIC")]
    pub metrics_public: bool,

    /// Log lines as plain text, or as one JSON object per line (for log collectors).
    #[arg(long, value_name = "FORMAT", value_enum, default_value_t = LogFormat::Text, env = "REGISTRY_LOG_FORMAT")]
    pub log_format: LogFormat,

    /// Turn access control on: every request needs a token whose rules allow it
    /// (default deny), except what --acl-anonymous opens. Make the first token with
    /// `POST /v1/acl/bootstrap`. Give every server of a cluster the same ACL flags.
    #[arg(long, env = "REGISTRY_ACL")]
    pub acl: bool,

    /// With --acl: what requests without a token may do, as rules
    /// resource:access[:prefix] separated by commas, e.g. `service:read` (discovery
    /// open to all) or `service:read:web,lock:read`. Default: nothing.
    #[arg(
        long,
        value_name = "RULES",
        env = "REGISTRY_ACL_ANONYMOUS",
        value_delimiter = ',',
        requires = "acl"
    )]
    pub acl_anonymous: Vec<api_spec::acl::Rule>,

    /// With --acl: the secret of the bootstrap management token, for automation. The
    /// leader bootstraps the cluster's ACLs with it as soon as it leads, and
    /// `POST /v1/acl/bootstrap` then answers 409. 16 to 256 printable characters. Prefer
    /// the environment variable.
    #[arg(
        long,
        value_name = "SECRET",
        env = "REGISTRY_ACL_BOOTSTRAP_TOKEN",
        hide_env_values = true,
        requires = "acl"
    )]
    pub acl_bootstrap_token: Option<String>,
}

const EXAMPLES: &str = "\
Examples:
  registry-server                          single node, 127.0.0.1:7400, data in ./data
  registry-server --node-id 1 --data-dir n1 --bootstrap 1=127.0.0.1:7401,2=127.0.0.1:7402,3=127.0.0.1:7403
  registry-server --node-id 4 --listen 127.0.0.1:7404 --data-dir n4 --join 127.0.0.1:7401

Logging is controlled by RUST_LOG (default: info).";

/// How log lines are written (`--log-format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Whether `addr` (`host:port`) names this machine's loopback interface.
pub fn is_loopback(addr: &str) -> bool {
    let host = addr.rsplit_once(':').map_or(addr, |(host, _)| host);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// The `--bootstrap` member list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bootstrap(pub BTreeMap<NodeId, String>);

/// The `--peer-via` routes: peer address -> the address to send its traffic to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerVia(pub BTreeMap<String, String>);

fn parse_peer_via(text: &str) -> Result<PeerVia, String> {
    let mut routes = BTreeMap::new();
    for pair in text.split(',').filter(|p| !p.trim().is_empty()) {
        let Some((peer, via)) = pair.split_once('=') else {
            return Err(format!("{pair:?} is not PEER=VIA"));
        };
        let (peer, via) = (peer.trim(), via.trim());
        check_addr(peer)?;
        check_addr(via)?;
        if routes.insert(peer.to_owned(), via.to_owned()).is_some() {
            return Err(format!("peer {peer} is listed twice"));
        }
    }
    if routes.is_empty() {
        return Err("no routes given".into());
    }
    Ok(PeerVia(routes))
}

fn parse_share(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(x) if x > 0.0 && x <= 1.0 => Ok(x),
        _ => Err(format!(
            "{text:?} is not a share between 0 (exclusive) and 1"
        )),
    }
}

fn parse_rate(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(x) if x > 0.0 && x.is_finite() => Ok(x),
        _ => Err(format!("{text:?} is not a positive number")),
    }
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    api_spec::parse_duration(text).map_err(|e| e.to_string())
}

/// Checks that `addr` is `host:port` with a valid port.
pub fn check_addr(addr: &str) -> Result<(), String> {
    let (host, port) = addr
        .rsplit_once(':')
        .ok_or_else(|| format!("{addr:?} is not host:port"))?;
    if host.is_empty() {
        return Err(format!("{addr:?} has no host"));
    }
    port.parse::<u16>()
        .map_err(|_| format!("{addr:?} has no valid port"))?;
    Ok(())
}

fn parse_bootstrap(text: &str) -> Result<Bootstrap, String> {
    let mut members = BTreeMap::new();
    for pair in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (id, addr) = pair
            .split_once('=')
            .ok_or_else(|| format!("{pair:?} is not ID=ADDR"))?;
        let id: NodeId = id
            .trim()
            .parse()
            .map_err(|_| format!("{id:?} is not a node id"))?;
        if id == 0 {
            return Err("node ids start at 1".into());
        }
        let addr = addr.trim();
        check_addr(addr)?;
        if members.insert(id, addr.to_owned()).is_some() {
            return Err(format!("node {id} is listed twice"));
        }
    }
    if members.is_empty() {
        return Err("no members given".into());
    }
    Ok(Bootstrap(members))
}

impl Config {
    /// Checks what clap cannot; returns a one-line reason.
    pub fn validate(&self) -> Result<(), String> {
        if self.node_id == 0 {
            return Err("--node-id must be 1 or more".into());
        }
        if let Some(Bootstrap(members)) = &self.bootstrap {
            if !members.contains_key(&self.node_id) {
                return Err(format!(
                    "--bootstrap does not list this server's --node-id {}",
                    self.node_id
                ));
            }
        }
        if self.election_timeout < self.heartbeat_interval * 3 {
            return Err(format!(
                "--election-timeout ({}) must be at least three --heartbeat-interval ({})",
                api_spec::format_duration(self.election_timeout),
                api_spec::format_duration(self.heartbeat_interval)
            ));
        }
        if self.http_header_timeout < Duration::from_millis(100)
            || self.http_idle_timeout < Duration::from_millis(100)
        {
            return Err(
                "--http-header-timeout and --http-idle-timeout must be at least 100ms".into(),
            );
        }
        if self.heartbeat_interval.is_zero() || self.lease_tick.is_zero() {
            return Err("--heartbeat-interval and --lease-tick must be more than zero".into());
        }
        if let Some(join) = &self.join {
            check_addr(join).map_err(|e| format!("--join: {e}"))?;
        }
        if self.cluster_secret.as_deref().is_some_and(str::is_empty) {
            return Err("--cluster-secret must not be empty".into());
        }
        if let Some(advertise) = &self.advertise {
            check_addr(advertise).map_err(|e| format!("--advertise: {e}"))?;
        }
        if let Some(peer) = &self.peer_listen {
            check_addr(peer).map_err(|e| format!("--peer-listen: {e}"))?;
        }
        if let Some(dns) = &self.dns_listen {
            check_addr(dns).map_err(|e| format!("--dns-listen: {e}"))?;
        }
        if self.dns_ttl.subsec_nanos() != 0 || self.dns_ttl > MAX_DNS_TTL {
            return Err(format!(
                "--dns-ttl ({}) must be whole seconds, at most {}",
                api_spec::format_duration(self.dns_ttl),
                api_spec::format_duration(MAX_DNS_TTL)
            ));
        }
        if let Some(secret) = &self.acl_bootstrap_token {
            api_spec::rules::secret(secret).map_err(|e| {
                format!("--acl-bootstrap-token (REGISTRY_ACL_BOOTSTRAP_TOKEN): {e}")
            })?;
        }
        if self.propose_timeout < Duration::from_millis(100)
            || self.propose_timeout >= Duration::from_secs(10)
        {
            return Err(format!(
                "--propose-timeout ({}) must be at least 100ms and under 10s (a forwarded \
                 write waits 10s for the leader's answer)",
                api_spec::format_duration(self.propose_timeout)
            ));
        }
        Ok(())
    }

    /// The address to bind for clients (and peers, without --peer-listen).
    pub fn listen_addr(&self) -> String {
        if let Some(listen) = &self.listen {
            return listen.clone();
        }
        if self.peer_listen.is_some() {
            // The --bootstrap entries are member (peer) addresses then.
            return DEFAULT_LISTEN.to_owned();
        }
        match &self.bootstrap {
            Some(Bootstrap(members)) => members.get(&self.node_id).cloned(),
            None => None,
        }
        .unwrap_or_else(|| DEFAULT_LISTEN.to_owned())
    }

    /// The address to advertise, given the address actually bound.
    pub fn advertise_addr(&self, bound: SocketAddr) -> Result<String, String> {
        if self.cluster_secret.as_deref().is_some_and(str::is_empty) {
            return Err("--cluster-secret must not be empty".into());
        }
        if let Some(advertise) = &self.advertise {
            return Ok(advertise.clone());
        }
        if bound.ip().is_unspecified() {
            return Err(format!(
                "listening on {bound}: set --advertise to the address others reach this server at"
            ));
        }
        Ok(bound.to_string())
    }

    /// Whether peers prove who they are: with the cluster secret, or with certificates
    /// verified against `--tls-ca`.
    pub fn peers_authenticated(&self) -> bool {
        self.cluster_secret.is_some() || (self.tls_cert.is_some() && self.tls_ca.is_some())
    }

    /// Refuses to run a cluster whose node-to-node traffic anyone on a network could
    /// send: without a cluster secret or `--tls-ca`, every member address (this server's, the
    /// `--bootstrap` and `--join` ones, and the `stored` membership) must be loopback.
    pub fn require_peer_auth<'a>(
        &'a self,
        advertise: &'a str,
        stored: impl IntoIterator<Item = &'a str>,
    ) -> Result<(), String> {
        if self.peers_authenticated() {
            return Ok(());
        }
        let initial = self
            .bootstrap
            .iter()
            .flat_map(|Bootstrap(members)| members.values().map(String::as_str));
        let open = std::iter::once(advertise)
            .chain(initial)
            .chain(self.join.as_deref())
            .chain(stored)
            .find(|addr| !is_loopback(addr));
        match open {
            None => Ok(()),
            Some(addr) => Err(format!(
                "refusing to start without a cluster secret: member address {addr} is not loopback, \
                 so anyone who can reach it could send Raft and forwarding calls; set \
                 --cluster-secret (or REGISTRY_CLUSTER_SECRET) to the same secret on every \
                 server, or give every server TLS certificates and --tls-ca"
            )),
        }
    }

    /// The TLS files, when TLS is on.
    pub fn tls_files(&self) -> Option<crate::tls::TlsFiles> {
        match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Some(crate::tls::TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
                ca: self.tls_ca.clone(),
                verify_clients: self.tls_verify_clients,
            }),
            _ => None,
        }
    }

    /// The ACL settings these flags describe.
    pub fn authority(&self) -> crate::replicated::acl::Authority {
        crate::replicated::acl::Authority {
            enabled: self.acl,
            anonymous: self.acl_anonymous.clone().into(),
        }
    }

    /// The DNS zone these flags describe (served with --dns-listen).
    pub fn dns_zone(&self) -> crate::dns::Zone {
        crate::dns::Zone {
            domain: self.dns_domain.clone(),
            // validate() bounds it to MAX_DNS_TTL.
            ttl: u32::try_from(self.dns_ttl.as_secs()).unwrap_or(u32::MAX),
        }
    }

    /// The storm protection settings these flags describe.
    pub fn storm(&self) -> crate::leader::storm::StormConfig {
        crate::leader::storm::StormConfig {
            enabled: !self.no_expiry_storm_protection,
            threshold: self.expiry_storm_threshold,
            window: self.expiry_storm_window,
            rate: self.expiry_storm_rate,
        }
    }

    /// The openraft configuration these flags describe.
    pub fn raft_config(&self) -> Result<openraft::Config, String> {
        let millis = |d: Duration| d.as_millis().max(1) as u64;
        openraft::Config {
            cluster_name: "registry".into(),
            heartbeat_interval: millis(self.heartbeat_interval),
            election_timeout_min: millis(self.election_timeout),
            election_timeout_max: millis(self.election_timeout) * 2,
            install_snapshot_timeout: 10_000,
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(self.snapshot_every),
            max_in_snapshot_log_to_keep: self.snapshot_every.min(1000),
            // A chunk and its framing must fit in one message.
            snapshot_max_chunk_size: (self.raft_max_message_bytes / 2).min(3 * 1024 * 1024),
            ..Default::default()
        }
        .validate()
        .map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Config, String> {
        let config =
            Config::try_parse_from(std::iter::once("registry-server").chain(args.iter().copied()))
                .map_err(|e| e.to_string())?;
        config.validate()?;
        Ok(config)
    }

    #[test]
    fn no_flags_is_a_single_node_on_the_default_port() {
        let c = parse(&[]).unwrap();
        assert_eq!(c.listen_addr(), DEFAULT_LISTEN);
        assert_eq!(c.node_id, 1);
        assert_eq!(c.data_dir, PathBuf::from("./data"));
    }

    #[test]
    fn bootstrap_lists_members_and_sets_listen() {
        let c = parse(&[
            "--node-id",
            "2",
            "--bootstrap",
            "1=127.0.0.1:1,2=127.0.0.1:2,3=127.0.0.1:3",
        ])
        .unwrap();
        assert_eq!(c.bootstrap.as_ref().unwrap().0.len(), 3);
        assert_eq!(c.listen_addr(), "127.0.0.1:2");
    }

    #[test]
    fn bad_flags_are_refused_with_a_reason() {
        assert!(parse(&["--bootstrap", "1=127.0.0.1:1", "--node-id", "2"])
            .unwrap_err()
            .contains("does not list"));
        assert!(parse(&["--bootstrap", "1=nope"])
            .unwrap_err()
            .contains("host:port"));
        assert!(parse(&["--bootstrap", "1=a:1,1=b:2"])
            .unwrap_err()
            .contains("twice"));
        assert!(parse(&["--node-id", "0"]).is_err());
        assert!(parse(&["--election-timeout", "100ms"])
            .unwrap_err()
            .contains("heartbeat"));
        assert!(parse(&["--lease-tick", "5"]).unwrap_err().contains("unit"));
        assert!(parse(&["--join", "x", "--bootstrap", "1=a:1"]).is_err());
        assert!(parse(&["--peer-via", "127.0.0.1:1"]).is_err());
        assert!(parse(&["--peer-via", "127.0.0.1:1=x"]).is_err());
        assert!(parse(&[
            "--peer-via",
            "127.0.0.1:1=127.0.0.1:2,127.0.0.1:1=127.0.0.1:3"
        ])
        .is_err());
        let c = parse(&[
            "--peer-via",
            "127.0.0.1:1=127.0.0.1:2, 127.0.0.1:3=127.0.0.1:4",
        ])
        .unwrap();
        assert_eq!(c.peer_via.unwrap().0.len(), 2);
        assert!(parse(&["--snapshot-every", "0"]).is_err());
        assert!(parse(&["--expiry-storm-threshold", "0"]).is_err());
        assert!(parse(&["--expiry-storm-threshold", "1.5"]).is_err());
        assert!(parse(&["--expiry-storm-rate", "-1"]).is_err());
        assert!(parse(&["--expiry-storm-threshold", "0.3"]).is_ok());
        assert!(parse(&["--propose-timeout", "10s"])
            .unwrap_err()
            .contains("under 10s"));
        assert!(parse(&["--propose-timeout", "1s"]).is_ok());
        assert!(parse(&["--raft-max-message-bytes", "1000"]).is_err());
        assert!(parse(&["--raft-max-message-bytes", "1048576"]).is_ok());
    }

    #[test]
    fn loopback_addresses_are_told_apart() {
        for addr in [
            "127.0.0.1:7400",
            "127.1.2.3:1",
            "localhost:7400",
            "[::1]:7400",
        ] {
            assert!(is_loopback(addr), "{addr}");
        }
        for addr in [
            "10.0.0.1:7400",
            "0.0.0.0:7400",
            "db.example:7400",
            "[fe80::1]:1",
        ] {
            assert!(!is_loopback(addr), "{addr}");
        }
    }

    #[test]
    fn a_cluster_with_a_non_loopback_member_needs_a_secret() {
        let open = parse(&["--bootstrap", "1=127.0.0.1:1,2=10.0.0.2:1"]).unwrap();
        let err = open
            .require_peer_auth("127.0.0.1:1", std::iter::empty())
            .unwrap_err();
        assert!(
            err.contains("10.0.0.2:1") && err.contains("--cluster-secret"),
            "{err}"
        );
        let local = parse(&["--bootstrap", "1=127.0.0.1:1,2=127.0.0.1:2"]).unwrap();
        assert!(local
            .require_peer_auth("127.0.0.1:1", std::iter::empty())
            .is_ok());
        // The stored membership counts too, and the join target.
        assert!(local
            .require_peer_auth("127.0.0.1:1", ["192.168.1.9:7400"])
            .is_err());
        let join = parse(&["--join", "10.0.0.9:7400"]).unwrap();
        assert!(join
            .require_peer_auth("127.0.0.1:1", std::iter::empty())
            .is_err());
        let secret = parse(&[
            "--bootstrap",
            "1=127.0.0.1:1,2=10.0.0.2:1",
            "--cluster-secret",
            "s",
        ])
        .unwrap();
        assert!(secret
            .require_peer_auth("127.0.0.1:1", std::iter::empty())
            .is_ok());
    }

    #[test]
    fn with_a_peer_listener_the_bootstrap_entries_are_peer_addresses() {
        let c = parse(&[
            "--bootstrap",
            "1=127.0.0.1:7501,2=127.0.0.1:7502",
            "--peer-listen",
            "127.0.0.1:7501",
        ])
        .unwrap();
        assert_eq!(c.listen_addr(), DEFAULT_LISTEN);
        assert!(parse(&["--peer-listen", "nope"]).is_err());
    }

    #[test]
    fn acl_flags_are_checked() {
        let on = parse(&["--acl", "--acl-anonymous", "service:read,lock:read:jobs"]).unwrap();
        let authority = on.authority();
        assert!(authority.enabled);
        assert_eq!(authority.anonymous.len(), 2);
        assert!(
            parse(&["--acl-anonymous", "service:read"]).is_err(),
            "needs --acl"
        );
        assert!(parse(&["--acl", "--acl-anonymous", "service:admin"]).is_err());
        let short = parse(&["--acl", "--acl-bootstrap-token", "too-short"]).unwrap_err();
        assert!(short.contains("16"), "{short}");
        assert!(parse(&["--acl", "--acl-bootstrap-token", "long-enough-secret-123"]).is_ok());
        assert!(!parse(&[]).unwrap().authority().enabled);
    }

    #[test]
    fn dns_flags_are_checked() {
        let off = parse(&[]).unwrap();
        assert!(off.dns_listen.is_none());
        assert_eq!(off.dns_zone().domain.to_ascii(), "registry.");
        assert_eq!(off.dns_zone().ttl, 0);
        let on = parse(&[
            "--dns-listen",
            "127.0.0.1:8600",
            "--dns-domain",
            "Disco.Example",
            "--dns-ttl",
            "30s",
        ])
        .unwrap();
        assert_eq!(on.dns_zone().domain.to_ascii(), "disco.example.");
        assert_eq!(on.dns_zone().ttl, 30);
        let dns = |extra: &[&str]| {
            let args: Vec<&str> = ["--dns-listen", "127.0.0.1:8600"]
                .iter()
                .chain(extra)
                .copied()
                .collect();
            parse(&args)
        };
        assert!(dns(&["--dns-domain", "not a name"]).is_err());
        assert!(dns(&["--dns-domain", "."]).is_err());
        let sub_second = dns(&["--dns-ttl", "1500ms"]).unwrap_err();
        assert!(sub_second.contains("whole seconds"), "{sub_second}");
        assert!(dns(&["--dns-ttl", "2h"]).is_err());
        assert!(dns(&["--dns-ttl", "1h"]).is_ok());
        assert!(parse(&["--dns-listen", "nope"])
            .unwrap_err()
            .contains("--dns-listen"));
        assert!(
            parse(&["--dns-domain", "consul"]).is_err(),
            "needs --dns-listen"
        );
    }

    #[test]
    fn unspecified_listen_needs_advertise() {
        let c = parse(&["--listen", "0.0.0.0:7400"]).unwrap();
        assert!(c.advertise_addr("0.0.0.0:7400".parse().unwrap()).is_err());
        assert_eq!(
            c.advertise_addr("127.0.0.1:9".parse().unwrap()).unwrap(),
            "127.0.0.1:9"
        );
    }

    #[test]
    fn raft_config_follows_flags() {
        let c = parse(&[
            "--election-timeout",
            "500ms",
            "--heartbeat-interval",
            "50ms",
        ])
        .unwrap();
        let r = c.raft_config().unwrap();
        assert_eq!(
            (
                r.election_timeout_min,
                r.election_timeout_max,
                r.heartbeat_interval
            ),
            (500, 1000, 50)
        );
    }
}
