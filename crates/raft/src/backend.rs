//! The storage backend: a few named, ordered byte trees plus a durability
//! barrier ([`Backend::flush`]).
//!
//! Two implementations:
//! - [`SledBackend`]: on disk, one sled database per node; `flush` is sled's
//!   flush followed by an fdatasync of its files (`router_sled_durable`
//!   says why sled's own flush is not enough).
//! - [`MemBackend`]: in memory, for tests and the deterministic simulation. It
//!   keeps what was flushed apart from what was only written, so a simulated
//!   power cut ([`MemBackend::crash`]) loses exactly the unsynced writes.
//!
//! Writes made before a `flush` are durable once it returns. Both backends
//! also keep write order: after a crash, what survives is a prefix of the
//! writes (sled's log is sequential; `MemBackend` replays a prefix of its
//! journal). The log store relies on this for purge and truncate, which do not
//! flush on their own.

use std::collections::BTreeMap;
use std::future::Future;
use std::ops::Bound;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use openraft::{ErrorSubject, ErrorVerb};
use router_sled_durable::FileSync;

use crate::codec::io_error;
use crate::types::StorageError;

/// A key range, as both backends take it.
pub type KeyRange = (Bound<Vec<u8>>, Bound<Vec<u8>>);

/// A key/value pair read from a tree.
pub type KeyValue = (Vec<u8>, Vec<u8>);

/// The trees the raft storage uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Tree {
    /// Log entries keyed by big-endian index.
    Log,
    /// Vote, committed and purged log ids (small values, rewritten often).
    Meta,
    /// The latest snapshot, alone: sled rewrites a whole tree node when it
    /// consolidates one, so a snapshot sharing the meta tree was rewritten
    /// every few commits (a 15 MB snapshot made small commits take 70 ms).
    Snapshot,
}

impl Tree {
    pub const ALL: [Tree; 3] = [Tree::Log, Tree::Meta, Tree::Snapshot];

    pub fn name(self) -> &'static str {
        match self {
            Tree::Log => "log",
            Tree::Meta => "meta",
            Tree::Snapshot => "snapshot",
        }
    }
}

/// The backend failed (disk error, corrupt database).
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("sled: {0}")]
    Sled(#[from] sled::Error),
    #[error("fsync: {0}")]
    Fsync(#[from] std::io::Error),
}

/// Ordered byte trees with a durability barrier.
///
/// All methods take `&self`: a backend is a cheap handle (`Clone`) shared by
/// the log store, its readers and the state machine. Reads see every write
/// made before them, flushed or not.
pub trait Backend: Clone + Send + Sync + 'static {
    fn get(&self, tree: Tree, key: &[u8]) -> Result<Option<Vec<u8>>, BackendError>;
    fn insert(&self, tree: Tree, key: &[u8], value: Vec<u8>) -> Result<(), BackendError>;
    fn remove(&self, tree: Tree, key: &[u8]) -> Result<(), BackendError>;
    /// Removes every key in `range`, as one atomic write.
    fn remove_range(&self, tree: Tree, range: KeyRange) -> Result<(), BackendError>;
    /// Every pair in `range`, in ascending key order.
    fn range(&self, tree: Tree, range: KeyRange) -> Result<Vec<KeyValue>, BackendError>;
    /// The pair with the greatest key, if the tree is not empty.
    fn last(&self, tree: Tree) -> Result<Option<KeyValue>, BackendError>;
    /// Makes every write made so far durable (fsync). Returns only once it is.
    fn flush(&self) -> impl Future<Output = Result<(), BackendError>> + Send;
}

/// A sled database on disk. `flush` makes sled's log (all trees) and its
/// blob files durable.
#[derive(Clone, Debug)]
pub struct SledBackend {
    db: sled::Db,
    files: Arc<FileSync>,
    log: sled::Tree,
    meta: sled::Tree,
    snapshot: sled::Tree,
}

impl SledBackend {
    /// Opens (or creates) the database in `dir`.
    pub fn open(dir: &Path) -> Result<Self, StorageError> {
        let fail = |e: &sled::Error, what: &str| {
            io_error(ErrorSubject::Store, ErrorVerb::Read, e, format!("{what} in {}", dir.display()))
        };
        // No background flusher: every append already flushes (group commit),
        // and sled's timer flush (every 500 ms by default) made the explicit
        // flush that raced it wait, a ~40 ms stall about twice a second.
        // A handle dropped a moment ago in this process (a restart in a
        // test, an older build's data being moved) may still hold the lock.
        let open = || sled::Config::new().path(dir).flush_every_ms(None).open();
        let db = router_sled_durable::retry_while_locked(open, |e| match e {
            sled::Error::Io(e) => Some(e),
            _ => None,
        })
        .map_err(|e| fail(&e, "open sled database"))?;
        let log = db.open_tree(Tree::Log.name()).map_err(|e| fail(&e, "open sled tree \"log\""))?;
        let meta = db.open_tree(Tree::Meta.name()).map_err(|e| fail(&e, "open sled tree \"meta\""))?;
        let snapshot = db.open_tree(Tree::Snapshot.name()).map_err(|e| fail(&e, "open sled tree \"snapshot\""))?;
        let files = FileSync::open(dir).map_err(|e| fail(&sled::Error::Io(e), "sync sled's files"))?;
        Ok(SledBackend { db, files: Arc::new(files), log, meta, snapshot })
    }

    fn tree(&self, tree: Tree) -> &sled::Tree {
        match tree {
            Tree::Log => &self.log,
            Tree::Meta => &self.meta,
            Tree::Snapshot => &self.snapshot,
        }
    }
}

/// True if no key can be in `range`. `BTreeMap::range` panics on such ranges
/// (start after end, or equal and both excluded), so both backends check first.
fn is_empty_range(range: &KeyRange) -> bool {
    use Bound::{Excluded, Included};
    match range {
        (Included(s), Included(e)) => s > e,
        (Included(s), Excluded(e)) | (Excluded(s), Included(e)) | (Excluded(s), Excluded(e)) => s >= e,
        _ => false,
    }
}

fn pair((k, v): (sled::IVec, sled::IVec)) -> KeyValue {
    (k.to_vec(), v.to_vec())
}

impl Backend for SledBackend {
    fn get(&self, tree: Tree, key: &[u8]) -> Result<Option<Vec<u8>>, BackendError> {
        Ok(self.tree(tree).get(key)?.map(|v| v.to_vec()))
    }

    fn insert(&self, tree: Tree, key: &[u8], value: Vec<u8>) -> Result<(), BackendError> {
        self.tree(tree).insert(key, value)?;
        Ok(())
    }

    fn remove(&self, tree: Tree, key: &[u8]) -> Result<(), BackendError> {
        self.tree(tree).remove(key)?;
        Ok(())
    }

    fn remove_range(&self, tree: Tree, range: KeyRange) -> Result<(), BackendError> {
        if is_empty_range(&range) {
            return Ok(());
        }
        let t = self.tree(tree);
        let mut batch = sled::Batch::default();
        for kv in t.range::<Vec<u8>, _>(range) {
            batch.remove(kv?.0);
        }
        t.apply_batch(batch)?;
        Ok(())
    }

    fn range(&self, tree: Tree, range: KeyRange) -> Result<Vec<KeyValue>, BackendError> {
        if is_empty_range(&range) {
            return Ok(Vec::new());
        }
        self.tree(tree).range::<Vec<u8>, _>(range).map(|kv| Ok(pair(kv?))).collect()
    }

    fn last(&self, tree: Tree) -> Result<Option<KeyValue>, BackendError> {
        Ok(self.tree(tree).last()?.map(pair))
    }

    async fn flush(&self) -> Result<(), BackendError> {
        // Listed before sled's flush: see `FileSync` for why that is enough.
        let files = Arc::clone(&self.files);
        let listing = tokio::task::spawn_blocking(move || files.before_flush())
            .await
            .map_err(|e| std::io::Error::other(format!("list blobs task: {e}")))??;
        self.db.flush_async().await?;
        let files = Arc::clone(&self.files);
        tokio::task::spawn_blocking(move || files.after_flush(listing))
            .await
            .map_err(|e| std::io::Error::other(format!("fsync task: {e}")))??;
        Ok(())
    }
}

type Trees = BTreeMap<Tree, BTreeMap<Vec<u8>, Vec<u8>>>;

/// One write not yet made durable.
#[derive(Clone, Debug)]
enum Op {
    Insert(Tree, Vec<u8>, Vec<u8>),
    Remove(Tree, Vec<u8>),
    RemoveRange(Tree, KeyRange),
}

impl Op {
    fn apply_to(&self, trees: &mut Trees) {
        match self {
            Op::Insert(t, k, v) => {
                trees.entry(*t).or_default().insert(k.clone(), v.clone());
            }
            Op::Remove(t, k) => {
                if let Some(tree) = trees.get_mut(t) {
                    tree.remove(k);
                }
            }
            Op::RemoveRange(t, range) => {
                if is_empty_range(range) {
                    return;
                }
                if let Some(tree) = trees.get_mut(t) {
                    let doomed: Vec<Vec<u8>> = tree.range(range.clone()).map(|(k, _)| k.clone()).collect();
                    for k in doomed {
                        tree.remove(&k);
                    }
                }
            }
        }
    }
}

#[derive(Debug, Default)]
struct MemDisk {
    /// What readers see: `synced` plus every pending write.
    live: Trees,
    /// What survives a crash: the state at the last `flush`.
    synced: Trees,
    /// Writes since the last `flush`, in order.
    pending: Vec<Op>,
}

/// An in-memory backend whose contents outlive the node using it.
///
/// Clones share one "disk" (an `Arc`), so a clone handed to a restarted node
/// sees what the old one wrote. [`MemBackend::crash`] models a power cut: it
/// throws away every write since the last [`Backend::flush`].
#[derive(Clone, Debug, Default)]
pub struct MemBackend {
    disk: Arc<Mutex<MemDisk>>,
}

impl MemBackend {
    pub fn new() -> Self {
        Self::default()
    }

    /// Loses every write not yet flushed, as a power cut would.
    pub fn crash(&self) {
        self.crash_keeping(0);
    }

    /// Loses unflushed writes except the first `keep` of them: a crash in the
    /// middle of writing, where the device had persisted a prefix.
    pub fn crash_keeping(&self, keep: usize) {
        let mut disk = self.lock();
        let keep = keep.min(disk.pending.len());
        let kept: Vec<Op> = disk.pending.drain(..keep).collect();
        for op in &kept {
            op.apply_to(&mut disk.synced);
        }
        disk.pending.clear();
        disk.live = disk.synced.clone();
    }

    /// How many writes a crash now would lose.
    pub fn pending_writes(&self) -> usize {
        self.lock().pending.len()
    }

    /// No operation on the maps can panic halfway, so a poisoned lock (a panic
    /// elsewhere while holding it) still guards consistent data.
    fn lock(&self) -> MutexGuard<'_, MemDisk> {
        self.disk.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self, op: Op) {
        let mut disk = self.lock();
        op.apply_to(&mut disk.live);
        disk.pending.push(op);
    }
}

impl Backend for MemBackend {
    fn get(&self, tree: Tree, key: &[u8]) -> Result<Option<Vec<u8>>, BackendError> {
        Ok(self.lock().live.get(&tree).and_then(|t| t.get(key)).cloned())
    }

    fn insert(&self, tree: Tree, key: &[u8], value: Vec<u8>) -> Result<(), BackendError> {
        self.write(Op::Insert(tree, key.to_vec(), value));
        Ok(())
    }

    fn remove(&self, tree: Tree, key: &[u8]) -> Result<(), BackendError> {
        self.write(Op::Remove(tree, key.to_vec()));
        Ok(())
    }

    fn remove_range(&self, tree: Tree, range: KeyRange) -> Result<(), BackendError> {
        self.write(Op::RemoveRange(tree, range));
        Ok(())
    }

    fn range(&self, tree: Tree, range: KeyRange) -> Result<Vec<KeyValue>, BackendError> {
        if is_empty_range(&range) {
            return Ok(Vec::new());
        }
        let disk = self.lock();
        Ok(match disk.live.get(&tree) {
            Some(t) => t.range(range).map(|(k, v)| (k.clone(), v.clone())).collect(),
            None => Vec::new(),
        })
    }

    fn last(&self, tree: Tree) -> Result<Option<KeyValue>, BackendError> {
        let disk = self.lock();
        Ok(disk.live.get(&tree).and_then(|t| t.last_key_value()).map(|(k, v)| (k.clone(), v.clone())))
    }

    async fn flush(&self) -> Result<(), BackendError> {
        let mut disk = self.lock();
        let pending = std::mem::take(&mut disk.pending);
        for op in &pending {
            op.apply_to(&mut disk.synced);
        }
        Ok(())
    }
}
