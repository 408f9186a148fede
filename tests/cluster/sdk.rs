//! The SDK's own node dies mid-send: it finishes on another node, and the
//! application sees every message once.

use crate::common::*;
use router_testkit::TestCluster;
use std::collections::BTreeMap;
use std::time::Duration;

const DEVICES: [(u32, u32); 1] = [(1, 77)];
const TOTAL: usize = 150;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_senders_node_dies_mid_send_and_nothing_is_lost_or_duplicated() {
    let mut tc = TestCluster::start(3).await.unwrap();
    let leader = tc.cluster.wait_for_leader(Duration::from_secs(10)).await.unwrap();
    let nodes = tc.all_nodes();
    // The sender's node is a follower (its writes are forwarded); the
    // receiver sits on the remaining follower.
    let sender_node = *nodes.iter().find(|n| **n != leader).unwrap();
    let receiver_node = *nodes.iter().find(|n| **n != leader && **n != sender_node).unwrap();
    let beta = tc.client_on("beta", &[receiver_node]);
    setup_user(&beta, "handle:gina", &DEVICES).await;
    let alpha = tc.client_on("alpha", &[sender_node, leader, receiver_node]);

    let mut accepted = BTreeMap::new();
    for i in 0..TOTAL {
        if i == TOTAL / 2 {
            tc.cluster.crash(sender_node).await;
        }
        let id = format!("sdk-{i}");
        let resp = alpha.send(message(&id, "handle:gina", &DEVICES)).await.expect("send completes on another node");
        accepted.insert(id, resp.mailbox_seq);
    }

    let mut sub = beta.subscribe(32);
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    while seen.len() < TOTAL {
        let e = next_within(&mut sub, Duration::from_secs(15)).await;
        *seen.entry(message_id_of(&e)).or_default() += 1;
        sub.ack(vec![e.seq]).await.unwrap();
    }
    assert_quiet(&mut sub, Duration::from_millis(300)).await;
    assert!(seen.values().all(|n| *n == 1), "a message reached the application twice");
    assert_eq!(seen.keys().collect::<Vec<_>>(), accepted.keys().collect::<Vec<_>>());
    tc.shutdown().await;
}
