//! Errors as a provider sees them.

use prost::Message;
use router_proto::v1::ErrorDetail;
use tonic::{Code, Status};

#[derive(Debug, thiserror::Error)]
pub enum SdkError {
    /// The router refused the request; retrying it unchanged will not help.
    #[error("{code:?} {reason}: {message}")]
    Rejected { code: Code, reason: String, message: String, detail: Box<ErrorDetail> },
    /// No node could complete the call before the deadline.
    #[error("unavailable after {attempts} attempts: {last}")]
    Unavailable { attempts: u32, last: String },
    #[error("invalid client configuration: {0}")]
    Config(String),
}

impl SdkError {
    pub fn reason(&self) -> Option<&str> {
        match self {
            SdkError::Rejected { reason, .. } => Some(reason),
            _ => None,
        }
    }

    pub fn code(&self) -> Option<Code> {
        match self {
            SdkError::Rejected { code, .. } => Some(*code),
            _ => None,
        }
    }

    pub fn detail(&self) -> Option<&ErrorDetail> {
        match self {
            SdkError::Rejected { detail, .. } => Some(detail),
            _ => None,
        }
    }
}

/// Codes worth another attempt (possibly on another node). An INTERNAL
/// without the router's error detail was made by the transport, not by a
/// handler (hyper reports an HTTP/2 stream reset by a node that died
/// mid-call as "h2 protocol error"): the outcome is unknown, so it is
/// retried like UNAVAILABLE (sends are idempotent by message id).
pub(crate) fn is_retryable(status: &Status) -> bool {
    let transport_internal =
        status.code() == Code::Internal && ErrorDetail::decode(status.details()).map_or(true, |d| d.reason.is_empty());
    transport_internal
        || matches!(
            status.code(),
            Code::Unavailable | Code::Unknown | Code::DeadlineExceeded | Code::Cancelled | Code::Aborted
        )
}

pub(crate) fn rejected(status: Status) -> SdkError {
    let detail = ErrorDetail::decode(status.details()).unwrap_or_default();
    SdkError::Rejected {
        code: status.code(),
        reason: if detail.reason.is_empty() { format!("{:?}", status.code()) } else { detail.reason.clone() },
        message: status.message().to_string(),
        detail: Box::new(detail),
    }
}

/// "CODE REASON: message" for a status, reading the router's error detail.
pub fn describe(status: &Status) -> String {
    let detail = ErrorDetail::decode(status.details()).unwrap_or_default();
    if detail.reason.is_empty() {
        format!("{:?}: {}", status.code(), status.message())
    } else {
        format!("{:?} {}: {}", status.code(), detail.reason, status.message())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transport_errors_are_retried_and_router_refusals_are_not() {
        assert!(is_retryable(&Status::internal("h2 protocol error: http2 error")));
        assert!(is_retryable(&Status::unavailable("connection refused")));
        let detail = ErrorDetail { reason: "DEVICE_MISMATCH".into(), ..Default::default() };
        let refusal = Status::with_details(Code::FailedPrecondition, "mismatch", detail.encode_to_vec().into());
        assert!(!is_retryable(&refusal));
        let detail = ErrorDetail { reason: "INTERNAL".into(), ..Default::default() };
        let handler_internal = Status::with_details(Code::Internal, "bug", detail.encode_to_vec().into());
        assert!(!is_retryable(&handler_internal), "the router decided: not retried");
    }
}
