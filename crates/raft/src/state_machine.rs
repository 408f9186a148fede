//! [`StateMachineStore`]: the applied [`router_core::State`] and its snapshots.
//!
//! ```text
//!  committed entries ──> apply ──> State::apply_batch ──> Vec<Outcome> (the client's answer)
//!       │                  └──> applied watch (last applied index)
//!       └──> their ciphertexts ──> PayloadStore (on disk only; before apply, outside the lock)
//!  build_snapshot: (last_applied, membership, State) ──> streamed encode, payloads by place
//!                  ──> fsync of the payload segments it names ──> `state` file + fsync
//!  sent to a peer: `state` file ──> decode (handles) ──> encode with the bytes ──> snapshots/bytes-<k>, kept with the snapshot
//!  install:        received file ──> streamed decode (ciphertexts straight to PayloadStore) ──> State
//!                  ──> kept as a `state` file like a build's; the received file removed
//!  open():         `state` file ──> decode, segments of the last run claimed; or an older build's
//!                  `data` file ──> streamed decode as an install does
//! ```
//!
//! Two layouts. On disk ([`StateMachineStore::open_on_files`]) snapshots are
//! files ([`SnapshotFiles`]) that openraft sends and receives in chunks, and
//! queued ciphertexts live in payload files ([`PayloadStore`]), so memory
//! holds the state's metadata, not its mail. Over a [`Backend`] alone
//! ([`StateMachineStore::open`], the simulation's layout) snapshots are
//! values in the backend's `snapshot` tree and everything stays in memory.
//!
//! The state itself is not written on every apply. After a restart it is
//! rebuilt from the latest snapshot, and openraft re-applies the log entries
//! after it up to the saved committed id (see `LogStore::save_committed`).
//! Openraft purges log entries only once a snapshot covering them is stored,
//! so nothing is lost between the two. The payload files are rebuilt the
//! same way: they are a place to keep bytes out of memory, not a durable copy.
//!
//! Locking: `state` is a `std::sync::RwLock`, held for writing only while a
//! batch of entries is applied or a snapshot installed, and never across an
//! `.await`. `applied` (last applied id and membership) changes only while the
//! state write lock is held, so whoever holds the state lock (read or write)
//! sees the two consistently. Lock order: `state`, then `applied`.

use std::collections::BTreeMap;
use std::io::{BufReader, BufWriter, Read};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

use openraft::storage::RaftStateMachine;
use openraft::{EntryPayload, ErrorSubject, ErrorVerb, OptionalSend, RaftSnapshotBuilder};
use router_core::blob::{BlobPlaces, PlacedSources};
use router_core::dedup::SenderWindows;
use router_core::{Federation, Outcome, RestoreProgress, State, StateExtras};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::backend::{Backend, Tree};
use crate::codec::{self, io_error};
use crate::payloads::PayloadStore;
use crate::snapshot_data::SnapshotData;
use crate::snapshot_files::{Form, Opened, Pending, SnapshotFiles};
use crate::types::{Entry, LogId, Snapshot, SnapshotMeta, StorageError, StoredMembership, TypeConfig};

/// Where builds before the snapshot tree kept the snapshot (meta tree).
const KEY_LEGACY_SNAPSHOT: &[u8] = b"snapshot";
pub(crate) const KEY_CURRENT: &[u8] = b"current";
pub(crate) const KEY_CURRENT_META: &[u8] = b"current-meta";
/// Left under the legacy key once the snapshot moved: a value of format
/// version 2, which those older builds cannot read, so they refuse this data
/// directory ("written by a newer router-raft: upgrade instead of rolling
/// back") instead of starting without the snapshot their log was purged to.
pub(crate) const MOVED_MARKER: &[u8] = &[2, b'm', b'o', b'v', b'e', b'd'];

/// What a snapshot's data holds, codec-encoded (version byte + bincode).
#[derive(Serialize)]
struct SnapshotPayloadRef<'a> {
    last_applied: &'a Option<LogId>,
    membership: &'a StoredMembership,
    state: &'a State,
}

/// The owned twin of [`SnapshotPayloadRef`]; bincode lays both out the same.
#[derive(Deserialize)]
struct SnapshotPayload {
    last_applied: Option<LogId>,
    membership: StoredMembership,
    state: State,
}

impl SnapshotPayload {
    fn as_ref(&self) -> SnapshotPayloadRef<'_> {
        SnapshotPayloadRef { last_applied: &self.last_applied, membership: &self.membership, state: &self.state }
    }
}

/// The latest snapshot as stored in the backend's tree.
#[derive(Serialize, Deserialize)]
pub(crate) struct StoredSnapshot {
    pub(crate) meta: SnapshotMeta,
    pub(crate) data: Vec<u8>,
}

#[derive(Clone, Debug, Default)]
struct Applied {
    last_applied: Option<LogId>,
    membership: StoredMembership,
}

/// The state machine of one node. Cheap to clone: clones share everything,
/// and the snapshot builder openraft asks for is such a clone.
#[derive(Clone)]
pub struct StateMachineStore<B: Backend> {
    backend: B,
    state: Arc<RwLock<State>>,
    applied: Arc<Mutex<Applied>>,
    applied_tx: Arc<watch::Sender<u64>>,
    /// Makes "is the stored snapshot older than this one? then replace it"
    /// atomic, so a slow build can not overwrite a newer installed snapshot.
    snapshot_write: Arc<tokio::sync::Mutex<()>>,
    /// Distinguishes snapshots built at the same log id (ids must be unique).
    snapshot_seq: Arc<AtomicU64>,
    stats: Arc<crate::stats::StorageStats>,
    /// The span current at `open` (the node's): openraft runs apply and
    /// snapshot builds on tasks of its own, and our log lines should still
    /// say which node.
    span: tracing::Span,
    /// Snapshot and payload files; `None` in the backend-only layout.
    files: Option<Files>,
}

#[derive(Clone, Debug)]
struct Files {
    snapshots: SnapshotFiles,
    payloads: PayloadStore,
}

impl Files {
    /// Moves the ciphertexts `entries` carry into the payload files before
    /// they are applied (one write, outside the state lock): whatever the
    /// state keeps of them is then a handle. A failed write leaves them in
    /// memory, where they are as safe; it is logged and counted.
    fn store_payloads(&self, entries: &mut [Entry]) {
        let mut blobs = Vec::new();
        for entry in entries.iter_mut() {
            if let EntryPayload::Normal(batch) = &mut entry.payload {
                for command in batch.commands.iter_mut() {
                    command.blobs_mut(&mut blobs);
                }
            }
        }
        if let Err(e) = self.payloads.spill(blobs) {
            tracing::warn!(error = %e, "cannot write payloads to their files; they stay in memory");
        }
    }
}

impl<B: Backend> std::fmt::Debug for StateMachineStore<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateMachineStore").field("applied", &*self.lock_applied()).finish_non_exhaustive()
    }
}

/// The state, and the section after it: federation peers (format 2), or
/// everything the serde encoding of the state leaves out (format 3).
fn decode_payload(data: &[u8]) -> Result<SnapshotPayload, codec::FormatError> {
    let version = codec::version_of(data)?;
    read_payload(version, &data[1..], data.len() as u64)
}

/// [`decode_payload`] from a reader positioned after the version byte.
fn read_payload<R: Read>(version: u8, input: R, limit: u64) -> Result<SnapshotPayload, codec::FormatError> {
    if version >= codec::SENDER_WINDOWS_FORMAT {
        type Section = (StateExtras, Option<RestoreProgress>, BTreeMap<u64, u64>, SenderWindows);
        let (mut payload, section) = codec::read_with_section::<_, SnapshotPayload, Section>(version, input, limit)?;
        if let Some((extras, progress, incarnations, windows)) = section {
            payload.state.set_extras(extras);
            payload.state.set_restore_progress(progress);
            payload.state.set_incarnations(incarnations);
            payload.state.set_sender_windows(windows);
        }
        return Ok(payload);
    }
    if version >= codec::INCARNATION_FORMAT {
        type Section = (StateExtras, Option<RestoreProgress>, BTreeMap<u64, u64>);
        let (mut payload, section) = codec::read_with_section::<_, SnapshotPayload, Section>(version, input, limit)?;
        if let Some((extras, progress, incarnations)) = section {
            payload.state.set_extras(extras);
            payload.state.set_restore_progress(progress);
            payload.state.set_incarnations(incarnations);
        }
        return Ok(payload);
    }
    if version >= codec::PARTED_RESTORE_FORMAT {
        type Section = (StateExtras, Option<RestoreProgress>);
        let (mut payload, section) = codec::read_with_section::<_, SnapshotPayload, Section>(version, input, limit)?;
        if let Some((extras, progress)) = section {
            payload.state.set_extras(extras);
            payload.state.set_restore_progress(progress);
        }
        return Ok(payload);
    }
    if version >= codec::CLUSTER_VERSION_FORMAT {
        let (mut payload, extras) = codec::read_with_section::<_, SnapshotPayload, StateExtras>(version, input, limit)?;
        if let Some(extras) = extras {
            payload.state.set_extras(extras);
        }
        return Ok(payload);
    }
    let (mut payload, federation) = codec::read_with_section::<_, SnapshotPayload, Federation>(version, input, limit)?;
    if let Some(federation) = federation {
        payload.state.federation = federation;
    }
    Ok(payload)
}

/// Decodes the snapshot file at `path` as it is read, ciphertexts going
/// straight into `payloads`: memory holds the state's metadata only.
fn read_payload_file(path: &Path, payloads: &PayloadStore) -> std::io::Result<SnapshotPayload> {
    let file = std::fs::File::open(path)?;
    let limit = file.metadata()?.len();
    let mut input = BufReader::with_capacity(1 << 20, file);
    let version = codec::read_version(&mut input).map_err(std::io::Error::other)?;
    router_core::blob::decode_with_sink(Arc::new(payloads.clone()), || read_payload(version, input, limit))
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

/// Decodes the placed snapshot `file`, its payloads found in `places`.
fn read_placed_file(mut file: std::fs::File, places: Arc<dyn BlobPlaces>) -> std::io::Result<SnapshotPayload> {
    use std::io::Seek as _;
    let limit = file.metadata()?.len();
    file.seek(std::io::SeekFrom::Start(0))?;
    let mut input = BufReader::with_capacity(1 << 20, file);
    let version = codec::read_version(&mut input).map_err(std::io::Error::other)?;
    router_core::blob::decode_with_places(places, || read_payload(version, input, limit))
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

/// The bytes form of placed snapshot `id` (whose payloads are in
/// `sources`), opened at its start: what a peer receives. Written once into
/// a file of `snapshots` that is kept with the snapshot for the next send;
/// memory holds the snapshot's metadata meanwhile, not its payloads.
fn bytes_form(
    snapshots: &SnapshotFiles,
    id: &str,
    placed: std::fs::File,
    sources: PlacedSources,
) -> std::io::Result<std::fs::File> {
    use std::io::Seek as _;
    if let Some(kept) = snapshots.kept_bytes_form(id)? {
        return Ok(kept);
    }
    let payload = read_placed_file(placed, Arc::new(sources))?;
    let (scratch, path) = snapshots.scratch()?;
    let written = (|| {
        let mut out = BufWriter::with_capacity(1 << 20, scratch);
        write_payload(&mut out, &payload.as_ref()).map_err(std::io::Error::other)?;
        let mut file = out.into_inner().map_err(|e| e.into_error())?;
        file.seek(std::io::SeekFrom::Start(0))?;
        Ok(file)
    })();
    match written {
        Ok(file) => {
            snapshots.try_keep_bytes_form(id, path);
            Ok(file)
        }
        Err(e) => {
            let _ = std::fs::remove_file(&path);
            Err(e)
        }
    }
}

/// Commits `payload` as a placed snapshot with `meta`, once the payload
/// segments it names are durable. Answers its size, and the snapshot opened
/// before the commit: it stays readable if a newer one replaces it meanwhile.
fn keep_placed(
    snapshots: &SnapshotFiles,
    payloads: &PayloadStore,
    meta: &SnapshotMeta,
    payload: &SnapshotPayloadRef<'_>,
) -> std::io::Result<(u64, Opened)> {
    snapshots.complete(snapshots.begin_build_placed()?, meta, |path| {
        let (size, sources) = write_placed_file(path, payload)?;
        payloads.make_durable(&sources)?;
        let file = std::fs::File::open(path)?;
        let opened =
            Opened { meta: meta.clone(), file, path: path.to_path_buf(), form: Form::Placed, sources: sources.clone() };
        Ok(((size, opened), sources))
    })
}

/// The current snapshot as openraft reads it: the file itself, or for a
/// placed one the bytes form, made when it is first read.
fn snapshot_data(snapshots: &SnapshotFiles, opened: Opened) -> SnapshotData {
    match opened.form {
        Form::Bytes => SnapshotData::File(tokio::fs::File::from_std(opened.file), opened.path),
        Form::Placed => {
            let snapshots = snapshots.clone();
            SnapshotData::deferred(move || {
                bytes_form(&snapshots, &opened.meta.snapshot_id, opened.file, opened.sources)
            })
        }
    }
}

/// An entry that raises the cluster version beyond what this build applies
/// cannot be applied correctly here: a storage error, which stops openraft
/// (the node fails closed) instead of letting this replica diverge. The
/// leader raises the version only once every member supports it, so this
/// means a build was rolled back under a cluster that had moved on.
fn refuse_unknown_rules(batch: &router_core::Batch, log_id: LogId) -> Result<(), StorageError> {
    let too_new = batch.commands.iter().find_map(|c| match c {
        router_core::Command::SetClusterVersion { version } if *version > router_core::CLUSTER_VERSION => {
            Some(*version)
        }
        _ => None,
    });
    match too_new {
        None => Ok(()),
        Some(version) => {
            let e = std::io::Error::other(format!(
                "entry {log_id} raises the cluster version to {version}, but this build applies up to {}: \
                 upgrade this node instead of rolling back",
                router_core::CLUSTER_VERSION
            ));
            Err(io_error(ErrorSubject::Apply(log_id), ErrorVerb::Read, &e, "apply"))
        }
    }
}

/// Writes a snapshot of `payload` to `out`, in the oldest format that holds it.
fn write_payload<W: std::io::Write>(out: W, payload: &SnapshotPayloadRef<'_>) -> Result<(), codec::FormatError> {
    let state = payload.state;
    // Whenever the windows exist, whatever the version says: an older format
    // would encode them as an empty shared window and lose every answer.
    if let Some(windows) = state.send_answers().sender_windows() {
        let section = (state.extras_section(), state.restore_progress(), state.incarnations(), windows);
        return codec::write_with_section(out, codec::SENDER_WINDOWS_FORMAT, payload, Some(&section));
    }
    if let Some(extras) = state.extras().filter(|_| !state.incarnations().is_empty()) {
        let section = (extras, state.restore_progress(), state.incarnations());
        return codec::write_with_section(out, codec::INCARNATION_FORMAT, payload, Some(&section));
    }
    if let (Some(extras), Some(progress)) = (state.extras(), state.restore_progress()) {
        return codec::write_with_section(out, codec::PARTED_RESTORE_FORMAT, payload, Some(&(extras, Some(progress))));
    }
    if let Some(extras) = state.extras() {
        return codec::write_with_section(out, codec::CLUSTER_VERSION_FORMAT, payload, Some(&extras));
    }
    let federation = (!state.federation.is_empty()).then_some(&state.federation);
    codec::write_with_section(out, codec::FEDERATION_FORMAT, payload, federation)
}

/// [`write_payload`] into memory (the backend-only layout).
fn encode_payload(payload: &SnapshotPayloadRef<'_>) -> Result<Vec<u8>, codec::FormatError> {
    let mut buf = Vec::new();
    write_payload(&mut buf, payload)?;
    Ok(buf)
}

/// `state` as a snapshot carries it, in the format a snapshot of it is
/// written in, without the Raft metadata: what the fuzzers round-trip, so
/// that they check the encoding a snapshot install decodes.
pub fn encode_state(state: &State) -> Result<Vec<u8>, codec::FormatError> {
    let (last_applied, membership) = (None, StoredMembership::default());
    encode_payload(&SnapshotPayloadRef { last_applied: &last_applied, membership: &membership, state })
}

/// Reads what [`encode_state`] wrote.
pub fn decode_state(bytes: &[u8]) -> Result<State, codec::FormatError> {
    Ok(decode_payload(bytes)?.state)
}

/// Writes a placed snapshot file at `path`; answers its size and the
/// payload segments it names.
fn write_placed_file(path: &Path, payload: &SnapshotPayloadRef<'_>) -> std::io::Result<(u64, PlacedSources)> {
    let file = std::fs::File::create(path)?;
    let mut out = BufWriter::with_capacity(1 << 20, file);
    let (written, sources) = router_core::blob::encode_with_places(|| write_payload(&mut out, payload));
    written.map_err(std::io::Error::other)?;
    let file = out.into_inner().map_err(|e| e.into_error())?;
    Ok((file.metadata()?.len(), sources))
}

fn check_covers(payload: &SnapshotPayload, meta: &SnapshotMeta) -> std::io::Result<()> {
    if payload.last_applied != meta.last_log_id || payload.membership != meta.last_membership {
        return Err(std::io::Error::other(format!(
            "snapshot data covers {:?} / {:?}, but its meta says {:?} / {:?}",
            payload.last_applied, payload.membership, meta.last_log_id, meta.last_membership
        )));
    }
    Ok(())
}

/// The receive that `snapshot` is, as a pending snapshot directory: the
/// file this store received into, or else (another store's file, or bytes
/// in memory) a copy of it in a new one.
async fn received_file(snapshots: &SnapshotFiles, snapshot: SnapshotData) -> std::io::Result<Pending> {
    let snapshots = snapshots.clone();
    match snapshot {
        SnapshotData::File(mut file, path) => {
            use tokio::io::AsyncWriteExt as _;
            file.flush().await?;
            if let Some(pending) = snapshots.pending_of(&path) {
                return Ok(pending);
            }
            let mut from = file.into_std().await;
            blocking(move || {
                use std::io::Seek as _;
                let pending = snapshots.begin_receive()?;
                from.seek(std::io::SeekFrom::Start(0))?;
                std::io::copy(&mut from, &mut std::fs::File::create(&pending.data)?)?;
                Ok(pending)
            })
            .await
        }
        SnapshotData::Memory(bytes) => {
            blocking(move || {
                let pending = snapshots.begin_receive()?;
                std::fs::write(&pending.data, bytes.into_inner())?;
                Ok(pending)
            })
            .await
        }
        mut deferred @ SnapshotData::Deferred(_) => {
            use tokio::io::AsyncSeekExt as _;
            let pending = blocking(move || snapshots.begin_receive()).await?;
            let mut to = tokio::fs::File::create(&pending.data).await?;
            deferred.seek(std::io::SeekFrom::Start(0)).await?;
            tokio::io::copy(&mut deferred, &mut to).await?;
            Ok(pending)
        }
    }
}

async fn blocking<T: Send + 'static>(work: impl FnOnce() -> std::io::Result<T> + Send + 'static) -> std::io::Result<T> {
    tokio::task::spawn_blocking(work).await.map_err(|e| std::io::Error::other(format!("blocking task: {e}")))?
}

impl<B: Backend> StateMachineStore<B> {
    /// Opens the state machine on `backend`, restoring state, last applied id
    /// and membership from the latest stored snapshot (empty state if none).
    /// `stats` is shared with the node's log store (see [`crate::open`]).
    pub fn open(backend: B, stats: Arc<crate::stats::StorageStats>) -> Result<Self, StorageError> {
        let (state, applied) = match load_snapshot(&backend)? {
            Some((stored, legacy)) => {
                let meta_stale = !legacy && stored_meta(&backend)?.as_ref() != Some(&stored.meta);
                if legacy || meta_stale {
                    // Becomes durable with the next flush; until then the
                    // legacy copy is still in place (the backend keeps write order).
                    let bytes = codec::encode(&stored).map_err(|e| {
                        io_error(ErrorSubject::Snapshot(None), ErrorVerb::Write, &e, "encode moved snapshot")
                    })?;
                    write_snapshot(&backend, &stored.meta, bytes)?;
                    if legacy {
                        tracing::info!(snapshot_id = %stored.meta.snapshot_id, "moved the snapshot to its own tree");
                    }
                }
                let payload = decode_payload(&stored.data).map_err(|e| {
                    io_error(
                        ErrorSubject::Snapshot(Some(stored.meta.signature())),
                        ErrorVerb::Read,
                        &e,
                        "decode stored snapshot",
                    )
                })?;
                tracing::info!(
                    last_applied = ?payload.last_applied,
                    snapshot_id = %stored.meta.snapshot_id,
                    "restored state machine from snapshot"
                );
                (payload.state, Applied { last_applied: payload.last_applied, membership: payload.membership })
            }
            None => (State::default(), Applied::default()),
        };
        Ok(Self::assemble(backend, stats, state, applied, None))
    }

    /// Opens the state machine of a node on disk: snapshots in `snapshots`,
    /// ciphertexts in `payloads` (see the module doc). The latest snapshot
    /// file is decoded as it is read. `backend` holds no snapshot in this
    /// layout (`open_on_disk` moves an older build's out of it first).
    pub fn open_on_files(
        backend: B,
        stats: Arc<crate::stats::StorageStats>,
        snapshots: SnapshotFiles,
        payloads: PayloadStore,
    ) -> Result<Self, StorageError> {
        let current = snapshots
            .current()
            .map_err(|e| io_error(ErrorSubject::Snapshot(None), ErrorVerb::Read, &e, "find the current snapshot"))?;
        let (state, applied) = match current {
            Some(current) => {
                let (meta, path) = (&current.meta, &current.data);
                let fail = |e: &std::io::Error| {
                    io_error(
                        ErrorSubject::Snapshot(Some(meta.signature())),
                        ErrorVerb::Read,
                        e,
                        format!("decode stored snapshot {}", path.display()),
                    )
                };
                current.verify().map_err(|e| fail(&e))?;
                let payload = match current.form {
                    Form::Bytes => read_payload_file(path, &payloads),
                    Form::Placed => {
                        std::fs::File::open(path).and_then(|file| read_placed_file(file, Arc::new(payloads.clone())))
                    }
                }
                .map_err(|e| fail(&e))?;
                check_covers(&payload, meta).map_err(|e| fail(&e))?;
                tracing::info!(
                    last_applied = ?payload.last_applied,
                    snapshot_id = %meta.snapshot_id,
                    "restored state machine from snapshot"
                );
                (payload.state, Applied { last_applied: payload.last_applied, membership: payload.membership })
            }
            None => (State::default(), Applied::default()),
        };
        // What the current snapshot did not claim is for the log to refill.
        let claimed = payloads.release_leftovers().map_err(|e| {
            io_error(ErrorSubject::Snapshot(None), ErrorVerb::Write, &e, "remove payload segments of the last run")
        })?;
        snapshots.keep_sources(claimed);
        Ok(Self::assemble(backend, stats, state, applied, Some(Files { snapshots, payloads })))
    }

    fn assemble(
        backend: B,
        stats: Arc<crate::stats::StorageStats>,
        state: State,
        applied: Applied,
        files: Option<Files>,
    ) -> Self {
        let index = applied.last_applied.map_or(0, |l| l.index);
        StateMachineStore {
            backend,
            state: Arc::new(RwLock::new(state)),
            applied: Arc::new(Mutex::new(applied)),
            applied_tx: Arc::new(watch::Sender::new(index)),
            snapshot_write: Arc::new(tokio::sync::Mutex::new(())),
            snapshot_seq: Arc::new(AtomicU64::new(0)),
            stats,
            span: tracing::Span::current(),
            files,
        }
    }

    /// What this node's log and state-machine stores did since it started.
    pub fn stats(&self) -> Arc<crate::stats::StorageStats> {
        self.stats.clone()
    }

    /// Read handle on the applied state. Hold the read lock only briefly: the
    /// apply path waits for it.
    pub fn state(&self) -> Arc<RwLock<State>> {
        self.state.clone()
    }

    /// Last applied log index (0 before anything), updated after every apply
    /// and snapshot install. Readers wait on it to read their own writes.
    pub fn applied(&self) -> watch::Receiver<u64> {
        self.applied_tx.subscribe()
    }

    // A poisoned lock means `apply` panicked halfway through a batch: the
    // state is no longer what the log says, so serving it would diverge.
    fn write_state(&self) -> RwLockWriteGuard<'_, State> {
        self.state.write().expect("state lock poisoned: apply panicked, state is unusable")
    }

    fn read_state(&self) -> RwLockReadGuard<'_, State> {
        self.state.read().expect("state lock poisoned: apply panicked, state is unusable")
    }

    fn lock_applied(&self) -> MutexGuard<'_, Applied> {
        self.applied.lock().expect("applied lock poisoned: apply panicked, state is unusable")
    }

    /// Stores `meta`/`data` as the current snapshot and fsyncs, unless the
    /// stored one is already newer.
    async fn persist_snapshot(&self, meta: &SnapshotMeta, data: &[u8]) -> Result<(), StorageError> {
        let subject = || ErrorSubject::Snapshot(Some(meta.signature()));
        let _guard = self.snapshot_write.lock().await;
        if let Some(stored) = stored_meta(&self.backend)?
            && stored.last_log_id > meta.last_log_id
        {
            self.span.in_scope(|| {
                tracing::debug!(
                    stored = ?stored.last_log_id,
                    new = ?meta.last_log_id,
                    "keeping the newer stored snapshot"
                )
            });
            return Ok(());
        }
        let bytes = codec::encode(&StoredSnapshot { meta: meta.clone(), data: data.to_vec() })
            .map_err(|e| io_error(subject(), ErrorVerb::Write, &e, "encode snapshot"))?;
        write_snapshot(&self.backend, meta, bytes)?;
        self.backend.flush().await.map_err(|e| io_error(subject(), ErrorVerb::Write, &e, "fsync snapshot"))
    }
}

/// Writes the snapshot, then its meta copy, then the marker in the legacy
/// place. A crash keeps a prefix of these writes: the full value is what
/// `open` trusts, and it rewrites the meta copy from it.
fn write_snapshot<B: Backend>(backend: &B, meta: &SnapshotMeta, stored_bytes: Vec<u8>) -> Result<(), StorageError> {
    let subject = || ErrorSubject::Snapshot(Some(meta.signature()));
    let meta_bytes =
        codec::encode(meta).map_err(|e| io_error(subject(), ErrorVerb::Write, &e, "encode snapshot meta"))?;
    let write = |tree, key, value| {
        backend.insert(tree, key, value).map_err(|e| io_error(subject(), ErrorVerb::Write, &e, "write snapshot"))
    };
    write(Tree::Snapshot, KEY_CURRENT, stored_bytes)?;
    write(Tree::Snapshot, KEY_CURRENT_META, meta_bytes)?;
    write(Tree::Meta, KEY_LEGACY_SNAPSHOT, MOVED_MARKER.to_vec())
}

/// The latest stored snapshot, and whether it was found in the legacy place.
pub(crate) fn load_snapshot<B: Backend>(backend: &B) -> Result<Option<(StoredSnapshot, bool)>, StorageError> {
    let read_err = |e: &dyn std::error::Error| {
        let e = std::io::Error::other(e.to_string());
        io_error(ErrorSubject::Snapshot(None), ErrorVerb::Read, &e, "read stored snapshot")
    };
    let decode = |bytes: &[u8]| {
        codec::decode::<StoredSnapshot>(bytes)
            .map_err(|e| io_error(ErrorSubject::Snapshot(None), ErrorVerb::Read, &e, "decode stored snapshot"))
    };
    if let Some(bytes) = backend.get(Tree::Snapshot, KEY_CURRENT).map_err(|e| read_err(&e))? {
        return Ok(Some((decode(&bytes)?, false)));
    }
    match backend.get(Tree::Meta, KEY_LEGACY_SNAPSHOT).map_err(|e| read_err(&e))? {
        Some(bytes) if bytes == MOVED_MARKER => {
            let e = std::io::Error::other("the snapshot tree is empty but the meta tree says the snapshot moved there");
            Err(io_error(ErrorSubject::Snapshot(None), ErrorVerb::Read, &e, "find stored snapshot"))
        }
        Some(bytes) => Ok(Some((decode(&bytes)?, true))),
        None => Ok(None),
    }
}

/// The stored snapshot's meta, read without decoding the snapshot itself.
fn stored_meta<B: Backend>(backend: &B) -> Result<Option<SnapshotMeta>, StorageError> {
    let raw = backend
        .get(Tree::Snapshot, KEY_CURRENT_META)
        .map_err(|e| io_error(ErrorSubject::Snapshot(None), ErrorVerb::Read, &e, "read stored snapshot meta"))?;
    match raw {
        Some(bytes) => codec::decode(&bytes)
            .map(Some)
            .map_err(|e| io_error(ErrorSubject::Snapshot(None), ErrorVerb::Read, &e, "decode stored snapshot meta")),
        None => Ok(load_snapshot(backend)?.map(|(s, _)| s.meta)),
    }
}

impl<B: Backend> RaftSnapshotBuilder<TypeConfig> for StateMachineStore<B> {
    async fn build_snapshot(&mut self) -> Result<Snapshot, StorageError> {
        let started = std::time::Instant::now();
        // Apply waits only while the state is copied: ciphertexts are shared
        // handles (in memory or in the payload files), so the copy is the
        // maps, not the mail. The encode runs on a blocking thread while
        // apply goes on; the copy keeps the payload files it reads alive.
        let (state, applied) = {
            let state = self.read_state();
            (state.clone(), self.lock_applied().clone())
        };
        let paused = started.elapsed();
        let seq = self.snapshot_seq.fetch_add(1, Ordering::Relaxed);
        let snapshot_id = match applied.last_applied {
            Some(l) => format!("{}-{}-{seq}", l.leader_id, l.index),
            None => format!("none-{seq}"),
        };
        let meta = SnapshotMeta {
            last_log_id: applied.last_applied,
            last_membership: applied.membership.clone(),
            snapshot_id,
        };
        let subject = || ErrorSubject::Snapshot(Some(meta.signature()));
        let (data, size) = match &self.files {
            Some(files) => {
                let (snapshots, payloads) = (files.snapshots.clone(), files.payloads.clone());
                let meta_copy = meta.clone();
                let written = blocking(move || {
                    let payload = SnapshotPayloadRef {
                        last_applied: &applied.last_applied,
                        membership: &applied.membership,
                        state: &state,
                    };
                    let (size, opened) = keep_placed(&snapshots, &payloads, &meta_copy, &payload)?;
                    let segments = opened.sources.len();
                    Ok((snapshot_data(&snapshots, opened), size, segments))
                })
                .await;
                let (data, size, segments) =
                    written.map_err(|e| io_error(subject(), ErrorVerb::Write, &e, "write snapshot file"))?;
                self.span.in_scope(|| tracing::debug!(segments, "the snapshot names payload segments"));
                (data, size)
            }
            None => {
                let encoded = blocking(move || {
                    let payload = SnapshotPayloadRef {
                        last_applied: &applied.last_applied,
                        membership: &applied.membership,
                        state: &state,
                    };
                    encode_payload(&payload).map_err(std::io::Error::other)
                })
                .await;
                let data = encoded.map_err(|e| io_error(subject(), ErrorVerb::Write, &e, "encode snapshot"))?;
                self.persist_snapshot(&meta, &data).await?;
                let size = data.len() as u64;
                (SnapshotData::memory(data), size)
            }
        };
        self.stats.snapshot_built(size as usize, started.elapsed(), paused);
        self.span.in_scope(|| {
            tracing::info!(snapshot_id = %meta.snapshot_id, bytes = size, paused_us = paused.as_micros() as u64, "built snapshot")
        });
        Ok(Snapshot { meta, snapshot: Box::new(data) })
    }
}

impl<B: Backend> RaftStateMachine<TypeConfig> for StateMachineStore<B> {
    type SnapshotBuilder = Self;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        let applied = self.lock_applied();
        Ok((applied.last_applied, applied.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Vec<Outcome>>, StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut entries: Vec<Entry> = entries.into_iter().collect();
        if let Some(files) = &self.files {
            files.store_payloads(&mut entries);
        }
        let mut replies = Vec::new();
        {
            let mut state = self.write_state();
            let mut applied = self.lock_applied();
            for entry in entries {
                if let EntryPayload::Normal(batch) = &entry.payload {
                    refuse_unknown_rules(batch, entry.log_id)?;
                }
                applied.last_applied = Some(entry.log_id);
                let reply = match entry.payload {
                    EntryPayload::Blank => Vec::new(),
                    EntryPayload::Normal(batch) => state.apply_batch(&batch),
                    EntryPayload::Membership(m) => {
                        applied.membership = StoredMembership::new(Some(entry.log_id), m);
                        Vec::new()
                    }
                };
                replies.push(reply);
            }
            // Published before the state lock is released, so whoever holds
            // the read lock sees the index that matches the state (backups).
            self.applied_tx.send_replace(applied.last_applied.map_or(0, |l| l.index));
        }
        Ok(replies)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<SnapshotData>, StorageError> {
        let Some(files) = &self.files else { return Ok(Box::new(SnapshotData::memory(Vec::new()))) };
        let fail =
            |e: &std::io::Error| io_error(ErrorSubject::Snapshot(None), ErrorVerb::Write, e, "begin a snapshot file");
        let pending = files.snapshots.begin_receive().map_err(|e| fail(&e))?;
        let file = tokio::fs::File::create(&pending.data).await.map_err(|e| fail(&e))?;
        Ok(Box::new(SnapshotData::File(file, pending.data)))
    }

    async fn install_snapshot(&mut self, meta: &SnapshotMeta, snapshot: Box<SnapshotData>) -> Result<(), StorageError> {
        let subject = || ErrorSubject::Snapshot(Some(meta.signature()));
        let (payload, size) = match &self.files {
            Some(files) => {
                let fail = |e: &std::io::Error| io_error(subject(), ErrorVerb::Read, e, "install received snapshot");
                let pending = received_file(&files.snapshots, *snapshot).await.map_err(|e| fail(&e))?;
                let (snapshots, payloads, meta_copy) = (files.snapshots.clone(), files.payloads.clone(), meta.clone());
                let installed = blocking(move || {
                    let decoded = read_payload_file(&pending.data, &payloads).and_then(|payload| {
                        check_covers(&payload, &meta_copy)?;
                        Ok((payload, std::fs::metadata(&pending.data)?.len()))
                    });
                    // Its ciphertexts are in the payload files now: kept as
                    // a placed snapshot, the received bytes are not kept twice.
                    snapshots.discard(pending);
                    let (payload, size) = decoded?;
                    keep_placed(&snapshots, &payloads, &meta_copy, &payload.as_ref())?;
                    Ok((payload, size))
                })
                .await;
                installed.map_err(|e| fail(&e))?
            }
            None => {
                let data = match *snapshot {
                    SnapshotData::Memory(c) => c.into_inner(),
                    SnapshotData::File(..) | SnapshotData::Deferred(_) => {
                        let e = std::io::Error::other("snapshot files need the on-disk layout");
                        return Err(io_error(subject(), ErrorVerb::Read, &e, "install received snapshot"));
                    }
                };
                let payload = decode_payload(&data)
                    .map_err(|e| io_error(subject(), ErrorVerb::Read, &e, "decode received snapshot"))?;
                check_covers(&payload, meta)
                    .map_err(|e| io_error(subject(), ErrorVerb::Read, &e, "check received snapshot"))?;
                self.persist_snapshot(meta, &data).await?;
                (payload, data.len() as u64)
            }
        };
        let index = payload.last_applied.map_or(0, |l| l.index);
        // Dropped after the lock: its last payload handles unlink files.
        let _replaced = {
            let mut state = self.write_state();
            let mut applied = self.lock_applied();
            let replaced = std::mem::replace(&mut *state, payload.state);
            *applied = Applied { last_applied: payload.last_applied, membership: payload.membership };
            self.applied_tx.send_replace(index);
            replaced
        };
        self.stats.snapshot_installed(size as usize, index);
        self.span.in_scope(|| tracing::info!(snapshot_id = %meta.snapshot_id, bytes = size, "installed snapshot"));
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, StorageError> {
        let Some(files) = &self.files else {
            return Ok(load_snapshot(&self.backend)?.map(|(stored, _)| Snapshot {
                meta: stored.meta,
                snapshot: Box::new(SnapshotData::memory(stored.data)),
            }));
        };
        let fail = |e: &std::io::Error| {
            io_error(ErrorSubject::Snapshot(None), ErrorVerb::Read, e, "open the current snapshot")
        };
        let Some(opened) = files.snapshots.open_current().map_err(|e| fail(&e))? else { return Ok(None) };
        let meta = opened.meta.clone();
        Ok(Some(Snapshot { meta, snapshot: Box::new(snapshot_data(&files.snapshots, opened)) }))
    }
}
