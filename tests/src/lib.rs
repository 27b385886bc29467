//! Harness for tests against real `registry-server` processes on 127.0.0.1: start a
//! cluster, kill, stop and restart its nodes, and wait for conditions.
//!
//! Every process gets its own data dir and log file under one temporary directory per
//! [`Cluster`]. Dropping the cluster SIGKILLs whatever still runs and removes the
//! directory; if the test is panicking it first prints the tail of every node's log.
//!
//! The server binary is `$REGISTRY_SERVER_BIN` if set, else `target/<profile>/registry-server`
//! next to the test executable. `cargo test --workspace` builds it; `cargo test -p tests`
//! alone does not (and may run an old one): build it with `cargo build -p registry-server`.

pub mod faults;
pub mod history;
pub mod linearizable;
pub mod proxy;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs::File;
use std::future::Future;
use std::io::Write as _;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context as _, Result};
use api_spec::{ClusterStatus, Role};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use registry_client::Client;
use tempfile::TempDir;

/// `--heartbeat-interval` every node gets unless the test passes its own.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_millis(100);
/// `--election-timeout` every node gets unless the test passes its own: short so a
/// failover takes a second or two, long enough for a loaded 2-core CI machine not to
/// call spurious elections.
pub const ELECTION_TIMEOUT: Duration = Duration::from_secs(1);
/// The longest election timeout the server draws (it picks up to twice the minimum).
pub const ELECTION_TIMEOUT_MAX: Duration = Duration::from_secs(2);
/// `--lease-tick` every node gets unless the test passes its own.
pub const LEASE_TICK: Duration = Duration::from_millis(100);

/// How often [`wait_until`] probes.
pub const POLL_INTERVAL: Duration = Duration::from_millis(100);
/// How long a harness probe waits for one HTTP answer. Short, so that a hung node
/// costs one probe, not the whole deadline.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long [`Cluster::start`] and [`Cluster::restart_all`] wait for an agreed leader.
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a process gets to exit after SIGTERM or SIGKILL before it counts as hung.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);
/// Lines of each node's log printed when a test fails.
const LOG_TAIL_LINES: usize = 60;

/// Runs `probe` every [`POLL_INTERVAL`] until it returns `Ok`, and returns that value.
/// An `Err` means "not yet"; the last one is reported if `timeout` passes first, so
/// make it say what was seen (`anyhow::ensure!(cond, "saw {x}")`).
pub async fn wait_until<T, F, Fut>(timeout: Duration, what: &str, mut probe: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T>>,
{
    let started = Instant::now();
    loop {
        let error = match probe().await {
            Ok(value) => return Ok(value),
            Err(error) => error,
        };
        if started.elapsed() >= timeout {
            bail!("timed out after {timeout:?} waiting for {what}; last attempt: {error:#}");
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// Awaits a test body and panics with its error (and the error's causes) if it fails.
///
/// Tests write their body as `must_pass(async { ...; Ok(()) }).await` while the
/// [`Cluster`] lives outside it, so the panic happens while the cluster still exists and
/// its `Drop` prints every node's log tail. A test that just returned `Err` would drop the
/// cluster first, without a panic, and lose the logs.
pub async fn must_pass(body: impl Future<Output = Result<()>>) {
    if let Err(error) = body.await {
        panic!("{error:#}");
    }
}

/// The `registry-server` executable to run.
pub fn server_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("REGISTRY_SERVER_BIN") {
        let path = PathBuf::from(path);
        assert!(
            path.is_file(),
            "REGISTRY_SERVER_BIN={} is not a file",
            path.display()
        );
        return path;
    }
    // Test executables live in target/<profile>/deps/, binaries (including this crate's
    // own, which use the harness too) in target/<profile>/.
    let exe = std::env::current_exe().expect("cannot find the test executable's path");
    let name = format!("registry-server{}", std::env::consts::EXE_SUFFIX);
    let exe_dir = exe.parent().expect("test executable has no parent");
    let path = [Some(exe_dir), exe_dir.parent()]
        .into_iter()
        .flatten()
        .map(|dir| dir.join(&name))
        .find(|path| path.is_file())
        .unwrap_or_else(|| exe_dir.join(&name));
    assert!(
        path.is_file(),
        "registry-server binary not found at {}: run `cargo build -p registry-server` \
         (or set REGISTRY_SERVER_BIN)",
        path.display()
    );
    path
}

/// A free loopback port: bind port 0, note the port, release it. The server needs its
/// address before it starts (for `--bootstrap`), so it cannot bind port 0 itself; another
/// process could take the port in between, which on a test machine is rare enough.
pub fn free_port() -> Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("bind 127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

/// Free loopback ports for nodes 1..=n, all different (see [`free_port`]): every
/// listener is held until all are picked, since a port released at once may be handed
/// out again by the next bind (two nodes given one port was seen in a fault run).
pub fn free_ports(n: u64) -> Result<BTreeMap<u64, u16>> {
    let held: Vec<std::net::TcpListener> = (1..=n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").context("bind 127.0.0.1:0"))
        .collect::<Result<_>>()?;
    (1..=n)
        .zip(&held)
        .map(|(id, listener)| Ok((id, listener.local_addr()?.port())))
        .collect()
}

/// What a cluster's clients (the harness's own probes included) need to reach servers
/// that serve TLS: the CA that signs their certificates, and a client certificate for
/// servers that require one (`--tls-verify-clients`).
#[derive(Debug, Clone, Default)]
pub struct ClientTls {
    /// PEM.
    pub ca_pem: String,
    /// Certificate chain and private key, PEM.
    pub identity: Option<(String, String)>,
}

impl ClientTls {
    /// A registry client builder over `endpoints` with these settings.
    pub fn builder(&self, endpoints: Vec<String>) -> registry_client::ClientBuilder {
        let endpoints = endpoints.into_iter().map(|addr| format!("https://{addr}"));
        let builder = Client::builder(endpoints).tls_ca_pem(&self.ca_pem);
        match &self.identity {
            Some((chain, key)) => builder.tls_identity_pem(chain, key),
            None => builder,
        }
    }

    /// A plain reqwest client with these settings.
    pub fn http(&self) -> Result<reqwest::Client> {
        let mut builder = reqwest::Client::builder()
            .timeout(PROBE_TIMEOUT)
            .tls_built_in_root_certs(false)
            .add_root_certificate(reqwest::Certificate::from_pem(self.ca_pem.as_bytes())?);
        if let Some((chain, key)) = &self.identity {
            builder = builder.identity(reqwest::Identity::from_pem(
                format!("{chain}{key}").as_bytes(),
            )?);
        }
        Ok(builder.build()?)
    }
}

/// One `registry-server` process slot: the same id, address, data dir and flags across
/// restarts.
#[derive(Debug)]
struct Node {
    /// `127.0.0.1:PORT`: what it listens on and advertises.
    addr: String,
    /// Holds `data/` and `node.log`.
    dir: PathBuf,
    /// Every flag it is started with, reused verbatim by restarts.
    args: Vec<String>,
    /// Environment variables added to its process on every start (e.g. [`faketime_env`]).
    env: Vec<(String, String)>,
    /// The running process, if any. A mutex so `&self` methods (used from concurrent
    /// futures in tests) can reap it; never held across an `.await`.
    child: Mutex<Option<Child>>,
}

impl Node {
    fn log_path(&self) -> PathBuf {
        self.dir.join("node.log")
    }

    fn lock_child(&self) -> std::sync::MutexGuard<'_, Option<Child>> {
        // A panic while holding this lock leaves a valid Option<Child>, so poisoning
        // carries no meaning here.
        self.child
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The last `lines` lines of this node's log, with runs of lines that differ only in
    /// their timestamp folded into one (a dead peer is reported twice a second, which
    /// would otherwise push everything else out of the tail).
    fn log_tail(&self, lines: usize) -> String {
        let bytes = match std::fs::read(self.log_path()) {
            Ok(bytes) => bytes,
            Err(e) => return format!("(no log: {e})"),
        };
        let text = String::from_utf8_lossy(&bytes);
        let mut folded: Vec<(&str, usize)> = Vec::new();
        for line in text.lines() {
            match folded.last_mut() {
                Some((last, count)) if without_timestamp(last) == without_timestamp(line) => {
                    *last = line;
                    *count += 1;
                }
                _ => folded.push((line, 1)),
            }
        }
        folded[folded.len().saturating_sub(lines)..]
            .iter()
            .map(|(line, count)| match count {
                1 => (*line).to_owned(),
                n => format!("{line}\n    (the line above, {n} times)"),
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// `line` without its first word (the timestamp, in the server's log format).
fn without_timestamp(line: &str) -> &str {
    line.split_once(' ').map_or(line, |(_, rest)| rest)
}

/// Per-node setup for [`Cluster::start_with`], beyond the flags every node gets.
#[derive(Debug, Clone, Default)]
pub struct NodeSetup {
    /// Flags added to node `id`'s own.
    pub args: BTreeMap<u64, Vec<String>>,
    /// Environment variables added to node `id`'s process on every start (restarts too).
    pub env: BTreeMap<u64, Vec<(String, String)>>,
    /// Nodes started only once the others agree on a leader, so that one of the others
    /// leads first (they must be a minority). At a fresh start every node stands for
    /// election at once, whatever its timeout, and the last one up tends to win.
    pub late: Vec<u64>,
    /// Peer listeners (`--peer-listen 127.0.0.1:PORT`) by node: when given, `--bootstrap`
    /// lists these as the member addresses, and the ports passed to `start_with` serve
    /// clients only.
    pub peer_ports: BTreeMap<u64, u16>,
    /// The servers serve TLS (their `--tls-*` flags are in `args`): how the harness's
    /// probes and clients reach them.
    pub client_tls: Option<ClientTls>,
}

/// A set of `registry-server` processes on loopback, each in its own data dir.
#[derive(Debug)]
pub struct Cluster {
    /// The executable every node runs.
    bin: PathBuf,
    /// Nodes by id, including stopped ones (their slot is kept for restarts).
    nodes: BTreeMap<u64, Node>,
    /// Flags added to every node's own (timings, `--snapshot-every`, ...).
    common_args: Vec<String>,
    /// How clients reach the nodes when they serve TLS.
    tls: Option<ClientTls>,
    /// Root of every node's directory; removed when the cluster is dropped. Declared
    /// last so it is dropped after the processes are gone.
    dir: TempDir,
}

/// Adds the harness's fast timings to `extra`, except the ones `extra` sets itself
/// (the server refuses a flag given twice).
fn common_args(extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = extra.iter().map(|s| (*s).to_owned()).collect();
    for (flag, value) in [
        ("--heartbeat-interval", HEARTBEAT_INTERVAL),
        ("--election-timeout", ELECTION_TIMEOUT),
        ("--lease-tick", LEASE_TICK),
    ] {
        if !extra.contains(&flag) {
            args.extend([flag.to_owned(), api_spec::format_duration(value)]);
        }
    }
    args
}

impl Cluster {
    /// Starts `n` nodes (ids 1..=n) bootstrapped as one cluster, with `extra_args` on
    /// every node, and waits until all of them report the same leader.
    ///
    /// Ports are picked free and released before the servers bind them, so another
    /// process can take one in between; a node that could not listen is noticed here and
    /// the whole start is tried again on new ports.
    pub async fn start(n: u64, extra_args: &[&str]) -> Result<Cluster> {
        ensure!(n >= 1, "a cluster needs at least one node");
        let mut attempt = 1;
        loop {
            let cluster = Cluster::start_once(n, extra_args).await?;
            if cluster.live_ids().len() as u64 == n {
                return Ok(cluster);
            }
            if attempt == 3 {
                let e = anyhow::anyhow!("only nodes {:?} of {n} kept running", cluster.live_ids());
                return Err(cluster.with_logs(e));
            }
            attempt += 1;
        }
    }

    async fn start_once(n: u64, extra_args: &[&str]) -> Result<Cluster> {
        let ports = free_ports(n)?;
        Cluster::start_on(&ports, extra_args, &BTreeMap::new()).await
    }

    /// Starts nodes `ports.keys()` on the given ports, bootstrapped as one cluster, with
    /// `extra_args` on every node plus `node_args[id]` on node `id`, and waits until all
    /// agree on a leader. One attempt: a node that could not bind its port is noticed
    /// by the caller (`live_ids()` is short), which may try again on other ports.
    pub async fn start_on(
        ports: &BTreeMap<u64, u16>,
        extra_args: &[&str],
        node_args: &BTreeMap<u64, Vec<String>>,
    ) -> Result<Cluster> {
        let setup = NodeSetup {
            args: node_args.clone(),
            ..NodeSetup::default()
        };
        Cluster::start_with(ports, extra_args, &setup).await
    }

    /// [`start_on`](Self::start_on) with more per-node setup: flags, environment (e.g. a
    /// shifted wall clock, [`faketime_env`]) and nodes started only once the others
    /// agree on a leader. One attempt, like `start_on`.
    pub async fn start_with(
        ports: &BTreeMap<u64, u16>,
        extra_args: &[&str],
        setup: &NodeSetup,
    ) -> Result<Cluster> {
        let mut cluster = Cluster::empty(extra_args)?;
        cluster.tls.clone_from(&setup.client_tls);
        let members = if setup.peer_ports.is_empty() {
            ports
        } else {
            &setup.peer_ports
        };
        let bootstrap = members
            .iter()
            .map(|(id, port)| format!("{id}=127.0.0.1:{port}"))
            .collect::<Vec<_>>()
            .join(",");
        for (&id, &port) in ports {
            let id_flag = id.to_string();
            let peer = setup
                .peer_ports
                .get(&id)
                .map(|port| format!("127.0.0.1:{port}"));
            let mut own: Vec<&str> = vec!["--node-id", &id_flag, "--bootstrap", &bootstrap];
            if let Some(peer) = &peer {
                own.extend(["--peer-listen", peer.as_str()]);
            }
            if let Some(more) = setup.args.get(&id) {
                own.extend(more.iter().map(String::as_str));
            }
            cluster.add_node(id, port, &own)?;
            if let Some(env) = setup.env.get(&id) {
                cluster.node_mut(id).env.clone_from(env);
            }
        }
        let (late, first): (Vec<u64>, Vec<u64>) =
            ports.keys().partition(|id| setup.late.contains(id));
        let mut started = Ok(0);
        for group in [first, late] {
            if group.is_empty() || started.is_err() {
                continue;
            }
            for id in group {
                cluster.spawn(id)?;
            }
            started = cluster.wait_for_leader(None, STARTUP_TIMEOUT).await;
        }
        match started {
            Ok(_) => Ok(cluster),
            Err(e) => Err(cluster.with_logs(e)),
        }
    }

    /// Starts one server with only `--listen` and `--data-dir` (plus `extra_args`): the
    /// single-node registry a developer gets without cluster flags. It is node 1 (the
    /// server's default id). Waits until `/readyz` passes.
    pub async fn start_single(extra_args: &[&str]) -> Result<Cluster> {
        Cluster::start_single_with(extra_args, &[]).await
    }

    /// [`start_single`](Self::start_single) with `own_args` given to node 1 only (not to
    /// nodes added later with [`start_joining`](Self::start_joining)), e.g. `--restore`.
    pub async fn start_single_with(extra_args: &[&str], own_args: &[&str]) -> Result<Cluster> {
        let mut cluster = Cluster::empty(&[])?;
        cluster.common_args = extra_args.iter().map(|s| (*s).to_owned()).collect();
        cluster.add_node(1, free_port()?, own_args)?;
        cluster.spawn(1)?;
        let addr = &cluster.addr(1);
        let node = &cluster;
        let ready = wait_until(
            STARTUP_TIMEOUT,
            "the single node to be ready",
            || async move {
                node.ensure_running(1)?;
                let status = http_status(addr, "/readyz").await?;
                ensure!(status == 200, "/readyz answered {status}");
                Ok(())
            },
        )
        .await;
        match ready {
            Ok(()) => Ok(cluster),
            Err(e) => Err(cluster.with_logs(e)),
        }
    }

    fn empty(extra_args: &[&str]) -> Result<Cluster> {
        let dir = tempfile::Builder::new()
            .prefix("registry-cluster-")
            .tempdir()?;
        Ok(Cluster {
            bin: server_binary(),
            nodes: BTreeMap::new(),
            common_args: common_args(extra_args),
            tls: None,
            dir,
        })
    }

    /// Creates the slot for node `id` on `port` with its own flags `own_args` (which
    /// include `--node-id` except for a single node started without it).
    fn add_node(&mut self, id: u64, port: u16, own_args: &[&str]) -> Result<()> {
        ensure!(!self.nodes.contains_key(&id), "node {id} already exists");
        let addr = format!("127.0.0.1:{port}");
        let dir = self.dir.path().join(format!("node-{id}"));
        std::fs::create_dir_all(&dir)?;
        let mut args = vec!["--listen".to_owned(), addr.clone()];
        args.extend([
            "--data-dir".to_owned(),
            dir.join("data").display().to_string(),
        ]);
        args.extend(own_args.iter().map(|s| (*s).to_owned()));
        args.extend(self.common_args.iter().cloned());
        self.nodes.insert(
            id,
            Node {
                addr,
                dir,
                args,
                env: Vec::new(),
                child: Mutex::new(None),
            },
        );
        Ok(())
    }

    fn node(&self, id: u64) -> &Node {
        self.nodes
            .get(&id)
            .unwrap_or_else(|| panic!("no node {id} in this cluster"))
    }

    fn node_mut(&mut self, id: u64) -> &mut Node {
        self.nodes
            .get_mut(&id)
            .unwrap_or_else(|| panic!("no node {id} in this cluster"))
    }

    /// Starts node `id`'s process, appending its stdout and stderr to its log file.
    fn spawn(&self, id: u64) -> Result<()> {
        let node = self.node(id);
        let mut child = node.lock_child();
        ensure!(child.is_none(), "node {id} is already running");
        let mut log = File::options()
            .create(true)
            .append(true)
            .open(node.log_path())
            .context("open log")?;
        let env: String = node.env.iter().map(|(k, v)| format!("{k}={v} ")).collect();
        writeln!(
            log,
            "=== harness: starting node {id}: {env}{}",
            node.args.join(" ")
        )?;
        let stderr = log.try_clone()?;
        let process = Command::new(&self.bin)
            .args(&node.args)
            .env("NO_COLOR", "1")
            .envs(node.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(stderr))
            .spawn()
            .with_context(|| format!("spawn {}", self.bin.display()))?;
        *child = Some(process);
        Ok(())
    }

    /// Fails if node `id` should be running but its process has exited, with the tail
    /// of its log: a crash should fail a test at once, not after a timeout.
    fn ensure_running(&self, id: u64) -> Result<()> {
        let node = self.node(id);
        let mut child = node.lock_child();
        let Some(process) = child.as_mut() else {
            bail!("node {id} is not running")
        };
        if let Some(status) = process.try_wait()? {
            *child = None;
            bail!(
                "node {id} exited unexpectedly ({status}); log tail:\n{}",
                node.log_tail(30)
            );
        }
        Ok(())
    }

    /// Sends `signal` to node `id`'s process.
    /// The process id of node `id`, if it runs (for its RSS in `/proc`).
    pub fn pid(&self, id: u64) -> Option<u32> {
        self.node(id).lock_child().as_ref().map(Child::id)
    }

    fn send_signal(&self, id: u64, signal: Signal) -> Result<()> {
        let child = self.node(id).lock_child();
        let process = child
            .as_ref()
            .ok_or_else(|| anyhow!("node {id} is not running"))?;
        let pid = Pid::from_raw(i32::try_from(process.id())?);
        kill(pid, signal).with_context(|| format!("send {signal} to node {id}"))
    }

    /// Sends `signal` to node `id` and waits up to `timeout` for it to exit.
    async fn signal_and_wait(
        &self,
        id: u64,
        signal: Signal,
        timeout: Duration,
    ) -> Result<ExitStatus> {
        self.send_signal(id, signal)?;
        self.wait_exit(id, timeout).await
    }

    /// Waits up to `timeout` for node `id`'s process to exit, and reaps it.
    async fn wait_exit(&self, id: u64, timeout: Duration) -> Result<ExitStatus> {
        let node = self.node(id);
        let started = Instant::now();
        loop {
            {
                let mut child = node.lock_child();
                if let Some(status) = child.as_mut().map(Child::try_wait).transpose()?.flatten() {
                    *child = None;
                    return Ok(status);
                }
            }
            if started.elapsed() > timeout {
                bail!("node {id} did not exit within {timeout:?} of being signalled");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGKILLs node `id` and waits for it to be gone: a crash, nothing flushed on the
    /// way out.
    pub async fn kill(&self, id: u64) -> Result<()> {
        self.signal_and_wait(id, Signal::SIGKILL, STOP_TIMEOUT)
            .await?;
        Ok(())
    }

    /// SIGSTOPs node `id`: the process freezes with its sockets open (a long GC pause,
    /// a VM stall). Peers and clients see it hang, not fail. [`resume`](Self::resume)
    /// continues it; killing a paused node works as usual.
    pub fn pause(&self, id: u64) -> Result<()> {
        self.send_signal(id, Signal::SIGSTOP)
    }

    /// SIGCONTs node `id` after [`pause`](Self::pause).
    pub fn resume(&self, id: u64) -> Result<()> {
        self.send_signal(id, Signal::SIGCONT)
    }

    /// SIGTERMs node `id` and waits for it to exit; fails if it hangs or exits with
    /// anything but success, since SIGTERM is meant to be a clean shutdown.
    pub async fn stop(&self, id: u64) -> Result<()> {
        match self
            .signal_and_wait(id, Signal::SIGTERM, STOP_TIMEOUT)
            .await
        {
            Ok(status) if status.success() => Ok(()),
            Ok(status) => bail!(
                "node {id} exited with {status} after SIGTERM; log tail:\n{}",
                self.node(id).log_tail(30)
            ),
            Err(e) => {
                // Do not leave a hung process behind for the next step of the test.
                let _ = self
                    .signal_and_wait(id, Signal::SIGKILL, STOP_TIMEOUT)
                    .await;
                Err(e)
            }
        }
    }

    /// Starts node `id` again with the same flags and data dir, and waits until it
    /// serves HTTP (`/healthz`). Whether it has caught up is for the test to wait for.
    pub async fn restart(&self, id: u64) -> Result<()> {
        self.spawn(id)?;
        let what = format!("node {id} to serve /healthz after a restart");
        wait_until(STARTUP_TIMEOUT, &what, || async {
            self.ensure_running(id)?;
            let status = self.status_of(id, "/healthz").await?;
            ensure!(status == 200, "/healthz answered {status}");
            Ok(())
        })
        .await
    }

    /// SIGKILLs every running node, all at once (a power cut).
    pub async fn kill_all(&self) -> Result<()> {
        let ids = self.live_ids();
        for &id in &ids {
            self.send_signal(id, Signal::SIGKILL)?;
        }
        for id in ids {
            self.wait_exit(id, STOP_TIMEOUT).await?;
        }
        Ok(())
    }

    /// SIGTERMs every running node one after the other, each cleanly.
    pub async fn stop_all(&self) -> Result<()> {
        for id in self.live_ids() {
            self.stop(id).await?;
        }
        Ok(())
    }

    /// Starts every stopped node again and waits until all agree on a leader.
    pub async fn restart_all(&self) -> Result<u64> {
        let stopped: Vec<u64> = self
            .nodes
            .keys()
            .copied()
            .filter(|&id| !self.is_running(id))
            .collect();
        for id in stopped {
            self.spawn(id)?;
        }
        self.wait_for_leader(None, STARTUP_TIMEOUT).await
    }

    /// Starts a new node `id` on a fresh port and data dir with `--join <addr of via>`:
    /// it asks the cluster to add it. Returns once it serves `/healthz`.
    pub async fn start_joining(&mut self, id: u64, via: u64) -> Result<()> {
        self.start_joining_with(id, via, &[]).await
    }

    /// [`start_joining`](Self::start_joining) with more flags (e.g. `--learner`).
    pub async fn start_joining_with(&mut self, id: u64, via: u64, extra: &[&str]) -> Result<()> {
        let join = self.addr(via);
        let id_flag = id.to_string();
        let mut args = vec!["--node-id", &id_flag, "--join", &join];
        args.extend_from_slice(extra);
        self.add_node(id, free_port()?, &args)?;
        self.restart(id).await
    }

    /// `127.0.0.1:PORT` of node `id`.
    pub fn addr(&self, id: u64) -> String {
        self.node(id).addr.clone()
    }

    /// Copies every node's whole log into `dir` (created if missing) as `node-ID.log`, so
    /// that they outlive the cluster, whose directory is removed when it is dropped.
    pub fn keep_logs(&self, dir: &std::path::Path) -> Result<()> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        for (id, node) in &self.nodes {
            let to = dir.join(format!("node-{id}.log"));
            std::fs::copy(node.log_path(), &to)
                .with_context(|| format!("copying node {id}'s log to {}", to.display()))?;
        }
        Ok(())
    }

    /// Every node id, running or not.
    pub fn ids(&self) -> Vec<u64> {
        self.nodes.keys().copied().collect()
    }

    /// Whether node `id`'s process is believed to be running (it has not been stopped
    /// or killed by the harness, and has not been seen exiting).
    pub fn is_running(&self, id: u64) -> bool {
        self.node(id).lock_child().is_some()
    }

    /// Ids of the nodes whose process runs.
    pub fn live_ids(&self) -> Vec<u64> {
        self.nodes
            .keys()
            .copied()
            .filter(|&id| self.is_running(id))
            .collect()
    }

    /// A client builder over nodes `ids`, with the cluster's TLS settings.
    fn builder(&self, ids: impl IntoIterator<Item = u64>) -> registry_client::ClientBuilder {
        let addrs: Vec<String> = ids.into_iter().map(|id| self.addr(id)).collect();
        match &self.tls {
            Some(tls) => tls.builder(addrs),
            None => Client::builder(addrs),
        }
    }

    /// A client that talks to node `id` only.
    pub fn client_for(&self, id: u64) -> Client {
        self.builder([id])
            .build()
            .expect("a loopback address is a valid endpoint")
    }

    /// A client over every running node, failing over between them.
    pub fn client(&self) -> Client {
        self.builder(self.live_ids())
            .build()
            .expect("the cluster has no running node")
    }

    /// Node `id`'s own view of the cluster.
    pub async fn status(&self, id: u64) -> Result<ClusterStatus> {
        let probe = self.builder([id]).timeout(PROBE_TIMEOUT).build()?;
        Ok(probe.cluster_status().await?.value)
    }

    /// The status code of `GET {path}` on node `id`, over TLS if the cluster serves it.
    async fn status_of(&self, id: u64, path: &str) -> Result<u16> {
        let addr = self.addr(id);
        match &self.tls {
            None => http_status(&addr, path).await,
            Some(tls) => {
                let response = tls
                    .http()?
                    .get(format!("https://{addr}{path}"))
                    .send()
                    .await?;
                Ok(response.status().as_u16())
            }
        }
    }

    /// Waits up to `timeout` until node `follower` has applied at least as much as node
    /// `leader` had when asked just before it.
    pub async fn wait_caught_up(
        &self,
        follower: u64,
        leader: u64,
        timeout: Duration,
    ) -> Result<()> {
        let what = format!("node {follower} to catch up with node {leader}");
        wait_until(timeout, &what, || async {
            let target = self.status(leader).await?.applied_index;
            let applied = self.status(follower).await?.applied_index;
            ensure!(
                applied >= target,
                "applied {applied}, leader applied {target}"
            );
            Ok(())
        })
        .await
    }

    /// The leader every running node agrees on (waiting for one, see
    /// [`wait_for_leader`](Self::wait_for_leader)).
    pub async fn leader_id(&self) -> Result<u64> {
        self.wait_for_leader(None, STARTUP_TIMEOUT).await
    }

    /// Waits until every running node reports the same leader, that leader is running,
    /// says it is the leader itself, and is not `excluding` (the node just killed, whose
    /// old leadership others may still remember). Fails at once if a node crashes.
    pub async fn wait_for_leader(&self, excluding: Option<u64>, timeout: Duration) -> Result<u64> {
        let what = match excluding {
            Some(old) => format!("a leader other than node {old} agreed by every running node"),
            None => "a leader agreed by every running node".to_owned(),
        };
        wait_until(timeout, &what, || async {
            let live = self.live_ids();
            ensure!(!live.is_empty(), "no node is running");
            let mut answers = BTreeMap::new();
            for &id in &live {
                self.ensure_running(id)?;
                answers.insert(id, self.status(id).await);
            }
            let mut summary = String::new();
            for (id, answer) in &answers {
                match answer {
                    Ok(s) => write!(
                        summary,
                        "[node {id}: role {:?}, leader {:?}, term {}] ",
                        s.role, s.leader, s.term
                    )?,
                    Err(e) => write!(summary, "[node {id}: {e:#}] ")?,
                }
            }
            let leaders: Vec<Option<u64>> = answers
                .values()
                .map(|a| a.as_ref().ok().and_then(|s| s.leader))
                .collect();
            let Some(Some(leader)) = leaders.first().copied() else {
                bail!("{summary}")
            };
            ensure!(
                leaders.iter().all(|l| *l == Some(leader)),
                "no agreement: {summary}"
            );
            ensure!(
                Some(leader) != excluding,
                "still the excluded leader: {summary}"
            );
            let leader_says = answers
                .get(&leader)
                .and_then(|a| a.as_ref().ok())
                .map(|s| s.role);
            ensure!(
                leader_says == Some(Role::Leader),
                "leader is not running or not leading: {summary}"
            );
            Ok(leader)
        })
        .await
    }

    /// Adds every node's log tail to `error`: for failures that happen before a test
    /// body runs (so no panic with a live cluster prints them).
    fn with_logs(&self, error: anyhow::Error) -> anyhow::Error {
        let mut logs = String::new();
        for (id, node) in &self.nodes {
            let _ = write!(
                logs,
                "\n----- node {id} log tail -----\n{}",
                node.log_tail(30)
            );
        }
        anyhow!("{error:#}{logs}")
    }

    /// The last `lines` lines of node `id`'s log, for a test's own failure messages.
    pub fn log_tail(&self, id: u64, lines: usize) -> String {
        self.node(id).log_tail(lines)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for node in self.nodes.values() {
            let mut child = node.lock_child();
            if let Some(mut process) = child.take() {
                // Best effort: the process may have exited on its own already.
                let _ = process.kill();
                let _ = process.wait();
            }
        }
        if std::thread::panicking() {
            for (id, node) in &self.nodes {
                eprintln!(
                    "----- node {id} ({}), last {LOG_TAIL_LINES} log lines ({}) -----\n{}",
                    node.addr,
                    node.log_path().display(),
                    node.log_tail(LOG_TAIL_LINES)
                );
            }
        }
    }
}

/// Where Debian's `libfaketime` package puts the library (`$LIBFAKETIME` overrides it).
fn libfaketime() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("LIBFAKETIME") {
        return Ok(PathBuf::from(path));
    }
    let arch = std::env::consts::ARCH;
    [
        format!("/usr/lib/{arch}-linux-gnu/faketime/libfaketime.so.1"),
        "/usr/lib/faketime/libfaketime.so.1".to_owned(),
        "/usr/local/lib/faketime/libfaketime.so.1".to_owned(),
    ]
    .into_iter()
    .map(PathBuf::from)
    .find(|path| path.is_file())
    .ok_or_else(|| {
        anyhow!(
            "libfaketime not found: install it with scripts/install-deps.sh (or set LIBFAKETIME)"
        )
    })
}

/// Environment that shifts a process's wall clock by `offset` (libfaketime's syntax,
/// e.g. `"+1d"`, `"-1d"`, `"+90s"`) and leaves its monotonic clock alone, for
/// [`Cluster::start_on_with_env`].
///
/// This is what `faketime -f OFFSET CMD` sets up, without the `faketime` wrapper itself:
/// the wrapper forks and waits for its child, so a SIGKILL sent to it would leave the
/// server running. Preloaded directly, the library is in the server's own process, which
/// the harness signals as usual.
pub fn faketime_env(offset: &str) -> Result<Vec<(String, String)>> {
    Ok(vec![
        (
            "LD_PRELOAD".to_owned(),
            libfaketime()?.display().to_string(),
        ),
        ("FAKETIME".to_owned(), offset.to_owned()),
        // Only the wall clock moves: `Instant` (lease countdowns, leader time) stays true.
        ("FAKETIME_DONT_FAKE_MONOTONIC".to_owned(), "1".to_owned()),
    ])
}

/// Runs the server with `args` (and `--listen` on a free port, `--data-dir data_dir`)
/// until it exits, which it must within 10 s and with a failure, and returns its stderr:
/// for start-up errors.
pub fn start_up_failure(data_dir: &std::path::Path, args: &[String]) -> Result<String> {
    let port = free_port()?;
    let mut child = Command::new(server_binary())
        .args(["--listen", &format!("127.0.0.1:{port}"), "--data-dir"])
        .arg(data_dir)
        .args(args)
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while child.try_wait()?.is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("the server did not stop at start-up with {args:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let output = child.wait_with_output()?;
    ensure!(
        !output.status.success(),
        "exited successfully with {args:?}"
    );
    Ok(String::from_utf8_lossy(&output.stderr).into_owned())
}

/// The status code of `GET http://{addr}{path}`, for probes that only care about it.
pub async fn http_status(addr: &str, path: &str) -> Result<u16> {
    let client = reqwest::Client::builder().timeout(PROBE_TIMEOUT).build()?;
    let response = client.get(format!("http://{addr}{path}")).send().await?;
    Ok(response.status().as_u16())
}

/// A request the server must refuse with a JSON error.
#[derive(Debug, Clone)]
pub struct BadRequest {
    /// What the case tries, for the failure report.
    pub name: &'static str,
    pub method: reqwest::Method,
    pub path: String,
    /// `Content-Type` to send; `None` sends none.
    pub content_type: Option<&'static str>,
    pub body: Vec<u8>,
    /// The status and error code the server must answer with.
    pub status: u16,
    pub code: &'static str,
}

/// Sends every case to the server at `addr`. Each must be answered with its status and
/// code in a JSON error body with a message and an `X-Registry-Index` header, and the
/// server must still pass `/healthz` after each. All failures are reported at once.
pub async fn check_bad_requests(addr: &str, cases: &[BadRequest]) -> Result<()> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()?;
    let mut failures = Vec::new();
    for case in cases {
        if let Err(e) = check_bad_request(&http, addr, case).await {
            failures.push(format!(
                "{} ({} {}): {e:#}",
                case.name, case.method, case.path
            ));
        }
        let health = http_status(addr, "/healthz").await;
        ensure!(
            matches!(health, Ok(200)),
            "/healthz after {:?}: {health:?}",
            case.name
        );
    }
    ensure!(
        failures.is_empty(),
        "{} case(s) failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    Ok(())
}

async fn check_bad_request(http: &reqwest::Client, addr: &str, case: &BadRequest) -> Result<()> {
    let mut request = http.request(case.method.clone(), format!("http://{addr}{}", case.path));
    if let Some(content_type) = case.content_type {
        request = request.header(reqwest::header::CONTENT_TYPE, content_type);
    }
    let response = request
        .body(case.body.clone())
        .send()
        .await
        .context("send")?;
    let status = response.status().as_u16();
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let content_type = header(reqwest::header::CONTENT_TYPE.as_str()).unwrap_or_default();
    let index = header(api_spec::INDEX_HEADER);
    let body = response.text().await.context("read the answer")?;
    ensure!(
        status == case.status,
        "status {status}, expected {}; body {body:?}",
        case.status
    );
    ensure!(
        content_type.starts_with("application/json"),
        "content-type {content_type:?}"
    );
    let error: api_spec::ErrorBody =
        serde_json::from_str(&body).with_context(|| format!("not an error body: {body:?}"))?;
    ensure!(
        error.error.code == case.code,
        "code {:?}, expected {:?}",
        error.error.code,
        case.code
    );
    ensure!(!error.error.message.is_empty(), "empty message");
    ensure!(
        index.is_some(),
        "error answer without {}",
        api_spec::INDEX_HEADER
    );
    Ok(())
}
