//! Cluster formation through seeds (the Kubernetes path): no member list in
//! any config; node 1 initializes, the others join; a node that lost its
//! disk rejoins as a fresh member under its id.

use crate::common::*;
use router_testkit::TestCluster;
use std::time::Duration;

fn seed_mode(raw: &mut router_node::config::RawConfig) {
    raw.cluster.seeds = raw.cluster.initial_members.iter().map(|m| m.peer.clone()).collect();
    raw.cluster.initial_members.clear();
    raw.cluster.bootstrap = true;
}

async fn voters(tc: &TestCluster, via: u64) -> Vec<u64> {
    let s = tc.admin(via).status(router_proto::v1::StatusRequest {}).await.unwrap().into_inner();
    s.voters.iter().map(|v| v.node_id).collect()
}

async fn wait_for_voters(tc: &TestCluster, via: u64, want: &[u64]) {
    for _ in 0..200 {
        if voters(tc, via).await == want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("voters never became {want:?}: {:?}", voters(tc, via).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_form_a_cluster_from_seeds_and_a_wiped_node_rejoins() {
    let mut tc = TestCluster::start_with(3, seed_mode).await.unwrap();
    wait_for_voters(&tc, 1, &[1, 2, 3]).await;
    let beta = tc.client("beta");
    setup_user(&beta, "handle:jo", &[(1, 3)]).await;
    let alpha = tc.client("alpha");
    alpha.send(message("f-1", "handle:jo", &[(1, 3)])).await.unwrap();

    // Node 3 loses its disk and comes back empty: it replaces its old identity.
    let leader = tc.cluster.wait_for_leader(Duration::from_secs(10)).await.unwrap();
    let victim = if leader == 3 { 2 } else { 3 };
    tc.cluster.crash(victim).await;
    tc.cluster.wipe(victim).unwrap();
    tc.cluster.restart(victim).await.unwrap();
    wait_for_voters(&tc, leader, &[1, 2, 3]).await;
    tc.wait_until(Duration::from_secs(20), |s| s.mailbox_depth(&router_core::ProviderId::new("beta")) == 1)
        .await
        .unwrap();
    // It serves providers again, from its own replica.
    let on_victim = tc.client_on("beta", &[victim]);
    let mut sub = on_victim.subscribe(8);
    assert_eq!(message_id_of(&next_within(&mut sub, Duration::from_secs(10)).await), "f-1");
    tc.shutdown().await;
}

/// Nodes 1 and 2 are the desired membership (their seeds); node 3 is not a
/// seed of theirs, as after a scale-down that re-rendered the seed list.
fn node_three_not_desired(raw: &mut router_node::config::RawConfig) {
    let peers: Vec<String> = raw.cluster.initial_members.iter().map(|m| m.peer.clone()).collect();
    raw.cluster.seeds = if raw.node_id == 3 { peers } else { peers[..2].to_vec() };
    raw.cluster.initial_members.clear();
    raw.cluster.bootstrap = true;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_removes_members_that_are_no_longer_seeds() {
    let tc = TestCluster::start_with(3, node_three_not_desired).await.unwrap();
    wait_for_voters(&tc, 1, &[1, 2]).await;
    // Node 3 joins through its seeds, then the leader removes it and tells it
    // so (the `removed` flag is only ever set by that notice).
    let node3 = tc.cluster.node(3).node.as_ref().unwrap();
    let removed = || node3.ctx().removed.load(std::sync::atomic::Ordering::SeqCst);
    for _ in 0..200 {
        if removed() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(removed(), "the leader never removed node 3");
    assert!(node3.ctx().require_member().is_err(), "node 3 still serves");
    assert_eq!(voters(&tc, 2).await, vec![1, 2]);
    tc.shutdown().await;
}
