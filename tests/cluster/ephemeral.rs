//! Ephemeral content (typing, call signaling): pushed to the connected
//! receive streams of the recipient's provider on any node, never stored.
//! Receipts, by contrast, travel through the mailbox like any envelope.

use crate::common::*;
use router_core::ProviderId;
use router_sdk::RouterClient;
use router_sdk::v1::{ContentType, MailboxEntry, SendRequest, mailbox_entry};
use router_testkit::TestCluster;
use std::path::Path;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tonic::Code;

const BOB: [(u32, u32); 2] = [(1, 100), (2, 200)];
const WAIT: Duration = Duration::from_secs(10);

/// An ephemeral send to every given device; `marker` is the ciphertext prefix.
fn ephemeral(id: &str, recipient: &str, devices: &[(u32, u32)], kind: ContentType, marker: &str) -> SendRequest {
    let mut req = message(id, recipient, devices);
    req.content_type = kind as i32;
    for p in &mut req.parts {
        p.ciphertext = format!("{marker} device {}", p.device_id).into_bytes().into();
    }
    req
}

/// A provider's receive stream, read by a background task: up to 64
/// entries, each within 60 s, then the task ends (the stream with it).
struct Receiver {
    entries: mpsc::Receiver<MailboxEntry>,
    task: JoinHandle<()>,
}

impl Receiver {
    fn start(client: &RouterClient, window: u32) -> Self {
        let mut sub = client.subscribe(window);
        let (tx, entries) = mpsc::channel(64);
        let task = tokio::spawn(async move {
            for _ in 0..64 {
                match tokio::time::timeout(Duration::from_secs(60), sub.next()).await {
                    Ok(Ok(e)) => {
                        if tx.send(e).await.is_err() {
                            return;
                        }
                    }
                    _ => return,
                }
            }
        });
        Receiver { entries, task }
    }

    async fn next(&mut self) -> MailboxEntry {
        tokio::time::timeout(WAIT, self.entries.recv()).await.expect("entry within timeout").expect("stream open")
    }

    async fn quiet(&mut self, wait: Duration) {
        if let Ok(e) = tokio::time::timeout(wait, self.entries.recv()).await {
            panic!("expected nothing more, got {e:?}");
        }
    }

    fn stop(self) {
        self.task.abort();
    }
}

/// Waits until `node` has exactly `n` receive streams of `provider` registered.
async fn wait_streams(tc: &TestCluster, node: u64, provider: &str, n: usize) {
    let ctx = tc.cluster.node(node).node.as_ref().expect("node running").ctx().clone();
    let provider = ProviderId::new(provider);
    let deadline = tokio::time::Instant::now() + WAIT;
    while ctx.ephemeral.connected(&provider) != n {
        assert!(
            tokio::time::Instant::now() < deadline,
            "node {node}: {n} stream(s) of {provider} not registered in time"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until every node's replica knows `user` (ephemeral sends are
/// validated on the receiving node's replica).
async fn replicated(tc: &TestCluster, user: &str) {
    let user = router_core::UserId::new(user);
    tc.wait_until(WAIT, |s| s.user(&user).is_some_and(|u| !u.devices.is_empty())).await.unwrap();
}

fn envelope(e: &MailboxEntry) -> &router_sdk::v1::Envelope {
    match &e.kind {
        Some(mailbox_entry::Kind::Envelope(env)) => env,
        other => panic!("expected an envelope, got {other:?}"),
    }
}

/// Leader, and the two other nodes (sender's, receiver's).
fn roles(tc: &TestCluster) -> (u64, u64, u64) {
    let leader = tc.cluster.leader().expect("leader");
    let others: Vec<u64> = tc.all_nodes().into_iter().filter(|n| *n != leader).collect();
    (leader, others[0], others[1])
}

fn mailbox_depth_everywhere(tc: &TestCluster, provider: &str) -> Vec<usize> {
    let p = ProviderId::new(provider);
    tc.cluster.nodes.iter().filter_map(|n| n.node.as_ref()).map(|n| n.ctx().read(|s| s.mailbox_depth(&p))).collect()
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Files under `dir` (recursively, bounded depth) that contain `needle`.
fn files_containing(dir: &Path, needle: &[u8], depth: u32) -> Vec<String> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else { return found };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() && depth > 0 {
            found.extend(files_containing(&path, needle, depth - 1));
        } else if std::fs::read(&path).is_ok_and(|bytes| contains(&bytes, needle)) {
            found.push(path.display().to_string());
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typing_reaches_a_stream_on_another_follower_outside_the_window_and_unstored() {
    let tc = TestCluster::start(3).await.unwrap();
    let (leader, a, c) = roles(&tc);
    let alpha = tc.client_on("alpha", &[a]);
    let beta = tc.client_on("beta", &[c]);
    setup_user(&beta, "handle:bob", &BOB).await;
    replicated(&tc, "handle:bob").await;

    // Window 1, filled by a stored message that stays unacked.
    let stored = alpha.send(message("m-1", "handle:bob", &BOB)).await.unwrap();
    assert_eq!(stored.delivered_streams, 0);
    let mut rx = Receiver::start(&beta, 1);
    let first = rx.next().await;
    assert!(!first.ephemeral);
    assert_eq!(first.seq, stored.mailbox_seq);
    wait_streams(&tc, c, "beta", 1).await;
    for n in [leader, a] {
        wait_streams(&tc, n, "beta", 0).await;
    }

    // Sent on node A, delivered by node C; B (the leader) has no part in it.
    let before = now_ms();
    let sent = alpha.send(ephemeral("t-1", "handle:bob", &BOB, ContentType::Typing, "typing-ct")).await.unwrap();
    assert_eq!((sent.mailbox_seq, sent.delivered_streams), (0, 1));
    assert!(sent.accepted_at_ms >= before && sent.accepted_at_ms <= now_ms());
    let e = rx.next().await;
    assert!(e.ephemeral);
    assert_eq!(e.seq, 0);
    assert_eq!(e.accepted_at_ms, sent.accepted_at_ms);
    assert_eq!(e.expires_at_ms, sent.accepted_at_ms + 30_000, "default ephemeral TTL");
    let env = envelope(&e);
    assert_eq!((env.sender_provider_id.as_str(), env.message_id.as_str()), ("alpha", "t-1"));
    assert_eq!(env.content_type, ContentType::Typing as i32);
    assert_eq!(env.parts.len(), 2);
    assert_eq!(&env.parts[0].ciphertext[..], b"typing-ct device 1");

    // Call signaling with a TTL above the cap (capped at 60 s, not refused),
    // and a second entry with the same seq 0: the SDK does not dedupe them.
    let mut offer = ephemeral("c-1", "handle:bob", &BOB, ContentType::CallSignaling, "offer-ct");
    offer.ttl_seconds = 3600;
    let sent = alpha.send(offer).await.unwrap();
    let e = rx.next().await;
    assert!(e.ephemeral);
    assert_eq!(envelope(&e).content_type, ContentType::CallSignaling as i32);
    assert_eq!(e.expires_at_ms, sent.accepted_at_ms + 60_000);
    rx.quiet(Duration::from_millis(300)).await;

    // Nothing of it in any mailbox: only the stored message is there. Once
    // that is acked, an ack of seq 0 (what an ephemeral entry carries) is
    // unknown. (Mailbox sequences start at 0 too: tell ephemeral entries
    // apart by their flag, never by seq.)
    tc.wait_until(WAIT, |s| s.mailbox_depth(&ProviderId::new("beta")) == 1).await.unwrap();
    assert_eq!(mailbox_depth_everywhere(&tc, "beta"), vec![1, 1, 1]);
    let acked = beta.ack(vec![stored.mailbox_seq]).await.unwrap();
    assert_eq!((acked.removed, acked.unknown), (1, 0));
    tc.wait_until(WAIT, |s| s.mailbox_depth(&ProviderId::new("beta")) == 0).await.unwrap();
    let acked = beta.ack(vec![0]).await.unwrap();
    assert_eq!((acked.removed, acked.unknown), (0, 1), "an ephemeral seq 0 is unknown to the mailbox");

    // When the stream ends it is unregistered: the next send finds nobody.
    rx.stop();
    wait_streams(&tc, c, "beta", 0).await;
    let err = alpha.send(ephemeral("t-2", "handle:bob", &BOB, ContentType::Typing, "typing-ct")).await.unwrap_err();
    assert_eq!((err.code(), err.reason()), (Some(Code::FailedPrecondition), Some("RECIPIENT_NOT_CONNECTED")));
    tc.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_streams_of_one_provider_on_different_nodes_both_get_it() {
    let tc = TestCluster::start(3).await.unwrap();
    let alpha = tc.client_on("alpha", &[1]);
    let beta2 = tc.client_on("beta", &[2]);
    let beta3 = tc.client_on("beta", &[3]);
    setup_user(&beta2, "handle:bob", &BOB).await;
    replicated(&tc, "handle:bob").await;
    let mut rx2 = Receiver::start(&beta2, 8);
    let mut rx3 = Receiver::start(&beta3, 8);
    wait_streams(&tc, 2, "beta", 1).await;
    wait_streams(&tc, 3, "beta", 1).await;

    let sent = alpha.send(ephemeral("t-1", "handle:bob", &BOB, ContentType::Typing, "two-streams")).await.unwrap();
    assert_eq!((sent.mailbox_seq, sent.delivered_streams), (0, 2));
    for rx in [&mut rx2, &mut rx3] {
        let e = rx.next().await;
        assert!(e.ephemeral);
        assert_eq!(envelope(&e).message_id, "t-1");
        rx.quiet(Duration::from_millis(200)).await;
    }

    // A third stream on the sender's own node counts too.
    let beta1 = tc.client_on("beta", &[1]);
    let mut rx1 = Receiver::start(&beta1, 8);
    wait_streams(&tc, 1, "beta", 1).await;
    let sent = alpha.send(ephemeral("t-2", "handle:bob", &BOB, ContentType::Typing, "three-streams")).await.unwrap();
    assert_eq!(sent.delivered_streams, 3);
    for rx in [&mut rx1, &mut rx2, &mut rx3] {
        assert_eq!(envelope(&rx.next().await).message_id, "t-2");
    }
    for rx in [rx1, rx2, rx3] {
        rx.stop();
    }
    tc.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nobody_connected_is_refused_and_validation_matches_stored_sends() {
    let tc = TestCluster::start(3).await.unwrap();
    let alpha = tc.client_on("alpha", &[1]);
    let beta = tc.client_on("beta", &[2]);
    setup_user(&beta, "handle:bob", &[(1, 100), (2, 200), (4, 400)]).await;
    setup_user(&alpha, "handle:alice", &[(1, 10)]).await;
    replicated(&tc, "handle:bob").await;
    replicated(&tc, "handle:alice").await;
    let devices = [(1, 100), (2, 200), (4, 400)];

    // No stream of beta anywhere.
    let err = alpha.send(ephemeral("t-1", "handle:bob", &devices, ContentType::Typing, "x")).await.unwrap_err();
    assert_eq!((err.code(), err.reason()), (Some(Code::FailedPrecondition), Some("RECIPIENT_NOT_CONNECTED")));
    assert!(err.to_string().contains("not stored"), "{err}");

    // With a stream connected, a wrong device list is still refused (and
    // nothing reaches the stream).
    let mut rx = Receiver::start(&beta, 8);
    wait_streams(&tc, 2, "beta", 1).await;
    let err = alpha
        .send(ephemeral("t-2", "handle:bob", &[(1, 101), (3, 300), (4, 400)], ContentType::CallSignaling, "x"))
        .await
        .unwrap_err();
    assert_eq!((err.code(), err.reason()), (Some(Code::FailedPrecondition), Some("DEVICE_MISMATCH")));
    let mismatch = err.detail().unwrap().device_mismatch.clone().unwrap();
    assert_eq!((mismatch.missing_devices, mismatch.extra_devices, mismatch.stale_devices), (vec![2], vec![3], vec![1]));
    // Unknown recipient; a sender user that belongs to another provider;
    // an oversized envelope: the same answers as for stored sends.
    let err = alpha.send(ephemeral("t-3", "handle:nobody", &[(1, 1)], ContentType::Typing, "x")).await.unwrap_err();
    assert_eq!((err.code(), err.reason()), (Some(Code::NotFound), Some("USER_NOT_FOUND")));
    let mut spoof = ephemeral("t-4", "handle:bob", &devices, ContentType::Typing, "x");
    (spoof.sender_user_id, spoof.sender_device_id) = ("handle:bob".into(), 1);
    let err = alpha.send(spoof).await.unwrap_err();
    assert_eq!((err.code(), err.reason()), (Some(Code::PermissionDenied), Some("NOT_OWNER")));
    let mut big = ephemeral("t-5", "handle:bob", &devices, ContentType::Typing, "x");
    big.parts[0].ciphertext = vec![7u8; 256 * 1024 + 1].into();
    let err = alpha.send(big).await.unwrap_err();
    assert_eq!((err.code(), err.reason()), (Some(Code::InvalidArgument), Some("TOO_LARGE")), "{err}");
    // A provider cannot push to streams through the peer port.
    let forged = router_node::ephemeral::EphemeralDelivery {
        provider: ProviderId::new("beta"),
        accepted_at_ms: now_ms(),
        expires_at_ms: now_ms() + 30_000,
        envelope: router_core::SendEnvelope {
            sender: ProviderId::new("gamma"),
            sender_user: None,
            sender_device: None,
            message_id: router_core::MessageId::new("forged"),
            recipient: router_core::UserId::new("handle:bob"),
            content_type: router_core::ContentType::Typing,
            ttl_ms: 30_000,
            parts: Vec::new(),
            traceparent: None,
        },
    };
    let certs = &tc.cluster.provider_certs["alpha"];
    let read = |p: &Path| std::fs::read(p).unwrap();
    let tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(read(&tc.cluster.ca)))
        .identity(tonic::transport::Identity::from_pem(read(&certs.cert), read(&certs.key)))
        .domain_name("localhost");
    let channel = tonic::transport::Endpoint::from_shared(format!("https://{}", tc.cluster.node(2).peer_addr))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect_lazy();
    let st = router_proto::v1::peer_client::PeerClient::new(channel)
        .deliver_ephemeral(router_proto::v1::RaftPayload {
            data: bincode::serialize(&forged).unwrap().into(),
            format_version: 1,
            incarnation: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(st.code(), Code::PermissionDenied);
    rx.quiet(Duration::from_millis(300)).await;

    // The corrected send goes through, with the sender user named.
    let mut ok = ephemeral("t-2", "handle:bob", &devices, ContentType::CallSignaling, "x");
    (ok.sender_user_id, ok.sender_device_id) = ("handle:alice".into(), 1);
    assert_eq!(alpha.send(ok).await.unwrap().delivered_streams, 1);
    let e = rx.next().await;
    assert_eq!((envelope(&e).sender_user_id.as_str(), envelope(&e).sender_device_id), ("handle:alice", 1));
    assert_eq!(mailbox_depth_everywhere(&tc, "beta"), vec![0, 0, 0]);
    rx.stop();
    tc.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ephemeral_ciphertext_is_in_no_replica_and_no_file() {
    let tc = TestCluster::start(3).await.unwrap();
    let (_leader, a, c) = roles(&tc);
    let alpha = tc.client_on("alpha", &[a]);
    let beta = tc.client_on("beta", &[c]);
    setup_user(&beta, "handle:bob", &BOB).await;
    replicated(&tc, "handle:bob").await;
    let mut rx = Receiver::start(&beta, 16);
    wait_streams(&tc, c, "beta", 1).await;

    const SECRET: &str = "EPHEMERAL-ICE-CANDIDATE-3b9f01d7c4";
    for i in 0..5 {
        let kind = if i % 2 == 0 { ContentType::CallSignaling } else { ContentType::Typing };
        let sent = alpha.send(ephemeral(&format!("e-{i}"), "handle:bob", &BOB, kind, SECRET)).await.unwrap();
        assert_eq!(sent.delivered_streams, 1);
        assert!(rx.next().await.ephemeral);
    }
    // A stored message, as the control: the scan must find its bytes.
    const STORED: &str = "STORED-CIPHERTEXT-5d2e88a0f1";
    let mut control = message("s-1", "handle:bob", &BOB);
    for p in &mut control.parts {
        p.ciphertext = format!("{STORED} device {}", p.device_id).into_bytes().into();
    }
    let stored = alpha.send(control).await.unwrap();
    let e = rx.next().await;
    assert!(!e.ephemeral);
    tc.wait_until(WAIT, |s| s.mailbox_depth(&ProviderId::new("beta")) == 1).await.unwrap();

    for n in tc.cluster.nodes.iter() {
        let node = n.node.as_ref().unwrap();
        let state = node.ctx().read(bincode::serialize).unwrap();
        assert!(contains(&state, STORED.as_bytes()), "control: node {} replica holds the stored message", n.id);
        assert!(!contains(&state, SECRET.as_bytes()), "node {} replica holds ephemeral content", n.id);
        let files = files_containing(&n.config.data_dir, SECRET.as_bytes(), 6);
        assert!(files.is_empty(), "node {}: ephemeral content on disk in {files:?}", n.id);
        let control_files = files_containing(&n.config.data_dir, STORED.as_bytes(), 6);
        assert!(!control_files.is_empty(), "control: node {} has the stored message on disk", n.id);
    }
    // The only mailbox entry is the stored message.
    sub_ack(&beta, stored.mailbox_seq).await;
    tc.wait_until(WAIT, |s| s.mailbox_depth(&ProviderId::new("beta")) == 0).await.unwrap();
    rx.stop();
    tc.shutdown().await;
}

async fn sub_ack(client: &RouterClient, seq: u64) {
    let r = client.ack(vec![seq]).await.unwrap();
    assert_eq!((r.removed, r.unknown), (1, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_receipt_goes_back_through_the_senders_mailbox() {
    let tc = TestCluster::start(3).await.unwrap();
    let alpha = tc.client_on("alpha", &[1]);
    let beta = tc.client_on("beta", &[3]);
    setup_user(&alpha, "handle:alice", &[(1, 10)]).await;
    setup_user(&beta, "handle:bob", &BOB).await;
    replicated(&tc, "handle:alice").await;
    replicated(&tc, "handle:bob").await;

    let mut msg = message("hello-1", "handle:bob", &BOB);
    (msg.sender_user_id, msg.sender_device_id) = ("handle:alice".into(), 1);
    alpha.send(msg).await.unwrap();
    let mut bob_sub = beta.subscribe(8);
    let got = next_within(&mut bob_sub, WAIT).await;
    assert_eq!(envelope(&got).sender_user_id, "handle:alice");
    bob_sub.ack(vec![got.seq]).await.unwrap();

    // Bob's device 1 answers with a read receipt: a stored envelope for
    // alice, sent while alpha has no stream connected at all.
    let mut receipt = message("receipt-hello-1", "handle:alice", &[(1, 10)]);
    receipt.content_type = ContentType::Receipt as i32;
    (receipt.sender_user_id, receipt.sender_device_id) = ("handle:bob".into(), 1);
    let sent = beta.send(receipt).await.unwrap();
    assert_eq!(sent.delivered_streams, 0);
    tc.wait_until(WAIT, |s| s.mailbox_depth(&ProviderId::new("alpha")) == 1).await.unwrap();

    let mut alice_sub = alpha.subscribe(8);
    let e = next_within(&mut alice_sub, WAIT).await;
    assert!(!e.ephemeral);
    assert_eq!(e.seq, sent.mailbox_seq);
    let env = envelope(&e);
    assert_eq!(env.content_type, ContentType::Receipt as i32);
    assert_eq!((env.sender_provider_id.as_str(), env.sender_user_id.as_str()), ("beta", "handle:bob"));
    assert_eq!((env.recipient_user_id.as_str(), env.message_id.as_str()), ("handle:alice", "receipt-hello-1"));
    assert_eq!(&env.parts[0].ciphertext[..], b"ciphertext of receipt-hello-1 for device 1");
    let acked = alice_sub.ack(vec![e.seq]).await.unwrap();
    assert_eq!(acked.removed, 1);
    tc.wait_until(WAIT, |s| s.mailbox_depth(&ProviderId::new("alpha")) == 0).await.unwrap();
    assert_quiet(&mut alice_sub, Duration::from_millis(300)).await;
    tc.shutdown().await;
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64
}
