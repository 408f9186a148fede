//! Federation: other router clusters (peers) this cluster exchanges 1:1
//! traffic with.
//!
//! ```text
//!  cluster A                                              cluster B (owns bob)
//!  Send(to bob) ─> RelaySend ─> outbound queue "~peer/B" ─relay─> AcceptRelayed ─> beta's mailbox
//!                                        ^                         (dedup by "alpha@A" + message id)
//!                                        └──── RelayAcked <── per-item answers ──┘
//! ```
//!
//! - A peer is registered by the operator with the providers it serves; a
//!   peer may only relay envelopes from those providers, and only users of
//!   those providers are reached through it.
//! - A send to a remote user is accepted once it is durable in this cluster's
//!   outbound queue for the owning peer: a mailbox like a provider's, named
//!   [`outbound_queue`], with the same limits, TTL expiry and expiry reports.
//! - The receiving cluster stores the envelope under the qualified sender
//!   [`qualified`] (`alpha@A`): its dedup table makes a relay repeated after a
//!   failover harmless, and its providers see where the envelope came from.
//! - Whatever cannot be delivered comes back as a report: a rejection by the
//!   owning cluster, or an expiry there, travels back through its outbound
//!   queue and lands in the sending provider's mailbox.
//!
//! Provider ids are `a-z 0-9 - _ .` (checked at the edge), so neither
//! `~peer/<id>` nor `<provider>@<cluster>` can collide with a local provider.

use crate::ids::{MessageId, ProviderId, UserId};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

/// Another router cluster, as its operator names it (same charset as provider ids).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ClusterId(pub String);

impl ClusterId {
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ClusterId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The mailbox holding what waits to be relayed to `peer`.
pub fn outbound_queue(peer: &ClusterId) -> ProviderId {
    ProviderId(format!("~peer/{peer}"))
}

/// The peer whose outbound queue `mailbox` is, if it is one.
pub fn queue_peer(mailbox: &ProviderId) -> Option<ClusterId> {
    mailbox.0.strip_prefix("~peer/").map(ClusterId::new)
}

/// How a provider of `cluster` is named here: `alpha@cluster-a`.
pub fn qualified(provider: &ProviderId, cluster: &ClusterId) -> ProviderId {
    ProviderId(format!("{provider}@{cluster}"))
}

/// How a group homed at `cluster` is named here: `family@cluster-a`.
pub fn qualified_group(group: &crate::group::GroupId, cluster: &ClusterId) -> crate::group::GroupId {
    crate::group::GroupId(format!("{}@{cluster}", group.0))
}

/// The (group, home cluster) of a qualified group id.
pub fn unqualified_group(group: &crate::group::GroupId) -> Option<(crate::group::GroupId, ClusterId)> {
    let (g, c) = group.0.rsplit_once('@')?;
    Some((crate::group::GroupId::new(g), ClusterId::new(c)))
}

/// The (provider, cluster) of a qualified provider id.
pub fn unqualified(provider: &ProviderId) -> Option<(ProviderId, ClusterId)> {
    let (p, c) = provider.0.split_once('@')?;
    Some((ProviderId::new(p), ClusterId::new(c)))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PeerStatus {
    /// Traffic flows both ways.
    Active,
    /// The operator's switch: nothing is accepted from or relayed to the
    /// peer; queued entries wait (or expire, with reports).
    Suspended,
}

impl PeerStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            PeerStatus::Active => "active",
            PeerStatus::Suspended => "suspended",
        }
    }
}

/// What the operator registered about a peer cluster.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerRecord {
    pub id: ClusterId,
    /// `host:port` of the peer's federation listeners, any node of it.
    pub endpoints: Vec<String>,
    /// The peer's CA certificate (PEM): its nodes' certificates chain to it.
    pub ca_pem: String,
    /// Providers the peer serves: the only senders it may relay, and the
    /// only providers whose users are reached through it.
    pub providers: BTreeSet<ProviderId>,
    /// Quota: entries its outbound queue may hold (0: the cluster's
    /// `max_mailbox_entries`). Sends to its users beyond it are refused.
    pub max_queue: u64,
    pub status: PeerStatus,
    pub registered_at_ms: u64,
    pub status_changed_at_ms: u64,
}

/// Registered peers. Part of [`crate::State`], but written to snapshots and
/// backups as a separate trailing section only when not empty, so a cluster
/// that never federated keeps the data layout older builds read.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Federation {
    pub peers: BTreeMap<ClusterId, PeerRecord>,
    /// Remote members of groups homed here: group -> (user -> its cluster).
    pub group_members: BTreeMap<crate::group::GroupId, BTreeMap<UserId, ClusterId>>,
    /// Set by the first peer registration, never cleared: from then on the
    /// state may hold federation items (queued envelopes, reports) even with
    /// no peer left, so its snapshots keep the newer format.
    pub used: bool,
}

impl Federation {
    /// Nothing federation added is or was in the state: snapshots and
    /// backups keep the layout older builds read.
    pub fn is_empty(&self) -> bool {
        !self.used && self.peers.is_empty()
    }
}

/// One item a cluster relays to a peer, taken from its outbound queue.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelayedItem {
    /// Position in the sender's outbound queue (what `RelayAcked` names).
    pub queue_seq: u64,
    /// Milliseconds of TTL left when relayed; the receiver restarts the
    /// clock from its own stamp.
    pub ttl_left_ms: u64,
    pub item: RelayedKind,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RelayedKind {
    /// A 1:1 envelope; `sender` is the provider as named in the sending cluster.
    Envelope(crate::payload::SendEnvelope),
    /// An envelope of `to` (a provider of the receiving cluster) will not be
    /// delivered by the relaying cluster.
    Undeliverable { to: ProviderId, message_id: MessageId, recipient: UserId, reason: UndeliverableReason },
    /// A group message ordered by the group's home cluster (the relaying
    /// one), for `recipients` served by the receiving cluster. Group id and
    /// sender are named as the receiving cluster names them.
    Group(crate::group::GroupDelivery),
}

/// Why an envelope will not be delivered (reported to its sender).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum UndeliverableReason {
    /// Its TTL passed before the recipient's provider acked it.
    Expired { recipient_provider: ProviderId },
    /// The owning cluster refused it; `reason` is its stable rejection reason
    /// (e.g. `DEVICE_MISMATCH`), `detail` a readable explanation.
    Refused { reason: String, detail: String },
}
