//! Admin HTTP listener: `/healthz` (the process answers), `/readyz` (member
//! of a cluster that has a leader, and caught up), `/metrics` (Prometheus
//! text format).

use crate::ctx::Ctx;
use crate::grpc::admin::role_name;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use std::fmt::Write;
use std::sync::atomic::Ordering;

/// A replica this many entries behind its own log is not ready.
const READY_MAX_APPLY_LAG: u64 = 1_000;

pub fn router(ctx: Ctx) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(ctx)
}

async fn readyz(State(ctx): State<Ctx>) -> (StatusCode, String) {
    let m = ctx.raft.metrics().borrow().clone();
    let member = m.membership_config.membership().get_node(&ctx.node_id).is_some();
    let lag = m.last_log_index.unwrap_or(0).saturating_sub(m.last_applied.map_or(0, |l| l.index));
    let shutting_down = *ctx.shutdown.borrow();
    let problem = if shutting_down {
        Some("shutting down".to_string())
    } else if !member {
        Some("not a member of a cluster".to_string())
    } else if m.current_leader.is_none() {
        Some("no leader".to_string())
    } else if lag > READY_MAX_APPLY_LAG {
        Some(format!("applying: {lag} entries behind"))
    } else {
        None
    };
    match problem {
        None => (StatusCode::OK, format!("ready: {} of term {}\n", role_name(m.state), m.current_term)),
        Some(p) => (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {p}\n")),
    }
}

async fn metrics(State(ctx): State<Ctx>) -> String {
    let m = ctx.raft.metrics().borrow().clone();
    let mut out = String::new();
    let mut gauge = |name: &str, help: &str, value: String| {
        let _ = write!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}\n");
    };
    gauge("router_raft_term", "Current Raft term.", m.current_term.to_string());
    gauge(
        "router_raft_is_leader",
        "1 if this node is the Raft leader.",
        u8::from(m.current_leader == Some(ctx.node_id)).to_string(),
    );
    gauge("router_raft_leader_id", "Known leader id (0 if none).", m.current_leader.unwrap_or(0).to_string());
    gauge("router_raft_last_log_index", "Last log index on this node.", m.last_log_index.unwrap_or(0).to_string());
    gauge(
        "router_raft_last_applied_index",
        "Last log index applied to the state machine.",
        m.last_applied.map_or(0, |l| l.index).to_string(),
    );
    gauge(
        "router_raft_snapshot_index",
        "Last log index covered by a snapshot.",
        m.snapshot.map_or(0, |l| l.index).to_string(),
    );
    gauge(
        "router_open_receive_streams",
        "Provider receive streams open on this node.",
        ctx.open_streams.load(Ordering::Relaxed).to_string(),
    );
    let depths: Vec<(String, usize)> =
        ctx.read(|s| s.mailboxes.iter().map(|(p, mb)| (p.0.clone(), mb.len())).collect());
    let _ = write!(
        out,
        "# HELP router_mailbox_depth Entries awaiting the provider's ack.\n# TYPE router_mailbox_depth gauge\n"
    );
    for (p, d) in depths {
        let _ = writeln!(out, "router_mailbox_depth{{provider=\"{p}\"}} {d}");
    }
    out
}
