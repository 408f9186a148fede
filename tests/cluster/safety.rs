//! Cluster version 2 end to end: mail numbered from 1, expired entries never
//! handed out (and reported only when undelivered), retried `Once` requests
//! answered once, and a node whose Raft core stops failing closed.

use crate::common::*;
use router_core::{Command, Outcome, ProviderId};
use router_sdk::v1::mailbox_entry;
use router_testkit::TestCluster;
use router_testkit::fixtures::DeviceIdentity;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const BOB: [(u32, u32); 1] = [(1, 100)];

fn with_ttl(mut m: router_sdk::v1::SendRequest, seconds: u32) -> router_sdk::v1::SendRequest {
    m.ttl_seconds = seconds;
    m
}

/// Status line and body of a GET on a node's admin HTTP port (None when it
/// does not take connections).
async fn admin_get(addr: std::net::SocketAddr, path: &str) -> Option<(String, String)> {
    let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes()).await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    let (head, body) = out.split_once("\r\n\r\n").unwrap();
    Some((head.lines().next().unwrap_or_default().to_string(), body.to_string()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_cluster_runs_this_builds_cluster_version_and_numbers_mail_from_one() {
    let tc = TestCluster::start(3).await.unwrap();
    tc.wait_until(Duration::from_secs(10), |s| s.cluster_version() == router_core::CLUSTER_VERSION).await.unwrap();
    let alpha = tc.client("alpha");
    let beta = tc.client("beta");
    setup_user(&beta, "handle:bob", &BOB).await;
    let first = alpha.send(message("s-1", "handle:bob", &BOB)).await.unwrap();
    assert_eq!(first.mailbox_seq, 1, "stored sequences start at 1 (0 marks ephemeral entries)");
    let mut sub = beta.subscribe(16);
    let e = next_within(&mut sub, Duration::from_secs(10)).await;
    assert_eq!((e.seq, e.ephemeral), (1, false));
    let acked = beta.ack(vec![0]).await.unwrap();
    assert_eq!((acked.removed, acked.unknown), (0, 1), "an ack of 0 never removes a stored entry");
    let acked = beta.ack(vec![1]).await.unwrap();
    assert_eq!((acked.removed, acked.unknown), (1, 0));
    tc.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_entry_is_never_handed_out_and_only_an_undelivered_one_is_reported() {
    let tc = TestCluster::start(3).await.unwrap();
    let alpha = tc.client("alpha");
    let beta = tc.client_on("beta", &[2]);
    setup_user(&beta, "handle:bob", &BOB).await;

    // Delivered before its expiry, acked after it (inside the grace): no report.
    alpha.send(with_ttl(message("late-ack", "handle:bob", &BOB), 2)).await.unwrap();
    let mut sub = beta.subscribe(16);
    let delivered = next_within(&mut sub, Duration::from_secs(5)).await;
    assert_eq!(message_id_of(&delivered), "late-ack");
    drop(sub);

    // Never delivered: sent while no stream is connected, with a one-second TTL.
    alpha.send(with_ttl(message("never", "handle:bob", &BOB), 1)).await.unwrap();
    tokio::time::sleep(Duration::from_secs(4)).await;
    let acked = beta.ack(vec![delivered.seq]).await.unwrap();
    assert_eq!((acked.removed, acked.unknown), (1, 0), "an ack inside the grace still finds the entry");

    // A stream connecting 3 s past the expiry of "never" does not get it.
    let mut late = beta.subscribe(16);
    assert_quiet(&mut late, Duration::from_secs(1)).await;
    drop(late);

    // The sender hears of "never" (not delivered), and of nothing else.
    let mut reports = alpha.subscribe(16);
    let grace = Duration::from_millis(router_core::version::DELIVERY_ACK_GRACE_MS);
    let report = next_within(&mut reports, grace + Duration::from_secs(10)).await;
    match &report.kind {
        Some(mailbox_entry::Kind::Expired(r)) => assert_eq!(r.message_id, "never"),
        other => panic!("expected an expiry report, got {other:?}"),
    }
    reports.ack(vec![report.seq]).await.unwrap();
    assert_quiet(&mut reports, Duration::from_secs(2)).await;
    tc.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_once_request_through_a_follower_gets_the_first_bundle() {
    let tc = TestCluster::start(3).await.unwrap();
    tc.wait_until(Duration::from_secs(10), |s| s.cluster_version() >= 2).await.unwrap();
    let beta = tc.client("beta");
    setup_user(&beta, "tel:+4915100000009", &[(1, 4242)]).await;
    let mut keys = DeviceIdentity::new(9);
    beta.upload_prekeys(keys.upload("tel:+4915100000009", 1, 1, 5, false)).await.unwrap();

    let leader = tc.cluster.wait_for_leader(Duration::from_secs(10)).await.unwrap();
    let follower = tc.all_nodes().into_iter().find(|n| *n != leader).unwrap();
    let writer = &tc.cluster.node(follower).node.as_ref().unwrap().ctx().writer;
    let claim = || Command::Once {
        request: router_core::RequestId { origin: 0xfeed, seq: 1 },
        command: Box::new(Command::ClaimPrekeys {
            requester: ProviderId::new("alpha"),
            user: router_core::UserId::new("tel:+4915100000009"),
            device: None,
        }),
    };
    let first = writer.submit(claim()).await.unwrap();
    let Outcome::Bundles { bundles, .. } = &first else { panic!("bundles expected, got {first:?}") };
    assert!(bundles[0].one_time.is_some());
    // The same request again (a forward retried after its answer was lost).
    assert_eq!(writer.submit(claim()).await.unwrap(), first);
    let count = beta.prekey_count("tel:+4915100000009", 1).await.unwrap();
    assert_eq!(count.one_time_prekeys_remaining, 4, "one key consumed by two attempts");
    tc.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_raft_core_stops_fails_closed() {
    let tc = TestCluster::start(3).await.unwrap();
    let beta = tc.client_on("beta", &[3]);
    setup_user(&beta, "handle:bob", &BOB).await;
    let mut sub = beta.subscribe(16);
    tc.client("alpha").send(message("before", "handle:bob", &BOB)).await.unwrap();
    assert_eq!(message_id_of(&next_within(&mut sub, Duration::from_secs(10)).await), "before");
    let ctx = tc.cluster.node(3).node.as_ref().unwrap().ctx().clone();
    assert_eq!(ctx.open_streams.load(std::sync::atomic::Ordering::Relaxed), 1);
    let admin = tc.cluster.node(3).admin_addr;
    assert!(admin_get(admin, "/readyz").await.expect("admin port").0.contains("200"));

    // What a storage error does to openraft: its core stops.
    ctx.raft.shutdown().await.unwrap();
    let node = tc.cluster.node(3).node.as_ref().unwrap();
    let reason = tokio::time::timeout(Duration::from_secs(5), node.failed()).await.expect("failed closed");
    assert!(reason.contains("raft stopped"), "{reason}");
    let health = router_node::admin_http::not_ready_because(&ctx).unwrap_or_default();
    assert!(health.starts_with("failed: raft stopped"), "{health}");
    // The admin port answers 503 until it closes with the rest of the node.
    if let Some((status, body)) = admin_get(admin, "/healthz").await {
        assert!(status.contains("503") && body.contains("failed"), "{status} {body}");
    }
    // Its receive stream was ended, and no new one is taken.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while ctx.open_streams.load(std::sync::atomic::Ordering::Relaxed) != 0 {
        assert!(tokio::time::Instant::now() < deadline, "the stream on the failed node is still open");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(sub);
    tc.shutdown().await;
}

/// A channel to a node's peer port with the certificate of node `as_node`.
fn peer_channel_as(tc: &TestCluster, to: u64, as_node: u64) -> tonic::transport::Channel {
    use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};
    let read = |p: &std::path::Path| std::fs::read(p).expect("read test certificate");
    let tls_of = &tc.cluster.node(as_node).config.tls;
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(read(&tc.cluster.ca)))
        .identity(Identity::from_pem(read(&tls_of.cert), read(&tls_of.key)))
        .domain_name("localhost");
    Endpoint::from_shared(format!("https://{}", tc.cluster.node(to).peer_addr))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect_lazy()
}

fn reason_of(status: &tonic::Status) -> String {
    use prost::Message;
    router_proto::v1::ErrorDetail::decode(status.details()).unwrap_or_default().reason
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_nodes_certificate_is_refused_by_every_peer_rpc_and_node_certificates_by_operator_calls() {
    use router_proto::v1::admin_client::AdminClient;
    use router_proto::v1::peer_client::PeerClient;
    use router_proto::v1::*;
    let tc = TestCluster::start(3).await.unwrap();

    // A node certificate may read the status and nothing an operator does.
    let mut as_node = AdminClient::new(peer_channel_as(&tc, 2, 1));
    as_node.status(StatusRequest {}).await.expect("a node may read the status");
    let refused = as_node.add_provider(AddProviderRequest { provider_id: "intruder".into() }).await.unwrap_err();
    assert_eq!((refused.code(), reason_of(&refused).as_str()), (tonic::Code::PermissionDenied, "OPERATOR_REQUIRED"));
    let refused = as_node.remove_member(RemoveMemberRequest { node_id: 3 }).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "a node may remove only itself");
    let refused = as_node
        .change_membership(ChangeMembershipRequest { voter_ids: vec![1], remove_unlisted: true })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "a node may only add itself as a voter");

    // Node 3 is removed; its certificate stays valid, but no member takes its calls.
    let mut admin = tc.admin(1);
    admin.remove_member(RemoveMemberRequest { node_id: 3 }).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    for member in [1, 2] {
        let node = tc.cluster.node(member).node.as_ref().unwrap();
        while !node.ctx().removed_peers.contains(3) {
            assert!(tokio::time::Instant::now() < deadline, "node {member} did not see node 3 removed");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    for member in [1, 2] {
        let mut peer = PeerClient::new(peer_channel_as(&tc, member, 3));
        let payload = || RaftPayload { data: vec![0u8].into(), format_version: 1, incarnation: 0 };
        let answers = [
            ("AppendEntries", peer.append_entries(payload()).await.map(|_| ())),
            ("Vote", peer.vote(payload()).await.map(|_| ())),
            ("InstallSnapshot", peer.install_snapshot(payload()).await.map(|_| ())),
            ("Elect", peer.elect(payload()).await.map(|_| ())),
            ("DeliverEphemeral", peer.deliver_ephemeral(payload()).await.map(|_| ())),
            ("Forward", peer.forward(payload()).await.map(|_| ())),
            ("ForwardBatch", peer.forward_batch(payload()).await.map(|_| ())),
        ];
        for (rpc, answer) in answers {
            let st = answer.expect_err(rpc);
            assert_eq!(
                (st.code(), reason_of(&st).as_str()),
                (tonic::Code::PermissionDenied, "NOT_A_MEMBER"),
                "node {member}, Peer.{rpc}: {st:?}"
            );
        }
    }
    tc.shutdown().await;
}

/// The value of one series (exact name and labels) in a `/metrics` text.
fn series(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
        .map_or(0.0, |v| v.trim().parse().unwrap())
}

/// Connections the provider port closed at once, whichever cap they hit.
fn closed_at_accept(metrics: &str) -> f64 {
    ["max_connections", "max_connections_per_source", "max_handshakes", "max_handshakes_per_source"]
        .iter()
        .map(|r| series(metrics, &format!("router_connections_refused_total{{port=\"provider\",reason=\"{r}\"}}")))
        .sum()
}

fn open_files_limit() -> u64 {
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
    let line = limits.lines().find(|l| l.starts_with("Max open files")).unwrap_or_default();
    line.split_whitespace().nth(3).and_then(|v| v.parse().ok()).unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_thousand_idle_connections_stop_neither_providers_nor_raft() {
    const IDLE: usize = 5_000;
    // The test's sockets, the node's side of those it accepts (at most one
    // source's cap) and the cluster's own files.
    let needed = (IDLE + router_node::accept::ConnectionLimits::default().max_connections_per_source + 1_000) as u64;
    assert!(
        open_files_limit() >= needed,
        "this test holds {IDLE} sockets (and the node its side of them): raise `ulimit -n` to at least {needed}"
    );
    let tc = TestCluster::start(3).await.unwrap();
    let alpha = tc.client_on("alpha", &[1]);
    let beta = tc.client_on("beta", &[1]);
    setup_user(&beta, "handle:bob", &BOB).await;
    alpha.send(message("before", "handle:bob", &BOB)).await.unwrap();

    // Idle TCP connections to node 1's provider port that never send a byte.
    let addr = tc.cluster.node(1).provider_addr;
    let mut idle = Vec::with_capacity(IDLE);
    let started = tokio::time::Instant::now();
    for _ in 0..IDLE {
        if let Ok(Ok(s)) = tokio::time::timeout(Duration::from_millis(200), tokio::net::TcpStream::connect(addr)).await
        {
            idle.push(s);
        }
        assert!(started.elapsed() < Duration::from_secs(60), "connecting took too long");
    }
    assert!(idle.len() >= IDLE / 2, "only {} connections were made", idle.len());
    let flooded = tokio::time::Instant::now();

    // Connections that finished their handshake before keep working, and so does Raft.
    for i in 0..20 {
        alpha.send(message(&format!("during-{i}"), "handle:bob", &BOB)).await.unwrap();
    }
    let mut sub = beta.subscribe(64);
    for _ in 0..21 {
        next_within(&mut sub, Duration::from_secs(10)).await;
    }
    let limits = router_node::accept::ConnectionLimits::default();
    let metrics = crate::metrics::scrape(tc.cluster.node(1).admin_addr).await;
    let open = series(&metrics, "router_open_connections{port=\"provider\"}");
    assert!(open <= limits.max_connections_per_source as f64, "{open} connections open from one source address");
    let refused_at_accept = closed_at_accept(&metrics);
    assert!(refused_at_accept > 0.0, "the flood never reached a cap ({} idle connections)", idle.len());

    // Past the handshake timeout every idle one is gone, and a new client gets in.
    tokio::time::sleep_until(flooded + limits.handshake_timeout + Duration::from_secs(1)).await;
    let metrics = crate::metrics::scrape(tc.cluster.node(1).admin_addr).await;
    let timed_out =
        series(&metrics, "router_connections_refused_total{port=\"provider\",reason=\"handshake_timeout\"}");
    let refused_at_accept = closed_at_accept(&metrics);
    assert!(
        refused_at_accept + timed_out >= idle.len() as f64,
        "{} idle connections, {refused_at_accept} refused at accept, {timed_out} timed out",
        idle.len()
    );
    let fresh = tc.client_on("alpha", &[1]);
    fresh.send(message("after", "handle:bob", &BOB)).await.unwrap();
    drop(idle);
    tc.shutdown().await;
}
