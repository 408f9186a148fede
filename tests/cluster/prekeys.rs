//! Exactly-once one-time prekeys under concurrent claims; verified uploads.

use crate::common::setup_user;
use router_testkit::TestCluster;
use router_testkit::fixtures::DeviceIdentity;
use std::collections::BTreeSet;
use tonic::Code;

/// 64 claims of one user by one provider exceed the default claim bucket.
fn generous_claims(raw: &mut router_node::config::RawConfig) {
    raw.limits.prekey_claim_burst = Some(1_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_concurrent_claims_of_fifty_keys() {
    let tc = TestCluster::start_with(3, generous_claims).await.unwrap();
    let beta = tc.client("beta");
    setup_user(&beta, "tel:+4915100000001", &[(1, 4242)]).await;
    let mut keys = DeviceIdentity::new(7);
    let stored = beta.upload_prekeys(keys.upload("tel:+4915100000001", 1, 1, 50, true)).await.unwrap();
    assert_eq!((stored.one_time_prekeys_remaining, stored.kyber_one_time_prekeys_remaining), (50, 50));

    let leader = tc.cluster.wait_for_leader(std::time::Duration::from_secs(10)).await.unwrap();
    let log_before =
        tc.cluster.node(leader).node.as_ref().unwrap().raft().metrics().borrow().last_log_index.unwrap_or(0);
    // 64 claimers spread over the three nodes, all at once.
    let clients: Vec<_> = (1..=3).map(|n| tc.client_on("alpha", &[n, n % 3 + 1])).collect();
    let mut tasks = Vec::new();
    for i in 0..64 {
        let c = clients[i % 3].clone();
        tasks.push(tokio::spawn(async move { c.fetch_bundles("tel:+4915100000001", 0).await }));
    }
    let mut ec_ids = Vec::new();
    let mut kyber_ids = Vec::new();
    let mut exhausted = 0;
    for t in tasks {
        let resp = t.await.unwrap().expect("claim");
        assert_eq!(resp.provider_id, "beta");
        assert_eq!(resp.bundles.len(), 1);
        let b = &resp.bundles[0];
        assert_eq!((b.device_id, b.registration_id), (1, 4242));
        assert!(b.signed_prekey.is_some());
        assert_eq!(&b.identity_key[..], &keys.identity_key()[..]);
        match &b.one_time_prekey {
            Some(k) => {
                assert!(!b.one_time_exhausted);
                ec_ids.push(k.key_id);
                let kyber = b.kyber_prekey.as_ref().expect("kyber one-time key");
                assert!(!b.kyber_is_last_resort);
                kyber_ids.push(kyber.key_id);
            }
            None => {
                assert!(b.one_time_exhausted, "explicit exhausted indication");
                assert!(b.kyber_is_last_resort, "last-resort Kyber key once the stock is gone");
                assert_eq!(b.kyber_prekey.as_ref().unwrap().key_id, u32::MAX);
                exhausted += 1;
            }
        }
    }
    // Group commit: concurrent claims share log entries.
    let log_after =
        tc.cluster.node(leader).node.as_ref().unwrap().raft().metrics().borrow().last_log_index.unwrap_or(0);
    println!("64 claims took {} log entries", log_after - log_before);
    assert!(log_after - log_before < 64, "claims were not batched: {} entries", log_after - log_before);
    let distinct: BTreeSet<u32> = ec_ids.iter().copied().collect();
    assert_eq!(ec_ids.len(), 50, "exactly the stocked one-time prekeys were handed out");
    assert_eq!(distinct.len(), 50, "no one-time prekey was handed out twice");
    assert_eq!(kyber_ids.iter().copied().collect::<BTreeSet<_>>().len(), 50);
    assert_eq!(exhausted, 14);
    let count = beta.prekey_count("tel:+4915100000001", 1).await.unwrap();
    assert_eq!((count.one_time_prekeys_remaining, count.kyber_one_time_prekeys_remaining), (0, 0));
    assert!(count.has_signed_prekey && count.has_kyber_last_resort);
    tc.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_with_bad_signatures_are_refused_whole() {
    let tc = TestCluster::start(3).await.unwrap();
    let beta = tc.client("beta");
    setup_user(&beta, "handle:carol", &[(1, 7)]).await;
    let mut keys = DeviceIdentity::new(11);
    beta.upload_prekeys(keys.upload("handle:carol", 1, 1, 10, false)).await.unwrap();

    // A signature made by another identity key.
    let mut other = DeviceIdentity::new(12);
    let mut bad = keys.upload("handle:carol", 1, 100, 5, false);
    bad.signed_prekey = Some(other.signed_prekey(2));
    let err = beta.upload_prekeys(bad).await.unwrap_err();
    assert_eq!(err.code(), Some(Code::InvalidArgument));
    assert_eq!(err.reason(), Some("BAD_SIGNATURE"));
    assert_eq!(err.detail().unwrap().field, "signed_prekey.signature");

    // A corrupted Kyber signature in the middle of a batch.
    let mut bad = keys.upload("handle:carol", 1, 200, 5, true);
    let mut sig = bad.kyber_one_time_prekeys[3].signature.to_vec();
    sig[10] ^= 1;
    bad.kyber_one_time_prekeys[3].signature = sig.into();
    let err = beta.upload_prekeys(bad).await.unwrap_err();
    assert_eq!(err.detail().unwrap().field, "kyber_one_time_prekeys[3].signature");

    // Nothing of either upload was stored.
    let count = beta.prekey_count("handle:carol", 1).await.unwrap();
    assert_eq!((count.one_time_prekeys_remaining, count.kyber_one_time_prekeys_remaining), (10, 0));
    tc.shutdown().await;
}

fn tight_claims(raw: &mut router_node::config::RawConfig) {
    raw.limits.prekey_claim_burst = Some(3);
    raw.limits.prekey_claim_refill_ms = Some(60_000);
    raw.limits.low_prekey_threshold = Some(8);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claims_are_rate_limited_and_low_stock_is_pushed_to_the_owner() {
    use router_proto::v1::mailbox_entry::Kind;
    let tc = TestCluster::start_with(3, tight_claims).await.unwrap();
    let beta = tc.client("beta");
    setup_user(&beta, "handle:nia", &[(1, 9)]).await;
    let mut keys = DeviceIdentity::new(21);
    beta.upload_prekeys(keys.upload("handle:nia", 1, 1, 10, false)).await.unwrap();
    let alpha = tc.client("alpha");
    for _ in 0..3 {
        alpha.fetch_bundles("handle:nia", 0).await.unwrap();
    }
    // The fourth claim within the bucket's refill time is refused, with a retry-after.
    let err = alpha.fetch_bundles("handle:nia", 0).await.unwrap_err();
    assert_eq!((err.code(), err.reason()), (Some(Code::ResourceExhausted), Some("RATE_LIMITED")));
    let retry = err.detail().unwrap().retry_after_ms;
    assert!(retry > 0 && retry <= 60_000, "{retry}");
    // The bucket is per requester: another provider may still claim.
    tc.client("gamma").fetch_bundles("handle:nia", 0).await.unwrap();
    // 10 - 4 = 6 < 8: the owner got exactly one low-stock notice (on crossing below 8).
    let mut sub = beta.subscribe(8);
    let e = tokio::time::timeout(std::time::Duration::from_secs(10), sub.next()).await.unwrap().unwrap();
    match e.kind {
        Some(Kind::LowStock(l)) => {
            assert_eq!((l.user_id.as_str(), l.device_id, l.one_time_prekeys_remaining), ("handle:nia", 1, 7));
        }
        other => panic!("expected a low-stock notice, got {other:?}"),
    }
    sub.ack(vec![e.seq]).await.unwrap();
    assert!(
        tokio::time::timeout(std::time::Duration::from_millis(500), sub.next()).await.is_err(),
        "one notice per crossing"
    );
    tc.shutdown().await;
}
