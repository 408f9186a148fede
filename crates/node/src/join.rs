//! Cluster formation through seeds (Kubernetes StatefulSets): no config
//! lists the members; every pod gets the same seed list (all pods' peer DNS
//! names) and works out what to do from what the seeds say.
//!
//! ```text
//! has Raft state?        yes -> nothing (restart; Raft takes it from here)
//! a seed knows a leader? yes -> join: (remove my old incarnation if listed) -> AddLearner (waits
//!                               until caught up) -> ChangeMembership (promote)
//! node 1 with bootstrap, every other seed answered, none knows a cluster
//!                        yes -> initialize a one-node cluster; the others join it
//! otherwise               -> retry every 2 s
//! ```
//!
//! A seed that does not answer is never taken as "no cluster": node 1 with
//! a lost disk must not start a second cluster beside a live one.
//!
//! Scale-down: the seed list is the desired membership. The leader removes
//! members whose peer endpoint is no longer a seed ([`reconcile`]), so
//! lowering the replica count (which re-renders the seeds) removes the
//! nodes that went away.

use crate::config::Config;
use crate::ctx::Ctx;
use router_core::{Command, ProviderId};
use router_proto::v1::{
    AddLearnerRequest, ChangeMembershipRequest, NodeInfo, RemoveMemberRequest, StatusRequest, StatusResponse,
};
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

const RETRY: Duration = Duration::from_secs(2);

pub async fn run(ctx: Ctx, cfg: Config) {
    match ctx.raft.is_initialized().await {
        Ok(true) => {
            if cfg.bootstraps() {
                onboard_initial_providers(&ctx, &cfg).await;
            }
            // A node that stopped between being added as a learner and its
            // promotion goes on to be promoted, and so does one that the
            // cluster records as another incarnation (it lost its disk, was
            // sent entries, and restarted before it rejoined); anything else
            // is a restart.
            let m = ctx.raft.metrics().borrow().clone();
            let learner = m.membership_config.membership().learner_ids().any(|l| l == cfg.node_id);
            let replaced = ctx.read(|s| s.incarnation_of(cfg.node_id)).is_some_and(|r| r != ctx.incarnation);
            if !(learner || replaced) || ctx.removed.load(Ordering::SeqCst) {
                return;
            }
        }
        Ok(false) => {}
        Err(e) => {
            tracing::error!("failed to read raft state: {e}");
            return;
        }
    }
    let mut shutdown = ctx.shutdown.clone();
    loop {
        match attempt(&ctx, &cfg).await {
            Ok(true) => return,
            Ok(false) => {}
            Err(e) => tracing::warn!("failed to join through seeds: {e}; retrying"),
        }
        tokio::select! {
            _ = tokio::time::sleep(RETRY) => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
    }
}

/// One round: true when this node is now part of a cluster.
/// What the other nodes say about themselves (admin `Status`), asked once
/// each: the answers, and whether every one of them answered.
pub(crate) async fn survey(ctx: &Ctx, peers: Vec<String>) -> (Vec<StatusResponse>, bool) {
    let mut answers = Vec::new();
    let mut all_answered = true;
    for peer in &peers {
        let answer = match ctx.peers.admin(peer) {
            Ok(mut admin) => admin.status(StatusRequest {}).await.map(|s| s.into_inner()),
            Err(e) => Err(tonic::Status::unavailable(e.to_string())),
        };
        match answer {
            Ok(s) => answers.push(s),
            Err(status) => {
                tracing::debug!(seed = %peer, "did not answer: {}", status.message());
                all_answered = false;
            }
        }
    }
    (answers, all_answered)
}

async fn attempt(ctx: &Ctx, cfg: &Config) -> Result<bool, String> {
    let others: Vec<String> = cfg.seeds.iter().filter(|s| **s != cfg.advertise.peer).cloned().collect();
    let (answers, all_answered) = survey(ctx, others).await;
    if let Some(s) = answers.iter().find(|s| s.has_leader && !s.voters.is_empty()) {
        let leader = s
            .voters
            .iter()
            .chain(&s.learners)
            .find(|n| n.node_id == s.leader_id)
            .map(|n| n.peer_endpoint.clone())
            .ok_or("the seed's leader has no address")?;
        join(ctx, cfg, &leader, s).await?;
        return Ok(true);
    }
    if cfg.bootstraps() && all_answered && answers.iter().all(|s| s.voters.is_empty()) {
        let members = BTreeMap::from([(cfg.node_id, cfg.advertise.clone())]);
        ctx.raft.initialize(members).await.map_err(|e| e.to_string())?;
        tracing::info!("no seed knew a cluster: initialized a new one; the other nodes join it");
        // Alone in it: the cluster starts at this build's cluster version.
        let raise = Command::SetClusterVersion { version: router_core::CLUSTER_VERSION };
        if let Err(e) = ctx.writer.submit_patiently(raise).await {
            tracing::error!("failed to set the cluster version: {e}");
        }
        crate::incarnation::record_missing(ctx).await;
        if let Err(e) = ctx.writer.submit_patiently(Command::SetLimits { limits: cfg.replicated_limits.clone() }).await
        {
            tracing::error!("failed to set replicated limits: {e}");
        }
        onboard_initial_providers(ctx, cfg).await;
        return Ok(true);
    }
    Ok(false)
}

async fn join(ctx: &Ctx, cfg: &Config, leader: &str, seen: &StatusResponse) -> Result<(), String> {
    let me = cfg.node_id;
    let mut admin = ctx.peers.admin(leader).map_err(|e| e.to_string())?;
    // Listed, but with a local log: an earlier attempt of ours got this node
    // added as a learner (the promotion failed, e.g. while another node's
    // change was in progress). An empty node under a listed id, or one the
    // cluster records as another incarnation (it may have been sent entries
    // since it came back), lost its disk.
    let has_local_log = ctx.raft.metrics().borrow().last_log_index.is_some();
    let mine = seen.voters.iter().chain(&seen.learners).find(|n| n.node_id == me);
    let replaced = mine.is_some_and(|n| n.incarnation != 0 && n.incarnation != ctx.incarnation);
    let listed = mine.is_some() && (!has_local_log || replaced);
    let already_learner = has_local_log && !replaced && seen.learners.iter().any(|n| n.node_id == me);
    ctx.joining.store(true, Ordering::SeqCst);
    let result = async {
        if listed {
            // This id is a member but this node has no state: its disk was lost.
            // Rejoin as a fresh member; the old incarnation's votes must not count.
            tracing::warn!("joining with an empty disk under an id the cluster lists: replacing it");
            admin.remove_member(RemoveMemberRequest { node_id: me }).await.map_err(|e| e.message().to_string())?;
        }
        let node = NodeInfo {
            node_id: me,
            peer_endpoint: cfg.advertise.peer.clone(),
            provider_endpoint: cfg.advertise.provider.clone(),
            incarnation: ctx.incarnation,
        };
        if !already_learner {
            // Blocks until the learner caught up with the leader's log.
            admin.add_learner(AddLearnerRequest { node: Some(node) }).await.map_err(|e| e.message().to_string())?;
        }
        let status = admin.status(StatusRequest {}).await.map_err(|e| e.message().to_string())?.into_inner();
        let mut voters: Vec<u64> = status.voters.iter().map(|v| v.node_id).chain([me]).collect();
        voters.sort_unstable();
        voters.dedup();
        admin
            .change_membership(ChangeMembershipRequest { voter_ids: voters, remove_unlisted: false })
            .await
            .map_err(|e| e.message().to_string())?;
        Ok::<(), String>(())
    }
    .await;
    ctx.joining.store(false, Ordering::SeqCst);
    result?;
    tracing::info!(leader_id = leader, "joined the cluster as a voter");
    Ok(())
}

/// Static membership (`initial_members`): if the cluster records another
/// incarnation under this node's id, the disk was lost; the node removes its
/// old incarnation and joins again as a learner, then a voter, as in seed
/// mode. Ends once the cluster records this incarnation, or tells that it
/// keeps no records (below cluster version 4; a cluster forming records its
/// members shortly after).
pub async fn rejoin_if_replaced(ctx: Ctx, cfg: Config) {
    let me = cfg.node_id;
    let others: Vec<String> =
        cfg.initial_members.iter().filter(|(id, _)| **id != me).map(|(_, a)| a.peer.clone()).collect();
    let mut shutdown = ctx.shutdown.clone();
    loop {
        if ctx.read(|s| s.incarnation_of(me)) == Some(ctx.incarnation) || ctx.removed.load(Ordering::SeqCst) {
            return;
        }
        let (answers, _) = survey(&ctx, others.clone()).await;
        if let Some(seen) = answers.iter().find(|s| s.has_leader && !s.voters.is_empty()) {
            if seen.cluster_version < router_core::state::incarnation::INCARNATION_VERSION {
                return;
            }
            let recorded = seen.voters.iter().chain(&seen.learners).find(|n| n.node_id == me).map(|n| n.incarnation);
            match recorded {
                Some(r) if r == ctx.incarnation => return,
                Some(r) if r != 0 => {
                    tracing::warn!(
                        recorded = r,
                        incarnation = ctx.incarnation,
                        "the cluster records another incarnation of this node id (its disk was lost): rejoining"
                    );
                    let leader = seen.voters.iter().chain(&seen.learners).find(|n| n.node_id == seen.leader_id);
                    let joined = match leader {
                        Some(leader) => join(&ctx, &cfg, &leader.peer_endpoint, seen).await,
                        None => Err("the leader has no address".into()),
                    };
                    match joined {
                        Ok(()) => return,
                        Err(e) => tracing::warn!("failed to rejoin: {e}; retrying"),
                    }
                }
                _ => {}
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(RETRY) => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
    }
}

/// Idempotent: providers already onboarded are skipped.
pub(crate) async fn onboard_initial_providers(ctx: &Ctx, cfg: &Config) {
    for p in &cfg.initial_providers {
        let provider = ProviderId::new(p);
        if ctx.read(|s| s.is_onboarded(&provider)) {
            continue;
        }
        if let Err(e) = ctx.writer.submit_patiently(Command::AddProvider { provider }).await {
            tracing::error!("failed to onboard initial provider {p}: {e}");
        }
    }
}

/// How often the leader compares the membership with the seeds.
const RECONCILE_EVERY: Duration = Duration::from_secs(5);

/// On the leader: removes members whose peer endpoint is not a seed.
pub async fn reconcile(ctx: Ctx, cfg: Config) {
    let seeds: std::collections::BTreeSet<String> = cfg.seeds.iter().map(|s| normalize(s)).collect();
    let mut shutdown = ctx.shutdown.clone();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(RECONCILE_EVERY) => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
        let m = ctx.raft.metrics().borrow().clone();
        if m.current_leader != Some(ctx.node_id) {
            continue;
        }
        let stale: Vec<u64> = m
            .membership_config
            .membership()
            .nodes()
            .filter(|(id, addr)| **id != ctx.node_id && !seeds.contains(&normalize(&addr.peer)))
            .map(|(id, _)| *id)
            .collect();
        for id in stale {
            tracing::info!(peer_node_id = id, "its peer endpoint is no longer a seed: removing it");
            if let Err(e) = crate::grpc::admin::remove_member(&ctx, id).await {
                tracing::warn!(peer_node_id = id, "failed to remove: {}", e.message());
            }
        }
    }
}

/// `Host.Example.:7412` and `host.example:7412` name the same endpoint.
fn normalize(endpoint: &str) -> String {
    let lower = endpoint.to_ascii_lowercase();
    match lower.rsplit_once(':') {
        Some((host, port)) => format!("{}:{port}", host.trim_end_matches('.')),
        None => lower.trim_end_matches('.').to_string(),
    }
}
