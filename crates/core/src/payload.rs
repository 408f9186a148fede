//! What commands carry and other parts of the state keep: envelopes and
//! their device parts, prekey uploads, request ids. A leaf: it depends on
//! identifiers, keys and blobs only, so the aggregates that store these
//! (mailboxes, groups, federation queues, Once answers) need not depend on
//! `command`.

use crate::blob::Blob;
use crate::ids::{ContentType, DeviceId, MessageId, ProviderId, RegistrationId, UserId};
use crate::keys::{OneTimePrekey, SignedPrekey};
use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// Names one client write on the node that accepted it: `origin` is random
/// per process start, `seq` counts that process's writes, so ids never
/// repeat across restarts (in practice: 64 random bits).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct RequestId {
    pub origin: u64,
    pub seq: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrekeyUpload {
    /// 33-byte serialized identity key.
    pub identity_key: Bytes,
    pub signed_prekey: Option<SignedPrekey>,
    pub one_time: Vec<OneTimePrekey>,
    pub kyber_one_time: Vec<SignedPrekey>,
    pub kyber_last_resort: Option<SignedPrekey>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SendEnvelope {
    /// The authenticated sending provider.
    pub sender: ProviderId,
    /// Absent for sealed sender; when present, a user of `sender`.
    pub sender_user: Option<UserId>,
    /// The sending device; present exactly when `sender_user` is.
    pub sender_device: Option<DeviceId>,
    pub message_id: MessageId,
    pub recipient: UserId,
    pub content_type: ContentType,
    pub ttl_ms: u64,
    pub parts: Vec<DevicePart>,
    /// W3C `traceparent` of the send, so the delivery joins its trace.
    /// Routing metadata only; never read by `apply`.
    #[serde(default)]
    pub traceparent: Option<String>,
}

impl SendEnvelope {
    /// The ciphertexts of the envelope, one per device part.
    pub fn blobs_mut<'a>(&'a mut self, out: &mut Vec<&'a mut Blob>) {
        out.extend(self.parts.iter_mut().map(|p| &mut p.ciphertext));
    }
}

/// The ciphertext for one recipient device.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DevicePart {
    pub device: DeviceId,
    pub registration_id: RegistrationId,
    pub message_type: u32,
    pub ciphertext: Blob,
}
