//! Admin service: status, cluster formation and membership, provider
//! onboarding. Operators and nodes only.

use super::status;
use crate::ctx::Ctx;
use crate::identity::{check_provider_id, require_admin};
use openraft::ServerState;
use router_core::{Command, ProviderId};
use router_proto::v1::admin_server::Admin;
use router_proto::v1::*;
use router_raft::NodeAddr;
use std::collections::{BTreeMap, BTreeSet};
use tonic::{Code, Request, Response, Status};

pub struct AdminService {
    pub ctx: Ctx,
}

fn node_info(id: u64, addr: &NodeAddr) -> NodeInfo {
    NodeInfo { node_id: id, peer_endpoint: addr.peer.clone(), provider_endpoint: addr.provider.clone() }
}

fn node_addr(n: &NodeInfo, i: usize) -> Result<(u64, NodeAddr), Status> {
    if n.node_id == 0 {
        return Err(status::invalid_field(format!("members[{i}].node_id"), "OUT_OF_RANGE", "node ids start at 1"));
    }
    if n.peer_endpoint.is_empty() || n.provider_endpoint.is_empty() {
        return Err(status::invalid_field(format!("members[{i}]"), "EMPTY", "peer and provider endpoints are required"));
    }
    Ok((n.node_id, NodeAddr { peer: n.peer_endpoint.clone(), provider: n.provider_endpoint.clone() }))
}

pub fn role_name(state: ServerState) -> &'static str {
    match state {
        ServerState::Leader => "leader",
        ServerState::Follower => "follower",
        ServerState::Candidate => "candidate",
        ServerState::Learner => "learner",
        ServerState::Shutdown => "shutdown",
    }
}

fn raft_status(e: impl std::fmt::Display) -> Status {
    status::with_detail(
        Code::FailedPrecondition,
        e.to_string(),
        ErrorDetail { reason: "RAFT_REFUSED".into(), ..Default::default() },
    )
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn status(&self, req: Request<StatusRequest>) -> Result<Response<StatusResponse>, Status> {
        require_admin(&req)?;
        let m = self.ctx.raft.metrics().borrow().clone();
        let membership = m.membership_config.membership();
        let voter_ids: BTreeSet<u64> = membership.voter_ids().collect();
        let mut voters = Vec::new();
        let mut learners = Vec::new();
        for (id, addr) in membership.nodes() {
            if voter_ids.contains(id) {
                voters.push(node_info(*id, addr));
            } else {
                learners.push(node_info(*id, addr));
            }
        }
        let last_log = m.last_log_index.unwrap_or(0);
        let replication_lag = m
            .replication
            .as_ref()
            .map(|r| {
                r.iter()
                    .map(|(id, matched)| (*id, last_log.saturating_sub(matched.map_or(0, |l| l.index))))
                    .collect::<std::collections::HashMap<_, _>>()
            })
            .unwrap_or_default();
        Ok(Response::new(StatusResponse {
            node_id: self.ctx.node_id,
            role: role_name(m.state).into(),
            current_term: m.current_term,
            leader_id: m.current_leader.unwrap_or(0),
            has_leader: m.current_leader.is_some(),
            last_log_index: last_log,
            last_applied_index: m.last_applied.map_or(0, |l| l.index),
            committed_index: m.last_applied.map_or(0, |l| l.index),
            voters,
            learners,
            snapshot_index: m.snapshot.map_or(0, |l| l.index),
            replication_lag,
        }))
    }

    async fn initialize(&self, req: Request<InitializeRequest>) -> Result<Response<InitializeResponse>, Status> {
        require_admin(&req)?;
        let mut members = BTreeMap::new();
        for (i, n) in req.get_ref().members.iter().enumerate() {
            let (id, addr) = node_addr(n, i)?;
            members.insert(id, addr);
        }
        if members.is_empty() {
            return Err(status::invalid_field("members", "EMPTY", "at least one member is required"));
        }
        self.ctx.raft.initialize(members).await.map_err(raft_status)?;
        Ok(Response::new(InitializeResponse {}))
    }

    async fn add_learner(&self, req: Request<AddLearnerRequest>) -> Result<Response<AddLearnerResponse>, Status> {
        require_admin(&req)?;
        let node = req.get_ref().node.clone().ok_or_else(|| status::invalid_field("node", "EMPTY", "node is required"))?;
        let (id, addr) = node_addr(&node, 0)?;
        self.ctx.raft.add_learner(id, addr, true).await.map_err(raft_status)?;
        Ok(Response::new(AddLearnerResponse {}))
    }

    async fn change_membership(
        &self,
        req: Request<ChangeMembershipRequest>,
    ) -> Result<Response<ChangeMembershipResponse>, Status> {
        require_admin(&req)?;
        let r = req.get_ref();
        let voters: BTreeSet<u64> = r.voter_ids.iter().copied().collect();
        if voters.is_empty() {
            return Err(status::invalid_field("voter_ids", "EMPTY", "at least one voter is required"));
        }
        self.ctx.raft.change_membership(voters, !r.remove_unlisted).await.map_err(raft_status)?;
        Ok(Response::new(ChangeMembershipResponse {}))
    }

    async fn add_provider(&self, req: Request<AddProviderRequest>) -> Result<Response<AddProviderResponse>, Status> {
        require_admin(&req)?;
        let id = &req.get_ref().provider_id;
        check_provider_id(id).map_err(|e| status::invalid_field("provider_id", "BAD_CHARACTERS", e))?;
        self.ctx.write(Command::AddProvider { provider: ProviderId::new(id) }).await?;
        Ok(Response::new(AddProviderResponse {}))
    }

    async fn trigger_snapshot(
        &self,
        req: Request<TriggerSnapshotRequest>,
    ) -> Result<Response<TriggerSnapshotResponse>, Status> {
        require_admin(&req)?;
        self.ctx.raft.trigger().snapshot().await.map_err(|e| Status::unavailable(e.to_string()))?;
        Ok(Response::new(TriggerSnapshotResponse {}))
    }
}
