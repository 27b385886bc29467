//! The state machine openraft applies committed entries to (`RaftStateMachine`).
//!
//! The state lives in memory behind [`SharedState`], which the HTTP layer reads directly.
//! Snapshots are the bincode of that state, written to `<data>/snapshot/current.snap`
//! atomically (temporary file, fsync, rename, fsync of the directory) and sent in chunks
//! to followers that fall behind the purged log. On start the last snapshot is loaded and
//! openraft replays the log from there.

use std::io::{Cursor, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock, RwLockReadGuard};

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    AnyError, Entry, EntryPayload, LogId, RaftSnapshotBuilder, SnapshotMeta, StorageError,
    StorageIOError, StoredMembership,
};
use serde::{Deserialize, Serialize};

use crate::lease_clock::LeaseClock;
use crate::state::{AppState, Effects};
use crate::types::{Node, NodeId, Response, TypeConfig};
use crate::watch::Watches;

type StorageResult<T> = Result<T, StorageError<NodeId>>;

const SNAPSHOT_FILE: &str = "current.snap";

/// Everything a snapshot holds: Raft's view of what was applied, and the app state.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct StateData {
    /// The last log id applied to `app`.
    pub last_applied: Option<LogId<NodeId>>,
    /// The membership in force as of `last_applied`.
    pub membership: StoredMembership<NodeId, Node>,
    /// The application state.
    pub app: AppState,
}

/// A cheap handle to the in-memory state, shared by the state machine (writer) and the
/// HTTP handlers (readers). `std::sync::RwLock`: nobody awaits while holding it.
#[derive(Debug, Clone, Default)]
pub struct SharedState {
    inner: Arc<RwLock<StateData>>,
}

impl SharedState {
    /// Read access. A poisoned lock (a panic while applying) is still readable: the
    /// apply path never leaves the data half-changed across a panic point we control.
    pub fn read(&self) -> RwLockReadGuard<'_, StateData> {
        self.inner.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, StateData> {
        self.inner.write().unwrap_or_else(|e| e.into_inner())
    }

    /// The index of the last applied entry (0 before anything was applied).
    pub fn applied_index(&self) -> u64 {
        self.read().last_applied.map_or(0, |l| l.index)
    }
}

/// The snapshot file: metadata and the encoded [`StateData`].
#[derive(Debug, Serialize, Deserialize)]
struct SnapshotFile {
    meta: SnapshotMeta<NodeId, Node>,
    data: Vec<u8>,
}

/// openraft's state machine: applies entries to [`SharedState`] and keeps snapshots.
#[derive(Debug)]
pub struct StateMachineStore {
    state: SharedState,
    snapshot_dir: PathBuf,
    /// Leader-side lease deadlines; told about every lease granted or ended.
    clock: LeaseClock,
    /// Blocking queries waiting for services to change.
    watches: Watches,
    /// Makes snapshot ids unique even when two are built at the same log id.
    snapshot_seq: u64,
}

impl StateMachineStore {
    /// Opens the state machine, loading the last snapshot in `snapshot_dir` if any.
    pub fn open(
        snapshot_dir: PathBuf,
        clock: LeaseClock,
        watches: Watches,
    ) -> std::io::Result<Self> {
        std::fs::create_dir_all(&snapshot_dir)?;
        let state = SharedState::default();
        if let Some(file) = read_snapshot_file(&snapshot_dir)? {
            let data: StateData =
                bincode::deserialize(&file.data).map_err(std::io::Error::other)?;
            clock.reset(data.app.coordinator.leases());
            *state.write() = data;
        }
        Ok(Self {
            state,
            snapshot_dir,
            clock,
            watches,
            snapshot_seq: 0,
        })
    }

    /// The handle readers use.
    pub fn shared(&self) -> SharedState {
        self.state.clone()
    }

    /// Tells the lease clock and the watchers what a batch of entries did.
    fn publish(&self, effects: Effects, index: u64) {
        let coordination = &effects.coordination;
        coordination
            .granted
            .iter()
            .for_each(|lease| self.clock.track(lease));
        coordination
            .ended
            .iter()
            .for_each(|id| self.clock.forget(id));
        // A no-op unless leading; the lease may also have ended in the same batch.
        coordination.handed.iter().for_each(|id| {
            let _ = self.clock.keepalive(id);
        });
        self.watches.notify(&effects.services, index);
        self.watches.notify_locks(&coordination.changed, index);
        self.watches.wake(&coordination.woken);
    }
}

fn read_snapshot_file(dir: &Path) -> std::io::Result<Option<SnapshotFile>> {
    match std::fs::read(dir.join(SNAPSHOT_FILE)) {
        Ok(bytes) => Ok(Some(
            bincode::deserialize(&bytes).map_err(std::io::Error::other)?,
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Writes the snapshot file so that a crash leaves either the old or the new one.
fn write_snapshot_file(dir: &Path, file: &SnapshotFile) -> std::io::Result<()> {
    let bytes = bincode::serialize(file).map_err(std::io::Error::other)?;
    let tmp = dir.join(format!("{SNAPSHOT_FILE}.tmp"));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(&bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, dir.join(SNAPSHOT_FILE))?;
    std::fs::File::open(dir)?.sync_all()
}

fn io_err(e: impl std::error::Error + 'static) -> AnyError {
    AnyError::new(&e)
}

/// Writes a snapshot of the state as it was encoded when openraft asked for a builder.
#[derive(Debug)]
pub struct SnapshotBuilder {
    /// The bincode of [`StateData`], or why it could not be encoded.
    encoded: Result<Vec<u8>, String>,
    last_applied: Option<LogId<NodeId>>,
    membership: StoredMembership<NodeId, Node>,
    snapshot_dir: PathBuf,
    seq: u64,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> StorageResult<Snapshot<TypeConfig>> {
        let bytes = std::mem::replace(&mut self.encoded, Ok(Vec::new()))
            .map_err(|e| StorageIOError::write_snapshot(None, AnyError::error(e)))?;
        let snapshot_id = match self.last_applied {
            Some(l) => format!("{}-{}-{}", l.leader_id.term, l.index, self.seq),
            None => format!("0-0-{}", self.seq),
        };
        let meta = SnapshotMeta {
            last_log_id: self.last_applied,
            last_membership: self.membership.clone(),
            snapshot_id,
        };
        let dir = self.snapshot_dir.clone();
        let file = SnapshotFile {
            meta: meta.clone(),
            data: bytes,
        };
        let file =
            tokio::task::spawn_blocking(move || write_snapshot_file(&dir, &file).map(|()| file))
                .await
                .map_err(|e| StorageIOError::write_snapshot(None, io_err(e)))?
                .map_err(|e| StorageIOError::write_snapshot(None, io_err(e)))?;
        tracing::info!(snapshot = %meta.snapshot_id, bytes = file.data.len(), "snapshot built");
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(file.data)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(
        &mut self,
    ) -> StorageResult<(Option<LogId<NodeId>>, StoredMembership<NodeId, Node>)> {
        let state = self.state.read();
        Ok((state.last_applied, state.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> StorageResult<Vec<Response>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + Send,
        I::IntoIter: Send,
    {
        let mut responses = Vec::new();
        let mut effects = Effects::default();
        let mut last_index = 0;
        {
            let mut state = self.state.write();
            for entry in entries {
                state.last_applied = Some(entry.log_id);
                last_index = entry.log_id.index;
                let response = match entry.payload {
                    EntryPayload::Blank => Response::default(),
                    EntryPayload::Membership(membership) => {
                        state.membership = StoredMembership::new(Some(entry.log_id), membership);
                        Response::default()
                    }
                    EntryPayload::Normal(request) => {
                        let index = entry.log_id.index;
                        let outcomes = request
                            .commands
                            .into_iter()
                            .map(|cmd| state.app.apply(cmd, index, request.now_ms, &mut effects))
                            .collect();
                        Response { outcomes }
                    }
                };
                responses.push(response);
            }
        }
        // After the write lock is released, so woken readers see the new state.
        self.publish(effects, last_index);
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.snapshot_seq += 1;
        // This runs on openraft's state machine task, so nothing is applied meanwhile:
        // encode the state right here (one buffer, much quicker than a deep copy of
        // every instance) and leave the file writing to the builder.
        let started = std::time::Instant::now();
        let state = self.state.read();
        let encoded = bincode::serialize(&*state).map_err(|e| e.to_string());
        let last_applied = state.last_applied;
        let membership = state.membership.clone();
        drop(state);
        tracing::info!(
            elapsed_ms = started.elapsed().as_millis() as u64,
            "state encoded for a snapshot"
        );
        SnapshotBuilder {
            encoded,
            last_applied,
            membership,
            snapshot_dir: self.snapshot_dir.clone(),
            seq: self.snapshot_seq,
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> StorageResult<Box<Cursor<Vec<u8>>>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, Node>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> StorageResult<()> {
        let bytes = snapshot.into_inner();
        let data: StateData = bincode::deserialize(&bytes)
            .map_err(|e| StorageIOError::read_snapshot(Some(meta.signature()), io_err(e)))?;
        let file = SnapshotFile {
            meta: meta.clone(),
            data: bytes,
        };
        let dir = self.snapshot_dir.clone();
        tokio::task::spawn_blocking(move || write_snapshot_file(&dir, &file))
            .await
            .map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), io_err(e)))?
            .map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), io_err(e)))?;
        self.clock.reset(data.app.coordinator.leases());
        tracing::info!(snapshot = %meta.snapshot_id, "snapshot installed");
        *self.state.write() = StateData {
            last_applied: meta.last_log_id,
            membership: meta.last_membership.clone(),
            app: data.app,
        };
        self.watches
            .notify_all(meta.last_log_id.map_or(0, |l| l.index));
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> StorageResult<Option<Snapshot<TypeConfig>>> {
        let file = read_snapshot_file(&self.snapshot_dir)
            .map_err(|e| StorageIOError::read_snapshot(None, io_err(e)))?;
        Ok(file.map(|f| Snapshot {
            meta: f.meta,
            snapshot: Box::new(Cursor::new(f.data)),
        }))
    }
}
