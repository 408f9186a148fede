//! Admin service: status, cluster formation and membership, provider
//! onboarding. Operators only, except `Status` (nodes survey each other) and
//! the membership calls a joining node makes about itself.

use super::status;
use crate::ctx::Ctx;
use crate::grpc::peer::ElectionControl;
use crate::identity::{Identity, check_provider_id, identity_of, require_admin};
use router_core::{Command, ProviderId};
use router_proto::v1::admin_server::Admin;
use router_proto::v1::*;
use router_raft::NodeAddr;
use std::collections::{BTreeMap, BTreeSet};
use tonic::{Code, Request, Response, Status};

pub struct AdminService {
    pub ctx: Ctx,
}

/// A member as `Status` lists it, with the incarnation the local replica
/// records for it (0: none yet).
fn node_info(id: u64, addr: &NodeAddr, incarnation: Option<u64>) -> NodeInfo {
    NodeInfo {
        node_id: id,
        peer_endpoint: addr.peer.clone(),
        provider_endpoint: addr.provider.clone(),
        incarnation: incarnation.unwrap_or(0),
    }
}

fn node_addr(n: &NodeInfo, i: usize) -> Result<(u64, NodeAddr), Status> {
    if n.node_id == 0 {
        return Err(status::invalid_field(format!("members[{i}].node_id"), "OUT_OF_RANGE", "node ids start at 1"));
    }
    if n.peer_endpoint.is_empty() || n.provider_endpoint.is_empty() {
        return Err(status::invalid_field(
            format!("members[{i}]"),
            "EMPTY",
            "peer and provider endpoints are required",
        ));
    }
    Ok((n.node_id, NodeAddr { peer: n.peer_endpoint.clone(), provider: n.provider_endpoint.clone() }))
}

/// Every other admin call: operators only (a node certificate is a node's,
/// not an operator's). Logs the operator's name with the call, so every
/// change made through the admin API says who made it.
fn require_operator<T>(req: &Request<T>, method: &str) -> Result<String, Status> {
    match identity_of(req)? {
        Identity::Operator(name) => {
            tracing::info!(operator = %name, method, "admin call");
            Ok(name)
        }
        other => Err(status::reason(
            Code::PermissionDenied,
            "OPERATOR_REQUIRED",
            format!("{} may not call Admin.{method}: it needs an operator certificate", other.uri()),
        )),
    }
}

/// Membership calls a node may make about itself (joining, or replacing its
/// own lost incarnation); anything else needs an operator. Logs who called.
fn only_on_itself(caller: &Identity, method: &str, on_itself: impl FnOnce(u64) -> bool) -> Result<(), Status> {
    match caller {
        Identity::Operator(name) => {
            tracing::info!(operator = %name, method, "admin call");
            Ok(())
        }
        Identity::Node(me) if on_itself(*me) => {
            tracing::info!(peer_node_id = me, method, "admin call by a node about itself");
            Ok(())
        }
        other => Err(status::reason(
            Code::PermissionDenied,
            "OPERATOR_REQUIRED",
            format!(
                "{} may call Admin.{method} only about itself; anything else needs an operator certificate",
                other.uri()
            ),
        )),
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
            let info = node_info(*id, addr, self.ctx.read(|s| s.incarnation_of(*id)));
            if voter_ids.contains(id) {
                voters.push(info);
            } else {
                learners.push(info);
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
            role: crate::admin_http::role_name(m.state).into(),
            current_term: m.current_term,
            leader_id: m.current_leader.unwrap_or(0),
            has_leader: m.current_leader.is_some(),
            last_log_index: last_log,
            last_applied_index: m.last_applied.map_or(0, |l| l.index),
            committed_index: self.ctx.storage_stats.snapshot().committed_index,
            voters,
            learners,
            snapshot_index: m.snapshot.map_or(0, |l| l.index),
            purged_index: m.purged.map_or(0, |l| l.index),
            replication_lag,
            build_version: crate::build_version(),
            format_version: router_raft::FORMAT_VERSION.into(),
            health: crate::admin_http::not_ready_because(&self.ctx).unwrap_or_else(|| "ok".into()),
            supported_cluster_version: router_core::CLUSTER_VERSION,
            cluster_version: self.ctx.read(|s| s.cluster_version()),
            incarnation: self.ctx.incarnation,
        }))
    }

    async fn initialize(&self, req: Request<InitializeRequest>) -> Result<Response<InitializeResponse>, Status> {
        require_operator(&req, "Initialize")?;
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
        let caller = require_admin(&req)?;
        let node =
            req.get_ref().node.clone().ok_or_else(|| status::invalid_field("node", "EMPTY", "node is required"))?;
        let (id, addr) = node_addr(&node, 0)?;
        only_on_itself(&caller, "AddLearner", |me| me == id)?;
        // Past the base cluster version the log holds entries only builds that
        // apply it can read: a node of an older build would stop at the first one.
        let version = self.ctx.read(|s| s.cluster_version());
        if version > router_core::version::BASE_CLUSTER_VERSION {
            let supported = |st: &StatusResponse| st.supported_cluster_version;
            super::admin_peers::node_supports(&self.ctx, id, &addr.peer, "cluster version", version, supported).await?;
        }
        record_joining_incarnation(&self.ctx, id, &addr, node.incarnation).await?;
        self.ctx.raft.add_learner(id, addr, true).await.map_err(raft_status)?;
        Ok(Response::new(AddLearnerResponse {}))
    }

    async fn change_membership(
        &self,
        req: Request<ChangeMembershipRequest>,
    ) -> Result<Response<ChangeMembershipResponse>, Status> {
        let caller = require_admin(&req)?;
        let r = req.get_ref();
        let voters: BTreeSet<u64> = r.voter_ids.iter().copied().collect();
        if voters.is_empty() {
            return Err(status::invalid_field("voter_ids", "EMPTY", "at least one voter is required"));
        }
        // A node may only promote itself: today's voters plus itself, nobody removed.
        let current: BTreeSet<u64> =
            self.ctx.raft.metrics().borrow().membership_config.membership().voter_ids().collect();
        only_on_itself(&caller, "ChangeMembership", |me| {
            !r.remove_unlisted && current.iter().copied().chain([me]).collect::<BTreeSet<u64>>() == voters
        })?;
        self.ctx.raft.change_membership(voters, !r.remove_unlisted).await.map_err(raft_status)?;
        Ok(Response::new(ChangeMembershipResponse {}))
    }

    async fn add_provider(&self, req: Request<AddProviderRequest>) -> Result<Response<AddProviderResponse>, Status> {
        require_operator(&req, "AddProvider")?;
        let id = &req.get_ref().provider_id;
        check_provider_id(id).map_err(|e| status::invalid_field("provider_id", "BAD_CHARACTERS", e))?;
        self.ctx.write(Command::AddProvider { provider: ProviderId::new(id) }).await?;
        Ok(Response::new(AddProviderResponse {}))
    }

    async fn transfer_leader(
        &self,
        req: Request<TransferLeaderRequest>,
    ) -> Result<Response<TransferLeaderResponse>, Status> {
        require_operator(&req, "TransferLeader")?;
        let to = match req.get_ref().to_node_id {
            0 => None,
            n => Some(n),
        };
        let new_leader_id = transfer_leadership(&self.ctx, to).await?;
        Ok(Response::new(TransferLeaderResponse { new_leader_id }))
    }

    async fn remove_member(&self, req: Request<RemoveMemberRequest>) -> Result<Response<RemoveMemberResponse>, Status> {
        let caller = require_admin(&req)?;
        only_on_itself(&caller, "RemoveMember", |me| me == req.get_ref().node_id)?;
        remove_member(&self.ctx, req.get_ref().node_id).await?;
        Ok(Response::new(RemoveMemberResponse {}))
    }

    async fn list_providers(
        &self,
        req: Request<ListProvidersRequest>,
    ) -> Result<Response<ListProvidersResponse>, Status> {
        require_operator(&req, "ListProviders")?;
        let resp = self.ctx.read(|s| {
            let providers: Vec<ProviderInfo> = s
                .providers
                .values()
                .map(|r| ProviderInfo {
                    provider_id: r.id.0.clone(),
                    status: r.status.as_str().into(),
                    name: r.name.clone(),
                    contact: r.contact.clone(),
                    media_hosts: r.media_hosts.clone(),
                    requested_at_ms: r.requested_at_ms,
                    deadline_ms: r.deadline_ms(),
                    overdue: r.overdue(s.clock_ms),
                    activated_at_ms: r.activated_at_ms.unwrap_or(0),
                })
                .collect();
            ListProvidersResponse {
                provider_ids: providers
                    .iter()
                    .filter(|p| p.status == "active")
                    .map(|p| p.provider_id.clone())
                    .collect(),
                providers,
            }
        });
        Ok(Response::new(resp))
    }

    async fn request_provider(
        &self,
        req: Request<RequestProviderRequest>,
    ) -> Result<Response<RequestProviderResponse>, Status> {
        require_operator(&req, "RequestProvider")?;
        let r = req.into_inner();
        check_provider_id(&r.provider_id).map_err(|e| status::invalid_field("provider_id", "BAD_CHARACTERS", e))?;
        for (field, v, max) in [("name", &r.name, 200usize), ("contact", &r.contact, 200)] {
            if v.is_empty() {
                return Err(status::invalid_field(field, "EMPTY", format!("{field} is required")));
            }
            if v.len() > max {
                return Err(status::over_limit(field, max as u64, v.len() as u64));
            }
        }
        let media_hosts = validate_media_hosts(r.media_hosts)?;
        self.ctx
            .write(Command::RequestProvider {
                provider: ProviderId::new(r.provider_id),
                name: r.name,
                contact: r.contact,
                media_hosts,
            })
            .await?;
        Ok(Response::new(RequestProviderResponse {}))
    }

    async fn set_provider_status(
        &self,
        req: Request<SetProviderStatusRequest>,
    ) -> Result<Response<SetProviderStatusResponse>, Status> {
        require_operator(&req, "SetProviderStatus")?;
        let r = req.into_inner();
        use router_core::ProviderAction as A;
        let action = match ProviderAction::try_from(r.action) {
            Ok(ProviderAction::Approve) => A::Approve,
            Ok(ProviderAction::Activate) => A::Activate,
            Ok(ProviderAction::Suspend) => A::Suspend,
            Ok(ProviderAction::Reactivate) => A::Reactivate,
            Ok(ProviderAction::Revoke) => A::Revoke,
            _ => return Err(status::invalid_field("action", "OUT_OF_RANGE", "action is required")),
        };
        let provider = ProviderId::new(r.provider_id);
        self.ctx.write(Command::SetProviderStatus { provider: provider.clone(), action }).await?;
        let status = self.ctx.read(|s| s.provider(&provider).map(|p| p.status.as_str()).unwrap_or("unknown"));
        Ok(Response::new(SetProviderStatusResponse { status: status.into() }))
    }

    async fn lookup_user(&self, req: Request<LookupUserRequest>) -> Result<Response<LookupUserResponse>, Status> {
        require_operator(&req, "LookupUser")?;
        let user = router_core::UserId::new(req.get_ref().user_id.clone());
        let found = self.ctx.read(|s| {
            s.user(&user).map(|rec| LookupUserResponse {
                user_id: user.0.clone(),
                provider_id: rec.provider.0.clone(),
                devices: rec
                    .devices
                    .iter()
                    .map(|(d, r)| DeviceStock {
                        device_id: *d,
                        registration_id: r.registration_id,
                        has_keys: r.keys.is_some(),
                        one_time_prekeys: r.keys.as_ref().map_or(0, |k| k.one_time.len() as u32),
                        kyber_one_time_prekeys: r.keys.as_ref().map_or(0, |k| k.kyber_one_time.len() as u32),
                        has_kyber_last_resort: r.keys.as_ref().is_some_and(|k| k.kyber_last_resort.is_some()),
                    })
                    .collect(),
            })
        });
        found.map(Response::new).ok_or_else(|| status::rejection(&router_core::Rejection::UserNotFound { user }))
    }

    async fn mailbox_depth(&self, req: Request<MailboxDepthRequest>) -> Result<Response<MailboxDepthResponse>, Status> {
        require_operator(&req, "MailboxDepth")?;
        let only = req.get_ref().provider_id.clone();
        let mailboxes = self.ctx.read(|s| {
            s.mailboxes
                .iter()
                .filter(|(p, _)| only.is_empty() || p.0 == only)
                .map(|(p, mb)| MailboxInfo {
                    provider_id: p.0.clone(),
                    depth: mb.len() as u64,
                    oldest_age_ms: s.mailbox_oldest_ms(p).map_or(0, |t| s.clock_ms.saturating_sub(t)),
                    next_seq: mb.next_seq,
                })
                .collect()
        });
        Ok(Response::new(MailboxDepthResponse { mailboxes }))
    }

    type BackupStream = std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<BackupChunk, Status>> + Send>>;

    async fn backup(&self, req: Request<BackupRequest>) -> Result<Response<Self::BackupStream>, Status> {
        require_operator(&req, "Backup")?;
        // On the leader, first make sure everything committed before this call
        // is applied here (a linearizable read), so the backup is the latest
        // state; on a follower the backup is consistent but may trail.
        if self.ctx.raft.metrics().borrow().current_leader == Some(self.ctx.node_id) {
            self.ctx
                .raft
                .ensure_linearizable()
                .await
                .map_err(|e| Status::unavailable(format!("backup read barrier: {e}")))?;
        }
        // The read lock makes state and applied index one consistent cut.
        let (state, applied) = {
            let guard = self.ctx.state.read().expect("state lock poisoned");
            (guard.clone(), *self.ctx.applied.borrow())
        };
        // Encoded into an unlinked file, then streamed from it in 1 MiB
        // chunks: the node never holds the backup in memory.
        let dir = self.ctx.data_dir.clone();
        let written = tokio::task::spawn_blocking(move || crate::backup::write_to_unlinked_file(&dir, state, applied))
            .await
            .map_err(|e| Status::internal(format!("backup task: {e}")))?;
        let (file, _len) = written.map_err(|e| Status::internal(format!("write backup: {e}")))?;
        let file = tokio::fs::File::from_std(file);
        let chunks = futures::stream::unfold((Some(file), true), move |(file, first)| async move {
            use tokio::io::AsyncReadExt as _;
            let mut file = file?;
            let mut data = vec![0u8; 1 << 20];
            let mut filled = 0;
            while filled < data.len() {
                match file.read(&mut data[filled..]).await {
                    Ok(0) => break,
                    Ok(n) => filled += n,
                    Err(e) => return Some((Err(Status::internal(format!("read backup: {e}"))), (None, false))),
                }
            }
            if filled == 0 && !first {
                return None;
            }
            data.truncate(filled);
            let chunk = BackupChunk {
                applied_index: if first { applied } else { 0 },
                data: data.into(),
                // Restores take backups of any size (in parts).
                max_restore_bytes: if first { u64::MAX } else { 0 },
            };
            Some((Ok(chunk), (Some(file), false)))
        });
        Ok(Response::new(Box::pin(chunks)))
    }

    async fn restore(&self, req: Request<tonic::Streaming<BackupChunk>>) -> Result<Response<RestoreResponse>, Status> {
        require_operator(&req, "Restore")?;
        Ok(Response::new(super::admin_restore::restore(&self.ctx, req.into_inner()).await?))
    }

    async fn register_peer(&self, req: Request<RegisterPeerRequest>) -> Result<Response<RegisterPeerResponse>, Status> {
        require_operator(&req, "RegisterPeer")?;
        let command = super::admin_peers::register_command(&self.ctx, req.into_inner())?;
        super::admin_peers::require_federation_format(&self.ctx).await?;
        self.ctx.write(command).await?;
        Ok(Response::new(RegisterPeerResponse {}))
    }

    async fn set_peer_status(
        &self,
        req: Request<SetPeerStatusRequest>,
    ) -> Result<Response<SetPeerStatusResponse>, Status> {
        require_operator(&req, "SetPeerStatus")?;
        let command = super::admin_peers::set_status_command(&self.ctx, req.get_ref()).await?;
        self.ctx.write(command).await?;
        Ok(Response::new(SetPeerStatusResponse {}))
    }

    async fn remove_peer(&self, req: Request<RemovePeerRequest>) -> Result<Response<RemovePeerResponse>, Status> {
        require_operator(&req, "RemovePeer")?;
        let command = super::admin_peers::remove_command(&self.ctx, req.get_ref()).await?;
        self.ctx.write(command).await?;
        Ok(Response::new(RemovePeerResponse {}))
    }

    async fn list_peers(&self, req: Request<ListPeersRequest>) -> Result<Response<ListPeersResponse>, Status> {
        require_operator(&req, "ListPeers")?;
        Ok(Response::new(super::admin_peers::list(&self.ctx)))
    }

    async fn trigger_snapshot(
        &self,
        req: Request<TriggerSnapshotRequest>,
    ) -> Result<Response<TriggerSnapshotResponse>, Status> {
        require_operator(&req, "TriggerSnapshot")?;
        self.ctx.raft.trigger().snapshot().await.map_err(|e| Status::unavailable(e.to_string()))?;
        Ok(Response::new(TriggerSnapshotResponse {}))
    }
}

/// Leadership transfer and membership removal must run on the leader.
fn require_leader(ctx: &crate::ctx::NodeCtx) -> Result<openraft::RaftMetrics<u64, NodeAddr>, Status> {
    let m = ctx.raft.metrics().borrow().clone();
    if m.current_leader == Some(ctx.node_id) {
        return Ok(m);
    }
    let leader_endpoint = m
        .current_leader
        .and_then(|l| m.membership_config.membership().get_node(&l).map(|n| n.peer.clone()))
        .unwrap_or_default();
    Err(status::with_detail(
        Code::FailedPrecondition,
        format!("not the leader; the leader's peer endpoint is {leader_endpoint:?}"),
        ErrorDetail { reason: "NOT_LEADER".into(), leader_endpoint, ..Default::default() },
    ))
}

/// Hands leadership to `to` (or the most caught-up voter) and waits for it.
pub async fn transfer_leadership(ctx: &crate::ctx::NodeCtx, to: Option<u64>) -> Result<u64, Status> {
    let m = require_leader(ctx)?;
    let membership = m.membership_config.membership().clone();
    let voters: Vec<u64> = membership.voter_ids().filter(|v| *v != ctx.node_id).collect();
    let target = match to {
        Some(t) if voters.contains(&t) => t,
        Some(t) => {
            return Err(status::invalid_field("to_node_id", "NOT_A_VOTER", format!("node {t} is not another voter")));
        }
        None => {
            let matched =
                |id: &u64| m.replication.as_ref().and_then(|r| r.get(id).cloned().flatten()).map_or(0, |l| l.index);
            *voters
                .iter()
                .max_by_key(|v| matched(v))
                .ok_or_else(|| Status::failed_precondition("no other voter to hand leadership to"))?
        }
    };
    // openraft 0.9 has no transfer call, and followers refuse votes while
    // their leader lease (election_timeout_max since the last append) runs.
    // So: stop proposing and heartbeating, keep the other voters from
    // starting elections of their own, let the lease run out, then have the
    // target (whose log matches ours once in-flight appends land) elect.
    let others: Vec<u64> = voters.iter().copied().filter(|v| *v != target).collect();
    ctx.writer.pause(true);
    ctx.raft.runtime_config().heartbeat(false);
    let control = |id: u64, c: ElectionControl| {
        let addr = membership.get_node(&id).map(|n| n.peer.clone()).unwrap_or_default();
        let peers = ctx.peers.clone();
        let incarnation = ctx.incarnation;
        async move {
            match peers.client(id, &addr) {
                Ok(mut client) => client.elect(c.request(incarnation)).await.map(drop),
                Err(e) => Err(Status::unavailable(e.to_string())),
            }
        }
    };
    let suspend_ms = (ctx.leader_lease * 10).as_millis() as u64;
    for o in &others {
        let _ = control(*o, ElectionControl::Suspend { millis: suspend_ms }).await;
    }
    tokio::time::sleep(ctx.leader_lease + std::time::Duration::from_millis(50)).await;
    let elected = control(target, ElectionControl::ElectNow).await;
    let mut metrics = ctx.raft.metrics();
    let waited = tokio::time::timeout(std::time::Duration::from_secs(5), async {
        loop {
            if metrics.borrow().current_leader == Some(target) {
                return;
            }
            if metrics.changed().await.is_err() {
                return;
            }
        }
    })
    .await;
    ctx.raft.runtime_config().heartbeat(true);
    ctx.writer.pause(false);
    for o in &others {
        let _ = control(*o, ElectionControl::Resume).await;
    }
    elected.map_err(|e| Status::unavailable(format!("node {target} did not start an election: {}", e.message())))?;
    match waited {
        Ok(()) if ctx.raft.metrics().borrow().current_leader == Some(target) => Ok(target),
        _ => Err(Status::unavailable(format!("node {target} did not take over within 5 s"))),
    }
}

/// Before `id` is added as a learner: records the incarnation it joins as
/// (cluster version 4), so its answers count from its first one. A member
/// recorded as another incarnation is refused: the node lost its disk and
/// must be removed first, or its old votes would count for the new one.
/// A request without one (`routerctl member add`) is completed from the
/// node's own `Status`.
async fn record_joining_incarnation(
    ctx: &crate::ctx::NodeCtx,
    id: u64,
    addr: &NodeAddr,
    incarnation: u64,
) -> Result<(), Status> {
    if ctx.read(|s| s.cluster_version()) < router_core::state::incarnation::INCARNATION_VERSION {
        return Ok(());
    }
    let incarnation = match incarnation {
        0 => crate::incarnation::ask(ctx, id, &addr.peer).await.ok_or_else(|| {
            Status::unavailable(format!("node {id} at {} did not answer Status as node {id}", addr.peer))
        })?,
        given => given,
    };
    if incarnation == 0 || ctx.read(|s| s.incarnation_of(id)) == Some(incarnation) {
        return Ok(());
    }
    let is_member = ctx.raft.metrics().borrow().membership_config.membership().get_node(&id).is_some();
    if let Some(recorded) = ctx.read(|s| s.refused_incarnation(id, incarnation)).filter(|_| is_member) {
        return Err(crate::incarnation::stale(id, incarnation, recorded));
    }
    ctx.write(Command::SetIncarnation { node: id, incarnation }).await.map(drop)
}

/// Removes a node (voter or learner) through joint consensus, then tells it
/// (a removed node never learns it through Raft). Runs on the leader.
pub async fn remove_member(ctx: &crate::ctx::NodeCtx, id: u64) -> Result<(), Status> {
    let m = require_leader(ctx)?;
    let membership = m.membership_config.membership();
    if membership.get_node(&id).is_none() {
        return Err(status::with_detail(
            Code::NotFound,
            format!("node {id} is not a member"),
            ErrorDetail { reason: "NOT_A_MEMBER".into(), field: "node_id".into(), ..Default::default() },
        ));
    }
    let voters: BTreeSet<u64> = membership.voter_ids().filter(|v| *v != id).collect();
    if voters.is_empty() {
        return Err(Status::failed_precondition("cannot remove the last voter"));
    }
    if id == ctx.node_id {
        return Err(Status::failed_precondition(
            "this node is the leader: transfer leadership first (routerctl leader transfer), then remove it",
        ));
    }
    let change = if membership.voter_ids().any(|v| v == id) {
        // Joint consensus to the smaller voter set; `retain = false` drops
        // the removed voter instead of keeping it as a learner.
        openraft::ChangeMembers::ReplaceAllVoters(voters)
    } else {
        openraft::ChangeMembers::RemoveNodes(BTreeSet::from([id]))
    };
    ctx.raft.change_membership(change, false).await.map_err(raft_status)?;
    // Best effort: if it is down it learns nothing, but no quorum includes it any more.
    if let Some(addr) = membership.get_node(&id).map(|n| n.peer.clone()) {
        let notified = match ctx.peers.client(id, &addr) {
            Ok(mut c) => c.elect(ElectionControl::Removed.request(ctx.incarnation)).await.map(drop),
            Err(e) => Err(Status::unavailable(e.to_string())),
        };
        if let Err(e) = notified {
            tracing::warn!(peer_node_id = id, "removed node not notified: {}", e.message());
        }
    }
    Ok(())
}

/// Media hosts: at most 16 DNS names (optionally `:port`), no schemes or paths.
pub fn validate_media_hosts(hosts: Vec<String>) -> Result<Vec<String>, Status> {
    if hosts.len() > 16 {
        return Err(status::over_limit("media_hosts", 16, hosts.len() as u64));
    }
    for (i, h) in hosts.iter().enumerate() {
        let (name, port) = h.rsplit_once(':').map_or((h.as_str(), None), |(n, p)| (n, Some(p)));
        let name_ok = !name.is_empty()
            && name.len() <= 253
            && name
                .split('.')
                .all(|l| !l.is_empty() && l.len() <= 63 && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'));
        let port_ok = port.is_none_or(|p| p.parse::<u16>().is_ok_and(|p| p > 0));
        if !(name_ok && port_ok) {
            return Err(status::invalid_field(
                format!("media_hosts[{i}]"),
                "BAD_HOST",
                format!("{h:?} is not a host name with an optional :port"),
            ));
        }
    }
    Ok(hosts.into_iter().map(|h| h.to_ascii_lowercase()).collect())
}
