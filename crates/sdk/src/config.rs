//! [`ClientConfig`]: where a client connects and how long it keeps trying.

use std::time::Duration;

/// Default [`ClientConfig::max_send_batch`].
pub const DEFAULT_MAX_SEND_BATCH: usize = 64;
/// Default [`ClientConfig::max_send_batch_calls`].
pub const DEFAULT_MAX_SEND_BATCH_CALLS: usize = 4;

#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// `host:port` of each node's provider listener.
    pub endpoints: Vec<String>,
    pub ca_pem: Vec<u8>,
    /// This provider's certificate (URI SAN `spiffe://interop-router/provider/<id>`).
    pub cert_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
    /// Name the node certificates are valid for.
    pub server_name: String,
    /// Per-attempt deadline.
    pub attempt_timeout: Duration,
    /// Total time one call may spend retrying.
    pub call_deadline: Duration,
    /// Largest message this client sends (envelopes; a `SendBatch` call).
    pub max_message_bytes: usize,
    /// Concurrent [`RouterClient::send`]s put in one `SendBatch` call at
    /// most; 0 or 1 sends each in its own `Send` call.
    pub max_send_batch: usize,
    /// `SendBatch` calls in flight at once; sends wait in the client's queue
    /// (and join the next call) while all are busy.
    pub max_send_batch_calls: usize,
}

impl ClientConfig {
    pub fn new(endpoints: Vec<String>, ca_pem: Vec<u8>, cert_pem: Vec<u8>, key_pem: Vec<u8>) -> Self {
        ClientConfig {
            endpoints,
            ca_pem,
            cert_pem,
            key_pem,
            server_name: "localhost".into(),
            attempt_timeout: Duration::from_secs(5),
            call_deadline: Duration::from_secs(20),
            max_message_bytes: 4 * 1024 * 1024,
            max_send_batch: DEFAULT_MAX_SEND_BATCH,
            max_send_batch_calls: DEFAULT_MAX_SEND_BATCH_CALLS,
        }
    }
}
