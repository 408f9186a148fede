//! Leader loss under load: acked sends survive, sending resumes, a receiver
//! on the dead node reconnects elsewhere and misses nothing.

use crate::common::*;
use router_testkit::TestCluster;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const DEVICES: [(u32, u32); 1] = [(1, 55)];
const TOTAL_SENDS: usize = 240;
const KILL_AFTER: usize = 80;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_leader_loses_no_acked_envelope() {
    let mut tc = TestCluster::start(3).await.unwrap();
    let leader = tc.cluster.wait_for_leader(Duration::from_secs(10)).await.unwrap();
    let others: Vec<u64> = tc.all_nodes().into_iter().filter(|n| *n != leader).collect();
    let beta_setup = tc.client("beta");
    setup_user(&beta_setup, "handle:dave", &DEVICES).await;

    // The receiver starts on the leader (the node we will kill).
    let receiver = tc.client_on("beta", &[leader, others[0], others[1]]);
    let received: Arc<Mutex<Vec<String>>> = Arc::default();
    let recv_task = {
        let received = received.clone();
        tokio::spawn(async move {
            let mut sub = receiver.subscribe(64);
            let deadline = Instant::now() + Duration::from_secs(90);
            while Instant::now() < deadline {
                let Ok(Ok(entry)) = tokio::time::timeout(Duration::from_secs(5), sub.next()).await else { continue };
                received.lock().unwrap().push(message_id_of(&entry));
                sub.ack(vec![entry.seq]).await.expect("ack");
                if received.lock().unwrap().len() >= TOTAL_SENDS {
                    break;
                }
            }
            sub.reconnects()
        })
    };

    // The sender prefers a node that survives, and sends one message at a time.
    let sender = tc.client_on("alpha", &[others[0], others[1], leader]);
    let mut acked = BTreeMap::new();
    let mut gap = Duration::ZERO;
    let mut killed_at = None;
    for i in 0..TOTAL_SENDS {
        if i == KILL_AFTER {
            tc.cluster.crash(leader).await;
            killed_at = Some(Instant::now());
        }
        let id = format!("f-{i}");
        let started = Instant::now();
        let resp = sender.send(message(&id, "handle:dave", &DEVICES)).await.expect("send eventually succeeds");
        if killed_at.is_some() {
            gap = gap.max(started.elapsed());
        }
        acked.insert(id, resp.mailbox_seq);
    }
    let new_leader = tc.cluster.wait_for_leader(Duration::from_secs(10)).await.unwrap();
    assert_ne!(new_leader, leader);
    println!("leader {leader} killed; new leader {new_leader}; longest send during failover {gap:?}");

    let reconnects = recv_task.await.unwrap();
    let received = received.lock().unwrap().clone();
    let unique: BTreeSet<&String> = received.iter().collect();
    assert_eq!(unique.len(), received.len(), "no envelope delivered twice within the subscription");
    for id in acked.keys() {
        assert!(unique.contains(id), "acked envelope {id} was not delivered");
    }
    assert_eq!(acked.len(), TOTAL_SENDS);
    assert!(reconnects >= 1, "the receiver had to move off the killed node");
    // Every message id is stored at most once: distinct mailbox sequences.
    let seqs: BTreeSet<u64> = acked.values().copied().collect();
    assert_eq!(seqs.len(), TOTAL_SENDS);
    tc.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_shutting_down_gracefully_hands_leadership_over() {
    let mut tc = TestCluster::start(3).await.unwrap();
    let leader = tc.cluster.wait_for_leader(Duration::from_secs(10)).await.unwrap();
    let term_before = tc.cluster.node(leader).node.as_ref().unwrap().raft().metrics().borrow().current_term;
    tc.cluster.stop(leader).await;
    let views = |tc: &TestCluster| -> Vec<(Option<u64>, u64, bool)> {
        tc.cluster
            .nodes
            .iter()
            .filter_map(|n| n.node.as_ref())
            .map(|n| {
                let m = n.raft().metrics().borrow().clone();
                (m.current_leader, m.current_term, m.state == openraft::ServerState::Leader)
            })
            .collect()
    };
    // When the old leader has exited, a new one already leads: the hand-over
    // happened before shutdown (which waits for it), not through an election
    // timeout afterwards.
    let at_exit = views(&tc);
    assert!(at_exit.iter().any(|v| v.2), "no node leads right after the old leader stopped: {at_exit:?}");
    // The third node hears of it with the next heartbeat (give a loaded machine a moment).
    let deadline = Instant::now() + Duration::from_secs(3);
    let agreed = loop {
        let v = views(&tc);
        let first = v[0].0;
        if first.is_some() && first != Some(leader) && v.iter().all(|(l, t, _)| *l == first && *t > term_before) {
            break first;
        }
        assert!(Instant::now() < deadline, "no agreement on a new leader: {v:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_ne!(agreed, Some(leader));
    let beta = tc.client("beta");
    setup_user(&beta, "handle:max", &DEVICES).await;
    tc.shutdown().await;
}

/// A node cut off from its quorum (here: the other two are down) does not
/// hold writes for the whole leader wait (8 s) once a run of elections has
/// failed: it answers UNAVAILABLE / NO_LEADER at once, so a client moves
/// on; with the quorum back, the same node takes writes again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_without_quorum_refuses_writes_at_once_and_serves_again_after() {
    let mut tc = TestCluster::start(3).await.unwrap();
    let leader = tc.cluster.wait_for_leader(Duration::from_secs(10)).await.unwrap();
    let survivor = tc.all_nodes().into_iter().find(|n| *n != leader).unwrap();
    let beta = tc.client("beta");
    setup_user(&beta, "handle:quin", &DEVICES).await;
    // The other follower first, then the leader: with one node already down,
    // the survivor can never win an election between the two stops.
    let other_follower = tc.all_nodes().into_iter().find(|n| *n != survivor && *n != leader).unwrap();
    let down = [other_follower, leader];
    for &n in &down {
        tc.cluster.crash(n).await;
    }
    // Elections on the survivor keep failing: no leader, for longer than the grace (1 s here).
    let deadline = Instant::now() + Duration::from_secs(10);
    while tc.cluster.node(survivor).node.as_ref().unwrap().raft().metrics().borrow().current_leader.is_some() {
        assert!(Instant::now() < deadline, "the survivor still believes in a leader");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(1_500)).await;

    let certs = &tc.cluster.provider_certs["alpha"];
    let mut raw =
        router_proto::v1::messaging_client::MessagingClient::new(tc.raw_channel(survivor, &certs.cert, &certs.key));
    let started = Instant::now();
    let err = raw.send(message("no-quorum-1", "handle:quin", &DEVICES)).await.unwrap_err();
    let took = started.elapsed();
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");
    assert!(router_sdk::error::describe(&err).contains("NO_LEADER"), "{err:?}");
    // The leader wait is 8 s; the answer must come well before it.
    assert!(took < Duration::from_secs(4), "held for {took:?}");

    // Quorum back: the survivor takes the same message (nothing was stored before).
    tc.cluster.restart(down[0]).await.unwrap();
    let alpha = tc.client_on("alpha", &[survivor]);
    alpha.send(message("no-quorum-1", "handle:quin", &DEVICES)).await.unwrap();
    tc.shutdown().await;
}
