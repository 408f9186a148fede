//! [`StateMachineStore`]: the applied [`router_core::State`], held in memory,
//! and its snapshots, persisted in the [`Backend`].
//!
//! ```text
//!  committed entries ──> apply ──> State::apply_batch ──> Vec<Outcome> (the client's answer)
//!                          │
//!                          └──> applied watch (last applied index)
//!  build_snapshot: (last_applied, membership, State) ──> bincode ──> tree "snapshot" + fsync
//!  open():         tree "snapshot" ──> State, last_applied, membership
//! ```
//!
//! Snapshots live in their own tree (key `current`, plus a small copy of the
//! meta under `current-meta` for the "is the stored one newer?" check). Builds
//! before that kept them under `snapshot` in the meta tree; `open` moves such a
//! snapshot over and leaves [`MOVED_MARKER`] in its old place.
//!
//! The state itself is not written on every apply. After a restart it is
//! rebuilt from the latest snapshot, and openraft re-applies the log entries
//! after it up to the saved committed id (see `LogStore::save_committed`).
//! Openraft purges log entries only once a snapshot covering them is stored,
//! so nothing is lost between the two.
//!
//! Locking: `state` is a `std::sync::RwLock`, held for writing only while a
//! batch of entries is applied or a snapshot installed, and never across an
//! `.await`. `applied` (last applied id and membership) changes only while the
//! state write lock is held, so whoever holds the state lock (read or write)
//! sees the two consistently. Lock order: `state`, then `applied`.

use std::io::Cursor;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

use openraft::storage::RaftStateMachine;
use openraft::{EntryPayload, ErrorSubject, ErrorVerb, OptionalSend, RaftSnapshotBuilder};
use router_core::{Federation, Outcome, State, StateExtras};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::backend::{Backend, Tree};
use crate::codec::{self, io_error};
use crate::types::{Entry, LogId, Snapshot, SnapshotMeta, StorageError, StoredMembership, TypeConfig};

/// Where builds before the snapshot tree kept the snapshot (meta tree).
const KEY_LEGACY_SNAPSHOT: &[u8] = b"snapshot";
const KEY_CURRENT: &[u8] = b"current";
const KEY_CURRENT_META: &[u8] = b"current-meta";
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

/// The latest snapshot as stored in the meta tree.
#[derive(Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta,
    data: Vec<u8>,
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
}

impl<B: Backend> std::fmt::Debug for StateMachineStore<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateMachineStore").field("applied", &*self.lock_applied()).finish_non_exhaustive()
    }
}

/// The state, and the section after it: federation peers (format 2), or
/// everything the serde encoding of the state leaves out (format 3).
fn decode_payload(data: &[u8]) -> Result<SnapshotPayload, codec::FormatError> {
    if codec::version_of(data)? >= codec::CLUSTER_VERSION_FORMAT {
        let (mut payload, extras) = codec::decode_with_section::<SnapshotPayload, StateExtras>(data)?;
        if let Some(extras) = extras {
            payload.state.set_extras(extras);
        }
        return Ok(payload);
    }
    let (mut payload, federation) = codec::decode_with_section::<SnapshotPayload, Federation>(data)?;
    if let Some(federation) = federation {
        payload.state.federation = federation;
    }
    Ok(payload)
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

/// A snapshot in the oldest format that holds `state`.
fn encode_payload(payload: &SnapshotPayloadRef<'_>) -> Result<Vec<u8>, codec::FormatError> {
    let state = payload.state;
    if let Some(extras) = state.extras() {
        return codec::encode_with_section(codec::CLUSTER_VERSION_FORMAT, payload, Some(&extras));
    }
    let federation = (!state.federation.is_empty()).then_some(&state.federation);
    codec::encode_with_section(codec::FEDERATION_FORMAT, payload, federation)
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
        let index = applied.last_applied.map_or(0, |l| l.index);
        Ok(StateMachineStore {
            backend,
            state: Arc::new(RwLock::new(state)),
            applied: Arc::new(Mutex::new(applied)),
            applied_tx: Arc::new(watch::Sender::new(index)),
            snapshot_write: Arc::new(tokio::sync::Mutex::new(())),
            snapshot_seq: Arc::new(AtomicU64::new(0)),
            stats,
            span: tracing::Span::current(),
        })
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
fn load_snapshot<B: Backend>(backend: &B) -> Result<Option<(StoredSnapshot, bool)>, StorageError> {
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
        // Apply waits only while the state is copied: mailbox payloads are
        // shared `Bytes`, so the copy is the maps, not the mail. The encode
        // runs on a blocking thread while apply goes on.
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
        let encoded = tokio::task::spawn_blocking(move || {
            let payload = SnapshotPayloadRef {
                last_applied: &applied.last_applied,
                membership: &applied.membership,
                state: &state,
            };
            encode_payload(&payload).map_err(std::io::Error::other)
        })
        .await
        .map_err(|e| std::io::Error::other(format!("snapshot encode task: {e}")))
        .and_then(|r| r);
        let data = encoded.map_err(|e| {
            io_error(ErrorSubject::Snapshot(Some(meta.signature())), ErrorVerb::Write, &e, "encode snapshot")
        })?;
        self.persist_snapshot(&meta, &data).await?;
        self.stats.snapshot_built(data.len(), started.elapsed(), paused);
        self.span.in_scope(|| {
            tracing::info!(snapshot_id = %meta.snapshot_id, bytes = data.len(), paused_us = paused.as_micros() as u64, "built snapshot")
        });
        Ok(Snapshot { meta, snapshot: Box::new(Cursor::new(data)) })
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

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let subject = || ErrorSubject::Snapshot(Some(meta.signature()));
        let data = snapshot.into_inner();
        let payload =
            decode_payload(&data).map_err(|e| io_error(subject(), ErrorVerb::Read, &e, "decode received snapshot"))?;
        if payload.last_applied != meta.last_log_id || payload.membership != meta.last_membership {
            let e = std::io::Error::other(format!(
                "snapshot data covers {:?} / {:?}, but its meta says {:?} / {:?}",
                payload.last_applied, payload.membership, meta.last_log_id, meta.last_membership
            ));
            return Err(io_error(subject(), ErrorVerb::Read, &e, "check received snapshot"));
        }
        self.persist_snapshot(meta, &data).await?;
        let index = payload.last_applied.map_or(0, |l| l.index);
        {
            let mut state = self.write_state();
            let mut applied = self.lock_applied();
            *state = payload.state;
            *applied = Applied { last_applied: payload.last_applied, membership: payload.membership };
            self.applied_tx.send_replace(index);
        }
        self.stats.snapshot_installed(data.len(), index);
        self.span
            .in_scope(|| tracing::info!(snapshot_id = %meta.snapshot_id, bytes = data.len(), "installed snapshot"));
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, StorageError> {
        Ok(load_snapshot(&self.backend)?
            .map(|(stored, _)| Snapshot { meta: stored.meta, snapshot: Box::new(Cursor::new(stored.data)) }))
    }
}
