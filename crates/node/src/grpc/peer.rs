//! Node-to-node service: Raft RPCs, write forwarding and ephemeral delivery.
//! Only callers with a node certificate get in.

use crate::ctx::Ctx;
use crate::identity::require_node;
use router_core::Command;
use router_proto::v1::RaftPayload;
use router_proto::v1::peer_server::Peer;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tonic::{Request, Response, Status};
use tracing::Instrument;

/// What `Peer.Elect` asks a node to do: leadership transfer steps, and the
/// notice that the node was removed from the cluster.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub enum ElectionControl {
    /// Do not start elections on timeout for this long.
    Suspend {
        millis: u64,
    },
    Resume,
    /// Start an election now.
    ElectNow,
    /// The leader committed a membership without this node. A removed node
    /// never hears the final configuration through Raft (replication to it
    /// stops), so the leader tells it: it stops electing and serving.
    Removed,
}

impl ElectionControl {
    /// The `Peer.Elect` request carrying this control, from a node running
    /// as `incarnation`.
    pub fn request(&self, incarnation: u64) -> RaftPayload {
        let data = bincode::serialize(self).expect("serialize election control");
        RaftPayload { incarnation, ..crate::network::payload(data) }
    }
}

pub struct PeerService {
    pub ctx: Ctx,
}

fn decode<T: DeserializeOwned>(req: &Request<RaftPayload>) -> Result<T, Status> {
    crate::network::check_format(req.get_ref()).map_err(Status::failed_precondition)?;
    bincode::deserialize(&req.get_ref().data).map_err(|e| Status::invalid_argument(format!("decode payload: {e}")))
}

fn encode<T: Serialize>(v: &T) -> Result<Response<RaftPayload>, Status> {
    let data = bincode::serialize(v).map_err(|e| Status::internal(format!("encode payload: {e}")))?;
    Ok(Response::new(crate::network::payload(data)))
}

impl PeerService {
    /// The caller of a Raft call: a node the cluster did not remove, running
    /// as the incarnation the local replica records for it.
    fn raft_caller(&self, req: &Request<RaftPayload>) -> Result<u64, Status> {
        let from = require_node(req)?;
        self.ctx.require_peer_member(from)?;
        self.ctx.require_incarnation(from, req.get_ref().incarnation)?;
        Ok(from)
    }

    /// [`encode`], stamped with this node's incarnation (the caller
    /// discards an answer from an incarnation it did not admit).
    fn answer<T: Serialize>(&self, v: &T) -> Result<Response<RaftPayload>, Status> {
        let mut response = encode(v)?;
        response.get_mut().incarnation = self.ctx.incarnation;
        Ok(response)
    }
}

#[tonic::async_trait]
impl Peer for PeerService {
    async fn append_entries(&self, req: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        self.raft_caller(&req)?;
        let rpc = decode(&req)?;
        self.answer(&self.ctx.raft.append_entries(rpc).await)
    }

    async fn install_snapshot(&self, req: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        self.raft_caller(&req)?;
        let rpc = decode(&req)?;
        self.answer(&self.ctx.raft.install_snapshot(rpc).await)
    }

    async fn vote(&self, req: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        self.raft_caller(&req)?;
        let rpc = decode(&req)?;
        self.answer(&self.ctx.raft.vote(rpc).await)
    }

    async fn elect(&self, req: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        let from = self.raft_caller(&req)?;
        let control: ElectionControl = decode(&req)?;
        let runtime = self.ctx.raft.runtime_config();
        match control {
            ElectionControl::Suspend { millis } => {
                // Bounded: elections come back on their own if the leader never resumes them.
                runtime.elect(false);
                let raft = self.ctx.raft.clone();
                crate::spawn(async move {
                    tokio::time::sleep(std::time::Duration::from_millis(millis)).await;
                    raft.runtime_config().elect(true);
                });
            }
            ElectionControl::Resume => runtime.elect(true),
            ElectionControl::Removed if self.ctx.joining.load(std::sync::atomic::Ordering::SeqCst) => {
                tracing::info!(peer_node_id = from, "ignoring the removal of this node id's previous incarnation");
            }
            ElectionControl::Removed => {
                tracing::warn!(peer_node_id = from, "removed from the cluster; refusing traffic from now on");
                runtime.elect(false);
                self.ctx.mark_removed();
            }
            ElectionControl::ElectNow => {
                tracing::info!(peer_node_id = from, "leadership transfer: starting an election");
                runtime.elect(true);
                self.ctx.raft.trigger().elect().await.map_err(|e| Status::unavailable(e.to_string()))?;
            }
        }
        encode(&())
    }

    /// Pushes an ephemeral entry to this node's connected receive streams of
    /// the named provider; answers how many took it (bincode `u32`).
    async fn deliver_ephemeral(&self, req: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        self.ctx.require_peer_member(require_node(&req)?)?;
        let delivery: crate::ephemeral::EphemeralDelivery = decode(&req)?;
        let taken: u32 = self.ctx.ephemeral.push(&delivery.provider, &delivery.entry());
        encode(&taken)
    }

    async fn forward(&self, req: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        self.ctx.require_peer_member(require_node(&req)?)?;
        let command: Command = decode(&req)?;
        encode(&self.ctx.writer.submit_local(command).await)
    }

    /// Every command of the call goes into this node's batcher queue, in the
    /// call's order (each future's first poll queues it; `join_all` polls in
    /// order); the answers come back in the same order. Each command gets a
    /// `forward` span in the trace of the request that made it.
    async fn forward_batch(&self, req: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        self.ctx.require_peer_member(require_node(&req)?)?;
        let commands: Vec<crate::writer::ForwardedCommand> = decode(&req)?;
        if commands.len() > crate::writer::FORWARD_BATCH_ACCEPTED {
            return Err(Status::invalid_argument(format!(
                "{} commands in one forward batch, at most {}",
                commands.len(),
                crate::writer::FORWARD_BATCH_ACCEPTED
            )));
        }
        let writer = &self.ctx.writer;
        let answers = futures::future::join_all(commands.into_iter().map(|c| {
            let span = tracing::info_span!("forward", node_id = self.ctx.node_id, otel.kind = "server");
            if let Some(tp) = &c.traceparent {
                crate::telemetry::set_parent_from(&span, tp);
            }
            writer.submit_local(c.command).instrument(span)
        }))
        .await;
        encode(&answers)
    }
}
