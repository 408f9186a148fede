//! The one place where failures become gRPC statuses. Every non-OK status
//! carries an `interop_router.v1.ErrorDetail` in its binary details with a
//! stable `reason`, so clients never parse message text.

use crate::writer::WriteError;
use prost::Message;
use router_core::{Outcome, Rejection};
use router_proto::v1::{DeviceMismatch, ErrorDetail};
use tonic::{Code, Status};

pub fn with_detail(code: Code, message: impl Into<String>, detail: ErrorDetail) -> Status {
    Status::with_details(code, message, detail.encode_to_vec().into())
}

pub fn reason(code: Code, reason: &str, message: impl Into<String>) -> Status {
    with_detail(code, message, ErrorDetail { reason: reason.into(), ..Default::default() })
}

/// Malformed input: which field, why, and the limit when one applies.
pub fn invalid_field(field: impl Into<String>, why: &str, message: impl Into<String>) -> Status {
    with_detail(
        Code::InvalidArgument,
        message,
        ErrorDetail { reason: why.into(), field: field.into(), ..Default::default() },
    )
}

pub fn over_limit(field: impl Into<String>, limit: u64, actual: u64) -> Status {
    let field = field.into();
    with_detail(
        Code::InvalidArgument,
        format!("{field}: {actual} exceeds the limit of {limit}"),
        ErrorDetail { reason: "TOO_LARGE".into(), field, limit, actual, ..Default::default() },
    )
}

pub fn permission_denied(message: impl Into<String>) -> Status {
    reason(Code::PermissionDenied, "PERMISSION_DENIED", message)
}

pub fn rejection(r: &Rejection) -> Status {
    let code = match r {
        Rejection::ProviderNotOnboarded { .. } | Rejection::NotOwner { .. } | Rejection::ProviderSuspended { .. } => {
            Code::PermissionDenied
        }
        Rejection::BadTransition { .. } => Code::FailedPrecondition,
        Rejection::GroupNotFound { .. } => Code::NotFound,
        Rejection::GroupExists { .. } => Code::AlreadyExists,
        Rejection::NotGroupMember { .. } | Rejection::NotGroupAdmin { .. } => Code::PermissionDenied,
        Rejection::TooManyGroupMembers { .. } => Code::ResourceExhausted,
        Rejection::UnknownProvider { .. } => Code::NotFound,
        Rejection::UserNotFound { .. }
        | Rejection::DeviceNotFound { .. }
        | Rejection::NoDevices { .. }
        | Rejection::NoKeys { .. } => Code::NotFound,
        Rejection::UserTaken { .. } => Code::AlreadyExists,
        Rejection::DeviceMismatch { .. }
        | Rejection::SignedPrekeyRequired
        | Rejection::RestoreIntoNonEmpty
        | Rejection::RestoreMismatch { .. }
        | Rejection::ClusterVersionTooLow { .. } => Code::FailedPrecondition,
        Rejection::RestoreInProgress => Code::Unavailable,
        Rejection::TooManyDevices { .. }
        | Rejection::PrekeyStockFull { .. }
        | Rejection::MailboxFull { .. }
        | Rejection::RateLimited { .. } => Code::ResourceExhausted,
        Rejection::DuplicatePrekeyId { .. } => Code::InvalidArgument,
        Rejection::UnknownPeer { .. } => Code::NotFound,
        Rejection::PeerSuspended { .. } => Code::FailedPrecondition,
        Rejection::NotServedByPeer { .. } => Code::PermissionDenied,
        Rejection::PeerQueueNotEmpty { .. } => Code::FailedPrecondition,
    };
    let mut detail = ErrorDetail { reason: r.reason().into(), ..Default::default() };
    let message = match r {
        Rejection::ProviderNotOnboarded { provider } => format!("provider {provider} is not onboarded"),
        Rejection::ProviderSuspended { provider, status } => {
            format!("provider {provider} is {} by the operator; its queued data is kept", status.as_str())
        }
        Rejection::BadTransition { provider, from } => {
            format!("that action does not apply to provider {provider} in status {}", from.as_str())
        }
        Rejection::UnknownProvider { provider } => format!("no provider {provider} is known"),
        Rejection::UserNotFound { user } => format!("user {user} is not registered"),
        Rejection::NotOwner { user } => format!("user {user} belongs to another provider"),
        Rejection::UserTaken { user } => format!("user {user} is registered by another provider"),
        Rejection::DeviceNotFound { user, device } => format!("user {user} has no device {device}"),
        Rejection::TooManyDevices { limit } => {
            detail.limit = u64::from(*limit);
            format!("a user may have at most {limit} devices")
        }
        Rejection::DeviceMismatch { missing, extra, stale } => {
            detail.device_mismatch = Some(DeviceMismatch {
                missing_devices: missing.clone(),
                extra_devices: extra.clone(),
                stale_devices: stale.clone(),
            });
            format!("device list mismatch: missing {missing:?}, extra {extra:?}, stale {stale:?}")
        }
        Rejection::NoKeys { user } => format!("no device of user {user} has uploaded prekeys"),
        Rejection::NoDevices { user } => format!("user {user} has no registered device"),
        Rejection::SignedPrekeyRequired => {
            detail.field = "signed_prekey".into();
            "the first upload, or one with a new identity key, must include a signed prekey".into()
        }
        Rejection::PrekeyStockFull { limit, actual } => {
            detail.limit = u64::from(*limit);
            detail.actual = *actual;
            format!("the device would hold {actual} one-time prekeys; the limit is {limit}")
        }
        Rejection::DuplicatePrekeyId { key_id } => format!("one-time prekey id {key_id} is already stocked"),
        Rejection::GroupNotFound { group } => format!("no group {}", group.0),
        Rejection::GroupExists { group } => format!("group {} already exists", group.0),
        Rejection::NotGroupMember { user } => format!("{user} is not a member of the group"),
        Rejection::NotGroupAdmin { user } => format!("{user} is not an admin of the group"),
        Rejection::TooManyGroupMembers { limit } => {
            detail.limit = u64::from(*limit);
            format!("a group may have at most {limit} members")
        }
        Rejection::RateLimited { retry_after_ms } => {
            detail.retry_after_ms = *retry_after_ms;
            format!("too many bundle claims for this user; retry after {retry_after_ms} ms")
        }
        Rejection::RestoreIntoNonEmpty => {
            "a backup can only be restored into a cluster without users or queued mail".into()
        }
        Rejection::RestoreInProgress => {
            "a backup is being restored; writes resume when it finishes (a restore that was cut off: run it again)"
                .into()
        }
        Rejection::RestoreMismatch { id, expected_part, part } => {
            format!(
                "restore {id:x}: part {part} does not follow (next due: {expected_part}); another restore replaced it"
            )
        }
        Rejection::ClusterVersionTooLow { needed, current } => {
            detail.limit = u64::from(*needed);
            detail.actual = u64::from(*current);
            format!(
                "the cluster applies version {current}; this needs version {needed} (every member on a newer build)"
            )
        }
        Rejection::MailboxFull { provider, limit } => {
            detail.limit = *limit;
            match router_core::federation::queue_peer(provider) {
                Some(peer) => format!(
                    "the outbound queue to federation peer {peer} holds its limit of {limit} entries; retry later"
                ),
                None => format!("the mailbox of provider {provider} holds its limit of {limit} entries; retry later"),
            }
        }
        Rejection::UnknownPeer { peer } => format!("no federation peer {peer} is registered"),
        Rejection::PeerSuspended { peer } => {
            format!("federation peer {peer} is suspended by the operator; queued entries wait")
        }
        Rejection::NotServedByPeer { provider, peer } => {
            format!("federation peer {peer} is not registered as serving provider {provider}")
        }
        Rejection::PeerQueueNotEmpty { peer, depth } => {
            detail.actual = *depth;
            format!(
                "the outbound queue to federation peer {peer} still holds {depth} entries; suspend the peer and \
                 let them drain or expire first"
            )
        }
    };
    with_detail(code, message, detail)
}

pub fn write_error(e: WriteError) -> Status {
    match e {
        WriteError::NoLeader | WriteError::NotLeader { .. } => reason(
            Code::Unavailable,
            "NO_LEADER",
            "the cluster has no reachable leader right now; retry (the same message id is safe)",
        ),
        WriteError::ShuttingDown => {
            reason(Code::Unavailable, "SHUTTING_DOWN", "node is shutting down; use another node")
        }
        WriteError::Raft(m) => reason(Code::Unavailable, "RAFT_ERROR", format!("replication failed: {m}; retry")),
    }
}

/// A queued payload this replica cannot read back (a storage fault): the
/// entry stays queued; another node's replica can deliver it.
pub fn payload_unreadable(seq: u64, e: &std::io::Error) -> Status {
    reason(
        Code::Unavailable,
        "PAYLOAD_UNREADABLE",
        format!("this node cannot read the payload of entry {seq} ({e}); reconnect, preferably to another node"),
    )
}

/// Turns an outcome into `Ok` unless it is a rejection.
pub fn accepted(outcome: Outcome) -> Result<Outcome, Status> {
    match outcome {
        Outcome::Rejected(r) => Err(rejection(&r)),
        other => Ok(other),
    }
}

pub fn unexpected(outcome: &Outcome) -> Status {
    Status::internal(format!("unexpected outcome {outcome:?}"))
}

/// A refused send of a `SendBatch`, as its `SendResult` carries it: what
/// `Send` would have answered, detail decoded back into a message.
pub fn send_error(refused: &Status) -> router_proto::v1::SendError {
    router_proto::v1::SendError {
        code: refused.code() as i32,
        message: refused.message().to_string(),
        detail: ErrorDetail::decode(refused.details()).ok(),
    }
}
