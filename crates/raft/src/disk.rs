//! A node's storage on disk, and the move of an older data directory's
//! log and snapshot.
//!
//! ```text
//! <data_dir>/raft-log/    the Raft log, vote and committed id in segment files (`wal`)
//! <data_dir>/snapshots/   the current snapshot, a file (`snapshot_files`)
//! <data_dir>/payloads/    queued ciphertexts; the current snapshot keeps the segments it names (`payloads`)
//! <data_dir>/raft/        sled: holds nothing but the markers below, once moved
//! ```
//!
//! Builds before the segment log kept the log, vote and ids in sled's `log`
//! and `meta` trees. The first start of this build copies them into a new
//! log (written under `raft-log.tmp`, synced, renamed), then leaves a marker
//! where those builds read the vote: a value in a format they refuse, so a
//! rolled-back binary stops ("written by a newer router-raft") instead of
//! starting from the stale log it would find. A crash anywhere in between
//! leaves either the old layout untouched or a complete new log; the next
//! start finishes the move. The snapshot moves the same way: written to the
//! snapshot directory (synced, renamed), then [`SNAPSHOT_MOVED_MARKER`]
//! replaces it in sled.

use std::io;
use std::ops::Bound;
use std::path::Path;
use std::sync::Arc;

use openraft::{ErrorSubject, ErrorVerb};

use crate::backend::{Backend, SledBackend, Tree};
use crate::codec::{self, io_error};
use crate::log_store::{KEY_COMMITTED, KEY_LAST_PURGED, KEY_VOTE};
use crate::payloads::PayloadStore;
use crate::snapshot_files::SnapshotFiles;
use crate::state_machine::{self, StateMachineStore};
use crate::stats::StorageStats;
use crate::types::{Entry, LogId, StorageError, Vote};
use crate::wal::{self, WalLogStore};

/// Left under sled's `vote` key once the log moved: format version 255,
/// which no build reads as a vote.
pub(crate) const LOG_MOVED_MARKER: &[u8] = &[0xff, b'w', b'a', b'l'];
/// Left where sled kept the snapshot once it moved to its file; refused by
/// every build as format version 255, like [`LOG_MOVED_MARKER`].
pub(crate) const SNAPSHOT_MOVED_MARKER: &[u8] = &[0xff, b'f', b'i', b'l', b'e'];

fn store_error(e: &dyn std::error::Error, what: impl std::fmt::Display) -> StorageError {
    io_error(ErrorSubject::Store, ErrorVerb::Write, &io::Error::other(e.to_string()), what)
}

/// Opens the log and the state machine of the node whose data directory is
/// `data_dir`, moving an older build's log first. The state machine comes
/// back as of its latest stored snapshot; openraft re-applies the committed
/// log after it when the `Raft` starts.
pub async fn open_on_disk(data_dir: &Path) -> Result<(WalLogStore, StateMachineStore<SledBackend>), StorageError> {
    let backend = SledBackend::open(&data_dir.join("raft"))?;
    let log_dir = data_dir.join("raft-log");
    move_log_out_of_sled(&backend, data_dir, &log_dir).await?;
    let fail = |e: &io::Error, what: &str| io_error(ErrorSubject::Store, ErrorVerb::Write, e, what);
    let snapshots =
        SnapshotFiles::open(&data_dir.join("snapshots")).map_err(|e| fail(&e, "open the snapshot directory"))?;
    move_snapshot_out_of_sled(&backend, &snapshots).await?;
    let stats = Arc::new(StorageStats::default());
    let payloads = PayloadStore::reopen(&data_dir.join("payloads"), stats.clone())
        .map_err(|e| fail(&e, "open the payload directory"))?;
    let log = WalLogStore::open(&log_dir, stats.clone())?;
    let sm = StateMachineStore::open_on_files(backend, stats, snapshots, payloads)?;
    Ok((log, sm))
}

async fn move_snapshot_out_of_sled(backend: &SledBackend, snapshots: &SnapshotFiles) -> Result<(), StorageError> {
    let current = backend
        .get(Tree::Snapshot, state_machine::KEY_CURRENT)
        .map_err(|e| store_error(&e, "read the sled snapshot"))?;
    if current.as_deref() == Some(SNAPSHOT_MOVED_MARKER) {
        return Ok(());
    }
    if let Some((stored, _)) = state_machine::load_snapshot(backend)? {
        let write = || -> io::Result<()> {
            let pending = snapshots.begin_build()?;
            std::fs::write(&pending.data, &stored.data)?;
            snapshots.commit(pending, &stored.meta, Default::default())?;
            Ok(())
        };
        write().map_err(|e| {
            io_error(ErrorSubject::Snapshot(None), ErrorVerb::Write, &e, "move the snapshot out of sled")
        })?;
        tracing::info!(snapshot_id = %stored.meta.snapshot_id, bytes = stored.data.len(), "moved the snapshot out of sled");
    }
    let fail = |e: &dyn std::error::Error| store_error(e, "retire the sled snapshot");
    for key in [state_machine::KEY_CURRENT, state_machine::KEY_CURRENT_META] {
        backend.insert(Tree::Snapshot, key, SNAPSHOT_MOVED_MARKER.to_vec()).map_err(|e| fail(&e))?;
    }
    backend.flush().await.map_err(|e| fail(&e))
}

async fn move_log_out_of_sled(backend: &SledBackend, data_dir: &Path, log_dir: &Path) -> Result<(), StorageError> {
    let get = |key: &[u8]| {
        backend.get(Tree::Meta, key).map_err(|e| store_error(&e, format!("read {}", String::from_utf8_lossy(key))))
    };
    let vote_bytes = get(KEY_VOTE)?;
    if vote_bytes.as_deref() == Some(LOG_MOVED_MARKER) {
        if !log_dir.is_dir() {
            let e = io::Error::other(format!(
                "the Raft log moved to {} but that directory is missing: this node's data is incomplete",
                log_dir.display()
            ));
            return Err(io_error(ErrorSubject::Logs, ErrorVerb::Read, &e, "find the Raft log"));
        }
        return Ok(());
    }
    if !log_dir.exists() {
        let decode_meta = |bytes: Option<Vec<u8>>, what: &str| -> Result<Option<Vec<u8>>, StorageError> {
            // Refuses a too-new format here too, before anything is copied.
            if let Some(b) = &bytes {
                codec::version_of(b).map_err(|e| store_error(&e, format!("read {what}")))?;
            }
            Ok(bytes)
        };
        let vote: Option<Vote> = decode_meta(vote_bytes, "vote")?
            .map(|b| codec::decode(&b))
            .transpose()
            .map_err(|e| store_error(&e, "decode vote"))?;
        let committed: Option<LogId> = decode_meta(get(KEY_COMMITTED)?, "committed")?
            .map(|b| codec::decode::<Option<LogId>>(&b))
            .transpose()
            .map_err(|e| store_error(&e, "decode committed"))?
            .flatten();
        let purged: Option<LogId> = decode_meta(get(KEY_LAST_PURGED)?, "last purged")?
            .map(|b| codec::decode(&b))
            .transpose()
            .map_err(|e| store_error(&e, "decode last purged"))?;
        let pairs = backend
            .range(Tree::Log, (Bound::Unbounded, Bound::Unbounded))
            .map_err(|e| store_error(&e, "read the sled log"))?;
        let moved = pairs.len();
        let entries = pairs.into_iter().map(|(_, bytes)| {
            let entry: Entry = codec::decode(&bytes).map_err(io::Error::other)?;
            Ok((entry.log_id, bytes))
        });
        let tmp = data_dir.join("raft-log.tmp");
        let write = || -> io::Result<()> {
            if tmp.exists() {
                std::fs::remove_dir_all(&tmp)?;
            }
            wal::write_new(&tmp, vote, committed, purged, entries)?;
            std::fs::rename(&tmp, log_dir)?;
            std::fs::File::open(data_dir)?.sync_all()
        };
        write().map_err(|e| io_error(ErrorSubject::Logs, ErrorVerb::Write, &e, "move the Raft log out of sled"))?;
        if moved > 0 || vote.is_some() {
            tracing::info!(entries = moved, to = %log_dir.display(), "moved the Raft log out of sled");
        }
    }
    // The new log is complete and durable: fence older builds off, then free
    // what sled held.
    let fail = |e: &dyn std::error::Error| store_error(e, "retire the sled log");
    backend.insert(Tree::Meta, KEY_VOTE, LOG_MOVED_MARKER.to_vec()).map_err(|e| fail(&e))?;
    backend.remove(Tree::Meta, KEY_COMMITTED).map_err(|e| fail(&e))?;
    backend.remove(Tree::Meta, KEY_LAST_PURGED).map_err(|e| fail(&e))?;
    backend.remove_range(Tree::Log, (Bound::Unbounded, Bound::Unbounded)).map_err(|e| fail(&e))?;
    backend.flush().await.map_err(|e| fail(&e))
}
