//! The snapshot file: its byte format, and the directory that holds the current one.
//!
//! Layout (integers little-endian):
//!
//! ```text
//! 0..6    magic "RGSNAP"
//! 6..8    format version (u16), SNAPSHOT_FORMAT_VERSION
//! 8..16   body length (u64)
//! 16..20  CRC-32 of the body (crc32fast)
//! 20..    body: bincode of the SnapshotMeta, then the bincode of the StateData
//! ```
//!
//! The version comes right after the magic and is checked before anything else, so that a
//! newer layout is reported as "upgrade the server", not as corruption. The same bytes are
//! what a leader sends to a follower, so a transfer is checked end to end too.
//!
//! [`SnapshotDir`] writes every snapshot to a temporary file of its own, fsyncs it, and
//! renames it over `current.snap` only if the current one is not newer: the comparison
//! and the rename happen under one mutex, so a slow build can never replace a newer
//! install. Temporary files left by a crash are removed when the directory is opened.

use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use openraft::{LogId, SnapshotMeta};

use crate::raft::types::{Node, NodeId};

/// The format version this server writes, and the newest it reads.
/// Version 3: instances may have active checks and no lease (and the state holds the
/// prober set). Earlier versions are refused with [`Invalid::Older`].
pub const SNAPSHOT_FORMAT_VERSION: u16 = 3;

const MAGIC: &[u8; 6] = b"RGSNAP";
const HEADER_LEN: usize = 20;
const CURRENT: &str = "current.snap";
const TMP_SUFFIX: &str = ".snap.tmp";

type Meta = SnapshotMeta<NodeId, Node>;

/// What is wrong with a snapshot's bytes.
#[derive(Debug, thiserror::Error)]
pub enum Invalid {
    #[error("is not a registry snapshot (no RGSNAP header)")]
    NotASnapshot,
    #[error(
        "has format version {found}; this server reads up to {supported} — upgrade the server"
    )]
    Newer { found: u16, supported: u16 },
    #[error("has format version {found}, which no server writes")]
    Unknown { found: u16 },
    #[error(
        "has format version {found}, older than the {supported} this server reads: it was written before active checks, and this pre-1.0 server does not convert it — run the release that wrote it"
    )]
    Older { found: u16, supported: u16 },
    #[error("is truncated: its header announces {expected} bytes of data, {found} are there")]
    Truncated { expected: u64, found: u64 },
    #[error("has {extra} bytes after the {expected} its header announces")]
    TrailingBytes { expected: u64, extra: u64 },
    #[error("is corrupt: checksum {found:08x}, header says {expected:08x}")]
    Checksum { expected: u32, found: u32 },
    #[error("cannot be decoded: {0}")]
    Decode(#[from] bincode::Error),
}

/// A snapshot file that could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("snapshot file {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("snapshot file {} {problem}", path.display())]
    Invalid { path: PathBuf, problem: Invalid },
}

impl SnapshotError {
    fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Self + '_ {
        |source| Self::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    /// `problem` found in the file at `path`.
    pub fn invalid(path: &Path, problem: impl Into<Invalid>) -> Self {
        Self::Invalid {
            path: path.to_path_buf(),
            problem: problem.into(),
        }
    }
}

/// Encodes a snapshot: the header, then `meta` and `state` (the bincode of the state).
pub fn encode(meta: &Meta, state: &[u8]) -> Result<Vec<u8>, bincode::Error> {
    let meta_len = usize::try_from(bincode::serialized_size(meta)?).unwrap_or(0);
    let mut bytes = Vec::with_capacity(HEADER_LEN + meta_len + state.len());
    bytes.extend_from_slice(MAGIC);
    bytes.extend_from_slice(&SNAPSHOT_FORMAT_VERSION.to_le_bytes());
    bytes.resize(HEADER_LEN, 0); // length and checksum, filled in below
    bincode::serialize_into(&mut bytes, meta)?;
    bytes.extend_from_slice(state);
    let body = &bytes[HEADER_LEN..];
    let len = (body.len() as u64).to_le_bytes();
    let crc = crc32fast::hash(body).to_le_bytes();
    bytes[8..16].copy_from_slice(&len);
    bytes[16..20].copy_from_slice(&crc);
    Ok(bytes)
}

/// Checks a snapshot's header and checksum and decodes its metadata; returns the metadata
/// and the state's bytes (still to be decoded by the caller).
pub fn decode(bytes: &[u8]) -> Result<(Meta, &[u8]), Invalid> {
    if bytes.len() < 8 || &bytes[..6] != MAGIC {
        return Err(Invalid::NotASnapshot);
    }
    let found = u16::from_le_bytes([bytes[6], bytes[7]]);
    if found > SNAPSHOT_FORMAT_VERSION {
        return Err(Invalid::Newer {
            found,
            supported: SNAPSHOT_FORMAT_VERSION,
        });
    }
    if found == 1 || found == 2 {
        return Err(Invalid::Older {
            found,
            supported: SNAPSHOT_FORMAT_VERSION,
        });
    }
    if found != SNAPSHOT_FORMAT_VERSION {
        return Err(Invalid::Unknown { found });
    }
    let (Some(len), Some(crc)) = (bytes.get(8..16), bytes.get(16..HEADER_LEN)) else {
        return Err(Invalid::Truncated {
            expected: HEADER_LEN as u64,
            found: bytes.len() as u64,
        });
    };
    let expected = u64::from_le_bytes(len.try_into().unwrap_or_default());
    let crc = u32::from_le_bytes(crc.try_into().unwrap_or_default());
    let body = &bytes[HEADER_LEN..];
    let found = body.len() as u64;
    if found < expected {
        return Err(Invalid::Truncated { expected, found });
    }
    if found > expected {
        return Err(Invalid::TrailingBytes {
            expected,
            extra: found - expected,
        });
    }
    let actual = crc32fast::hash(body);
    if actual != crc {
        return Err(Invalid::Checksum {
            expected: crc,
            found: actual,
        });
    }
    let mut rest = body;
    let meta = bincode::deserialize_from(&mut rest)?;
    Ok((meta, rest))
}

/// A snapshot file as read: its metadata and all its bytes (header included), checked.
#[derive(Debug)]
pub struct Current {
    pub meta: Meta,
    pub bytes: Vec<u8>,
}

/// The snapshot directory. Cheap to clone: the state machine and its builders share one.
#[derive(Debug, Clone)]
pub struct SnapshotDir {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    dir: PathBuf,
    /// Numbers the temporary files, so that two writes never share one (even two builds
    /// at the same log id, or a build and an install with the same snapshot id).
    next_tmp: AtomicU64,
    /// The last log id of `current.snap` (`None` also when there is none). Held while
    /// comparing and renaming, which are blocking calls: no `.await` under this lock.
    current: Mutex<Option<LogId<NodeId>>>,
}

impl SnapshotDir {
    /// Opens (creating) the directory, removes temporary files a crash left, and reads the
    /// current snapshot: its metadata and its bytes, checked.
    pub fn open(dir: PathBuf) -> Result<(Self, Option<Current>), SnapshotError> {
        std::fs::create_dir_all(&dir).map_err(SnapshotError::io(&dir))?;
        for entry in std::fs::read_dir(&dir).map_err(SnapshotError::io(&dir))? {
            let path = entry.map_err(SnapshotError::io(&dir))?.path();
            if path.to_string_lossy().ends_with(TMP_SUFFIX) {
                tracing::info!(file = %path.display(), "removing a snapshot left unfinished");
                std::fs::remove_file(&path).map_err(SnapshotError::io(&path))?;
            }
        }
        let snapshots = Self {
            inner: Arc::new(Inner {
                dir,
                next_tmp: AtomicU64::new(0),
                current: Mutex::new(None),
            }),
        };
        let current = snapshots.read_current()?;
        *snapshots.lock_current() = current.as_ref().and_then(|c| c.meta.last_log_id);
        Ok((snapshots, current))
    }

    /// The current snapshot file's path.
    pub fn current_path(&self) -> PathBuf {
        self.inner.dir.join(CURRENT)
    }

    /// Reads and checks the current snapshot, if there is one. Blocking.
    pub fn read_current(&self) -> Result<Option<Current>, SnapshotError> {
        let path = self.current_path();
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(SnapshotError::io(&path)(e)),
        };
        let (meta, _) = decode(&bytes).map_err(|e| SnapshotError::invalid(&path, e))?;
        Ok(Some(Current { meta, bytes }))
    }

    /// Makes `bytes` (from [`encode`]) the current snapshot unless the current one has a
    /// newer last log id. Returns whether it did. Blocking: call it off the async workers.
    pub fn store(&self, meta: &Meta, bytes: &[u8]) -> Result<bool, SnapshotError> {
        self.through_tmp(meta, |tmp| write_synced(tmp, bytes))
            .map(|(current, ())| current)
    }

    /// Writes a snapshot straight to a file, `write_state` encoding the state into it (no
    /// buffer of the whole snapshot in memory), then makes it the current one unless the
    /// current one has a newer last log id. Returns whether it did, and the file's size.
    /// The data is synced every [`SYNC_EVERY`] bytes as it is written, so the disk never
    /// holds hundreds of megabytes of it waiting: on ext4 (data=ordered) an fsync of the
    /// Raft log waits for other files' pending data, and would wait for all of it.
    /// Blocking: call it off the async workers.
    pub fn store_with(
        &self,
        meta: &Meta,
        write_state: impl FnOnce(&mut dyn Write) -> Result<(), bincode::Error>,
    ) -> Result<(bool, u64), SnapshotError> {
        self.through_tmp(meta, |tmp| write_streamed(tmp, meta, write_state))
    }

    /// Has `write` make a temporary file of this directory, then renames it over the
    /// current snapshot unless that one is newer ([`SnapshotDir::replace`]); a file not
    /// kept is removed. Returns whether it was kept, and what `write` returned.
    fn through_tmp<T>(
        &self,
        meta: &Meta,
        write: impl FnOnce(&Path) -> Result<T, SnapshotError>,
    ) -> Result<(bool, T), SnapshotError> {
        let n = self.inner.next_tmp.fetch_add(1, Ordering::Relaxed);
        let tmp = self
            .inner
            .dir
            .join(format!("{}.{n}{TMP_SUFFIX}", file_safe(&meta.snapshot_id)));
        let written = write(&tmp).and_then(|out| Ok((self.replace(&tmp, meta)?, out)));
        if !matches!(written, Ok((true, _))) {
            let _ = std::fs::remove_file(&tmp);
        }
        written
    }

    /// Renames `tmp` over the current snapshot unless that one is newer.
    fn replace(&self, tmp: &Path, meta: &Meta) -> Result<bool, SnapshotError> {
        let mut current = self.lock_current();
        if meta.last_log_id < *current {
            return Ok(false);
        }
        let path = self.current_path();
        std::fs::rename(tmp, &path).map_err(SnapshotError::io(&path))?;
        *current = meta.last_log_id;
        let dir = &self.inner.dir;
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(SnapshotError::io(dir))?;
        Ok(true)
    }

    fn lock_current(&self) -> std::sync::MutexGuard<'_, Option<LogId<NodeId>>> {
        // Poisoning cannot leave the log id half-written: it is one assignment.
        self.inner.current.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// How much snapshot data is written between two syncs of the file.
pub const SYNC_EVERY: u64 = 16 << 20;

/// The longest pause between two chunks of a snapshot being written.
const MAX_PAUSE: std::time::Duration = std::time::Duration::from_secs(1);

/// The body's writer: buffered, checksummed and counted, synced every [`SYNC_EVERY`],
/// and paced: after each such chunk it pauses as long as the chunk took, so a build uses
/// at most about half a core and the disk half the time. A snapshot is of a fixed index
/// and nothing waits for it, so a slower build costs nothing but time, while the same
/// core and disk serve the requests and the Raft log's fsyncs.
struct BodyWriter {
    file: std::io::BufWriter<std::fs::File>,
    crc: crc32fast::Hasher,
    len: u64,
    unsynced: u64,
    chunk_started: std::time::Instant,
}

impl Write for BodyWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.file.write(buf)?;
        self.crc.update(&buf[..n]);
        self.len += n as u64;
        self.unsynced += n as u64;
        if self.unsynced >= SYNC_EVERY {
            self.file.flush()?;
            self.file.get_ref().sync_data()?;
            self.unsynced = 0;
            std::thread::sleep(self.chunk_started.elapsed().min(MAX_PAUSE));
            self.chunk_started = std::time::Instant::now();
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

/// Writes the file [`encode`] would make, streaming the state into it; returns its size.
fn write_streamed(
    path: &Path,
    meta: &Meta,
    write_state: impl FnOnce(&mut dyn Write) -> Result<(), bincode::Error>,
) -> Result<u64, SnapshotError> {
    let io = SnapshotError::io(path);
    let encoding = |e: bincode::Error| SnapshotError::io(path)(std::io::Error::other(e));
    let mut file = std::fs::File::create(path).map_err(SnapshotError::io(path))?;
    let mut header = [0u8; HEADER_LEN];
    header[..6].copy_from_slice(MAGIC);
    header[6..8].copy_from_slice(&SNAPSHOT_FORMAT_VERSION.to_le_bytes());
    file.write_all(&header).map_err(SnapshotError::io(path))?;
    let mut body = BodyWriter {
        file: std::io::BufWriter::with_capacity(1 << 20, file),
        crc: crc32fast::Hasher::new(),
        len: 0,
        unsynced: 0,
        chunk_started: std::time::Instant::now(),
    };
    bincode::serialize_into(&mut body, meta).map_err(encoding)?;
    write_state(&mut body).map_err(encoding)?;
    body.flush().map_err(SnapshotError::io(path))?;
    let (len, crc) = (body.len, body.crc.finalize());
    let mut file = body
        .file
        .into_inner()
        .map_err(|e| SnapshotError::io(path)(e.into_error()))?;
    file.seek(SeekFrom::Start(8))
        .map_err(SnapshotError::io(path))?;
    file.write_all(&len.to_le_bytes())
        .and_then(|()| file.write_all(&crc.to_le_bytes()))
        .and_then(|()| file.sync_all())
        .map_err(io)?;
    Ok(HEADER_LEN as u64 + len)
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), SnapshotError> {
    let mut file = std::fs::File::create(path).map_err(SnapshotError::io(path))?;
    file.write_all(bytes).map_err(SnapshotError::io(path))?;
    file.sync_all().map_err(SnapshotError::io(path))
}

/// A snapshot id as part of a file name: a leader chooses it, so keep only harmless
/// characters, and not too many.
fn file_safe(id: &str) -> String {
    id.chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
        .take(64)
        .collect()
}
