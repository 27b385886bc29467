//! The curl examples in `examples/` run as real bash processes against a single-node
//! registry: `lock.sh` (acquire with a TTL, keepalive loop, fenced writes, release), two
//! `lock.sh` taking turns through the lock's queue, `lock.sh` losing its lease or being
//! interrupted, `fenced-write.sh` refusing stale tokens, and `elect.sh` leading while
//! `elect.sh observe` follows it.
//!
//! The scripts need `bash`, `curl`, `jq` and `flock` (`scripts/install-deps.sh` installs
//! what is missing).

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _, Result};
use api_spec::{ElectionInfo, LockInfo, LockList};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tempfile::TempDir;
use tests::{must_pass, wait_until, Cluster};
use tokio::process::{Child, Command};

/// How long one script run may take before the test gives up on it.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a lock or election change may take to show.
const CHANGE_TIMEOUT: Duration = Duration::from_secs(10);

fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples")
}

/// Fails with a hint when a tool the scripts need is missing.
fn require_tools() {
    for tool in ["bash", "curl", "jq", "flock"] {
        let found = std::process::Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        assert!(
            found,
            "`{tool}` is not installed; the example scripts need it (run scripts/install-deps.sh)"
        );
    }
}

/// `bash examples/<script> args…` with `REGISTRY` pointing at `addr` and `env` added,
/// its output captured. Killed if the test drops it.
fn script(addr: &str, name: &str, args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut command = Command::new("bash");
    command
        .arg(examples_dir().join(name))
        .args(args)
        .env("REGISTRY", format!("http://{addr}"))
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    command
}

/// What a finished script did.
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Run {
    fn from(output: Output) -> Run {
        Run {
            code: output.status.code(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

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

    /// The number after `prefix` on the first stdout line that has it, e.g. the token in
    /// "acquired lock demo with token 17 (…)".
    fn number_after(&self, prefix: &str) -> Result<u64> {
        let rest = self
            .stdout
            .lines()
            .find_map(|line| line.split_once(prefix).map(|(_, rest)| rest))
            .with_context(|| format!("no {prefix:?} in stdout:\n{}", self.stdout))?;
        let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
        digits
            .parse()
            .with_context(|| format!("no number after {prefix:?} in {rest:?}"))
    }
}

/// Waits for a spawned script to finish (at most [`SCRIPT_TIMEOUT`]).
async fn finish(child: Child, what: &str) -> Result<Run> {
    let output = tokio::time::timeout(SCRIPT_TIMEOUT, child.wait_with_output())
        .await
        .with_context(|| format!("{what} did not finish within {SCRIPT_TIMEOUT:?}"))?
        .with_context(|| format!("wait for {what}"))?;
    Ok(Run::from(output))
}

async fn run(command: &mut Command, what: &str) -> Result<Run> {
    let child = command.spawn().with_context(|| format!("spawn {what}"))?;
    finish(child, what).await
}

/// The resource's records: (token, data) per line of `STATE_DIR/data`.
fn records(state: &Path) -> Result<Vec<(u64, String)>> {
    let text = std::fs::read_to_string(state.join("data")).context("read the resource's data")?;
    text.lines()
        .map(|line| {
            let (token, data) = line.split_once(' ').context("record without data")?;
            Ok((token.parse()?, data.to_owned()))
        })
        .collect()
}

async fn get_text(addr: &str, path: &str) -> Result<String> {
    let response = reqwest::get(format!("http://{addr}{path}")).await?;
    ensure!(
        response.status() == 200,
        "GET {path}: {}",
        response.status()
    );
    Ok(response.text().await?)
}

async fn get_lock(addr: &str, name: &str) -> Result<LockInfo> {
    Ok(serde_json::from_str(
        &get_text(addr, &format!("/v1/locks/{name}")).await?,
    )?)
}

async fn ensure_no_locks(addr: &str) -> Result<()> {
    let list: LockList = serde_json::from_str(&get_text(addr, "/v1/locks").await?)?;
    ensure!(list.locks.is_empty(), "locks left behind: {list:?}");
    Ok(())
}

/// Waits until the lock `name` is held, and returns it.
async fn wait_held(addr: &str, name: &str) -> Result<LockInfo> {
    wait_until(CHANGE_TIMEOUT, "the lock to be held", || async {
        let lock = get_lock(addr, name).await?;
        ensure!(lock.held, "{lock:?}");
        Ok(lock)
    })
    .await
}

#[tokio::test]
async fn lock_script_acquires_keeps_alive_writes_with_its_token_and_releases() {
    require_tools();
    let cluster = Cluster::start_single(&[]).await.expect("start");
    must_pass(async {
        let addr = cluster.addr(1);
        let state = TempDir::new()?;
        let state_dir = state.path().to_str().context("path")?;
        let started = Instant::now();
        // The work (4 × 1 s) outlasts the 3 s TTL: only the keepalive loop keeps the
        // lock, and a lost lock would fail the release (exit 4).
        let run = run(
            &mut script(
                &addr,
                "lock.sh",
                &[],
                &[
                    ("TTL", "3s"),
                    ("STEPS", "4"),
                    ("STEP_SECONDS", "1"),
                    ("STATE_DIR", state_dir),
                    ("HOLDER", "test-a"),
                ],
            ),
            "lock.sh",
        )
        .await?;
        run.ensure_code(0, "lock.sh")?;
        eprintln!("lock.sh took {:?}", started.elapsed());
        let token = run.number_after("acquired lock demo with token ")?;
        ensure!(
            run.stdout
                .contains(&format!("released lock demo (token {token})")),
            "no release line:\n{}",
            run.stdout
        );
        let records = records(state.path())?;
        let expected: Vec<(u64, String)> = (1..=4)
            .map(|i| (token, format!("step {i}/4 by test-a")))
            .collect();
        ensure!(records == expected, "records {records:?}");
        let highest = std::fs::read_to_string(state.path().join("highest-token"))?;
        ensure!(highest.trim() == token.to_string(), "highest {highest:?}");

        let lock = get_lock(&addr, "demo").await?;
        ensure!(
            !lock.held && lock.waiters.is_empty(),
            "after the run: {lock:?}"
        );
        ensure!(
            lock.delay_until_ms.is_none(),
            "a clean release has no delay"
        );
        ensure_no_locks(&addr).await
    })
    .await;
}

#[tokio::test]
async fn two_lock_scripts_take_turns_and_their_tokens_increase() {
    require_tools();
    let cluster = Cluster::start_single(&[]).await.expect("start");
    must_pass(async {
        let addr = cluster.addr(1);
        let state = TempDir::new()?;
        let state_dir = state.path().to_str().context("path")?;
        let started = Instant::now();
        let env = |holder: &'static str| {
            [
                ("TTL", "3s"),
                ("WAIT", "30s"),
                ("STEPS", "3"),
                ("STEP_SECONDS", "0.5"),
                ("STATE_DIR", state_dir),
                ("HOLDER", holder),
            ]
        };
        let a = script(&addr, "lock.sh", &[], &env("a")).spawn()?;
        let b = script(&addr, "lock.sh", &[], &env("b")).spawn()?;
        let (a, b) = tokio::join!(finish(a, "lock.sh a"), finish(b, "lock.sh b"));
        let (a, b) = (a?, b?);
        a.ensure_code(0, "lock.sh a")?;
        b.ensure_code(0, "lock.sh b")?;
        eprintln!("both lock.sh runs took {:?}", started.elapsed());

        let (token_a, token_b) = (
            a.number_after("with token ")?,
            b.number_after("with token ")?,
        );
        ensure!(token_a != token_b, "both got token {token_a}");
        let (first, second) = if token_a < token_b {
            ("a", "b")
        } else {
            ("b", "a")
        };
        let records = records(state.path())?;
        let tokens: Vec<u64> = records.iter().map(|(t, _)| *t).collect();
        let (low, high) = (token_a.min(token_b), token_a.max(token_b));
        // One holder at a time: all of the first one's writes, then all of the second's.
        ensure!(
            tokens == [low, low, low, high, high, high],
            "tokens in the resource: {records:?}"
        );
        ensure!(
            records[0].1.ends_with(&format!("by {first}"))
                && records[5].1.ends_with(&format!("by {second}")),
            "writers: {records:?}"
        );
        ensure_no_locks(&addr).await
    })
    .await;
}

#[tokio::test]
async fn fenced_write_rejects_a_stale_token() {
    require_tools();
    must_pass(async {
        let state = TempDir::new()?;
        let write = |token: &str, data: &str| {
            let mut command = Command::new("bash");
            command
                .arg(examples_dir().join("fenced-write.sh"))
                .args([state.path().to_str().unwrap_or_default(), token, data])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            command
        };
        for (token, data) in [("5", "first"), ("7", "second"), ("7", "again")] {
            run(&mut write(token, data), "fenced-write.sh")
                .await?
                .ensure_code(0, &format!("write with token {token}"))?;
        }
        let stale = run(&mut write("6", "stale"), "fenced-write.sh").await?;
        stale.ensure_code(3, "write with stale token 6")?;
        ensure!(
            stale.stderr.contains("stale token 6"),
            "stderr {:?}",
            stale.stderr
        );
        run(&mut write("seven", "x"), "fenced-write.sh")
            .await?
            .ensure_code(2, "a token that is not a number")?;
        let records = records(state.path())?;
        ensure!(
            records
                == [
                    (5, "first".to_owned()),
                    (7, "second".to_owned()),
                    (7, "again".to_owned())
                ],
            "records {records:?}"
        );
        let highest = std::fs::read_to_string(state.path().join("highest-token"))?;
        ensure!(highest.trim() == "7", "highest {highest:?}");
        Ok(())
    })
    .await;
}

#[tokio::test]
async fn lock_script_stops_writing_once_its_lease_is_gone() {
    require_tools();
    let cluster = Cluster::start_single(&[]).await.expect("start");
    must_pass(async {
        let addr = cluster.addr(1);
        let state = TempDir::new()?;
        let state_dir = state.path().to_str().context("path")?;
        let child = script(
            &addr,
            "lock.sh",
            &[],
            &[
                ("TTL", "3s"),
                ("STEPS", "100"),
                ("STEP_SECONDS", "0.2"),
                ("STATE_DIR", state_dir),
            ],
        )
        .spawn()?;
        let lock = wait_held(&addr, "demo").await?;
        let holder = lock.holder.context("held without a holder")?;
        let (token, lease) = (
            holder.token.context("token shown")?,
            holder.lease.context("lease shown")?,
        );
        // Take the lease away behind the script's back: its next keepalive gets a 404.
        let revoked = reqwest::Client::new()
            .delete(format!("http://{addr}/v1/leases/{lease}"))
            .send()
            .await?;
        ensure!(revoked.status() == 200, "revoke: {}", revoked.status());
        let run = finish(child, "lock.sh").await?;
        run.ensure_code(4, "lock.sh after its lease was revoked")?;
        ensure!(
            run.stderr.contains("lost lock demo") && run.stderr.contains("stopped writing"),
            "stderr:\n{}",
            run.stderr
        );
        let written = records(state.path())?;
        ensure!(
            !written.is_empty() && written.len() < 100,
            "{} records",
            written.len()
        );
        ensure!(written.iter().all(|(t, _)| *t == token), "{written:?}");
        // Nothing is written after the script exited (no orphan keeps working).
        tokio::time::sleep(Duration::from_millis(500)).await;
        ensure!(
            records(state.path())?.len() == written.len(),
            "written after exit"
        );
        ensure_no_locks(&addr).await
    })
    .await;
}

#[tokio::test]
async fn interrupted_lock_script_releases_the_lock_and_a_second_one_does_not_wait() {
    require_tools();
    let cluster = Cluster::start_single(&[]).await.expect("start");
    must_pass(async {
        let addr = cluster.addr(1);
        let state = TempDir::new()?;
        let state_dir = state.path().to_str().context("path")?;
        let env = [
            ("TTL", "10s"),
            ("STEPS", "100"),
            ("STEP_SECONDS", "0.2"),
            ("STATE_DIR", state_dir),
            ("HOLDER", "long-runner"),
        ];
        let child = script(&addr, "lock.sh", &["jobs"], &env).spawn()?;
        wait_held(&addr, "jobs").await?;

        // WAIT=0s (the default): a second script is refused at once with lock_held.
        let second = run(
            &mut script(&addr, "lock.sh", &["jobs"], &[("STATE_DIR", state_dir)]),
            "second lock.sh",
        )
        .await?;
        second.ensure_code(1, "lock.sh while the lock is held")?;
        ensure!(
            second.stderr.contains("lock_held") && second.stderr.contains("long-runner"),
            "stderr:\n{}",
            second.stderr
        );

        // SIGTERM: the trap stops the keepalive loop and releases the lock, so it is free
        // at once (no TTL to wait out, no lock-delay).
        let pid = Pid::from_raw(i32::try_from(child.id().context("no pid")?)?);
        kill(pid, Signal::SIGTERM)?;
        let run = finish(child, "lock.sh").await?;
        run.ensure_code(143, "lock.sh after SIGTERM")?;
        ensure!(
            run.stdout.contains("released lock jobs"),
            "stdout:\n{}",
            run.stdout
        );
        let lock = get_lock(&addr, "jobs").await?;
        ensure!(
            !lock.held && lock.delay_until_ms.is_none(),
            "after SIGTERM: {lock:?}"
        );
        ensure_no_locks(&addr).await
    })
    .await;
}

#[tokio::test]
async fn elect_script_leads_proclaims_and_resigns_while_observe_follows() {
    require_tools();
    let cluster = Cluster::start_single(&[]).await.expect("start");
    must_pass(async {
        let addr = cluster.addr(1);
        let dir = TempDir::new()?;
        let observed = dir.path().join("observed");
        let started = Instant::now();
        // Observe until 3 changes (leader, proclaimed value, no leader) or 30 s.
        let observer = script(&addr, "elect.sh", &["observe", "demo", "3", "30"], &[])
            .stdout(std::fs::File::create(&observed)?)
            .spawn()?;
        // Start leading only once the observer has shown the initial state.
        wait_until(CHANGE_TIMEOUT, "the observer's first line", || async {
            let text = std::fs::read_to_string(&observed)?;
            ensure!(text.contains("no leader"), "observed so far: {text:?}");
            Ok(())
        })
        .await?;

        let lead = run(
            &mut script(
                &addr,
                "elect.sh",
                &["lead", "demo"],
                &[
                    ("CANDIDATE", "leader-1"),
                    ("PROCLAIM", "leader-1 v2"),
                    ("TTL", "3s"),
                    ("STEPS", "2"),
                    ("STEP_SECONDS", "1"),
                ],
            ),
            "elect.sh lead",
        )
        .await?;
        lead.ensure_code(0, "elect.sh lead")?;
        let token = lead.number_after("with token ")?;
        for line in [
            format!("proclaimed \"leader-1 v2\" in election demo (token {token})"),
            format!("resigned from election demo (token {token})"),
        ] {
            ensure!(
                lead.stdout.contains(&line),
                "no {line:?} in:\n{}",
                lead.stdout
            );
        }

        let observer = finish(observer, "elect.sh observe").await?;
        observer.ensure_code(0, "elect.sh observe")?;
        eprintln!("election scripts took {:?}", started.elapsed());
        let text = std::fs::read_to_string(&observed)?;
        let lines: Vec<&str> = text.lines().collect();
        let expected = [
            "election demo: no leader".to_owned(),
            format!("election demo: led by \"leader-1\" (token {token})"),
            format!("election demo: leader (token {token}) proclaimed \"leader-1 v2\""),
            "election demo: no leader".to_owned(),
            "observed 3 change(s) of election demo".to_owned(),
        ];
        ensure!(lines == expected, "observed:\n{text}");

        let election: ElectionInfo =
            serde_json::from_str(&get_text(&addr, "/v1/elections/demo").await?)?;
        if election.leader.is_some() || !election.candidates.is_empty() {
            bail!("after resigning: {election:?}");
        }
        Ok(())
    })
    .await;
}
