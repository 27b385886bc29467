//! `regctl` as a user runs it: real `regctl` processes against real `registry-server`
//! processes. Registration round trips in text and JSON, heartbeating, `regctl lock`
//! handing the fencing token to its command and returning its exit code, stopping the
//! command when the lock is lost, passing SIGTERM on, waiting commands taking turns, a
//! lock held under an existing lease that regctl leaves alone (and does not renew), and
//! `regctl elect` / `regctl cluster status` on a three-node cluster (across a failover).
//!
//! The `regctl` binary is `$REGCTL_BIN` if set, else `target/<profile>/regctl` next to the
//! test executable: build it first with `cargo build -p registry-client --bin regctl`
//! (`cargo build --workspace --bins`, as `scripts/test.sh` does, builds it too).

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _, Result};
use api_spec::{ClusterStatus, ElectionInfo, Instance, InstanceStatus, ServiceInstances};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use registry_client::{Client, ReadOptions, ServiceQuery};
use tempfile::TempDir;
use tests::{must_pass, wait_until, Cluster};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// How long one regctl run may take before the test gives up on it.
const RUN_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a change (a file written by the command, a lock changing hands) may take.
const CHANGE_TIMEOUT: Duration = Duration::from_secs(10);
/// regctl's exit code when the lock (or leadership) was lost.
const EXIT_LOST: i32 = 75;

/// The `regctl` executable.
fn regctl_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("REGCTL_BIN") {
        return PathBuf::from(path);
    }
    // Test executables live in target/<profile>/deps/, binaries in target/<profile>/.
    let exe = std::env::current_exe().expect("cannot find the test executable's path");
    let path = exe
        .parent()
        .and_then(Path::parent)
        .expect("test executable has no parent")
        .join(format!("regctl{}", std::env::consts::EXE_SUFFIX));
    assert!(
        path.is_file(),
        "regctl not found at {}: run `cargo build -p registry-client --bin regctl` \
         (or set REGCTL_BIN)",
        path.display()
    );
    path
}

/// `regctl --endpoints <endpoints> args…`, output captured, killed if the test drops it.
fn regctl(endpoints: &str, args: &[&str]) -> Command {
    let mut command = Command::new(regctl_binary());
    command
        .arg("--endpoints")
        .arg(endpoints)
        .args(args)
        .env_remove("REGISTRY_ENDPOINTS")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    command
}

/// What a finished regctl did.
#[derive(Debug)]
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Run {
    fn ensure_code(&self, code: i32, what: &str) -> Result<()> {
        ensure!(
            self.code == Some(code),
            "{what}: exit {:?}, expected {code}\n--- stdout\n{}--- stderr\n{}",
            self.code,
            self.stdout,
            self.stderr
        );
        Ok(())
    }

    fn lines(&self) -> Vec<&str> {
        self.stdout.lines().collect()
    }

    /// An error is one line on stderr, `regctl: <message>`.
    fn ensure_one_error_line(&self, what: &str) -> Result<()> {
        let lines: Vec<&str> = self.stderr.lines().collect();
        ensure!(
            lines.len() == 1 && lines[0].starts_with("regctl: "),
            "{what}: expected one `regctl: ` line on stderr, got {:?}",
            self.stderr
        );
        Ok(())
    }
}

impl From<Output> for Run {
    fn from(output: Output) -> Run {
        Run {
            code: output.status.code(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }
}

/// Waits for a spawned regctl to finish (at most [`RUN_TIMEOUT`]).
async fn finish(child: Child, what: &str) -> Result<Run> {
    let output = tokio::time::timeout(RUN_TIMEOUT, child.wait_with_output())
        .await
        .with_context(|| format!("{what} did not finish within {RUN_TIMEOUT:?}"))?
        .with_context(|| format!("wait for {what}"))?;
    Ok(output.into())
}

async fn run(endpoints: &str, args: &[&str]) -> Result<Run> {
    let what = format!("regctl {}", args.join(" "));
    let child = regctl(endpoints, args)
        .spawn()
        .with_context(|| format!("spawn {what}"))?;
    finish(child, &what).await
}

fn pid_of(child: &Child) -> Result<Pid> {
    let id = child.id().context("the process has exited already")?;
    Ok(Pid::from_raw(i32::try_from(id)?))
}

/// Whether a process with this pid exists (a zombie counts).
fn process_exists(pid: Pid) -> bool {
    kill(pid, None).is_ok()
}

/// Processes in process group `group` that are not zombies, from `/proc`.
fn live_group_members(group: Pid) -> Result<Vec<i32>> {
    let mut members = Vec::new();
    for entry in std::fs::read_dir("/proc")? {
        let entry = entry?;
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        // `pid (comm) state ppid pgrp …`; comm may hold spaces and parentheses.
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue; // gone meanwhile
        };
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        if let [state, _ppid, pgrp, ..] = fields.as_slice() {
            if *pgrp == group.as_raw().to_string() && *state != "Z" {
                members.push(pid);
            }
        }
    }
    Ok(members)
}

/// Waits until `path` exists and returns its contents, trimmed.
async fn wait_for_file(path: &Path) -> Result<String> {
    let what = format!("{} to be written", path.display());
    wait_until(CHANGE_TIMEOUT, &what, || async {
        let text = std::fs::read_to_string(path).context("not there yet")?;
        ensure!(text.ends_with('\n'), "only partly written: {text:?}");
        Ok(text.trim().to_owned())
    })
    .await
}

fn touch(path: &Path) -> Result<()> {
    std::fs::write(path, b"").with_context(|| format!("create {}", path.display()))
}

/// A lease made with `regctl lease create --ttl TTL`: its id.
async fn create_lease(addr: &str, ttl: &str) -> Result<String> {
    let created = run(addr, &["lease", "create", "--ttl", ttl]).await?;
    created.ensure_code(0, &format!("regctl lease create --ttl {ttl}"))?;
    Ok(created.stdout.trim().to_owned())
}

/// The token a command run by `regctl lock|elect --lease LEASE -- sh` wrote to
/// `DIR/env` as "TOKEN LEASE" (from `$REGISTRY_{KIND}_TOKEN` and `_LEASE`), once it has,
/// checking that the lease it saw is `lease`.
async fn token_seen_under(dir: &Path, kind: &str, lease: &str) -> Result<u64> {
    let env = wait_for_file(&dir.join("env")).await?;
    let fields: Vec<&str> = env.split(' ').collect();
    let [token, seen_lease] = fields.as_slice() else {
        bail!("the command saw {env:?}");
    };
    let token: u64 = token
        .parse()
        .with_context(|| format!("REGISTRY_{kind}_TOKEN"))?;
    ensure!(
        *seen_lease == lease,
        "REGISTRY_{kind}_LEASE {seen_lease}, lease {lease}"
    );
    Ok(token)
}

#[tokio::test]
async fn register_resolve_watch_and_deregister_in_text_and_json() {
    let cluster = Cluster::start_single(&[]).await.expect("start");
    must_pass(async {
        let addr = cluster.addr(1);
        let client = cluster.client();

        let text = run(
            &addr,
            &[
                "register",
                "web",
                "web-1",
                "--address",
                "10.0.0.7",
                "--port",
                "8080",
                "--tag",
                "v2",
                "--meta",
                "build=41",
                "--zone",
                "eu-1a",
                "--ttl",
                "30s",
            ],
        )
        .await?;
        text.ensure_code(0, "register web-1")?;
        ensure!(
            text.stdout
                .starts_with("registered web/web-1 at 10.0.0.7:8080"),
            "register said {:?}",
            text.stdout
        );

        let json = run(
            &addr,
            &[
                "--json",
                "register",
                "web",
                "web-2",
                "--address",
                "10.0.0.8",
                "--port",
                "8081",
                "--weight",
                "5",
                "--ttl",
                "30s",
            ],
        )
        .await?;
        json.ensure_code(0, "register web-2 --json")?;
        let instance: Instance = serde_json::from_str(&json.stdout)
            .with_context(|| format!("not an instance: {:?}", json.stdout))?;
        ensure!(
            (
                instance.id.as_str(),
                instance.port,
                instance.weight,
                instance.ttl_ms
            ) == ("web-2", 8081, 5, Some(30_000)),
            "{instance:?}"
        );
        ensure!(instance.status == InstanceStatus::Passing, "{instance:?}");

        // The registry agrees with what regctl printed.
        let registered = client
            .service("web", &ServiceQuery::default(), ReadOptions::default())
            .await?
            .value;
        let web1 = registered
            .instances
            .iter()
            .find(|i| i.id == "web-1")
            .context("web-1 not registered")?;
        ensure!(
            web1.tags == ["v2"]
                && web1.meta.get("build").map(String::as_str) == Some("41")
                && web1.zone.as_deref() == Some("eu-1a"),
            "{web1:?}"
        );

        let resolved = run(&addr, &["resolve", "web"]).await?;
        resolved.ensure_code(0, "resolve")?;
        let mut lines = resolved.lines();
        lines.sort_unstable();
        ensure!(
            lines == ["10.0.0.7:8080", "10.0.0.8:8081"],
            "resolve printed {lines:?}"
        );
        let tagged = run(
            &addr,
            &["resolve", "web", "--tag", "v2", "--meta", "build=41"],
        )
        .await?;
        tagged.ensure_code(0, "resolve --tag")?;
        ensure!(tagged.lines() == ["10.0.0.7:8080"], "{:?}", tagged.stdout);
        let resolved_json = run(&addr, &["--json", "resolve", "web"]).await?;
        resolved_json.ensure_code(0, "resolve --json")?;
        let answer: ServiceInstances = serde_json::from_str(&resolved_json.stdout)?;
        ensure!(answer.instances.len() == 2, "{answer:?}");

        let services = run(&addr, &["services"]).await?;
        services.ensure_code(0, "services")?;
        ensure!(
            services
                .lines()
                .iter()
                .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["web", "2", "2"]),
            "services printed {:?}",
            services.stdout
        );

        // A watcher prints the current list, then the change.
        let watch = regctl(
            &addr,
            &["--json", "watch", "web", "--count", "2", "--wait", "30s"],
        )
        .spawn()?;
        let mut watch = watch;
        let mut watch_lines = BufReader::new(watch.stdout.take().context("stdout")?).lines();
        let first = tokio::time::timeout(CHANGE_TIMEOUT, watch_lines.next_line())
            .await
            .context("watch printed nothing")??
            .context("watch ended")?;
        let first: ServiceInstances = serde_json::from_str(&first)?;
        ensure!(first.instances.len() == 2, "{first:?}");

        let gone = run(&addr, &["deregister", "web", "web-1"]).await?;
        gone.ensure_code(0, "deregister")?;
        ensure!(
            gone.stdout.trim() == "deregistered web/web-1",
            "{:?}",
            gone.stdout
        );

        let second = tokio::time::timeout(CHANGE_TIMEOUT, watch_lines.next_line())
            .await
            .context("watch did not print the change")??
            .context("watch ended")?;
        let second: ServiceInstances = serde_json::from_str(&second)?;
        ensure!(
            second
                .instances
                .iter()
                .map(|i| i.id.as_str())
                .collect::<Vec<_>>()
                == ["web-2"],
            "{second:?}"
        );
        let status = tokio::time::timeout(CHANGE_TIMEOUT, watch.wait()).await??;
        ensure!(
            status.code() == Some(0),
            "watch --count 2 ended with {status}"
        );

        let after = run(&addr, &["resolve", "web"]).await?;
        ensure!(after.lines() == ["10.0.0.8:8081"], "{:?}", after.stdout);
        run(&addr, &["deregister", "web", "web-2"])
            .await?
            .ensure_code(0, "deregister web-2")?;

        // Nothing left: resolve fails (so scripts notice), on one line.
        let empty = run(&addr, &["resolve", "web"]).await?;
        empty.ensure_code(1, "resolve with no instance")?;
        ensure!(empty.stdout.is_empty(), "{:?}", empty.stdout);
        empty.ensure_one_error_line("resolve with no instance")?;

        // An error answer: one line with the code, exit 1.
        let unknown = run(&addr, &["deregister", "web", "nope"]).await?;
        unknown.ensure_code(1, "deregister unknown")?;
        unknown.ensure_one_error_line("deregister unknown")?;
        ensure!(
            unknown.stderr.contains("instance_not_found"),
            "{:?}",
            unknown.stderr
        );

        // Nobody listening: one line, exit 1.
        let port = tests::free_port()?;
        let down = run(&format!("127.0.0.1:{port}"), &["services"]).await?;
        down.ensure_code(1, "services against a closed port")?;
        down.ensure_one_error_line("services against a closed port")?;

        // Usage errors are clap's: exit 2.
        run(&addr, &["register", "web"])
            .await?
            .ensure_code(2, "register without its flags")?;
        run(&addr, &["lock", "x"])
            .await?
            .ensure_code(2, "lock without a command")?;
        run(&addr, &["--timeout", "10", "services"])
            .await?
            .ensure_code(2, "a duration without a unit")?;
        Ok(())
    })
    .await;
}

#[tokio::test]
async fn register_with_a_tcp_check_leaves_the_instance_to_the_cluster() {
    let cluster = Cluster::start_single(&[]).await.expect("start");
    must_pass(async {
        let addr = cluster.addr(1);
        let target = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let port = target.local_addr()?.port().to_string();
        let check = format!("127.0.0.1:{port}");
        let args = [
            "register",
            "db",
            "db-1",
            "--address",
            "127.0.0.1",
            "--port",
            port.as_str(),
            "--tcp-check",
            check.as_str(),
            "--check-interval",
            "1s",
            "--failures-before-critical",
            "1",
        ];
        // Check-only: it registers once and exits, with no lease to keep.
        let registered = run(&addr, &args).await?;
        registered.ensure_code(0, "register db-1")?;
        ensure!(registered.stdout.contains("tcp"), "{}", registered.stdout);
        let client = cluster.client();
        let passing = wait_until(Duration::from_secs(10), "db-1 passing", || async {
            let list = client
                .service("db", &ServiceQuery::default(), ReadOptions::default())
                .await?
                .value;
            let db = list.instances.first().context("db-1 listed")?.clone();
            ensure!(db.status == InstanceStatus::Passing, "{db:?}");
            Ok(db)
        })
        .await?;
        ensure!(
            passing.lease.is_none() && passing.checks.len() == 1,
            "{passing:?}"
        );
        ensure!(passing.checks[0].name == "tcp", "{passing:?}");
        // The port closes: the cluster, not regctl, notices.
        drop(target);
        wait_until(Duration::from_secs(10), "db-1 critical", || async {
            let any = ServiceQuery {
                status: Some(None),
                ..ServiceQuery::default()
            };
            let list = client
                .service("db", &any, ReadOptions::default())
                .await?
                .value;
            let db = list.instances.first().context("db-1 listed")?;
            ensure!(db.status == InstanceStatus::Critical, "{db:?}");
            Ok(())
        })
        .await?;
        run(&addr, &["deregister", "db", "db-1"])
            .await?
            .ensure_code(0, "deregister db-1")?;
        Ok(())
    })
    .await;
}

#[tokio::test]
async fn register_heartbeat_outlives_its_ttl_re_registers_and_deregisters_on_sigterm() {
    let cluster = Cluster::start_single(&[]).await.expect("start");
    must_pass(async {
        let addr = cluster.addr(1);
        let client = cluster.client();
        let child = regctl(
            &addr,
            &[
                "register",
                "hb",
                "hb-1",
                "--address",
                "10.0.0.1",
                "--port",
                "80",
                "--ttl",
                "1s",
                "--heartbeat",
            ],
        )
        .spawn()?;
        let pid = pid_of(&child)?;
        let any = ServiceQuery {
            status: Some(None),
            ..ServiceQuery::default()
        };
        let first = wait_until(CHANGE_TIMEOUT, "hb-1 to be registered", || async {
            let answer = client.service("hb", &any, ReadOptions::default()).await?;
            answer.value.instances.into_iter().next().context("not yet")
        })
        .await?;
        // Three TTLs later it is still passing: only the heartbeats can have kept it.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let later = client
            .service("hb", &any, ReadOptions::default())
            .await?
            .value;
        ensure!(
            later.instances.len() == 1 && later.instances[0].status == InstanceStatus::Passing,
            "after 3 s: {later:?}"
        );

        // Its lease revoked behind its back: the next heartbeat gets a 404 and regctl
        // registers it again, under a new lease.
        client.revoke_lease(first.lease.context("a lease")?).await?;
        wait_until(CHANGE_TIMEOUT, "hb-1 registered again", || async {
            let answer = client
                .service("hb", &any, ReadOptions::default())
                .await?
                .value;
            let instance = answer.instances.first().context("gone")?;
            ensure!(
                instance.status == InstanceStatus::Passing && instance.lease != first.lease,
                "{instance:?}"
            );
            Ok(())
        })
        .await?;

        kill(pid, Signal::SIGTERM)?;
        let done = finish(child, "register --heartbeat").await?;
        done.ensure_code(0, "register --heartbeat after SIGTERM")?;
        ensure!(
            done.stdout.contains("deregistered hb/hb-1"),
            "{:?}",
            done.stdout
        );
        let left = client
            .service("hb", &any, ReadOptions::default())
            .await?
            .value;
        ensure!(left.instances.is_empty(), "still registered: {left:?}");
        Ok(())
    })
    .await;
}

#[tokio::test]
async fn lock_gives_the_command_its_token_and_returns_its_exit_code() {
    let cluster = Cluster::start_single(&[]).await.expect("start");
    must_pass(async {
        let addr = cluster.addr(1);
        let client = cluster.client();
        let dir = TempDir::new()?;
        let script = r#"echo "$REGISTRY_LOCK_TOKEN $REGISTRY_LOCK_LEASE $REGISTRY_LOCK_NAME" > "$DIR/env"
            while [ ! -e "$DIR/go" ]; do sleep 0.05; done
            exit 7"#;
        let child = regctl(&addr, &["lock", "job", "--ttl", "2s", "--", "sh", "-c", script])
            .env("DIR", dir.path())
            .spawn()?;
        let env = wait_for_file(&dir.path().join("env")).await?;
        let fields: Vec<&str> = env.split(' ').collect();
        ensure!(fields.len() == 3, "the command saw {env:?}");
        let token: u64 = fields[0].parse().context("REGISTRY_LOCK_TOKEN")?;
        ensure!(fields[2] == "job", "REGISTRY_LOCK_NAME {:?}", fields[2]);

        // While the command runs, the registry shows it as the holder with that token.
        let lock = client.lock_info("job", ReadOptions::default()).await?.value;
        let holder = lock.holder.context("the lock is not held")?;
        ensure!(
            holder.token == Some(token) && holder.lease.map(|l| l.to_string()).as_deref() == Some(fields[1]),
            "registry holder {holder:?}, command saw {env:?}"
        );
        // Longer than the TTL: the renewal keeps it.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let still = client.lock_info("job", ReadOptions::default()).await?.value;
        ensure!(
            still.holder.as_ref().and_then(|h| h.token) == Some(token),
            "after 3 s with a 2 s TTL: {still:?}"
        );

        touch(&dir.path().join("go"))?;
        let done = finish(child, "regctl lock").await?;
        done.ensure_code(7, "regctl lock -- sh -c 'exit 7'")?;
        let after = client.lock_info("job", ReadOptions::default()).await?.value;
        ensure!(!after.held && after.holder.is_none(), "not released: {after:?}");
        let lease = client
            .get_lease(holder.lease.context("lease shown")?, registry_client::Consistency::Linearizable)
            .await;
        ensure!(
            lease.as_ref().is_err_and(registry_client::Error::is_lease_not_found),
            "the lock's own lease outlived the release: {lease:?}"
        );

        // A command that is not there: 127, and the lock is given back.
        let missing = run(&addr, &["lock", "job", "--", "/nonexistent/command"]).await?;
        missing.ensure_code(127, "a missing command")?;
        missing.ensure_one_error_line("a missing command")?;
        let after = client.lock_info("job", ReadOptions::default()).await?.value;
        ensure!(!after.held, "not released after a failed start: {after:?}");
        Ok(())
    })
    .await;
}

#[tokio::test]
async fn lock_stops_the_command_when_its_lease_is_revoked() {
    let cluster = Cluster::start_single(&[]).await.expect("start");
    must_pass(async {
        let addr = cluster.addr(1);
        let client = cluster.client();
        let dir = TempDir::new()?;
        // One command that dies of SIGTERM (with a long grace period, so a quick end
        // shows it was SIGTERM), one that ignores it (short grace period: SIGKILL).
        let obedient = regctl(
            &addr,
            &[
                "lock",
                "lost-a",
                "--ttl",
                "2s",
                "--kill-after",
                "20s",
                "--",
                "sh",
                "-c",
                r#"echo $$ > "$DIR/a.pid"; exec sleep 60"#,
            ],
        )
        .env("DIR", dir.path())
        .spawn()?;
        let stubborn = regctl(
            &addr,
            &[
                "lock",
                "lost-b",
                "--ttl",
                "2s",
                "--kill-after",
                "1s",
                "--",
                "sh",
                "-c",
                r#"trap '' TERM; echo $$ > "$DIR/b.pid"; while :; do sleep 0.1; done"#,
            ],
        )
        .env("DIR", dir.path())
        .spawn()?;
        let pid_a = Pid::from_raw(wait_for_file(&dir.path().join("a.pid")).await?.parse()?);
        let pid_b = Pid::from_raw(wait_for_file(&dir.path().join("b.pid")).await?.parse()?);

        let revoked_at = Instant::now();
        for name in ["lost-a", "lost-b"] {
            let lock = client.lock_info(name, ReadOptions::default()).await?.value;
            let holder = lock.holder.with_context(|| format!("{name} not held"))?;
            client
                .revoke_lease(holder.lease.context("lease shown")?)
                .await?;
        }

        let a = finish(obedient, "regctl lock (obedient)").await?;
        let a_took = revoked_at.elapsed();
        a.ensure_code(EXIT_LOST, "lost lock, obedient command")?;
        ensure!(
            a_took < Duration::from_secs(6),
            "took {a_took:?} to stop the command: SIGTERM was not sent or not in time"
        );
        ensure!(
            a.stderr.contains("lost lock lost-a") && a.stderr.contains("killed by SIGTERM"),
            "stderr: {:?}",
            a.stderr
        );
        ensure!(!process_exists(pid_a), "the command {pid_a} still runs");

        let b = finish(stubborn, "regctl lock (stubborn)").await?;
        b.ensure_code(EXIT_LOST, "lost lock, command ignoring SIGTERM")?;
        ensure!(
            b.stderr.contains("killed by SIGKILL"),
            "stderr: {:?}",
            b.stderr
        );
        ensure!(!process_exists(pid_b), "the command {pid_b} still runs");
        // Its `sleep 0.1` children were in its process group and went with it. (They may
        // linger a moment as zombies until init reaps them: those do not count.)
        wait_until(
            Duration::from_secs(5),
            "the command's process group to be gone",
            || async {
                let left = live_group_members(pid_b)?;
                ensure!(left.is_empty(), "still running: {left:?}");
                Ok(())
            },
        )
        .await?;
        Ok(())
    })
    .await;
}

#[tokio::test]
async fn lock_passes_sigterm_to_the_command_then_releases() {
    let cluster = Cluster::start_single(&[]).await.expect("start");
    must_pass(async {
        let addr = cluster.addr(1);
        let client = cluster.client();
        let dir = TempDir::new()?;
        let script = r#"trap 'echo term > "$DIR/term"; exit 3' TERM
            echo ready > "$DIR/ready"
            while :; do sleep 0.05; done"#;
        let child = regctl(
            &addr,
            &["lock", "fw", "--ttl", "2s", "--", "sh", "-c", script],
        )
        .env("DIR", dir.path())
        .spawn()?;
        wait_for_file(&dir.path().join("ready")).await?;
        kill(pid_of(&child)?, Signal::SIGTERM)?;
        let done = finish(child, "regctl lock").await?;
        done.ensure_code(3, "regctl lock after SIGTERM")?;
        ensure!(
            wait_for_file(&dir.path().join("term")).await? == "term",
            "the command did not get SIGTERM"
        );
        let after = client.lock_info("fw", ReadOptions::default()).await?.value;
        ensure!(!after.held, "not released: {after:?}");
        Ok(())
    })
    .await;
}

#[tokio::test]
async fn elect_under_an_existing_lease_resigns_and_leaves_the_lease() {
    let cluster = Cluster::start_single(&[]).await.expect("start");
    must_pass(async {
        let addr = cluster.addr(1);
        let client = cluster.client();
        let dir = TempDir::new()?;
        let lease = create_lease(&addr, "1m").await?;
        let script = r#"echo "$REGISTRY_ELECTION_TOKEN $REGISTRY_ELECTION_LEASE" > "$DIR/env"
            while [ ! -e "$DIR/go" ]; do sleep 0.05; done"#;
        let child = regctl(
            &addr,
            &[
                "elect",
                "on-lease",
                "--candidate",
                "node-a",
                "--lease",
                &lease,
                "--",
                "sh",
                "-c",
                script,
            ],
        )
        .env("DIR", dir.path())
        .spawn()?;
        let token = token_seen_under(dir.path(), "ELECTION", &lease).await?;
        // While the command runs, node-a leads under that lease, not one of its own.
        let info = client
            .election("on-lease", ReadOptions::default())
            .await?
            .value;
        let leader = info.leader.context("nobody leads")?;
        ensure!(
            leader.token == token
                && leader.lease.to_string() == lease
                && !leader.own_lease
                && leader.candidate == "node-a",
            "leader {leader:?}, lease {lease}"
        );
        touch(&dir.path().join("go"))?;
        let done = finish(child, "regctl elect --lease").await?;
        done.ensure_code(0, "regctl elect --lease -- sh")?;
        let info = client
            .election("on-lease", ReadOptions::default())
            .await?
            .value;
        ensure!(info.leader.is_none(), "not resigned: {info:?}");
        // The lease outlives the leadership.
        run(&addr, &["lease", "get", &lease])
            .await?
            .ensure_code(0, "regctl lease get after resigning")?;

        // A lease nobody keeps alive expires under the running command, and regctl
        // stops it as for lost leadership.
        let short = create_lease(&addr, "3s").await?;
        let started = Instant::now();
        let done = run(
            &addr,
            &[
                "elect",
                "on-lease",
                "--candidate",
                "node-b",
                "--lease",
                &short,
                "--",
                "sh",
                "-c",
                "exec sleep 60",
            ],
        )
        .await?;
        let took = started.elapsed();
        done.ensure_code(EXIT_LOST, "regctl elect --lease on a lease nobody renews")?;
        ensure!(
            done.stderr.contains("lost leadership of on-lease")
                && done.stderr.contains("its lease ended"),
            "stderr: {:?}",
            done.stderr
        );
        ensure!(
            took < Duration::from_secs(20),
            "took {took:?} to notice the lease expired"
        );
        let info = client
            .election("on-lease", ReadOptions::default())
            .await?
            .value;
        ensure!(
            info.leader.is_none(),
            "led after its lease expired: {info:?}"
        );
        Ok(())
    })
    .await;
}

#[tokio::test]
async fn lock_under_an_existing_lease_releases_the_lock_and_leaves_the_lease() {
    let cluster = Cluster::start_single(&[]).await.expect("start");
    must_pass(async {
        let addr = cluster.addr(1);
        let client = cluster.client();
        let dir = TempDir::new()?;
        let lease = create_lease(&addr, "1m").await?;
        let script = r#"echo "$REGISTRY_LOCK_TOKEN $REGISTRY_LOCK_LEASE" > "$DIR/env"
            while [ ! -e "$DIR/go" ]; do sleep 0.05; done"#;
        let child = regctl(
            &addr,
            &[
                "lock", "shared", "--lease", &lease, "--", "sh", "-c", script,
            ],
        )
        .env("DIR", dir.path())
        .spawn()?;
        let token = token_seen_under(dir.path(), "LOCK", &lease).await?;

        // While the command runs, the lock is held under that lease, not one of its own.
        let lock = client
            .lock_info("shared", ReadOptions::default())
            .await?
            .value;
        let holder = lock.holder.context("the lock is not held")?;
        ensure!(
            holder.token == Some(token)
                && holder.lease.map(|l| l.to_string()) == Some(lease.clone())
                && !holder.own_lease,
            "registry holder {holder:?}, lease {lease}"
        );

        touch(&dir.path().join("go"))?;
        let done = finish(child, "regctl lock --lease").await?;
        done.ensure_code(0, "regctl lock --lease -- sh")?;
        let after = client
            .lock_info("shared", ReadOptions::default())
            .await?
            .value;
        ensure!(
            !after.held && after.holder.is_none(),
            "not released: {after:?}"
        );
        // The lease outlives the lock.
        let shown = run(&addr, &["lease", "get", &lease]).await?;
        shown.ensure_code(0, "regctl lease get after the lock")?;
        ensure!(shown.stdout.contains(&lease), "{:?}", shown.stdout);

        // regctl does not renew a lease it was given: one nobody keeps alive expires
        // under the running command, and regctl stops it as for a lost lock.
        let short = create_lease(&addr, "3s").await?;
        let started = Instant::now();
        let done = run(
            &addr,
            &[
                "lock",
                "shared",
                "--lease",
                &short,
                "--",
                "sh",
                "-c",
                "exec sleep 60",
            ],
        )
        .await?;
        let took = started.elapsed();
        done.ensure_code(EXIT_LOST, "regctl lock --lease on a lease nobody renews")?;
        ensure!(
            done.stderr.contains("lost lock shared") && done.stderr.contains("its lease ended"),
            "stderr: {:?}",
            done.stderr
        );
        ensure!(
            took < Duration::from_secs(20),
            "took {took:?} to notice the lease expired"
        );
        let after = client
            .lock_info("shared", ReadOptions::default())
            .await?
            .value;
        ensure!(!after.held, "held after its lease expired: {after:?}");
        // The first lease is still there, never renewed by either run.
        run(&addr, &["lease", "get", &lease])
            .await?
            .ensure_code(0, "regctl lease get at the end")?;
        Ok(())
    })
    .await;
}

#[tokio::test]
async fn lock_commands_waiting_for_the_same_lock_take_turns() {
    let cluster = Cluster::start_single(&[]).await.expect("start");
    must_pass(async {
        let addr = cluster.addr(1);
        let client = cluster.client();
        let dir = TempDir::new()?;
        let log = dir.path().join("log");
        // A waits for the test's go-ahead before it ends; B ends at once.
        let script = r#"echo "start $WHO $REGISTRY_LOCK_TOKEN" >> "$DIR/log"
            if [ "$WHO" = A ]; then while [ ! -e "$DIR/go" ]; do sleep 0.05; done; fi
            echo "end $WHO" >> "$DIR/log""#;
        let spawn = |who: &str| {
            regctl(
                &addr,
                &[
                    "lock", "serial", "--ttl", "2s", "--wait", "30s", "--holder", who, "--", "sh",
                    "-c", script,
                ],
            )
            .env("DIR", dir.path())
            .env("WHO", who)
            .spawn()
        };
        let a = spawn("A")?;
        wait_until(CHANGE_TIMEOUT, "A to start", || async {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            ensure!(text.contains("start A"), "log {text:?}");
            Ok(())
        })
        .await?;

        // Without waiting, a third one is refused at once, naming the holder.
        let refused = run(&addr, &["lock", "serial", "--wait", "0s", "--", "true"]).await?;
        refused.ensure_code(1, "lock --wait 0s on a held lock")?;
        refused.ensure_one_error_line("lock --wait 0s on a held lock")?;
        ensure!(
            refused.stderr.contains("\"A\"") && refused.stderr.contains("not acquired"),
            "{:?}",
            refused.stderr
        );

        let b = spawn("B")?;
        wait_until(CHANGE_TIMEOUT, "B to wait in line", || async {
            let lock = client
                .lock_info("serial", ReadOptions::default())
                .await?
                .value;
            ensure!(
                lock.waiters
                    .iter()
                    .map(|w| w.holder.as_str())
                    .collect::<Vec<_>>()
                    == ["B"],
                "{lock:?}"
            );
            Ok(())
        })
        .await?;
        // Past B's TTL: the server keeps a waiting request's lease alive.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let text = std::fs::read_to_string(&log)?;
        ensure!(
            !text.contains("start B"),
            "B started while A held the lock: {text:?}"
        );

        touch(&dir.path().join("go"))?;
        finish(a, "A").await?.ensure_code(0, "A")?;
        finish(b, "B").await?.ensure_code(0, "B")?;
        let text = std::fs::read_to_string(&log)?;
        let lines: Vec<&str> = text.lines().collect();
        let [start_a, "end A", start_b, "end B"] = lines.as_slice() else {
            bail!("not one after the other: {lines:?}");
        };
        let token = |line: &str, who: &str| -> Result<u64> {
            let rest = line
                .strip_prefix(&format!("start {who} "))
                .with_context(|| format!("{line:?}"))?;
            Ok(rest.parse()?)
        };
        let (token_a, token_b) = (token(start_a, "A")?, token(start_b, "B")?);
        ensure!(token_b > token_a, "tokens A {token_a}, B {token_b}");
        let after = client
            .lock_info("serial", ReadOptions::default())
            .await?
            .value;
        ensure!(!after.held && after.waiters.is_empty(), "{after:?}");
        Ok(())
    })
    .await;
}

#[tokio::test]
async fn elect_leads_through_a_failover_and_cluster_status_shows_three_members() {
    let cluster = Cluster::start(3, &[]).await.expect("start");
    must_pass(async {
        let endpoints = cluster
            .ids()
            .iter()
            .map(|&id| cluster.addr(id))
            .collect::<Vec<_>>()
            .join(",");

        let status = run(&endpoints, &["cluster", "status"]).await?;
        status.ensure_code(0, "cluster status")?;
        // One table row per member: `ID  ADDRESS  ROLE  VOTER`.
        let member_rows = status
            .lines()
            .iter()
            .filter(|l| {
                let cells: Vec<&str> = l.split_whitespace().collect();
                cluster
                    .ids()
                    .iter()
                    .any(|&id| cells.len() == 4 && cells[..2] == [id.to_string(), cluster.addr(id)])
            })
            .count();
        ensure!(
            member_rows == 3,
            "cluster status printed:\n{}",
            status.stdout
        );
        let json = run(&endpoints, &["--json", "cluster", "status"]).await?;
        json.ensure_code(0, "cluster status --json")?;
        let parsed: ClusterStatus = serde_json::from_str(&json.stdout)?;
        ensure!(
            parsed.members.len() == 3 && parsed.members.iter().all(|m| m.voter),
            "{parsed:?}"
        );
        ensure!(parsed.leader.is_some(), "no leader: {parsed:?}");

        // A leader with a long enough TTL to ride out a Raft failover.
        let mut leader = regctl(
            &endpoints,
            &["elect", "primary", "--candidate", "node-a", "--ttl", "10s"],
        )
        .spawn()?;
        let mut out = BufReader::new(leader.stdout.take().context("stdout")?).lines();
        let line = tokio::time::timeout(CHANGE_TIMEOUT, out.next_line())
            .await
            .context("elect printed nothing")??
            .context("elect ended")?;
        ensure!(
            line.starts_with("leading primary as \"node-a\" (token "),
            "elect printed {line:?}"
        );
        let token: u64 = line
            .trim_end_matches(')')
            .rsplit(' ')
            .next()
            .context("no token")?
            .parse()?;

        let observed = run(
            &endpoints,
            &["--json", "elect", "primary", "--observe", "--count", "1"],
        )
        .await?;
        observed.ensure_code(0, "elect --observe")?;
        let info: ElectionInfo = serde_json::from_str(observed.stdout.trim())?;
        let current = info.leader.context("no leader observed")?;
        ensure!(
            current.candidate == "node-a" && current.token == token,
            "{current:?}"
        );

        let rival = run(
            &endpoints,
            &["elect", "primary", "--candidate", "node-b", "--wait", "1s"],
        )
        .await?;
        rival.ensure_code(1, "a rival campaign")?;
        ensure!(rival.stderr.contains("\"node-a\""), "{:?}", rival.stderr);

        // The Raft leader dies; regctl keeps leading through the other servers.
        let raft_leader = cluster.leader_id().await?;
        cluster.kill(raft_leader).await?;
        cluster
            .wait_for_leader(Some(raft_leader), Duration::from_secs(20))
            .await?;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let live = Client::new(cluster.live_ids().into_iter().map(|id| cluster.addr(id)))?;
        let info = live
            .election("primary", ReadOptions::default())
            .await?
            .value;
        ensure!(
            info.leader.as_ref().map(|l| l.token) == Some(token),
            "leadership changed across the failover: {info:?}"
        );
        ensure!(
            leader.try_wait()?.is_none(),
            "elect exited during the failover"
        );

        kill(pid_of(&leader)?, Signal::SIGINT)?;
        let status = tokio::time::timeout(RUN_TIMEOUT, leader.wait()).await??;
        ensure!(status.code() == Some(0), "elect after SIGINT: {status}");
        let info = live
            .election("primary", ReadOptions::default())
            .await?
            .value;
        ensure!(info.leader.is_none(), "did not resign: {info:?}");

        // With a command: it runs while leading and gets the token.
        let live_endpoints = cluster
            .live_ids()
            .iter()
            .map(|&id| cluster.addr(id))
            .collect::<Vec<_>>()
            .join(",");
        let with_command = run(
            &live_endpoints,
            &[
                "elect",
                "primary",
                "--candidate",
                "node-c",
                "--",
                "sh",
                "-c",
                "echo \"$REGISTRY_ELECTION_TOKEN $REGISTRY_ELECTION_CANDIDATE\"",
            ],
        )
        .await?;
        with_command.ensure_code(0, "elect -- sh")?;
        let (command_token, candidate) = with_command
            .stdout
            .trim()
            .split_once(' ')
            .context("no token printed")?;
        ensure!(
            command_token.parse::<u64>()? > token && candidate == "node-c",
            "the command printed {:?}",
            with_command.stdout
        );
        Ok(())
    })
    .await;
}

#[tokio::test]
async fn acl_bootstrap_token_create_use_list_and_revoke() {
    let cluster = Cluster::start(1, &["--acl", "--acl-anonymous", "cluster:read"])
        .await
        .expect("start the server");
    must_pass(async {
        let addr = cluster.addr(1);
        let as_token = |secret: &str, args: &[&str]| {
            let mut all = vec!["--token".to_owned(), secret.to_owned()];
            all.extend(args.iter().map(|a| (*a).to_owned()));
            all
        };
        let run_as = |secret: String, args: &'static [&'static str]| {
            let addr = addr.clone();
            let all = as_token(&secret, args);
            async move {
                let all: Vec<&str> = all.iter().map(String::as_str).collect();
                run(&addr, &all).await
            }
        };
        let boot = run(&addr, &["--json", "acl", "bootstrap"]).await?;
        ensure!(boot.code == Some(0), "{}", boot.stderr);
        let boot: api_spec::acl::TokenCreated = serde_json::from_str(&boot.stdout)?;
        let again = run(&addr, &["acl", "bootstrap"]).await?;
        ensure!(
            again.code == Some(1) && again.stderr.contains("acl_bootstrapped"),
            "{again:?}"
        );
        let made = run_as(
            boot.secret.clone(),
            &[
                "--json",
                "acl",
                "token",
                "create",
                "--rule",
                "service:write:web",
                "--description",
                "web deploys",
            ],
        )
        .await?;
        ensure!(made.code == Some(0), "{}", made.stderr);
        let web: api_spec::acl::TokenCreated = serde_json::from_str(&made.stdout)?;
        const REGISTER_WEB: &[&str] = &[
            "register",
            "web",
            "w1",
            "--address",
            "127.0.0.1",
            "--port",
            "9000",
        ];
        const REGISTER_DB: &[&str] = &[
            "register",
            "db",
            "d1",
            "--address",
            "127.0.0.1",
            "--port",
            "9001",
        ];
        let ok = run_as(web.secret.clone(), REGISTER_WEB).await?;
        ensure!(ok.code == Some(0), "{}", ok.stderr);
        let denied = run_as(web.secret.clone(), REGISTER_DB).await?;
        ensure!(
            denied.code == Some(1) && denied.stderr.contains("permission_denied"),
            "{denied:?}"
        );
        let anonymous = run(&addr, REGISTER_WEB).await?;
        ensure!(
            anonymous.code == Some(1) && anonymous.stderr.contains("unauthenticated"),
            "{anonymous:?}"
        );
        let list = run_as(boot.secret.clone(), &["acl", "token", "list"]).await?;
        ensure!(
            list.code == Some(0)
                && list.stdout.contains(&web.token.accessor.to_string())
                && list.stdout.contains("service:write:web")
                && !list.stdout.contains(&web.secret),
            "{list:?}"
        );
        let accessor = web.token.accessor.to_string();
        let revoke = run(
            &addr,
            &["--token", &boot.secret, "acl", "token", "revoke", &accessor],
        )
        .await?;
        ensure!(revoke.code == Some(0), "{revoke:?}");
        let after = run_as(web.secret.clone(), REGISTER_WEB).await?;
        ensure!(
            after.code == Some(1) && after.stderr.contains("unauthenticated"),
            "a revoked token still registers: {after:?}"
        );
        Ok(())
    })
    .await;
}
