//! The backup file (`GET /v1/snapshot`, `regctl snapshot save`, `registry-server
//! --restore`): a summary anyone can read, then the server's snapshot.
//!
//! Layout (integers little-endian):
//!
//! ```text
//! 0..8     magic "RGBACKUP"
//! 8..10    backup format version (u16), BACKUP_FORMAT_VERSION
//! 10..14   summary length (u32)
//! 14..     summary: JSON of BackupSummary
//! then     the snapshot: the server's snapshot file (its own header, version and
//!          CRC-32), `snapshot_bytes` long, whose CRC-32 is `snapshot_crc32`
//! ```
//!
//! The summary lets a tool that does not know the server's state encoding (regctl) show
//! what a file holds and check it end to end; the server checks the snapshot's own
//! header and checksum again, and decodes it, before restoring anything.

use serde::{Deserialize, Serialize};

/// The first bytes of every backup file.
pub const BACKUP_MAGIC: &[u8; 8] = b"RGBACKUP";

/// The backup format this version writes, and the newest it reads.
pub const BACKUP_FORMAT_VERSION: u16 = 1;

/// The most summary bytes a reader accepts (a summary is a few hundred).
const MAX_SUMMARY: usize = 1 << 20;

/// What a backup holds.
#[derive(utoipa::ToSchema, Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupSummary {
    /// The Raft log index the state is at: every write acknowledged before the backup
    /// was requested is in it.
    pub index: u64,
    /// The Raft term of that entry.
    pub term: u64,
    /// The server that made the backup.
    pub node_id: u64,
    /// When (ms since the Unix epoch, that server's clock).
    pub created_at_ms: u64,
    /// The server's snapshot format version inside.
    pub snapshot_format: u16,
    /// Size and CRC-32 of the snapshot that follows the summary.
    pub snapshot_bytes: u64,
    pub snapshot_crc32: u32,
    pub services: u64,
    pub instances: u64,
    pub leases: u64,
    pub locks: u64,
    pub elections: u64,
    pub acl_tokens: u64,
    /// The last fencing token granted: a restored cluster grants only higher ones.
    pub last_fencing_token: u64,
}

/// Why bytes are not a backup this version reads.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BackupError {
    #[error("is not a registry backup (no RGBACKUP header)")]
    NotABackup,
    #[error("has backup format version {found}; this version reads up to {supported}: upgrade")]
    Newer { found: u16, supported: u16 },
    #[error("has backup format version {found}, which no version writes")]
    Unknown { found: u16 },
    #[error("is truncated: {0}")]
    Truncated(String),
    #[error("has an unreadable summary: {0}")]
    Summary(String),
    #[error("is corrupt: the snapshot's CRC-32 is {found:08x}, the summary says {expected:08x}")]
    Checksum { expected: u32, found: u32 },
}

/// Writes a backup: the header, `summary` and `snapshot`.
pub fn encode(summary: &BackupSummary, snapshot: &[u8]) -> Result<Vec<u8>, serde_json::Error> {
    let json = serde_json::to_vec(summary)?;
    let mut bytes = Vec::with_capacity(14 + json.len() + snapshot.len());
    bytes.extend_from_slice(BACKUP_MAGIC);
    bytes.extend_from_slice(&BACKUP_FORMAT_VERSION.to_le_bytes());
    bytes.extend_from_slice(&u32::try_from(json.len()).unwrap_or(u32::MAX).to_le_bytes());
    bytes.extend_from_slice(&json);
    bytes.extend_from_slice(snapshot);
    Ok(bytes)
}

/// Checks a backup's header, summary, length and checksum; returns the summary and the
/// snapshot's bytes.
pub fn decode(bytes: &[u8]) -> Result<(BackupSummary, &[u8]), BackupError> {
    if bytes.len() < 10 || &bytes[..8] != BACKUP_MAGIC {
        return Err(BackupError::NotABackup);
    }
    let found = u16::from_le_bytes([bytes[8], bytes[9]]);
    if found > BACKUP_FORMAT_VERSION {
        return Err(BackupError::Newer {
            found,
            supported: BACKUP_FORMAT_VERSION,
        });
    }
    if found == 0 {
        return Err(BackupError::Unknown { found });
    }
    let len_bytes: [u8; 4] = bytes
        .get(10..14)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| BackupError::Truncated("no summary length".to_owned()))?;
    let len = u32::from_le_bytes(len_bytes) as usize;
    if len > MAX_SUMMARY {
        return Err(BackupError::Summary(format!("{len} bytes long")));
    }
    let json = bytes.get(14..14 + len).ok_or_else(|| {
        BackupError::Truncated(format!("the summary is {len} bytes, fewer are there"))
    })?;
    let summary: BackupSummary =
        serde_json::from_slice(json).map_err(|e| BackupError::Summary(e.to_string()))?;
    let snapshot = &bytes[14 + len..];
    if snapshot.len() as u64 != summary.snapshot_bytes {
        return Err(BackupError::Truncated(format!(
            "the snapshot should be {} bytes, {} are there",
            summary.snapshot_bytes,
            snapshot.len()
        )));
    }
    let crc = crc32fast::hash(snapshot);
    if crc != summary.snapshot_crc32 {
        return Err(BackupError::Checksum {
            expected: summary.snapshot_crc32,
            found: crc,
        });
    }
    Ok((summary, snapshot))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(snapshot: &[u8]) -> BackupSummary {
        BackupSummary {
            index: 42,
            term: 3,
            node_id: 1,
            created_at_ms: 1,
            snapshot_format: 2,
            snapshot_bytes: snapshot.len() as u64,
            snapshot_crc32: crc32fast::hash(snapshot),
            services: 1,
            instances: 2,
            leases: 3,
            locks: 4,
            elections: 5,
            acl_tokens: 6,
            last_fencing_token: 7,
        }
    }

    #[test]
    fn round_trips_and_refuses_damage() {
        let snapshot = b"RGSNAP-and-some-state".to_vec();
        let bytes = encode(&summary(&snapshot), &snapshot).unwrap();
        let (back, inner) = decode(&bytes).unwrap();
        assert_eq!(back, summary(&snapshot));
        assert_eq!(inner, &snapshot[..]);

        assert_eq!(decode(b"hello world"), Err(BackupError::NotABackup));
        assert!(matches!(
            decode(&bytes[..bytes.len() - 1]),
            Err(BackupError::Truncated(_))
        ));
        assert!(matches!(
            decode(&bytes[..20]),
            Err(BackupError::Truncated(_))
        ));
        let mut flipped = bytes.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        assert!(matches!(
            decode(&flipped),
            Err(BackupError::Checksum { .. })
        ));
        let mut newer = bytes.clone();
        newer[8] = 9;
        assert!(matches!(
            decode(&newer),
            Err(BackupError::Newer { found: 9, .. })
        ));
    }
}
