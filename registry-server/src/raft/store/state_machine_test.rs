//! Snapshot files: a slow build never replaces a newer install, a damaged or newer-format
//! file stops `open` with an error naming it, and a crash's temporary files are removed.

use std::path::Path;

use openraft::entry::RaftEntry;
use openraft::storage::RaftStateMachine;
use openraft::{CommittedLeaderId, Entry, LogId, RaftSnapshotBuilder};

use super::StateMachineStore;
use crate::raft::store::snapshot_file::SNAPSHOT_FORMAT_VERSION;
use crate::raft::types::TypeConfig;
use crate::replicated::intern::List;

fn open(dir: &Path) -> StateMachineStore {
    try_open(dir).unwrap()
}

fn try_open(dir: &Path) -> Result<StateMachineStore, String> {
    StateMachineStore::open(dir.to_path_buf(), Default::default(), Default::default())
        .map_err(|e| e.to_string())
}

/// A state machine in `dir` that applied blank entries 1..=index.
async fn applied_up_to(dir: &Path, index: u64) -> StateMachineStore {
    let mut sm = open(dir);
    let entries =
        (1..=index).map(|i| Entry::new_blank(LogId::new(CommittedLeaderId::new(1, 1), i)));
    sm.apply(entries.collect::<Vec<Entry<TypeConfig>>>())
        .await
        .unwrap();
    sm
}

async fn applied_index(sm: &mut StateMachineStore) -> Option<u64> {
    sm.applied_state().await.unwrap().0.map(|l| l.index)
}

async fn current_index(sm: &mut StateMachineStore) -> Option<u64> {
    let snapshot = sm.get_current_snapshot().await.unwrap();
    snapshot.and_then(|s| s.meta.last_log_id).map(|l| l.index)
}

/// `dir` with a snapshot built at `index`; returns the snapshot file's path.
async fn with_snapshot(dir: &Path, index: u64) -> std::path::PathBuf {
    let mut sm = applied_up_to(dir, index).await;
    sm.get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap();
    dir.join("current.snap")
}

#[tokio::test]
async fn an_older_build_finishing_late_never_replaces_a_newer_install() {
    let (follower_dir, leader_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut follower = applied_up_to(follower_dir.path(), 10).await;
    // The build starts at index 10 (the state is encoded now) ...
    let mut older_build = follower.get_snapshot_builder().await;

    // ... a snapshot at index 20 from the leader is installed meanwhile ...
    let mut leader = applied_up_to(leader_dir.path(), 20).await;
    leader
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap();
    // What a follower is sent: the leader's current snapshot file.
    let sent = leader.get_current_snapshot().await.unwrap().unwrap();
    let mut received = follower.begin_receiving_snapshot().await.unwrap();
    *received = *sent.snapshot;
    follower
        .install_snapshot(&sent.meta, received)
        .await
        .unwrap();

    // ... and then the older build finishes writing.
    let built = older_build.build_snapshot().await.unwrap();
    assert_eq!(built.meta.last_log_id.map(|l| l.index), Some(10));
    assert_eq!(current_index(&mut follower).await, Some(20));
    assert_eq!(applied_index(&mut follower).await, Some(20));

    drop(follower);
    let mut reopened = open(follower_dir.path());
    assert_eq!(applied_index(&mut reopened).await, Some(20));
    assert_eq!(current_index(&mut reopened).await, Some(20));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_builds_at_one_log_id_each_write_their_own_file() {
    let dir = tempfile::tempdir().unwrap();
    let mut sm = applied_up_to(dir.path(), 7).await;
    for _ in 0..20 {
        let mut builders = Vec::new();
        for _ in 0..8 {
            builders.push(sm.get_snapshot_builder().await);
        }
        let builds = builders.into_iter().map(|mut b| {
            tokio::spawn(async move { b.build_snapshot().await.map(|s| s.meta.snapshot_id) })
        });
        let mut ids = Vec::new();
        for build in builds.collect::<Vec<_>>() {
            ids.push(build.await.unwrap().unwrap());
        }
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), 8, "snapshot ids are unique");
    }
    drop(sm);
    let mut reopened = open(dir.path());
    assert_eq!(applied_index(&mut reopened).await, Some(7));
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|name| name != "current.snap")
        .collect();
    assert!(
        leftovers.is_empty(),
        "no temporary files left: {leftovers:?}"
    );
}

#[tokio::test]
async fn a_truncated_snapshot_stops_open_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = with_snapshot(dir.path(), 5).await;
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() - 3]).unwrap();

    let err = try_open(dir.path()).unwrap_err();
    assert!(err.contains(&path.display().to_string()), "{err}");
    assert!(err.contains("is truncated"), "{err}");
}

#[tokio::test]
async fn a_corrupt_snapshot_stops_open_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = with_snapshot(dir.path(), 5).await;
    let mut bytes = std::fs::read(&path).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x40;
    std::fs::write(&path, &bytes).unwrap();

    let err = try_open(dir.path()).unwrap_err();
    assert!(err.contains(&path.display().to_string()), "{err}");
    assert!(err.contains("is corrupt: checksum"), "{err}");
}

#[tokio::test]
async fn a_snapshot_of_a_newer_format_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = with_snapshot(dir.path(), 5).await;
    let mut bytes = std::fs::read(&path).unwrap();
    let newer = SNAPSHOT_FORMAT_VERSION + 1;
    bytes[6..8].copy_from_slice(&newer.to_le_bytes());
    std::fs::write(&path, &bytes).unwrap();

    let err = try_open(dir.path()).unwrap_err();
    assert_eq!(
        err,
        format!(
            "snapshot file {} has format version {newer}; this server reads up to {SNAPSHOT_FORMAT_VERSION} — upgrade the server",
            path.display()
        )
    );

    // The same bytes sent by a newer leader are refused before anything is replaced.
    let follower_dir = tempfile::tempdir().unwrap();
    let mut follower = applied_up_to(follower_dir.path(), 3).await;
    let mut received = follower.begin_receiving_snapshot().await.unwrap();
    *received = std::io::Cursor::new(bytes);
    let meta = openraft::SnapshotMeta {
        last_log_id: Some(LogId::new(CommittedLeaderId::new(1, 1), 5)),
        last_membership: Default::default(),
        snapshot_id: "1-5-1".into(),
    };
    let err = follower
        .install_snapshot(&meta, received)
        .await
        .unwrap_err();
    let expected = format!(
        "received snapshot 1-5-1 has format version {newer}; this server reads up to {SNAPSHOT_FORMAT_VERSION}"
    );
    assert!(err.to_string().contains(&expected), "{err}");
    assert_eq!(applied_index(&mut follower).await, Some(3));
}

#[tokio::test]
async fn open_removes_temporary_files_left_by_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let path = with_snapshot(dir.path(), 4).await;
    let left = ["current.snap.tmp", "1-9-3.0.snap.tmp"].map(|name| dir.path().join(name));
    for tmp in &left {
        std::fs::write(tmp, b"half a snapshot").unwrap();
    }

    let mut sm = open(dir.path());
    assert_eq!(applied_index(&mut sm).await, Some(4));
    for tmp in &left {
        assert!(!tmp.exists(), "{} removed", tmp.display());
    }
    assert!(path.exists());
}

/// An entry at `index` registering instances `ids` of service `web` (own leases), each
/// with the same tags, meta and zone.
fn registrations(index: u64, ids: std::ops::Range<u32>) -> Entry<TypeConfig> {
    use crate::replicated::catalog::{key, InstanceSpec};
    use crate::replicated::intern;
    use crate::replicated::state::{Binding, Command};
    let commands = ids
        .map(|i| Command::Register {
            key: key("web", &format!("i-{i}")),
            spec: InstanceSpec {
                address: "127.0.0.1".into(),
                port: 8000 + i as u16,
                tags: intern::tags(["v1", "primary"]),
                meta: intern::meta([("version", "1.4.2")]),
                place: intern::Place::new(Some("zone-a".into()), None),
                weight: 1,
                deregister_after_ms: 60_000,
                checks: Box::default(),
            },
            binding: Binding::Own {
                new_lease: uuid::Uuid::from_u128(u128::from(i) + 1),
                ttl_ms: 10_000,
            },
        })
        .collect();
    Entry {
        log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
        payload: openraft::EntryPayload::Normal(crate::raft::types::Request {
            now_ms: 1_000 + index,
            commands,
        }),
    }
}

#[tokio::test]
async fn a_snapshot_is_of_the_state_when_it_began_while_applies_go_on() {
    let (dir, other) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut sm = open(dir.path());
    sm.apply(vec![registrations(1, 0..100)]).await.unwrap();
    let mut build = sm.get_snapshot_builder().await;
    // Nothing was encoded on the state machine's task: the builder holds the state.
    assert!(build.state.is_some());

    // The builder holds a clone: entries keep being applied to the live state (the
    // apply takes the state's write lock, which a builder encoding it would block) ...
    sm.apply(vec![registrations(2, 100..200), registrations(3, 0..50)])
        .await
        .unwrap();
    assert_eq!(applied_index(&mut sm).await, Some(3));
    let live = sm.shared();
    assert_eq!(live.read().app.catalog.instance_count("web"), 200);

    // ... and the snapshot, built afterwards, is of index 1 and its 100 instances.
    let built = build.build_snapshot().await.unwrap();
    assert_eq!(built.meta.last_log_id.map(|l| l.index), Some(1));
    let built = sm.get_current_snapshot().await.unwrap().unwrap();
    assert_eq!(built.meta.last_log_id.map(|l| l.index), Some(1));
    let mut restored = open(other.path());
    let mut received = restored.begin_receiving_snapshot().await.unwrap();
    *received = *built.snapshot;
    restored
        .install_snapshot(&built.meta, received)
        .await
        .unwrap();
    let restored = restored.shared();
    let restored = restored.read();
    assert_eq!(restored.app.catalog.instance_count("web"), 100);
    // Instance i-0 as registered at index 1, not as re-registered at index 3.
    let key = crate::replicated::catalog::key("web", "i-0");
    assert_eq!(
        restored.app.catalog.instance(&key).map(|r| r.modify_index),
        Some(1)
    );
    assert_eq!(
        live.read()
            .app
            .catalog
            .instance(&key)
            .map(|r| r.modify_index),
        Some(3)
    );
}

#[tokio::test]
async fn a_restored_catalog_shares_its_repeated_strings_again() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut sm = open(dir.path());
        sm.apply(vec![registrations(1, 0..10)]).await.unwrap();
        sm.get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .unwrap();
    }
    let before = {
        let mut sm = open(dir.path());
        assert_eq!(applied_index(&mut sm).await, Some(1));
        let state = sm.shared();
        let state = state.read();
        let catalog = &state.app.catalog;
        let a = catalog
            .instance(&crate::replicated::catalog::key("web", "i-1"))
            .unwrap();
        let b = catalog
            .instance(&crate::replicated::catalog::key("web", "i-7"))
            .unwrap();
        // Decoded from the file, then shared: one tag list, one meta list, one place.
        assert!(List::ptr_eq(&a.spec.tags, &b.spec.tags));
        assert!(List::ptr_eq(&a.spec.meta, &b.spec.meta));
        assert_eq!(a.spec.place, b.spec.place);
        assert!(std::sync::Arc::ptr_eq(
            a.spec.place.zone().unwrap(),
            b.spec.place.zone().unwrap()
        ));
        assert_eq!(&*a.spec.tags[1], "primary");
        assert_eq!(
            crate::replicated::intern::meta_get(&a.spec.meta, "version"),
            Some("1.4.2")
        );
        state.app.clone()
    };
    // What was decoded equals what a replica that applied the entry holds.
    let replayed = tempfile::tempdir().unwrap();
    let mut sm = open(replayed.path());
    sm.apply(vec![registrations(1, 0..10)]).await.unwrap();
    assert_eq!(sm.shared().read().app, before);
}
