//! Node-to-node service: Raft RPCs and write forwarding. Only callers with a
//! node certificate get in.

use crate::ctx::Ctx;
use crate::identity::require_node;
use router_core::Command;
use router_proto::v1::RaftPayload;
use router_proto::v1::peer_server::Peer;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tonic::{Request, Response, Status};

pub struct PeerService {
    pub ctx: Ctx,
}

fn decode<T: DeserializeOwned>(req: &Request<RaftPayload>) -> Result<T, Status> {
    bincode::deserialize(&req.get_ref().data).map_err(|e| Status::invalid_argument(format!("decode payload: {e}")))
}

fn encode<T: Serialize>(v: &T) -> Result<Response<RaftPayload>, Status> {
    let data = bincode::serialize(v).map_err(|e| Status::internal(format!("encode payload: {e}")))?;
    Ok(Response::new(RaftPayload { data: data.into() }))
}

#[tonic::async_trait]
impl Peer for PeerService {
    async fn append_entries(&self, req: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        require_node(&req)?;
        let rpc = decode(&req)?;
        encode(&self.ctx.raft.append_entries(rpc).await)
    }

    async fn install_snapshot(&self, req: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        require_node(&req)?;
        let rpc = decode(&req)?;
        encode(&self.ctx.raft.install_snapshot(rpc).await)
    }

    async fn vote(&self, req: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        require_node(&req)?;
        let rpc = decode(&req)?;
        encode(&self.ctx.raft.vote(rpc).await)
    }

    async fn forward(&self, req: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        require_node(&req)?;
        let command: Command = decode(&req)?;
        encode(&self.ctx.writer.submit_local(command).await)
    }
}
