//! Provider RPCs about users served by a federation peer: resolve, claim
//! prekeys, send. Called by the provider-facing handlers once the user is
//! known not to be local.

use super::{Federation, RemoteRoute};
use crate::ctx::Ctx;
use crate::grpc::status;
use router_core::federation::qualified;
use router_core::{Command, DeviceId, Outcome, ProviderId, Rejection, SendEnvelope, UserId};
use router_proto::v1;
use std::sync::Arc;
use tonic::{Code, Status};

/// The peer route of `user`, if federation is configured and a peer serves it.
pub async fn route(ctx: &Ctx, user: &UserId) -> Result<Option<(Arc<Federation>, RemoteRoute)>, Status> {
    let Some(fed) = ctx.federation.clone() else { return Ok(None) };
    Ok(fed.resolve(ctx, user).await?.map(|r| (fed, r)))
}

/// The peer route of `user` when federation is configured and `user` is not
/// registered here (a lagging follower waits briefly before deciding that).
pub async fn route_if_remote(ctx: &Ctx, user: &UserId) -> Result<Option<(Arc<Federation>, RemoteRoute)>, Status> {
    if ctx.federation.is_none() || ctx.read_settled(|s| s.user(user).is_some(), |local| *local).await {
        return Ok(None);
    }
    route(ctx, user).await
}

/// A remote user as providers see it: its provider qualified with the peer.
pub fn resolve_response(user: &UserId, route: &RemoteRoute) -> v1::ResolveResponse {
    v1::ResolveResponse {
        user_id: user.0.clone(),
        provider_id: qualified(&route.provider, &route.peer).0,
        devices: route.devices.iter().map(|(d, r)| v1::Device { device_id: *d, registration_id: *r }).collect(),
    }
}

/// Claims bundles at the owning cluster (the only place its one-time
/// prekeys are handed out).
pub async fn fetch_bundles(
    ctx: &Ctx,
    fed: &Federation,
    route: &RemoteRoute,
    requester: &ProviderId,
    device: Option<DeviceId>,
    user: &UserId,
) -> Result<v1::FetchBundlesResponse, Status> {
    ctx.require_onboarded(requester).await?;
    let peer = ctx
        .read(|s| s.peer(&route.peer).cloned())
        .ok_or_else(|| status::rejection(&Rejection::UnknownPeer { peer: route.peer.clone() }))?;
    let req = v1::FederationFetchBundlesRequest {
        requester_provider_id: requester.0.clone(),
        user_id: user.0.clone(),
        device_id: device.unwrap_or(0),
    };
    let call = |mut c: v1::federation_client::FederationClient<tonic::transport::Channel>| {
        let req = req.clone();
        async move { c.fetch_bundles(req).await }
    };
    let mut answer = fed.call(&peer, call).await?;
    answer.provider_id = qualified(&ProviderId::new(answer.provider_id), &peer.id).0;
    Ok(answer)
}

/// Queues `env` for relay to the owning peer, once the device list matches
/// the peer's (asked again once if the cached copy disagrees).
pub async fn send(
    ctx: &Ctx,
    fed: &Federation,
    route: RemoteRoute,
    env: SendEnvelope,
) -> Result<v1::SendResponse, Status> {
    if env.content_type.is_ephemeral() {
        return Err(status::reason(
            Code::FailedPrecondition,
            "EPHEMERAL_NOT_RELAYED",
            format!(
                "{} is a user of federation peer {}; typing and call signaling are not relayed between clusters",
                env.recipient, route.peer
            ),
        ));
    }
    let route = match check_devices(&route, &env) {
        Ok(()) => route,
        Err(_) => {
            fed.forget(&env.recipient);
            let fresh = fed
                .resolve(ctx, &env.recipient)
                .await?
                .ok_or_else(|| status::rejection(&Rejection::UserNotFound { user: env.recipient.clone() }))?;
            check_devices(&fresh, &env).map_err(|r| status::rejection(&r))?;
            fresh
        }
    };
    let command = Command::RelaySend { peer: route.peer, recipient_provider: route.provider, envelope: env };
    match ctx.write(command).await? {
        Outcome::Sent { seq, accepted_at_ms } => {
            Ok(v1::SendResponse { mailbox_seq: seq, accepted_at_ms, delivered_streams: 0 })
        }
        other => Err(status::unexpected(&other)),
    }
}

/// Signal's 409/410 against the peer's device list (the owning cluster
/// checks again on arrival; a late change there comes back as a report).
fn check_devices(route: &RemoteRoute, env: &SendEnvelope) -> Result<(), Rejection> {
    router_core::state::device_mismatch(route.devices.iter().copied(), env)
}
