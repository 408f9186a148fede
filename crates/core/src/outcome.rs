//! Outcomes of `apply`. A rejection is an outcome, identical on every replica;
//! it is never an `Err` (an `Err` would mean this node is broken).

use crate::ids::{DeviceId, ProviderId, RegistrationId, Seq, UserId};
use crate::keys::Bundle;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// The command took effect (or was already in effect).
    Done,
    KeysStored {
        one_time_remaining: u32,
        kyber_one_time_remaining: u32,
    },
    Bundles {
        provider: ProviderId,
        bundles: Vec<Bundle>,
    },
    /// An envelope is durable in the recipient provider's mailbox.
    Sent {
        seq: Seq,
        accepted_at_ms: u64,
    },
    Acked {
        removed: u32,
        unknown: u32,
    },
    /// A group message is durable; `group_seq` orders it for every member.
    GroupSent {
        group_seq: u64,
        epoch: u64,
        accepted_at_ms: u64,
    },
    /// A group was created or changed; its new epoch.
    GroupEpoch {
        epoch: u64,
    },
    Rejected(Rejection),
    /// Per relayed item, in order: `Sent` (stored, or stored before), `Done`
    /// (a report delivered) or `Rejected`.
    Relayed {
        results: Vec<Outcome>,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Rejection {
    /// The acting provider was never onboarded (or only requested so far).
    ProviderNotOnboarded {
        provider: ProviderId,
    },
    /// The acting provider is suspended (or revoked) by the operator.
    ProviderSuspended {
        provider: ProviderId,
        status: crate::provider::ProviderStatus,
    },
    /// A lifecycle action that does not apply to the provider's status.
    BadTransition {
        provider: ProviderId,
        from: crate::provider::ProviderStatus,
    },
    /// An action on a provider the cluster does not know.
    UnknownProvider {
        provider: ProviderId,
    },
    UserNotFound {
        user: UserId,
    },
    /// The user belongs to another provider (which one is not disclosed).
    NotOwner {
        user: UserId,
    },
    /// Another provider already registered this user id.
    UserTaken {
        user: UserId,
    },
    DeviceNotFound {
        user: UserId,
        device: DeviceId,
    },
    /// The recipient has no registered device, so nothing can be addressed.
    NoDevices {
        user: UserId,
    },
    TooManyDevices {
        limit: u32,
    },
    /// Signal's 409/410: the send's device list does not match.
    DeviceMismatch {
        missing: Vec<DeviceId>,
        extra: Vec<DeviceId>,
        stale: Vec<DeviceId>,
    },
    /// No device of the user (or not the requested one) has a signed prekey.
    NoKeys {
        user: UserId,
    },
    /// First upload, or an identity key change, must carry a signed prekey.
    SignedPrekeyRequired,
    /// The upload would exceed the per-device stock.
    PrekeyStockFull {
        limit: u32,
        actual: u64,
    },
    /// A one-time key id already in the stock.
    DuplicatePrekeyId {
        key_id: u32,
    },
    MailboxFull {
        provider: ProviderId,
        limit: u64,
    },
    /// A restore needs a cluster without users and mailbox entries.
    RestoreIntoNonEmpty,
    /// A restore is under way: writes resume when it finishes (or when a
    /// new restore replaces one that was cut off).
    RestoreInProgress,
    /// A restore part or finish that does not follow: another restore
    /// started, or a part is missing (`expected_part` is the next one due).
    RestoreMismatch {
        id: u64,
        expected_part: u32,
        part: u32,
    },
    /// The command needs rules the cluster has not reached yet (members
    /// still run an older build).
    ClusterVersionTooLow {
        needed: u32,
        current: u32,
    },
    /// Too many bundle claims for this (requester, user); retry after the delay.
    RateLimited {
        retry_after_ms: u64,
    },
    GroupNotFound {
        group: crate::group::GroupId,
    },
    GroupExists {
        group: crate::group::GroupId,
    },
    /// The acting user is not a member (or not an admin, for changes).
    NotGroupMember {
        user: UserId,
    },
    NotGroupAdmin {
        user: UserId,
    },
    TooManyGroupMembers {
        limit: u32,
    },
    /// No federation peer of that name is registered.
    UnknownPeer {
        peer: crate::federation::ClusterId,
    },
    /// The operator suspended the peer: nothing goes to or comes from it.
    PeerSuspended {
        peer: crate::federation::ClusterId,
    },
    /// The peer is not registered as serving this provider.
    NotServedByPeer {
        provider: ProviderId,
        peer: crate::federation::ClusterId,
    },
    /// A peer is removed only once its outbound queue is empty.
    PeerQueueNotEmpty {
        peer: crate::federation::ClusterId,
        depth: u64,
    },
}

impl Rejection {
    /// A refusal that may pass if the same command is retried later (a full
    /// mailbox drains, a suspension is lifted); the others are final (a
    /// revoked provider does not come back).
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Rejection::MailboxFull { .. }
                | Rejection::RateLimited { .. }
                | Rejection::ProviderSuspended { status: crate::provider::ProviderStatus::Suspended, .. }
                | Rejection::PeerSuspended { .. }
                | Rejection::RestoreInProgress
        )
    }

    /// Stable machine-readable reason, used in error details and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Rejection::ProviderNotOnboarded { .. } => "PROVIDER_NOT_ONBOARDED",
            Rejection::ProviderSuspended { .. } => "PROVIDER_SUSPENDED",
            Rejection::BadTransition { .. } => "BAD_TRANSITION",
            Rejection::UnknownProvider { .. } => "UNKNOWN_PROVIDER",
            Rejection::UserNotFound { .. } => "USER_NOT_FOUND",
            Rejection::NotOwner { .. } => "NOT_OWNER",
            Rejection::UserTaken { .. } => "USER_TAKEN",
            Rejection::DeviceNotFound { .. } => "DEVICE_NOT_FOUND",
            Rejection::NoDevices { .. } => "NO_DEVICES",
            Rejection::TooManyDevices { .. } => "TOO_MANY_DEVICES",
            Rejection::DeviceMismatch { .. } => "DEVICE_MISMATCH",
            Rejection::NoKeys { .. } => "NO_KEYS",
            Rejection::SignedPrekeyRequired => "SIGNED_PREKEY_REQUIRED",
            Rejection::PrekeyStockFull { .. } => "PREKEY_STOCK_FULL",
            Rejection::DuplicatePrekeyId { .. } => "DUPLICATE_PREKEY_ID",
            Rejection::MailboxFull { .. } => "MAILBOX_FULL",
            Rejection::RestoreIntoNonEmpty => "RESTORE_INTO_NON_EMPTY",
            Rejection::RestoreInProgress => "RESTORE_IN_PROGRESS",
            Rejection::RestoreMismatch { .. } => "RESTORE_MISMATCH",
            Rejection::ClusterVersionTooLow { .. } => "CLUSTER_VERSION_TOO_LOW",
            Rejection::RateLimited { .. } => "RATE_LIMITED",
            Rejection::GroupNotFound { .. } => "GROUP_NOT_FOUND",
            Rejection::GroupExists { .. } => "GROUP_EXISTS",
            Rejection::NotGroupMember { .. } => "NOT_GROUP_MEMBER",
            Rejection::NotGroupAdmin { .. } => "NOT_GROUP_ADMIN",
            Rejection::TooManyGroupMembers { .. } => "TOO_MANY_GROUP_MEMBERS",
            Rejection::UnknownPeer { .. } => "UNKNOWN_PEER",
            Rejection::PeerSuspended { .. } => "PEER_SUSPENDED",
            Rejection::NotServedByPeer { .. } => "NOT_SERVED_BY_PEER",
            Rejection::PeerQueueNotEmpty { .. } => "PEER_QUEUE_NOT_EMPTY",
        }
    }
}

/// Kept for readability at call sites that check a registration id.
pub type Registration = (DeviceId, RegistrationId);
