//! The openraft type configuration and the aliases the rest of the workspace
//! uses, so no other crate has to spell `openraft::LogId<u64>` itself.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A cluster member's id. Stable across restarts; chosen by the operator.
pub type NodeId = u64;

/// Where a member listens: its raft-to-raft (`peer`) and provider-facing
/// (`provider`) gRPC endpoints, each as `host:port`. Stored in the membership
/// log entries, so a follower can tell a client where the leader is.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeAddr {
    pub peer: String,
    pub provider: String,
}

impl fmt::Display for NodeAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "peer={} provider={}", self.peer, self.provider)
    }
}

openraft::declare_raft_types!(
    /// The router's raft: log entries carry a leader-stamped [`router_core::Batch`],
    /// applying one answers one [`router_core::Outcome`] per command.
    pub TypeConfig:
        D = router_core::Batch,
        R = Vec<router_core::Outcome>,
        NodeId = NodeId,
        Node = NodeAddr,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = crate::snapshot_data::SnapshotData,
        AsyncRuntime = openraft::TokioRuntime,
);

pub type Raft = openraft::Raft<TypeConfig>;
pub type StorageError = openraft::StorageError<NodeId>;
pub type LogId = openraft::LogId<NodeId>;
pub type Vote = openraft::Vote<NodeId>;
pub type Entry = openraft::Entry<TypeConfig>;
pub type Membership = openraft::Membership<NodeId, NodeAddr>;
pub type StoredMembership = openraft::StoredMembership<NodeId, NodeAddr>;
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, NodeAddr>;
pub type Snapshot = openraft::Snapshot<TypeConfig>;
