//! Errors of the E2EE layer.

use router_sdk::SdkError;

#[derive(Debug, thiserror::Error)]
pub enum E2eeError {
    #[error("router: {0}")]
    Router(#[from] SdkError),
    #[error("signal protocol: {0}")]
    Signal(#[from] libsignal_protocol::SignalProtocolError),
    #[error("device id {0} is outside Signal's range 1..=127")]
    BadDeviceId(u32),
    #[error("a bundle from the router is malformed: {0}")]
    BadBundle(&'static str),
    #[error("user {user} has no local device {device}")]
    UnknownLocalDevice { user: String, device: u32 },
    #[error("the recipient's devices kept changing; gave up after {attempts} attempts")]
    DevicesUnsettled { attempts: u32 },
    #[error("a mailbox entry is malformed: {0}")]
    BadEntry(&'static str),
}
