//! `router-proto`: the generated gRPC code for `proto/` (package
//! `interop_router.v1`) and conversions from `router-core` types to wire
//! messages.
//!
//! Owns nothing else: request validation against configured limits lives in
//! `router-node` (it needs the node's config); the wire contract itself is the
//! `.proto` files. Must not depend on openraft, sled or the node.
//!
//! # Layout
//! - [`v1`]: generated messages, clients and servers.
//! - `convert`: core → wire conversions (bundles, mailbox entries).
//! - [`FILE_DESCRIPTOR_SET`]: for gRPC server reflection.

#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod v1 {
    tonic::include_proto!("interop_router.v1");
}

pub mod convert;

/// Encoded descriptors of every service, for `tonic-reflection`.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("interop_router_v1_descriptor");
