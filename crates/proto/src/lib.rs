//! `router-proto`: the generated gRPC code for `proto/` (package
//! `interop_router.v1`) and its descriptor set. Nothing else.
//!
//! Must not depend on `router-core`, openraft, sled or the node: every
//! provider that builds `router-sdk` builds this crate, and it must not carry
//! the state machine with it (`.ci/run` checks the SDK's dependency tree).
//! Conversions to and from core types live in `router-node` (`grpc/wire.rs`,
//! `grpc/validate.rs`).
//!
//! # Layout
//! - [`v1`]: generated messages, clients and servers.
//! - [`FILE_DESCRIPTOR_SET`]: for gRPC server reflection.

#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod v1 {
    tonic::include_proto!("interop_router.v1");
}

/// Encoded descriptors of every service, for `tonic-reflection`.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("interop_router_v1_descriptor");
