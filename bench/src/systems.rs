//! The two systems under test as clusters of local processes on 127.0.0.1: `registry-server`
//! nodes and `etcd` members, each in a temporary directory, started, probed until a leader
//! is known, and always stopped (SIGTERM, then SIGKILL) when dropped.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{anyhow, bail, ensure, Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;
use tempfile::TempDir;

/// How long a cluster may take to come up with a leader.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a stopped process gets to exit after SIGTERM before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(3);
/// Timeout of one readiness probe.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Which system a cluster runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Side {
    Registry,
    Etcd,
}

impl Side {
    pub fn name(self) -> &'static str {
        match self {
            Side::Registry => "registry",
            Side::Etcd => "etcd",
        }
    }
}

/// A free loopback port: bind port 0, note the port, release it. Both systems need every
/// member's address before any starts, so they cannot bind port 0 themselves; another
/// process could take the port in between, which is rare enough on a bench machine.
pub fn free_port() -> Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("bind 127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

/// One server process with its log file; stopped when dropped.
#[derive(Debug)]
struct Process {
    /// What it is, for messages ("registry node 2").
    label: String,
    /// Where its stdout and stderr go.
    log: PathBuf,
    /// The running process; `None` once it has been killed and reaped.
    child: Option<Child>,
    /// What it was started with, to start it again ([`Process::respawn`]).
    program: PathBuf,
    args: Vec<String>,
}

/// How a process stopped when asked to ([`Registry::terminate`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stopped {
    /// From the SIGTERM until it had exited (or was killed).
    pub after: Duration,
    /// It did not exit within the grace period and was SIGKILLed.
    pub killed: bool,
}

impl Process {
    fn spawn(label: String, program: &Path, args: &[String], log: PathBuf) -> Result<Process> {
        let out = File::create(&log).with_context(|| format!("create {}", log.display()))?;
        let child = Process::start_child(&label, program, args, out)?;
        Ok(Process {
            label,
            log,
            child: Some(child),
            program: program.to_owned(),
            args: args.to_vec(),
        })
    }

    fn start_child(label: &str, program: &Path, args: &[String], out: File) -> Result<Child> {
        let err = out.try_clone()?;
        Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("start {label} ({})", program.display()))
    }

    /// Starts the process again with the same program and arguments, appending to its log.
    fn respawn(&mut self) -> Result<()> {
        ensure!(self.child.is_none(), "{} is still running", self.label);
        let out = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(&self.log)
            .with_context(|| format!("open {}", self.log.display()))?;
        self.child = Some(Process::start_child(
            &self.label,
            &self.program,
            &self.args,
            out,
        )?);
        Ok(())
    }

    /// SIGTERM, then waits up to `grace` for the process to exit, then SIGKILL.
    async fn terminate(&mut self, grace: Duration) -> Result<Stopped> {
        let child = self
            .child
            .as_mut()
            .with_context(|| format!("{} is not running", self.label))?;
        let started = std::time::Instant::now();
        let pid = i32::try_from(child.id()).context("pid out of range")?;
        kill(Pid::from_raw(pid), Signal::SIGTERM)
            .with_context(|| format!("SIGTERM {}", self.label))?;
        while started.elapsed() < grace {
            if child.try_wait()?.is_some() {
                self.child = None;
                return Ok(Stopped {
                    after: started.elapsed(),
                    killed: false,
                });
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.kill()?;
        Ok(Stopped {
            after: started.elapsed(),
            killed: true,
        })
    }

    /// Fails if the process has exited (with the tail of its log).
    fn ensure_running(&mut self) -> Result<()> {
        let Some(child) = self.child.as_mut() else {
            bail!("{} was killed", self.label);
        };
        if let Some(status) = child.try_wait()? {
            bail!(
                "{} exited ({status}); log tail:\n{}",
                self.label,
                log_tail(&self.log, 20)
            );
        }
        Ok(())
    }

    fn is_running(&self) -> bool {
        self.child.is_some()
    }

    fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGKILL, as a crash would.
    fn kill(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            child
                .kill()
                .with_context(|| format!("kill {}", self.label))?;
            child.wait()?;
        }
        Ok(())
    }

    /// SIGTERM, then SIGKILL if it has not exited within [`STOP_GRACE`].
    fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Ok(pid) = i32::try_from(child.id()) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
        }
        let deadline = std::time::Instant::now() + STOP_GRACE;
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.stop();
    }
}

fn log_tail(path: &Path, lines: usize) -> String {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(e) => format!("(no log: {e})"),
    }
}

/// Polls `probe` until it succeeds or `timeout` passes; the error names the last failure.
async fn wait_until<T, F, Fut>(timeout: Duration, what: &str, mut probe: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match probe().await {
            Ok(value) => return Ok(value),
            Err(e) if tokio::time::Instant::now() >= deadline => {
                return Err(e.context(format!("timed out after {timeout:?} waiting for {what}")))
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

fn probe_client(ca_pem: Option<&str>) -> Result<reqwest::Client> {
    let mut builder = reqwest::Client::builder().timeout(PROBE_TIMEOUT);
    if let Some(pem) = ca_pem {
        builder = builder
            .tls_built_in_root_certs(false)
            .add_root_certificate(reqwest::Certificate::from_pem(pem.as_bytes())?);
    }
    builder.build().context("build probe client")
}

/// First line of `program --version`, for the results' metadata.
pub fn version_of(program: &Path) -> String {
    match Command::new(program).arg("--version").output() {
        Ok(out) => String::from_utf8_lossy(&out.stdout)
            .lines()
            .next()
            .unwrap_or("")
            .trim()
            .to_owned(),
        Err(e) => format!("unknown ({e})"),
    }
}

/// Processes of a cluster: shared by both systems' runners.
#[derive(Debug)]
struct Members {
    /// Base URLs (`http://127.0.0.1:PORT`) clients use, by member index.
    urls: Vec<String>,
    /// The processes, by member index.
    processes: Vec<Process>,
}

impl Members {
    fn ensure_all_running(&mut self) -> Result<()> {
        for p in &mut self.processes {
            if p.is_running() {
                p.ensure_running()?;
            }
        }
        Ok(())
    }

    /// The process id of member `i`, if it is running.
    fn pid(&self, i: usize) -> Option<u32> {
        self.processes.get(i).and_then(Process::pid)
    }

    fn running(&self) -> Vec<usize> {
        (0..self.processes.len())
            .filter(|&i| self.processes[i].is_running())
            .collect()
    }
}

/// A cluster of `registry-server` processes.
#[derive(Debug)]
pub struct Registry {
    members: Members,
    /// The CA that signs the nodes' certificates, when they serve TLS.
    ca_pem: Option<String>,
    /// The server executable and the extra flags every node was started with (for nodes
    /// added later).
    bin: PathBuf,
    extra: Vec<String>,
    /// Every node's data dir and log; removed after the processes are gone (declared last).
    dir: TempDir,
}

impl Registry {
    /// Starts `n` nodes (`n == 1`: a single node with only `--listen` and `--data-dir`, as
    /// a developer runs it; otherwise `--bootstrap` with every node) with the server's
    /// default timings, and waits until every node agrees on a leader.
    pub async fn start(bin: &Path, n: usize) -> Result<Registry> {
        Registry::start_with(bin, n, &[]).await
    }

    /// [`Registry::start`] with `extra` flags on every node.
    pub async fn start_with(bin: &Path, n: usize, extra: &[&str]) -> Result<Registry> {
        Registry::start_inner(bin, n, extra, false).await
    }

    /// [`Registry::start_with`] serving TLS: a CA and a certificate per node made here,
    /// `--tls-cert`, `--tls-key` and `--tls-ca` on every node, `https://` URLs.
    pub async fn start_tls(bin: &Path, n: usize, extra: &[&str]) -> Result<Registry> {
        Registry::start_inner(bin, n, extra, true).await
    }

    async fn start_inner(bin: &Path, n: usize, extra: &[&str], tls: bool) -> Result<Registry> {
        ensure!(n >= 1, "a cluster needs at least one node");
        let dir = tempfile::Builder::new()
            .prefix("bench-registry-")
            .tempdir()?;
        let ca = tls.then(crate::certs::Ca::new).transpose()?;
        let ca_path = dir.path().join("ca.pem");
        if let Some(ca) = &ca {
            std::fs::write(&ca_path, ca.cert_pem())?;
        }
        let ports: Vec<u16> = (0..n).map(|_| free_port()).collect::<Result<_>>()?;
        let bootstrap = ports
            .iter()
            .enumerate()
            .map(|(i, port)| format!("{}=127.0.0.1:{port}", i + 1))
            .collect::<Vec<_>>()
            .join(",");
        let mut processes = Vec::new();
        for (i, port) in ports.iter().enumerate() {
            let id = i + 1;
            let mut args = vec![
                "--listen".to_owned(),
                format!("127.0.0.1:{port}"),
                "--data-dir".to_owned(),
                dir.path().join(format!("data-{id}")).display().to_string(),
            ];
            if n > 1 {
                args.extend([
                    "--node-id".to_owned(),
                    id.to_string(),
                    "--bootstrap".to_owned(),
                    bootstrap.clone(),
                ]);
            }
            args.extend(extra.iter().map(|a| (*a).to_owned()));
            if let Some(ca) = &ca {
                let (cert, key) = ca.member("127.0.0.1")?;
                let cert_path = dir.path().join(format!("node-{id}.pem"));
                let key_path = dir.path().join(format!("node-{id}.key"));
                std::fs::write(&cert_path, cert)?;
                std::fs::write(&key_path, key)?;
                for (flag, path) in [
                    ("--tls-cert", &cert_path),
                    ("--tls-key", &key_path),
                    ("--tls-ca", &ca_path),
                ] {
                    args.extend([flag.to_owned(), path.display().to_string()]);
                }
            }
            let log = dir.path().join(format!("node-{id}.log"));
            processes.push(Process::spawn(
                format!("registry node {id}"),
                bin,
                &args,
                log,
            )?);
        }
        let scheme = if tls { "https" } else { "http" };
        let urls = ports
            .iter()
            .map(|p| format!("{scheme}://127.0.0.1:{p}"))
            .collect();
        let mut registry = Registry {
            members: Members { urls, processes },
            ca_pem: ca.map(|ca| ca.cert_pem().to_owned()),
            bin: bin.to_owned(),
            extra: extra.iter().map(|a| (*a).to_owned()).collect(),
            dir,
        };
        registry.wait_for_leader(None).await?;
        Ok(registry)
    }

    /// Base URLs of the nodes, by index.
    pub fn urls(&self) -> &[String] {
        &self.members.urls
    }

    /// The CA (PEM) clients must trust, when the nodes serve TLS.
    pub fn ca_pem(&self) -> Option<&str> {
        self.ca_pem.as_deref()
    }

    /// Where the nodes' logs are.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The index of the leader every running node agrees on (waiting for one), other than
    /// `excluding`.
    pub async fn wait_for_leader(&mut self, excluding: Option<usize>) -> Result<usize> {
        let client = probe_client(self.ca_pem.as_deref())?;
        let members = &mut self.members;
        wait_until(STARTUP_TIMEOUT, "a registry leader", || {
            let client = client.clone();
            let probe = members.ensure_all_running().map(|()| {
                members
                    .running()
                    .into_iter()
                    .map(|i| members.urls[i].clone())
                    .collect::<Vec<_>>()
            });
            async move {
                let urls = probe?;
                let mut leaders = Vec::new();
                for url in &urls {
                    let status: Value = client
                        .get(format!("{url}/v1/cluster"))
                        .send()
                        .await?
                        .error_for_status()?
                        .json()
                        .await?;
                    leaders.push(status["leader"].as_u64());
                }
                let Some(Some(leader)) = leaders.first().copied() else {
                    bail!("no leader known yet");
                };
                ensure!(
                    leaders.iter().all(|l| *l == Some(leader)),
                    "nodes disagree on the leader: {leaders:?}"
                );
                let index = usize::try_from(leader)? - 1;
                ensure!(Some(index) != excluding, "still the old leader");
                Ok(index)
            }
        })
        .await
    }

    /// The process id of member `index`, if it is running (for its RSS).
    pub fn pid(&self, index: usize) -> Option<u32> {
        self.members.pid(index)
    }

    /// SIGKILLs the current leader; returns its index.
    pub async fn kill_leader(&mut self) -> Result<usize> {
        let leader = self.wait_for_leader(None).await?;
        self.members.processes[leader].kill()?;
        Ok(leader)
    }

    fn process(&mut self, index: usize) -> Result<&mut Process> {
        self.members
            .processes
            .get_mut(index)
            .with_context(|| format!("no registry node with index {index}"))
    }

    /// Sends node `index` SIGTERM (a graceful shutdown) and waits up to `grace` for it to
    /// exit, then SIGKILLs it. Its data dir stays, for [`Registry::restart`].
    pub async fn terminate(&mut self, index: usize, grace: Duration) -> Result<Stopped> {
        self.process(index)?.terminate(grace).await
    }

    /// Starts the stopped node `index` again with the arguments it first had (its data dir
    /// and log kept; the log is appended to).
    pub fn restart(&mut self, index: usize) -> Result<()> {
        self.process(index)?.respawn()
    }

    /// Fails if node `index` has exited (with the tail of its log).
    pub fn ensure_running(&mut self, index: usize) -> Result<()> {
        self.process(index)?.ensure_running()
    }

    /// Stops node `index` for good (SIGTERM, then SIGKILL); it stays in [`Registry::urls`].
    pub fn stop(&mut self, index: usize) -> Result<()> {
        self.process(index)?.stop();
        Ok(())
    }

    /// Starts one more server, node id `len + 1`, on a port and data dir of its own, with
    /// the flags every node was started with and `extra` (`--join ADDR`, say). It is not
    /// a member until it joins or is added. Returns its index (its id minus one).
    pub fn add_node(&mut self, extra: &[String]) -> Result<usize> {
        ensure!(
            self.ca_pem.is_none(),
            "adding a node to a TLS cluster is not supported"
        );
        let index = self.members.processes.len();
        let id = index + 1;
        let port = free_port()?;
        let mut args = vec![
            "--listen".to_owned(),
            format!("127.0.0.1:{port}"),
            "--data-dir".to_owned(),
            self.data_dir(index).display().to_string(),
            "--node-id".to_owned(),
            id.to_string(),
        ];
        args.extend(self.extra.iter().cloned());
        args.extend(extra.iter().cloned());
        let log = self.dir.path().join(format!("node-{id}.log"));
        let process = Process::spawn(format!("registry node {id}"), &self.bin, &args, log)?;
        self.members.processes.push(process);
        self.members.urls.push(format!("http://127.0.0.1:{port}"));
        Ok(index)
    }

    /// The data dir of node `index` (`--data-dir`).
    pub fn data_dir(&self, index: usize) -> PathBuf {
        self.dir.path().join(format!("data-{}", index + 1))
    }

    /// The `host:port` node `index` listens on (its member address).
    pub fn addr(&self, index: usize) -> Option<String> {
        self.members.urls.get(index).map(|url| {
            url.trim_start_matches("http://")
                .trim_start_matches("https://")
                .to_owned()
        })
    }
}

/// A cluster of `etcd` members.
#[derive(Debug)]
pub struct Etcd {
    members: Members,
    /// Every member's data dir and log; removed after the processes are gone (declared
    /// last).
    dir: TempDir,
}

impl Etcd {
    /// Starts `n` members as a new cluster with etcd's default timings (and fsync on, as
    /// the registry has), and waits until every member is healthy.
    pub async fn start(bin: &Path, n: usize) -> Result<Etcd> {
        ensure!(n >= 1, "a cluster needs at least one member");
        let dir = tempfile::Builder::new().prefix("bench-etcd-").tempdir()?;
        let ports: Vec<(u16, u16)> = (0..n)
            .map(|_| Ok((free_port()?, free_port()?)))
            .collect::<Result<_>>()?;
        let initial_cluster = ports
            .iter()
            .enumerate()
            .map(|(i, (_, peer))| format!("e{}=http://127.0.0.1:{peer}", i + 1))
            .collect::<Vec<_>>()
            .join(",");
        let mut processes = Vec::new();
        for (i, (client, peer)) in ports.iter().enumerate() {
            let name = format!("e{}", i + 1);
            let client_url = format!("http://127.0.0.1:{client}");
            let peer_url = format!("http://127.0.0.1:{peer}");
            let args: Vec<String> = [
                "--name",
                &name,
                "--data-dir",
                &dir.path()
                    .join(format!("data-{name}"))
                    .display()
                    .to_string(),
                "--listen-client-urls",
                &client_url,
                "--advertise-client-urls",
                &client_url,
                "--listen-peer-urls",
                &peer_url,
                "--initial-advertise-peer-urls",
                &peer_url,
                "--initial-cluster",
                &initial_cluster,
                "--initial-cluster-state",
                "new",
                "--initial-cluster-token",
                "bench",
                "--logger",
                "zap",
                "--log-level",
                "warn",
            ]
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
            let log = dir.path().join(format!("{name}.log"));
            processes.push(Process::spawn(
                format!("etcd member {name}"),
                bin,
                &args,
                log,
            )?);
        }
        let urls = ports
            .iter()
            .map(|(client, _)| format!("http://127.0.0.1:{client}"))
            .collect();
        let mut etcd = Etcd {
            members: Members { urls, processes },
            dir,
        };
        etcd.wait_for_leader(None).await?;
        Ok(etcd)
    }

    /// Base URLs of the members' client ports, by index.
    pub fn urls(&self) -> &[String] {
        &self.members.urls
    }

    /// Where the members' logs are.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The index of the leader every running member reports as healthy and agrees on
    /// (waiting for one), other than `excluding`.
    pub async fn wait_for_leader(&mut self, excluding: Option<usize>) -> Result<usize> {
        let client = probe_client(None)?;
        let members = &mut self.members;
        wait_until(STARTUP_TIMEOUT, "an etcd leader", || {
            let client = client.clone();
            let probe = members
                .ensure_all_running()
                .map(|()| (members.running(), members.urls.clone()));
            async move {
                let (running, urls) = probe?;
                let mut leaders = Vec::new();
                let mut member_ids = vec![None; urls.len()];
                for &i in &running {
                    let health: Value = client
                        .get(format!("{}/health", urls[i]))
                        .send()
                        .await?
                        .json()
                        .await?;
                    ensure!(
                        health["health"] == "true",
                        "member {i} not healthy: {health}"
                    );
                    let status: Value = client
                        .post(format!("{}/v3/maintenance/status", urls[i]))
                        .json(&serde_json::json!({}))
                        .send()
                        .await?
                        .error_for_status()?
                        .json()
                        .await?;
                    // uint64 fields are strings in the gateway's JSON.
                    member_ids[i] = status["header"]["member_id"].as_str().map(str::to_owned);
                    leaders.push(status["leader"].as_str().map(str::to_owned));
                }
                let Some(Some(leader)) = leaders.first().cloned() else {
                    bail!("no leader known yet");
                };
                ensure!(
                    leaders
                        .iter()
                        .all(|l| l.as_deref() == Some(leader.as_str())),
                    "members disagree on the leader: {leaders:?}"
                );
                let index = member_ids
                    .iter()
                    .position(|id| id.as_deref() == Some(leader.as_str()))
                    .ok_or_else(|| anyhow!("leader {leader} is not a running member"))?;
                ensure!(Some(index) != excluding, "still the old leader");
                Ok(index)
            }
        })
        .await
    }

    /// The process id of member `index`, if it is running (for its RSS).
    pub fn pid(&self, index: usize) -> Option<u32> {
        self.members.pid(index)
    }

    /// SIGKILLs the current leader; returns its index.
    pub async fn kill_leader(&mut self) -> Result<usize> {
        let leader = self.wait_for_leader(None).await?;
        self.members.processes[leader].kill()?;
        Ok(leader)
    }
}
