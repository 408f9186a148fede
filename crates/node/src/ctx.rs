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
    pub advertise: NodeAddr,
    pub raft: Raft,
    pub writer: Writer,
    pub state: Arc<RwLock<State>>,
    /// Last applied log index; changes after every apply.
    pub applied: watch::Receiver<u64>,
    pub limits: EdgeLimits,
    /// Becomes true when the node starts shutting down.
    pub shutdown: watch::Receiver<bool>,
    pub open_streams: AtomicI64,
}

impl NodeCtx {
    /// Commits a command; rejections and write failures become statuses.
    pub async fn write(&self, command: Command) -> Result<Outcome, Status> {
        let outcome = self.writer.submit(command).await.map_err(status::write_error)?;
        status::accepted(outcome)
    }

    /// Reads the local replica. The lock is held only inside `f`.
    pub fn read<R>(&self, f: impl FnOnce(&State) -> R) -> R {
        let state = self.state.read().expect("state lock poisoned");
        f(&state)
    }

    /// Local check for reads (writes are checked inside `apply`).
    pub fn require_onboarded(&self, provider: &ProviderId) -> Result<(), Status> {
        if self.read(|s| s.is_onboarded(provider)) {
            Ok(())
        } else {
            Err(status::rejection(&router_core::Rejection::ProviderNotOnboarded { provider: provider.clone() }))
        }
    }
}

pub type Ctx = Arc<NodeCtx>;
