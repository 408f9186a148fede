//! Resolving a user at the peer clusters: the route cache, then every active
//! peer at once, one question per user at a time. Apart from `mod.rs`, which
//! holds the federation's state, so that state does not depend on the node
//! context (`ctx` holds it).

use super::{Asking, Federation, RemoteRoute, Resolution};
use crate::ctx::Ctx;
use crate::grpc::status;
use router_core::{PeerRecord, PeerStatus, ProviderId, UserId};
use router_proto::v1::federation_client::FederationClient;
use tonic::transport::Channel;
use tonic::{Code, Status};

impl Federation {
    /// Where `user` lives among the active peers, asked of all of them at
    /// once (answers cached for `route_cache_ttl`, and used past it while no
    /// peer can be asked). `Ok(None)`: no peer serves the user. UNAVAILABLE
    /// when none claimed it and some peer could not be asked.
    pub async fn resolve(&self, ctx: &Ctx, user: &UserId) -> Result<Option<RemoteRoute>, Status> {
        let cached = self.routes.lock().expect("routes lock").get(user).cloned();
        // Only while the peer is still registered, active and serving that provider.
        let cached = cached.filter(|(_, route)| {
            ctx.read(|s| {
                s.peer(&route.peer)
                    .is_some_and(|p| p.status == PeerStatus::Active && p.providers.contains(&route.provider))
            })
        });
        if let Some((at, route)) = &cached
            && at.elapsed() < self.cfg.route_cache_ttl
        {
            return Ok(Some(route.clone()));
        }
        match self.ask_peers_once(ctx, user).await {
            // Stale if unreachable: a link outage must not stop sends to users
            // already known. The owning cluster checks the devices again on
            // arrival and reports a refusal back to the sender.
            Err(e) => match cached {
                Some((_, route)) => {
                    tracing::debug!(%user, peer_cluster = %route.peer, "peers unreachable; using a stale resolution");
                    Ok(Some(route))
                }
                None => Err(e),
            },
            answer => answer,
        }
    }

    /// `ask_peers`, but one question per user at a time: concurrent callers
    /// share the answer of the one that asks.
    async fn ask_peers_once(&self, ctx: &Ctx, user: &UserId) -> Resolution {
        let role = {
            let mut resolving = self.resolving.lock().expect("resolving lock");
            match resolving.get(user) {
                // Still being asked (the asker has not gone away).
                Some(answer) if answer.has_changed().is_ok() => Err(answer.clone()),
                _ => {
                    let (tx, rx) = tokio::sync::watch::channel(None);
                    resolving.insert(user.clone(), rx.clone());
                    Ok((tx, rx))
                }
            }
        };
        match role {
            Ok((tx, answer)) => {
                // Removes the entry however this ends (the caller may be cancelled).
                let _asking = Asking { fed: self, user, answer };
                let answer = self.ask_peers(ctx, user).await;
                tx.send_replace(Some(answer.clone()));
                answer
            }
            Err(mut rx) => {
                let shared = rx.wait_for(Option::is_some).await.ok().and_then(|answer| answer.clone());
                match shared {
                    Some(answer) => answer,
                    // The asker's call was cancelled before it had an answer: ask ourselves.
                    None => self.ask_peers(ctx, user).await,
                }
            }
        }
    }

    async fn ask_peers(&self, ctx: &Ctx, user: &UserId) -> Resolution {
        let peers: Vec<PeerRecord> =
            ctx.read(|s| s.peers().filter(|p| p.status == PeerStatus::Active).cloned().collect());
        let asks = peers.iter().map(|peer| async move {
            let req = router_proto::v1::FederationResolveRequest { user_id: user.0.clone() };
            let call = |mut c: FederationClient<Channel>| {
                let req = req.clone();
                async move { c.resolve(req).await }
            };
            (peer, self.call(peer, call).await)
        });
        let mut unreachable = Vec::new();
        for (peer, answer) in futures::future::join_all(asks).await {
            match answer {
                Ok(r) => {
                    let provider = ProviderId::new(r.provider_id);
                    // A peer answers only for providers it is registered as serving.
                    if !peer.providers.contains(&provider) {
                        tracing::warn!(peer_cluster = %peer.id, %provider, "peer resolved a user of a provider it is not registered for");
                        continue;
                    }
                    let mut devices: Vec<(u32, u32)> =
                        r.devices.iter().map(|d| (d.device_id, d.registration_id)).collect();
                    devices.sort_unstable();
                    let route = RemoteRoute { peer: peer.id.clone(), provider, devices };
                    self.remember(user, &route);
                    return Ok(Some(route));
                }
                Err(s) if s.code() == Code::NotFound => {}
                Err(s) => unreachable.push(format!("{}: {}", peer.id, s.message())),
            }
        }
        if unreachable.is_empty() {
            Ok(None)
        } else {
            Err(status::reason(
                Code::Unavailable,
                "PEER_UNAVAILABLE",
                format!(
                    "user {user} is not local and not every federation peer could be asked: {}",
                    unreachable.join("; ")
                ),
            ))
        }
    }
}
