//! The backup file format: `IRBK`, a format version byte, the log index the
//! state is as of (u64 BE), then the bincode-encoded `router_core::State`.
//! A backup is a consistent state: one node's replica at one applied index.

use router_core::State;

const MAGIC: &[u8; 4] = b"IRBK";
pub const BACKUP_FORMAT_VERSION: u8 = 1;
/// A restore travels as one Raft entry; keep it well under the peer
/// message limit.
pub const MAX_RESTORE_BYTES: usize = 48 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("not an Interop Router backup (bad magic)")]
    BadMagic,
    #[error("backup format version {found} is newer than this build reads ({supported}); use a newer routerd")]
    NewerVersion { found: u8, supported: u8 },
    #[error("backup is truncated")]
    Truncated,
    #[error("backup is corrupt: {0}")]
    Corrupt(#[from] bincode::Error),
}

pub fn encode(state: &State, applied_index: u64) -> Result<Vec<u8>, BackupError> {
    let mut out = Vec::with_capacity(13);
    out.extend_from_slice(MAGIC);
    out.push(BACKUP_FORMAT_VERSION);
    out.extend_from_slice(&applied_index.to_be_bytes());
    bincode::serialize_into(&mut out, state)?;
    Ok(out)
}

pub fn decode(bytes: &[u8]) -> Result<(State, u64), BackupError> {
    if bytes.len() < 13 {
        return Err(if bytes.starts_with(MAGIC) || bytes.len() < 4 {
            BackupError::Truncated
        } else {
            BackupError::BadMagic
        });
    }
    if &bytes[..4] != MAGIC {
        return Err(BackupError::BadMagic);
    }
    if bytes[4] > BACKUP_FORMAT_VERSION {
        return Err(BackupError::NewerVersion { found: bytes[4], supported: BACKUP_FORMAT_VERSION });
    }
    let index = u64::from_be_bytes(bytes[5..13].try_into().expect("8 bytes"));
    Ok((bincode::deserialize(&bytes[13..])?, index))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_refusals() {
        let state = State::new(router_core::Limits::default());
        let bytes = encode(&state, 42).unwrap();
        assert_eq!(decode(&bytes).unwrap(), (state, 42));
        assert!(matches!(decode(b"nope-nope-nope"), Err(BackupError::BadMagic)));
        assert!(matches!(decode(&bytes[..8]), Err(BackupError::Truncated)));
        let mut newer = bytes.clone();
        newer[4] = BACKUP_FORMAT_VERSION + 1;
        assert!(matches!(decode(&newer), Err(BackupError::NewerVersion { .. })));
        assert!(matches!(decode(&bytes[..bytes.len() - 3]), Err(BackupError::Corrupt(_))));
    }
}
