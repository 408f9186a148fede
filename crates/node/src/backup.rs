//! The backup file format: `IRBK`, a format version byte, the log index the
//! state is as of (u64 BE), then the bincode-encoded `router_core::State`;
//! in version 2 followed by the federation peers (written only when there
//! are any, so a backup of a cluster that never federated is version 1).
//! A backup is a consistent state: one node's replica at one applied index.

use router_core::{Federation, State};

const MAGIC: &[u8; 4] = b"IRBK";
/// Without federation peers.
const BASE_BACKUP_FORMAT: u8 = 1;
/// The newest format this build writes and reads.
pub const BACKUP_FORMAT_VERSION: u8 = 2;
/// A restore travels as one Raft entry; keep it well under the peer
/// message limit.
pub const MAX_RESTORE_BYTES: usize = 48 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("not an Interop Router backup (bad magic)")]
    BadMagic,
    #[error("backup format version {found} is newer than this build reads ({supported}); use a newer routerd")]
    NewerVersion { found: u8, supported: u8 },
    #[error("backup format version {0} is unknown")]
    UnknownVersion(u8),
    #[error("backup is truncated")]
    Truncated,
    #[error("backup is corrupt: {0}")]
    Corrupt(#[from] bincode::Error),
}

pub fn encode(state: &State, applied_index: u64) -> Result<Vec<u8>, BackupError> {
    let mut out = Vec::with_capacity(13);
    write(&mut out, state, applied_index)?;
    Ok(out)
}

/// What [`encode`] makes, written to `out` as it is encoded: queued
/// ciphertexts are read back from the payload files one at a time, so a
/// backup never sits in memory whole. Does not flush.
pub fn write<W: std::io::Write>(mut out: W, state: &State, applied_index: u64) -> Result<(), BackupError> {
    let federated = !state.federation.is_empty();
    let version = if federated { BACKUP_FORMAT_VERSION } else { BASE_BACKUP_FORMAT };
    let mut header = MAGIC.to_vec();
    header.push(version);
    header.extend_from_slice(&applied_index.to_be_bytes());
    out.write_all(&header).map_err(|e| BackupError::Corrupt(Box::new(bincode::ErrorKind::Io(e))))?;
    bincode::serialize_into(&mut out, state)?;
    if federated {
        bincode::serialize_into(&mut out, &state.federation)?;
    }
    Ok(())
}

/// Writes a backup of `state` to an unlinked file in `dir` and answers it,
/// positioned at its start, with its length. Blocking: call it off the runtime.
pub fn write_to_unlinked_file(
    dir: &std::path::Path,
    state: &State,
    applied_index: u64,
) -> std::io::Result<(std::fs::File, u64)> {
    use std::io::{Seek, SeekFrom};
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let path = dir.join(format!("backup-{}-{n}.tmp", std::process::id()));
    let mut file = std::fs::OpenOptions::new().read(true).write(true).create_new(true).open(&path)?;
    // Gone from the directory at once: nothing to clean up whatever happens next.
    std::fs::remove_file(&path)?;
    let mut out = std::io::BufWriter::with_capacity(1 << 20, &mut file);
    write(&mut out, state, applied_index).map_err(std::io::Error::other)?;
    out.into_inner().map_err(|e| e.into_error())?;
    let len = file.seek(SeekFrom::End(0))?;
    file.seek(SeekFrom::Start(0))?;
    Ok((file, len))
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
    let version = bytes[4];
    if version > BACKUP_FORMAT_VERSION {
        return Err(BackupError::NewerVersion { found: version, supported: BACKUP_FORMAT_VERSION });
    }
    if version < BASE_BACKUP_FORMAT {
        return Err(BackupError::UnknownVersion(version));
    }
    let index = u64::from_be_bytes(bytes[5..13].try_into().expect("8 bytes"));
    // The state, then (version 2) the federation section right after it.
    use bincode::Options as _;
    use serde::Deserialize as _;
    let options = bincode::DefaultOptions::new().with_fixint_encoding().allow_trailing_bytes();
    let mut de = bincode::Deserializer::from_slice(&bytes[13..], options);
    let mut state = State::deserialize(&mut de)?;
    if version == BACKUP_FORMAT_VERSION {
        state.federation = Federation::deserialize(&mut de)?;
    }
    Ok((state, index))
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
        let mut zero = bytes.clone();
        zero[4] = 0;
        assert!(matches!(decode(&zero), Err(BackupError::UnknownVersion(0))));
    }

    #[test]
    fn federation_peers_are_kept_and_only_then_is_the_format_2() {
        let mut state = State::new(router_core::Limits::default());
        assert_eq!(encode(&state, 1).unwrap()[4], 1, "never federated: the old format");
        state.apply_batch(&router_core::Batch {
            stamp_ms: 5,
            commands: vec![router_core::Command::RegisterPeer {
                peer: router_core::ClusterId::new("eu-hub"),
                endpoints: vec!["127.0.0.1:9".into()],
                ca_pem: "CA".into(),
                providers: vec![router_core::ProviderId::new("beta")],
                max_queue: 0,
            }],
        });
        let bytes = encode(&state, 7).unwrap();
        assert_eq!(bytes[4], BACKUP_FORMAT_VERSION);
        assert_eq!(decode(&bytes).unwrap(), (state, 7));
    }
}
