//! Backups (`GET /v1/snapshot`) and disaster recovery from one (`--restore`).
//!
//! A backup is the state at one applied index, as a snapshot file (the same bytes a
//! leader sends a follower), wrapped with a summary (`api_spec::backup`).
//!
//! A restore writes that state as the snapshot of a new data dir whose only member is
//! this server, at the backup's index: on start, openraft takes the snapshot as applied
//! and committed, the one voter elects itself, and the log continues above the backup's
//! index (so indexes clients saw never repeat). Everything replicated comes back: the
//! catalog, leases, locks and elections with their fencing-token counter (a restored
//! cluster only grants higher tokens), ACL tokens, replicated time. Leases start again
//! at their full TTL, as after any leader change. Nothing in the data dir is written
//! before the file has been read and checked whole.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use api_spec::backup::BackupSummary;
use openraft::{CommittedLeaderId, LogId, Membership, SnapshotMeta, StoredMembership};

use crate::raft::store::snapshot_file::{self, SnapshotDir, SNAPSHOT_FORMAT_VERSION};
use crate::raft::store::state_machine::{SharedState, StateData};
use crate::raft::types::{Node, NodeId};

/// Encodes a backup of `state` as it is now. Blocking (it encodes the whole state while
/// holding the read lock, as a snapshot build does).
pub fn backup(
    state: &SharedState,
    node_id: NodeId,
    now_ms: u64,
) -> Result<(BackupSummary, Vec<u8>), String> {
    let data = state.read();
    let Some(last) = data.last_applied else {
        return Err("nothing has been applied yet".to_owned());
    };
    let meta = SnapshotMeta {
        last_log_id: data.last_applied,
        last_membership: data.membership.clone(),
        snapshot_id: format!("backup-{}-{}", last.leader_id.term, last.index),
    };
    let encoded = bincode::serialize(&*data).map_err(|e| e.to_string())?;
    let counts = crate::metrics::StateCounts::of(&data.app);
    let acl_tokens = data.app.acl.tokens().count() as u64;
    let elections = data.app.coordinator.locks(locks::Kind::Election).count() as u64;
    let locks = data.app.coordinator.locks(locks::Kind::Lock).count() as u64;
    drop(data);
    let snapshot = snapshot_file::encode(&meta, &encoded).map_err(|e| e.to_string())?;
    let summary = BackupSummary {
        index: last.index,
        term: last.leader_id.term,
        node_id,
        created_at_ms: now_ms,
        snapshot_format: SNAPSHOT_FORMAT_VERSION,
        snapshot_bytes: snapshot.len() as u64,
        snapshot_crc32: crc32fast::hash(&snapshot),
        services: counts.services as u64,
        instances: (counts.passing + counts.draining + counts.critical) as u64,
        leases: counts.leases as u64,
        locks,
        elections,
        acl_tokens,
        last_fencing_token: counts.last_token,
    };
    let file = api_spec::backup::encode(&summary, &snapshot).map_err(|e| e.to_string())?;
    Ok((summary, file))
}

/// Whether `data_dir` holds no cluster yet (missing, or empty).
pub fn is_empty_dir(data_dir: &Path) -> Result<bool, String> {
    match std::fs::read_dir(data_dir) {
        Ok(mut entries) => Ok(entries.next().is_none()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(true),
        Err(e) => Err(format!(
            "cannot read --data-dir {}: {e}",
            data_dir.display()
        )),
    }
}

/// Reads and checks the backup at `file` whole, then writes its state as the snapshot of
/// `data_dir` (which must be empty) with `node_id` at `addr` as the only member.
pub fn restore(
    file: &Path,
    data_dir: &Path,
    node_id: NodeId,
    addr: &str,
) -> Result<BackupSummary, String> {
    let named = |e: &dyn std::fmt::Display| format!("--restore {}: {e}", file.display());
    if !is_empty_dir(data_dir)? {
        return Err(format!(
            "--restore needs an empty --data-dir, and {} is not: a restore starts a new \
             cluster, it never writes over one",
            data_dir.display()
        ));
    }
    let bytes = std::fs::read(file).map_err(|e| named(&format!("cannot read it: {e}")))?;
    let (summary, snapshot) = api_spec::backup::decode(&bytes).map_err(|e| named(&e))?;
    let (_, state) =
        snapshot_file::decode(snapshot).map_err(|e| named(&format!("its snapshot {e}")))?;
    let data: StateData = bincode::deserialize(state)
        .map_err(|e| named(&format!("its state cannot be decoded: {e}")))?;
    let index = data
        .last_applied
        .map(|l| l.index)
        .ok_or_else(|| named(&"it holds no applied state"))?;
    // Term 0: this server's first election (term 1) is above it, so its entries follow.
    let last = LogId::new(CommittedLeaderId::new(0, node_id), index);
    let members = Membership::new(
        vec![BTreeSet::from([node_id])],
        BTreeMap::from([(
            node_id,
            Node {
                addr: addr.to_owned(),
            },
        )]),
    );
    let membership = StoredMembership::new(Some(last), members);
    let restored = StateData {
        last_applied: Some(last),
        membership: membership.clone(),
        app: data.app,
        clock_applied_at: None,
    };
    let meta = SnapshotMeta {
        last_log_id: Some(last),
        last_membership: membership,
        snapshot_id: format!("restored-{index}"),
    };
    let encoded = bincode::serialize(&restored).map_err(|e| e.to_string())?;
    let file_bytes = snapshot_file::encode(&meta, &encoded).map_err(|e| e.to_string())?;
    let (snapshots, _) = SnapshotDir::open(data_dir.join("snapshot")).map_err(|e| e.to_string())?;
    snapshots
        .store(&meta, &file_bytes)
        .map_err(|e| e.to_string())?;
    Ok(summary)
}
