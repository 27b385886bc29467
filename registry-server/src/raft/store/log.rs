//! The Raft log, vote and committed index in RocksDB (openraft's `RaftLogStorage`).
//!
//! Two column families: `logs` maps a big-endian `u64` index to an entry (so RocksDB's key
//! order is log order), `meta` holds the vote, the committed log id and the last purged log
//! id. Every value is one format-version byte then its bincode (`store::format`); a value of
//! an unknown version is refused, naming the entry's index or the metadata key.
//!
//! Durability: `append` writes all of a call's entries in one `WriteBatch` at once,
//! unsynced (so they are readable right away: openraft's replication reads the leader's
//! new entries from here while its fsync runs), then syncs the WAL and only then reports
//! `LogFlushed`. A leader syncs on a blocking thread, so its fsync overlaps the followers'
//! round trip instead of preceding it; a follower, whose answer waits for the sync
//! anyway, syncs on the calling task while syncs are quick (`LogStore::syncs_here`).
//! That is one WAL fsync per batch: openraft hands the log store one batch at a time and
//! goes on to the next while a sync runs, and the server's proposer
//! (`crate::raft::proposer`) packs every client write waiting at that moment into one
//! entry, so concurrent writes share one fsync (group commit) instead of paying one each.
//! The vote is written with `sync = true` too; truncation, purging and the committed
//! index are ordinary writes, made durable by the next synced write (the WAL is ordered).
//!
//! Reads: every commit reads its entries back at least twice (openraft's replication
//! reads them to send, and its core reads them to apply), a few entries just written and
//! still in the memtable. Such short reads run on the calling task; a long one (a
//! follower far behind) runs on a blocking thread, as it may read from disk. Each thread
//! hop spared is a wake-up less on the commit path (README, Benchmarks).

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use openraft::storage::{LogFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::{
    AnyError, Entry, EntryPayload, LogId, RaftLogId, StorageError, StorageIOError, Vote,
};
use rocksdb::{
    BlockBasedOptions, Cache, ColumnFamilyDescriptor, Direction, IteratorMode, Options, WriteBatch,
    WriteOptions, DB,
};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::raft::store::format;
use crate::raft::types::{NodeId, TypeConfig};

const CF_LOGS: &str = "logs";
const CF_META: &str = "meta";
const KEY_VOTE: &[u8] = b"vote";
const KEY_COMMITTED: &[u8] = b"committed";
const KEY_LAST_PURGED: &[u8] = b"last_purged";

type StorageResult<T> = Result<T, StorageError<NodeId>>;

/// Reads of at most this many entries run on the calling task (see `try_get_log_entries`).
const INLINE_READ_ENTRIES: u64 = 64;

/// A follower syncs on the calling task while the latest sync took at most this long
/// (see `LogStore::syncs_here`); this disk's take about 300 µs.
const INLINE_SYNC_MAX_MICROS: u64 = 2_000;

/// How much memory RocksDB may use (`--rocksdb-write-buffer-bytes`,
/// `--rocksdb-block-cache-bytes`).
#[derive(Debug, Clone, Copy)]
pub struct DbMemoryConfig {
    /// All memtables together: RocksDB flushes one once they hold this much.
    pub write_buffer_bytes: usize,
    /// The block cache (reads of log entries already flushed: a follower far behind).
    pub block_cache_bytes: usize,
}

impl Default for DbMemoryConfig {
    fn default() -> Self {
        Self {
            write_buffer_bytes: 16 << 20,
            block_cache_bytes: 8 << 20,
        }
    }
}

/// What RocksDB holds in memory now: reads the database without keeping it open.
#[derive(Clone)]
pub struct DbMemory {
    db: std::sync::Weak<DB>,
    cache: Cache,
}

impl Debug for DbMemory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DbMemory").finish_non_exhaustive()
    }
}

impl DbMemory {
    /// (memtable bytes, block cache bytes); 0 for memtables once the database is closed.
    pub fn sizes(&self) -> (u64, u64) {
        let memtables = self.db.upgrade().map_or(0, |db| {
            [CF_LOGS, CF_META]
                .iter()
                .filter_map(|name| db.cf_handle(name))
                .filter_map(|cf| {
                    db.property_int_value_cf(&cf, "rocksdb.cur-size-all-mem-tables")
                        .ok()
                        .flatten()
                })
                .sum()
        });
        (memtables, self.cache.get_usage() as u64)
    }
}

/// Opens (creating if needed) the RocksDB database that holds the Raft log, with its
/// memtables and block cache bounded by `memory`.
pub fn open_db(path: &Path, memory: DbMemoryConfig) -> Result<(Arc<DB>, DbMemory), rocksdb::Error> {
    let cache = Cache::new_lru_cache(memory.block_cache_bytes);
    let mut table = BlockBasedOptions::default();
    table.set_block_cache(&cache);
    let family = || {
        let mut opts = Options::default();
        opts.set_block_based_table_factory(&table);
        // Two memtables per family, each half the total (RocksDB's default is 64 MiB).
        opts.set_write_buffer_size((memory.write_buffer_bytes / 4).max(1 << 20));
        opts.set_max_write_buffer_number(2);
        opts
    };
    let mut opts = family();
    opts.create_if_missing(true);
    opts.create_missing_column_families(true);
    opts.set_db_write_buffer_size(memory.write_buffer_bytes);
    let cfs = [CF_LOGS, CF_META].map(|name| ColumnFamilyDescriptor::new(name, family()));
    let db = Arc::new(DB::open_cf_descriptors(&opts, path, cfs)?);
    let probe = DbMemory {
        db: Arc::downgrade(&db),
        cache,
    };
    Ok((db, probe))
}

/// The log store handle openraft drives. Cheap to clone: it shares the database.
#[derive(Clone)]
pub struct LogStore {
    db: Arc<DB>,
    /// This node's id: entries whose leader is this node are appended as leader.
    node: NodeId,
    /// How long the latest WAL sync took, in microseconds (see `syncs_here`).
    last_sync_micros: Arc<AtomicU64>,
    /// The latest leader time seen in an appended entry, for `leader::leader_time`.
    stamps: StampSeen,
}

/// The latest leader time (`Request::now_ms`) this node has appended to its log, and when
/// (its monotonic clock). A node that becomes leader continues replicated time from
/// there: the entry was stamped before it arrived, so that time plus the time since is
/// never ahead of the leader that stamped it. Cheap to clone; `std::sync::Mutex`, held
/// for a copy only.
#[derive(Debug, Clone, Default)]
pub struct StampSeen {
    latest: Arc<std::sync::Mutex<Option<(u64, tokio::time::Instant)>>>,
}

impl StampSeen {
    /// Records a stamp just appended.
    fn observe(&self, now_ms: u64) {
        let mut latest = self.latest.lock().unwrap_or_else(|e| e.into_inner());
        if latest.is_none_or(|(ms, _)| now_ms >= ms) {
            *latest = Some((now_ms, tokio::time::Instant::now()));
        }
    }

    /// The latest stamp appended by this process, and when.
    pub fn latest(&self) -> Option<(u64, tokio::time::Instant)> {
        *self.latest.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl std::fmt::Debug for LogStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogStore")
            .field("path", &self.db.path())
            .finish()
    }
}

fn index_key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

fn key_index(key: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(key.try_into().ok()?))
}

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, AnyError> {
    format::encode(value).map_err(|e| AnyError::new(&e))
}

fn decode_entry(index: u64, bytes: &[u8]) -> Result<Entry<TypeConfig>, AnyError> {
    format::decode(bytes, || format!("log entry at index {index}")).map_err(|e| AnyError::new(&e))
}

fn db_err(e: rocksdb::Error) -> AnyError {
    AnyError::new(&e)
}

impl LogStore {
    pub fn new(db: Arc<DB>, node: NodeId) -> Self {
        Self {
            db,
            node,
            last_sync_micros: Arc::new(AtomicU64::new(0)),
            stamps: StampSeen::default(),
        }
    }

    /// Whether an append syncs the WAL on the calling task rather than on the blocking
    /// pool. A leader's (`own`) sync goes to the pool, so that it overlaps the followers'
    /// round: openraft replicates while it runs. A follower can do nothing with its
    /// entries until they are durable (its answer waits for them), so it syncs right here,
    /// sparing the round two thread hops, as long as syncs are quick; after one that took
    /// longer than [`INLINE_SYNC_MAX_MICROS`] (a slow disk), syncs go to the pool, so that
    /// they never hold up this worker's other tasks for long.
    fn syncs_here(&self, own: bool) -> bool {
        !own && self.last_sync_micros.load(Ordering::Relaxed) <= INLINE_SYNC_MAX_MICROS
    }

    /// Where this store reports the latest leader time it appended.
    pub fn stamps(&self) -> StampSeen {
        self.stamps.clone()
    }

    fn logs(&self) -> &rocksdb::ColumnFamily {
        // Both families are created by `open_db`; their absence is a programming error.
        #[allow(clippy::expect_used)]
        self.db
            .cf_handle(CF_LOGS)
            .expect("column family `logs` is created by open_db")
    }

    fn meta(&self) -> &rocksdb::ColumnFamily {
        #[allow(clippy::expect_used)]
        self.db
            .cf_handle(CF_META)
            .expect("column family `meta` is created by open_db")
    }

    fn get_meta<T: DeserializeOwned>(&self, key: &[u8]) -> Result<Option<T>, AnyError> {
        match self.db.get_cf(self.meta(), key).map_err(db_err)? {
            Some(bytes) => Ok(Some(
                format::decode(&bytes, || {
                    format!("Raft metadata `{}`", String::from_utf8_lossy(key))
                })
                .map_err(|e| AnyError::new(&e))?,
            )),
            None => Ok(None),
        }
    }

    fn put_meta<T: Serialize>(&self, key: &[u8], value: &T, sync: bool) -> Result<(), AnyError> {
        let mut opts = WriteOptions::default();
        opts.set_sync(sync);
        self.db
            .put_cf_opt(self.meta(), key, encode(value)?, &opts)
            .map_err(db_err)
    }

    fn last_log_id(&self) -> Result<Option<LogId<NodeId>>, AnyError> {
        let mut iter = self.db.iterator_cf(self.logs(), IteratorMode::End);
        match iter.next() {
            Some(item) => {
                let (key, value) = item.map_err(db_err)?;
                let index = key_index(&key).ok_or_else(|| AnyError::error("malformed log key"))?;
                let entry = decode_entry(index, &value)?;
                Ok(Some(*entry.get_log_id()))
            }
            None => Ok(None),
        }
    }

    fn read_range(&self, start: u64, end: Option<u64>) -> Result<Vec<Entry<TypeConfig>>, AnyError> {
        let mode = IteratorMode::From(&index_key(start), Direction::Forward);
        let mut entries = Vec::new();
        for item in self.db.iterator_cf(self.logs(), mode) {
            let (key, value) = item.map_err(db_err)?;
            let index = key_index(&key).ok_or_else(|| AnyError::error("malformed log key"))?;
            if end.is_some_and(|end| index >= end) {
                break;
            }
            entries.push(decode_entry(index, &value)?);
        }
        Ok(entries)
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> StorageResult<Vec<Entry<TypeConfig>>> {
        let start = match range.start_bound() {
            Bound::Included(&i) => i,
            Bound::Excluded(&i) => i + 1,
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(&i) => Some(i + 1),
            Bound::Excluded(&i) => Some(i),
            Bound::Unbounded => None,
        };
        // Replication and apply read the few entries just appended, from the memtable:
        // microseconds, read right here. A long range (a follower far behind) may read
        // from disk, off the async workers.
        if end.is_some_and(|end| end.saturating_sub(start) <= INLINE_READ_ENTRIES) {
            return self
                .read_range(start, end)
                .map_err(|e| StorageIOError::read_logs(e).into());
        }
        let store = self.clone();
        tokio::task::spawn_blocking(move || store.read_range(start, end))
            .await
            .map_err(|e| StorageIOError::read_logs(AnyError::new(&e)))?
            .map_err(|e| StorageIOError::read_logs(e).into())
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> StorageResult<LogState<TypeConfig>> {
        let last_purged: Option<LogId<NodeId>> = self
            .get_meta(KEY_LAST_PURGED)
            .map_err(StorageIOError::read_logs)?;
        let last = self.last_log_id().map_err(StorageIOError::read_logs)?;
        Ok(LogState {
            last_purged_log_id: last_purged,
            last_log_id: last.or(last_purged),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> StorageResult<()> {
        let store = self.clone();
        let vote = *vote;
        tokio::task::spawn_blocking(move || store.put_meta(KEY_VOTE, &vote, true))
            .await
            .map_err(|e| StorageIOError::write_vote(AnyError::new(&e)))?
            .map_err(|e| StorageIOError::write_vote(e).into())
    }

    async fn read_vote(&mut self) -> StorageResult<Option<Vote<NodeId>>> {
        self.get_meta(KEY_VOTE)
            .map_err(|e| StorageIOError::read_vote(e).into())
    }

    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> StorageResult<()> {
        self.put_meta(KEY_COMMITTED, &committed, false)
            .map_err(|e| StorageIOError::write(e).into())
    }

    async fn read_committed(&mut self) -> StorageResult<Option<LogId<NodeId>>> {
        let committed: Option<Option<LogId<NodeId>>> =
            self.get_meta(KEY_COMMITTED).map_err(StorageIOError::read)?;
        Ok(committed.flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> StorageResult<()>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + Send,
        I::IntoIter: Send,
    {
        let started = std::time::Instant::now();
        let mut batch = WriteBatch::default();
        let mut stamp = None;
        let mut own = false;
        for entry in entries {
            own |= entry.get_log_id().leader_id.node_id == self.node;
            if let EntryPayload::Normal(request) = &entry.payload {
                stamp = stamp.max(Some(request.now_ms));
            }
            let value = encode(&entry).map_err(StorageIOError::write_logs)?;
            batch.put_cf(self.logs(), index_key(entry.get_log_id().index), value);
        }
        if let Some(now_ms) = stamp {
            self.stamps.observe(now_ms);
        }
        // Written now, unsynced: a memtable insert and a WAL write to the page cache,
        // microseconds. Replication can read the entries at once (openraft's replication
        // task reads them from the store, and waits 10 ms when they are not there yet).
        self.db
            .write(batch)
            .map_err(|e| StorageIOError::write_logs(db_err(e)))?;
        let db = self.db.clone();
        // openraft is told the entries are durable only once RocksDB has synced its WAL
        // (which holds them: the WAL is ordered, and a sync covers every write before
        // it); where the sync runs is `syncs_here`'s choice.
        let last_sync = self.last_sync_micros.clone();
        let sync = move || {
            let synced = std::time::Instant::now();
            let result = db.flush_wal(true).map_err(std::io::Error::other);
            let took = synced.elapsed();
            last_sync.store(
                u64::try_from(took.as_micros()).unwrap_or(u64::MAX),
                Ordering::Relaxed,
            );
            crate::metrics::log_appended(started.elapsed(), took);
            // Release the database before reporting, so that nothing holds it once the
            // caller knows the write is done (a reopen in the same process would fail).
            drop(db);
            callback.log_io_completed(result);
        };
        if self.syncs_here(own) {
            sync();
        } else {
            tokio::task::spawn_blocking(sync);
        }
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> StorageResult<()> {
        self.db
            .delete_range_cf(self.logs(), index_key(log_id.index), index_key(u64::MAX))
            .map_err(|e| StorageIOError::write_logs(db_err(e)))?;
        // `delete_range` is end-exclusive: remove the very last possible key too.
        self.db
            .delete_cf(self.logs(), index_key(u64::MAX))
            .map_err(|e| StorageIOError::write_logs(db_err(e)).into())
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> StorageResult<()> {
        let mut batch = WriteBatch::default();
        batch.put_cf(
            self.meta(),
            KEY_LAST_PURGED,
            encode(&log_id).map_err(StorageIOError::write_logs)?,
        );
        batch.delete_range_cf(self.logs(), index_key(0), index_key(log_id.index + 1));
        self.db
            .write(batch)
            .map_err(|e| StorageIOError::write_logs(db_err(e)).into())
    }
}

#[cfg(test)]
mod tests {
    use openraft::entry::RaftEntry;
    use openraft::testing::{StoreBuilder, Suite};

    use super::*;
    use crate::raft::store::state_machine::StateMachineStore;

    /// Builds a fresh log store and state machine in a temporary directory for each case
    /// of openraft's conformance suite.
    struct Builder;

    impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, tempfile::TempDir> for Builder {
        async fn build(&self) -> StorageResult<(tempfile::TempDir, LogStore, StateMachineStore)> {
            let dir = tempfile::tempdir().map_err(|e| StorageIOError::write(AnyError::new(&e)))?;
            let (db, _) = open_db(&dir.path().join("raft"), DbMemoryConfig::default())
                .map_err(|e| StorageIOError::write(db_err(e)))?;
            let sm = StateMachineStore::open(
                dir.path().join("snapshot"),
                Default::default(),
                Default::default(),
            )
            .map_err(|e| StorageIOError::write(AnyError::new(&e)))?;
            Ok((dir, LogStore::new(db, 1), sm))
        }
    }

    #[test]
    fn passes_openraft_storage_suite() {
        if let Err(e) = Suite::test_all(Builder) {
            panic!("openraft storage suite failed: {e}");
        }
    }

    #[tokio::test]
    async fn appended_entries_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("raft");
        {
            let mut store = open_store(&path);
            let vote = Vote::new(3, 1);
            store.save_vote(&vote).await.unwrap();
            append_blank(&mut store, 1, 1..=5).await;
        }
        let mut store = open_store(&path);
        assert_eq!(store.read_vote().await.unwrap(), Some(Vote::new(3, 1)));
        let state = store.get_log_state().await.unwrap();
        assert_eq!(state.last_log_id.map(|l| l.index), Some(5));
        assert_eq!(store.try_get_log_entries(2..4).await.unwrap().len(), 2);
    }

    /// The log store of node 1 in `path`.
    fn open_store(path: &Path) -> LogStore {
        LogStore::new(open_db(path, DbMemoryConfig::default()).unwrap().0, 1)
    }

    async fn store_with_entries(path: &Path, n: u64) -> LogStore {
        let mut store = open_store(path);
        append_blank(&mut store, 1, 1..=n).await;
        store
    }

    /// Appends blank entries `indexes` made by the leader `leader` and waits until the
    /// store reports them durable (failing after 10 s rather than hanging).
    async fn append_blank(
        store: &mut LogStore,
        leader: NodeId,
        indexes: std::ops::RangeInclusive<u64>,
    ) {
        let entries: Vec<Entry<TypeConfig>> = indexes
            .map(|i| Entry::new_blank(LogId::new(openraft::CommittedLeaderId::new(3, leader), i)))
            .collect();
        let appended = openraft::storage::RaftLogStorageExt::blocking_append(store, entries);
        tokio::time::timeout(std::time::Duration::from_secs(10), appended)
            .await
            .expect("the append was never reported durable")
            .unwrap();
    }

    /// A follower (node 1 appending node 2's entries) syncs on the calling task; its own
    /// entries as leader on the blocking pool. Both are reported, and both are on disk.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn follower_and_leader_appends_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("raft");
        {
            let mut store = open_store(&path);
            append_blank(&mut store, 2, 1..=5).await;
            append_blank(&mut store, 1, 6..=8).await;
        }
        let mut store = open_store(&path);
        let entries = store.try_get_log_entries(1..).await.unwrap();
        let leaders: Vec<(u64, NodeId)> = entries
            .iter()
            .map(|e| (e.log_id.index, e.log_id.leader_id.node_id))
            .collect();
        let expected: Vec<(u64, NodeId)> =
            (1..=8).map(|i| (i, if i <= 5 { 2 } else { 1 })).collect();
        assert_eq!(leaders, expected);
    }

    /// A follower syncs on the calling task until a sync is slow, then on the pool, where
    /// each sync again records how long it took; a leader always syncs on the pool.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_follower_syncs_here_until_a_sync_is_slow() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = open_store(&dir.path().join("raft"));
        assert!(store.syncs_here(false));
        assert!(!store.syncs_here(true));
        append_blank(&mut store, 2, 1..=3).await;
        let slow = INLINE_SYNC_MAX_MICROS + 1;
        store.last_sync_micros.store(slow, Ordering::Relaxed);
        assert!(!store.syncs_here(false));
        assert!(!store.syncs_here(true));
        append_blank(&mut store, 2, 4..=6).await;
        assert_ne!(store.last_sync_micros.load(Ordering::Relaxed), slow);
        let entries = store.try_get_log_entries(1..7).await.unwrap();
        assert_eq!(entries.len(), 6);
    }

    /// Reads on either side of the inline limit return exactly the entries asked for.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn short_and_long_reads_return_the_range() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = open_store(&dir.path().join("raft"));
        append_blank(&mut store, 2, 1..=200).await;
        let limit = INLINE_READ_ENTRIES;
        let cases: [(u64, Option<u64>, std::ops::Range<u64>); 6] = [
            (7, Some(8), 7..8),
            (1, Some(1 + limit), 1..1 + limit),
            (1, Some(2 + limit), 1..2 + limit),
            (150, Some(150 + limit), 150..201),
            (10, Some(400), 10..201),
            (120, None, 120..201),
        ];
        for (start, end, expected) in cases {
            let entries = match end {
                Some(end) => store.try_get_log_entries(start..end).await.unwrap(),
                None => store.try_get_log_entries(start..).await.unwrap(),
            };
            let indexes: Vec<u64> = entries.iter().map(|e| e.log_id.index).collect();
            assert_eq!(indexes, expected.collect::<Vec<_>>(), "{start}..{end:?}");
        }
    }

    #[tokio::test]
    async fn stored_entries_and_metadata_begin_with_the_format_version() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = store_with_entries(&dir.path().join("raft"), 2).await;
        store.save_vote(&Vote::new(3, 1)).await.unwrap();
        let entry = store
            .db
            .get_cf(store.logs(), index_key(2))
            .unwrap()
            .unwrap();
        assert_eq!(entry[0], format::LOG_FORMAT_VERSION);
        let vote = store.db.get_cf(store.meta(), KEY_VOTE).unwrap().unwrap();
        assert_eq!(vote[0], format::LOG_FORMAT_VERSION);
    }

    #[tokio::test]
    async fn an_entry_of_a_newer_format_is_refused_naming_its_index() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = store_with_entries(&dir.path().join("raft"), 3).await;
        for index in [2, 3] {
            let mut value = store
                .db
                .get_cf(store.logs(), index_key(index))
                .unwrap()
                .unwrap();
            value[0] = 9;
            store
                .db
                .put_cf(store.logs(), index_key(index), value)
                .unwrap();
        }
        let expected = |index| {
            format!(
                "log entry at index {index} has format version 9; this server reads up to 3 — upgrade the server"
            )
        };

        let err = store
            .try_get_log_entries(1..4)
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains(&expected(2)), "{err}");
        // Start-up reads the last entry first: it is refused the same way.
        let err = store.get_log_state().await.unwrap_err().to_string();
        assert!(err.contains(&expected(3)), "{err}");
        assert_eq!(store.try_get_log_entries(1..2).await.unwrap().len(), 1);
    }
}
