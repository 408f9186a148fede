//! Restarted nodes rejoin: from their own sled directory, or from nothing
//! (disk loss) through a snapshot.

use crate::common::*;
use router_testkit::TestCluster;
use std::time::Duration;

const DEVICES: [(u32, u32); 1] = [(1, 9)];

/// Waits until every running node has applied the same index and holds the
/// same state.
async fn converged(tc: &TestCluster) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let running: Vec<_> = tc.cluster.nodes.iter().filter_map(|n| n.node.as_ref()).collect();
        let applied: Vec<_> = running.iter().map(|n| n.raft().metrics().borrow().last_applied).collect();
        let states: Vec<_> = running.iter().map(|n| n.ctx().read(|s| s.clone())).collect();
        if applied.windows(2).all(|w| w[0] == w[1]) && states.windows(2).all(|w| w[0] == w[1]) {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "nodes did not converge: applied {applied:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until every running node sees exactly `want` as the voters (a
/// node that lost its disk rejoins through removal, learner, promotion).
async fn voters_again(tc: &TestCluster, want: &[u64]) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let running: Vec<_> = tc.cluster.nodes.iter().filter_map(|n| n.node.as_ref()).collect();
        let views: Vec<Vec<u64>> = running
            .iter()
            .map(|n| n.raft().metrics().borrow().membership_config.membership().voter_ids().collect())
            .collect();
        if views.iter().all(|v| v == want) {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "voters did not become {want:?}: {views:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_node_catches_up_from_its_own_directory() {
    let mut tc = TestCluster::start(3).await.unwrap();
    let leader = tc.cluster.wait_for_leader(Duration::from_secs(10)).await.unwrap();
    let victim = tc.all_nodes().into_iter().find(|n| *n != leader).unwrap();
    let alpha = tc.client_on("alpha", &[leader]);
    let beta = tc.client_on("beta", &[leader]);
    setup_user(&beta, "handle:erin", &DEVICES).await;
    for i in 0..20 {
        alpha.send(message(&format!("before-{i}"), "handle:erin", &DEVICES)).await.unwrap();
    }
    tc.cluster.crash(victim).await;
    for i in 0..30 {
        alpha.send(message(&format!("during-{i}"), "handle:erin", &DEVICES)).await.unwrap();
    }
    tc.cluster.restart(victim).await.unwrap();
    converged(&tc).await;
    let depth = tc
        .cluster
        .node(victim)
        .node
        .as_ref()
        .unwrap()
        .ctx()
        .read(|s| s.mailbox_depth(&router_core::ProviderId::new("beta")));
    assert_eq!(depth, 50);

    // The restarted node serves the mailbox from its own replica.
    let on_victim = tc.client_on("beta", &[victim]);
    let mut sub = on_victim.subscribe(100);
    let first = next_within(&mut sub, Duration::from_secs(10)).await;
    assert_eq!(message_id_of(&first), "before-0");
    tc.shutdown().await;
}

fn snapshot_often(raw: &mut router_node::config::RawConfig) {
    raw.raft.snapshot_every_entries = Some(20);
    raw.raft.keep_logs_after_snapshot = Some(0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_lost_its_disk_catches_up_through_a_snapshot() {
    let mut tc = TestCluster::start_with(3, snapshot_often).await.unwrap();
    let leader = tc.cluster.wait_for_leader(Duration::from_secs(10)).await.unwrap();
    let victim = tc.all_nodes().into_iter().find(|n| *n != leader).unwrap();
    let alpha = tc.client_on("alpha", &[leader]);
    let beta = tc.client_on("beta", &[leader]);
    setup_user(&beta, "handle:frank", &DEVICES).await;
    tc.cluster.crash(victim).await;
    tc.cluster.wipe(victim).unwrap();
    // Sequential sends: one log entry each, far more than the snapshot interval.
    for i in 0..120 {
        alpha.send(message(&format!("s-{i}"), "handle:frank", &DEVICES)).await.unwrap();
    }
    let leader_node = tc.cluster.node(leader).node.as_ref().unwrap();
    let purged = leader_node.raft().metrics().borrow().purged;
    assert!(purged.is_some_and(|p| p.index > 20), "the leader compacted its log: {purged:?}");

    tc.cluster.restart(victim).await.unwrap();
    voters_again(&tc, &[1, 2, 3]).await;
    converged(&tc).await;
    let victim_node = tc.cluster.node(victim).node.as_ref().unwrap();
    let snapshot = victim_node.raft().metrics().borrow().snapshot;
    assert!(snapshot.is_some(), "the wiped node was caught up by a snapshot");
    assert_eq!(victim_node.ctx().read(|s| s.mailbox_depth(&router_core::ProviderId::new("beta"))), 120);
    // At least one: the leader may compact again while the node catches up.
    assert!(victim_node.ctx().storage_stats.snapshot().snapshots_installed >= 1, "caught up by a snapshot");
    tc.shutdown().await;
}

/// A node down long enough for the leader to compact its log past the
/// node's last entry: restarted on its own directory, it cannot be caught up
/// from the log and must install the leader's snapshot over its older state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_down_past_log_compaction_catches_up_through_a_snapshot() {
    let mut tc = TestCluster::start_with(3, snapshot_often).await.unwrap();
    let leader = tc.cluster.wait_for_leader(Duration::from_secs(10)).await.unwrap();
    let victim = tc.all_nodes().into_iter().find(|n| *n != leader).unwrap();
    let alpha = tc.client_on("alpha", &[leader]);
    let beta = tc.client_on("beta", &[leader]);
    setup_user(&beta, "handle:gus", &DEVICES).await;
    for i in 0..10 {
        alpha.send(message(&format!("before-{i}"), "handle:gus", &DEVICES)).await.unwrap();
    }
    converged(&tc).await;
    let victim_before = tc.cluster.node(victim).node.as_ref().unwrap().raft().metrics().borrow().last_log_index;
    tc.cluster.crash(victim).await;
    for i in 0..120 {
        alpha.send(message(&format!("during-{i}"), "handle:gus", &DEVICES)).await.unwrap();
    }
    let leader_node = tc.cluster.node(leader).node.as_ref().unwrap();
    let purged = leader_node.raft().metrics().borrow().purged.map(|p| p.index);
    assert!(
        purged > victim_before,
        "the leader compacted past the victim's last entry: purged {purged:?}, victim had {victim_before:?}"
    );
    assert!(leader_node.ctx().storage_stats.snapshot().log_compactions > 0);

    tc.cluster.restart(victim).await.unwrap();
    converged(&tc).await;
    let victim_node = tc.cluster.node(victim).node.as_ref().unwrap();
    let stats = victim_node.ctx().storage_stats.snapshot();
    assert!(stats.snapshots_installed >= 1, "caught up by the leader's snapshot: {stats:?}");
    assert_eq!(victim_node.ctx().read(|s| s.mailbox_depth(&router_core::ProviderId::new("beta"))), 130);
    // And it serves the mail from its replica, oldest first.
    let on_victim = tc.client_on("beta", &[victim]);
    let mut sub = on_victim.subscribe(200);
    assert_eq!(message_id_of(&next_within(&mut sub, Duration::from_secs(10)).await), "before-0");
    tc.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bootstrap_node_losing_its_disk_does_not_start_a_second_cluster() {
    let mut tc = TestCluster::start_with(3, snapshot_often).await.unwrap();
    let beta = tc.client_on("beta", &[2, 3]);
    let alpha = tc.client_on("alpha", &[2, 3]);
    setup_user(&beta, "handle:olga", &DEVICES).await;
    tc.cluster.crash(1).await;
    tc.cluster.wipe(1).unwrap();
    for i in 0..60 {
        alpha.send(message(&format!("b-{i}"), "handle:olga", &DEVICES)).await.unwrap();
    }
    // Node 1 comes back empty with `bootstrap = true` in its config; as a
    // new incarnation it is removed, added as a learner and promoted again.
    tc.cluster.restart_as_configured(1).await.unwrap();
    voters_again(&tc, &[1, 2, 3]).await;
    converged(&tc).await;
    let node1 = tc.cluster.node(1).node.as_ref().unwrap();
    assert_eq!(node1.ctx().read(|s| s.mailbox_depth(&router_core::ProviderId::new("beta"))), 60);
    let m = node1.raft().metrics().borrow().clone();
    let voters: Vec<u64> = m.membership_config.membership().voter_ids().collect();
    assert_eq!(voters, vec![1, 2, 3], "one cluster, same members");
    tc.shutdown().await;
}
