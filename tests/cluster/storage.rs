//! The on-disk state: queued ciphertexts in payload files, read back with a
//! checksum; a damaged one is an error on that node, never other bytes, and
//! the other replicas still deliver the entry.

use crate::common::{message, setup_user};
use router_core::ProviderId;
use router_testkit::TestCluster;
use std::time::Duration;

const DEVICES: [(u32, u32); 1] = [(1, 31)];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_payload_ends_that_nodes_stream_and_another_node_delivers_it() {
    let tc = TestCluster::start(3).await.unwrap();
    setup_user(&tc.client("beta"), "handle:pia", &DEVICES).await;
    let mut send = message("damaged-1", "handle:pia", &DEVICES);
    send.parts[0].ciphertext = vec![0x5a; 4096].into();
    tc.client("alpha").send(send).await.unwrap();
    let beta = ProviderId::new("beta");
    tc.wait_until(Duration::from_secs(10), |s| s.mailbox_depth(&beta) == 1).await.unwrap();

    // Node 1's copy of the ciphertext is damaged on disk.
    let payloads = tc.cluster.node(1).config.data_dir.join("payloads");
    let mut damaged = 0;
    for entry in std::fs::read_dir(&payloads).unwrap() {
        let path = entry.unwrap().path();
        let mut bytes = std::fs::read(&path).unwrap();
        if let Some(i) = bytes.windows(64).position(|w| w.iter().all(|&b| b == 0x5a)) {
            bytes[i] ^= 0xff;
            std::fs::write(&path, bytes).unwrap();
            damaged += 1;
        }
    }
    assert_eq!(damaged, 1, "the ciphertext is in one payload file of node 1 ({})", payloads.display());

    let certs = &tc.cluster.provider_certs["beta"];
    let mut raw = router_proto::v1::messaging_client::MessagingClient::new(tc.raw_channel(1, &certs.cert, &certs.key));
    let mut stream = raw.receive(router_proto::v1::ReceiveRequest { window: 16 }).await.unwrap().into_inner();
    let err = tokio::time::timeout(Duration::from_secs(10), stream.message()).await.unwrap().unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");
    assert!(router_sdk::error::describe(&err).contains("PAYLOAD_UNREADABLE"), "{err:?}");

    // Nothing was lost: the entry is still queued, and node 2 delivers it intact.
    let mut sub = tc.client_on("beta", &[2]).subscribe(16);
    let entry = crate::common::next_within(&mut sub, Duration::from_secs(10)).await;
    let Some(router_proto::v1::mailbox_entry::Kind::Envelope(env)) = entry.kind else { panic!("{entry:?}") };
    assert_eq!(env.parts[0].ciphertext, vec![0x5a; 4096]);
    tc.shutdown().await;
}
