//! Groups: membership (admins only), hub-ordered group messages fanned out
//! as one mailbox entry per member provider.
//!
//! With federation, members may be users of peer clusters: such a group is
//! homed here (this cluster orders it) and its messages reach the peers
//! through their outbound queues. A group homed at a peer is named
//! `<group>@<cluster>` here; sends to it are forwarded to the home cluster.

use super::{status, validate};
use crate::ctx::Ctx;
use crate::identity::provider_of;
use router_core::{Command, Outcome, Role};
use router_proto::v1::groups_server::Groups;
use router_proto::v1::*;
use tonic::{Request, Response, Status};

pub struct GroupsService {
    pub ctx: Ctx,
}

fn epoch(outcome: Outcome) -> Result<Response<GroupEpochResponse>, Status> {
    match outcome {
        Outcome::GroupEpoch { epoch } => Ok(Response::new(GroupEpochResponse { epoch })),
        other => Err(status::unexpected(&other)),
    }
}

#[tonic::async_trait]
impl Groups for GroupsService {
    async fn create_group(&self, req: Request<CreateGroupRequest>) -> Result<Response<GroupEpochResponse>, Status> {
        let provider = provider_of(&req)?;
        let r = req.into_inner();
        let group = local_group_id(&r.group_id)?;
        let creator = validate::user_id("creator_user_id", &r.creator_user_id, &self.ctx.limits)?;
        let members = validate::group_members("members", r.members, &self.ctx.limits)?;
        let remote = remote_members(&self.ctx, &members).await?;
        if remote.is_empty() {
            return epoch(self.ctx.write(Command::CreateGroup { provider, creator, group, members }).await?);
        }
        let command = Command::FederatedGroup {
            provider,
            actor: creator,
            group,
            create: true,
            set: members,
            remote,
            remove: vec![],
        };
        epoch(self.ctx.write(command).await?)
    }

    async fn update_group(&self, req: Request<UpdateGroupRequest>) -> Result<Response<GroupEpochResponse>, Status> {
        let provider = provider_of(&req)?;
        let r = req.into_inner();
        let group = validate::group_id(&r.group_id)?;
        let actor = validate::user_id("actor_user_id", &r.actor_user_id, &self.ctx.limits)?;
        let set = validate::group_members("set", r.set, &self.ctx.limits)?;
        let remove = r
            .remove_user_ids
            .iter()
            .enumerate()
            .map(|(i, u)| validate::user_id(&format!("remove_user_ids[{i}]"), u, &self.ctx.limits))
            .collect::<Result<Vec<_>, _>>()?;
        if set.is_empty() && remove.is_empty() {
            return Err(status::invalid_field("set", "EMPTY", "nothing to change"));
        }
        let known_remote = self.ctx.read(|s| s.group_remote_members(&group).cloned()).unwrap_or_default();
        let new: Vec<(router_core::UserId, Role)> =
            set.iter().filter(|(u, _)| !known_remote.contains_key(u)).cloned().collect();
        let remote = remote_members(&self.ctx, &new).await?;
        if remote.is_empty() {
            return epoch(self.ctx.write(Command::ChangeGroup { provider, actor, group, set, remove }).await?);
        }
        epoch(
            self.ctx
                .write(Command::FederatedGroup { provider, actor, group, create: false, set, remote, remove })
                .await?,
        )
    }

    async fn get_group(&self, req: Request<GetGroupRequest>) -> Result<Response<GroupInfo>, Status> {
        let provider = provider_of(&req)?;
        self.ctx.require_onboarded(&provider).await?;
        let group = validate::group_id(&req.get_ref().group_id)?;
        let info = self.ctx.read(|s| {
            s.groups.get(&group).map(|g| GroupInfo {
                group_id: g.id.0.clone(),
                epoch: g.epoch,
                next_seq: g.next_seq,
                members: g
                    .members
                    .iter()
                    .map(|(u, r)| GroupMember {
                        user_id: u.0.clone(),
                        role: match r {
                            Role::Admin => GroupRole::Admin,
                            Role::Member => GroupRole::Member,
                        } as i32,
                    })
                    .collect(),
            })
        });
        info.map(Response::new).ok_or_else(|| status::rejection(&router_core::Rejection::GroupNotFound { group }))
    }

    async fn send_group(&self, req: Request<SendGroupRequest>) -> Result<Response<SendGroupResponse>, Status> {
        let sender = provider_of(&req)?;
        let r = req.into_inner();
        if let Some((group, home)) = r.group_id.rsplit_once('@') {
            let (group, home) = (group.to_string(), home.to_string());
            return forward_send_group(&self.ctx, sender, group, &home, r).await.map(Response::new);
        }
        let mut send = validate::group_send(sender, r, &self.ctx.limits)?;
        send.traceparent = crate::telemetry::current_traceparent();
        match self.ctx.write(Command::SendGroup(send)).await? {
            Outcome::GroupSent { group_seq, epoch, accepted_at_ms } => {
                Ok(Response::new(SendGroupResponse { group_seq, epoch, accepted_at_ms }))
            }
            other => Err(status::unexpected(&other)),
        }
    }
}

/// A group id for a group homed here: no '@' (that names a peer's group).
fn local_group_id(s: &str) -> Result<router_core::GroupId, Status> {
    let group = validate::group_id(s)?;
    if group.0.contains('@') {
        return Err(status::invalid_field(
            "group_id",
            "BAD_CHARACTERS",
            "'@' is reserved: <group>@<cluster> names a group homed at a federation peer",
        ));
    }
    Ok(group)
}

/// The members that are not local users, with the peer cluster serving
/// each; USER_NOT_FOUND for a member no cluster knows.
async fn remote_members(
    ctx: &Ctx,
    members: &[(router_core::UserId, Role)],
) -> Result<Vec<(router_core::UserId, router_core::ClusterId)>, Status> {
    let mut remote = Vec::new();
    for (user, _) in members {
        if let Some((_, route)) = crate::federation::edge::route_if_remote(ctx, user).await? {
            remote.push((user.clone(), route.peer));
        }
    }
    Ok(remote)
}

/// A send to a group homed at peer `home`: ordered there, answered with its
/// group sequence (the home cluster's order is every member's order).
async fn forward_send_group(
    ctx: &Ctx,
    sender: router_core::ProviderId,
    group: String,
    home: &str,
    mut r: SendGroupRequest,
) -> Result<SendGroupResponse, Status> {
    ctx.require_onboarded(&sender).await?;
    let Some(fed) = ctx.federation.clone() else {
        return Err(status::rejection(&router_core::Rejection::GroupNotFound {
            group: router_core::GroupId::new(r.group_id),
        }));
    };
    // Validated as a local send would be (sizes, ids), before it leaves; and
    // the sending user must be the caller's: the home cluster cannot check that.
    let send = validate::group_send(sender.clone(), r.clone(), &ctx.limits)?;
    let owner = ctx.read_settled(|s| s.user(&send.sender_user).map(|u| u.provider.clone()), Option::is_some).await;
    match owner {
        Some(p) if p == sender => {}
        Some(_) => return Err(status::rejection(&router_core::Rejection::NotOwner { user: send.sender_user })),
        None => return Err(status::rejection(&router_core::Rejection::UserNotFound { user: send.sender_user })),
    }
    let home = router_core::ClusterId::new(home);
    let peer = match ctx.read(|s| s.peer(&home).cloned()) {
        Some(p) if p.status == router_core::PeerStatus::Active => p,
        Some(_) => return Err(status::rejection(&router_core::Rejection::PeerSuspended { peer: home })),
        None => return Err(status::rejection(&router_core::Rejection::UnknownPeer { peer: home })),
    };
    r.group_id = group;
    let req = FederationSendGroupRequest { sender_provider_id: sender.0, send: Some(r) };
    let call = |mut c: federation_client::FederationClient<tonic::transport::Channel>| {
        let req = req.clone();
        async move { c.send_group(req).await }
    };
    fed.call(&peer, call).await
}
