//! `Messaging.SendBatch`: each send of a batch is answered as `Send` would
//! answer it, and the SDK puts concurrent sends in batches.

use crate::common::*;
use router_proto::v1::messaging_client::MessagingClient;
use router_proto::v1::{ErrorDetail, SendBatchRequest, SendError, SendResponse, send_result};
use router_testkit::TestCluster;
use std::collections::BTreeSet;
use std::time::Duration;
use tonic::Code;

const BOB_DEVICES: [(u32, u32); 2] = [(1, 100), (2, 200)];

fn accepted(r: &router_proto::v1::SendResult) -> &SendResponse {
    match &r.result {
        Some(send_result::Result::Accepted(a)) => a,
        other => panic!("expected an accepted send, got {other:?}"),
    }
}

fn refused(r: &router_proto::v1::SendResult) -> (Code, ErrorDetail) {
    match &r.result {
        Some(send_result::Result::Error(SendError { code, detail, .. })) => {
            (Code::from_i32(*code), detail.clone().expect("every refusal carries an ErrorDetail"))
        }
        other => panic!("expected a refused send, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_batch_answers_each_send_as_send_would() {
    let tc = TestCluster::start(3).await.unwrap();
    let leader = tc.cluster.wait_for_leader(Duration::from_secs(10)).await.unwrap();
    // Through a follower: the stored sends are forwarded to the leader.
    let follower = tc.all_nodes().into_iter().find(|n| *n != leader).unwrap();
    let beta = tc.client("beta");
    setup_user(&beta, "handle:bob", &BOB_DEVICES).await;
    let a = &tc.cluster.provider_certs["alpha"];
    let mut raw = MessagingClient::new(tc.raw_channel(follower, &a.cert, &a.key));

    let sends = vec![
        message("b-1", "handle:bob", &BOB_DEVICES),
        message("b-2", "handle:bob", &BOB_DEVICES),
        // The same message id again, in the same batch: stored once.
        message("b-1", "handle:bob", &BOB_DEVICES),
        message("b-x", "handle:nobody", &BOB_DEVICES),
        // Device 2 left out.
        message("b-3", "handle:bob", &BOB_DEVICES[..1]),
        message("", "handle:bob", &BOB_DEVICES),
    ];
    let results = raw.send_batch(SendBatchRequest { sends }).await.unwrap().into_inner().results;
    assert_eq!(results.len(), 6, "one answer per send");
    let (first, second) = (accepted(&results[0]), accepted(&results[1]));
    assert_ne!(first.mailbox_seq, second.mailbox_seq);
    assert_eq!(accepted(&results[2]), first, "a repeated message id gets the first answer");
    let (code, detail) = refused(&results[3]);
    assert_eq!((code, detail.reason.as_str()), (Code::NotFound, "USER_NOT_FOUND"));
    let (code, detail) = refused(&results[4]);
    assert_eq!((code, detail.reason.as_str()), (Code::FailedPrecondition, "DEVICE_MISMATCH"));
    assert_eq!(detail.device_mismatch.expect("mismatch detail").missing_devices, vec![2]);
    let (code, detail) = refused(&results[5]);
    assert_eq!((code, detail.reason.as_str(), detail.field.as_str()), (Code::InvalidArgument, "EMPTY", "message_id"));

    // Refused as a whole: nothing in it is stored.
    let empty = raw.send_batch(SendBatchRequest { sends: Vec::new() }).await.unwrap_err();
    assert_eq!(empty.code(), Code::InvalidArgument);
    let too_many: Vec<_> = (0..257).map(|i| message(&format!("t-{i}"), "handle:bob", &BOB_DEVICES)).collect();
    let refusal = raw.send_batch(SendBatchRequest { sends: too_many }).await.unwrap_err();
    assert_eq!(refusal.code(), Code::InvalidArgument);
    let detail = <ErrorDetail as prost::Message>::decode(refusal.details()).unwrap();
    assert_eq!(
        (detail.reason.as_str(), detail.field.as_str(), detail.limit, detail.actual),
        ("TOO_LARGE", "sends", 256, 257)
    );

    // Larger than max_send_batch_bytes (22 x 200 KiB > 4 MiB): cut off by the transport.
    let big: Vec<_> = (0..22)
        .map(|i| {
            let mut m = message(&format!("big-{i}"), "handle:bob", &BOB_DEVICES);
            m.parts[0].ciphertext = vec![7u8; 200 * 1024].into();
            m
        })
        .collect();
    let cut = raw.send_batch(SendBatchRequest { sends: big }).await.unwrap_err();
    assert_eq!(cut.code(), Code::OutOfRange, "{cut:?}");

    // Exactly b-1 and b-2 were stored, once each.
    let mut sub = beta.subscribe(16);
    let got: BTreeSet<String> =
        [next_within(&mut sub, Duration::from_secs(10)).await, next_within(&mut sub, Duration::from_secs(10)).await]
            .iter()
            .map(message_id_of)
            .collect();
    assert_eq!(got, BTreeSet::from(["b-1".to_string(), "b-2".to_string()]));
    assert_quiet(&mut sub, Duration::from_millis(500)).await;
    tc.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_sdk_sends_share_batch_calls_and_keep_their_own_answers() {
    let tc = TestCluster::start(3).await.unwrap();
    tc.cluster.wait_for_leader(Duration::from_secs(10)).await.unwrap();
    let alpha = tc.client("alpha");
    let beta = tc.client("beta");
    setup_user(&beta, "handle:bob", &BOB_DEVICES).await;

    // All at once; every tenth to a user nobody registered.
    let sends = (0..120).map(|i| {
        let alpha = alpha.clone();
        async move {
            let to = if i % 10 == 9 { "handle:nobody" } else { "handle:bob" };
            (i, alpha.send(message(&format!("c-{i}"), to, &BOB_DEVICES)).await)
        }
    });
    let mut seqs = BTreeSet::new();
    for (i, answer) in futures::future::join_all(sends).await {
        if i % 10 == 9 {
            let err = answer.expect_err("unknown recipient");
            assert_eq!((err.code(), err.reason()), (Some(Code::NotFound), Some("USER_NOT_FOUND")), "send {i}");
        } else {
            assert!(seqs.insert(answer.expect("stored").mailbox_seq), "send {i}: a mailbox seq given twice");
        }
    }
    assert_eq!(seqs.len(), 108);

    // They went in SendBatch calls (to whichever node the client uses).
    let mut batched = 0.0;
    for node in tc.all_nodes() {
        let text = crate::metrics::scrape(tc.cluster.node(node).admin_addr).await;
        batched += text
            .lines()
            .find_map(|l| l.strip_prefix(r#"router_send_batch_items_total{code="OK"} "#))
            .map_or(0.0, |v| v.parse::<f64>().unwrap());
    }
    assert!(batched >= 2.0, "expected sends inside SendBatch calls, saw {batched}");

    // Each stored send arrives once.
    let mut sub = beta.subscribe(256);
    let mut ids = BTreeSet::new();
    for _ in 0..108 {
        assert!(ids.insert(message_id_of(&next_within(&mut sub, Duration::from_secs(10)).await)));
    }
    assert_quiet(&mut sub, Duration::from_millis(500)).await;
    tc.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sdk_keeps_to_a_lower_max_send_batch_of_the_router() {
    let tc = TestCluster::start_with(3, |c| c.limits.max_send_batch = Some(4)).await.unwrap();
    tc.cluster.wait_for_leader(Duration::from_secs(10)).await.unwrap();
    // One node only, so its metrics tell the whole story.
    let alpha = tc.client_on("alpha", &[1]);
    let beta = tc.client("beta");
    setup_user(&beta, "handle:bob", &BOB_DEVICES).await;

    for round in 0..2 {
        let sends = (0..40).map(|i| {
            let alpha = alpha.clone();
            async move { alpha.send(message(&format!("r{round}-{i}"), "handle:bob", &BOB_DEVICES)).await }
        });
        let answers = futures::future::join_all(sends).await;
        let seqs: BTreeSet<u64> = answers.into_iter().map(|a| a.expect("stored").mailbox_seq).collect();
        assert_eq!(seqs.len(), 40, "round {round}: every send stored, each with its own seq");
    }
    let text = crate::metrics::scrape(tc.cluster.node(1).admin_addr).await;
    let series = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(' ')))
            .map_or(0.0, |v| v.parse::<f64>().unwrap())
    };
    // The first batch over the router's limit was refused whole (its sends then
    // went alone); later batches kept to 4 and were accepted.
    let refused =
        series(r#"router_grpc_requests_total{code="InvalidArgument",method="SendBatch",service="Messaging"}"#);
    assert!(refused >= 1.0, "a batch above the limit was refused: {refused}");
    assert!(refused <= 4.0, "the client lowered its batch size after the refusal: {refused} refusals");
    assert!(series(r#"router_send_batch_items_total{code="OK"}"#) >= 4.0);
    tc.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batched_sends_through_a_leader_kill_are_all_stored_once() {
    const SENDS: usize = 400;
    let mut tc = TestCluster::start(3).await.unwrap();
    let leader = tc.cluster.wait_for_leader(Duration::from_secs(10)).await.unwrap();
    let others: Vec<u64> = tc.all_nodes().into_iter().filter(|n| *n != leader).collect();
    setup_user(&tc.client("beta"), "handle:bob", &BOB_DEVICES).await;
    // The sender starts on the leader: batch calls are in flight there when it dies.
    let alpha = tc.client_on("alpha", &[leader, others[0], others[1]]);
    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel();
    let sender = tokio::spawn({
        use futures::StreamExt;
        let alpha = alpha.clone();
        async move {
            futures::stream::iter(0..SENDS)
                .map(|i| {
                    let (alpha, done) = (alpha.clone(), done_tx.clone());
                    async move {
                        let id = format!("k-{i}");
                        let answer = alpha.send(message(&id, "handle:bob", &BOB_DEVICES)).await;
                        let _ = done.send(());
                        (id, answer)
                    }
                })
                .buffer_unordered(48)
                .collect::<Vec<_>>()
                .await
        }
    });
    for _ in 0..SENDS / 4 {
        done_rx.recv().await.unwrap();
    }
    tc.cluster.crash(leader).await;
    let answers = sender.await.unwrap();
    let mut seqs = BTreeSet::new();
    for (id, answer) in &answers {
        let seq = answer.as_ref().unwrap_or_else(|e| panic!("{id}: {e}")).mailbox_seq;
        assert!(seqs.insert(seq), "{id}: mailbox seq {seq} given twice");
    }
    assert_eq!(seqs.len(), SENDS);

    // Every acknowledged send is in the mailbox, once.
    let beta = tc.client_on("beta", &others);
    let mut sub = beta.subscribe(1024);
    let mut ids = BTreeSet::new();
    for _ in 0..SENDS {
        let id = message_id_of(&next_within(&mut sub, Duration::from_secs(15)).await);
        assert!(ids.insert(id.clone()), "{id} stored twice");
    }
    assert_quiet(&mut sub, Duration::from_millis(500)).await;
    tc.shutdown().await;
}
