//! A voter that lost its disk (docs/design/incarnations.md): it comes back
//! as a new incarnation whose votes and append answers do not count until
//! it was removed and added back, so it cannot help elect a leader that
//! lacks an entry it had acknowledged.

use crate::common::*;
use router_core::ProviderId;
use router_testkit::TestCluster;
use std::time::Duration;

const DEVICES: [(u32, u32); 1] = [(1, 5)];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wiped_voter_cannot_elect_a_leader_that_lacks_an_acknowledged_entry() {
    let mut tc = TestCluster::start(3).await.unwrap();
    tc.wait_until(Duration::from_secs(10), |s| s.incarnations().len() == 3).await.unwrap();
    let a = tc.cluster.wait_for_leader(Duration::from_secs(10)).await.unwrap();
    let others: Vec<u64> = tc.all_nodes().into_iter().filter(|n| *n != a).collect();
    let (b, c) = (others[0], others[1]);
    let beta = tc.client_on("beta", &[a]);
    setup_user(&beta, "handle:ida", &DEVICES).await;
    let old_b = tc.cluster.node(b).node.as_ref().unwrap().ctx().incarnation;

    // C is away; E commits on A and B and is acknowledged.
    tc.cluster.crash(c).await;
    let alpha = tc.client_on("alpha", &[a]);
    alpha.send(message("e", "handle:ida", &DEVICES)).await.unwrap();
    // B loses its disk and starts empty; A dies; C comes back.
    tc.cluster.crash(b).await;
    tc.cluster.wipe(b).unwrap();
    tc.cluster.restart(b).await.unwrap();
    let new_b = tc.cluster.node(b).node.as_ref().unwrap().ctx().incarnation;
    assert_ne!(new_b, old_b, "a wiped data directory is a new incarnation");
    tc.cluster.crash(a).await;
    tc.cluster.restart(c).await.unwrap();

    // C lacks E; B's empty log would vote for it, but B's answers do not count.
    let watch_until = tokio::time::Instant::now() + Duration::from_secs(4);
    while tokio::time::Instant::now() < watch_until {
        for id in [b, c] {
            let m = tc.cluster.node(id).node.as_ref().unwrap().raft().metrics().borrow().clone();
            assert_ne!(
                m.state,
                openraft::ServerState::Leader,
                "node {id} was elected without A (term {})",
                m.current_term
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // A comes back: it leads with E, and B rejoins as a new incarnation.
    tc.cluster.restart(a).await.unwrap();
    let beta_box = ProviderId::new("beta");
    let rejoined = |id: u64| {
        let node = tc.cluster.node(id).node.as_ref().unwrap();
        let voters = node.raft().metrics().borrow().membership_config.membership().voter_ids().count();
        let (recorded, depth) = node.ctx().read(|s| (s.incarnation_of(b), s.mailbox_depth(&beta_box)));
        voters == 3 && recorded == Some(new_b) && depth == 1
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while ![a, b, c].into_iter().all(rejoined) {
        assert!(tokio::time::Instant::now() < deadline, "B did not rejoin as a voter holding E within 60 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let on_b = tc.client_on("beta", &[b]);
    let mut sub = on_b.subscribe(8);
    assert_eq!(message_id_of(&next_within(&mut sub, Duration::from_secs(10)).await), "e");
    tc.shutdown().await;
}
