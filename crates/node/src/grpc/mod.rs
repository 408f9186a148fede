//! gRPC services. Provider-facing ones (directory, prekeys, messaging) are
//! served on the provider port; admin and peer (Raft-internal) on the peer
//! port, kept apart so a provider certificate can never reach Raft.

pub mod admin;
pub mod admin_peers;
pub mod admin_restore;
pub mod directory;
pub mod groups;
pub mod media;
pub mod messaging;
pub mod peer;
pub mod prekeys;
pub mod status;
pub mod validate;
pub mod wire;
