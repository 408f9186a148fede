//! The replicated state and what `apply` does to it (the dispatch of
//! commands is in `apply.rs`, so the state does not depend on `command`).
//!
//! ```text
//!  Batch{stamp, [cmd..]} ──> apply_batch ──> expire(stamp) ──> apply(cmd) per command ──> [Outcome..]
//! ```
//!
//! Invariants (checked by the tests below and by the cluster tests):
//! - a one-time prekey leaves the stock at most once (docs/design/delivery.md);
//! - a send accepted once is stored once, and a retry within the dedup window
//!   gets the first answer back (docs/design/delivery.md);
//! - mailbox sequences strictly increase in acceptance order, so order per
//!   (sender device, recipient device) is kept;
//! - an ack removes exactly the sequences it names.

use crate::group::{GroupDelivery, GroupId, GroupRecord, GroupSend, Role};
use crate::ids::{DeviceId, MessageId, ProviderId, RegistrationId, Seq, UserId};
use crate::keys::DeviceKeys;
use crate::limits::Limits;
use crate::mailbox::{Mailbox, MailboxEntry, MailboxItem};
use crate::outcome::{Outcome, Rejection};
use crate::payload::{PrekeyUpload, SendEnvelope};
use crate::provider::{ProviderAction, ProviderRecord, ProviderStatus};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    /// Highest leader stamp applied; time never goes backwards.
    pub clock_ms: u64,
    pub limits: Limits,
    pub providers: BTreeMap<ProviderId, crate::provider::ProviderRecord>,
    pub users: BTreeMap<UserId, UserRecord>,
    pub mailboxes: BTreeMap<ProviderId, Mailbox>,
    pub groups: BTreeMap<GroupId, GroupRecord>,
    /// (expires_at_ms, mailbox owner, seq) for every mailbox entry.
    expiry: BTreeSet<(u64, ProviderId, Seq)>,
    /// Answers of accepted sends for the dedup window (`crate::dedup`); per
    /// sender from cluster version 5 on, when the snapshot section carries them.
    dedup: crate::dedup::SendAnswers,
    /// Claim token buckets: (requester, target user) -> (milli-tokens, last refill stamp).
    claim_buckets: BTreeMap<(ProviderId, UserId), (u64, u64)>,
    /// Leader stamp of the last bucket pruning (once a minute of leader time).
    buckets_pruned_at_ms: u64,
    /// Registered peer clusters. Skipped by serde: snapshots and backups
    /// carry it as a trailing section, only when not empty (see
    /// `router_raft::codec`), so the layout of a cluster that never
    /// federated is the one older builds read.
    #[serde(skip)]
    pub federation: crate::federation::Federation,
    /// The rules this state applies the log by (`version`); 0 reads as
    /// `BASE_CLUSTER_VERSION`. Skipped by serde like `federation`: carried in
    /// the trailing section of snapshots ([`StateExtras`]) once raised.
    #[serde(skip)]
    cluster_version: u32,
    /// Answers of `Command::Once` requests. Skipped by serde, like `cluster_version`.
    #[serde(skip)]
    once: crate::once::OnceAnswers,
    /// The restore under way (`restore.rs`); skipped by serde like `once`,
    /// carried by snapshots in a section of its own.
    #[serde(skip)]
    restore: Option<restore::RestoreProgress>,
    /// Each Raft member's incarnation by node id (`incarnation.rs`); skipped
    /// by serde, carried by snapshots in a section of their own (format 5).
    #[serde(skip)]
    incarnations: BTreeMap<u64, u64>,
}

/// What a snapshot carries after the state's serde encoding (format 3): the
/// fields older layouts do not have.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct StateExtras {
    pub federation: crate::federation::Federation,
    pub cluster_version: u32,
    pub once: crate::once::OnceAnswers,
}

/// The borrowed twin of [`StateExtras`]; bincode lays both out the same.
#[derive(Serialize)]
pub struct StateExtrasRef<'a> {
    pub federation: &'a crate::federation::Federation,
    pub cluster_version: u32,
    pub once: &'a crate::once::OnceAnswers,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserRecord {
    pub provider: ProviderId,
    pub devices: BTreeMap<DeviceId, DeviceRecord>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceRecord {
    pub registration_id: RegistrationId,
    pub keys: Option<DeviceKeys>,
}

impl State {
    pub fn new(limits: Limits) -> Self {
        State { limits, ..State::default() }
    }

    /// The rules this state applies the log by (`version`).
    pub fn cluster_version(&self) -> u32 {
        self.cluster_version.max(crate::version::BASE_CLUSTER_VERSION)
    }

    /// The section a snapshot needs after the serde encoding of the state,
    /// if any: none for a state older builds can hold as a whole.
    pub fn extras(&self) -> Option<StateExtrasRef<'_>> {
        (self.cluster_version > crate::version::BASE_CLUSTER_VERSION || !self.once.is_empty())
            .then(|| self.extras_section())
    }

    /// What [`State::extras`] holds, also for a state that would need none.
    pub fn extras_section(&self) -> StateExtrasRef<'_> {
        StateExtrasRef { federation: &self.federation, cluster_version: self.cluster_version, once: &self.once }
    }

    /// Puts back what [`State::extras`] gave a snapshot.
    pub fn set_extras(&mut self, extras: StateExtras) {
        self.federation = extras.federation;
        self.cluster_version = extras.cluster_version;
        self.once = extras.once;
    }

    /// Where one entry stamped `stamp_ms` moves the replicated clock: never
    /// back, and (version 2) at most `MAX_CLOCK_STEP_MS` forward, except for
    /// the very first entry of a state.
    fn next_clock(&self, stamp_ms: u64) -> u64 {
        if self.cluster_version() >= 2 && self.clock_ms > 0 {
            self.clock_ms.max(stamp_ms.min(self.clock_ms.saturating_add(crate::version::MAX_CLOCK_STEP_MS)))
        } else {
            self.clock_ms.max(stamp_ms)
        }
    }

    /// The earliest leader time at which `expire` has something to do.
    pub fn next_expiry_ms(&self) -> Option<u64> {
        self.expiry.first().map(|(at, _, _)| at.saturating_add(self.expiry_grace_ms()))
    }

    fn expiry_grace_ms(&self) -> u64 {
        if self.cluster_version() >= 2 { crate::version::DELIVERY_ACK_GRACE_MS } else { 0 }
    }

    /// `owner`'s mailbox, created empty if it has none; a new one starts at
    /// sequence 1 from cluster version 2 on.
    fn mailbox_mut(&mut self, owner: &ProviderId) -> &mut Mailbox {
        let first_seq = if self.cluster_version() >= 2 { 1 } else { 0 };
        self.mailboxes.entry(owner.clone()).or_insert_with(|| Mailbox { next_seq: first_seq, ..Mailbox::default() })
    }

    fn set_cluster_version(&mut self, version: u32) -> Result<Outcome, Rejection> {
        // A version this build does not know is left alone here; the storage
        // layer stops the node before applying such an entry
        // (`router_raft`'s apply), since this replica would go on by rules it
        // does not know. The leader raises it only once every member applies it.
        // Compared with the effective version, so raising to the base version
        // stores nothing and every replica's state stays byte-identical
        // (a snapshot of a base-version state carries no version).
        if version > self.cluster_version() && version <= crate::version::CLUSTER_VERSION {
            self.cluster_version = version;
        }
        if self.cluster_version() >= 2 {
            // Sequence 0 marks ephemeral entries: no mailbox hands it out from now on.
            for mailbox in self.mailboxes.values_mut() {
                mailbox.next_seq = mailbox.next_seq.max(1);
            }
        }
        if self.cluster_version() >= crate::dedup::SENDER_WINDOWS_VERSION {
            self.dedup.split_per_sender();
        }
        Ok(Outcome::Done)
    }

    /// A claim's requester may act: a local provider that is active, or a
    /// provider of a federation peer (`alpha@cluster-a`) that is active and
    /// registered as serving it. Its rate-limit bucket is its own either way.
    fn may_claim(&self, requester: &ProviderId) -> Result<(), Rejection> {
        let Some((provider, peer)) = crate::federation::unqualified(requester) else {
            return self.onboarded(requester);
        };
        match self.federation.peers.get(&peer) {
            None => Err(Rejection::UnknownPeer { peer }),
            Some(p) if p.status == crate::federation::PeerStatus::Suspended => Err(Rejection::PeerSuspended { peer }),
            Some(p) if !p.providers.contains(&provider) => Err(Rejection::NotServedByPeer { provider, peer }),
            Some(_) => Ok(()),
        }
    }

    /// The provider may act: it exists and is active.
    fn onboarded(&self, provider: &ProviderId) -> Result<(), Rejection> {
        match self.providers.get(provider).map(|r| r.status) {
            Some(ProviderStatus::Active) => Ok(()),
            Some(status @ (ProviderStatus::Suspended | ProviderStatus::Revoked)) => {
                Err(Rejection::ProviderSuspended { provider: provider.clone(), status })
            }
            _ => Err(Rejection::ProviderNotOnboarded { provider: provider.clone() }),
        }
    }

    fn request_provider(
        &mut self,
        provider: &ProviderId,
        name: &str,
        contact: &str,
        media_hosts: &[String],
    ) -> Result<Outcome, Rejection> {
        let now = self.clock_ms;
        match self.providers.get_mut(provider) {
            // A repeated request updates the details but keeps the clock.
            Some(rec) if matches!(rec.status, ProviderStatus::Requested | ProviderStatus::Approved) => {
                rec.name = name.to_string();
                rec.contact = contact.to_string();
                rec.media_hosts = media_hosts.to_vec();
                Ok(Outcome::Done)
            }
            Some(rec) => Err(Rejection::BadTransition { provider: provider.clone(), from: rec.status }),
            None => {
                self.providers.insert(
                    provider.clone(),
                    ProviderRecord {
                        id: provider.clone(),
                        status: ProviderStatus::Requested,
                        name: name.to_string(),
                        contact: contact.to_string(),
                        media_hosts: media_hosts.to_vec(),
                        requested_at_ms: now,
                        activated_at_ms: None,
                        status_changed_at_ms: now,
                    },
                );
                Ok(Outcome::Done)
            }
        }
    }

    fn set_provider_status(&mut self, provider: &ProviderId, action: ProviderAction) -> Result<Outcome, Rejection> {
        let now = self.clock_ms;
        let rec = self
            .providers
            .get_mut(provider)
            .ok_or_else(|| Rejection::UnknownProvider { provider: provider.clone() })?;
        let next = action
            .apply(rec.status)
            .ok_or_else(|| Rejection::BadTransition { provider: provider.clone(), from: rec.status })?;
        rec.status = next;
        rec.status_changed_at_ms = now;
        if next == ProviderStatus::Active {
            rec.activated_at_ms.get_or_insert(now);
        }
        Ok(Outcome::Done)
    }

    /// The user, if it exists and belongs to `provider`.
    fn owned_user_mut(&mut self, provider: &ProviderId, user: &UserId) -> Result<&mut UserRecord, Rejection> {
        self.onboarded(provider)?;
        match self.users.get_mut(user) {
            None => Err(Rejection::UserNotFound { user: user.clone() }),
            Some(rec) if &rec.provider != provider => Err(Rejection::NotOwner { user: user.clone() }),
            Some(rec) => Ok(rec),
        }
    }

    fn register_user(&mut self, provider: &ProviderId, user: &UserId) -> Result<Outcome, Rejection> {
        self.onboarded(provider)?;
        match self.users.get(user) {
            Some(rec) if &rec.provider == provider => Ok(Outcome::Done),
            Some(_) => Err(Rejection::UserTaken { user: user.clone() }),
            None => {
                self.users.insert(user.clone(), UserRecord { provider: provider.clone(), devices: BTreeMap::new() });
                Ok(Outcome::Done)
            }
        }
    }

    fn deregister_user(&mut self, provider: &ProviderId, user: &UserId) -> Result<Outcome, Rejection> {
        self.owned_user_mut(provider, user)?;
        self.users.remove(user);
        Ok(Outcome::Done)
    }

    fn register_device(
        &mut self,
        provider: &ProviderId,
        user: &UserId,
        device: DeviceId,
        registration_id: RegistrationId,
    ) -> Result<Outcome, Rejection> {
        let limit = self.limits.max_devices_per_user;
        let rec = self.owned_user_mut(provider, user)?;
        match rec.devices.get_mut(&device) {
            Some(d) if d.registration_id == registration_id => {}
            Some(d) => {
                // Reinstalled: the old keys belong to the old installation.
                *d = DeviceRecord { registration_id, keys: None };
            }
            None => {
                if rec.devices.len() as u32 >= limit {
                    return Err(Rejection::TooManyDevices { limit });
                }
                rec.devices.insert(device, DeviceRecord { registration_id, keys: None });
            }
        }
        Ok(Outcome::Done)
    }

    fn remove_device(&mut self, provider: &ProviderId, user: &UserId, device: DeviceId) -> Result<Outcome, Rejection> {
        let rec = self.owned_user_mut(provider, user)?;
        match rec.devices.remove(&device) {
            Some(_) => Ok(Outcome::Done),
            None => Err(Rejection::DeviceNotFound { user: user.clone(), device }),
        }
    }

    fn upload_prekeys(
        &mut self,
        provider: &ProviderId,
        user: &UserId,
        device: DeviceId,
        upload: &PrekeyUpload,
    ) -> Result<Outcome, Rejection> {
        let limit = self.limits.max_one_time_prekeys_per_device;
        let rec = self.owned_user_mut(provider, user)?;
        let dev =
            rec.devices.get_mut(&device).ok_or_else(|| Rejection::DeviceNotFound { user: user.clone(), device })?;

        // Work on a copy and commit only if every check passes: a rejected
        // upload changes nothing.
        let same_identity = dev.keys.as_ref().is_some_and(|k| k.identity_key == upload.identity_key);
        let mut keys = match (&dev.keys, same_identity, &upload.signed_prekey) {
            (Some(k), true, _) => k.clone(),
            (_, _, Some(spk)) => DeviceKeys {
                identity_key: upload.identity_key.clone(),
                signed_prekey: spk.clone(),
                one_time: Default::default(),
                kyber_one_time: Default::default(),
                kyber_last_resort: None,
            },
            (_, _, None) => return Err(Rejection::SignedPrekeyRequired),
        };
        if let Some(spk) = &upload.signed_prekey {
            keys.signed_prekey = spk.clone();
        }
        if let Some(lr) = &upload.kyber_last_resort {
            keys.kyber_last_resort = Some(lr.clone());
        }

        let ec_total = keys.one_time.len() as u64 + upload.one_time.len() as u64;
        if ec_total > u64::from(limit) {
            return Err(Rejection::PrekeyStockFull { limit, actual: ec_total });
        }
        let kyber_total = keys.kyber_one_time.len() as u64 + upload.kyber_one_time.len() as u64;
        if kyber_total > u64::from(limit) {
            return Err(Rejection::PrekeyStockFull { limit, actual: kyber_total });
        }
        let mut ec_ids: BTreeSet<u32> = keys.one_time.iter().map(|k| k.key_id).collect();
        for k in &upload.one_time {
            if !ec_ids.insert(k.key_id) {
                return Err(Rejection::DuplicatePrekeyId { key_id: k.key_id });
            }
        }
        let mut kyber_ids: BTreeSet<u32> = keys.kyber_one_time.iter().map(|k| k.key_id).collect();
        for k in &upload.kyber_one_time {
            if !kyber_ids.insert(k.key_id) {
                return Err(Rejection::DuplicatePrekeyId { key_id: k.key_id });
            }
        }
        keys.one_time.extend(upload.one_time.iter().cloned());
        keys.kyber_one_time.extend(upload.kyber_one_time.iter().cloned());
        let out = Outcome::KeysStored {
            one_time_remaining: keys.one_time.len() as u32,
            kyber_one_time_remaining: keys.kyber_one_time.len() as u32,
        };
        dev.keys = Some(keys);
        Ok(out)
    }

    /// Checks that (requester, user) has a claim token, refilled continuously,
    /// and returns the bucket as it will be after taking it. Nothing is
    /// stored here: a claim that is rejected later must change nothing.
    fn claim_token(&self, requester: &ProviderId, user: &UserId) -> Result<(u64, u64), Rejection> {
        const MILLI: u64 = 1000;
        let (burst, refill) = (u64::from(self.limits.claim_burst), self.limits.claim_refill_ms.max(1));
        let now = self.clock_ms;
        let (tokens, last) =
            self.claim_buckets.get(&(requester.clone(), user.clone())).copied().unwrap_or((burst * MILLI, now));
        // Saturating: a far-future stamp or a huge refill period must not
        // overflow inside `apply` (same results wherever nothing overflows).
        let refill_since = now.saturating_sub(last).saturating_mul(MILLI) / refill;
        let refilled = tokens.saturating_add(refill_since).min(burst * MILLI);
        if refilled < MILLI {
            let retry_after_ms = (MILLI - refilled).saturating_mul(refill).div_ceil(MILLI);
            return Err(Rejection::RateLimited { retry_after_ms });
        }
        Ok((refilled - MILLI, now))
    }

    /// Forgets buckets that have refilled completely (bounded memory).
    fn prune_claim_buckets(&mut self) {
        let (burst, refill, now) =
            (u64::from(self.limits.claim_burst), self.limits.claim_refill_ms.max(1), self.clock_ms);
        self.claim_buckets.retain(|_, (tokens, last)| {
            tokens.saturating_add(now.saturating_sub(*last).saturating_mul(1000) / refill) < burst * 1000
        });
    }

    fn claim(&mut self, requester: &ProviderId, user: &UserId, device: Option<DeviceId>) -> Result<Outcome, Rejection> {
        self.may_claim(requester)?;
        if !self.users.contains_key(user) {
            return Err(Rejection::UserNotFound { user: user.clone() });
        }
        let bucket = self.claim_token(requester, user)?;
        let threshold = self.limits.low_prekey_threshold as usize;
        let rec = self.users.get_mut(user).expect("checked above");
        let mut bundles = Vec::new();
        match device {
            Some(d) => {
                let dev = rec
                    .devices
                    .get_mut(&d)
                    .ok_or_else(|| Rejection::DeviceNotFound { user: user.clone(), device: d })?;
                if let Some(keys) = dev.keys.as_mut() {
                    bundles.push(keys.claim(d, dev.registration_id));
                }
            }
            None => {
                for (d, dev) in rec.devices.iter_mut() {
                    if let Some(keys) = dev.keys.as_mut() {
                        bundles.push(keys.claim(*d, dev.registration_id));
                    }
                }
            }
        }
        if bundles.is_empty() {
            return Err(Rejection::NoKeys { user: user.clone() });
        }
        // Tell the owner about devices whose stock just fell below the threshold.
        let mut low = Vec::new();
        for b in &bundles {
            let dev = &rec.devices[&b.device];
            let keys = dev.keys.as_ref().expect("a bundle came from these keys");
            if b.one_time.is_some() && keys.one_time.len() + 1 == threshold {
                low.push((b.device, keys.one_time.len() as u32, keys.kyber_one_time.len() as u32));
            }
        }
        let owner = rec.provider.clone();
        self.claim_buckets.insert((requester.clone(), user.clone()), bucket);
        let now = self.clock_ms;
        let expires = now.saturating_add(self.limits.report_ttl_ms);
        for (device, one_time_remaining, kyber_one_time_remaining) in low {
            let item = MailboxItem::PrekeyLowStock {
                user: user.clone(),
                device,
                one_time_remaining,
                kyber_one_time_remaining,
            };
            let seq = self.mailbox_mut(&owner).push(now, expires, item);
            self.expiry.insert((expires, owner.clone(), seq));
        }
        Ok(Outcome::Bundles { provider: owner, bundles })
    }

    fn send(&mut self, env: &SendEnvelope) -> Result<Outcome, Rejection> {
        self.onboarded(&env.sender)?;
        if let Some(answer) = self.dedup.get(&env.sender, &env.message_id) {
            return Ok(answer);
        }
        let recipient_provider = self.route(env)?;
        // Check before creating the mailbox: a rejected send changes nothing.
        if self.mailbox_depth(&recipient_provider) as u64 >= self.limits.max_mailbox_entries {
            return Err(Rejection::MailboxFull {
                provider: recipient_provider,
                limit: self.limits.max_mailbox_entries,
            });
        }
        let now = self.clock_ms;
        let expires = now.saturating_add(env.ttl_ms);
        let seq = self.mailbox_mut(&recipient_provider).push(now, expires, MailboxItem::Envelope(env.clone()));
        self.expiry.insert((expires, recipient_provider, seq));
        let answer = Outcome::Sent { seq, accepted_at_ms: now };
        self.dedup.insert(now, &env.sender, &env.message_id, answer.clone());
        Ok(answer)
    }

    fn ack(&mut self, provider: &ProviderId, seqs: &[Seq]) -> Result<Outcome, Rejection> {
        self.onboarded(provider)?;
        let (mut removed, mut unknown) = (0u32, 0u32);
        let mailbox = self.mailboxes.get_mut(provider);
        let Some(mailbox) = mailbox else {
            return Ok(Outcome::Acked { removed: 0, unknown: seqs.len() as u32 });
        };
        for seq in seqs {
            match mailbox.entries.remove(seq) {
                Some(e) => {
                    self.expiry.remove(&(e.expires_at_ms, provider.clone(), *seq));
                    removed += 1;
                }
                None => unknown += 1,
            }
        }
        Ok(Outcome::Acked { removed, unknown })
    }

    /// `user` exists and belongs to `provider` (which may act).
    fn own_user(&self, provider: &ProviderId, user: &UserId) -> Result<(), Rejection> {
        self.onboarded(provider)?;
        match self.users.get(user) {
            None => Err(Rejection::UserNotFound { user: user.clone() }),
            Some(rec) if &rec.provider != provider => Err(Rejection::NotOwner { user: user.clone() }),
            Some(_) => Ok(()),
        }
    }

    /// Every member is a local user, or a user of a federation peer listed
    /// in `remote` (new remote members) or `known_remote` (already members).
    fn check_members_exist(
        &self,
        members: impl Iterator<Item = UserId>,
        remote: &BTreeMap<UserId, crate::federation::ClusterId>,
        known_remote: Option<&BTreeMap<UserId, crate::federation::ClusterId>>,
    ) -> Result<(), Rejection> {
        for m in members {
            let known = self.users.contains_key(&m)
                || remote.contains_key(&m)
                || known_remote.is_some_and(|k| k.contains_key(&m));
            if !known {
                return Err(Rejection::UserNotFound { user: m });
            }
        }
        Ok(())
    }

    pub(super) fn create_group(
        &mut self,
        provider: &ProviderId,
        creator: &UserId,
        group: &GroupId,
        members: &[(UserId, Role)],
        remote: &BTreeMap<UserId, crate::federation::ClusterId>,
    ) -> Result<Outcome, Rejection> {
        self.own_user(provider, creator)?;
        if self.groups.contains_key(group) {
            return Err(Rejection::GroupExists { group: group.clone() });
        }
        let mut all: BTreeMap<UserId, Role> = members.iter().cloned().collect();
        all.insert(creator.clone(), Role::Admin);
        self.check_members_exist(all.keys().cloned(), remote, None)?;
        let limit = self.limits.max_group_members;
        if all.len() as u64 > u64::from(limit) {
            return Err(Rejection::TooManyGroupMembers { limit });
        }
        let remote_members: BTreeMap<UserId, crate::federation::ClusterId> =
            remote.iter().filter(|(u, _)| all.contains_key(*u)).map(|(u, c)| (u.clone(), c.clone())).collect();
        if !remote_members.is_empty() {
            self.federation.group_members.insert(group.clone(), remote_members);
        }
        self.groups.insert(group.clone(), GroupRecord { id: group.clone(), members: all, epoch: 1, next_seq: 0 });
        Ok(Outcome::GroupEpoch { epoch: 1 })
    }

    pub(super) fn change_group(
        &mut self,
        provider: &ProviderId,
        actor: &UserId,
        group: &GroupId,
        set: &[(UserId, Role)],
        remove: &[UserId],
        remote: &BTreeMap<UserId, crate::federation::ClusterId>,
    ) -> Result<Outcome, Rejection> {
        self.own_user(provider, actor)?;
        self.check_members_exist(set.iter().map(|(u, _)| u.clone()), remote, self.federation.group_members.get(group))?;
        let limit = self.limits.max_group_members;
        let rec = self.groups.get(group).ok_or_else(|| Rejection::GroupNotFound { group: group.clone() })?;
        match rec.members.get(actor) {
            Some(Role::Admin) => {}
            Some(Role::Member) => return Err(Rejection::NotGroupAdmin { user: actor.clone() }),
            None => return Err(Rejection::NotGroupMember { user: actor.clone() }),
        }
        let mut members = rec.members.clone();
        for u in remove {
            members.remove(u);
        }
        for (u, role) in set {
            members.insert(u.clone(), *role);
        }
        if members.len() as u64 > u64::from(limit) {
            return Err(Rejection::TooManyGroupMembers { limit });
        }
        let mut remote_members = self.federation.group_members.remove(group).unwrap_or_default();
        remote_members.extend(remote.iter().map(|(u, c)| (u.clone(), c.clone())));
        remote_members.retain(|u, _| members.contains_key(u));
        if !remote_members.is_empty() {
            self.federation.group_members.insert(group.clone(), remote_members);
        }
        let rec = self.groups.get_mut(group).expect("checked above");
        rec.members = members;
        rec.epoch += 1;
        Ok(Outcome::GroupEpoch { epoch: rec.epoch })
    }

    fn send_group(&mut self, g: &GroupSend) -> Result<Outcome, Rejection> {
        self.own_user(&g.sender, &g.sender_user)?;
        if let Some(answer) = self.dedup.get(&g.sender, &g.message_id) {
            return Ok(answer);
        }
        let rec = self.groups.get(&g.group).ok_or_else(|| Rejection::GroupNotFound { group: g.group.clone() })?;
        let member_elsewhere =
            self.federation.group_members.get(&g.group).is_some_and(|m| m.contains_key(&g.sender_user));
        if !rec.members.contains_key(&g.sender_user) || member_elsewhere {
            return Err(Rejection::NotGroupMember { user: g.sender_user.clone() });
        }
        self.fan_out_group(g)
    }

    /// Orders a group message (the next group sequence) and puts it in the
    /// mailbox of every member provider, and in the outbound queue of every
    /// federation peer with members; `g.sender` is the sender's provider as
    /// named here. The caller checked the sender's membership.
    pub(super) fn fan_out_group(&mut self, g: &GroupSend) -> Result<Outcome, Rejection> {
        let rec = self.groups.get(&g.group).ok_or_else(|| Rejection::GroupNotFound { group: g.group.clone() })?;
        // Recipients by provider (local members) and by peer (remote members),
        // from the membership as of this entry.
        let remote = self.federation.group_members.get(&g.group);
        let mut by_mailbox: BTreeMap<ProviderId, Vec<UserId>> = BTreeMap::new();
        for member in rec.members.keys() {
            // A member recorded at a peer stays there, even if a local user
            // with the same id appears later.
            if let Some(cluster) = remote.and_then(|r| r.get(member)) {
                if self.federation.peers.contains_key(cluster) {
                    by_mailbox.entry(crate::federation::outbound_queue(cluster)).or_default().push(member.clone());
                }
            } else if let Some(u) = self.users.get(member) {
                by_mailbox.entry(u.provider.clone()).or_default().push(member.clone());
            }
        }
        for p in by_mailbox.keys() {
            let limit = self.mailbox_limit(p);
            if self.mailbox_depth(p) as u64 >= limit {
                return Err(Rejection::MailboxFull { provider: p.clone(), limit });
            }
        }
        let (group_seq, epoch) = (rec.next_seq, rec.epoch);
        self.groups.get_mut(&g.group).expect("checked above").next_seq += 1;
        let now = self.clock_ms;
        let expires = now.saturating_add(g.ttl_ms);
        for (mailbox, recipients) in by_mailbox {
            let per_device: Vec<(UserId, crate::payload::DevicePart)> =
                g.per_device.iter().filter(|(u, _)| recipients.contains(u)).cloned().collect();
            let delivery = GroupDelivery {
                group: g.group.clone(),
                group_seq,
                epoch,
                sender: g.sender.clone(),
                sender_user: g.sender_user.clone(),
                sender_device: g.sender_device,
                message_id: g.message_id.clone(),
                content_type: g.content_type,
                recipients,
                ciphertext: g.ciphertext.clone(),
                per_device,
                traceparent: g.traceparent.clone(),
            };
            let seq = self.mailbox_mut(&mailbox).push(now, expires, MailboxItem::Group(delivery));
            self.expiry.insert((expires, mailbox, seq));
        }
        let answer = Outcome::GroupSent { group_seq, epoch, accepted_at_ms: now };
        self.dedup.insert(now, &g.sender, &g.message_id, answer.clone());
        Ok(answer)
    }

    /// The routing checks of a 1:1 send, shared by stored sends (`apply`)
    /// and ephemeral ones (the node, on its replica): the sender names only
    /// its own user, the recipient exists, and the parts address exactly its
    /// devices. Returns the recipient's provider.
    pub fn route(&self, env: &SendEnvelope) -> Result<ProviderId, Rejection> {
        self.check_sender_user(env)?;
        self.route_recipient(env)
    }

    /// The sender names only its own user (or none: sealed sender).
    pub fn check_sender_user(&self, env: &SendEnvelope) -> Result<(), Rejection> {
        if let Some(sender_user) = &env.sender_user {
            match self.users.get(sender_user) {
                Some(u) if u.provider == env.sender => {}
                Some(_) => return Err(Rejection::NotOwner { user: sender_user.clone() }),
                None => return Err(Rejection::UserNotFound { user: sender_user.clone() }),
            }
        }
        Ok(())
    }

    /// The recipient is a local user and the parts address exactly its
    /// devices; its provider.
    fn route_recipient(&self, env: &SendEnvelope) -> Result<ProviderId, Rejection> {
        let rec =
            self.users.get(&env.recipient).ok_or_else(|| Rejection::UserNotFound { user: env.recipient.clone() })?;
        check_devices(rec, env)?;
        Ok(rec.provider.clone())
    }

    fn restore(&mut self, backup: &State) -> Result<Outcome, Rejection> {
        let has_mail = self.mailboxes.values().any(|m| !m.is_empty());
        if !self.users.is_empty() || has_mail {
            return Err(Rejection::RestoreIntoNonEmpty);
        }
        let clock_ms = self.clock_ms.max(backup.clock_ms);
        // The federation section is not part of the command's encoding (it
        // is skipped by serde): whatever the in-memory command holds, every
        // replica keeps its own peers; a backup's peers come as RegisterPeer.
        // The cluster version and the Once answers are this cluster's too.
        let federation = std::mem::take(&mut self.federation);
        let (cluster_version, once) = (self.cluster_version, std::mem::take(&mut self.once));
        let incarnations = std::mem::take(&mut self.incarnations);
        *self = backup.clone();
        // What the command's encoding carries, as every replica decodes it:
        // per-sender windows are not part of it (only this in-memory path,
        // which the node never takes, could see them).
        self.dedup = backup.dedup.encoded_part();
        self.clock_ms = clock_ms;
        self.federation = federation;
        self.once = once;
        self.incarnations = incarnations;
        self.cluster_version = cluster_version;
        self.set_cluster_version(cluster_version).expect("setting the cluster version is never refused");
        Ok(Outcome::Done)
    }

    /// Removes every entry whose TTL passed. An expired message is reported
    /// to its sender's mailbox: expiry is never silent (docs/design/delivery.md). The
    /// sender of a relayed envelope is in another cluster: its report goes
    /// back through that cluster's outbound queue.
    fn expire(&mut self) {
        let now = self.clock_ms;
        let grace = self.expiry_grace_ms();
        while let Some((at, _, _)) = self.expiry.first() {
            if at.saturating_add(grace) > now {
                break;
            }
            let (_, owner, seq) = self.expiry.pop_first().expect("first exists");
            let Some(entry) = self.mailboxes.get_mut(&owner).and_then(|m| m.entries.remove(&seq)) else {
                continue;
            };
            // The entry may still be shared (a snapshot being encoded):
            // copy only the ids the report needs, never the envelope.
            let (sender, message_id, recipient, recipient_provider) = match &entry.item {
                MailboxItem::Envelope(env) => {
                    (env.sender.clone(), env.message_id.clone(), env.recipient.clone(), owner)
                }
                MailboxItem::Outbound { recipient_provider, envelope } => {
                    let peer = crate::federation::queue_peer(&owner).expect("outbound items live in peer queues");
                    let at_peer = crate::federation::qualified(recipient_provider, &peer);
                    (envelope.sender.clone(), envelope.message_id.clone(), envelope.recipient.clone(), at_peer)
                }
                _ => continue,
            };
            let expires = now.saturating_add(self.limits.report_ttl_ms);
            let (report_to, report) = match crate::federation::unqualified(&sender) {
                Some((origin_provider, origin)) => (
                    crate::federation::outbound_queue(&origin),
                    MailboxItem::Undeliverable {
                        to: origin_provider,
                        message_id,
                        recipient,
                        reason: crate::federation::UndeliverableReason::Expired { recipient_provider },
                    },
                ),
                None => (sender, MailboxItem::Expired { message_id, recipient, recipient_provider }),
            };
            let seq = self.mailbox_mut(&report_to).push(now, expires, report);
            self.expiry.insert((expires, report_to, seq));
        }
    }

    // ------------------------------------------------------------- reads

    pub fn user(&self, user: &UserId) -> Option<&UserRecord> {
        self.users.get(user)
    }

    /// Active (may act).
    pub fn is_onboarded(&self, provider: &ProviderId) -> bool {
        self.onboarded(provider).is_ok()
    }

    /// Why `provider` may not act right now, if it may not.
    pub fn provider_refusal(&self, provider: &ProviderId) -> Option<Rejection> {
        self.onboarded(provider).err()
    }

    pub fn provider(&self, provider: &ProviderId) -> Option<&ProviderRecord> {
        self.providers.get(provider)
    }

    /// Up to `limit` entries of `provider`'s mailbox with `seq >= from`.
    pub fn mailbox_from(&self, provider: &ProviderId, from: Seq, limit: usize) -> Vec<std::sync::Arc<MailboxEntry>> {
        match self.mailboxes.get(provider) {
            Some(m) => m.range_from(from, limit).cloned().collect(),
            None => Vec::new(),
        }
    }

    /// Acceptance time of the oldest entry in a provider's mailbox.
    pub fn mailbox_oldest_ms(&self, provider: &ProviderId) -> Option<u64> {
        self.mailboxes.get(provider)?.entries.values().next().map(|e| e.accepted_at_ms)
    }

    pub fn mailbox_depth(&self, provider: &ProviderId) -> usize {
        self.mailboxes.get(provider).map_or(0, Mailbox::len)
    }

    /// Remembered answer for a send, if still in the dedup window.
    pub fn dedup_answer(&self, sender: &ProviderId, message_id: &MessageId) -> Option<Outcome> {
        self.dedup.get(sender, message_id)
    }

    /// The send answers (`crate::dedup`), for a snapshot's section.
    pub fn send_answers(&self) -> &crate::dedup::SendAnswers {
        &self.dedup
    }

    /// Puts back the per-sender windows a snapshot's section carried.
    pub fn set_sender_windows(&mut self, windows: crate::dedup::SenderWindows) {
        self.dedup.set_sender_windows(windows);
    }
}

/// Signal's 409/410 check against a local user's devices.
fn check_devices(rec: &UserRecord, env: &SendEnvelope) -> Result<(), Rejection> {
    device_mismatch(rec.devices.iter().map(|(d, r)| (*d, r.registration_id)), env)
}

/// Signal's 409/410 check: the send must address exactly the `registered`
/// (device, registration id) pairs. Also used by the federation edge against
/// a peer's resolution of a remote user.
pub fn device_mismatch(
    registered: impl IntoIterator<Item = (DeviceId, RegistrationId)>,
    env: &SendEnvelope,
) -> Result<(), Rejection> {
    let registered: BTreeMap<DeviceId, RegistrationId> = registered.into_iter().collect();
    if registered.is_empty() {
        return Err(Rejection::NoDevices { user: env.recipient.clone() });
    }
    let addressed: BTreeMap<DeviceId, RegistrationId> =
        env.parts.iter().map(|p| (p.device, p.registration_id)).collect();
    let missing: Vec<DeviceId> = registered.keys().filter(|d| !addressed.contains_key(d)).copied().collect();
    let mut extra = Vec::new();
    let mut stale = Vec::new();
    for (d, reg) in &addressed {
        match registered.get(d) {
            None => extra.push(*d),
            Some(r) if r != reg => stale.push(*d),
            Some(_) => {}
        }
    }
    if missing.is_empty() && extra.is_empty() && stale.is_empty() {
        Ok(())
    } else {
        Err(Rejection::DeviceMismatch { missing, extra, stale })
    }
}

mod apply;
mod federation;
pub mod incarnation;
pub mod restore;
#[cfg(test)]
mod tests;
