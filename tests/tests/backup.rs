//! Backup and restore on real servers: a backup taken from a 3-node cluster under load
//! holds every write acknowledged before it; `--restore` starts a new cluster from it
//! (leases at their full TTL, fencing tokens above the backup's, indexes above its
//! index) that grows with `--join`; damaged files and non-empty data dirs are refused
//! with one clear line and change nothing.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use api_spec::RegisterRequest;
use registry_client::{Client, Consistency, LockOptions, ReadOptions, ServiceQuery};
use tests::{must_pass, wait_until, Cluster};

const TIMEOUT: Duration = Duration::from_secs(30);

fn registration(ttl: &str) -> RegisterRequest {
    serde_json::from_value(serde_json::json!({
        "address": "127.0.0.1", "port": 9000, "ttl": ttl, "deregister_after": "5m"
    }))
    .expect("a valid registration")
}

async fn instance_ids(api: &Client, consistency: Consistency) -> Result<BTreeSet<String>> {
    let read = ReadOptions {
        consistency,
        ..ReadOptions::default()
    };
    let query = ServiceQuery {
        status: Some(None),
        ..ServiceQuery::default()
    };
    let found = api.service("load", &query, read).await?.value;
    Ok(found.instances.into_iter().map(|i| i.id).collect())
}

/// Registers `load/w{n}-{i}` for i = 0, 1, ... until `stop`, recording each one the
/// cluster acknowledged.
async fn writer(api: Client, n: usize, stop: Arc<AtomicBool>, acked: Arc<Mutex<Vec<String>>>) {
    let mut i = 0;
    while !stop.load(Ordering::Relaxed) {
        let id = format!("w{n}-{i}");
        if api.register("load", &id, &registration("1h")).await.is_ok() {
            acked.lock().unwrap_or_else(|e| e.into_inner()).push(id);
        }
        i += 1;
    }
}

#[tokio::test]
async fn a_backup_under_load_restores_into_a_new_cluster_that_grows() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let file = dir.path().join("registry.backup");
    must_pass(async {
        let cluster = Cluster::start(3, &[]).await?;
        let leader = cluster.leader_id().await?;
        let api = cluster.client();
        // Something of every kind: a lease-bound instance, a held lock.
        api.register("web", "web-1", &registration("30s")).await?;
        let guard = api.lock("db", LockOptions::default()).await?;
        let held_token = guard.token();

        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(Mutex::new(Vec::new()));
        let writers: Vec<_> = (0..8)
            .map(|n| tokio::spawn(writer(cluster.client(), n, stop.clone(), acked.clone())))
            .collect();
        wait_until(TIMEOUT, "writes under way", || async {
            let n = acked.lock().unwrap_or_else(|e| e.into_inner()).len();
            ensure!(n >= 50, "{n} writes acknowledged");
            Ok(())
        })
        .await?;
        // Every write acknowledged before the backup is asked for must be in it.
        let before: Vec<String> = acked.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let backup = cluster.client_for(leader).snapshot(TIMEOUT).await?;
        let (summary, _) = api_spec::backup::decode(&backup.value)?;
        ensure!(
            backup.index == Some(summary.index),
            "{:?} vs {}",
            backup.index,
            summary.index
        );
        stop.store(true, Ordering::Relaxed);
        for w in writers {
            w.await?;
        }
        std::fs::write(&file, &backup.value)?;
        ensure!(summary.services == 2, "{summary:?}");
        ensure!(summary.instances as usize > before.len(), "{summary:?}");
        ensure!(
            summary.locks == 1 && summary.last_fencing_token >= held_token,
            "{summary:?}"
        );

        // regctl reads the file and checks it.
        let regctl = tests::server_binary().with_file_name("regctl");
        let inspect = std::process::Command::new(regctl)
            .args(["--json", "snapshot", "inspect"])
            .arg(&file)
            .output()?;
        ensure!(
            inspect.status.success(),
            "{}",
            String::from_utf8_lossy(&inspect.stderr)
        );
        let printed: api_spec::backup::BackupSummary = serde_json::from_slice(&inspect.stdout)?;
        ensure!(printed == summary, "{printed:?}");
        drop(cluster);

        let path = file.display().to_string();
        let mut fresh = Cluster::start_single_with(&[], &["--restore", &path]).await?;
        let api = fresh.client_for(1);
        let ids = instance_ids(&api, Consistency::Linearizable).await?;
        let missing: Vec<&String> = before.iter().filter(|id| !ids.contains(*id)).collect();
        ensure!(
            missing.is_empty(),
            "acknowledged before the backup, not restored: {missing:?}"
        );
        // The lease starts again at its full TTL.
        let web = api
            .service("web", &ServiceQuery::default(), ReadOptions::default())
            .await?;
        ensure!(
            web.index.is_some_and(|i| i > summary.index),
            "index {:?} not above {}",
            web.index,
            summary.index
        );
        let lease = web
            .value
            .instances
            .first()
            .context("web-1 restored")?
            .lease
            .context("web-1 has a lease")?;
        // Known once the new leader's lease clock runs (its first tick after leading).
        let remaining = wait_until(
            TIMEOUT,
            "the leader to know the lease's time left",
            || async {
                let info = api.get_lease(lease, Consistency::Linearizable).await?.value;
                info.remaining_ms.context("not yet known")
            },
        )
        .await?;
        ensure!(
            remaining > 25_000,
            "lease restarted with {remaining} ms of 30 s"
        );
        // The lock is still held (its lease is back too); a new grant is above every
        // token in the backup.
        let lock = api.lock_info("db", ReadOptions::default()).await?.value;
        ensure!(lock.holder.is_some(), "{lock:?}");
        let grant = api.lock("fresh", LockOptions::default()).await?;
        ensure!(
            grant.token() > summary.last_fencing_token,
            "token {} not above the backup's {}",
            grant.token(),
            summary.last_fencing_token
        );
        grant.release().await?;

        // It grows back to three with --join, and the new members get the restored state.
        for id in [2, 3] {
            fresh.start_joining(id, 1).await?;
            let joined = fresh.client_for(id);
            wait_until(
                TIMEOUT,
                "a joined member to hold the restored state",
                || async {
                    let ids = instance_ids(&joined, Consistency::Stale).await?;
                    ensure!(
                        before.iter().all(|id| ids.contains(id)),
                        "{} instances",
                        ids.len()
                    );
                    Ok(())
                },
            )
            .await?;
        }
        let status = fresh.status(1).await?;
        let voters = status.members.iter().filter(|m| m.voter).count();
        ensure!(voters == 3, "{:?}", status.members);
        Ok(())
    })
    .await;
}

/// The server's one-line error when `--restore` with `file` into `data_dir` is refused,
/// and a check that the data dir was left as it was.
fn refused(file: &Path, data_dir: &Path) -> Result<String> {
    let before: Vec<_> = list(data_dir);
    let args = vec!["--restore".to_owned(), file.display().to_string()];
    let stderr = tests::start_up_failure(data_dir, &args)?;
    let last = stderr.lines().last().unwrap_or_default().to_owned();
    ensure!(last.starts_with("registry-server: error: "), "{stderr}");
    ensure!(
        list(data_dir) == before,
        "the data dir changed: {:?}",
        list(data_dir)
    );
    Ok(last)
}

fn list(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    entries.sort();
    entries
}

#[tokio::test]
async fn damaged_and_foreign_files_and_used_data_dirs_are_refused() {
    let cluster = Cluster::start_single(&[]).await.expect("start a node");
    let api = cluster.client_for(1);
    must_pass(async {
        api.register("web", "web-1", &registration("30s")).await?;
        let good = api.snapshot(TIMEOUT).await?.value;
        let dir = tempfile::tempdir()?;
        let write = |name: &str, bytes: &[u8]| -> Result<std::path::PathBuf> {
            let path = dir.path().join(name);
            std::fs::write(&path, bytes)?;
            Ok(path)
        };
        let mut flipped = good.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 0x40;
        let cases = [
            (
                "truncated",
                write("truncated", &good[..good.len() - 10])?,
                "truncated",
            ),
            ("flipped", write("flipped", &flipped)?, "corrupt"),
            (
                "foreign",
                write("foreign", b"{\"not\": \"a backup\"}")?,
                "not a registry backup",
            ),
            ("missing", dir.path().join("missing"), "cannot read"),
        ];
        for (name, file, wanted) in cases {
            let empty = tempfile::tempdir()?;
            let line = refused(&file, empty.path()).with_context(|| name.to_owned())?;
            ensure!(
                line.contains(wanted) && line.contains(&file.display().to_string()),
                "{name}: {line}"
            );
        }
        // A data dir that holds something is never written over.
        let good_file = write("good", &good)?;
        let used = tempfile::tempdir()?;
        std::fs::write(used.path().join("something"), b"x")?;
        let line = refused(&good_file, used.path())?;
        ensure!(line.contains("needs an empty --data-dir"), "{line}");
        Ok(())
    })
    .await;
}
