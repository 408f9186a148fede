//! What routerd's `join` does for a node that lost its disk, driven by the
//! simulation: remove its old incarnation from the voters, record the new
//! one, add it as a learner (caught up), promote it. Each round looks at the
//! leader's membership and records and takes the next step, so a leader
//! change or a lost answer in between only costs a retry.

use crate::cluster::{Cluster, addr};
use crate::drive;
use crate::workload::World;
use rand::SeedableRng;
use rand::rngs::StdRng;
use router_core::Command;
use std::collections::BTreeSet;
use std::time::Duration;
use tokio::time::Instant;

/// How long one step (a membership change, a write) may take.
const STEP_TIMEOUT: Duration = Duration::from_secs(5);

enum Step {
    Done,
    RemoveOld,
    Record(u64),
    AddLearner,
    Promote,
}

/// Brings `id` back as a voter under its current incarnation, within 30 s
/// of simulated time.
pub async fn readmit(cluster: &mut Cluster, rng: &mut StdRng, world: &World, id: u64) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let incarnation = cluster.nodes.iter().find(|n| n.id == id).map(|n| n.incarnation()).ok_or("no such node")?;
    let mut last_error = String::new();
    while Instant::now() < deadline {
        let leader =
            cluster.up_ids().into_iter().filter(|l| *l != id).find(|l| {
                cluster.raft(*l).is_some_and(|r| r.metrics().borrow().state == openraft::ServerState::Leader)
            });
        let Some(leader) = leader else {
            cluster.tick(rng).await;
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        let raft = cluster.raft(leader).ok_or("leader down")?;
        let membership = raft.metrics().borrow().membership_config.membership().clone();
        let recorded = cluster.state_of(leader).and_then(|s| s.incarnation_of(id));
        let is_voter = membership.voter_ids().any(|v| v == id);
        let is_member = membership.get_node(&id).is_some();
        let step = match (recorded == Some(incarnation), is_voter, is_member) {
            (true, true, _) => Step::Done,
            (false, _, true) => Step::RemoveOld,
            (false, _, false) => Step::Record(incarnation),
            (true, false, false) => Step::AddLearner,
            (true, false, true) => Step::Promote,
        };
        let task = match step {
            Step::Done => return Ok(()),
            Step::RemoveOld => {
                let voters: BTreeSet<u64> = membership.voter_ids().filter(|v| *v != id).collect();
                tokio::spawn(async move {
                    let change = if voters.is_empty() {
                        return Err("cannot remove the last voter".to_string());
                    } else if membership.voter_ids().any(|v| v == id) {
                        openraft::ChangeMembers::ReplaceAllVoters(voters)
                    } else {
                        openraft::ChangeMembers::RemoveNodes(BTreeSet::from([id]))
                    };
                    raft.change_membership(change, false).await.map(drop).map_err(|e| format!("remove: {e}"))
                })
            }
            Step::Record(incarnation) => {
                let w = world.clone();
                tokio::spawn(async move {
                    let mut r = StdRng::seed_from_u64(id);
                    let record = Command::SetIncarnation { node: id, incarnation };
                    w.must(&mut r, record, Instant::now() + Duration::from_secs(5)).await.map(drop)
                })
            }
            Step::AddLearner => tokio::spawn(async move {
                raft.add_learner(id, addr(id), true).await.map(drop).map_err(|e| format!("add learner: {e}"))
            }),
            Step::Promote => tokio::spawn(async move {
                let change = openraft::ChangeMembers::AddVoterIds(BTreeSet::from([id]));
                raft.change_membership(change, false).await.map(drop).map_err(|e| format!("promote: {e}"))
            }),
        };
        // A step that cannot finish (a learner that never catches up) is
        // given up on, so the deadline above holds in simulated time.
        let bounded = tokio::spawn(async move {
            match tokio::time::timeout(STEP_TIMEOUT, task).await {
                Ok(Ok(result)) => result,
                Ok(Err(e)) => Err(format!("step panicked: {e}")),
                Err(_) => Err(format!("step did not finish within {STEP_TIMEOUT:?}")),
            }
        });
        if let Err(e) = drive(cluster, rng, bounded).await {
            last_error = e;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Err(format!("not a voter again within 30 s (last error: {last_error})"))
}
