//! Admin RPCs for federation peers: register (behind the format gate),
//! suspend / resume, remove, list.

use super::status;
use crate::ctx::Ctx;
use crate::identity::check_provider_id;
use router_core::{ClusterId, Command, PeerStatus, ProviderId};
use router_proto::v1::*;
use tonic::{Code, Status};

/// Most endpoints, providers and CA bytes one registration may carry.
const MAX_PEER_ENDPOINTS: usize = 16;
const MAX_PEER_PROVIDERS: usize = 1024;
const MAX_CA_PEM_BYTES: usize = 64 * 1024;

fn cluster_id(s: &str) -> Result<ClusterId, Status> {
    check_provider_id(s).map_err(|e| status::invalid_field("cluster_id", "INVALID", e))?;
    Ok(ClusterId::new(s))
}

/// The command for a registration, checked field by field.
pub fn register_command(ctx: &Ctx, r: RegisterPeerRequest) -> Result<Command, Status> {
    let Some(fed) = &ctx.federation else {
        return Err(status::reason(
            Code::FailedPrecondition,
            "FEDERATION_NOT_CONFIGURED",
            "this node has no [federation] section (cluster id, listener, cluster certificate)",
        ));
    };
    let peer = cluster_id(&r.cluster_id)?;
    if &peer == fed.cluster_id() {
        return Err(status::invalid_field("cluster_id", "SELF", "a cluster cannot be its own federation peer"));
    }
    if r.endpoints.is_empty() || r.endpoints.len() > MAX_PEER_ENDPOINTS {
        return Err(status::invalid_field(
            "endpoints",
            "OUT_OF_RANGE",
            format!("1..={MAX_PEER_ENDPOINTS} endpoints (host:port) are required"),
        ));
    }
    for e in &r.endpoints {
        let ok = e.rsplit_once(':').is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0));
        if !ok || e.len() > 255 || e.chars().any(|c| c.is_whitespace() || c == '/') {
            return Err(status::invalid_field("endpoints", "INVALID", format!("{e:?} is not host:port")));
        }
    }
    if r.ca_pem.len() > MAX_CA_PEM_BYTES {
        return Err(status::over_limit("ca_pem", MAX_CA_PEM_BYTES as u64, r.ca_pem.len() as u64));
    }
    {
        use rustls::pki_types::CertificateDer;
        use rustls::pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(r.ca_pem.as_bytes()) {
            let cert = cert.map_err(|e| status::invalid_field("ca_pem", "INVALID", format!("not PEM: {e}")))?;
            roots
                .add(cert)
                .map_err(|e| status::invalid_field("ca_pem", "INVALID", format!("not a CA certificate: {e}")))?;
        }
        if roots.is_empty() {
            return Err(status::invalid_field("ca_pem", "EMPTY", "no certificate in ca_pem"));
        }
    }
    if r.provider_ids.is_empty() || r.provider_ids.len() > MAX_PEER_PROVIDERS {
        return Err(status::invalid_field(
            "provider_ids",
            "OUT_OF_RANGE",
            format!("1..={MAX_PEER_PROVIDERS} provider ids are required"),
        ));
    }
    let mut providers = Vec::new();
    for p in &r.provider_ids {
        check_provider_id(p).map_err(|e| status::invalid_field("provider_ids", "INVALID", e))?;
        if ctx.read(|s| s.provider(&ProviderId::new(p)).is_some()) {
            return Err(status::invalid_field(
                "provider_ids",
                "LOCAL_PROVIDER",
                format!("{p} is a provider of this cluster; a peer serves its own providers"),
            ));
        }
        providers.push(ProviderId::new(p));
    }
    Ok(Command::RegisterPeer {
        peer,
        endpoints: r.endpoints,
        ca_pem: r.ca_pem,
        providers,
        max_queue: r.max_queued_entries,
    })
}

/// Federation commands are written in a format older builds cannot read:
/// refused until every member runs a build that reads it.
pub async fn require_federation_format(ctx: &Ctx) -> Result<(), Status> {
    every_member_reads(ctx, router_raft::FEDERATION_FORMAT).await
}

/// Every other member runs a build that reads data format `needed` (asked
/// through its admin `Status`): `FAILED_PRECONDITION` / `CLUSTER_NOT_UPGRADED`
/// if one does not, `UNAVAILABLE` / `MEMBER_UNREACHABLE` if one cannot be asked.
pub async fn every_member_reads(ctx: &Ctx, needed: u8) -> Result<(), Status> {
    every_member_supports(ctx, "data format", u32::from(needed), |s| s.format_version).await
}

/// Every other member runs a build that applies cluster version `needed`.
pub async fn every_member_applies(ctx: &Ctx, needed: u32) -> Result<(), Status> {
    every_member_supports(ctx, "cluster version", needed, |s| s.supported_cluster_version).await
}

/// Every other member's `Status` shows at least `needed` in the field `of` reads.
async fn every_member_supports(
    ctx: &Ctx,
    what: &str,
    needed: u32,
    of: impl Fn(&router_proto::v1::StatusResponse) -> u32,
) -> Result<(), Status> {
    let members: Vec<(u64, String)> = {
        let m = ctx.raft.metrics().borrow().clone();
        m.membership_config.membership().nodes().map(|(id, a)| (*id, a.peer.clone())).collect()
    };
    for (id, addr) in members {
        if id != ctx.node_id {
            node_supports(ctx, id, &addr, what, needed, &of).await?;
        }
    }
    Ok(())
}

/// Node `id` (peer endpoint `addr`) shows at least `needed` in the `Status`
/// field `of` reads (`what` names it in the refusal).
pub async fn node_supports(
    ctx: &Ctx,
    id: u64,
    addr: &str,
    what: &str,
    needed: u32,
    of: impl Fn(&router_proto::v1::StatusResponse) -> u32,
) -> Result<(), Status> {
    let answer = match ctx.peers.admin(addr) {
        Ok(mut c) => c.status(StatusRequest {}).await.map(|r| of(&r.into_inner())),
        Err(e) => Err(Status::unavailable(e.to_string())),
    };
    match answer {
        Ok(v) if v >= needed => Ok(()),
        Ok(v) => Err(status::reason(
            Code::FailedPrecondition,
            "CLUSTER_NOT_UPGRADED",
            format!("node {id} runs a build that supports {what} {v}; this needs {needed}: upgrade it first"),
        )),
        Err(e) => Err(status::reason(
            Code::Unavailable,
            "MEMBER_UNREACHABLE",
            format!("cannot check node {id}'s build: {}", e.message()),
        )),
    }
}

/// A peer command for a registered peer, behind the format gate: an
/// unknown peer is refused here, before anything (in the newer format)
/// enters the log.
async fn known_peer(ctx: &Ctx, id: &str) -> Result<ClusterId, Status> {
    let peer = cluster_id(id)?;
    if ctx.read_settled(|s| s.peer(&peer).is_some(), |known| *known).await {
        require_federation_format(ctx).await?;
        Ok(peer)
    } else {
        Err(status::rejection(&router_core::Rejection::UnknownPeer { peer }))
    }
}

pub async fn set_status_command(ctx: &Ctx, r: &SetPeerStatusRequest) -> Result<Command, Status> {
    let status = if r.suspended { PeerStatus::Suspended } else { PeerStatus::Active };
    Ok(Command::SetPeerStatus { peer: known_peer(ctx, &r.cluster_id).await?, status })
}

pub async fn remove_command(ctx: &Ctx, r: &RemovePeerRequest) -> Result<Command, Status> {
    Ok(Command::RemovePeer { peer: known_peer(ctx, &r.cluster_id).await? })
}

pub fn list(ctx: &Ctx) -> ListPeersResponse {
    let is_leader = ctx.raft.metrics().borrow().current_leader == Some(ctx.node_id);
    let peers = ctx.read(|s| {
        s.peers()
            .map(|p| {
                let queue = router_core::federation::outbound_queue(&p.id);
                let link = ctx.federation.as_ref().map(|f| f.link(&p.id)).unwrap_or_default();
                PeerInfo {
                    cluster_id: p.id.0.clone(),
                    endpoints: p.endpoints.clone(),
                    provider_ids: p.providers.iter().map(|x| x.0.clone()).collect(),
                    status: p.status.as_str().into(),
                    queue_depth: s.mailbox_depth(&queue) as u64,
                    oldest_queued_age_ms: s.mailbox_oldest_ms(&queue).map_or(0, |t| s.clock_ms.saturating_sub(t)),
                    link: match (is_leader, link.up) {
                        (false, _) => "not-leader",
                        (true, None) => "idle",
                        (true, Some(true)) => "up",
                        (true, Some(false)) => "down",
                    }
                    .into(),
                    failures: link.failures,
                    last_error: link.last_error,
                    registered_at_ms: p.registered_at_ms,
                    max_queued_entries: p.max_queue,
                }
            })
            .collect()
    });
    ListPeersResponse {
        cluster_id: ctx.federation.as_ref().map(|f| f.cluster_id().0.clone()).unwrap_or_default(),
        peers,
    }
}
