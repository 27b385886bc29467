//! The state machine openraft applies committed entries to (`RaftStateMachine`).
//!
//! The state lives in memory behind [`SharedState`], which the HTTP layer reads directly.
//! Its maps are persistent (`imbl`), so a snapshot starts with an O(1) clone of the state
//! and encodes that clone on a blocking thread while entries go on being applied.
//! Snapshots are the bincode of that state in a versioned, checksummed file
//! (`store::snapshot_file`), written to `<data>/snapshot/current.snap` atomically (a
//! temporary file of its own, fsync, rename unless the current one is newer, fsync of the
//! directory). The file's bytes are what followers that fall behind the purged log are
//! sent, in chunks. On start the last snapshot is loaded and openraft replays the log from
//! there; a snapshot that fails its checks stops the start with an error naming the file.

use std::io::Cursor;
use std::path::PathBuf;
use std::sync::{Arc, RwLock, RwLockReadGuard};

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    AnyError, Entry, EntryPayload, LogId, RaftSnapshotBuilder, SnapshotMeta, StorageError,
    StorageIOError, StoredMembership,
};
use serde::{Deserialize, Serialize};

use crate::leader::lease_clock::LeaseClock;
use crate::raft::store::snapshot_file::{self, Invalid, SnapshotDir, SnapshotError};
use crate::raft::types::{Node, NodeId, Response, TypeConfig};
use crate::replicated::state::{AppState, Effects};
use crate::watch::Watches;

type StorageResult<T> = Result<T, StorageError<NodeId>>;

/// Everything a snapshot holds: Raft's view of what was applied, and the app state.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct StateData {
    /// The last log id applied to `app`.
    pub last_applied: Option<LogId<NodeId>>,
    /// The membership in force as of `last_applied`.
    pub membership: StoredMembership<NodeId, Node>,
    /// The application state.
    pub app: AppState,
    /// When (this node's monotonic clock) the entry that set `app.clock_ms` was applied
    /// here: a new leader counts the time since then (`leader::leader_time`). Local, not
    /// in snapshots; `None` until this process applied a stamped entry.
    #[serde(skip)]
    pub clock_applied_at: Option<tokio::time::Instant>,
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

/// openraft's state machine: applies entries to [`SharedState`] and keeps snapshots.
#[derive(Debug)]
pub struct StateMachineStore {
    state: SharedState,
    snapshots: SnapshotDir,
    /// Leader-side lease deadlines; told about every lease granted or ended.
    clock: LeaseClock,
    /// Blocking queries waiting for services to change.
    watches: Watches,
    /// Makes snapshot ids unique even when two are built at the same log id.
    snapshot_seq: u64,
}

impl StateMachineStore {
    /// Opens the state machine, loading the last snapshot in `snapshot_dir` if any. A
    /// snapshot that is truncated, corrupt or of an unknown version is an error naming the
    /// file, never a partial state.
    pub fn open(
        snapshot_dir: PathBuf,
        clock: LeaseClock,
        watches: Watches,
    ) -> Result<Self, SnapshotError> {
        let (snapshots, current) = SnapshotDir::open(snapshot_dir)?;
        let state = SharedState::default();
        if let Some(current) = current {
            let data = decode_state(&current.bytes)
                .map_err(|e| SnapshotError::invalid(&snapshots.current_path(), e))?;
            clock.reset(data.app.coordinator.leases());
            *state.write() = data;
        }
        Ok(Self {
            state,
            snapshots,
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

/// Checks a snapshot's bytes (header, checksum) and decodes the state they hold.
fn decode_state(bytes: &[u8]) -> Result<StateData, Invalid> {
    let (_, state) = snapshot_file::decode(bytes)?;
    decode_body(state)
}

/// Decodes a snapshot's body, sharing repeated strings again (bincode made one copy of
/// each per instance).
fn decode_body(body: &[u8]) -> Result<StateData, Invalid> {
    let (data, interner) =
        crate::replicated::intern::decoding(|| bincode::deserialize::<StateData>(body));
    let mut data = data?;
    data.app.catalog.rebuild(interner);
    Ok(data)
}

/// Why a received snapshot was not installed.
#[derive(Debug)]
enum InstallError {
    /// The bytes received are not a snapshot this server reads.
    Received(Invalid),
    Encode(bincode::Error),
    Store(SnapshotError),
}

fn io_err(e: impl std::error::Error + 'static) -> AnyError {
    AnyError::new(&e)
}

/// Writes a snapshot of the state as it was when openraft asked for a builder.
#[derive(Debug)]
pub struct SnapshotBuilder {
    /// A clone of the state then (O(1): it shares every map node with the live state,
    /// which copies a node only when an apply changes it). Taken by the build.
    state: Option<StateData>,
    last_applied: Option<LogId<NodeId>>,
    membership: StoredMembership<NodeId, Node>,
    snapshots: SnapshotDir,
    seq: u64,
    /// When the state was cloned (the build's duration counts from there).
    started: std::time::Instant,
}

/// Snapshots being built now on this node (0 or 1: openraft builds one at a time).
static BUILDING: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Whether this node is building a snapshot now (`registry_raft_snapshot_building`).
pub fn building() -> bool {
    BUILDING.load(std::sync::atomic::Ordering::Relaxed) > 0
}

/// Counts a build from start to end, whichever way it ends.
struct Building;

impl Building {
    fn start() -> Self {
        BUILDING.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Building
    }
}

impl Drop for Building {
    fn drop(&mut self) {
        BUILDING.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> StorageResult<Snapshot<TypeConfig>> {
        let state = self.state.take().ok_or_else(|| {
            StorageIOError::write_snapshot(None, AnyError::error("snapshot builder used twice"))
        })?;
        let snapshot_id = match self.last_applied {
            Some(l) => format!("{}-{}-{}", l.leader_id.term, l.index, self.seq),
            None => format!("0-0-{}", self.seq),
        };
        let meta = SnapshotMeta {
            last_log_id: self.last_applied,
            last_membership: self.membership.clone(),
            snapshot_id,
        };
        let snapshots = self.snapshots.clone();
        let file_meta = meta.clone();
        let building = Building::start();
        // Encoding a million instances takes seconds on a small machine: on a thread of
        // its own, from the clone, straight into the file, so applies (and the readers of
        // the live state) never wait for it and no copy of the bytes is kept in memory.
        // That thread runs at a low CPU priority (nice 10, about a tenth of a normal
        // thread's share when the cores are contended; on Linux a nice value is a
        // thread's own): requests, applies and the log's syncs go first, and the build
        // has the cores when they idle. Not lower: a build starved for longer keeps more
        // copied map nodes alive (at 1M instances, nice 19 measured 602 B per instance
        // against 585 at nice 10). Its own thread, not the blocking pool's: a pool thread
        // would keep the priority for the WAL syncs it runs next.
        let (done, answer) = tokio::sync::oneshot::channel();
        std::thread::Builder::new()
            .name("snapshot-build".into())
            .spawn(move || {
                if let Err(e) = rustix::process::nice(10) {
                    tracing::debug!(error = %e, "could not lower the snapshot thread's priority");
                }
                let built = snapshots
                    .store_with(&file_meta, |w| bincode::serialize_into(w, &state))
                    .map_err(io_err);
                let _ = done.send(built);
            })
            .map_err(|e| StorageIOError::write_snapshot(None, io_err(e)))?;
        let (current, size) = answer
            .await
            .map_err(|e| StorageIOError::write_snapshot(None, io_err(e)))?
            .map_err(|e| StorageIOError::write_snapshot(None, e))?;
        drop(building);
        let size = usize::try_from(size).unwrap_or(usize::MAX);
        crate::metrics::snapshot(false, self.started.elapsed(), size);
        if current {
            tracing::info!(
                snapshot = %meta.snapshot_id,
                bytes = size,
                elapsed_ms = self.started.elapsed().as_millis() as u64,
                "snapshot built"
            );
        } else {
            // A newer snapshot was installed meanwhile; openraft ignores an older one.
            tracing::info!(snapshot = %meta.snapshot_id, "snapshot built but not kept: a newer one is current");
        }
        // openraft keeps only the metadata of a snapshot it asked for (a follower is
        // sent the file, read again by `get_current_snapshot`).
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(Vec::new())),
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
                        let (term, index) = (entry.log_id.leader_id.term, entry.log_id.index);
                        state.clock_applied_at = Some(tokio::time::Instant::now());
                        let outcomes = request
                            .commands
                            .into_iter()
                            .map(|cmd| {
                                let now_ms = request.now_ms;
                                state
                                    .app
                                    .apply_logged(cmd, term, index, now_ms, &mut effects)
                            })
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
        // the clone is of one applied index. It is O(1) (persistent maps), and the
        // builder encodes it on its own while this task goes on applying.
        let started = std::time::Instant::now();
        let state = self.state.read().clone();
        let last_applied = state.last_applied;
        let membership = state.membership.clone();
        SnapshotBuilder {
            state: Some(state),
            last_applied,
            membership,
            snapshots: self.snapshots.clone(),
            seq: self.snapshot_seq,
            started,
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
        // The bytes are the sender's snapshot file: check them (version, checksum) and
        // decode the state before anything is replaced.
        let bytes = snapshot.into_inner();
        let (started, size) = (std::time::Instant::now(), bytes.len());
        let snapshots = self.snapshots.clone();
        let file_meta = meta.clone();
        let installed = tokio::task::spawn_blocking(move || {
            let (_, state) = snapshot_file::decode(&bytes).map_err(InstallError::Received)?;
            let data = decode_body(state).map_err(InstallError::Received)?;
            // Written with openraft's metadata, which is the authority for this install.
            let file = snapshot_file::encode(&file_meta, state).map_err(InstallError::Encode)?;
            let current = snapshots
                .store(&file_meta, &file)
                .map_err(InstallError::Store)?;
            Ok((data, current))
        })
        .await;
        let signature = Some(meta.signature());
        let (data, current) = match installed {
            Ok(Ok(installed)) => installed,
            Ok(Err(InstallError::Received(e))) => {
                let msg = format!("received snapshot {} {e}", meta.snapshot_id);
                return Err(StorageIOError::read_snapshot(signature, AnyError::error(msg)).into());
            }
            Ok(Err(InstallError::Encode(e))) => {
                return Err(StorageIOError::write_snapshot(signature, io_err(e)).into())
            }
            Ok(Err(InstallError::Store(e))) => {
                return Err(StorageIOError::write_snapshot(signature, io_err(e)).into())
            }
            Err(e) => return Err(StorageIOError::write_snapshot(signature, io_err(e)).into()),
        };
        if !current {
            tracing::warn!(snapshot = %meta.snapshot_id, "installed snapshot not kept on disk: a newer one is current");
        }
        self.clock.reset(data.app.coordinator.leases());
        crate::metrics::snapshot(true, started.elapsed(), size);
        tracing::info!(snapshot = %meta.snapshot_id, "snapshot installed");
        *self.state.write() = StateData {
            last_applied: meta.last_log_id,
            membership: meta.last_membership.clone(),
            app: data.app,
            clock_applied_at: Some(tokio::time::Instant::now()),
        };
        self.watches
            .notify_all(meta.last_log_id.map_or(0, |l| l.index));
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> StorageResult<Option<Snapshot<TypeConfig>>> {
        let snapshots = self.snapshots.clone();
        let current = tokio::task::spawn_blocking(move || snapshots.read_current())
            .await
            .map_err(|e| StorageIOError::read_snapshot(None, io_err(e)))?
            .map_err(|e| StorageIOError::read_snapshot(None, io_err(e)))?;
        Ok(current.map(|current| Snapshot {
            meta: current.meta,
            snapshot: Box::new(Cursor::new(current.bytes)),
        }))
    }
}

#[cfg(test)]
#[path = "state_machine_test.rs"]
mod tests;
