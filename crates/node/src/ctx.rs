//! What every gRPC handler shares: the Raft handle, the write path, a read
//! handle on the local replica and the edge limits.

use crate::config::EdgeLimits;
use crate::grpc::status;
use crate::writer::Writer;
use router_core::{Command, Outcome, ProviderId, State};
use router_raft::{NodeAddr, NodeId, Raft};
use std::sync::atomic::AtomicI64;
use std::sync::{Arc, RwLock};
use tokio::sync::watch;
use tonic::Status;

pub struct NodeCtx {
    pub node_id: NodeId,
    /// This data directory's incarnation (`incarnation`).
    pub incarnation: u64,
    pub advertise: NodeAddr,
    pub raft: Raft,
    pub writer: Writer,
    pub peers: crate::peers::PeerPool,
    pub state: Arc<RwLock<State>>,
    /// Last applied log index; changes after every apply, before the state
    /// lock is released (so a reader holding it sees the matching index).
    pub applied: watch::Receiver<u64>,
    /// Commit index, snapshot and compaction counts from the Raft stores.
    pub storage_stats: Arc<router_raft::StorageStats>,
    pub limits: EdgeLimits,
    /// Becomes true when the node starts shutting down.
    pub shutdown: watch::Receiver<bool>,
    pub open_streams: AtomicI64,
    /// How long a follower refuses votes after hearing from its leader
    /// (openraft's leader lease = election_timeout_max).
    pub leader_lease: std::time::Duration,
    /// Set once the leader told this node it was removed; persisted as
    /// `<data_dir>/REMOVED` so a restart does not bring it back.
    pub removed: std::sync::atomic::AtomicBool,
    pub data_dir: std::path::PathBuf,
    /// Set while this node joins under an id whose previous incarnation
    /// (lost disk) it just removed: that removal notice is not for us.
    pub joining: std::sync::atomic::AtomicBool,
    pub metrics: std::sync::Arc<crate::metrics::Metrics>,
    /// Receive streams connected to this node, for ephemeral content.
    pub ephemeral: Arc<crate::ephemeral::Registry>,
    /// `[federation]` configured: this cluster talks to peer clusters.
    pub federation: Option<Arc<crate::federation::Federation>>,
    /// Why this node failed closed (its Raft core stopped), once it did.
    pub fault: watch::Sender<Option<String>>,
    /// Node ids this node saw leave the membership (kept across restarts).
    pub removed_peers: RemovedPeers,
}

/// The node ids this node saw removed from the membership and not added
/// back, persisted in `<data_dir>/REMOVED_PEERS` (one id per line) so a
/// restart keeps refusing them. Kept up to date by `node::watch_raft_role`.
pub struct RemovedPeers {
    path: std::path::PathBuf,
    ids: std::sync::Mutex<std::collections::BTreeSet<NodeId>>,
}

impl RemovedPeers {
    pub fn load(data_dir: &std::path::Path) -> Self {
        let path = data_dir.join(REMOVED_PEERS_FILE);
        let ids = std::fs::read_to_string(&path)
            .map(|text| text.lines().filter_map(|l| l.trim().parse().ok()).collect())
            .unwrap_or_default();
        RemovedPeers { path, ids: std::sync::Mutex::new(ids) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, std::collections::BTreeSet<NodeId>> {
        self.ids.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn contains(&self, node: NodeId) -> bool {
        self.lock().contains(&node)
    }

    /// A membership went from `before` to `after`: ids that left are
    /// removed, ids in `after` are members (again).
    pub fn observe(&self, before: &std::collections::BTreeSet<NodeId>, after: &std::collections::BTreeSet<NodeId>) {
        let mut ids = self.lock();
        let was = ids.clone();
        ids.extend(before.difference(after));
        ids.retain(|id| !after.contains(id));
        if *ids != was {
            let text: String = ids.iter().map(|id| format!("{id}\n")).collect();
            if let Err(e) = std::fs::write(&self.path, text) {
                tracing::error!("failed to write {}: {e}", self.path.display());
            }
        }
    }
}

impl NodeCtx {
    /// Commits a command; rejections and write failures become statuses.
    pub async fn write(&self, command: Command) -> Result<Outcome, Status> {
        self.require_member()?;
        let started = std::time::Instant::now();
        let kind = crate::metrics::command_kind(&command);
        let actor = command.actor().map(|p| p.0.clone());
        let outcome = self.writer.submit(command).await.map_err(status::write_error)?;
        self.metrics.observe_command(kind, actor.as_deref().unwrap_or("-"), &outcome, started);
        status::accepted(outcome)
    }

    /// Reads the local replica. The lock is held only inside `f`.
    pub fn read<R>(&self, f: impl FnOnce(&State) -> R) -> R {
        let state = self.state.read().expect("state lock poisoned");
        f(&state)
    }

    /// Providers are served only by members: a node removed from the
    /// cluster (or not yet added) answers UNAVAILABLE so clients move on.
    pub fn mark_removed(&self) {
        self.removed.store(true, std::sync::atomic::Ordering::SeqCst);
        let marker = self.data_dir.join(REMOVED_MARKER);
        if let Err(e) = std::fs::write(&marker, b"removed from the cluster; wipe this directory to rejoin\n") {
            tracing::error!("failed to write {}: {e}", marker.display());
        }
    }

    /// In the membership as this node sees it, and not told it was removed.
    pub fn is_member(&self) -> bool {
        !self.removed.load(std::sync::atomic::Ordering::SeqCst)
            && self.raft.metrics().borrow().membership_config.membership().get_node(&self.node_id).is_some()
    }

    /// A peer RPC's caller (`node`, from its certificate) has not been
    /// removed from the cluster as far as this node saw: a removed node keeps
    /// a valid certificate, but none of its Raft, forwarding or ephemeral
    /// calls is taken. An id this node does not know is not refused: a node
    /// that lagged behind a membership change must still take the calls of a
    /// member added meanwhile (it may be the leader).
    pub fn require_peer_member(&self, node: NodeId) -> Result<(), Status> {
        if !self.removed_peers.contains(node) {
            return Ok(());
        }
        Err(status::with_detail(
            tonic::Code::PermissionDenied,
            format!("node {node} was removed from this cluster"),
            router_proto::v1::ErrorDetail { reason: "NOT_A_MEMBER".into(), ..Default::default() },
        ))
    }

    pub fn require_member(&self) -> Result<(), Status> {
        if self.is_member() {
            Ok(())
        } else {
            Err(status::with_detail(
                tonic::Code::Unavailable,
                "this node is not a member of the cluster; use another node",
                router_proto::v1::ErrorDetail { reason: "NOT_A_MEMBER".into(), ..Default::default() },
            ))
        }
    }

    /// Local check for reads (writes are checked inside `apply`).
    pub async fn require_onboarded(&self, provider: &ProviderId) -> Result<(), Status> {
        self.require_member()?;
        match self.read_settled(|s| s.provider_refusal(provider), Option::is_none).await {
            None => Ok(()),
            Some(r) => Err(status::rejection(&r)),
        }
    }

    /// Reads the local replica; when the answer is a miss (`ok` false) on a
    /// follower, waits up to [`LAGGING_READ_WAIT`] for newer entries and reads
    /// again. A write acknowledged just before (on the leader) reaches a
    /// follower within a heartbeat, so a client that registered a user, or an
    /// operator who reactivated a provider, is not refused by a lagging node.
    pub async fn read_settled<R>(&self, f: impl Fn(&State) -> R, ok: impl Fn(&R) -> bool) -> R {
        let first = self.read(&f);
        let is_leader = self.raft.metrics().borrow().current_leader == Some(self.node_id);
        if ok(&first) || is_leader {
            return first;
        }
        let mut applied = self.applied.clone();
        let deadline = tokio::time::Instant::now() + LAGGING_READ_WAIT;
        loop {
            match tokio::time::timeout_at(deadline, applied.changed()).await {
                Ok(Ok(())) => {
                    let again = self.read(&f);
                    if ok(&again) {
                        return again;
                    }
                }
                _ => return self.read(&f),
            }
        }
    }
}

pub type Ctx = Arc<NodeCtx>;

/// How long a follower waits for newer entries before answering a miss
/// (five heartbeats at the default 30 ms).
pub const LAGGING_READ_WAIT: std::time::Duration = std::time::Duration::from_millis(150);

/// File in the data directory marking a node that was removed.
pub const REMOVED_MARKER: &str = "REMOVED";
/// File in the data directory listing the other nodes this node saw removed.
pub const REMOVED_PEERS_FILE: &str = "REMOVED_PEERS";
