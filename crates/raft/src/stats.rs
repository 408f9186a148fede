//! [`StorageStats`]: what the two stores did, for the node's metrics and
//! status. One value per node, shared by its [`LogStore`](crate::LogStore)
//! and [`StateMachineStore`](crate::StateMachineStore) (and their clones).
//!
//! openraft 0.9's `RaftMetrics` has no commit index and counts neither
//! snapshots nor log compactions, but it tells the stores about each: the
//! committed id through `save_committed`, snapshots through
//! `build_snapshot`/`install_snapshot`, compactions through `purge`. So the
//! stores count them here. Nothing here is persisted: counters start at zero
//! with the process, as Prometheus counters do.

use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug, Default)]
pub struct StorageStats {
    committed_index: AtomicU64,
    snapshots_built: AtomicU64,
    snapshots_installed: AtomicU64,
    last_snapshot_bytes: AtomicU64,
    last_snapshot_build_micros: AtomicU64,
    last_snapshot_pause_micros: AtomicU64,
    log_compactions: AtomicU64,
    log_entries_purged: AtomicU64,
    pub(crate) payload_bytes: AtomicU64,
    pub(crate) payload_segments: AtomicU64,
    pub(crate) payload_write_errors: AtomicU64,
}

/// A copy of the counters at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StorageStatsSnapshot {
    /// Highest log index known committed (by quorum) on this node; 0 before any.
    pub committed_index: u64,
    /// Snapshots this node built from its own state since it started.
    pub snapshots_built: u64,
    /// Snapshots this node received from a leader and installed since it started.
    pub snapshots_installed: u64,
    /// Size of the last snapshot built or installed (bytes of encoded state).
    pub last_snapshot_bytes: u64,
    /// How long building the last snapshot took (encode + fsync), microseconds.
    pub last_snapshot_build_micros: u64,
    /// How long the last build held apply off (copying the state under its
    /// lock; the encode runs after), microseconds.
    pub last_snapshot_pause_micros: u64,
    /// Log purges since the process started: compaction after a snapshot
    /// built here, or the log dropped up to a snapshot installed from the leader.
    pub log_compactions: u64,
    /// Log entries removed by those purges (only entries this node held).
    pub log_entries_purged: u64,
    /// Bytes in the payload files (queued ciphertexts, and records not yet
    /// reclaimed with their segment).
    pub payload_bytes: u64,
    /// Payload segment files on disk.
    pub payload_segments: u64,
    /// Payload writes that failed (those ciphertexts stayed in memory).
    pub payload_write_errors: u64,
}

impl StorageStats {
    pub fn snapshot(&self) -> StorageStatsSnapshot {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        StorageStatsSnapshot {
            committed_index: get(&self.committed_index),
            snapshots_built: get(&self.snapshots_built),
            snapshots_installed: get(&self.snapshots_installed),
            last_snapshot_bytes: get(&self.last_snapshot_bytes),
            last_snapshot_build_micros: get(&self.last_snapshot_build_micros),
            last_snapshot_pause_micros: get(&self.last_snapshot_pause_micros),
            log_compactions: get(&self.log_compactions),
            log_entries_purged: get(&self.log_entries_purged),
            payload_bytes: get(&self.payload_bytes),
            payload_segments: get(&self.payload_segments),
            payload_write_errors: get(&self.payload_write_errors),
        }
    }

    pub(crate) fn committed(&self, index: u64) {
        self.committed_index.fetch_max(index, Ordering::Relaxed);
    }

    pub(crate) fn snapshot_built(&self, bytes: usize, took: std::time::Duration, paused: std::time::Duration) {
        self.last_snapshot_bytes.store(bytes as u64, Ordering::Relaxed);
        self.last_snapshot_build_micros.store(took.as_micros() as u64, Ordering::Relaxed);
        self.last_snapshot_pause_micros.store(paused.as_micros() as u64, Ordering::Relaxed);
        self.snapshots_built.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn snapshot_installed(&self, bytes: usize, last_index: u64) {
        self.last_snapshot_bytes.store(bytes as u64, Ordering::Relaxed);
        self.snapshots_installed.fetch_add(1, Ordering::Relaxed);
        // What a snapshot covers is committed.
        self.committed(last_index);
    }

    pub(crate) fn purged(&self, entries: u64) {
        self.log_compactions.fetch_add(1, Ordering::Relaxed);
        self.log_entries_purged.fetch_add(entries, Ordering::Relaxed);
    }
}
