//! The client's example programs (`registry-client/examples/hello_service.rs` and
//! `hello_caller.rs`) run as real processes against a single-node registry: services
//! register themselves and answer, a caller spreads its calls over them through the
//! discovery cache and routes around a crashed one, and a service deregisters and exits 0
//! on SIGTERM.
//!
//! This test builds nothing: it runs `target/<profile>/examples/hello_service` and
//! `hello_caller`, which `cargo build -p registry-client --examples` builds
//! (`$REGISTRY_EXAMPLES_DIR` overrides the directory).

#![allow(clippy::unwrap_used)]

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _, Result};
use api_spec::{Instance, InstanceStatus};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use registry_client::{Client, ReadOptions, ServiceQuery};
use tempfile::TempDir;
use tests::{must_pass, wait_until, Cluster};

/// How long a service may take to start and register, or to exit after a signal.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one run of the caller may take.
const CALLER_TIMEOUT: Duration = Duration::from_secs(30);

/// The directory holding the example binaries: `$REGISTRY_EXAMPLES_DIR`, else
/// `target/<profile>/examples` next to this test executable (in `target/<profile>/deps`).
fn examples_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("REGISTRY_EXAMPLES_DIR") {
        return PathBuf::from(dir);
    }
    let exe = std::env::current_exe().expect("cannot find the test executable's path");
    exe.parent()
        .and_then(Path::parent)
        .expect("test executable has no parent")
        .join("examples")
}

fn example_binary(name: &str) -> PathBuf {
    let path = examples_dir().join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    assert!(
        path.is_file(),
        "example binary not found at {}: run `cargo build -p registry-client --examples` \
         (or set REGISTRY_EXAMPLES_DIR)",
        path.display()
    );
    path
}

/// A running `hello_service`, its output going to a log file. Dropping it SIGKILLs the
/// process (if it still runs) and prints its log when the test is failing.
struct Service {
    id: String,
    /// A mutex so `&self` methods can reap it; never held across an `.await`.
    child: Mutex<Option<Child>>,
    log: PathBuf,
}

impl Service {
    fn start(dir: &TempDir, registry: &str, id: &str, ttl: &str) -> Result<Service> {
        let log = dir.path().join(format!("{id}.log"));
        let out = File::create(&log)?;
        let child = Command::new(example_binary("hello_service"))
            .args(["--registry", registry, "--name", "hello", "--id", id])
            .args(["--ttl", ttl])
            .env_remove("REGISTRY")
            .stdin(Stdio::null())
            .stdout(Stdio::from(out.try_clone()?))
            .stderr(Stdio::from(out))
            .spawn()
            .context("spawn hello_service")?;
        Ok(Service {
            id: id.to_owned(),
            child: Mutex::new(Some(child)),
            log,
        })
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_else(|e| format!("(no log: {e})"))
    }

    fn child(&self) -> MutexGuard<'_, Option<Child>> {
        self.child.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Fails, with its log, if the process has exited.
    fn ensure_running(&self) -> Result<()> {
        let mut child = self.child();
        let child = child.as_mut().context("not running")?;
        if let Some(status) = child.try_wait()? {
            bail!("{} exited ({status}); log:\n{}", self.id, self.log());
        }
        Ok(())
    }

    fn signal(&self, signal: Signal) -> Result<()> {
        let child = self.child();
        let child = child.as_ref().context("not running")?;
        let pid = Pid::from_raw(i32::try_from(child.id())?);
        kill(pid, signal).with_context(|| format!("send {signal} to {}", self.id))
    }

    /// Waits up to `timeout` for the process to exit, and reaps it.
    async fn wait_exit(&self, timeout: Duration) -> Result<ExitStatus> {
        let started = Instant::now();
        loop {
            {
                let mut child = self.child();
                let process = child.as_mut().context("not running")?;
                if let Some(status) = process.try_wait()? {
                    *child = None;
                    return Ok(status);
                }
            }
            ensure!(
                started.elapsed() < timeout,
                "{} still runs {timeout:?} after the signal; log:\n{}",
                self.id,
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        if let Some(mut child) = self.child().take() {
            // Best effort: it may have exited on its own.
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!("----- {} log -----\n{}", self.id, self.log());
        }
    }
}

/// What a finished `hello_caller` run did.
#[derive(Debug)]
struct CallerRun {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl CallerRun {
    /// The answers it printed, one per answered call (`hello from <id>`).
    fn answers(&self) -> Vec<&str> {
        self.stdout
            .lines()
            .filter_map(|line| line.split_once(": ").map(|(_, rest)| rest))
            .filter_map(|rest| rest.split_once(" (").map(|(answer, _)| answer))
            .collect()
    }

    fn answered_by(&self, id: &str) -> usize {
        let expected = format!("hello from {id}");
        self.answers().iter().filter(|a| **a == expected).count()
    }
}

/// Runs `hello_caller` for `calls` calls (killed if the test drops it).
async fn run_caller(registry: &str, calls: usize) -> Result<CallerRun> {
    let calls = calls.to_string();
    let child = tokio::process::Command::new(example_binary("hello_caller"))
        .args(["--registry", registry, "--name", "hello", "--calls", &calls])
        .env_remove("REGISTRY")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("spawn hello_caller")?;
    let output = tokio::time::timeout(CALLER_TIMEOUT, child.wait_with_output())
        .await
        .context("hello_caller hung")??;
    Ok(CallerRun {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    })
}

/// Every instance of `hello`, whatever its status.
async fn instances(client: &Client) -> Result<Vec<Instance>> {
    let any = ServiceQuery {
        status: Some(None),
        ..ServiceQuery::default()
    };
    let mut instances = client
        .service("hello", &any, ReadOptions::default())
        .await?
        .value
        .instances;
    instances.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(instances)
}

/// `(id, status)` of every instance of `hello`.
async fn registered(client: &Client) -> Result<Vec<(String, InstanceStatus)>> {
    Ok(instances(client)
        .await?
        .into_iter()
        .map(|i| (i.id, i.status))
        .collect())
}

#[tokio::test(flavor = "multi_thread")]
async fn services_register_callers_spread_and_sigterm_deregisters() {
    let cluster = Cluster::start_single(&[]).await.unwrap();
    let dir = tempfile::Builder::new()
        .prefix("hello-examples-")
        .tempdir()
        .unwrap();
    let registry = cluster.addr(1);
    let a = Service::start(&dir, &registry, "hello-a", "5s").unwrap();
    let b = Service::start(&dir, &registry, "hello-b", "5s").unwrap();
    // c's lease outlives the test: after its crash it stays listed as passing.
    let c = Service::start(&dir, &registry, "hello-c", "1m").unwrap();
    must_pass(async {
        let raw = cluster.client();
        let passing = |id: &str| (id.to_owned(), InstanceStatus::Passing);
        let all = vec![passing("hello-a"), passing("hello-b"), passing("hello-c")];
        wait_until(START_TIMEOUT, "the three services to register", || async {
            for service in [&a, &b, &c] {
                service.ensure_running()?;
            }
            let seen = registered(&raw).await?;
            ensure!(seen == all, "registered: {seen:?}");
            Ok(())
        })
        .await?;
        for instance in instances(&raw).await? {
            ensure!(
                instance.address == "127.0.0.1" && instance.port != 0,
                "{instance:?}"
            );
        }

        // Round robin over three: every one answers.
        let run = run_caller(&registry, 9).await?;
        ensure!(run.code == Some(0), "{run:#?}");
        ensure!(run.answers().len() == 9, "{run:#?}");
        for id in ["hello-a", "hello-b", "hello-c"] {
            ensure!(run.answered_by(id) == 3, "{id}: {run:#?}");
        }

        // c crashes without deregistering, so the registry still lists it as passing:
        // the caller's calls to it fail, are retried elsewhere, and after two failures
        // in a row c is ejected.
        c.signal(Signal::SIGKILL)?;
        c.wait_exit(START_TIMEOUT).await?;
        ensure!(registered(&raw).await? == all, "c is no longer listed");
        let run = run_caller(&registry, 10).await?;
        ensure!(run.code == Some(0), "{run:#?}");
        ensure!(run.answers().len() == 10, "{run:#?}");
        ensure!(run.answered_by("hello-c") == 0, "{run:#?}");
        ensure!(
            run.answered_by("hello-a") >= 4 && run.answered_by("hello-b") >= 4,
            "{run:#?}"
        );
        let failed_on_c = run.stderr.matches("hello-c at").count();
        ensure!((1..=2).contains(&failed_on_c), "{run:#?}");

        // SIGTERM: a deregisters (gone, not critical) and exits 0.
        a.signal(Signal::SIGTERM)?;
        let status = a.wait_exit(START_TIMEOUT).await?;
        ensure!(
            status.success(),
            "hello-a exited {status}; log:\n{}",
            a.log()
        );
        ensure!(a.log().contains("hello-a: deregistered"), "{}", a.log());
        let seen = registered(&raw).await?;
        ensure!(
            seen == vec![passing("hello-b"), passing("hello-c")],
            "after hello-a's SIGTERM: {seen:?}"
        );
        b.ensure_running()?;
        Ok(())
    })
    .await;
}
