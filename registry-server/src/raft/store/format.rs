//! The versioned encoding of every value the log store keeps in RocksDB.
//!
//! A stored value is one format-version byte followed by the bincode of the value. A server
//! reads the versions it knows and refuses any other with an error that names the value, so
//! that a later change of encoding is never misread as data. The envelope costs one byte
//! and no extra pass: the size is computed once, as `bincode::serialize` does.

use serde::de::DeserializeOwned;
use serde::Serialize;

/// The format version this server writes, and the newest it reads. Version 3: a lease
/// expiry names the term that decided it (`Command::InTerm`). Version 2 (a registration
/// may carry active checks and no lease) is read as it is, since version 3 only adds
/// commands. Version 1 is refused ([`FormatError::Older`]).
pub const LOG_FORMAT_VERSION: u8 = 3;

/// The oldest format version this server reads.
pub const OLDEST_LOG_FORMAT_VERSION: u8 = 2;

/// Why a stored value could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    /// Written by a newer server.
    #[error(
        "{what} has format version {found}; this server reads up to {supported} — upgrade the server"
    )]
    Newer {
        what: String,
        found: u8,
        supported: u8,
    },
    /// A version no server writes (0): the value is corrupt or predates format versions.
    #[error("{what} has format version {found}, which no server writes (corrupt, or written before format versions)")]
    Unknown { what: String, found: u8 },
    /// Written by an earlier server whose encoding this one does not convert.
    #[error("{what} has format version {found}, older than the {supported} this server reads at the oldest: it was written before active checks, and this pre-1.0 server does not convert it — run the release that wrote it")]
    Older {
        what: String,
        found: u8,
        supported: u8,
    },
    /// No bytes at all, not even the version.
    #[error("{what} is empty (no format version byte)")]
    Empty { what: String },
    /// The version is known but the bytes after it are not a valid value.
    #[error("{what} cannot be decoded: {source}")]
    Decode {
        what: String,
        source: bincode::Error,
    },
}

/// Encodes `value` as the version byte and its bincode.
pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, bincode::Error> {
    let size = bincode::serialized_size(value)?;
    let mut buf = Vec::with_capacity(1 + usize::try_from(size).unwrap_or(0));
    buf.push(LOG_FORMAT_VERSION);
    bincode::serialize_into(&mut buf, value)?;
    Ok(buf)
}

/// Decodes what [`encode`] wrote. `what` names the value for the error (e.g. "log entry at
/// index 7"); it is only called when there is an error.
pub fn decode<T: DeserializeOwned>(
    bytes: &[u8],
    what: impl FnOnce() -> String,
) -> Result<T, FormatError> {
    match bytes.split_first() {
        Some((&found, rest))
            if (OLDEST_LOG_FORMAT_VERSION..=LOG_FORMAT_VERSION).contains(&found) =>
        {
            bincode::deserialize(rest).map_err(|source| FormatError::Decode {
                what: what(),
                source,
            })
        }
        Some((&found, _)) if found > LOG_FORMAT_VERSION => Err(FormatError::Newer {
            what: what(),
            found,
            supported: LOG_FORMAT_VERSION,
        }),
        Some((&found, _)) if found > 0 => Err(FormatError::Older {
            what: what(),
            found,
            supported: OLDEST_LOG_FORMAT_VERSION,
        }),
        Some((&found, _)) => Err(FormatError::Unknown {
            what: what(),
            found,
        }),
        None => Err(FormatError::Empty { what: what() }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_behind_one_version_byte() {
        let bytes = encode(&(7u64, "x".to_string())).unwrap();
        assert_eq!(bytes[0], LOG_FORMAT_VERSION);
        assert_eq!(
            bytes.len(),
            1 + bincode::serialized_size(&(7u64, "x")).unwrap() as usize
        );
        let back: (u64, String) = decode(&bytes, || unreachable!()).unwrap();
        assert_eq!(back, (7, "x".to_string()));
    }

    #[test]
    fn refuses_a_newer_version_naming_the_value() {
        let mut bytes = encode(&7u64).unwrap();
        bytes[0] = 9;
        let err = decode::<u64>(&bytes, || "log entry at index 3".into()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "log entry at index 3 has format version 9; this server reads up to 3 — upgrade the server"
        );
    }

    #[test]
    fn reads_version_2_as_it_is() {
        let mut bytes = encode(&(7u64, "x".to_string())).unwrap();
        bytes[0] = 2;
        let back: (u64, String) = decode(&bytes, || unreachable!()).unwrap();
        assert_eq!(back, (7, "x".to_string()));
    }

    #[test]
    fn refuses_version_zero_and_empty_values() {
        let err = decode::<u64>(&[0, 1, 2], || "v".into()).unwrap_err();
        assert!(
            matches!(err, FormatError::Unknown { found: 0, .. }),
            "{err}"
        );
        let err = decode::<u64>(&[], || "v".into()).unwrap_err();
        assert!(matches!(err, FormatError::Empty { .. }), "{err}");
    }

    #[test]
    fn refuses_an_older_version_saying_which_release_reads_it() {
        let err = decode::<u64>(&[1, 7, 0, 0, 0, 0, 0, 0, 0], || "vote".into()).unwrap_err();
        assert!(
            matches!(
                err,
                FormatError::Older {
                    found: 1,
                    supported: 2,
                    ..
                }
            ),
            "{err}"
        );
        assert!(
            err.to_string().contains("run the release that wrote it"),
            "{err}"
        );
    }
}
