//! openraft's network over the Peer gRPC service. Requests and responses are
//! bincode-encoded openraft types inside `RaftPayload { data }`; the remote
//! answers `Result<Response, RaftError>` so Raft-level errors travel intact.

use crate::peers::PeerPool;
use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable};
use openraft::network::{Backoff, RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use router_proto::v1::RaftPayload;
use router_raft::{BASE_FORMAT, FORMAT_VERSION, NodeAddr, NodeId, TypeConfig};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::time::Duration;

/// Wraps bincode bytes for the Peer service, stamped with the base format:
/// what every build reads (see `router_raft::codec`).
pub fn payload(data: impl Into<bytes::Bytes>) -> RaftPayload {
    payload_at(BASE_FORMAT, data)
}

/// Wraps bincode bytes whose content needs format `version` (log entries
/// with federation commands): a build that reads only older formats refuses
/// the payload with a clear message instead of misreading it.
pub fn payload_at(version: u8, data: impl Into<bytes::Bytes>) -> RaftPayload {
    RaftPayload { data: data.into(), format_version: version.into() }
}

/// Refuses a payload written in a format newer than this build reads (a
/// mixed-version cluster must never misread bincode). 0 is a build from before
/// the field, which wrote format 1.
pub fn check_format(p: &RaftPayload) -> Result<(), String> {
    if p.format_version > u32::from(FORMAT_VERSION) {
        return Err(format!(
            "peer payload has format version {}, this build reads up to {FORMAT_VERSION}: upgrade this node",
            p.format_version
        ));
    }
    Ok(())
}

pub struct Network {
    pub peers: PeerPool,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerConnection;

    async fn new_client(&mut self, target: NodeId, node: &NodeAddr) -> Self::Network {
        PeerConnection { target, addr: node.peer.clone(), peers: self.peers.clone() }
    }
}

pub struct PeerConnection {
    target: NodeId,
    addr: String,
    peers: PeerPool,
}

#[derive(Clone, Copy)]
enum Rpc {
    Append,
    Snapshot,
    Vote,
}

impl PeerConnection {
    async fn call<Req, Resp, E>(
        &self,
        rpc: Rpc,
        format: u8,
        req: &Req,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<NodeId, NodeAddr, RaftError<NodeId, E>>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let data = bincode::serialize(req).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let mut client =
            self.peers.client(self.target, &self.addr).map_err(|e| RPCError::Unreachable(Unreachable::new(&e)))?;
        let mut request = tonic::Request::new(payload_at(format, data));
        request.set_timeout(option.hard_ttl());
        let result = match rpc {
            Rpc::Append => client.append_entries(request).await,
            Rpc::Snapshot => client.install_snapshot(request).await,
            Rpc::Vote => client.vote(request).await,
        };
        let answer = result.map_err(|status| match status.code() {
            tonic::Code::Unavailable | tonic::Code::Unknown => RPCError::Unreachable(Unreachable::new(&status)),
            _ => RPCError::Network(NetworkError::new(&status)),
        })?;
        let answer = answer.into_inner();
        check_format(&answer).map_err(|e| RPCError::Network(NetworkError::new(&std::io::Error::other(e))))?;
        let decoded: Result<Resp, RaftError<NodeId, E>> =
            bincode::deserialize(&answer.data).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        decoded.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<TypeConfig> for PeerConnection {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, NodeAddr, RaftError<NodeId>>> {
        let format = rpc.entries.iter().map(router_raft::entry_format).max().unwrap_or(BASE_FORMAT);
        self.call(Rpc::Append, format, &rpc, &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, RPCError<NodeId, NodeAddr, RaftError<NodeId, InstallSnapshotError>>>
    {
        // The snapshot data carries its own format byte (checked when decoded).
        self.call(Rpc::Snapshot, BASE_FORMAT, &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, NodeAddr, RaftError<NodeId>>> {
        self.call(Rpc::Vote, BASE_FORMAT, &rpc, &option).await
    }

    /// Retry an unreachable peer soon: a restarted node should be caught up
    /// within a heartbeat or two, not after openraft's default 500 ms.
    fn backoff(&self) -> Backoff {
        Backoff::new(std::iter::repeat(Duration::from_millis(100)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_carry_the_format_of_their_content_and_newer_ones_are_refused() {
        let p = payload(vec![1, 2, 3]);
        assert_eq!(p.format_version, u32::from(BASE_FORMAT), "what builds before federation accept");
        assert!(check_format(&p).is_ok());
        assert!(check_format(&payload_at(FORMAT_VERSION, vec![1])).is_ok());
        // A build from before the field sends 0: that is format 1, readable.
        assert!(check_format(&RaftPayload { data: vec![1].into(), format_version: 0 }).is_ok());
        let newer = RaftPayload { data: vec![1].into(), format_version: u32::from(FORMAT_VERSION) + 1 };
        let err = check_format(&newer).unwrap_err();
        assert!(err.contains("upgrade this node"), "unclear: {err}");
    }
}
