//! `router-node`: the `routerd` server.
//!
//! # What this crate owns
//! Configuration, the gRPC services (provider API, admin API, node-to-node
//! API), mTLS and caller identity, the Raft network transport, the batched
//! write path, the receive streams, the admin HTTP listener, and the
//! development cluster (`routerd dev`).
//!
//! # What it must not depend on
//! Nothing depends on this crate except `router-testkit` and tests. The
//! replicated logic lives in `router-core` (pure) and storage in
//! `router-raft`; this crate only wires them to the network. The library never
//! binds sockets or handles signals: `main.rs` (or a test) does.
//!
//! # Layout
//! - `accept`: accepting TLS connections, bounded before authentication.
//! - `config`: `routerd.toml`, two-step validation.
//! - `node`: [`node::Node`]: start, shutdown, crash.
//! - `writer`: group commit and forwarding to the leader.
//! - [`ephemeral`]: typing / call signaling, pushed to connected streams, never stored.
//! - [`federation`]: other operators' clusters: the federation listener, route cache, relay tasks.
//! - `grpc`: services, edge validation, the status mapping.
//! - [`network`], [`peers`]: openraft over gRPC, peer channels.
//! - [`identity`], [`tls`], [`devcerts`]: who is calling, rustls setup, a dev PKI.
//! - [`incarnation`]: this data directory's incarnation; the leader records members'.
//! - `admin_http`: `/healthz`, `/readyz`, `/metrics`.
//! - `dev`: `routerd dev`, a local three-node cluster.
//!
//! ```text
//! provider ──mTLS gRPC──> grpc::{directory,prekeys,messaging} ──> writer ──> raft (leader) ──> sled log, fsync
//!                                   │                                         │ append_entries (peer port, mTLS)
//!                                   └──── receive stream <── local replica <──┘ apply (router-core)
//! ```

pub mod accept;
pub mod admin_http;
pub mod backup;
pub mod config;
pub mod ctx;
pub mod dev;
pub mod devcerts;
pub mod ephemeral;
pub mod federation;
pub mod grpc;
pub mod identity;
pub mod incarnation;
pub mod join;
pub mod metrics;
pub mod mutation;
pub mod network;
pub mod node;
pub mod peers;
pub mod probe;
pub mod telemetry;
pub mod tls;
pub mod writer;

pub use config::Config;

/// This build's version as `Status` reports it: the crate version, plus
/// `+<commit>` when `ROUTERD_BUILD_COMMIT` was set at build time.
pub fn build_version() -> String {
    match option_env!("ROUTERD_BUILD_COMMIT") {
        Some(commit) if !commit.is_empty() => format!("{}+{commit}", env!("CARGO_PKG_VERSION")),
        _ => env!("CARGO_PKG_VERSION").to_string(),
    }
}

pub use node::{Listeners, Node};

/// Installs ring as rustls' process-wide crypto provider (idempotent).
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// `tokio::spawn` that keeps the current span: the node's `node{node_id}`
/// span (see `Node::start`) or a request's span, so every log line a task
/// writes says which node wrote it (`node_id`), whatever the process runs.
pub(crate) fn spawn<F>(future: F) -> tokio::task::JoinHandle<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    tokio::spawn(tracing::Instrument::in_current_span(future))
}
