//! Groups: membership (admins only), hub-ordered group messages fanned out
//! as one mailbox entry per member provider.

use super::{status, validate};
use crate::ctx::Ctx;
use crate::identity::provider_of;
use router_core::{Command, GroupId, GroupSend, Outcome, Role, UserId};
use router_proto::v1::groups_server::Groups;
use router_proto::v1::*;
use tonic::{Request, Response, Status};

pub struct GroupsService {
    pub ctx: Ctx,
}

fn group_id(s: &str) -> Result<GroupId, Status> {
    if s.is_empty() || s.len() > 64 || !s.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(status::invalid_field(
            "group_id",
            "BAD_CHARACTERS",
            "group_id must be 1..=64 bytes of printable ASCII",
        ));
    }
    Ok(GroupId::new(s))
}

fn members(field: &str, list: Vec<GroupMember>, ctx: &Ctx) -> Result<Vec<(UserId, Role)>, Status> {
    let mut out = Vec::with_capacity(list.len());
    for (i, m) in list.into_iter().enumerate() {
        let user = validate::user_id(&format!("{field}[{i}].user_id"), &m.user_id, &ctx.limits)?;
        let role = match GroupRole::try_from(m.role) {
            Ok(GroupRole::Admin) => Role::Admin,
            Ok(GroupRole::Member) | Ok(GroupRole::Unspecified) => Role::Member,
            Err(_) => return Err(status::invalid_field(format!("{field}[{i}].role"), "OUT_OF_RANGE", "unknown role")),
        };
        out.push((user, role));
    }
    Ok(out)
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
        let group = group_id(&r.group_id)?;
        let creator = validate::user_id("creator_user_id", &r.creator_user_id, &self.ctx.limits)?;
        let members = members("members", r.members, &self.ctx)?;
        epoch(self.ctx.write(Command::CreateGroup { provider, creator, group, members }).await?)
    }

    async fn update_group(&self, req: Request<UpdateGroupRequest>) -> Result<Response<GroupEpochResponse>, Status> {
        let provider = provider_of(&req)?;
        let r = req.into_inner();
        let group = group_id(&r.group_id)?;
        let actor = validate::user_id("actor_user_id", &r.actor_user_id, &self.ctx.limits)?;
        let set = members("set", r.set, &self.ctx)?;
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
        let group = group_id(&req.get_ref().group_id)?;
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
        let limits = &self.ctx.limits;
        let group = group_id(&r.group_id)?;
        let message_id = validate::message_id(&r.message_id, limits)?;
        let sender_user = validate::user_id("sender_user_id", &r.sender_user_id, limits)?;
        let sender_device = validate::device_id("sender_device_id", r.sender_device_id)?;
        let content_type = validate::content_type(r.content_type)?;
        let ttl_ms = validate::ttl_ms(r.ttl_seconds, limits)?;
        if r.ciphertext.is_empty() {
            return Err(status::invalid_field("ciphertext", "EMPTY", "ciphertext is empty"));
        }
        let total = r.ciphertext.len()
            + r.per_device.iter().map(|p| p.part.as_ref().map_or(0, |p| p.ciphertext.len())).sum::<usize>();
        if total > limits.max_envelope_bytes {
            return Err(status::over_limit("ciphertext", limits.max_envelope_bytes as u64, total as u64));
        }
        let mut per_device = Vec::with_capacity(r.per_device.len());
        for (i, p) in r.per_device.into_iter().enumerate() {
            let user = validate::user_id(&format!("per_device[{i}].user_id"), &p.user_id, limits)?;
            let part = p
                .part
                .ok_or_else(|| status::invalid_field(format!("per_device[{i}].part"), "EMPTY", "part is required"))?;
            let parsed = validate::parts(vec![part], limits).map_err(|_| {
                status::invalid_field(format!("per_device[{i}].part"), "BAD_PART", "malformed device part")
            })?;
            per_device.extend(parsed.into_iter().map(|p| (user.clone(), p)));
        }
        let send = GroupSend {
            sender,
            sender_user,
            sender_device,
            group,
            message_id,
            content_type,
            ttl_ms,
            ciphertext: r.ciphertext,
            per_device,
            traceparent: crate::telemetry::current_traceparent(),
        };
        match self.ctx.write(Command::SendGroup(send)).await? {
            Outcome::GroupSent { group_seq, epoch, accepted_at_ms } => {
                Ok(Response::new(SendGroupResponse { group_seq, epoch, accepted_at_ms }))
            }
            other => Err(status::unexpected(&other)),
        }
    }
}
