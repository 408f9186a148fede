//! Groups: 200 members over 3 providers, 1,000 messages from several
//! senders, a membership change and a leader kill mid-stream: every provider
//! gets every message once, in the group's order, one mailbox entry per
//! provider per message, and removed members get nothing after removal.

use router_proto::v1::mailbox_entry::Kind;
use router_proto::v1::{
    ContentType, CreateGroupRequest, GroupMember, GroupMessage, GroupRole, SendGroupRequest, UpdateGroupRequest,
};
use router_testkit::{PROVIDERS, TestCluster};
use std::collections::BTreeMap;
use std::time::Duration;

const MEMBERS: usize = 200;
const MESSAGES: usize = 1_000;
const SENDERS: usize = 4;

fn member(i: usize) -> (String, &'static str) {
    (format!("handle:m{i:03}"), PROVIDERS[i % 3])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_fan_out_keeps_one_order_through_membership_changes_and_leader_loss() {
    let mut tc = TestCluster::start(3).await.unwrap();
    let clients: BTreeMap<&str, _> = PROVIDERS.iter().map(|p| (*p, tc.client(p))).collect();
    for i in 0..MEMBERS {
        let (user, provider) = member(i);
        clients[provider].register_user(&user).await.unwrap();
    }
    let admin = member(0);
    let members: Vec<GroupMember> =
        (1..MEMBERS).map(|i| GroupMember { user_id: member(i).0, role: GroupRole::Member as i32 }).collect();
    let created = clients[admin.1]
        .create_group(CreateGroupRequest { group_id: "g-200".into(), creator_user_id: admin.0.clone(), members })
        .await
        .unwrap();
    assert_eq!(created.epoch, 1);
    // Beta members removed half-way (members 1, 4, 7, ... are beta's: i % 3 == 1).
    let removed: Vec<String> = (0..MEMBERS).filter(|i| i % 3 == 1).take(10).map(|i| member(i).0).collect();

    // Several senders (members of all three providers) send concurrently.
    let mut tasks = Vec::new();
    for s in 0..SENDERS {
        let (user, provider) = member(30 + s); // alpha, beta, gamma, alpha; none of them removed
        let client = tc.client(provider);
        tasks.push(tokio::spawn(async move {
            let mut seqs = Vec::new();
            for k in 0..MESSAGES / SENDERS {
                let req = SendGroupRequest {
                    group_id: "g-200".into(),
                    message_id: format!("s{s}-{k}"),
                    sender_user_id: user.clone(),
                    sender_device_id: 1,
                    content_type: ContentType::Message as i32,
                    ttl_seconds: 0,
                    ciphertext: format!("sender-key ciphertext {s}/{k}").into_bytes().into(),
                    per_device: vec![],
                };
                let r = client.send_group(req).await.expect("group send");
                seqs.push((r.group_seq, r.epoch));
            }
            seqs
        }));
    }
    // Mid-stream: the admin removes ten beta members, then the leader dies.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let changed = clients[admin.1]
        .update_group(UpdateGroupRequest {
            group_id: "g-200".into(),
            actor_user_id: admin.0.clone(),
            set: vec![],
            remove_user_ids: removed.clone(),
        })
        .await
        .unwrap();
    assert_eq!(changed.epoch, 2);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let leader = tc.cluster.wait_for_leader(Duration::from_secs(10)).await.unwrap();
    tc.cluster.crash(leader).await;
    let mut acked = Vec::new();
    for t in tasks {
        acked.extend(t.await.unwrap());
    }
    assert_eq!(acked.len(), MESSAGES);
    let mut seqs: Vec<u64> = acked.iter().map(|(s, _)| *s).collect();
    seqs.sort_unstable();
    assert_eq!(seqs, (0..MESSAGES as u64).collect::<Vec<_>>(), "hub order is dense and unique");

    // Every provider: exactly one entry per message, in group order.
    let survivors: Vec<u64> = tc.all_nodes().into_iter().filter(|n| *n != leader).collect();
    for provider in PROVIDERS {
        let mut sub = tc.client_on(provider, &survivors).subscribe(1024);
        let mut got: Vec<GroupMessage> = Vec::new();
        let mut to_ack = Vec::new();
        while got.len() < MESSAGES {
            let e = tokio::time::timeout(Duration::from_secs(20), sub.next()).await.expect("delivery").unwrap();
            to_ack.push(e.seq);
            if let Some(Kind::Group(g)) = e.kind {
                got.push(g);
            }
            if to_ack.len() >= 512 {
                sub.ack(std::mem::take(&mut to_ack)).await.unwrap();
            }
        }
        let order: Vec<u64> = got.iter().map(|g| g.group_seq).collect();
        assert_eq!(order, (0..MESSAGES as u64).collect::<Vec<_>>(), "{provider}: every message once, in group order");
        for g in &got {
            let expected_epoch = acked.iter().find(|(s, _)| *s == g.group_seq).unwrap().1;
            assert_eq!(g.epoch, expected_epoch);
            let listed_removed = g.recipient_user_ids.iter().any(|u| removed.contains(u));
            if g.epoch >= 2 {
                assert!(!listed_removed, "{provider}: a removed member got message {}", g.group_seq);
            } else if provider == "beta" {
                assert!(listed_removed, "before the removal the members were listed");
            }
            assert!(g.recipient_user_ids.iter().all(|u| member(u[8..].parse().unwrap()).1 == provider));
        }
        assert!(
            tokio::time::timeout(Duration::from_millis(300), sub.next()).await.is_err(),
            "{provider}: no extra entries"
        );
    }
    tc.shutdown().await;
}
