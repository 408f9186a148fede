//! `/metrics` after real traffic: the documented series are there with the
//! right values, and the exposition passes `promtool check metrics`.

use crate::common::*;
use router_testkit::TestCluster;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub(crate) async fn scrape(addr: std::net::SocketAddr) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n").await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    let (head, body) = out.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200") || head.starts_with("HTTP/1.0 200"), "{head}");
    assert!(head.to_ascii_lowercase().contains("content-type: text/plain; version=0.0.4"), "{head}");
    body.to_string()
}

fn value(text: &str, series: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .unwrap_or_else(|| panic!("series {series} missing"))
        .rsplit(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_describe_traffic_and_pass_promtool() {
    let tc = TestCluster::start(3).await.unwrap();
    let leader = tc.cluster.wait_for_leader(Duration::from_secs(10)).await.unwrap();
    let beta = tc.client_on("beta", &[leader]);
    let alpha = tc.client_on("alpha", &[leader]);
    setup_user(&beta, "handle:kim", &[(1, 4)]).await;
    for i in 0..5 {
        alpha.send(message(&format!("mx-{i}"), "handle:kim", &[(1, 4)])).await.unwrap();
    }
    let _ = alpha.send(message("bad", "handle:nobody", &[(1, 4)])).await.unwrap_err();
    let mut sub = beta.subscribe(16);
    let mut seqs = Vec::new();
    for _ in 0..5 {
        seqs.push(next_within(&mut sub, Duration::from_secs(10)).await.seq);
    }
    sub.ack(seqs[..2].to_vec()).await.unwrap();
    tc.wait_until(Duration::from_secs(5), |s| s.mailbox_depth(&router_core::ProviderId::new("beta")) == 3)
        .await
        .unwrap();

    let text = scrape(tc.cluster.node(leader).admin_addr).await;
    // On a loaded machine an election may have moved leadership meanwhile:
    // the gauge must say what the node's raft says now.
    let still_leads =
        tc.cluster.node(leader).node.as_ref().unwrap().raft().metrics().borrow().state == openraft::ServerState::Leader;
    assert_eq!(value(&text, r#"router_commands_total{kind="send",provider="alpha",result="accepted"}"#), 5.0);
    assert_eq!(value(&text, r#"router_rejections_total{reason="USER_NOT_FOUND"}"#), 1.0);
    assert_eq!(value(&text, r#"router_acked_total{provider="beta"}"#), 2.0);
    assert_eq!(value(&text, r#"router_delivered_total{provider="beta"}"#), 5.0);
    assert_eq!(value(&text, r#"router_mailbox_depth{provider="beta"}"#), 3.0);
    assert_eq!(value(&text, r#"router_send_answers{sender="alpha"}"#), 5.0, "one answer per accepted send");
    assert_eq!(value(&text, r#"router_raft{field="is_leader"}"#), if still_leads { 1.0 } else { 0.0 });
    assert_eq!(value(&text, r#"router_raft{field="voters"}"#), 3.0);
    assert_eq!(value(&text, r#"router_grpc_requests_total{code="NotFound",method="Send",service="Messaging"}"#), 1.0);
    let commit = value(&text, r#"router_raft{field="commit_index"}"#);
    let applied = value(&text, r#"router_raft{field="applied_index"}"#);
    assert!(commit > 0.0 && commit >= applied, "commit {commit}, applied {applied}");
    assert_eq!(value(&text, r#"router_raft{field="apply_lag"}"#), commit - applied);
    for series in [
        r#"router_snapshots_total{origin="built"}"#,
        r#"router_snapshots_total{origin="installed"}"#,
        "router_log_compactions_total",
        "router_log_entries_purged_total",
        "router_snapshot_last_size_bytes",
        "router_snapshot_last_build_seconds",
        "router_snapshot_last_pause_seconds",
        "router_payload_bytes",
        "router_payload_write_errors_total",
    ] {
        value(&text, series);
    }
    assert!(value(&text, "router_payload_segments") >= 1.0, "a node on disk always has its open payload segment");
    assert!(text.contains("router_delivery_latency_seconds_bucket"));
    assert!(text.contains("router_commit_duration_seconds_bucket"));
    assert!(text.contains(r#"router_prekey_low_stock_devices{provider="beta"} 1"#), "{text}");

    // promtool (Debian's prometheus package) validates the exposition format.
    match std::process::Command::new("promtool").arg("--version").output() {
        Ok(_) => {
            let mut child = std::process::Command::new("promtool")
                .args(["check", "metrics"])
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            use std::io::Write;
            child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
            let out = child.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "promtool check metrics failed:\n{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        // CI installs it (.ci/run), so there a missing promtool is a failure, not a skip.
        Err(e) if std::env::var_os("CI").is_some() => panic!("promtool not found in CI: {e}"),
        Err(_) => eprintln!(
            "\n*** SKIPPED promtool check: promtool not installed (deploy/install-deps.sh --with-prometheus) ***\n"
        ),
    }
    tc.shutdown().await;
}
