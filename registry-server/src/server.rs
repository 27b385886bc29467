//! Starting and stopping one server: storage, Raft, HTTP, background tasks.

use std::collections::BTreeMap;
use std::future::Future;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context};
use openraft::error::{InitializeError, RaftError};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::app::{App, AppConfig, AppError, Forward, ForwardAnswer, Wiring};
use crate::config::{Bootstrap, Config};
use crate::leader::lease_clock::LeaseClock;
use crate::listener::{ConnectionCount, ListenerConfig};
use crate::raft::network::{paths, Network, PeerClient, PeerError};
use crate::raft::store::log::{open_db, DbMemoryConfig, LogStore};
use crate::raft::store::state_machine::StateMachineStore;
use crate::raft::types::{Node, NodeId, Raft};
use crate::watch::Watches;

/// How long in-flight requests may run after a shutdown signal before being cut off.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Runs the server until `shutdown` resolves.
pub async fn run(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    config.validate().map_err(|e| anyhow!(e))?;
    let tls = config
        .tls_files()
        .map(crate::tls::Tls::load)
        .transpose()
        .map_err(|e| anyhow!(e))?;
    crate::listener::raise_open_file_limit();
    let raft_config = Arc::new(config.raft_config().map_err(|e| anyhow!(e))?);

    let listen = config.listen_addr();
    let listener = TcpListener::bind(&listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    let bound = listener.local_addr()?;
    let peer_listener = match &config.peer_listen {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on --peer-listen {addr}"))?,
        ),
        None => None,
    };
    let dns_sockets = match &config.dns_listen {
        Some(addr) => Some(
            crate::dns::DnsSockets::bind(addr)
                .await
                .with_context(|| format!("cannot listen on --dns-listen {addr} (UDP and TCP)"))?,
        ),
        None => None,
    };
    let member_bound = match &peer_listener {
        Some(peer) => peer.local_addr()?,
        None => bound,
    };
    let advertise = config
        .advertise_addr(member_bound)
        .map_err(|e| anyhow!(e))?;
    if let Some(tls) = &tls {
        tls.check_own_certificate(&advertise)
            .map_err(|e| anyhow!(e))?;
    }

    let data_dir = &config.data_dir;
    if let Some(file) = &config.restore {
        restore(file, data_dir, config.node_id, &advertise)?;
    }
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("cannot create data dir {}", data_dir.display()))?;
    claim_data_dir(data_dir, config.node_id)?;

    let memory = DbMemoryConfig {
        write_buffer_bytes: usize::try_from(config.rocksdb_write_buffer_bytes)
            .unwrap_or(usize::MAX),
        block_cache_bytes: usize::try_from(config.rocksdb_block_cache_bytes).unwrap_or(usize::MAX),
    };
    let (db, db_memory) = open_db(&data_dir.join("raft"), memory).map_err(|e| {
        anyhow!(
            "cannot open the Raft log in {}: {e} (is another server using this data dir?)",
            data_dir.display()
        )
    })?;
    let clock = LeaseClock::default();
    let watches = Watches::default();
    let state_machine =
        StateMachineStore::open(data_dir.join("snapshot"), clock.clone(), watches.clone())
            .with_context(|| format!("cannot load the snapshot in {}", data_dir.display()))?;
    let state = state_machine.shared();
    let peers = PeerClient::new(
        config.cluster_secret.clone(),
        config.peer_via.clone().unwrap_or_default().0,
        usize::try_from(config.raft_max_message_bytes).unwrap_or(usize::MAX),
        tls.as_ref().map(crate::tls::Tls::peer_client),
    )
    .context("cannot build the client for calls to peers")?;
    let log = LogStore::new(db, config.node_id);
    let stamps = log.stamps();
    let network = Network {
        client: peers.clone(),
    };
    let raft = Raft::new(config.node_id, raft_config, network, log, state_machine)
        .await
        .context("cannot start Raft")?;
    let stored: Vec<String> = {
        let metrics = raft.metrics();
        let metrics = metrics.borrow();
        let membership = metrics.membership_config.membership();
        membership
            .nodes()
            .map(|(_, node)| node.addr.clone())
            .collect()
    };
    if let Err(e) = config.require_peer_auth(&advertise, stored.iter().map(String::as_str)) {
        let _ = raft.shutdown().await;
        return Err(anyhow!(e));
    }

    let app_config = AppConfig {
        leader_wait: config.election_timeout * 3,
        proposer: crate::raft::proposer::ProposerConfig {
            timeout: config.propose_timeout,
            max_entry_bytes: config.raft_max_message_bytes / 4,
            queue: usize::try_from(config.max_queued_writes).unwrap_or(usize::MAX),
        },
        storm: config.storm(),
        authority: config.authority(),
        bootstrap_secret: config.acl_bootstrap_token.clone(),
        peers_authenticated: config.peers_authenticated(),
        limits: crate::app::LimitsConfig {
            max_connections: usize::try_from(config.max_connections).unwrap_or(usize::MAX),
            max_blocking_queries: usize::try_from(config.max_blocking_queries)
                .unwrap_or(usize::MAX),
            max_parked_waiters: usize::try_from(config.max_parked_waiters).unwrap_or(usize::MAX),
        },
        metrics_public: config.metrics_public,
        checks: crate::app::ChecksConfig {
            probes: check_probes(&config)?,
            concurrency: usize::try_from(config.check_concurrency).unwrap_or(usize::MAX),
            enabled: !config.no_probes,
        },
    };
    let connections = ConnectionCount::default();
    let peer_connections = peer_listener.as_ref().map(|_| ConnectionCount::default());
    let wiring = Wiring {
        raft: raft.clone(),
        state,
        clock,
        watches,
        peers: peers.clone(),
        stamps,
        connections: connections.clone(),
        peer_connections: peer_connections.clone(),
        db_memory,
    };
    let app = App::new(config.node_id, wiring, app_config);
    crate::metrics::install();
    crate::metrics::watch_leader_changes(&app);

    if !raft.is_initialized().await? {
        match (&config.join, &config.bootstrap) {
            (Some(join), _) => {
                let join = join_cluster(
                    peers,
                    join.clone(),
                    config.node_id,
                    advertise.clone(),
                    config.learner,
                );
                tokio::spawn(join);
            }
            (None, bootstrap) => {
                let members = match bootstrap {
                    Some(Bootstrap(members)) => members.clone(),
                    None => BTreeMap::from([(config.node_id, advertise.clone())]),
                };
                initialize(&raft, members).await?;
            }
        }
    }

    let (stop_tasks, stopped) = watch::channel(false);
    let expiry = tokio::spawn(
        app.clone()
            .run_lease_expiry(config.lease_tick, stopped.clone()),
    );
    let checks = tokio::spawn(app.clone().run_checks(stopped));

    // The DNS interface, with --dns-listen: the server's own handle acts for the
    // anonymous caller, so with ACLs DNS answers what --acl-anonymous may read.
    let dns_bound = dns_sockets.as_ref().and_then(|s| s.local_addr().ok());
    let dns = dns_sockets
        .map(|sockets| crate::dns::DnsServer::start(sockets, app.clone(), config.dns_zone()));

    if let Some(tls) = &tls {
        crate::tls::reload_on_sighup(tls.clone(), advertise.clone());
    }
    let scheme = if tls.is_some() { "https" } else { "http" };
    tracing::info!(
        node_id = config.node_id,
        listen = %bound,
        tls = tls.is_some(),
        verify_clients = config.tls_verify_clients,
        peer_listen = ?peer_listener.as_ref().and_then(|l| l.local_addr().ok()),
        dns_listen = ?dns_bound,
        advertise = %advertise,
        data_dir = %data_dir.display(),
        "registry-server listening on {scheme}://{bound}"
    );
    let max_message = usize::try_from(config.raft_max_message_bytes).unwrap_or(usize::MAX);
    let acceptor = tls.as_ref().map(crate::tls::Tls::acceptor);
    let limits = ListenerConfig {
        max_connections: usize::try_from(config.max_connections).unwrap_or(usize::MAX),
        peer_reserve: 0,
        header_timeout: config.http_header_timeout,
        idle_timeout: config.http_idle_timeout,
        drain_timeout: DRAIN_TIMEOUT,
        request_timeout: config.request_timeout,
    };
    match peer_listener {
        None => {
            let router =
                crate::http::router(app.clone(), config.cluster_secret.clone(), max_message);
            // Clients and peers share this listener: keep some connections for peers.
            let shared = ListenerConfig {
                peer_reserve: crate::listener::PEER_RESERVE,
                ..limits
            };
            crate::listener::serve(listener, router, shared, connections, acceptor, shutdown).await;
        }
        Some(peer_listener) => {
            // One shutdown signal for both listeners.
            let (stop, stopped) = watch::channel(false);
            tokio::spawn(async move {
                shutdown.await;
                let _ = stop.send(true);
            });
            let signal = |mut rx: watch::Receiver<bool>| async move {
                let _ = rx.wait_for(|stop| *stop).await;
            };
            let public = crate::listener::serve(
                listener,
                crate::http::public_router(app.clone()),
                limits,
                connections,
                acceptor.clone(),
                signal(stopped.clone()),
            );
            let peers = crate::listener::serve(
                peer_listener,
                crate::http::peer_router(app.clone(), config.cluster_secret.clone(), max_message),
                limits,
                peer_connections.unwrap_or_default(),
                acceptor,
                signal(stopped),
            );
            tokio::join!(public, peers);
        }
    }

    if let Some(dns) = dns {
        dns.stop().await;
    }
    let _ = stop_tasks.send(true);
    let _ = expiry.await;
    let _ = checks.await;
    raft.shutdown()
        .await
        .map_err(|e| anyhow!("stopping Raft: {e}"))?;
    tracing::info!("stopped");
    Ok(())
}

/// The active checks' probe runners: https checks trust the Mozilla roots and, with
/// `--tls-ca`, that bundle too (so targets with certificates of the cluster's own CA
/// verify).
fn check_probes(config: &Config) -> anyhow::Result<crate::health::probe::Probes> {
    let ca = match &config.tls_ca {
        Some(path) => Some(
            std::fs::read(path)
                .with_context(|| format!("--tls-ca {}: cannot read it", path.display()))?,
        ),
        None => None,
    };
    crate::health::probe::Probes::new(ca.as_deref())
        .map_err(|e| anyhow!("the active checks' HTTP client: {e}"))
}

/// Restores the backup at `file` into `data_dir` (`--restore`), unless the data dir
/// already holds what an earlier start restored from it.
fn restore(file: &Path, data_dir: &Path, node_id: NodeId, advertise: &str) -> anyhow::Result<()> {
    use crate::raft::store::backup;
    let restored_before = data_dir.join("node-id").exists()
        && !backup::is_empty_dir(&data_dir.join("snapshot")).map_err(|e| anyhow!(e))?;
    if restored_before {
        tracing::info!(
            file = %file.display(),
            "--restore: the data dir already holds a cluster (restored earlier?); starting it as it is"
        );
        return Ok(());
    }
    let summary = backup::restore(file, data_dir, node_id, advertise).map_err(|e| anyhow!(e))?;
    tracing::info!(
        file = %file.display(),
        index = summary.index,
        services = summary.services,
        instances = summary.instances,
        leases = summary.leases,
        locks = summary.locks,
        last_fencing_token = summary.last_fencing_token,
        "restored a backup: this server is a new one-node cluster; add servers with --join"
    );
    Ok(())
}

/// Records which node a data dir belongs to on first use, and refuses to start another
/// node id on it later: a server that came up with someone else's Raft log and vote would
/// break the cluster's safety.
fn claim_data_dir(data_dir: &Path, node_id: u64) -> anyhow::Result<()> {
    let path = data_dir.join("node-id");
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let owner: u64 = text
                .trim()
                .parse()
                .map_err(|_| anyhow!("{} is corrupt: {text:?}", path.display()))?;
            if owner != node_id {
                return Err(anyhow!(
                    "data dir {} belongs to node {owner}, not --node-id {node_id}: start with \
                     --node-id {owner}, or give this node its own --data-dir",
                    data_dir.display()
                ));
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let write = || -> std::io::Result<()> {
                let mut file = std::fs::File::create(&path)?;
                file.write_all(format!("{node_id}\n").as_bytes())?;
                file.sync_all()
            };
            write().with_context(|| format!("cannot write to data dir {}", data_dir.display()))
        }
        Err(e) => Err(anyhow!("cannot read {}: {e}", path.display())),
    }
}

async fn initialize(raft: &Raft, members: BTreeMap<u64, String>) -> anyhow::Result<()> {
    let nodes: BTreeMap<u64, Node> = members
        .into_iter()
        .map(|(id, addr)| (id, Node { addr }))
        .collect();
    tracing::info!(members = ?nodes.keys().collect::<Vec<_>>(), "initialising a new cluster");
    match raft.initialize(nodes).await {
        Ok(()) => Ok(()),
        // Another member's log already reached us: the cluster exists, nothing to do.
        Err(RaftError::APIError(InitializeError::NotAllowed(_))) => Ok(()),
        Err(e) => Err(anyhow!("cannot initialise the cluster: {e}")),
    }
}

/// Asks the cluster at `via` to add this server (as a voter, or a learner), retrying
/// until it answers yes or no.
/// The request goes over the internal route (with the cluster secret), as any other
/// node-to-node call: a joining server is a peer, not an API client, and needs no token.
async fn join_cluster(peers: PeerClient, via: String, id: NodeId, addr: String, learner: bool) {
    let mut target = via.clone();
    let mut delay = Duration::from_millis(200);
    let op = Forward::AddMember { id, addr, learner };
    loop {
        tracing::info!(via = %target, "asking the cluster to add this server");
        let answer = peers
            .call::<Forward, ForwardAnswer>(&target, paths::FORWARD, &op, Duration::from_secs(60))
            .await;
        match answer {
            Ok(Ok(_)) => {
                tracing::info!(via = %target, "joined the cluster");
                return;
            }
            Ok(Err(AppError::NotLeader {
                leader: Some((_, leader)),
            })) => {
                target = leader;
            }
            Ok(Err(e @ (AppError::MembershipConflict(_) | AppError::Denied(_)))) => {
                tracing::error!(via = %target, error = %e, "the cluster refused to add this server");
                return;
            }
            Ok(Err(e)) => {
                tracing::warn!(via = %target, error = %e, "join not accepted yet; retrying");
                target = via.clone();
            }
            Err(e @ PeerError::Rejected { .. }) => {
                tracing::error!(
                    via = %target, error = %e,
                    "the cluster refused this server's call (is --cluster-secret the same on every server?); retrying"
                );
            }
            Err(e) => {
                tracing::warn!(via = %target, error = %e, "cannot reach the cluster to join; retrying");
                target = via.clone();
            }
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = terminate => {}
    }
}
