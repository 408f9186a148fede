//! Directory: users, devices, resolution.

use super::{status, validate};
use crate::ctx::Ctx;
use crate::identity::provider_of;
use router_core::{Command, Outcome};
use router_proto::v1::directory_server::Directory;
use router_proto::v1::*;
use tonic::{Request, Response, Status};

pub struct DirectoryService {
    pub ctx: Ctx,
}

fn done(outcome: Outcome) -> Result<(), Status> {
    match outcome {
        Outcome::Done => Ok(()),
        other => Err(status::unexpected(&other)),
    }
}

#[tonic::async_trait]
impl Directory for DirectoryService {
    #[tracing::instrument(skip_all, fields(provider))]
    async fn register_user(&self, req: Request<RegisterUserRequest>) -> Result<Response<RegisterUserResponse>, Status> {
        let provider = provider_of(&req)?;
        tracing::Span::current().record("provider", provider.as_str());
        let user = validate::user_id("user_id", &req.get_ref().user_id, &self.ctx.limits)?;
        done(self.ctx.write(Command::RegisterUser { provider, user }).await?)?;
        Ok(Response::new(RegisterUserResponse {}))
    }

    async fn deregister_user(
        &self,
        req: Request<DeregisterUserRequest>,
    ) -> Result<Response<DeregisterUserResponse>, Status> {
        let provider = provider_of(&req)?;
        let user = validate::user_id("user_id", &req.get_ref().user_id, &self.ctx.limits)?;
        done(self.ctx.write(Command::DeregisterUser { provider, user }).await?)?;
        Ok(Response::new(DeregisterUserResponse {}))
    }

    async fn register_device(
        &self,
        req: Request<RegisterDeviceRequest>,
    ) -> Result<Response<RegisterDeviceResponse>, Status> {
        let provider = provider_of(&req)?;
        let r = req.get_ref();
        let user = validate::user_id("user_id", &r.user_id, &self.ctx.limits)?;
        let device = validate::device_id("device_id", r.device_id)?;
        let registration_id = validate::registration_id("registration_id", r.registration_id)?;
        done(self.ctx.write(Command::RegisterDevice { provider, user, device, registration_id }).await?)?;
        Ok(Response::new(RegisterDeviceResponse {}))
    }

    async fn remove_device(&self, req: Request<RemoveDeviceRequest>) -> Result<Response<RemoveDeviceResponse>, Status> {
        let provider = provider_of(&req)?;
        let r = req.get_ref();
        let user = validate::user_id("user_id", &r.user_id, &self.ctx.limits)?;
        let device = validate::device_id("device_id", r.device_id)?;
        done(self.ctx.write(Command::RemoveDevice { provider, user, device }).await?)?;
        Ok(Response::new(RemoveDeviceResponse {}))
    }

    async fn resolve(&self, req: Request<ResolveRequest>) -> Result<Response<ResolveResponse>, Status> {
        let provider = provider_of(&req)?;
        self.ctx.require_onboarded(&provider).await?;
        let user = validate::user_id("user_id", &req.get_ref().user_id, &self.ctx.limits)?;
        let found = self
            .ctx
            .read_settled(
                |s| {
                    s.user(&user).map(|rec| ResolveResponse {
                        user_id: user.0.clone(),
                        provider_id: rec.provider.0.clone(),
                        devices: rec
                            .devices
                            .iter()
                            .map(|(d, r)| Device { device_id: *d, registration_id: r.registration_id })
                            .collect(),
                    })
                },
                Option::is_some,
            )
            .await;
        if let Some(found) = found {
            return Ok(Response::new(found));
        }
        // Not local: perhaps a user of a federation peer.
        match crate::federation::edge::route(&self.ctx, &user).await? {
            Some((_, route)) => Ok(Response::new(crate::federation::edge::resolve_response(&user, &route))),
            None => Err(status::rejection(&router_core::Rejection::UserNotFound { user })),
        }
    }
}
