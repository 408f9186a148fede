//! `apply` for the federation commands (see `crate::federation`).

use super::State;
use crate::federation::{
    ClusterId, PeerRecord, PeerStatus, RelayedItem, RelayedKind, UndeliverableReason, outbound_queue, qualified,
};
use crate::ids::{MessageId, ProviderId, Seq};
use crate::mailbox::MailboxItem;
use crate::outcome::{Outcome, Rejection};
use crate::payload::SendEnvelope;

impl State {
    /// The peer, if registered and not suspended.
    fn active_peer(&self, peer: &ClusterId) -> Result<&PeerRecord, Rejection> {
        match self.federation.peers.get(peer) {
            None => Err(Rejection::UnknownPeer { peer: peer.clone() }),
            Some(p) if p.status == PeerStatus::Suspended => Err(Rejection::PeerSuspended { peer: peer.clone() }),
            Some(p) => Ok(p),
        }
    }

    pub(super) fn register_peer(
        &mut self,
        peer: &ClusterId,
        endpoints: &[String],
        ca_pem: &str,
        providers: &[ProviderId],
        max_queue: u64,
    ) -> Result<Outcome, Rejection> {
        let now = self.clock_ms;
        self.federation.used = true;
        let rec = self.federation.peers.entry(peer.clone()).or_insert_with(|| PeerRecord {
            id: peer.clone(),
            endpoints: Vec::new(),
            ca_pem: String::new(),
            providers: Default::default(),
            max_queue: 0,
            status: PeerStatus::Active,
            registered_at_ms: now,
            status_changed_at_ms: now,
        });
        rec.endpoints = endpoints.to_vec();
        rec.ca_pem = ca_pem.to_string();
        rec.providers = providers.iter().cloned().collect();
        rec.max_queue = max_queue;
        Ok(Outcome::Done)
    }

    pub(super) fn set_peer_status(&mut self, peer: &ClusterId, status: PeerStatus) -> Result<Outcome, Rejection> {
        let now = self.clock_ms;
        let rec = self.federation.peers.get_mut(peer).ok_or_else(|| Rejection::UnknownPeer { peer: peer.clone() })?;
        if rec.status != status {
            rec.status = status;
            rec.status_changed_at_ms = now;
        }
        Ok(Outcome::Done)
    }

    pub(super) fn remove_peer(&mut self, peer: &ClusterId) -> Result<Outcome, Rejection> {
        if !self.federation.peers.contains_key(peer) {
            return Err(Rejection::UnknownPeer { peer: peer.clone() });
        }
        let depth = self.mailbox_depth(&outbound_queue(peer)) as u64;
        if depth > 0 {
            return Err(Rejection::PeerQueueNotEmpty { peer: peer.clone(), depth });
        }
        // The (empty) queue stays: its next sequence must not start over if the
        // peer is registered again, the peer deduplicates by queue position.
        self.federation.peers.remove(peer);
        Ok(Outcome::Done)
    }

    /// A send to a user of `recipient_provider` at `peer`: durable here, in
    /// the peer's outbound queue. The device list is checked by the owning
    /// cluster when the envelope arrives (a refusal comes back as a report).
    pub(super) fn relay_send(
        &mut self,
        peer: &ClusterId,
        recipient_provider: &ProviderId,
        env: &SendEnvelope,
    ) -> Result<Outcome, Rejection> {
        self.onboarded(&env.sender)?;
        if let Some(answer) = self.dedup.get(&env.sender, &env.message_id) {
            return Ok(answer);
        }
        self.check_sender_user(env)?;
        let rec = self.active_peer(peer)?;
        if !rec.providers.contains(recipient_provider) {
            return Err(Rejection::NotServedByPeer { provider: recipient_provider.clone(), peer: peer.clone() });
        }
        let queue = outbound_queue(peer);
        let limit = self.mailbox_limit(&queue);
        if self.mailbox_depth(&queue) as u64 >= limit {
            return Err(Rejection::MailboxFull { provider: queue, limit });
        }
        let now = self.clock_ms;
        let expires = now.saturating_add(env.ttl_ms);
        let item = MailboxItem::Outbound { recipient_provider: recipient_provider.clone(), envelope: env.clone() };
        let seq = self.mailbox_mut(&queue).push(now, expires, item);
        self.expiry.insert((expires, queue, seq));
        let answer = Outcome::Sent { seq, accepted_at_ms: now };
        self.dedup.insert(now, &env.sender, &env.message_id, answer.clone());
        Ok(answer)
    }

    /// Stores what `origin` relayed: envelopes into the recipients'
    /// providers' mailboxes (deduplicated by qualified sender and message
    /// id), reports into the mailboxes of the local providers they are for
    /// (deduplicated by origin queue position). One answer per item, up to
    /// and including the first transient refusal; the rest is not applied.
    pub(super) fn accept_relayed(&mut self, origin: &ClusterId, items: &[RelayedItem]) -> Result<Outcome, Rejection> {
        self.active_peer(origin)?;
        let mut results = Vec::with_capacity(items.len());
        for item in items {
            let result = match &item.item {
                RelayedKind::Envelope(env) => self.accept_relayed_envelope(origin, item.ttl_left_ms, env),
                RelayedKind::Undeliverable { to, message_id, recipient, reason } => {
                    self.accept_relayed_report(origin, item, to, message_id, recipient, reason)
                }
                RelayedKind::Group(delivery) => self.accept_relayed_group(origin, item, delivery),
            };
            let transient = matches!(&result, Err(r) if r.is_transient());
            results.push(result.unwrap_or_else(Outcome::Rejected));
            // Stop at a refusal that may pass later (a full mailbox): storing
            // the items behind it now would put them before it.
            if transient {
                break;
            }
        }
        Ok(Outcome::Relayed { results })
    }

    fn accept_relayed_envelope(
        &mut self,
        origin: &ClusterId,
        ttl_left_ms: u64,
        env: &SendEnvelope,
    ) -> Result<Outcome, Rejection> {
        let peer = self.active_peer(origin)?;
        if !peer.providers.contains(&env.sender) {
            return Err(Rejection::NotServedByPeer { provider: env.sender.clone(), peer: origin.clone() });
        }
        let mut local = env.clone();
        local.sender = qualified(&env.sender, origin);
        local.ttl_ms = ttl_left_ms;
        if let Some(answer) = self.dedup.get(&local.sender, &local.message_id) {
            return Ok(answer);
        }
        let recipient_provider = self.route_recipient(&local)?;
        self.onboarded(&recipient_provider)?;
        let limit = self.limits.max_mailbox_entries;
        if self.mailbox_depth(&recipient_provider) as u64 >= limit {
            return Err(Rejection::MailboxFull { provider: recipient_provider, limit });
        }
        let now = self.clock_ms;
        let expires = now.saturating_add(ttl_left_ms);
        let (sender, message_id) = (local.sender.clone(), local.message_id.clone());
        let seq = self.mailbox_mut(&recipient_provider).push(now, expires, MailboxItem::Envelope(local));
        self.expiry.insert((expires, recipient_provider, seq));
        let answer = Outcome::Sent { seq, accepted_at_ms: now };
        self.dedup.insert(now, &sender, &message_id, answer.clone());
        Ok(answer)
    }

    fn accept_relayed_report(
        &mut self,
        origin: &ClusterId,
        item: &RelayedItem,
        to: &ProviderId,
        message_id: &MessageId,
        recipient: &crate::ids::UserId,
        reason: &UndeliverableReason,
    ) -> Result<Outcome, Rejection> {
        let key = relayed_item_key(origin, item);
        if self.dedup.contains(&key.0, &key.1) {
            return Ok(Outcome::Done);
        }
        if !self.providers.contains_key(to) {
            return Err(Rejection::UnknownProvider { provider: to.clone() });
        }
        let report = match reason {
            // Named as providers of the origin are named here.
            UndeliverableReason::Expired { recipient_provider } => MailboxItem::Expired {
                message_id: message_id.clone(),
                recipient: recipient.clone(),
                recipient_provider: qualified(recipient_provider, origin),
            },
            UndeliverableReason::Refused { .. } => MailboxItem::Undeliverable {
                to: to.clone(),
                message_id: message_id.clone(),
                recipient: recipient.clone(),
                reason: reason.clone(),
            },
        };
        let now = self.clock_ms;
        let expires = now.saturating_add(self.limits.report_ttl_ms);
        let seq = self.mailbox_mut(to).push(now, expires, report);
        self.expiry.insert((expires, to.clone(), seq));
        self.dedup.insert(now, &key.0, &key.1, Outcome::Done);
        Ok(Outcome::Done)
    }

    /// A group message the group's home cluster ordered: one entry per local
    /// provider of its recipients, in the order the home cluster relays them
    /// (its queue order, which is the group order).
    fn accept_relayed_group(
        &mut self,
        origin: &ClusterId,
        item: &RelayedItem,
        delivery: &crate::group::GroupDelivery,
    ) -> Result<Outcome, Rejection> {
        let key = relayed_item_key(origin, item);
        if self.dedup.contains(&key.0, &key.1) {
            return Ok(Outcome::Done);
        }
        // The sender, as the edge renamed it: a provider of `origin` must be
        // one it is registered for; one of ours must be ours, with its user
        // (a member here who sent through the home cluster).
        match crate::federation::unqualified(&delivery.sender) {
            Some((provider, cluster)) if &cluster == origin => {
                let peer = self.active_peer(origin)?;
                if !peer.providers.contains(&provider) {
                    return Err(Rejection::NotServedByPeer { provider, peer: origin.clone() });
                }
            }
            // A member at a third cluster, relayed by the home cluster.
            Some(_) => {}
            None => {
                if self.users.get(&delivery.sender_user).map(|u| &u.provider) != Some(&delivery.sender) {
                    return Err(Rejection::NotOwner { user: delivery.sender_user.clone() });
                }
            }
        }
        let mut by_provider: std::collections::BTreeMap<ProviderId, Vec<crate::ids::UserId>> = Default::default();
        for u in &delivery.recipients {
            if let Some(rec) = self.users.get(u) {
                by_provider.entry(rec.provider.clone()).or_default().push(u.clone());
            }
        }
        let limit = self.limits.max_mailbox_entries;
        for p in by_provider.keys() {
            if self.mailbox_depth(p) as u64 >= limit {
                return Err(Rejection::MailboxFull { provider: p.clone(), limit });
            }
        }
        let now = self.clock_ms;
        let expires = now.saturating_add(item.ttl_left_ms);
        for (provider, recipients) in by_provider {
            let per_device = delivery.per_device.iter().filter(|(u, _)| recipients.contains(u)).cloned().collect();
            let local = crate::group::GroupDelivery { recipients, per_device, ..delivery.clone() };
            let seq = self.mailbox_mut(&provider).push(now, expires, MailboxItem::Group(local));
            self.expiry.insert((expires, provider, seq));
        }
        self.dedup.insert(now, &key.0, &key.1, Outcome::Done);
        Ok(Outcome::Done)
    }

    /// Creates or changes a group homed here with members at federation
    /// peers (which must be registered and active).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn federated_group(
        &mut self,
        provider: &ProviderId,
        actor: &crate::ids::UserId,
        group: &crate::group::GroupId,
        create: bool,
        set: &[(crate::ids::UserId, crate::group::Role)],
        remote: &[(crate::ids::UserId, ClusterId)],
        remove: &[crate::ids::UserId],
    ) -> Result<Outcome, Rejection> {
        // The same first check as a local group change, then the peers.
        self.onboarded(provider)?;
        for (_, cluster) in remote {
            self.active_peer(cluster)?;
        }
        let remote: std::collections::BTreeMap<_, _> = remote.iter().cloned().collect();
        if create {
            self.create_group(provider, actor, group, set, &remote)
        } else {
            self.change_group(provider, actor, group, set, remove, &remote)
        }
    }

    /// A member served by `origin` sends to a group homed here: ordered and
    /// fanned out like a local member's message (back to `origin` too, for
    /// its other members), deduplicated by qualified sender and message id.
    pub(super) fn send_group_from_peer(
        &mut self,
        origin: &ClusterId,
        send: &crate::group::GroupSend,
    ) -> Result<Outcome, Rejection> {
        let peer = self.active_peer(origin)?;
        if !peer.providers.contains(&send.sender) {
            return Err(Rejection::NotServedByPeer { provider: send.sender.clone(), peer: origin.clone() });
        }
        let local = crate::group::GroupSend { sender: qualified(&send.sender, origin), ..send.clone() };
        if let Some(answer) = self.dedup.get(&local.sender, &local.message_id) {
            return Ok(answer);
        }
        let rec =
            self.groups.get(&local.group).ok_or_else(|| Rejection::GroupNotFound { group: local.group.clone() })?;
        let member_there = self.federation.group_members.get(&local.group).and_then(|m| m.get(&local.sender_user));
        if !rec.members.contains_key(&local.sender_user) || member_there != Some(origin) {
            return Err(Rejection::NotGroupMember { user: local.sender_user.clone() });
        }
        self.fan_out_group(&local)
    }

    /// The peer's answers for entries of its outbound queue: delivered ones
    /// leave the queue; refused envelopes leave it too and are reported to
    /// their sender. Unknown sequences (answered before) are counted, not errors.
    pub(super) fn relay_acked(
        &mut self,
        peer: &ClusterId,
        delivered: &[Seq],
        refused: &[(Seq, String, String)],
    ) -> Result<Outcome, Rejection> {
        if !self.federation.peers.contains_key(peer) {
            return Err(Rejection::UnknownPeer { peer: peer.clone() });
        }
        let queue = outbound_queue(peer);
        let (mut removed, mut unknown) = (0u32, 0u32);
        let now = self.clock_ms;
        let answers = delivered.iter().map(|s| (*s, None)).chain(refused.iter().map(|(s, r, d)| (*s, Some((r, d)))));
        for (seq, refusal) in answers {
            let Some(entry) = self.mailboxes.get_mut(&queue).and_then(|m| m.entries.remove(&seq)) else {
                unknown += 1;
                continue;
            };
            self.expiry.remove(&(entry.expires_at_ms, queue.clone(), seq));
            removed += 1;
            // The entry may still be shared (the relay's batch, a snapshot):
            // copy only the ids the report needs.
            let (Some((reason, detail)), MailboxItem::Outbound { envelope, .. }) = (refusal, &entry.item) else {
                continue;
            };
            let report = MailboxItem::Undeliverable {
                to: envelope.sender.clone(),
                message_id: envelope.message_id.clone(),
                recipient: envelope.recipient.clone(),
                reason: UndeliverableReason::Refused { reason: reason.clone(), detail: detail.clone() },
            };
            let expires = now.saturating_add(self.limits.report_ttl_ms);
            let seq = self.mailbox_mut(&envelope.sender).push(now, expires, report);
            self.expiry.insert((expires, envelope.sender.clone(), seq));
        }
        Ok(Outcome::Acked { removed, unknown })
    }

    /// Entries `mailbox` may hold: a peer's queue quota when it has one,
    /// else the cluster's `max_mailbox_entries`.
    pub(super) fn mailbox_limit(&self, mailbox: &ProviderId) -> u64 {
        let quota = crate::federation::queue_peer(mailbox)
            .and_then(|peer| self.federation.peers.get(&peer))
            .map_or(0, |p| p.max_queue);
        if quota == 0 { self.limits.max_mailbox_entries } else { quota }
    }

    // ------------------------------------------------------------- reads

    /// Remote members of a group homed here, with their clusters.
    pub fn group_remote_members(
        &self,
        group: &crate::group::GroupId,
    ) -> Option<&std::collections::BTreeMap<crate::ids::UserId, ClusterId>> {
        self.federation.group_members.get(group)
    }

    pub fn peer(&self, peer: &ClusterId) -> Option<&PeerRecord> {
        self.federation.peers.get(peer)
    }

    pub fn peers(&self) -> impl Iterator<Item = &PeerRecord> {
        self.federation.peers.values()
    }
}

/// Dedup key of a relayed item without a sender-chosen id (a report, a group
/// delivery): its position in the origin's queue, never reused, makes a
/// repeated relay harmless.
fn relayed_item_key(origin: &ClusterId, item: &RelayedItem) -> (ProviderId, MessageId) {
    (outbound_queue(origin), MessageId(format!("relayed/{}", item.queue_seq)))
}
