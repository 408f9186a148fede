//! This node's incarnation, and the leader's recording of its members'.
//!
//! A data directory gets a random incarnation the first time a node starts
//! on it with no Raft state (`<data_dir>/INCARNATION`). A node whose disk
//! was wiped therefore comes back under its node id as a new incarnation,
//! and the replicated state still records the old one (`router_core`'s
//! `state::incarnation`): every peer refuses its votes and appends
//! (`Peer` service) and discards its answers (`network`), so it cannot help
//! elect a leader that lacks an entry it had acknowledged. It serves again
//! once it was removed and added back as a new learner (`join`).
//! docs/design/incarnations.md has the whole design.

use crate::ctx::NodeCtx;
use crate::grpc::status;
use anyhow::Context;
use router_core::Command;
use router_proto::v1::StatusRequest;
use std::io::Write as _;
use std::path::Path;
use std::time::Duration;
use tonic::Status;

pub const INCARNATION_FILE: &str = "INCARNATION";

/// How often the leader looks for members without a recorded incarnation.
const RECORD_EVERY: Duration = Duration::from_secs(1);

/// This data directory's incarnation. `fresh` (no vote and no log entry on
/// disk) always gets a new one: a directory that lost its Raft state is a
/// new incarnation even if this file survived. A directory with Raft state
/// but no file (written by a build before incarnations) gets one now.
pub fn load(data_dir: &Path, fresh: bool) -> anyhow::Result<u64> {
    let path = data_dir.join(INCARNATION_FILE);
    if !fresh {
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                return text.trim().parse::<u64>().ok().filter(|i| *i != 0).with_context(|| {
                    format!("{} does not hold an incarnation (a non-zero number): {text:?}", path.display())
                });
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("read {}", path.display())),
        }
    }
    let incarnation = loop {
        let drawn: u64 = rand::random();
        if drawn != 0 {
            break drawn;
        }
    };
    let tmp = data_dir.join(format!("{INCARNATION_FILE}.tmp"));
    let written = std::fs::File::create(&tmp).and_then(|mut f| {
        writeln!(f, "{incarnation}")?;
        f.sync_all()
    });
    written
        .and_then(|()| std::fs::rename(&tmp, &path))
        .and_then(|()| std::fs::File::open(data_dir)?.sync_all())
        .with_context(|| format!("write {}", path.display()))?;
    if fresh {
        tracing::info!(incarnation, "no Raft state on disk: running as a new incarnation");
    }
    Ok(incarnation)
}

/// The refusal of a peer call from (or an answer by) an incarnation the
/// cluster did not record for that node id.
pub fn stale(node: u64, incarnation: u64, recorded: u64) -> Status {
    let message = crate::network::stale_incarnation(node, incarnation, recorded);
    status::reason(tonic::Code::FailedPrecondition, "STALE_INCARNATION", message)
}

impl NodeCtx {
    /// Refuses a vote, append or snapshot call from `node` unless it runs as
    /// the incarnation the local replica records for it (or none is recorded).
    pub fn require_incarnation(&self, node: u64, incarnation: u64) -> Result<(), Status> {
        match self.read(|s| s.refused_incarnation(node, incarnation)) {
            None => Ok(()),
            Some(recorded) => Err(stale(node, incarnation, recorded)),
        }
    }
}

/// On the leader, every [`RECORD_EVERY`]: [`record_missing`].
pub async fn record_members(ctx: crate::ctx::Ctx) {
    let mut shutdown = ctx.shutdown.clone();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(RECORD_EVERY) => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
        record_missing(&ctx).await;
    }
}

/// On the leader: records the incarnation of every member that has none
/// (a cluster that just formed or just reached cluster version 4), asking
/// each for its own (admin `Status`). A recorded one is never replaced here:
/// only `AddLearner` replaces it, for a node that is not a member. Formation
/// calls this right after raising the cluster version, before any provider
/// is onboarded, so no acknowledged write predates the records.
pub async fn record_missing(ctx: &NodeCtx) {
    let m = ctx.raft.metrics().borrow().clone();
    let version_ok = ctx.read(|s| s.cluster_version()) >= router_core::state::incarnation::INCARNATION_VERSION;
    if m.current_leader != Some(ctx.node_id) || !version_ok {
        return;
    }
    let missing: Vec<(u64, String)> = m
        .membership_config
        .membership()
        .nodes()
        .filter(|(id, _)| ctx.read(|s| s.incarnation_of(**id)).is_none())
        .map(|(id, addr)| (*id, addr.peer.clone()))
        .collect();
    for (id, peer) in missing {
        let incarnation = if id == ctx.node_id { ctx.incarnation } else { ask(ctx, id, &peer).await.unwrap_or(0) };
        if incarnation == 0 {
            continue;
        }
        match ctx.writer.submit(Command::SetIncarnation { node: id, incarnation }).await {
            Ok(router_core::Outcome::Rejected(r)) => {
                tracing::warn!(peer_node_id = id, "the member's incarnation was not recorded: {r:?}")
            }
            Ok(_) => tracing::info!(peer_node_id = id, incarnation, "recorded the member's incarnation"),
            Err(e) => tracing::warn!(peer_node_id = id, "failed to record the member's incarnation: {e}"),
        }
    }
}

/// The incarnation node `id` at `peer` runs as, from its own admin
/// `Status` (0 from a build before incarnations); `None` when it does not
/// answer, or answers as another node id.
pub async fn ask(ctx: &NodeCtx, id: u64, peer: &str) -> Option<u64> {
    let mut admin = ctx.peers.admin(peer).ok()?;
    let status = admin.status(StatusRequest {}).await.ok()?.into_inner();
    (status.node_id == id).then_some(status.incarnation)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_keeps_its_incarnation_until_it_loses_its_raft_state() {
        let dir = tempfile::tempdir().unwrap();
        let first = load(dir.path(), true).unwrap();
        assert_ne!(first, 0);
        assert_eq!(load(dir.path(), false).unwrap(), first, "a restart keeps the incarnation");
        let second = load(dir.path(), true).unwrap();
        assert_ne!(second, first, "no Raft state: a new incarnation, even with the file still there");
        std::fs::remove_file(dir.path().join(INCARNATION_FILE)).unwrap();
        let third = load(dir.path(), false).unwrap();
        assert_ne!(third, 0, "Raft state from an older build: an incarnation is made");
        std::fs::write(dir.path().join(INCARNATION_FILE), "zero\n").unwrap();
        assert!(load(dir.path(), false).is_err(), "a damaged file stops the start");
    }
}
