//! Admin HTTP listener: `/healthz` (the process answers), `/readyz` (member
//! of a cluster that has a leader, and caught up), `/metrics` (Prometheus
//! text format).

use crate::ctx::Ctx;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use openraft::ServerState;

/// A replica this many entries behind the commit index is not ready.
const READY_MAX_APPLY_LAG: u64 = 1_000;

pub fn router(ctx: Ctx) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(ctx)
}

/// Liveness: the process answers and has not failed closed (a node whose
/// Raft core stopped is to be restarted, not waited for).
async fn healthz(State(ctx): State<Ctx>) -> (StatusCode, String) {
    match ctx.fault.borrow().as_ref() {
        Some(fault) => (StatusCode::SERVICE_UNAVAILABLE, format!("failed: {fault}\n")),
        None => (StatusCode::OK, "ok\n".to_string()),
    }
}

async fn readyz(State(ctx): State<Ctx>) -> (StatusCode, String) {
    let m = ctx.raft.metrics().borrow().clone();
    match not_ready_because(&ctx) {
        None => (StatusCode::OK, format!("ready: {} of term {}\n", role_name(m.state), m.current_term)),
        Some(p) => (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {p}\n")),
    }
}

/// The Raft role as `Status`, `/readyz` and the logs name it.
pub fn role_name(state: ServerState) -> &'static str {
    match state {
        ServerState::Leader => "leader",
        ServerState::Follower => "follower",
        ServerState::Candidate => "candidate",
        ServerState::Learner => "learner",
        ServerState::Shutdown => "shutdown",
    }
}

/// What keeps this node from serving, or `None` when it is ready: the one
/// health check behind `/readyz` and the admin `Status` (`routerctl status`).
pub fn not_ready_because(ctx: &crate::ctx::NodeCtx) -> Option<String> {
    let m = ctx.raft.metrics().borrow().clone();
    let applied = m.last_applied.map_or(0, |l| l.index);
    // Behind what is known committed, not the log's uncommitted tail.
    let lag = ctx.storage_stats.snapshot().committed_index.saturating_sub(applied);
    if let Some(fault) = ctx.fault.borrow().as_ref() {
        Some(format!("failed: {fault}"))
    } else if let Err(fatal) = &m.running_state {
        Some(format!("failed: raft stopped: {fatal}"))
    } else if *ctx.shutdown.borrow() {
        Some("shutting down".to_string())
    } else if ctx.removed.load(std::sync::atomic::Ordering::SeqCst) {
        Some("removed from the cluster".to_string())
    } else if !ctx.is_member() {
        Some("not a member of a cluster".to_string())
    } else if m.current_leader.is_none() {
        Some("no leader".to_string())
    } else if lag > READY_MAX_APPLY_LAG {
        Some(format!("applying: {lag} entries behind"))
    } else {
        None
    }
}

async fn metrics(State(ctx): State<Ctx>) -> ([(axum::http::header::HeaderName, &'static str); 1], String) {
    let body = ctx.metrics.render(&ctx);
    ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], body)
}
