//! Groups: membership (admins only), hub-ordered group messages fanned out
//! as one mailbox entry per member provider.

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
        let group = validate::group_id(&r.group_id)?;
        let creator = validate::user_id("creator_user_id", &r.creator_user_id, &self.ctx.limits)?;
        let members = validate::group_members("members", r.members, &self.ctx.limits)?;
        epoch(self.ctx.write(Command::CreateGroup { provider, creator, group, members }).await?)
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
        epoch(self.ctx.write(Command::ChangeGroup { provider, actor, group, set, remove }).await?)
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
