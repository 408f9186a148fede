//! `router-sdk`: the provider-facing client of the Interop Router.
//!
//! # What this crate owns
//! Connecting to a cluster over mTLS with a list of node endpoints, moving to
//! another node when one fails or has no leader, retrying with backoff and
//! jitter (every write is retry-safe: sends carry their message id, see
//! `router-node`'s writer), typed errors with the router's error details, and
//! a receive subscription that reconnects and delivers each mailbox entry to
//! the application at least once, without duplicates inside one
//! subscription.
//!
//! # What it must not depend on
//! Only the wire contract (`router-proto`) and tonic; never the node, the
//! Raft layer or the core state machine — it must work against any router
//! that speaks `interop_router.v1`.
//!
//! # Layout
//! - `admin`: [`admin::AdminConnector`], operator access to the admin API.
//! - `config`: [`ClientConfig`].
//! - `failover`: the nodes of a client, rotation, backoff and the retry loop
//!   (a leaf: `client`, `batch` and `subscription` use it, it uses none of them).
//! - `client`: [`RouterClient`], the provider API's calls.
//! - `batch`: concurrent sends of one client share `SendBatch` calls.
//! - `subscription`: [`Subscription`], the reconnecting receive stream.
//! - `error`: [`SdkError`].
//!
//! ```text
//!  client ──> batch ──> failover <── subscription
//!     └──────────────────┘  └──> config, error
//! ```

pub mod admin;
mod batch;
pub mod client;
pub mod config;
pub mod error;
mod failover;
pub mod subscription;

pub use client::{ClientConfig, RouterClient};
pub use error::SdkError;
pub use router_proto::v1;
pub use subscription::Subscription;
