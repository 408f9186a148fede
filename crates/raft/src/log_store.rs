//! [`LogStore`]: the raft log, vote and committed id, kept in a [`Backend`]'s
//! trees. The deterministic simulation runs on it (over `MemBackend`, which
//! can lose unsynced writes); a node on disk keeps its log in segment files
//! instead ([`crate::wal`]), and this layout is what older builds left there
//! ([`crate::disk`] moves it).
//!
//! Layout:
//! - tree `log`: key = log index as 8 big-endian bytes (so key order is index
//!   order), value = [`codec`]-encoded [`Entry`];
//! - tree `meta`: `vote`, `committed` and `last_purged`, each a codec-encoded value.
//!
//! Durability: [`append`](RaftLogStorage::append) writes all entries of the
//! call, fsyncs once, then reports them flushed (group commit: openraft hands
//! us every entry that queued up meanwhile in one call). `save_vote` fsyncs
//! before returning (Raft §5.2: a vote must survive a crash). `committed`,
//! `truncate` and `purge` do not fsync: the backend keeps write order, so they
//! become durable with the next append or vote, and losing them is safe
//! (committed is only a hint for re-applying after restart; a lost purge leaves
//! extra entries; a lost truncate means the node restarts with its older log,
//! as if the request that caused it never arrived, and nothing written after
//! it can have been acknowledged since the fsync that acknowledges it would
//! have persisted the truncate too).

use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};

use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{ErrorSubject, ErrorVerb, LogState, OptionalSend, RaftLogId, RaftLogReader};
use serde::Serialize;
use serde::de::DeserializeOwned;

use std::sync::Arc;

use crate::backend::{Backend, KeyRange, Tree};
use crate::codec::{self, io_error};
use crate::stats::StorageStats;
use crate::types::{Entry, LogId, StorageError, TypeConfig, Vote};

pub(crate) const KEY_VOTE: &[u8] = b"vote";
pub(crate) const KEY_COMMITTED: &[u8] = b"committed";
pub(crate) const KEY_LAST_PURGED: &[u8] = b"last_purged";

fn index_key(index: u64) -> Vec<u8> {
    index.to_be_bytes().to_vec()
}

fn key_range(range: &impl RangeBounds<u64>) -> KeyRange {
    let map = |b: Bound<&u64>| match b {
        Bound::Included(i) => Bound::Included(index_key(*i)),
        Bound::Excluded(i) => Bound::Excluded(index_key(*i)),
        Bound::Unbounded => Bound::Unbounded,
    };
    (map(range.start_bound()), map(range.end_bound()))
}

/// The raft log of one node. Cheap to clone: clones share the backend, and
/// openraft's log readers (replication tasks) are such clones.
#[derive(Clone, Debug)]
pub struct LogStore<B: Backend> {
    backend: B,
    stats: Arc<StorageStats>,
    /// The span current at `open` (the node's): openraft calls the store from
    /// tasks of its own, and our log lines should still say which node.
    span: tracing::Span,
}

impl<B: Backend> LogStore<B> {
    /// Wraps `backend`, checking that what is stored there is readable by
    /// this build (so a too-new format fails at startup, not mid-election).
    /// `stats` is shared with the node's state machine (see [`crate::open`]).
    pub fn open(backend: B, stats: Arc<StorageStats>) -> Result<Self, StorageError> {
        let store = LogStore { backend, stats, span: tracing::Span::current() };
        store.load_meta::<Vote>(KEY_VOTE, ErrorSubject::Vote)?;
        if let Some(Some(committed)) = store.load_meta::<Option<LogId>>(KEY_COMMITTED, ErrorSubject::Store)? {
            store.stats.committed(committed.index);
        }
        store.load_meta::<LogId>(KEY_LAST_PURGED, ErrorSubject::Logs)?;
        store.last_entry_id()?;
        Ok(store)
    }

    fn load_meta<T: DeserializeOwned>(
        &self,
        key: &[u8],
        subject: ErrorSubject<u64>,
    ) -> Result<Option<T>, StorageError> {
        let name = String::from_utf8_lossy(key);
        let raw = self
            .backend
            .get(Tree::Meta, key)
            .map_err(|e| io_error(subject.clone(), ErrorVerb::Read, &e, format!("read {name}")))?;
        raw.map(|bytes| codec::decode(&bytes))
            .transpose()
            .map_err(|e| io_error(subject, ErrorVerb::Read, &e, format!("decode {name}")))
    }

    fn store_meta<T: Serialize>(&self, key: &[u8], value: &T, subject: ErrorSubject<u64>) -> Result<(), StorageError> {
        let name = String::from_utf8_lossy(key);
        let bytes = codec::encode(value)
            .map_err(|e| io_error(subject.clone(), ErrorVerb::Write, &e, format!("encode {name}")))?;
        self.backend
            .insert(Tree::Meta, key, bytes)
            .map_err(|e| io_error(subject, ErrorVerb::Write, &e, format!("write {name}")))
    }

    fn decode_entry(key: &[u8], value: &[u8]) -> Result<Entry, StorageError> {
        codec::decode(value).map_err(|e| {
            let index = <[u8; 8]>::try_from(key).map(u64::from_be_bytes).ok();
            io_error(ErrorSubject::Logs, ErrorVerb::Read, &e, format!("decode log entry at index {index:?}"))
        })
    }

    fn last_entry_id(&self) -> Result<Option<LogId>, StorageError> {
        let last = self
            .backend
            .last(Tree::Log)
            .map_err(|e| io_error(ErrorSubject::Logs, ErrorVerb::Read, &e, "read last log entry"))?;
        match last {
            Some((k, v)) => Ok(Some(*Self::decode_entry(&k, &v)?.get_log_id())),
            None => Ok(None),
        }
    }
}

impl<B: Backend> RaftLogReader<TypeConfig> for LogStore<B> {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let pairs = self
            .backend
            .range(Tree::Log, key_range(&range))
            .map_err(|e| io_error(ErrorSubject::Logs, ErrorVerb::Read, &e, format!("read log entries {range:?}")))?;
        pairs.iter().map(|(k, v)| Self::decode_entry(k, v)).collect()
    }
}

impl<B: Backend> RaftLogStorage<TypeConfig> for LogStore<B> {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let last_purged_log_id = self.load_meta::<LogId>(KEY_LAST_PURGED, ErrorSubject::Logs)?;
        let last_log_id = self.last_entry_id()?.or(last_purged_log_id);
        Ok(LogState { last_purged_log_id, last_log_id })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        self.store_meta(KEY_VOTE, vote, ErrorSubject::Vote)?;
        self.backend.flush().await.map_err(|e| io_error(ErrorSubject::Vote, ErrorVerb::Write, &e, "fsync vote"))
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        self.load_meta(KEY_VOTE, ErrorSubject::Vote)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        self.store_meta(KEY_COMMITTED, &committed, ErrorSubject::Store)?;
        if let Some(c) = committed {
            self.stats.committed(c.index);
        }
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(self.load_meta::<Option<LogId>>(KEY_COMMITTED, ErrorSubject::Store)?.flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        for entry in entries {
            let log_id = *entry.get_log_id();
            let bytes = codec::encode_at(codec::entry_format(&entry), &entry)
                .map_err(|e| io_error(ErrorSubject::Log(log_id), ErrorVerb::Write, &e, "encode log entry"))?;
            self.backend
                .insert(Tree::Log, &index_key(log_id.index), bytes)
                .map_err(|e| io_error(ErrorSubject::Log(log_id), ErrorVerb::Write, &e, "write log entry"))?;
        }
        match self.backend.flush().await {
            Ok(()) => {
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                callback.log_io_completed(Err(io::Error::other(e.to_string())));
                Err(io_error(ErrorSubject::Logs, ErrorVerb::Write, &e, "fsync appended log entries"))
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.span.in_scope(|| tracing::debug!(%log_id, "truncate log"));
        self.backend
            .remove_range(Tree::Log, key_range(&(log_id.index..)))
            .map_err(|e| io_error(ErrorSubject::Logs, ErrorVerb::Delete, &e, format!("truncate log from {log_id}")))
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.span.in_scope(|| tracing::debug!(%log_id, "purge log"));
        let previous = self.load_meta::<LogId>(KEY_LAST_PURGED, ErrorSubject::Logs)?.map(|l| l.index);
        // After a snapshot install the purge point may lie past the log's end:
        // count only entries this node held.
        let last_held = self.last_entry_id()?.map(|l| l.index);
        // Record the purge point first: if the deletion is lost, the entries
        // are merely still there; never the other way round (a hole).
        self.store_meta(KEY_LAST_PURGED, &log_id, ErrorSubject::Logs)?;
        self.backend
            .remove_range(Tree::Log, key_range(&(..=log_id.index)))
            .map_err(|e| io_error(ErrorSubject::Logs, ErrorVerb::Delete, &e, format!("purge log up to {log_id}")))?;
        // Index 0 is a real entry (openraft's first log id), so "nothing purged yet" is None.
        let entries = match (last_held, previous) {
            (None, _) => 0,
            (Some(last), Some(prev)) => log_id.index.min(last).saturating_sub(prev),
            (Some(last), None) => log_id.index.min(last) + 1,
        };
        self.stats.purged(entries);
        Ok(())
    }
}
