//! The one storage fault `routerd` can be built to inject on purpose
//! (router-node's `mutations` feature, for the checker's own test): the
//! Raft log skips its fdatasync, so a power cut loses acknowledged entries.
//! In a build without the feature, [`skips_fsync`] is constant false.

use std::sync::atomic::{AtomicBool, Ordering};

static SKIP_FSYNC: AtomicBool = AtomicBool::new(false);

/// From now on the log's appends are not synced (with the feature only).
pub fn skip_fsync() {
    SKIP_FSYNC.store(cfg!(feature = "mutations"), Ordering::SeqCst);
}

pub(crate) fn skips_fsync() -> bool {
    cfg!(feature = "mutations") && SKIP_FSYNC.load(Ordering::Relaxed)
}
