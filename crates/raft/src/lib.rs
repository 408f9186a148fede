//! `router-raft`: the Interop Router's openraft plumbing.
//!
//! # What this crate owns
//! - The openraft [`TypeConfig`]: log entries carry a [`router_core::Batch`],
//!   applying one answers a `Vec<router_core::Outcome>`; members are
//!   addressed by [`NodeAddr`].
//! - Log storage: on disk in segment files ([`WalLogStore`]: one frame and
//!   one fdatasync per append, CRC per frame, torn tail cut, purge by whole
//!   segments); over a [`Backend`]'s trees ([`LogStore`]) for the simulation.
//! - State-machine storage ([`StateMachineStore`]): on disk, queued
//!   ciphertexts in payload files ([`PayloadStore`]) and snapshots as files
//!   streamed in and out ([`SnapshotFiles`]); for the simulation, over a
//!   [`Backend`]'s trees ([`MemBackend`], which can lose its unsynced writes).
//! - A node's layout on disk and the move of an older build's log and
//!   snapshot out of sled ([`open_on_disk`]).
//! - The on-disk format of stored values (a version byte plus bincode, see
//!   [`codec`]).
//!
//! # What it must not depend on
//! No tonic, no gRPC, no `router-node`, no clock: it plugs the pure
//! `router-core` into openraft and persists it. The raft-to-raft transport
//! lives with the server, which owns the network.
//!
//! # Layout
//! - `types`: `NodeId`, `NodeAddr`, `TypeConfig`, openraft aliases.
//! - `backend`: the [`Backend`] trait, [`SledBackend`], [`MemBackend`].
//! - `codec`: versioned value encoding shared by both stores.
//! - `wal`: [`WalLogStore`], the segment-file log a node runs on.
//! - `log_store`: [`LogStore`] (log, vote, committed in backend trees; group-commit append).
//! - `disk`: [`open_on_disk`], the data directory's layout and its migration.
//! - `payloads`: [`PayloadStore`], queued ciphertexts in append-only files.
//! - `snapshot_data`: [`SnapshotData`], a snapshot as openraft moves it (file or memory).
//! - `snapshot_files`: [`SnapshotFiles`], the snapshot directory (build, receive, commit, check).
//! - `state_machine`: [`StateMachineStore`] (apply, snapshots, restore on open).
//! - `stats`: [`StorageStats`], what both stores did (commit index, snapshots, compactions).
//!
//! ```text
//!  openraft ──append/vote──> WalLogStore ──> <data_dir>/raft-log/*.wal
//!      │                  (or LogStore ──> Backend trees "log", "meta": simulation)
//!      └──apply/snapshot──> StateMachineStore ──> <data_dir>/payloads/*.seg, <data_dir>/snapshots/<n>/
//!                              │               (or Backend tree "snapshot", in memory: simulation)
//!                              └──> Arc<RwLock<State>> + applied watch ──> readers (router-node)
//! ```

// openraft's `StorageError` is what its storage traits return, and it is
// large; boxing it only at our own boundaries would mean converting back and
// forth on every call.
#![allow(clippy::result_large_err)]

pub mod backend;
pub mod codec;
pub mod disk;
pub mod log_store;
pub mod mutation;
pub mod payloads;
pub mod snapshot_data;
pub mod snapshot_files;
pub mod state_machine;
pub mod stats;
pub mod types;
pub mod wal;

pub use backend::{Backend, BackendError, MemBackend, SledBackend, Tree};
pub use codec::{
    BASE_FORMAT, CLUSTER_VERSION_FORMAT, FEDERATION_FORMAT, FORMAT_VERSION, FormatError, INCARNATION_FORMAT,
    PARTED_RESTORE_FORMAT, SENDER_WINDOWS_FORMAT, commands_format, entry_format,
};
pub use disk::open_on_disk;
pub use log_store::LogStore;
pub use payloads::PayloadStore;
pub use snapshot_data::SnapshotData;
pub use snapshot_files::SnapshotFiles;
pub use state_machine::{StateMachineStore, decode_state, encode_state};
pub use stats::{StorageStats, StorageStatsSnapshot};
pub use types::{
    Entry, LogId, Membership, NodeAddr, NodeId, Raft, Snapshot, SnapshotMeta, StorageError, StoredMembership,
    TypeConfig, Vote,
};
pub use wal::WalLogStore;

/// Opens the log and the state machine of one node on `backend` (the
/// simulation's layout; a node on disk uses [`open_on_disk`]). The state
/// machine comes back as of its latest stored snapshot; openraft re-applies
/// the committed log after it when the `Raft` starts.
/// Both share one [`StorageStats`] (`StateMachineStore::stats`).
pub fn open<B: Backend>(backend: B) -> Result<(LogStore<B>, StateMachineStore<B>), StorageError> {
    let stats = std::sync::Arc::new(StorageStats::default());
    let log = LogStore::open(backend.clone(), stats.clone())?;
    let sm = StateMachineStore::open(backend, stats)?;
    Ok((log, sm))
}

#[cfg(test)]
mod files_tests;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod wal_tests;
