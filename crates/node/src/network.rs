//! openraft's network over the Peer gRPC service. Requests and responses are
//! bincode-encoded openraft types inside `RaftPayload { data }`; the remote
//! answers `Result<Response, RaftError>` so Raft-level errors travel intact.

use crate::peers::PeerPool;
use openraft::error::{
    InstallSnapshotError, NetworkError, PayloadTooLarge, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{Backoff, RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use router_core::State;
use router_proto::v1::RaftPayload;
use router_raft::{BASE_FORMAT, FORMAT_VERSION, NodeAddr, NodeId, TypeConfig};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// Encoded entries in one AppendEntries call at most (unless a single entry
/// is larger). openraft gives each call one heartbeat interval (30 ms by
/// default) and on a timeout sends the same range again: a follower catching
/// up with `max_payload_entries` (64) entries of a few hundred KiB each would
/// time out every time and never catch up.
const APPEND_PAYLOAD_BYTES: u64 = 1 << 20;

/// `None` when `entries` fit in one AppendEntries call; otherwise how many
/// of them would (at least one), for openraft to send fewer for a while.
fn entries_that_fit(entries: &[router_raft::Entry]) -> Option<u64> {
    if entries.len() < 2 {
        return None;
    }
    let bytes = bincode::serialized_size(entries).unwrap_or(0);
    if bytes <= APPEND_PAYLOAD_BYTES {
        return None;
    }
    Some((entries.len() as u64 * APPEND_PAYLOAD_BYTES / bytes).max(1))
}

/// Wraps bincode bytes for the Peer service, stamped with the base format:
/// what every build reads (see `router_raft::codec`).
pub fn payload(data: impl Into<bytes::Bytes>) -> RaftPayload {
    payload_at(BASE_FORMAT, data)
}

/// Wraps bincode bytes whose content needs format `version` (log entries
/// with federation commands): a build that reads only older formats refuses
/// the payload with a clear message instead of misreading it.
pub fn payload_at(version: u8, data: impl Into<bytes::Bytes>) -> RaftPayload {
    RaftPayload { data: data.into(), format_version: version.into(), incarnation: 0 }
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

/// Why a call from, or an answer by, `node` running as `incarnation` does
/// not count: the cluster recorded another incarnation for that node id.
pub fn stale_incarnation(node: NodeId, incarnation: u64, recorded: u64) -> String {
    format!(
        "node {node} runs as incarnation {incarnation:x}, the cluster admitted {recorded:x}: a node that lost its \
         disk must be removed and added back as a learner (it does so itself on start)"
    )
}

pub struct Network {
    pub peers: PeerPool,
    /// This node's incarnation, sent with every call.
    pub incarnation: u64,
    /// The local replica, for the incarnation each member is recorded as.
    pub state: Arc<RwLock<State>>,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerConnection;

    async fn new_client(&mut self, target: NodeId, node: &NodeAddr) -> Self::Network {
        PeerConnection {
            target,
            addr: node.peer.clone(),
            peers: self.peers.clone(),
            incarnation: self.incarnation,
            state: self.state.clone(),
        }
    }
}

pub struct PeerConnection {
    target: NodeId,
    addr: String,
    peers: PeerPool,
    incarnation: u64,
    state: Arc<RwLock<State>>,
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
        let mut request =
            tonic::Request::new(RaftPayload { incarnation: self.incarnation, ..payload_at(format, data) });
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
        // An answer by an incarnation the cluster did not admit under this
        // id (a node that lost its disk) must not count: not as a vote, not
        // as a replica holding an entry.
        let refused = {
            let state = self.state.read().unwrap_or_else(std::sync::PoisonError::into_inner);
            state.refused_incarnation(self.target, answer.incarnation)
        };
        if let Some(recorded) = refused {
            let stale = std::io::Error::other(stale_incarnation(self.target, answer.incarnation, recorded));
            return Err(RPCError::Unreachable(Unreachable::new(&stale)));
        }
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
        if let Some(fit) = entries_that_fit(&rpc.entries) {
            return Err(RPCError::PayloadTooLarge(PayloadTooLarge::new_entries_hint(fit)));
        }
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

    fn entry_of(index: u64, bytes: usize) -> router_raft::Entry {
        let command = router_core::Command::RegisterUser {
            provider: router_core::ProviderId::new("p"),
            user: router_core::UserId::new("u".repeat(bytes)),
        };
        openraft::Entry {
            log_id: openraft::LogId::new(openraft::CommittedLeaderId::new(1, 1), index),
            payload: openraft::EntryPayload::Normal(router_core::Batch { stamp_ms: 0, commands: vec![command] }),
        }
    }

    #[test]
    fn append_entries_calls_are_cut_to_a_size_a_heartbeat_can_carry() {
        let small: Vec<_> = (1..=64).map(|i| entry_of(i, 1_000)).collect();
        assert_eq!(entries_that_fit(&small), None, "64 KiB go in one call");
        let large: Vec<_> = (1..=64).map(|i| entry_of(i, 200_000)).collect();
        let fit = entries_that_fit(&large).expect("12.8 MB are cut");
        assert_eq!(fit, 5, "five 200 KB entries fit in 1 MiB");
        assert_eq!(entries_that_fit(&large[..1]), None, "a single entry always goes");
        let two_huge = vec![entry_of(1, 3 << 20), entry_of(2, 3 << 20)];
        assert_eq!(entries_that_fit(&two_huge), Some(1), "at least one entry per call");
    }

    #[test]
    fn payloads_carry_the_format_of_their_content_and_newer_ones_are_refused() {
        let p = payload(vec![1, 2, 3]);
        assert_eq!(p.format_version, u32::from(BASE_FORMAT), "what builds before federation accept");
        assert!(check_format(&p).is_ok());
        assert!(check_format(&payload_at(FORMAT_VERSION, vec![1])).is_ok());
        // A build from before the field sends 0: that is format 1, readable.
        assert!(check_format(&RaftPayload { data: vec![1].into(), format_version: 0, incarnation: 0 }).is_ok());
        let newer = RaftPayload { data: vec![1].into(), format_version: u32::from(FORMAT_VERSION) + 1, incarnation: 0 };
        let err = check_format(&newer).unwrap_err();
        assert!(err.contains("upgrade this node"), "unclear: {err}");
    }
}
