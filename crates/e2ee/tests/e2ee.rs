//! End-to-end encryption through a real three-node router cluster: PQXDH
//! session setup from claimed bundles, double-ratchet messages both ways,
//! out-of-order decryption, several devices per user, a reinstalled device,
//! and proof that the router only ever holds ciphertext.

use router_e2ee::device::new_identity;
use router_e2ee::{InMemSignalProtocolStore, Inbound, Messenger, Received};
use router_sdk::v1::ContentType;
use router_testkit::TestCluster;
use std::time::Duration;

fn memory_store() -> InMemSignalProtocolStore {
    let (identity, registration_id) = new_identity();
    InMemSignalProtocolStore::new(identity, registration_id).expect("in-memory store")
}

async fn next_message(m: &mut Messenger<InMemSignalProtocolStore>) -> Received {
    match tokio::time::timeout(Duration::from_secs(15), m.next()).await.expect("message in time").expect("receive") {
        Inbound::Message(r) => r,
        other => panic!("expected a message, got {other:?}"),
    }
}

fn text_of(r: &Received, device: u32) -> String {
    let p =
        r.plaintexts.iter().find(|(d, _)| *d == device).unwrap_or_else(|| panic!("no plaintext for {device}: {r:?}"));
    String::from_utf8(p.1.clone()).unwrap()
}

/// Every byte the router holds (replicated state on each node, and the
/// files of every node's sled directory) is searched for `needle`.
fn router_holds(tc: &TestCluster, needle: &[u8]) -> bool {
    let in_state = tc.cluster.nodes.iter().filter_map(|n| n.node.as_ref()).any(|n| {
        let bytes = n.ctx().read(|s| bincode::serialize(s).unwrap());
        bytes.windows(needle.len()).any(|w| w == needle)
    });
    let mut in_files = false;
    let mut dirs = vec![tc.cluster.dir.clone()];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                dirs.push(p);
            } else if let Ok(bytes) = std::fs::read(&p) {
                in_files |= bytes.windows(needle.len()).any(|w| w == needle);
            }
        }
    }
    in_state || in_files
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_providers_talk_end_to_end_with_several_devices() {
    let tc = TestCluster::start(3).await.unwrap();
    let mut alpha = Messenger::new(tc.client_on("alpha", &[1, 2, 3]));
    let mut beta = Messenger::new(tc.client_on("beta", &[3, 2, 1]));
    alpha.add_device("handle:alice", 1, memory_store()).await.unwrap();
    beta.add_device("handle:bob", 1, memory_store()).await.unwrap();
    beta.add_device("handle:bob", 2, memory_store()).await.unwrap();

    // alice → bob (both of bob's devices): PQXDH on the first message.
    let secret = b"the owl flies at midnight";
    alpha.send(("handle:alice", 1), "handle:bob", ContentType::Message, "a-1", secret).await.unwrap();
    let r = next_message(&mut beta).await;
    assert_eq!((r.sender_provider.as_str(), r.sender_user.as_str(), r.sender_device), ("alpha", "handle:alice", 1));
    assert_eq!(r.plaintexts.len(), 2, "one plaintext per device of bob: {r:?}");
    assert_eq!(text_of(&r, 1), "the owl flies at midnight");
    assert_eq!(text_of(&r, 2), "the owl flies at midnight");
    for (_, c) in &r.ciphertexts {
        assert!(!c.windows(secret.len()).any(|w| w == secret), "the envelope is not plaintext");
    }
    beta.ack(vec![r.seq]).await.unwrap();

    // bob (device 2) → alice: alice completes the handshake; then ratchet messages.
    beta.send(("handle:bob", 2), "handle:alice", ContentType::Message, "b-1", b"who goes there").await.unwrap();
    let r = next_message(&mut alpha).await;
    assert_eq!((r.sender_user.as_str(), r.sender_device), ("handle:bob", 2));
    assert_eq!(text_of(&r, 1), "who goes there");
    alpha.ack(vec![r.seq]).await.unwrap();
    for i in 0..5 {
        let text = format!("ratchet step {i}");
        alpha
            .send(("handle:alice", 1), "handle:bob", ContentType::Message, &format!("a-r{i}"), text.as_bytes())
            .await
            .unwrap();
        let r = next_message(&mut beta).await;
        assert_eq!(text_of(&r, 1), text);
        assert_eq!(text_of(&r, 2), text);
        beta.ack(vec![r.seq]).await.unwrap();
    }

    // alice adds a second device: bob's next send reaches both of hers.
    alpha.add_device("handle:alice", 2, memory_store()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    beta.send(("handle:bob", 1), "handle:alice", ContentType::Message, "b-2", b"to all of you").await.unwrap();
    let r = next_message(&mut alpha).await;
    assert_eq!(r.plaintexts.len(), 2, "{r:?}");
    assert_eq!(text_of(&r, 2), "to all of you");
    alpha.ack(vec![r.seq]).await.unwrap();

    // The router never held a plaintext.
    for p in [&secret[..], b"who goes there", b"ratchet step 3", b"to all of you"] {
        assert!(!router_holds(&tc, p), "router storage contains {:?}", String::from_utf8_lossy(p));
    }
    // The test's scan can find what is there: message ids are stored in clear.
    assert!(router_holds(&tc, b"a-r3"));
    tc.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_decrypt_out_of_order() {
    let tc = TestCluster::start(3).await.unwrap();
    let mut alpha = Messenger::new(tc.client("alpha"));
    let mut beta = Messenger::new(tc.client("beta"));
    alpha.add_device("handle:alice", 1, memory_store()).await.unwrap();
    beta.add_device("handle:bob", 1, memory_store()).await.unwrap();
    // Establish the session both ways first.
    alpha.send(("handle:alice", 1), "handle:bob", ContentType::Message, "hello", b"hello").await.unwrap();
    let r = next_message(&mut beta).await;
    beta.ack(vec![r.seq]).await.unwrap();
    beta.send(("handle:bob", 1), "handle:alice", ContentType::Message, "hi", b"hi").await.unwrap();
    let r = next_message(&mut alpha).await;
    alpha.ack(vec![r.seq]).await.unwrap();

    for i in 0..6 {
        alpha
            .send(
                ("handle:alice", 1),
                "handle:bob",
                ContentType::Message,
                &format!("o-{i}"),
                format!("message {i}").as_bytes(),
            )
            .await
            .unwrap();
    }
    // Fetch the raw entries, then open them in reverse order.
    let raw = tc.client("beta");
    let mut sub = raw.subscribe(16);
    let mut entries = Vec::new();
    while entries.len() < 6 {
        entries.push(tokio::time::timeout(Duration::from_secs(10), sub.next()).await.unwrap().unwrap());
    }
    entries.reverse();
    let mut texts = Vec::new();
    for e in entries {
        let Some(Inbound::Message(r)) = beta.open(e).await.unwrap() else { panic!("message expected") };
        assert!(r.failures.is_empty(), "{:?}", r.failures);
        texts.push(text_of(&r, 1));
        beta.ack(vec![r.seq]).await.unwrap();
    }
    let expected: Vec<String> = (0..6).rev().map(|i| format!("message {i}")).collect();
    assert_eq!(texts, expected);
    tc.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reinstalled_device_gets_a_new_session() {
    let tc = TestCluster::start(3).await.unwrap();
    let mut alpha = Messenger::new(tc.client("alpha"));
    let mut beta = Messenger::new(tc.client("beta"));
    alpha.add_device("handle:alice", 1, memory_store()).await.unwrap();
    beta.add_device("handle:bob", 1, memory_store()).await.unwrap();
    alpha.send(("handle:alice", 1), "handle:bob", ContentType::Message, "r-1", b"before").await.unwrap();
    let r = next_message(&mut beta).await;
    assert_eq!(text_of(&r, 1), "before");
    beta.ack(vec![r.seq]).await.unwrap();

    // bob reinstalls device 1: new identity, new registration id, new keys.
    let mut beta2 = Messenger::new(tc.client("beta"));
    beta2.add_device("handle:bob", 1, memory_store()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    // alice's old session is for the old registration id: the SDK notices,
    // claims a new bundle and starts over.
    alpha.send(("handle:alice", 1), "handle:bob", ContentType::Message, "r-2", b"after").await.unwrap();
    let r = next_message(&mut beta2).await;
    assert_eq!(text_of(&r, 1), "after");
    assert_eq!(alpha.take_identity_changes(), vec![("handle:bob".to_string(), 1)], "safety number change reported");

    // An application that does not accept identity changes gets an error instead.
    let mut beta3 = Messenger::new(tc.client("beta"));
    beta3.add_device("handle:bob", 1, memory_store()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    alpha.accept_identity_changes = false;
    let err = alpha.send(("handle:alice", 1), "handle:bob", ContentType::Message, "r-3", b"strict").await.unwrap_err();
    assert!(err.to_string().contains("untrusted identity"), "{err}");
    tc.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_prekey_stock_is_topped_up_when_it_runs_low() {
    let tc = TestCluster::start(3).await.unwrap();
    let mut beta = Messenger::new(tc.client("beta"));
    beta.prekey_batch = 5;
    beta.prekey_low_water = 3;
    beta.add_device("handle:bob", 1, memory_store()).await.unwrap();
    let alpha = tc.client("alpha");
    // Three claims leave 2 < 3 of each kind.
    for _ in 0..3 {
        alpha.fetch_bundles("handle:bob", 0).await.unwrap();
    }
    let count = tc.client("beta").prekey_count("handle:bob", 1).await.unwrap();
    assert_eq!(count.one_time_prekeys_remaining, 2);
    assert_eq!(beta.top_up_prekeys().await.unwrap(), 1);
    let count = tc.client("beta").prekey_count("handle:bob", 1).await.unwrap();
    assert_eq!((count.one_time_prekeys_remaining, count.kyber_one_time_prekeys_remaining), (7, 7));
    // Above the low-water mark nothing is uploaded.
    assert_eq!(beta.top_up_prekeys().await.unwrap(), 0);
    tc.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_survive_a_restart_with_the_sled_store() {
    use router_e2ee::store::SledProtocolStore;
    let tc = TestCluster::start(3).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (identity, registration_id) = new_identity();
    let mut alpha = Messenger::new(tc.client("alpha"));
    alpha.add_device("handle:alice", 1, memory_store()).await.unwrap();
    {
        let mut beta: Messenger<SledProtocolStore> = Messenger::new(tc.client("beta"));
        let store = SledProtocolStore::open(dir.path(), identity, registration_id).unwrap();
        beta.add_device("handle:bob", 1, store).await.unwrap();
        alpha.send(("handle:alice", 1), "handle:bob", ContentType::Message, "p-1", b"first").await.unwrap();
        let Inbound::Message(r) = beta.next().await.unwrap() else { panic!() };
        assert_eq!(text_of(&r, 1), "first");
        beta.ack(vec![r.seq]).await.unwrap();
    }
    // The provider process restarts: its sessions come back from disk.
    let mut beta: Messenger<SledProtocolStore> = Messenger::new(tc.client("beta"));
    beta.adopt_device("handle:bob", 1, SledProtocolStore::open_existing(dir.path()).unwrap()).unwrap();
    alpha.send(("handle:alice", 1), "handle:bob", ContentType::Message, "p-2", b"second").await.unwrap();
    let Inbound::Message(r) = beta.next().await.unwrap() else { panic!() };
    assert_eq!(text_of(&r, 1), "second");
    tc.shutdown().await;
}

async fn next_group(m: &mut Messenger<InMemSignalProtocolStore>) -> router_e2ee::ReceivedGroup {
    match tokio::time::timeout(Duration::from_secs(15), m.next())
        .await
        .expect("group message in time")
        .expect("receive")
    {
        Inbound::Group(g) => g,
        other => panic!("expected a group message, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_messages_are_end_to_end_encrypted_with_sender_keys() {
    use router_sdk::v1::{CreateGroupRequest, GroupMember, GroupRole, UpdateGroupRequest};
    let tc = TestCluster::start(3).await.unwrap();
    let mut alpha = Messenger::new(tc.client("alpha"));
    let mut beta = Messenger::new(tc.client("beta"));
    let mut gamma = Messenger::new(tc.client("gamma"));
    alpha.add_device("handle:ana", 1, memory_store()).await.unwrap();
    beta.add_device("handle:ben", 1, memory_store()).await.unwrap();
    beta.add_device("handle:ben", 2, memory_store()).await.unwrap();
    beta.add_device("handle:bo", 1, memory_store()).await.unwrap();
    gamma.add_device("handle:gus", 1, memory_store()).await.unwrap();
    let member = |u: &str| GroupMember { user_id: u.into(), role: GroupRole::Member as i32 };
    alpha
        .client()
        .create_group(CreateGroupRequest {
            group_id: "book-club".into(),
            creator_user_id: "handle:ana".into(),
            members: vec![member("handle:ben"), member("handle:bo")],
        })
        .await
        .unwrap();

    // ana sends: ben (two devices) and bo, both at beta, decrypt it; beta got one entry for both users.
    let secret = b"chapter 3 on thursday";
    alpha.send_group(("handle:ana", 1), "book-club", ContentType::Message, "g-1", secret).await.unwrap();
    let g = next_group(&mut beta).await;
    assert_eq!((g.group_id.as_str(), g.group_seq, g.sender_user.as_str()), ("book-club", 0, "handle:ana"));
    let mut got: Vec<(String, u32)> = g
        .plaintexts
        .iter()
        .map(|(u, d, p)| {
            assert_eq!(p.as_slice(), secret);
            (u.clone(), *d)
        })
        .collect();
    got.sort();
    assert_eq!(
        got,
        vec![("handle:ben".into(), 1), ("handle:ben".into(), 2), ("handle:bo".into(), 1)],
        "{:?}",
        g.failures
    );
    beta.ack(vec![g.seq]).await.unwrap();
    // The router holds the sender-key ciphertext, never the text.
    assert!(!router_holds(&tc, secret));

    // gus joins (new epoch): he reads what is sent after, with a new sender key.
    alpha
        .client()
        .update_group(UpdateGroupRequest {
            group_id: "book-club".into(),
            actor_user_id: "handle:ana".into(),
            set: vec![member("handle:gus")],
            remove_user_ids: vec!["handle:bo".into()],
        })
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    alpha.send_group(("handle:ana", 1), "book-club", ContentType::Message, "g-2", b"welcome gus").await.unwrap();
    let g = next_group(&mut gamma).await;
    assert_eq!(g.epoch, 2);
    assert_eq!(g.plaintexts, vec![("handle:gus".to_string(), 1, b"welcome gus".to_vec())], "{:?}", g.failures);
    gamma.ack(vec![g.seq]).await.unwrap();
    let g = next_group(&mut beta).await;
    // bo was removed: only ben's devices are recipients now.
    assert!(g.plaintexts.iter().all(|(u, _, p)| u == "handle:ben" && p == b"welcome gus"));
    assert_eq!(g.plaintexts.len(), 2, "{:?}", g.failures);

    // A member replies through the same mechanism.
    beta.ack(vec![g.seq]).await.unwrap();
    gamma.send_group(("handle:gus", 1), "book-club", ContentType::Message, "g-3", b"thanks").await.unwrap();
    // ana's mailbox also holds her own two messages (the sender's device skips them).
    let mut g = next_group(&mut alpha).await;
    while g.message_id != "g-3" {
        assert!(g.plaintexts.is_empty() && g.failures.is_empty() && g.sender_user == "handle:ana");
        alpha.ack(vec![g.seq]).await.unwrap();
        g = next_group(&mut alpha).await;
    }
    assert_eq!(g.plaintexts, vec![("handle:ana".to_string(), 1, b"thanks".to_vec())], "{:?}", g.failures);
    tc.shutdown().await;
}
