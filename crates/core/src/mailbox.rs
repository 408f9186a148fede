//! One provider's mailbox: accepted entries in sequence order until the
//! provider acks them or they expire.

use crate::ids::{MessageId, ProviderId, Seq, UserId};
use crate::payload::SendEnvelope;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mailbox {
    /// The next sequence number to assign; sequences are never reused, even
    /// after acks, so a receiver can dedupe by sequence.
    pub next_seq: Seq,
    pub entries: BTreeMap<Seq, MailboxEntry>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MailboxEntry {
    pub seq: Seq,
    pub accepted_at_ms: u64,
    pub expires_at_ms: u64,
    pub item: MailboxItem,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MailboxItem {
    Envelope(SendEnvelope),
    /// Tells a sender that its envelope expired before the recipient acked it.
    Expired {
        message_id: MessageId,
        recipient: UserId,
        recipient_provider: ProviderId,
    },
    /// A group message for this provider's members of the group.
    Group(crate::group::GroupDelivery),
    /// Tells a provider that one of its devices is running out of one-time prekeys.
    PrekeyLowStock {
        user: UserId,
        device: crate::ids::DeviceId,
        one_time_remaining: u32,
        kyber_one_time_remaining: u32,
    },
    /// In a peer's outbound queue (`federation`): an envelope of a local
    /// provider to a user `recipient_provider` serves at that peer.
    Outbound {
        recipient_provider: ProviderId,
        envelope: SendEnvelope,
    },
    /// An envelope of provider `to` will not be delivered (refused by the
    /// owning cluster). In a peer's outbound queue, `to` is a provider of
    /// that peer and the report travels back to it.
    Undeliverable {
        to: ProviderId,
        message_id: MessageId,
        recipient: UserId,
        reason: crate::federation::UndeliverableReason,
    },
}

impl MailboxItem {
    /// Every ciphertext this item holds, for the storage layer to place.
    pub fn blobs_mut<'a>(&'a mut self, out: &mut Vec<&'a mut crate::blob::Blob>) {
        match self {
            MailboxItem::Envelope(env) | MailboxItem::Outbound { envelope: env, .. } => env.blobs_mut(out),
            MailboxItem::Group(g) => g.blobs_mut(out),
            MailboxItem::Expired { .. } | MailboxItem::PrekeyLowStock { .. } | MailboxItem::Undeliverable { .. } => {}
        }
    }
}

impl Mailbox {
    pub fn push(&mut self, accepted_at_ms: u64, expires_at_ms: u64, item: MailboxItem) -> Seq {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.entries.insert(seq, MailboxEntry { seq, accepted_at_ms, expires_at_ms, item });
        seq
    }

    /// Up to `limit` entries with `seq >= from`, in order.
    pub fn range_from(&self, from: Seq, limit: usize) -> impl Iterator<Item = &MailboxEntry> {
        self.entries.range(from..).map(|(_, e)| e).take(limit)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// Here rather than in `federation`, which must not depend on mailboxes.
impl crate::federation::RelayedKind {
    /// The queue item as relayed (a queue holds envelopes and reports only).
    pub fn from_queue(item: &MailboxItem) -> Option<crate::federation::RelayedKind> {
        match item {
            MailboxItem::Outbound { envelope, .. } => Some(crate::federation::RelayedKind::Envelope(envelope.clone())),
            MailboxItem::Undeliverable { to, message_id, recipient, reason } => {
                Some(crate::federation::RelayedKind::Undeliverable {
                    to: to.clone(),
                    message_id: message_id.clone(),
                    recipient: recipient.clone(),
                    reason: reason.clone(),
                })
            }
            MailboxItem::Group(delivery) => Some(crate::federation::RelayedKind::Group(delivery.clone())),
            _ => None,
        }
    }
}
