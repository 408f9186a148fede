//! Prekeys: verified uploads, exactly-once claims, counts.

use super::{status, validate};
use crate::ctx::Ctx;
use crate::identity::provider_of;
use router_core::{Command, Outcome, Rejection};
use router_proto::v1::prekeys_server::Prekeys;
use router_proto::v1::*;
use tonic::{Request, Response, Status};

pub struct PrekeysService {
    pub ctx: Ctx,
}

#[tonic::async_trait]
impl Prekeys for PrekeysService {
    async fn upload_prekeys(
        &self,
        req: Request<UploadPrekeysRequest>,
    ) -> Result<Response<UploadPrekeysResponse>, Status> {
        let provider = provider_of(&req)?;
        let r = req.into_inner();
        let user = validate::user_id("user_id", &r.user_id, &self.ctx.limits)?;
        let device = validate::device_id("device_id", r.device_id)?;
        // Signatures are verified here, off the replicated path.
        let upload = validate::upload(r, &self.ctx.limits)?;
        match self.ctx.write(Command::UploadPrekeys { provider, user, device, upload }).await? {
            Outcome::KeysStored { one_time_remaining, kyber_one_time_remaining } => {
                Ok(Response::new(UploadPrekeysResponse {
                    one_time_prekeys_remaining: one_time_remaining,
                    kyber_one_time_prekeys_remaining: kyber_one_time_remaining,
                }))
            }
            other => Err(status::unexpected(&other)),
        }
    }

    async fn fetch_bundles(&self, req: Request<FetchBundlesRequest>) -> Result<Response<FetchBundlesResponse>, Status> {
        let requester = provider_of(&req)?;
        let r = req.get_ref();
        let user = validate::user_id("user_id", &r.user_id, &self.ctx.limits)?;
        let device = match r.device_id {
            0 => None,
            d => Some(validate::device_id("device_id", d)?),
        };
        if let Some((fed, route)) = crate::federation::edge::route_if_remote(&self.ctx, &user).await? {
            let answer =
                crate::federation::edge::fetch_bundles(&self.ctx, &fed, &route, &requester, device, &user).await?;
            return Ok(Response::new(answer));
        }
        let replaying = crate::mutation::active() == Some(crate::mutation::Mutation::ReplayPrekey);
        if let Some(answer) = replaying.then(|| crate::mutation::replayed_claim(&user.0)).flatten() {
            return Ok(Response::new(answer));
        }
        // Always through the log: a lease or local read could hand a key out twice.
        match self.ctx.write(Command::ClaimPrekeys { requester, user: user.clone(), device }).await? {
            Outcome::Bundles { provider, bundles } => {
                let answer = FetchBundlesResponse {
                    user_id: user.0,
                    provider_id: provider.0,
                    bundles: bundles.iter().map(super::wire::bundle).collect(),
                };
                if replaying {
                    crate::mutation::remember_claim(&answer.user_id, &answer);
                }
                Ok(Response::new(answer))
            }
            other => Err(status::unexpected(&other)),
        }
    }

    async fn prekey_count(&self, req: Request<PrekeyCountRequest>) -> Result<Response<PrekeyCountResponse>, Status> {
        let provider = provider_of(&req)?;
        self.ctx.require_onboarded(&provider).await?;
        let r = req.get_ref();
        let user = validate::user_id("user_id", &r.user_id, &self.ctx.limits)?;
        let device = validate::device_id("device_id", r.device_id)?;
        let answer = self
            .ctx
            .read_settled(
                |s| {
                    let rec = s.user(&user).ok_or_else(|| Rejection::UserNotFound { user: user.clone() })?;
                    if rec.provider != provider {
                        return Err(Rejection::NotOwner { user: user.clone() });
                    }
                    let dev = rec
                        .devices
                        .get(&device)
                        .ok_or_else(|| Rejection::DeviceNotFound { user: user.clone(), device })?;
                    Ok(match &dev.keys {
                        Some(k) => PrekeyCountResponse {
                            one_time_prekeys_remaining: k.one_time.len() as u32,
                            kyber_one_time_prekeys_remaining: k.kyber_one_time.len() as u32,
                            has_signed_prekey: true,
                            has_kyber_last_resort: k.kyber_last_resort.is_some(),
                        },
                        None => PrekeyCountResponse::default(),
                    })
                },
                Result::is_ok,
            )
            .await;
        answer.map(Response::new).map_err(|r| status::rejection(&r))
    }
}
