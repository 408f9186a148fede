//! `Admin.Restore`: a backup streamed in, checked whole, then loaded into an
//! empty cluster as a sequence of bounded log entries (`router_core`'s
//! `state::restore`).
//!
//! ```text
//!  chunks ─> unlinked spool file in <data_dir> ─> (format 1/2: decoded, ciphertexts to a scratch payload store,
//!            rewritten as format 3) ─> every frame's CRC and the file's SHA-256 checked ─> RestoreBegin
//!            ─> one RestoreItems per frame (about 1 MiB), in order ─> RestoreFinish
//! ```
//!
//! Nothing is written to the log before the whole backup checked out, so a
//! truncated or altered backup changes nothing. The spool needs as much free
//! space in the data directory as the backup is large (twice that for a
//! backup of an older build). A restore cut off half-way leaves the cluster
//! refusing writes (`RESTORE_IN_PROGRESS`) until a restore runs to its end.

use super::status;
use crate::backup::{self, BackupError, Opened};
use crate::ctx::Ctx;
use router_core::{Command, StateItem};
use router_proto::v1::{BackupChunk, RestoreResponse};
use std::io::{BufReader, Seek, SeekFrom, Write};
use tonic::Status;

/// What the checked backup holds, for the answer.
#[derive(Default)]
struct Counts {
    frames: u32,
    users: u64,
    mailbox_entries: u64,
    /// Send answers kept by digest (a backup of a cluster at version 5).
    sender_answers: u64,
}

pub async fn restore(ctx: &Ctx, mut stream: tonic::Streaming<BackupChunk>) -> Result<RestoreResponse, Status> {
    let current = ctx.read(|s| s.cluster_version());
    if current < router_core::state::restore::PARTED_RESTORE_VERSION {
        let needed = router_core::state::restore::PARTED_RESTORE_VERSION;
        return Err(status::rejection(&router_core::Rejection::ClusterVersionTooLow { needed, current }));
    }
    let dir = ctx.data_dir.clone();
    let spool = blocking(move || backup::unlinked_file(&dir, "restore")).await?.map_err(spool_error)?;
    let mut spool = tokio::fs::File::from_std(spool);
    while let Some(chunk) = stream.message().await? {
        use tokio::io::AsyncWriteExt as _;
        spool.write_all(&chunk.data).await.map_err(spool_error)?;
    }
    let spool = spool.into_std().await;
    let dir = ctx.data_dir.clone();
    let (file, counts) = blocking(move || check(spool, &dir)).await?.map_err(bad_backup)?;
    let current = ctx.read(|s| s.cluster_version());
    let needed = router_core::dedup::SENDER_WINDOWS_VERSION;
    if counts.sender_answers > 0 && current < needed {
        return Err(status::rejection(&router_core::Rejection::ClusterVersionTooLow { needed, current }));
    }

    let id: u64 = rand::random();
    ctx.write(Command::RestoreBegin { id }).await?;
    // Frames are read on a blocking thread, two ahead of the log.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<Vec<StateItem>, BackupError>>(2);
    let reader = tokio::task::spawn_blocking(move || {
        let Ok(Opened::Frames(mut frames)) = backup::open(BufReader::with_capacity(1 << 20, file)) else {
            let _ = tx.blocking_send(Err(BackupError::BadEnd("the checked spool no longer opens".into())));
            return;
        };
        loop {
            let next = frames.next_frame().transpose();
            let Some(next) = next else { return };
            if tx.blocking_send(next).is_err() {
                return;
            }
        }
    });
    let mut part = 0u32;
    while let Some(items) = rx.recv().await {
        let items = items.map_err(bad_backup)?;
        ctx.write(Command::RestoreItems { id, part, items }).await?;
        part += 1;
    }
    let _ = reader.await;
    if part != counts.frames {
        return Err(status::reason(
            tonic::Code::Internal,
            "RESTORE_CUT_OFF",
            format!("read {part} of the backup's {} frames; run the restore again", counts.frames),
        ));
    }
    ctx.write(Command::RestoreFinish { id, parts: part }).await?;
    tracing::info!(restore_id = id, parts = part, users = counts.users, "restored a backup");
    Ok(RestoreResponse { users: counts.users, mailbox_entries: counts.mailbox_entries })
}

/// Checks the spooled backup through to its digest; a backup of an older
/// build is first rewritten in this build's format. Answers a file of the
/// current format at its start.
fn check(mut spool: std::fs::File, dir: &std::path::Path) -> Result<(std::fs::File, Counts), BackupError> {
    spool.seek(SeekFrom::Start(0))?;
    let len = spool.metadata()?.len();
    let (mut file, mut frames) = match backup::open(BufReader::with_capacity(1 << 20, spool.try_clone()?))? {
        Opened::Frames(frames) => (spool, frames),
        Opened::Legacy { version, applied_index, input } => {
            let mut file = rewrite_legacy(version, applied_index, input, len, dir)?;
            file.seek(SeekFrom::Start(0))?;
            match backup::open(BufReader::with_capacity(1 << 20, file.try_clone()?))? {
                Opened::Frames(frames) => (file, frames),
                Opened::Legacy { .. } => {
                    return Err(BackupError::BadEnd("a rewritten backup is not in the current format".into()));
                }
            }
        }
    };
    let mut counts = Counts::default();
    while let Some(items) = frames.next_frame()? {
        counts.frames += 1;
        for item in &items {
            match item {
                StateItem::User { .. } => counts.users += 1,
                StateItem::Entry { .. } => counts.mailbox_entries += 1,
                item if item.needs_sender_windows() => counts.sender_answers += 1,
                _ => {}
            }
        }
    }
    file.seek(SeekFrom::Start(0))?;
    Ok((file, counts))
}

/// An older backup decoded whole: its ciphertexts go to a scratch payload
/// store (removed when done) and the state's metadata stays in memory, as
/// much as a replica holds of it; then written out again, frame by frame.
fn rewrite_legacy<R: std::io::Read>(
    version: u8,
    applied_index: u64,
    input: R,
    limit: u64,
    dir: &std::path::Path,
) -> Result<std::fs::File, BackupError> {
    let scratch = dir.join(format!("restore-payloads-{}", std::process::id()));
    let rewritten = (|| {
        let payloads = router_raft::PayloadStore::open(&scratch, Default::default())?;
        let state = router_core::blob::decode_with_sink(std::sync::Arc::new(payloads), || {
            backup::read_legacy(version, input, limit)
        })?;
        let mut out = backup::unlinked_file(dir, "restore")?;
        let mut writer = std::io::BufWriter::with_capacity(1 << 20, &mut out);
        backup::write(&mut writer, state, applied_index)?;
        writer.flush()?;
        drop(writer);
        Ok(out)
    })();
    // The state (and with it every handle into the scratch store) is gone.
    let _ = std::fs::remove_dir_all(&scratch);
    rewritten
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, Status> {
    tokio::task::spawn_blocking(f).await.map_err(|e| Status::internal(format!("restore task: {e}")))
}

fn bad_backup(e: BackupError) -> Status {
    match e {
        BackupError::Io(e) => spool_error(e),
        e => status::invalid_field("data", "BAD_BACKUP", e.to_string()),
    }
}

/// The spool could not be written or read: a full disk is the likely cause.
fn spool_error(e: std::io::Error) -> Status {
    let code = if e.kind() == std::io::ErrorKind::StorageFull {
        tonic::Code::ResourceExhausted
    } else {
        tonic::Code::Unavailable
    };
    status::reason(code, "RESTORE_SPOOL", format!("spooling the backup in the data directory: {e}"))
}
