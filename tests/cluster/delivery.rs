//! Send → receive → ack across nodes, idempotent retries, device mismatch.

use crate::common::*;
use router_sdk::v1::mailbox_entry;
use router_testkit::TestCluster;
use std::time::Duration;
use tonic::Code;

const BOB_DEVICES: [(u32, u32); 2] = [(1, 100), (2, 200)];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_receive_ack_between_providers_on_different_nodes() {
    let tc = TestCluster::start(3).await.unwrap();
    // alpha talks only to node 1, beta only to node 2.
    let alpha = tc.client_on("alpha", &[1]);
    let beta = tc.client_on("beta", &[2]);
    setup_user(&beta, "handle:bob", &BOB_DEVICES).await;
    let resolved = alpha.resolve("handle:bob").await.unwrap();
    assert_eq!(resolved.provider_id, "beta");
    assert_eq!(resolved.devices.len(), 2);

    let first = alpha.send(message("m-1", "handle:bob", &BOB_DEVICES)).await.unwrap();
    // A retry (same message id) is answered exactly as the first send.
    let retry = alpha.send(message("m-1", "handle:bob", &BOB_DEVICES)).await.unwrap();
    assert_eq!(first, retry);
    let second = alpha.send(message("m-2", "handle:bob", &BOB_DEVICES)).await.unwrap();
    assert!(second.mailbox_seq > first.mailbox_seq);

    let mut sub = beta.subscribe(16);
    let e1 = next_within(&mut sub, Duration::from_secs(10)).await;
    let e2 = next_within(&mut sub, Duration::from_secs(10)).await;
    assert_eq!((message_id_of(&e1), message_id_of(&e2)), ("m-1".to_string(), "m-2".to_string()));
    assert_eq!(e1.seq, first.mailbox_seq);
    let Some(mailbox_entry::Kind::Envelope(env)) = &e1.kind else { panic!("envelope expected") };
    assert_eq!(env.sender_provider_id, "alpha");
    assert_eq!(env.parts.len(), 2);
    assert_eq!(&env.parts[0].ciphertext[..], b"ciphertext of m-1 for device 1");
    // m-1 was stored once: nothing else arrives.
    assert_quiet(&mut sub, Duration::from_millis(500)).await;

    let acked = sub.ack(vec![e1.seq, e2.seq, 999_999]).await.unwrap();
    assert_eq!((acked.removed, acked.unknown), (2, 1));
    tc.wait_until(Duration::from_secs(5), |s| s.mailbox_depth(&router_core::ProviderId::new("beta")) == 0)
        .await
        .unwrap();

    // After the ack, a new subscription gets nothing again.
    let mut again = beta.subscribe(16);
    assert_quiet(&mut again, Duration::from_millis(500)).await;
    tc.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unacked_entries_are_redelivered_on_a_new_stream_and_window_is_respected() {
    let tc = TestCluster::start(3).await.unwrap();
    let alpha = tc.client("alpha");
    let beta = tc.client_on("beta", &[3]);
    setup_user(&beta, "handle:bob", &BOB_DEVICES).await;
    for i in 0..5 {
        alpha.send(message(&format!("w-{i}"), "handle:bob", &BOB_DEVICES)).await.unwrap();
    }
    // Window 2: exactly two entries in flight until something is acked.
    let mut sub = beta.subscribe(2);
    let a = next_within(&mut sub, Duration::from_secs(10)).await;
    let b = next_within(&mut sub, Duration::from_secs(10)).await;
    assert_quiet(&mut sub, Duration::from_millis(500)).await;
    sub.ack(vec![a.seq]).await.unwrap();
    let c = next_within(&mut sub, Duration::from_secs(10)).await;
    assert_eq!(message_id_of(&c), "w-2");
    drop(sub);

    // A new stream redelivers what was not acked (b and c), then continues.
    let mut sub = beta.subscribe(16);
    let ids: Vec<String> = [
        next_within(&mut sub, Duration::from_secs(10)).await,
        next_within(&mut sub, Duration::from_secs(10)).await,
        next_within(&mut sub, Duration::from_secs(10)).await,
        next_within(&mut sub, Duration::from_secs(10)).await,
    ]
    .iter()
    .map(message_id_of)
    .collect();
    assert_eq!(ids, vec![message_id_of(&b), "w-2".into(), "w-3".into(), "w-4".into()]);
    tc.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_list_mismatch_lists_missing_extra_and_stale_devices() {
    let tc = TestCluster::start(3).await.unwrap();
    let alpha = tc.client("alpha");
    let beta = tc.client("beta");
    setup_user(&beta, "handle:bob", &[(1, 100), (2, 200), (4, 400)]).await;
    // Device 1 with an old registration id (stale), 2 missing, 3 unknown (extra), 4 fine.
    let err = alpha.send(message("mm-1", "handle:bob", &[(1, 101), (3, 300), (4, 400)])).await.unwrap_err();
    assert_eq!(err.code(), Some(Code::FailedPrecondition));
    assert_eq!(err.reason(), Some("DEVICE_MISMATCH"));
    let mismatch = err.detail().unwrap().device_mismatch.clone().unwrap();
    assert_eq!(mismatch.missing_devices, vec![2]);
    assert_eq!(mismatch.extra_devices, vec![3]);
    assert_eq!(mismatch.stale_devices, vec![1]);
    // Nothing was stored; the corrected retry with the same id is accepted.
    assert_eq!(
        tc.cluster
            .node(1)
            .node
            .as_ref()
            .unwrap()
            .ctx()
            .read(|s| s.mailbox_depth(&router_core::ProviderId::new("beta"))),
        0
    );
    let ok = alpha.send(message("mm-1", "handle:bob", &[(1, 100), (2, 200), (4, 400)])).await.unwrap();
    assert_eq!(ok.mailbox_seq, 1, "the first stored entry of a mailbox");
    // An unknown recipient is NOT_FOUND.
    let err = alpha.send(message("mm-2", "handle:nobody", &[(1, 1)])).await.unwrap_err();
    assert_eq!((err.code(), err.reason()), (Some(Code::NotFound), Some("USER_NOT_FOUND")));
    tc.shutdown().await;
}
