//! Groups: membership with roles and an epoch, hub-ordered messages.
//!
//! The router is the hub (docs/design/groups.md, MIMI): it gives every group message a
//! group sequence number and an acceptance time when the entry commits, so
//! every member sees the same order. A message becomes one mailbox entry per
//! member *provider* (carrying the recipient users of that provider), not one
//! per member. Recipients are the members at apply time: a removed member
//! gets nothing sent after its removal.

use crate::ids::{ContentType, DeviceId, MessageId, ProviderId, UserId};
use crate::payload::DevicePart;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct GroupId(pub String);

impl GroupId {
    pub fn new(s: impl Into<String>) -> Self {
        GroupId(s.into())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Role {
    Admin,
    Member,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupRecord {
    pub id: GroupId,
    pub members: BTreeMap<UserId, Role>,
    /// Changes with every membership or role change.
    pub epoch: u64,
    /// The next group sequence number.
    pub next_seq: u64,
}

/// One group message as sent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupSend {
    pub sender: ProviderId,
    pub sender_user: UserId,
    pub sender_device: DeviceId,
    pub group: GroupId,
    pub message_id: MessageId,
    pub content_type: ContentType,
    pub ttl_ms: u64,
    /// Sender-key ciphertext, the same for every member.
    pub ciphertext: crate::blob::Blob,
    /// Optional per-device parts (e.g. sender-key distribution for new
    /// members), addressed by user.
    pub per_device: Vec<(UserId, DevicePart)>,
    #[serde(default)]
    pub traceparent: Option<String>,
}

/// What one member provider's mailbox receives for a group message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupDelivery {
    pub group: GroupId,
    pub group_seq: u64,
    pub epoch: u64,
    pub sender: ProviderId,
    pub sender_user: UserId,
    pub sender_device: DeviceId,
    pub message_id: MessageId,
    pub content_type: ContentType,
    /// The members of this provider the message is for.
    pub recipients: Vec<UserId>,
    pub ciphertext: crate::blob::Blob,
    /// The per-device parts for `recipients` only.
    pub per_device: Vec<(UserId, DevicePart)>,
    #[serde(default)]
    pub traceparent: Option<String>,
}

/// A group message's ciphertexts: the one for every member, then the
/// per-device parts (`GroupSend` and `GroupDelivery` hold the same two).
fn blobs_mut<'a>(
    ciphertext: &'a mut crate::blob::Blob,
    per_device: &'a mut [(UserId, DevicePart)],
    out: &mut Vec<&'a mut crate::blob::Blob>,
) {
    out.push(ciphertext);
    out.extend(per_device.iter_mut().map(|(_, p)| &mut p.ciphertext));
}

impl GroupSend {
    pub fn blobs_mut<'a>(&'a mut self, out: &mut Vec<&'a mut crate::blob::Blob>) {
        blobs_mut(&mut self.ciphertext, &mut self.per_device, out);
    }
}

impl GroupDelivery {
    pub fn blobs_mut<'a>(&'a mut self, out: &mut Vec<&'a mut crate::blob::Blob>) {
        blobs_mut(&mut self.ciphertext, &mut self.per_device, out);
    }
}
