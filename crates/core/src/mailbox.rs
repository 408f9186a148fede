//! One provider's mailbox: accepted entries in sequence order until the
//! provider acks them or they expire.

use crate::ids::{MessageId, ProviderId, Seq, UserId};
use crate::payload::SendEnvelope;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mailbox {
    /// The next sequence number to assign; sequences are never reused, even
    /// after acks, so a receiver can dedupe by sequence.
    pub next_seq: Seq,
    /// Shared, never changed in place: a snapshot's copy of the state and a
    /// receive stream's batch take a reference, not a copy of the envelope.
    /// Encoded exactly as the entries themselves.
    pub entries: BTreeMap<Seq, Arc<MailboxEntry>>,
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
        self.entries.insert(seq, Arc::new(MailboxEntry { seq, accepted_at_ms, expires_at_ms, item }));
        seq
    }

    /// Up to `limit` entries with `seq >= from`, in order.
    pub fn range_from(&self, from: Seq, limit: usize) -> impl Iterator<Item = &Arc<MailboxEntry>> {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Sharing entries changes nothing on disk or on the wire: a mailbox
    /// encodes exactly as one holding the entries themselves (what snapshots
    /// of older builds hold).
    #[test]
    fn shared_entries_encode_as_the_entries_themselves() {
        #[derive(Serialize)]
        struct Plain {
            next_seq: Seq,
            entries: BTreeMap<Seq, MailboxEntry>,
        }
        let mut mailbox = Mailbox { next_seq: 1, ..Mailbox::default() };
        let item = |n: u32| MailboxItem::PrekeyLowStock {
            user: UserId::new("u"),
            device: n,
            one_time_remaining: n,
            kyber_one_time_remaining: 0,
        };
        mailbox.push(5, 10, item(1));
        mailbox.push(6, 11, item(2));
        let plain = Plain {
            next_seq: mailbox.next_seq,
            entries: mailbox.entries.iter().map(|(s, e)| (*s, MailboxEntry::clone(e))).collect(),
        };
        let bytes = bincode::serialize(&mailbox).unwrap();
        assert_eq!(bytes, bincode::serialize(&plain).unwrap());
        assert_eq!(bincode::deserialize::<Mailbox>(&bytes).unwrap(), mailbox);
    }
}
