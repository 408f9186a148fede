//! `router-core`: the Interop Router's domain types and its replicated state
//! machine.
//!
//! # What this crate owns
//! - Identifiers (`ProviderId`, `UserId`, `MessageId`), the commands a
//!   client request turns into ([`Command`]), and what applying one answers
//!   ([`Outcome`]).
//! - [`State`]: the routing table, device lists, the prekey directory,
//!   per-provider mailboxes, send dedup and TTL expiry. [`State::apply_batch`]
//!   is a pure, deterministic function of the state and a leader-stamped
//!   [`Batch`]: every replica applying the same log reaches the same state and
//!   answers the same outcomes.
//!
//! # What it must not depend on
//! No I/O, no async runtime, no clock, no randomness, no openraft, sled or
//! tonic. Time enters only as the `stamp_ms` the leader wrote into the log
//! entry. Iteration uses ordered maps only, so snapshots are byte-identical
//! across replicas.
//!
//! # Layout
//! - `blob`: [`Blob`], a ciphertext held in memory or by the node's storage.
//! - `federation`: peer clusters, outbound relay queues, relayed items.
//! - `group`: groups, roles, epochs and hub-ordered group messages.
//! - `ids`: identifier newtypes and small value types.
//! - `command`: [`Command`] and [`Batch`].
//! - `dedup`: the send answers kept for the dedup window, per sender from
//!   cluster version 5.
//! - `payload`: what commands carry and the state keeps (envelopes, device
//!   parts, prekey uploads, request ids); a leaf.
//! - `outcome`: [`Outcome`] and [`Rejection`] (a rejection is an outcome, not an error).
//! - `limits`: [`Limits`], the replicated limits `apply` enforces.
//! - `mailbox`: one provider's ordered mailbox.
//! - `keys`: a device's stored prekeys and the claim rule.
//! - `provider`: [`ProviderRecord`] and the onboarding lifecycle.
//! - `once`: the answers of `Command::Once` requests (retried writes).
//! - `state`: [`State`] and `apply`; `state::restore`, a backup loaded in parts.
//! - `version`: cluster versions, the rules `apply` reads the log by, and the
//!   time bounds those rules use.

pub mod blob;
pub mod command;
pub mod dedup;
pub mod federation;
pub mod group;
pub mod ids;
pub mod keys;
pub mod limits;
pub mod mailbox;
pub mod once;
pub mod outcome;
pub mod payload;
pub mod provider;
pub mod state;
pub mod version;

pub use blob::{Blob, BlobSink, BlobSource};
pub use command::{Batch, Command};
pub use federation::{ClusterId, Federation, PeerRecord, PeerStatus, RelayedItem, RelayedKind, UndeliverableReason};
pub use group::{GroupDelivery, GroupId, GroupRecord, GroupSend, Role};
pub use ids::{ContentType, DeviceId, MessageId, ProviderId, RegistrationId, Seq, UserId};
pub use keys::{Bundle, DeviceKeys, OneTimePrekey, SignedPrekey};
pub use limits::Limits;
pub use mailbox::{Mailbox, MailboxEntry, MailboxItem};
pub use once::OnceAnswers;
pub use outcome::{Outcome, Rejection};
pub use payload::{DevicePart, PrekeyUpload, RequestId, SendEnvelope};
pub use provider::{ProviderAction, ProviderRecord, ProviderStatus};
pub use state::restore::{RestoreProgress, StateItem};
pub use state::{DeviceRecord, State, StateExtras, StateExtrasRef, UserRecord};
pub use version::CLUSTER_VERSION;
