//! A node's disk for one incarnation of the node: the shared [`MemBackend`]
//! behind a fence. A simulated crash bumps the fence and drops the writes that
//! were not flushed; the crashed incarnation's tasks may still run until they
//! notice the shutdown, and the fence makes their late writes vanish, as a dead
//! process's would.

use router_raft::backend::KeyRange;
use router_raft::{Backend, BackendError, MemBackend, Tree};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Clone, Debug)]
pub struct FencedDisk {
    disk: MemBackend,
    fence: Arc<AtomicU64>,
    incarnation: u64,
    lies: bool,
}

/// One node's physical disk across its incarnations.
#[derive(Clone, Debug, Default)]
pub struct Disk {
    disk: MemBackend,
    fence: Arc<AtomicU64>,
    /// A broken disk whose flush does nothing (fsync that lies): only for
    /// checking that the checks catch what it causes.
    lies: bool,
}

impl Disk {
    /// A new empty disk; `lies` makes its flush a no-op (see the field).
    pub fn new(lies: bool) -> Disk {
        Disk { lies, ..Disk::default() }
    }

    /// The disk as the next incarnation sees it.
    pub fn mount(&self) -> FencedDisk {
        FencedDisk {
            disk: self.disk.clone(),
            fence: self.fence.clone(),
            incarnation: self.fence.load(Ordering::SeqCst),
            lies: self.lies,
        }
    }

    /// Power cut: the running incarnation can write no more, and what it had
    /// not flushed is lost, except the first `keep` pending writes (a device
    /// that persisted a prefix of its queue).
    pub fn crash(&self, keep: usize) -> usize {
        self.fence.fetch_add(1, Ordering::SeqCst);
        let lost = self.disk.pending_writes().saturating_sub(keep);
        self.disk.crash_keeping(keep);
        lost
    }

    pub fn pending_writes(&self) -> usize {
        self.disk.pending_writes()
    }
}

impl FencedDisk {
    fn dead(&self) -> bool {
        self.fence.load(Ordering::SeqCst) != self.incarnation
    }
}

impl Backend for FencedDisk {
    fn get(&self, tree: Tree, key: &[u8]) -> Result<Option<Vec<u8>>, BackendError> {
        self.disk.get(tree, key)
    }
    fn insert(&self, tree: Tree, key: &[u8], value: Vec<u8>) -> Result<(), BackendError> {
        if self.dead() { Ok(()) } else { self.disk.insert(tree, key, value) }
    }
    fn remove(&self, tree: Tree, key: &[u8]) -> Result<(), BackendError> {
        if self.dead() { Ok(()) } else { self.disk.remove(tree, key) }
    }
    fn remove_range(&self, tree: Tree, range: KeyRange) -> Result<(), BackendError> {
        if self.dead() { Ok(()) } else { self.disk.remove_range(tree, range) }
    }
    fn range(&self, tree: Tree, range: KeyRange) -> Result<Vec<(Vec<u8>, Vec<u8>)>, BackendError> {
        self.disk.range(tree, range)
    }
    fn last(&self, tree: Tree) -> Result<Option<(Vec<u8>, Vec<u8>)>, BackendError> {
        self.disk.last(tree)
    }
    async fn flush(&self) -> Result<(), BackendError> {
        if self.dead() || self.lies { Ok(()) } else { self.disk.flush().await }
    }
}
