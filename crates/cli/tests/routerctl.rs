//! routerctl drives a live cluster: 3 voters → add a 4th (in one step) and a
//! 5th (learner, then promoted) → transfer leadership → remove one →
//! snapshot, while two providers send to each other throughout (each must
//! keep getting acks after every step); every acknowledged message is
//! delivered exactly once, and the removed node refuses provider traffic.

use router_sdk::v1::directory_client::DirectoryClient;
use router_sdk::v1::{ContentType, DeviceCiphertext, ResolveRequest, SendRequest, mailbox_entry};
use router_testkit::TestCluster;
use serde_json::Value;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

struct Ctl<'a> {
    tc: &'a TestCluster,
}

impl Ctl<'_> {
    /// Runs routerctl against `nodes`' peer endpoints; returns (exit code, stdout, stderr).
    async fn run(&self, nodes: &[u64], args: &[&str]) -> (i32, String, String) {
        let endpoints: Vec<String> = nodes.iter().map(|n| self.tc.cluster.node(*n).peer_addr.to_string()).collect();
        self.run_at(&endpoints, args).await
    }

    /// Runs routerctl against the given endpoints (which need not be nodes).
    async fn run_at(&self, endpoints: &[String], args: &[&str]) -> (i32, String, String) {
        let op = &self.tc.cluster.operator_cert;
        let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_routerctl"))
            .arg("--endpoint")
            .arg(endpoints.join(","))
            .arg("--ca")
            .arg(&self.tc.cluster.ca)
            .arg("--cert")
            .arg(&op.cert)
            .arg("--key")
            .arg(&op.key)
            .args(args)
            .output()
            .await
            .expect("run routerctl");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into(),
            String::from_utf8_lossy(&out.stderr).into(),
        )
    }

    async fn ok(&self, nodes: &[u64], args: &[&str]) -> String {
        let (code, out, err) = self.run(nodes, args).await;
        assert_eq!(code, 0, "routerctl {args:?} failed: {err}");
        out
    }

    async fn status_json(&self, node: u64) -> Value {
        let out = self.ok(&[node], &["--output", "json", "status"]).await;
        serde_json::from_str::<Value>(&out).unwrap()["nodes"][0].clone()
    }
}

fn voters(v: &Value) -> Vec<u64> {
    v["voters"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap()).collect()
}

/// One provider's sender: one message at a time to `recipient` until
/// stopped; every send must succeed (the SDK moves between nodes). Returns
/// the acknowledged message ids; `progress` counts them as they come.
fn spawn_sender(
    client: router_sdk::RouterClient,
    prefix: &'static str,
    recipient: &'static str,
    registration_id: u32,
    stop: Arc<AtomicBool>,
    progress: Arc<AtomicUsize>,
) -> tokio::task::JoinHandle<Vec<String>> {
    tokio::spawn(async move {
        let mut acked = Vec::new();
        // Bounded in count and time; paced so a fast machine stays far from the cap.
        while !stop.load(Ordering::Relaxed) && acked.len() < 50_000 {
            let id = format!("{prefix}-{}", acked.len());
            let req = SendRequest {
                message_id: id.clone(),
                recipient_user_id: recipient.into(),
                content_type: ContentType::Message as i32,
                ttl_seconds: 0,
                parts: vec![DeviceCiphertext {
                    device_id: 1,
                    registration_id,
                    message_type: 2,
                    ciphertext: b"x".to_vec().into(),
                }],
                sender_user_id: String::new(),
                sender_device_id: 0,
            };
            client.send(req).await.expect("send keeps working through membership changes");
            acked.push(id);
            progress.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        acked
    })
}

/// Both senders get at least 5 more sends acknowledged (within 20 s): the
/// cluster kept serving providers through the step just taken.
async fn both_keep_sending(progress: &[Arc<AtomicUsize>; 2], step: &str) {
    let start: Vec<usize> = progress.iter().map(|p| p.load(Ordering::Relaxed)).collect();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while progress.iter().zip(&start).any(|(p, s)| p.load(Ordering::Relaxed) < s + 5) {
        assert!(tokio::time::Instant::now() < deadline, "senders stalled after {step}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Reads `provider`'s mailbox until every id in `acked` arrived; each
/// must arrive exactly once (stored once: no duplicates).
async fn drain_exactly(tc: &TestCluster, provider: &str, nodes: &[u64], acked: Vec<String>) {
    let mut sub = tc.client_on(provider, nodes).subscribe(1024);
    let mut seen = BTreeSet::new();
    let mut to_ack = Vec::new();
    while seen.len() < acked.len() {
        let e = tokio::time::timeout(Duration::from_secs(15), sub.next()).await.expect("delivery").unwrap();
        if let Some(mailbox_entry::Kind::Envelope(env)) = e.kind {
            assert!(seen.insert(env.message_id.clone()), "{} delivered twice", env.message_id);
        }
        to_ack.push(e.seq);
        if to_ack.len() == 512 {
            sub.ack(std::mem::take(&mut to_ack)).await.unwrap();
        }
    }
    assert_eq!(seen, acked.into_iter().collect(), "{provider} received exactly what was acknowledged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn membership_changes_through_routerctl_under_traffic() {
    let tc = TestCluster::start_spec(5, Some(3), |_| {}).await.unwrap();
    let ctl = Ctl { tc: &tc };
    let beta = tc.client("beta");
    beta.register_user("handle:hana").await.unwrap();
    beta.register_device("handle:hana", 1, 5).await.unwrap();
    let alpha = tc.client("alpha");
    alpha.register_user("handle:ann").await.unwrap();
    alpha.register_device("handle:ann", 1, 6).await.unwrap();

    // Two providers send to each other, one message at a time each, for the whole test.
    let stop = Arc::new(AtomicBool::new(false));
    let progress = [Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0))];
    let alpha_sends =
        spawn_sender(tc.client_on("alpha", &[2, 3, 1]), "a", "handle:hana", 5, stop.clone(), progress[0].clone());
    let beta_sends =
        spawn_sender(tc.client_on("beta", &[3, 1, 2]), "b", "handle:ann", 6, stop.clone(), progress[1].clone());
    both_keep_sending(&progress, "start").await;

    let s = ctl.status_json(1).await;
    assert_eq!(voters(&s), vec![1, 2, 3]);
    let add = |id: u64, learner: bool| {
        let n = tc.cluster.node(id);
        let mut args = vec![
            "member".to_string(),
            "add".into(),
            "--id".into(),
            id.to_string(),
            "--peer".into(),
            n.peer_addr.to_string(),
            "--provider".into(),
            n.provider_addr.to_string(),
        ];
        if learner {
            args.push("--learner".into());
        }
        args
    };
    // Node 4 joins in one step (learner, promoted once caught up) ...
    let args = add(4, false);
    ctl.ok(&[1, 2, 3], &args.iter().map(String::as_str).collect::<Vec<_>>()).await;
    both_keep_sending(&progress, "adding node 4").await;
    // ... node 5 as a learner first, promoted by hand.
    let args = add(5, true);
    ctl.ok(&[1, 2, 3], &args.iter().map(String::as_str).collect::<Vec<_>>()).await;
    let s = ctl.status_json(2).await;
    assert_eq!(voters(&s), vec![1, 2, 3, 4]);
    assert_eq!(s["learners"], serde_json::json!([5]));
    ctl.ok(&[1, 2, 3], &["member", "promote", "--id", "5"]).await;
    assert_eq!(voters(&ctl.status_json(2).await), vec![1, 2, 3, 4, 5]);
    both_keep_sending(&progress, "adding node 5").await;

    let out = ctl.ok(&[1, 2, 3], &["--output", "json", "leader", "transfer", "--to", "4"]).await;
    assert_eq!(serde_json::from_str::<Value>(&out).unwrap()["leader"], 4);
    assert_eq!(ctl.status_json(4).await["role"], "leader");
    both_keep_sending(&progress, "the leadership transfer").await;

    ctl.ok(&[4], &["member", "remove", "--id", "1"]).await;
    let s = ctl.status_json(4).await;
    assert_eq!(voters(&s), vec![2, 3, 4, 5]);
    both_keep_sending(&progress, "removing node 1").await;
    // The table output names every node it could reach, and their health.
    let table = ctl.ok(&[2, 3, 4, 5], &["status"]).await;
    assert!(table.contains("leader") && table.contains("voters [2,3,4,5]"), "{table}");
    assert!(table.lines().next().unwrap().contains("HEALTH"), "{table}");
    let rules = format!("{0}/{0}", router_core::CLUSTER_VERSION);
    let node_rows: Vec<&str> = table.lines().filter(|l| l.contains("voters [")).collect();
    assert_eq!(node_rows.len(), 4, "{table}");
    assert!(node_rows.iter().all(|l| l.contains(&rules)), "every node applies this build's rules: {table}");
    let all: Value = serde_json::from_str(&ctl.ok(&[2, 3, 4, 5], &["--output", "json", "status"]).await).unwrap();
    for node in all["nodes"].as_array().unwrap() {
        assert_eq!(node["health"], "ok", "{node}");
        assert!(node["commit_index"].as_u64().unwrap() >= node["applied_index"].as_u64().unwrap(), "{node}");
    }

    // The removed node refuses provider traffic: UNAVAILABLE / NOT_A_MEMBER, so clients move on.
    let certs = &tc.cluster.provider_certs["beta"];
    let mut on_removed = DirectoryClient::new(tc.raw_channel(1, &certs.cert, &certs.key));
    let err = on_removed.resolve(ResolveRequest { user_id: "handle:hana".into() }).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable);
    assert!(router_sdk::error::describe(&err).contains("NOT_A_MEMBER"), "{err:?}");
    // routerctl says why.
    assert_eq!(ctl.status_json(1).await["health"], "removed from the cluster");

    // A snapshot on demand, on every node asked.
    ctl.ok(&[2, 3, 4, 5], &["snapshot"]).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    for node in [2, 3, 4, 5] {
        while ctl.status_json(node).await["snapshot_index"].as_u64().unwrap() == 0 {
            assert!(tokio::time::Instant::now() < deadline, "node {node} built no snapshot");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    // Errors: a precise message and exit code 1 for a refused operation,
    // 3 (retry) when no node answers, even with one dead endpoint first.
    let (code, _, err) = ctl.run(&[4], &["member", "remove", "--id", "9"]).await;
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("NOT_A_MEMBER"), "{err}");
    let nothing_listens = "127.0.0.1:1".to_string();
    let (code, _, err) = ctl.run_at(std::slice::from_ref(&nothing_listens), &["status"]).await;
    assert_eq!(code, 3, "{err}");
    let (code, _, err) = ctl.run_at(std::slice::from_ref(&nothing_listens), &["provider", "list"]).await;
    assert_eq!(code, 3, "{err}");
    let first_dead = [nothing_listens, tc.cluster.node(2).peer_addr.to_string()];
    let (code, out, err) = ctl.run_at(&first_dead, &["--output", "json", "provider", "list"]).await;
    assert_eq!(code, 0, "a dead first endpoint does not stop a command: {err}");
    assert!(out.contains("alpha") && out.contains("beta"), "{out}");

    stop.store(true, Ordering::Relaxed);
    let (a, b) = (alpha_sends.await.unwrap(), beta_sends.await.unwrap());
    // Mailbox depth through routerctl, as the leader sees it.
    let out = ctl.ok(&[2, 3, 4, 5], &["--output", "json", "mailbox", "--provider", "beta"]).await;
    let depth = serde_json::from_str::<Value>(&out).unwrap()[0]["depth"].as_u64().unwrap();
    assert_eq!(depth, a.len() as u64, "beta's mailbox holds every message alpha sent");

    // Every acked message is delivered, once, to each side.
    drain_exactly(&tc, "beta", &[2, 3, 4, 5], a).await;
    drain_exactly(&tc, "alpha", &[5, 4, 3, 2], b).await;
    tc.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_and_restore_into_a_new_cluster() {
    let source = TestCluster::start(3).await.unwrap();
    let beta = source.client("beta");
    beta.register_user("handle:ivy").await.unwrap();
    beta.register_device("handle:ivy", 1, 8).await.unwrap();
    let alpha = source.client("alpha");
    for i in 0..20 {
        let req = SendRequest {
            message_id: format!("b-{i}"),
            recipient_user_id: "handle:ivy".into(),
            content_type: ContentType::Message as i32,
            ttl_seconds: 0,
            parts: vec![DeviceCiphertext {
                device_id: 1,
                registration_id: 8,
                message_type: 2,
                // Long enough to sit in the payload files, not in memory.
                ciphertext: vec![i as u8; 4096].into(),
            }],
            sender_user_id: String::new(),
            sender_device_id: 0,
        };
        alpha.send(req).await.unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("cluster.backup");
    let out = Ctl { tc: &source }.ok(&[2], &["--output", "json", "backup", "--out", file.to_str().unwrap()]).await;
    let report: Value = serde_json::from_str(&out).unwrap();
    assert!(report["applied_index"].as_u64().unwrap() > 0);
    assert_eq!(report["restorable"], true, "{report}");
    assert_eq!(report["bytes"].as_u64(), Some(std::fs::metadata(&file).unwrap().len()));
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "a backup holds the whole directory: owner only");
    assert!(!dir.path().join("cluster.backup.tmp").exists(), "the temporary name is renamed away");
    source.shutdown().await;

    // Disaster: a brand-new cluster is restored from the file.
    let target = TestCluster::start(3).await.unwrap();
    let ctl = Ctl { tc: &target };
    let out = ctl.ok(&[1], &["--output", "json", "restore", "--in", file.to_str().unwrap()]).await;
    let restored: Value = serde_json::from_str(&out).unwrap();
    assert_eq!((restored["users"].as_u64(), restored["mailbox_entries"].as_u64()), (Some(1), Some(20)));
    let user = ctl.ok(&[3], &["--output", "json", "user", "handle:ivy"]).await;
    assert_eq!(serde_json::from_str::<Value>(&user).unwrap()["provider"], "beta");
    let mut sub = target.client("beta").subscribe(64);
    for i in 0..20 {
        let e = tokio::time::timeout(Duration::from_secs(10), sub.next()).await.unwrap().unwrap();
        let Some(mailbox_entry::Kind::Envelope(env)) = e.kind else { panic!() };
        assert_eq!(env.message_id, format!("b-{i}"));
        assert_eq!(env.parts[0].ciphertext, vec![i as u8; 4096], "the ciphertext came through backup and restore");
    }
    // A second restore over existing data is refused, with exit code 1.
    let (code, _, err) = ctl.run(&[1], &["restore", "--in", file.to_str().unwrap()]).await;
    assert_eq!(code, 1);
    assert!(err.contains("RESTORE_INTO_NON_EMPTY"), "{err}");
    // A file that is not a backup is refused precisely.
    std::fs::write(&file, b"definitely not a backup").unwrap();
    let (code, _, err) = ctl.run(&[1], &["restore", "--in", file.to_str().unwrap()]).await;
    assert_eq!(code, 1);
    assert!(err.contains("BAD_BACKUP"), "{err}");
    target.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provider_onboarding_lifecycle() {
    let tc = TestCluster::start(3).await.unwrap();
    let ctl = Ctl { tc: &tc };
    let delta_cert = tc.cluster.pki.issue_provider("delta").unwrap();
    let delta = {
        let read = |p: &std::path::Path| std::fs::read(p).unwrap();
        let mut cfg = router_sdk::ClientConfig::new(
            tc.endpoints(&[1, 2, 3]),
            read(&tc.cluster.ca),
            read(&delta_cert.cert),
            read(&delta_cert.key),
        );
        cfg.call_deadline = Duration::from_secs(3);
        router_sdk::RouterClient::connect(cfg).unwrap()
    };
    let list = || async {
        let out = ctl.ok(&[1], &["--output", "json", "provider", "list"]).await;
        let v: Value = serde_json::from_str(&out).unwrap();
        v["providers"].as_array().unwrap().iter().find(|p| p["provider"] == "delta").cloned()
    };

    ctl.ok(
        &[1],
        &[
            "provider",
            "request",
            "delta",
            "--name",
            "Delta Chat",
            "--contact",
            "ops@delta.example",
            "--media-host",
            "media.delta.example",
        ],
    )
    .await;
    let p = list().await.expect("delta listed");
    assert_eq!(p["status"], "requested");
    assert_eq!(p["overdue"], false);
    let (requested, deadline) = (p["requested_at_ms"].as_u64().unwrap(), p["deadline_ms"].as_u64().unwrap());
    assert!(deadline - requested >= 89 * 86_400_000 && deadline - requested <= 92 * 86_400_000, "three months");
    let table = ctl.ok(&[1], &["provider", "list"]).await;
    assert!(table.contains("DEADLINE") && table.contains("delta") && table.contains("requested"), "{table}");
    // Not yet enabled: refused.
    let err = delta.register_user("handle:dan").await.unwrap_err();
    assert_eq!(err.reason(), Some("PROVIDER_NOT_ONBOARDED"));
    // Activation before approval is refused with exit code 1.
    let (code, _, stderr) = ctl.run(&[1], &["provider", "activate", "delta"]).await;
    assert_eq!(code, 1);
    assert!(stderr.contains("BAD_TRANSITION"), "{stderr}");

    ctl.ok(&[1], &["provider", "approve", "delta"]).await;
    ctl.ok(&[2], &["provider", "activate", "delta"]).await;
    assert_eq!(list().await.unwrap()["status"], "active");
    delta.register_user("handle:dan").await.unwrap();
    delta.register_device("handle:dan", 1, 2).await.unwrap();
    let alpha = tc.client("alpha");
    let msg = |id: &str| SendRequest {
        message_id: id.into(),
        recipient_user_id: "handle:dan".into(),
        content_type: ContentType::Message as i32,
        ttl_seconds: 0,
        parts: vec![DeviceCiphertext {
            device_id: 1,
            registration_id: 2,
            message_type: 2,
            ciphertext: b"d".to_vec().into(),
        }],
        sender_user_id: String::new(),
        sender_device_id: 0,
    };
    alpha.send(msg("d-1")).await.unwrap();
    let mut sub = delta.subscribe(8);
    let first = tokio::time::timeout(Duration::from_secs(10), sub.next()).await.unwrap().unwrap();

    // Suspended: its open stream is closed, its calls refused, its mail kept and still accepted.
    ctl.ok(&[3], &["provider", "suspend", "delta"]).await;
    let err = tokio::time::timeout(Duration::from_secs(10), sub.next()).await.unwrap().unwrap_err();
    assert_eq!(err.reason(), Some("PROVIDER_SUSPENDED"), "{err}");
    assert_eq!(delta.ack(vec![first.seq]).await.unwrap_err().reason(), Some("PROVIDER_SUSPENDED"));
    alpha.send(msg("d-2")).await.unwrap();
    ctl.ok(&[1], &["provider", "reactivate", "delta"]).await;
    // Local replicas (which serve Receive) learn the reactivation a moment later.
    tc.wait_until(Duration::from_secs(10), |s| s.is_onboarded(&router_core::ProviderId::new("delta"))).await.unwrap();
    // Nothing was lost: both messages are there after reactivation.
    let mut sub = delta.subscribe(8);
    let mut ids = Vec::new();
    for _ in 0..2 {
        let e = tokio::time::timeout(Duration::from_secs(10), sub.next()).await.unwrap().unwrap();
        let Some(mailbox_entry::Kind::Envelope(env)) = e.kind else { panic!() };
        ids.push(env.message_id);
    }
    assert_eq!(ids, vec!["d-1", "d-2"]);
    ctl.ok(&[1], &["provider", "revoke", "delta"]).await;
    assert_eq!(delta.register_user("handle:dora").await.unwrap_err().reason(), Some("PROVIDER_SUSPENDED"));
    tc.shutdown().await;
}
