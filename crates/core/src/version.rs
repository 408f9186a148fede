//! Cluster versions: which rules `apply` reads the log by.
//!
//! Every replica must apply an entry the same way, also in the middle of a
//! rolling upgrade, when some members still run the previous build. A change
//! to what `apply` does with the same input therefore waits behind a
//! replicated cluster version (etcd's cluster version is the model): the
//! state starts at [`BASE_CLUSTER_VERSION`], and the leader proposes
//! [`crate::Command::SetClusterVersion`] once every member runs a build that
//! knows the higher version. From the entry that raises it on, every replica
//! applies the new rules.
//!
//! Version 5 (this build, [`CLUSTER_VERSION`]):
//! - send answers are kept in one window per sender, by a digest of the
//!   message id, and `Limits::max_dedup_entries` caps each sender's window
//!   rather than all senders' together (`crate::dedup`): one sender's volume
//!   no longer evicts another's answers.
//!
//! Version 4:
//! - [`crate::Command::SetIncarnation`] records which incarnation of each
//!   Raft member the cluster admitted (`state::incarnation`); the transport
//!   refuses votes and appends from, and discards answers by, any other.
//!
//! Version 3:
//! - a backup is restored in bounded parts (`RestoreBegin`, `RestoreItems`,
//!   `RestoreFinish`; `state::restore`), every other write refused meanwhile.
//!
//! Version 2:
//! - stored mailbox sequences start at 1 (0 marks ephemeral entries on the
//!   wire); a mailbox created before keeps the sequences it handed out;
//! - an entry is expired (and reported to its sender) only
//!   [`DELIVERY_ACK_GRACE_MS`] after its `expires_at_ms`; receive streams stop
//!   handing it out at `expires_at_ms`, so a provider that received an entry
//!   and acks it within the grace is never told it expired;
//! - one entry moves the replicated clock forward by at most
//!   [`MAX_CLOCK_STEP_MS`] (a leader whose clock jumped cannot expire
//!   everything at once);
//! - [`crate::Command::Once`] answers a retried request from its window.

/// The rules of builds from before cluster versions (a state that never saw
/// `SetClusterVersion` reads as this).
pub const BASE_CLUSTER_VERSION: u32 = 1;
/// The highest cluster version this build applies.
pub const CLUSTER_VERSION: u32 = 5;

/// How far one log entry may move the replicated clock forward (version 2).
/// The leader stamps an entry at least every `IDLE_TICK` of the node's writer
/// (well under this), so a correct leader never hits the bound.
pub const MAX_CLOCK_STEP_MS: u64 = 10_000;
/// How long after its `expires_at_ms` an unacked entry is removed and
/// reported (version 2): the time a receiver has to ack an entry it was
/// handed just before it expired.
pub const DELIVERY_ACK_GRACE_MS: u64 = 15_000;
/// How long a [`crate::Command::Once`] answer is kept (leader time): far
/// longer than a node retries one write (`LEADER_WAIT` in the writer).
pub const ONCE_WINDOW_MS: u64 = 60_000;
/// How many `Once` answers are kept at most (the oldest go first).
pub const MAX_ONCE_ANSWERS: usize = 1_000_000;
