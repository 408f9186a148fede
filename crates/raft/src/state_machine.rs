//! [`StateMachineStore`]: the applied [`router_core::State`], held in memory,
//! and its snapshots, persisted in the [`Backend`].
//!
//! ```text
//!  committed entries ──> apply ──> State::apply_batch ──> Vec<Outcome> (the client's answer)
//!                          │
//!                          └──> applied watch (last applied index)
//!  build_snapshot: (last_applied, membership, State) ──> bincode ──> meta tree "snapshot" + fsync
//!  open():         meta tree "snapshot" ──> State, last_applied, membership
//! ```
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
use router_core::{Outcome, State};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::backend::{Backend, Tree};
use crate::codec::{self, io_error};
use crate::types::{Entry, LogId, Snapshot, SnapshotMeta, StorageError, StoredMembership, TypeConfig};

const KEY_SNAPSHOT: &[u8] = b"snapshot";

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
}

impl<B: Backend> std::fmt::Debug for StateMachineStore<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateMachineStore").field("applied", &*self.lock_applied()).finish_non_exhaustive()
    }
}

fn decode_payload(data: &[u8]) -> Result<SnapshotPayload, codec::FormatError> {
    codec::decode(data)
}

impl<B: Backend> StateMachineStore<B> {
    /// Opens the state machine on `backend`, restoring state, last applied id
    /// and membership from the latest stored snapshot (empty state if none).
    pub fn open(backend: B) -> Result<Self, StorageError> {
        let (state, applied) = match load_snapshot(&backend)? {
            Some(stored) => {
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
        })
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
        if let Some(stored) = load_snapshot(&self.backend)?
            && stored.meta.last_log_id > meta.last_log_id
        {
            tracing::debug!(
                stored = ?stored.meta.last_log_id,
                new = ?meta.last_log_id,
                "keeping the newer stored snapshot"
            );
            return Ok(());
        }
        let bytes = codec::encode(&StoredSnapshot { meta: meta.clone(), data: data.to_vec() })
            .map_err(|e| io_error(subject(), ErrorVerb::Write, &e, "encode snapshot"))?;
        self.backend
            .insert(Tree::Meta, KEY_SNAPSHOT, bytes)
            .map_err(|e| io_error(subject(), ErrorVerb::Write, &e, "write snapshot"))?;
        self.backend.flush().await.map_err(|e| io_error(subject(), ErrorVerb::Write, &e, "fsync snapshot"))
    }
}

fn load_snapshot<B: Backend>(backend: &B) -> Result<Option<StoredSnapshot>, StorageError> {
    let raw = backend
        .get(Tree::Meta, KEY_SNAPSHOT)
        .map_err(|e| io_error(ErrorSubject::Snapshot(None), ErrorVerb::Read, &e, "read stored snapshot"))?;
    raw.map(|bytes| codec::decode::<StoredSnapshot>(&bytes))
        .transpose()
        .map_err(|e| io_error(ErrorSubject::Snapshot(None), ErrorVerb::Read, &e, "decode stored snapshot"))
}

impl<B: Backend> RaftSnapshotBuilder<TypeConfig> for StateMachineStore<B> {
    async fn build_snapshot(&mut self) -> Result<Snapshot, StorageError> {
        let (meta, data) = {
            let state = self.read_state();
            let applied = self.lock_applied().clone();
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
            let payload = SnapshotPayloadRef {
                last_applied: &applied.last_applied,
                membership: &applied.membership,
                state: &state,
            };
            let data = codec::encode(&payload).map_err(|e| {
                io_error(ErrorSubject::Snapshot(Some(meta.signature())), ErrorVerb::Write, &e, "encode snapshot")
            })?;
            (meta, data)
        };
        self.persist_snapshot(&meta, &data).await?;
        tracing::info!(snapshot_id = %meta.snapshot_id, bytes = data.len(), "built snapshot");
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
        let index = {
            let mut state = self.write_state();
            let mut applied = self.lock_applied();
            for entry in entries {
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
            applied.last_applied.map_or(0, |l| l.index)
        };
        self.applied_tx.send_replace(index);
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
        let index = {
            let mut state = self.write_state();
            let mut applied = self.lock_applied();
            *state = payload.state;
            *applied = Applied { last_applied: payload.last_applied, membership: payload.membership };
            applied.last_applied.map_or(0, |l| l.index)
        };
        self.applied_tx.send_replace(index);
        tracing::info!(snapshot_id = %meta.snapshot_id, "installed snapshot");
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, StorageError> {
        Ok(load_snapshot(&self.backend)?
            .map(|stored| Snapshot { meta: stored.meta, snapshot: Box::new(Cursor::new(stored.data)) }))
    }
}
