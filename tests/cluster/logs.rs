//! The JSON logs (`log_format = "json"`): every line a node writes names
//! the node, though the nodes of a test share one process.

use router_node::telemetry;
use router_testkit::TestCluster;
use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A `MakeWriter` collecting log output in memory.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// With `log_format = "json"`, every line a node writes (its own tasks,
/// its gRPC handlers, Raft changes with the term) carries its `node_id`,
/// though three nodes share this process.
#[test]
fn json_logs_name_the_node_on_every_line() {
    use tracing_subscriber::layer::SubscriberExt;
    let out = Captured::default();
    let writer = out.clone();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_subscriber::EnvFilter::new("info,openraft=error"))
        .with(telemetry::json_log_layer(move || writer.clone()));
    // A thread-local subscriber (other tests may run on other threads with
    // none), so everything must run on this thread: a current-thread runtime.
    let crashed_term = tracing::subscriber::with_default(subscriber, || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            // Frequent snapshots, so router-raft's own lines (written on
            // openraft's tasks) are in the output too.
            let mut tc = TestCluster::start_with(3, |raw| {
                raw.raft.snapshot_every_entries = Some(5);
                raw.raft.keep_logs_after_snapshot = Some(0);
            })
            .await
            .unwrap();
            let leader = tc.cluster.wait_for_leader(Duration::from_secs(10)).await.unwrap();
            let beta = tc.client("beta");
            for i in 0..12 {
                beta.register_user(&format!("handle:jo{i}")).await.unwrap();
            }
            let term = tc.cluster.node(leader).node.as_ref().unwrap().raft().metrics().borrow().current_term;
            // A leader crash: the others log the new term and leader.
            tc.cluster.crash(leader).await;
            tc.cluster.wait_for_leader(Duration::from_secs(10)).await.unwrap();
            tc.shutdown().await;
            (leader, term)
        })
    });
    let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
    let lines: Vec<serde_json::Value> =
        text.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"))).collect();
    let ours = |l: &&serde_json::Value| {
        l["target"].as_str().is_some_and(|t| t.starts_with("router_node") || t.starts_with("router_raft"))
    };
    let from_nodes: Vec<&serde_json::Value> = lines.iter().filter(ours).collect();
    assert!(from_nodes.len() > 10, "too few node log lines:\n{text}");
    let node_id_of = |l: &serde_json::Value| {
        l["spans"].as_array().and_then(|spans| spans.iter().find_map(|s| s["node_id"].as_u64()))
    };
    for l in &from_nodes {
        assert!(node_id_of(l).is_some(), "a node's log line without node_id: {l}");
    }
    let nodes: BTreeSet<u64> = from_nodes.iter().filter_map(|l| node_id_of(l)).collect();
    assert_eq!(nodes, BTreeSet::from([1, 2, 3]));
    assert!(
        from_nodes.iter().any(|l| l["message"] == "built snapshot" && l["target"] == "router_raft::state_machine"),
        "router-raft's snapshot lines are checked too:\n{text}"
    );
    let changes: Vec<_> =
        from_nodes.iter().filter(|l| l["message"].as_str().is_some_and(|m| m.starts_with("raft:"))).collect();
    assert!(changes.iter().all(|l| l["term"].as_u64().is_some()), "raft changes carry the term: {changes:?}");
    let (crashed, term) = crashed_term;
    assert!(
        changes
            .iter()
            .any(|l| l["term"].as_u64() > Some(term) && l["leader_id"].as_u64().is_some_and(|id| id != crashed)),
        "a survivor logged the new term ({term}+) and a new leader (not {crashed}): {changes:?}"
    );
}
