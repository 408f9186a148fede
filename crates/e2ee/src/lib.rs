//! `router-e2ee`: Signal-protocol end-to-end encryption for providers, on
//! top of `router-sdk`.
//!
//! Licensed AGPL-3.0-only because it links Signal's libsignal (republished
//! on crates.io as `libsignal-protocol-syft`). The router itself (`routerd`
//! and the `router-*` crates it is built from) does not link this crate and
//! stays Apache-2.0.
//!
//! # What this crate owns
//! - [`SignalDevice`]: one local device's keys and sessions: generates the
//!   identity key, signed prekey, one-time EC and Kyber prekeys and a
//!   last-resort Kyber key, builds uploads, starts sessions from fetched
//!   bundles (PQXDH), encrypts and decrypts (double ratchet).
//! - `store`: where session state lives; libsignal's in-memory store and a
//!   sled-backed [`store::SledProtocolStore`] both work.
//! - [`Messenger`]: a provider's view: its local devices, sending to a user's
//!   every device (fetching bundles, fixing device mismatches, retrying with
//!   the same message id) and turning received mailbox entries into
//!   plaintext, at least once and deduplicated by message id.
//!
//! # What it must not depend on
//! Only the wire contract (through `router-sdk`); never the node, the Raft
//! layer or the core state machine.
//!
//! # Layout
//! - `device`: [`SignalDevice`].
//! - `store`: [`store::SledProtocolStore`].
//! - `messenger`: [`Messenger`], [`Received`].
//! - `error`: [`E2eeError`].

pub mod device;
pub mod error;
pub mod messenger;
pub mod store;

pub use device::SignalDevice;
pub use error::E2eeError;
pub use libsignal_protocol::{InMemSignalProtocolStore, ProtocolStore};
pub use messenger::{Inbound, Messenger, Received, ReceivedGroup};
