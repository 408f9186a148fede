//! Federation: two 3-node clusters (different CAs, different providers) on
//! loopback, each registered as the other's peer. Their federation links go
//! through TCP proxies made here, so the whole link can be cut and restored.

use crate::common::{message, setup_user};
use router_node::config::RawConfig;
use router_sdk::v1::{MailboxEntry, RegisterPeerRequest, SetPeerStatusRequest, mailbox_entry};
use router_sdk::{RouterClient, Subscription};
use router_testkit::TestCluster;
use router_testkit::fixtures::DeviceIdentity;
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

const ALICE: &str = "handle:fed-alice";
const BOB: &str = "handle:fed-bob";
const ALICE_DEVICES: [(u32, u32); 2] = [(1, 101), (2, 102)];
const BOB_DEVICES: [(u32, u32); 2] = [(1, 201), (2, 202)];

/// Short backoff and cache so the test does not sit out production delays.
fn quick_federation(raw: &mut RawConfig) {
    if let Some(f) = raw.federation.as_mut() {
        f.backoff_max_ms = Some(1_000);
        f.request_timeout_ms = Some(2_000);
        f.route_cache_ttl_ms = Some(1_000);
    }
}

/// A TCP relay in front of one federation listener. `cut` drops the listener
/// and every connection through it; `restore` listens on the same port again.
struct LinkProxy {
    addr: SocketAddr,
    target: SocketAddr,
    task: Option<JoinHandle<()>>,
}

impl LinkProxy {
    async fn start(target: SocketAddr) -> LinkProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy addr");
        LinkProxy { addr, target, task: Some(tokio::spawn(proxy(listener, target))) }
    }

    fn cut(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort(); // drops the listener and the JoinSet: every connection ends
        }
    }

    async fn restore(&mut self) {
        for _ in 0..100 {
            if let Ok(l) = TcpListener::bind(self.addr).await {
                self.task = Some(tokio::spawn(proxy(l, self.target)));
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("could not listen on {} again", self.addr);
    }
}

async fn proxy(listener: TcpListener, target: SocketAddr) {
    let mut conns = JoinSet::new();
    while let Ok((mut inbound, _)) = listener.accept().await {
        conns.spawn(async move {
            if let Ok(mut outbound) = TcpStream::connect(target).await {
                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
            }
        });
    }
}

/// Cluster A serves provider alpha, cluster B serves beta and delta; each is
/// registered as the other's peer, reached through proxies.
struct Pair {
    a: TestCluster,
    b: TestCluster,
    proxies: Vec<LinkProxy>,
}

impl Pair {
    async fn start() -> Pair {
        let a = TestCluster::start_federated(3, "cluster-a", &["alpha"], quick_federation).await.expect("cluster a");
        let b = TestCluster::start_federated(3, "cluster-b", &["beta", "delta"], quick_federation)
            .await
            .expect("cluster b");
        let mut proxies = Vec::new();
        let (mut to_a, mut to_b) = (Vec::new(), Vec::new());
        for (cluster, endpoints) in [(&a, &mut to_a), (&b, &mut to_b)] {
            for ep in cluster.federation_endpoints(&cluster.all_nodes()) {
                let p = LinkProxy::start(ep.parse().expect("addr")).await;
                endpoints.push(p.addr.to_string());
                proxies.push(p);
            }
        }
        let register = |id: &str, endpoints: Vec<String>, ca: String, providers: &[&str]| RegisterPeerRequest {
            cluster_id: id.into(),
            endpoints,
            ca_pem: ca,
            provider_ids: providers.iter().map(|p| p.to_string()).collect(),
            max_queued_entries: 0,
        };
        a.admin(2)
            .register_peer(register("cluster-b", to_b, b.ca_pem(), &["beta", "delta"]))
            .await
            .expect("a registers b");
        b.admin(3).register_peer(register("cluster-a", to_a, a.ca_pem(), &["alpha"])).await.expect("b registers a");
        let peer = |id: &'static str| move |s: &router_core::State| s.peer(&router_core::ClusterId::new(id)).is_some();
        a.wait_until(Duration::from_secs(10), peer("cluster-b")).await.expect("b registered on every node of a");
        b.wait_until(Duration::from_secs(10), peer("cluster-a")).await.expect("a registered on every node of b");
        Pair { a, b, proxies }
    }

    fn cut(&mut self) {
        self.proxies.iter_mut().for_each(LinkProxy::cut);
    }

    async fn restore(&mut self) {
        for p in &mut self.proxies {
            p.restore().await;
        }
    }
}

/// Sends `count` messages `<tag>-<n>` from `from` to `to` (all its
/// devices), one after the other; `progress` counts the ones accepted.
fn sender(
    client: RouterClient,
    tag: &'static str,
    to: &'static str,
    devices: [(u32, u32); 2],
    count: u64,
    progress: Arc<AtomicU64>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        for n in 0..count {
            let id = format!("{tag}-{n:04}");
            let mut attempts = 0;
            // The SDK already retries within its deadline; a failover plus a
            // link cut can outlast that, so retry the same id (dedup makes it safe).
            while let Err(e) = client.send(message(&id, to, &devices)).await {
                attempts += 1;
                assert!(attempts < 20, "send {id} kept failing: {e}");
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            progress.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(15)).await;
        }
    })
}

/// Receives until `count` distinct envelopes arrived (acking each),
/// returning (message id, sender provider) by mailbox sequence.
async fn collect(sub: &mut Subscription, count: usize, within: Duration) -> BTreeMap<u64, (String, String)> {
    let mut by_seq = BTreeMap::new();
    let deadline = tokio::time::Instant::now() + within;
    while by_seq.len() < count {
        let entry: MailboxEntry = tokio::time::timeout_at(deadline, sub.next())
            .await
            .unwrap_or_else(|_| panic!("only {} of {count} envelopes arrived", by_seq.len()))
            .expect("receive");
        if let Some(mailbox_entry::Kind::Envelope(env)) = &entry.kind {
            by_seq.insert(entry.seq, (env.message_id.clone(), env.sender_provider_id.clone()));
        }
        sub.ack(vec![entry.seq]).await.expect("ack");
    }
    by_seq
}

fn check_inbox(by_seq: &BTreeMap<u64, (String, String)>, tag: &str, count: u64, sender: &str) {
    let ids: Vec<&String> = by_seq.values().map(|(id, _)| id).collect();
    let distinct: BTreeSet<&String> = ids.iter().copied().collect();
    assert_eq!(distinct.len(), ids.len(), "a message stored twice: {ids:?}");
    let want: BTreeSet<String> = (0..count).map(|n| format!("{tag}-{n:04}")).collect();
    assert_eq!(distinct.into_iter().cloned().collect::<BTreeSet<_>>(), want, "lost or unexpected messages");
    // One sender device: mailbox order is send order.
    let mut sorted = ids.clone();
    sorted.sort();
    assert_eq!(ids, sorted, "mailbox order differs from send order");
    assert!(by_seq.values().all(|(_, s)| s == sender), "sender not qualified as {sender}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn clusters_exchange_1to1_through_node_kills_and_a_cut_link_without_loss_or_duplicates() {
    let mut pair = Pair::start().await;
    let alpha = pair.a.client("alpha");
    let beta = pair.b.client("beta");
    setup_user(&alpha, ALICE, &ALICE_DEVICES).await;
    setup_user(&beta, BOB, &BOB_DEVICES).await;

    // Each side resolves the other's user, its provider qualified by cluster.
    let bob = alpha.resolve(BOB).await.expect("resolve bob from cluster a");
    assert_eq!(bob.provider_id, "beta@cluster-b");
    assert_eq!(bob.devices.iter().map(|d| (d.device_id, d.registration_id)).collect::<Vec<_>>(), BOB_DEVICES);
    assert_eq!(beta.resolve(ALICE).await.expect("resolve alice from b").provider_id, "alpha@cluster-a");
    let unknown = alpha.resolve("handle:nobody").await.expect_err("nobody anywhere");
    assert_eq!(unknown.reason(), Some("USER_NOT_FOUND"));

    const COUNT: u64 = 60;
    let (a_sent, b_sent) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let to_bob = sender(alpha.clone(), "a2b", BOB, BOB_DEVICES, COUNT, a_sent.clone());
    let to_alice = sender(beta.clone(), "b2a", ALICE, ALICE_DEVICES, COUNT, b_sent.clone());
    let progress = || a_sent.load(Ordering::SeqCst).min(b_sent.load(Ordering::SeqCst));
    let wait_for = |n: u64| {
        let progress = &progress;
        async move {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
            while progress() < n {
                assert!(tokio::time::Instant::now() < deadline, "senders stuck at {}", progress());
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    };

    // Mid-stream: cluster a loses its leader (the node relaying to b), b a follower.
    wait_for(15).await;
    let a_leader = pair.a.cluster.leader().expect("a has a leader");
    let b_leader = pair.b.cluster.leader().expect("b has a leader");
    let b_follower = pair.b.all_nodes().into_iter().find(|n| *n != b_leader).expect("a follower");
    pair.a.cluster.crash(a_leader).await;
    pair.b.cluster.crash(b_follower).await;

    // Then the whole link between the clusters goes; sends are still
    // accepted (durable in the sending cluster's outbound queue).
    wait_for(30).await;
    pair.cut();
    let during_cut = progress();
    wait_for(during_cut + 10).await;
    pair.restore().await;
    pair.a.cluster.restart(a_leader).await.expect("restart a's old leader");
    pair.b.cluster.restart(b_follower).await.expect("restart b's follower");

    to_bob.await.expect("sender a->b");
    to_alice.await.expect("sender b->a");
    let mut bob_inbox = beta.subscribe(64);
    let mut alice_inbox = alpha.subscribe(64);
    let at_bob = collect(&mut bob_inbox, COUNT as usize, Duration::from_secs(60)).await;
    let at_alice = collect(&mut alice_inbox, COUNT as usize, Duration::from_secs(60)).await;
    check_inbox(&at_bob, "a2b", COUNT, "alpha@cluster-a");
    check_inbox(&at_alice, "b2a", COUNT, "beta@cluster-b");
    // Nothing else trickles in late (a relay repeated after the failover is deduplicated).
    assert!(tokio::time::timeout(Duration::from_secs(2), bob_inbox.next()).await.is_err(), "late duplicate at bob");

    // Every outbound queue drained.
    let empty = |peer: &'static str| {
        move |s: &router_core::State| {
            s.mailbox_depth(&router_core::federation::outbound_queue(&router_core::ClusterId::new(peer))) == 0
        }
    };
    pair.a.wait_until(Duration::from_secs(20), empty("cluster-b")).await.expect("a's queue to b drained");
    pair.b.wait_until(Duration::from_secs(20), empty("cluster-a")).await.expect("b's queue to a drained");
    pair.a.shutdown().await;
    pair.b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn remote_prekeys_are_handed_out_once_and_refusals_come_back_as_reports() {
    let mut pair = Pair::start().await;
    let alpha = pair.a.client("alpha");
    let beta = pair.b.client("beta");
    let delta = pair.b.client("delta");
    setup_user(&alpha, ALICE, &ALICE_DEVICES).await;
    setup_user(&beta, BOB, &BOB_DEVICES).await;
    let mut keys = DeviceIdentity::new(41);
    beta.upload_prekeys(keys.upload(BOB, 1, 1, 40, false)).await.expect("bob's keys");

    // 50 claims of bob's bundle, half from cluster a (alpha, remote), half
    // from cluster b (delta, local), concurrently: 40 one-time keys, each once.
    let mut claims = JoinSet::new();
    for worker in 0..10 {
        let client = if worker % 2 == 0 { alpha.clone() } else { delta.clone() };
        claims.spawn(async move {
            let mut got = Vec::new();
            for _ in 0..5 {
                let r = client.fetch_bundles(BOB, 0).await.expect("claim");
                let remote = r.provider_id == "beta@cluster-b";
                assert!(remote || r.provider_id == "beta", "provider named {}", r.provider_id);
                got.extend(r.bundles.iter().filter_map(|b| b.one_time_prekey.as_ref().map(|k| (k.key_id, remote))));
            }
            got
        });
    }
    let mut handed = Vec::new();
    while let Some(r) = claims.join_next().await {
        handed.extend(r.expect("claimer"));
    }
    let ids: BTreeSet<u32> = handed.iter().map(|(id, _)| *id).collect();
    assert_eq!(ids.len(), handed.len(), "a one-time prekey handed out twice: {handed:?}");
    assert_eq!(ids, (1..=40).collect(), "every key handed out once");
    assert!(handed.iter().any(|(_, remote)| *remote) && handed.iter().any(|(_, remote)| !*remote));

    // A send queued while the link is down, to a device bob removes before
    // it arrives: cluster b refuses it and alpha gets a report, not silence.
    let mut alice_inbox = alpha.subscribe(16);
    pair.cut();
    let accepted = alpha.send(message("stale-1", BOB, &BOB_DEVICES)).await.expect("accepted during the cut");
    assert!(accepted.accepted_at_ms > 0);
    beta.remove_device(BOB, 2).await.expect("bob drops device 2");
    pair.restore().await;
    let entry = tokio::time::timeout(Duration::from_secs(30), alice_inbox.next()).await.expect("report").expect("rx");
    match entry.kind {
        Some(mailbox_entry::Kind::Undeliverable(r)) => {
            assert_eq!((r.message_id.as_str(), r.recipient_user_id.as_str()), ("stale-1", BOB));
            assert_eq!(r.reason, "DEVICE_MISMATCH", "{}", r.detail);
        }
        other => panic!("expected an undeliverable report, got {other:?}"),
    }

    // The suspend switch: cluster b refuses a suspended peer's calls; the
    // queue waits and drains after resume.
    pair.b
        .admin(1)
        .set_peer_status(SetPeerStatusRequest { cluster_id: "cluster-a".into(), suspended: true })
        .await
        .expect("suspend");
    let err = alpha.fetch_bundles(BOB, 0).await.expect_err("refused while suspended");
    assert_eq!(err.reason(), Some("PEER_SUSPENDED"), "{err}");
    pair.b
        .admin(1)
        .set_peer_status(SetPeerStatusRequest { cluster_id: "cluster-a".into(), suspended: false })
        .await
        .expect("resume");
    pair.a.shutdown().await;
    pair.b.shutdown().await;
}

fn group_message(group: &str, id: &str, sender: &str) -> router_sdk::v1::SendGroupRequest {
    router_sdk::v1::SendGroupRequest {
        group_id: group.into(),
        message_id: id.into(),
        sender_user_id: sender.into(),
        sender_device_id: 1,
        content_type: router_sdk::v1::ContentType::Message as i32,
        ttl_seconds: 0,
        ciphertext: format!("sender-key ciphertext of {id}").into_bytes().into(),
        per_device: vec![],
    }
}

/// Group messages as one provider's mailbox holds them, in mailbox order:
/// (group id, group sequence, message id, sender provider).
async fn collect_group(sub: &mut Subscription, count: usize, within: Duration) -> Vec<(String, u64, String, String)> {
    let mut by_seq = BTreeMap::new();
    let deadline = tokio::time::Instant::now() + within;
    while by_seq.len() < count {
        let entry = tokio::time::timeout_at(deadline, sub.next())
            .await
            .unwrap_or_else(|_| panic!("only {} of {count} group messages arrived", by_seq.len()))
            .expect("receive");
        if let Some(mailbox_entry::Kind::Group(g)) = &entry.kind {
            by_seq.insert(
                entry.seq,
                (g.group_id.clone(), g.group_seq, g.message_id.clone(), g.sender_provider_id.clone()),
            );
        }
        sub.ack(vec![entry.seq]).await.expect("ack");
    }
    by_seq.into_values().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_group_homed_in_one_cluster_is_delivered_in_one_order_on_both_sides() {
    let mut pair = Pair::start().await;
    let alpha = pair.a.client("alpha");
    let beta = pair.b.client("beta");
    setup_user(&alpha, ALICE, &ALICE_DEVICES).await;
    setup_user(&beta, BOB, &BOB_DEVICES).await;

    // Alice's group at cluster a (its hub), with bob of cluster b as a member.
    let create = router_sdk::v1::CreateGroupRequest {
        group_id: "family".into(),
        creator_user_id: ALICE.into(),
        members: vec![router_sdk::v1::GroupMember { user_id: BOB.into(), role: 1 }],
    };
    assert_eq!(alpha.create_group(create).await.expect("create").epoch, 1);
    let reserved = router_sdk::v1::CreateGroupRequest {
        group_id: "x@cluster-b".into(),
        creator_user_id: ALICE.into(),
        members: vec![],
    };
    assert_eq!(alpha.create_group(reserved).await.expect_err("'@' is reserved").reason(), Some("BAD_CHARACTERS"));

    // Both send, concurrently: alice at the hub, bob through his cluster.
    let alice_sends = {
        let alpha = alpha.clone();
        tokio::spawn(async move {
            for n in 0..10 {
                alpha.send_group(group_message("family", &format!("g-alice-{n:02}"), ALICE)).await.expect("alice");
            }
        })
    };
    for n in 0..10 {
        let r = beta.send_group(group_message("family@cluster-a", &format!("g-bob-{n:02}"), BOB)).await.expect("bob");
        assert!(r.epoch == 1);
    }
    // A repeated send is answered the same and ordered once.
    let again = beta.send_group(group_message("family@cluster-a", "g-bob-09", BOB)).await.expect("retry");
    alice_sends.await.expect("alice's sender");
    assert_eq!(
        beta.send_group(group_message("family@cluster-a", "g-bob-09", BOB)).await.expect("retry").group_seq,
        again.group_seq
    );

    // Cluster b unreachable: the hub keeps ordering alice's messages; b's
    // members get them later, in the same order.
    pair.cut();
    for n in 10..15 {
        alpha.send_group(group_message("family", &format!("g-alice-{n:02}"), ALICE)).await.expect("alice, cut");
    }
    let refused = beta.send_group(group_message("family@cluster-a", "g-bob-cut", BOB)).await;
    assert!(refused.is_err(), "the hub orders; unreachable, a send to it is refused, not reordered");
    pair.restore().await;

    let mut at_a = alpha.subscribe(64);
    let mut at_b = beta.subscribe(64);
    let seen_a = collect_group(&mut at_a, 25, Duration::from_secs(30)).await;
    let seen_b = collect_group(&mut at_b, 25, Duration::from_secs(30)).await;
    let order = |v: &[(String, u64, String, String)]| v.iter().map(|(_, s, m, _)| (*s, m.clone())).collect::<Vec<_>>();
    assert_eq!(order(&seen_a), order(&seen_b), "the same messages in the same order on both sides");
    let seqs: Vec<u64> = seen_a.iter().map(|(_, s, _, _)| *s).collect();
    assert_eq!(seqs, (0..25).collect::<Vec<_>>(), "one group order, no gap, no duplicate");
    assert!(seen_a.iter().all(|(g, ..)| g == "family") && seen_b.iter().all(|(g, ..)| g == "family@cluster-a"));
    for ((_, _, m, at_hub), (_, _, _, at_peer)) in seen_a.iter().zip(&seen_b) {
        let (hub_name, peer_name) =
            if m.starts_with("g-alice") { ("alpha", "alpha@cluster-a") } else { ("beta@cluster-b", "beta") };
        assert_eq!((at_hub.as_str(), at_peer.as_str()), (hub_name, peer_name), "sender of {m} as each side names it");
    }
    assert!(tokio::time::timeout(Duration::from_secs(1), at_b.next()).await.is_err(), "nothing twice at b");
    pair.a.shutdown().await;
    pair.b.shutdown().await;
}

/// A federation client to `node` of `cluster` with any certificate pair.
fn federation_client(
    cluster: &TestCluster,
    node: u64,
    ca: &std::path::Path,
    cert: &std::path::Path,
    key: &std::path::Path,
) -> router_sdk::v1::federation_client::FederationClient<tonic::transport::Channel> {
    use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};
    let read = |p: &std::path::Path| std::fs::read(p).expect("read certificate");
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(read(ca)))
        .identity(Identity::from_pem(read(cert), read(key)))
        .domain_name("127.0.0.1");
    let addr = cluster.cluster.node(node).federation_addr.expect("federation listener");
    let channel = Endpoint::from_shared(format!("https://{addr}"))
        .expect("endpoint")
        .tls_config(tls)
        .expect("tls")
        .connect_lazy();
    router_sdk::v1::federation_client::FederationClient::new(channel)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cluster_refuses_callers_it_has_not_registered() {
    let pair = Pair::start().await;
    let b_ca = pair.b.cluster.ca.clone();
    let resolve = router_sdk::v1::FederationResolveRequest { user_id: BOB.into() };

    // Registered: cluster a's own certificate is answered (bob is unknown: NOT_FOUND, not a refusal).
    let a_certs = pair.a.cluster.dir.join("certs");
    let mut ok = federation_client(&pair.b, 1, &b_ca, &a_certs.join("cluster.pem"), &a_certs.join("cluster.key"));
    let err = ok.resolve(resolve.clone()).await.expect_err("bob is not registered yet");
    assert_eq!(err.code(), tonic::Code::NotFound, "{err:?}");

    // A certificate from cluster a's CA that is not its cluster identity (a provider's).
    let alpha = &pair.a.cluster.provider_certs["alpha"];
    let mut provider = federation_client(&pair.b, 1, &b_ca, &alpha.cert, &alpha.key);
    let err = provider.resolve(resolve.clone()).await.expect_err("a provider is not a cluster");
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");

    // A cluster nobody registered: its CA is trusted by no one, the handshake fails.
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = router_node::devcerts::DevPki::create(dir.path()).expect("pki");
    let z = pki
        .issue(&router_node::identity::Identity::Cluster(router_core::ClusterId::new("cluster-z")), "cluster")
        .expect("cert");
    let mut stranger = federation_client(&pair.b, 1, &b_ca, &z.cert, &z.key);
    let err = stranger.resolve(resolve.clone()).await.expect_err("unregistered cluster");
    // TLS 1.3: the client learns of the refused certificate as a closed connection.
    let transport = matches!(err.code(), tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled);
    assert!(transport, "refused at the handshake, not by a handler: {err:?}");

    // Once b registers that CA for a peer "cluster-c", its certificates pass
    // the handshake, but one peer's CA cannot speak for another peer...
    let register_c = RegisterPeerRequest {
        cluster_id: "cluster-c".into(),
        endpoints: vec!["127.0.0.1:9".into()],
        ca_pem: std::fs::read_to_string(&pki.ca).expect("ca"),
        provider_ids: vec!["gamma".into()],
        max_queued_entries: 0,
    };
    pair.b.admin(1).register_peer(register_c).await.expect("b registers c");
    let c_known = |s: &router_core::State| s.peer(&router_core::ClusterId::new("cluster-c")).is_some();
    pair.b.wait_until(Duration::from_secs(10), c_known).await.expect("c registered everywhere");
    let fake_a = pki
        .issue(&router_node::identity::Identity::Cluster(router_core::ClusterId::new("cluster-a")), "fake-a")
        .expect("cert");
    let mut impostor = federation_client(&pair.b, 1, &b_ca, &fake_a.cert, &fake_a.key);
    let err = impostor.resolve(resolve.clone()).await.expect_err("cluster a's name on cluster c's CA");
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");
    // ...and a name nobody registered is refused by name.
    let err = stranger.resolve(resolve).await.expect_err("cluster-z is not a peer");
    assert_eq!(err.code(), tonic::Code::NotFound, "{err:?}");
    assert!(err.message().contains("no federation peer cluster-z"), "{err:?}");
    pair.a.shutdown().await;
    pair.b.shutdown().await;
}

/// Cluster b's nodes together: Resolve calls their federation listeners answered.
async fn resolves_answered(b: &TestCluster) -> f64 {
    let mut total = 0.0;
    for id in b.all_nodes() {
        let text = crate::metrics::scrape(b.cluster.node(id).admin_addr).await;
        total += text
            .lines()
            .filter(|l| {
                l.starts_with("router_grpc_requests_total{") && l.contains(r#"method="Resolve",service="Federation""#)
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>();
    }
    total
}

/// Many sends at once to a remote user no node has resolved yet (one
/// `SendBatch`) ask the peer about that user once, not once per send; each
/// send is accepted and delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_sends_to_an_unresolved_remote_user_ask_the_peer_once() {
    let pair = Pair::start().await;
    let beta = pair.b.client("beta");
    setup_user(&beta, BOB, &BOB_DEVICES).await;
    let before = resolves_answered(&pair.b).await;

    const SENDS: usize = 32;
    let alpha = &pair.a.cluster.provider_certs["alpha"];
    let node = pair.a.all_nodes()[0];
    let mut raw =
        router_proto::v1::messaging_client::MessagingClient::new(pair.a.raw_channel(node, &alpha.cert, &alpha.key));
    let sends = (0..SENDS).map(|i| message(&format!("burst-{i:02}"), BOB, &BOB_DEVICES)).collect();
    let results = raw
        .send_batch(router_proto::v1::SendBatchRequest { sends })
        .await
        .expect("batch answered")
        .into_inner()
        .results;
    assert_eq!(results.len(), SENDS);
    for r in &results {
        assert!(
            matches!(r.result, Some(router_proto::v1::send_result::Result::Accepted(_))),
            "every send accepted: {r:?}"
        );
    }
    let asked = resolves_answered(&pair.b).await - before;
    assert_eq!(asked, 1.0, "the peer was asked about the user once for {SENDS} concurrent sends");

    let mut sub = beta.subscribe(64);
    let got = collect(&mut sub, SENDS, Duration::from_secs(30)).await;
    assert_eq!(got.len(), SENDS);
}
