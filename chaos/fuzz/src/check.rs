//! Invariant checks for `State::apply_batch`, run after every batch by the
//! `state_machine` and `log_entry` targets. A violated invariant panics, which
//! libFuzzer reports as a crash with the input that caused it.
//!
//! Two kinds of checks:
//! - a small reference model (providers' lifecycle, users, devices, group
//!   epochs and sequence numbers) that predicts the outcome of those commands
//!   exactly, and must equal the state after every batch;
//! - invariants of the state and the outcomes that need no model: the ones
//!   listed at the top of `crates/core/src/state.rs` (a one-time prekey
//!   leaves the stock at most once; an accepted send is stored once and a
//!   retry inside the dedup window gets the first answer; mailbox seqs
//!   strictly increase; an ack removes exactly the seqs it names; expiry is
//!   never silent) and a few more (stock and membership bounds, keys only in
//!   the stock of the device they were uploaded to, core -> wire conversions
//!   round-trip through protobuf).
//!
//! With `tokens` set (the structured target), every uploaded public key is
//! unique, so a key can be followed from its upload to its claim.

use crate::model::{KIND_EC, KIND_KYBER, KIND_LAST_RESORT, KIND_SIGNED};
use bytes::Bytes;
use prost::Message;
use router_core::version::{DELIVERY_ACK_GRACE_MS, MAX_CLOCK_STEP_MS, MAX_ONCE_ANSWERS, ONCE_WINDOW_MS};
use router_core::{
    Batch, Command, DeviceId, GroupId, Limits, MailboxItem, MessageId, Outcome, ProviderId, ProviderStatus,
    RegistrationId, Rejection, RequestId, Role, Seq, State, UserId,
};
use router_proto::v1;
use std::collections::{BTreeMap, BTreeSet};

type Key = (ProviderId, MessageId);

/// What the model knows about a user.
#[derive(Clone, Debug, PartialEq, Eq)]
struct ModelUser {
    provider: ProviderId,
    devices: BTreeMap<DeviceId, RegistrationId>,
}

/// What the model knows about a group.
#[derive(Clone, Debug, PartialEq, Eq)]
struct ModelGroup {
    members: BTreeMap<UserId, Role>,
    epoch: u64,
    next_seq: u64,
}

#[derive(Clone, Debug, Default)]
struct Model {
    providers: BTreeMap<ProviderId, ProviderStatus>,
    users: BTreeMap<UserId, ModelUser>,
    groups: BTreeMap<GroupId, ModelGroup>,
    limits: Limits,
}

impl Model {
    fn of(state: &State) -> Model {
        Model {
            providers: state.providers.iter().map(|(p, r)| (p.clone(), r.status)).collect(),
            users: state
                .users
                .iter()
                .map(|(u, r)| {
                    let devices = r.devices.iter().map(|(d, rec)| (*d, rec.registration_id)).collect();
                    (u.clone(), ModelUser { provider: r.provider.clone(), devices })
                })
                .collect(),
            groups: state
                .groups
                .iter()
                .map(|(g, r)| {
                    (g.clone(), ModelGroup { members: r.members.clone(), epoch: r.epoch, next_seq: r.next_seq })
                })
                .collect(),
            limits: state.limits.clone(),
        }
    }

    /// The rejection an acting provider gets when it may not act.
    fn refusal(&self, p: &ProviderId) -> Option<Rejection> {
        match self.providers.get(p) {
            Some(ProviderStatus::Active) => None,
            Some(status @ (ProviderStatus::Suspended | ProviderStatus::Revoked)) => {
                Some(Rejection::ProviderSuspended { provider: p.clone(), status: *status })
            }
            _ => Some(Rejection::ProviderNotOnboarded { provider: p.clone() }),
        }
    }

    /// `user` exists and belongs to `p`.
    fn owned(&self, p: &ProviderId, user: &UserId) -> Result<(), Rejection> {
        match self.users.get(user) {
            None => Err(Rejection::UserNotFound { user: user.clone() }),
            Some(u) if &u.provider != p => Err(Rejection::NotOwner { user: user.clone() }),
            Some(_) => Ok(()),
        }
    }

    fn missing_member(&self, users: impl Iterator<Item = UserId>) -> Result<(), Rejection> {
        for u in users {
            if !self.users.contains_key(&u) {
                return Err(Rejection::UserNotFound { user: u });
            }
        }
        Ok(())
    }

    /// Predicts the outcome of the commands the model covers and updates the
    /// model; `None` for the others (checked by invariants instead).
    fn predict(&mut self, cmd: &Command) -> Option<Result<Outcome, Rejection>> {
        if let (Some(p), false) = (cmd.actor(), matches!(cmd, Command::RequestProvider { .. })) {
            if let Some(r) = self.refusal(p) {
                return Some(Err(r));
            }
        }
        let done = Some(Ok(Outcome::Done));
        match cmd {
            Command::AddProvider { provider } => {
                self.providers.insert(provider.clone(), ProviderStatus::Active);
                done
            }
            Command::RequestProvider { provider, .. } => match self.providers.get(provider) {
                None => {
                    self.providers.insert(provider.clone(), ProviderStatus::Requested);
                    done
                }
                Some(ProviderStatus::Requested | ProviderStatus::Approved) => done,
                Some(s) => Some(Err(Rejection::BadTransition { provider: provider.clone(), from: *s })),
            },
            Command::SetProviderStatus { provider, action } => match self.providers.get(provider).copied() {
                None => Some(Err(Rejection::UnknownProvider { provider: provider.clone() })),
                Some(s) => match action.apply(s) {
                    Some(next) => {
                        self.providers.insert(provider.clone(), next);
                        done
                    }
                    None => Some(Err(Rejection::BadTransition { provider: provider.clone(), from: s })),
                },
            },
            Command::SetMediaHosts { .. } => done,
            Command::SetLimits { limits } => {
                self.limits = limits.clone();
                done
            }
            Command::RegisterUser { provider, user } => match self.users.get(user) {
                Some(u) if &u.provider == provider => done,
                Some(_) => Some(Err(Rejection::UserTaken { user: user.clone() })),
                None => {
                    self.users.insert(user.clone(), ModelUser { provider: provider.clone(), devices: BTreeMap::new() });
                    done
                }
            },
            Command::DeregisterUser { provider, user } => Some(self.owned(provider, user).map(|()| {
                self.users.remove(user);
                Outcome::Done
            })),
            Command::RegisterDevice { provider, user, device, registration_id } => {
                if let Err(r) = self.owned(provider, user) {
                    return Some(Err(r));
                }
                let limit = self.limits.max_devices_per_user;
                let u = self.users.get_mut(user).expect("owned");
                if !u.devices.contains_key(device) && u.devices.len() as u64 >= u64::from(limit) {
                    return Some(Err(Rejection::TooManyDevices { limit }));
                }
                u.devices.insert(*device, *registration_id);
                done
            }
            Command::RemoveDevice { provider, user, device } => {
                if let Err(r) = self.owned(provider, user) {
                    return Some(Err(r));
                }
                let u = self.users.get_mut(user).expect("owned");
                match u.devices.remove(device) {
                    Some(_) => done,
                    None => Some(Err(Rejection::DeviceNotFound { user: user.clone(), device: *device })),
                }
            }
            Command::CreateGroup { provider, creator, group, members } => {
                if let Err(r) = self.owned(provider, creator) {
                    return Some(Err(r));
                }
                if self.groups.contains_key(group) {
                    return Some(Err(Rejection::GroupExists { group: group.clone() }));
                }
                let mut all: BTreeMap<UserId, Role> = members.iter().cloned().collect();
                all.insert(creator.clone(), Role::Admin);
                if let Err(r) = self.missing_member(all.keys().cloned()) {
                    return Some(Err(r));
                }
                let limit = self.limits.max_group_members;
                if all.len() as u64 > u64::from(limit) {
                    return Some(Err(Rejection::TooManyGroupMembers { limit }));
                }
                self.groups.insert(group.clone(), ModelGroup { members: all, epoch: 1, next_seq: 0 });
                Some(Ok(Outcome::GroupEpoch { epoch: 1 }))
            }
            Command::ChangeGroup { provider, actor, group, set, remove } => {
                if let Err(r) = self.owned(provider, actor) {
                    return Some(Err(r));
                }
                if let Err(r) = self.missing_member(set.iter().map(|(u, _)| u.clone())) {
                    return Some(Err(r));
                }
                let limit = self.limits.max_group_members;
                let Some(g) = self.groups.get_mut(group) else {
                    return Some(Err(Rejection::GroupNotFound { group: group.clone() }));
                };
                match g.members.get(actor) {
                    Some(Role::Admin) => {}
                    Some(Role::Member) => return Some(Err(Rejection::NotGroupAdmin { user: actor.clone() })),
                    None => return Some(Err(Rejection::NotGroupMember { user: actor.clone() })),
                }
                let mut members = g.members.clone();
                for u in remove {
                    members.remove(u);
                }
                for (u, r) in set {
                    members.insert(u.clone(), *r);
                }
                if members.len() as u64 > u64::from(limit) {
                    return Some(Err(Rejection::TooManyGroupMembers { limit }));
                }
                g.members = members;
                g.epoch += 1;
                Some(Ok(Outcome::GroupEpoch { epoch: g.epoch }))
            }
            _ => None,
        }
    }

    fn assert_matches(&self, after: &State) {
        let now = Model::of(after);
        assert_eq!(self.providers, now.providers, "provider statuses differ from the model");
        assert_eq!(self.users, now.users, "users and devices differ from the model");
        assert_eq!(self.groups, now.groups, "groups differ from the model");
        assert_eq!(self.limits, now.limits, "limits differ from the model");
    }
}

/// The send dedup of `State`, modelled: answers of fresh sends, forgotten
/// oldest first at the start of a batch once older than the window or
/// beyond the count limit, of all senders together or (cluster version 5)
/// of each sender (`SendAnswers::prune` in `crates/core/src/dedup.rs`).
#[derive(Clone, Debug, Default)]
struct DedupModel {
    order: std::collections::VecDeque<(u64, Key)>,
    answers: BTreeMap<Key, Outcome>,
}

impl DedupModel {
    fn prune(&mut self, now: u64, limits: &Limits, per_sender: bool) {
        if !per_sender {
            while let Some((stamp, _)) = self.order.front() {
                let too_old = now.saturating_sub(*stamp) > limits.dedup_window_ms;
                let too_many = self.order.len() as u64 > limits.max_dedup_entries;
                if !(too_old || too_many) {
                    break;
                }
                let (_, key) = self.order.pop_front().expect("front exists");
                self.answers.remove(&key);
            }
            return;
        }
        // Per sender: walk the order from the newest back, keeping a
        // sender's answer while it is young enough and within its count.
        let mut kept_per_sender: BTreeMap<ProviderId, u64> = BTreeMap::new();
        let mut kept = std::collections::VecDeque::new();
        for (stamp, key) in self.order.drain(..).rev() {
            let count = kept_per_sender.entry(key.0.clone()).or_default();
            if now.saturating_sub(stamp) <= limits.dedup_window_ms && *count < limits.max_dedup_entries {
                *count += 1;
                kept.push_front((stamp, key));
            } else {
                self.answers.remove(&key);
            }
        }
        self.order = kept;
    }

    fn insert(&mut self, now: u64, key: Key, answer: Outcome) {
        self.answers.insert(key.clone(), answer);
        self.order.push_back((now, key));
    }
}

/// The answers of `Command::Once` requests, modelled: an accepted request's
/// answer is kept for `ONCE_WINDOW_MS` (at most `MAX_ONCE_ANSWERS` of them)
/// and a retry inside it gets that answer and changes nothing; a rejected
/// one is not kept (`OnceAnswers` in `crates/core/src/once.rs`).
#[derive(Clone, Debug, Default)]
struct OnceModel {
    order: std::collections::VecDeque<(u64, RequestId)>,
    answers: BTreeMap<RequestId, Outcome>,
}

impl OnceModel {
    fn prune(&mut self, now: u64) {
        while let Some(&(stamp, request)) = self.order.front() {
            if now.saturating_sub(stamp) <= ONCE_WINDOW_MS && self.order.len() <= MAX_ONCE_ANSWERS {
                break;
            }
            self.order.pop_front();
            self.answers.remove(&request);
        }
    }
}

/// The rules of a cluster version that the checks below depend on
/// (`crates/core/src/version.rs`): where a leader stamp moves the clock, and
/// how long an entry outlives its TTL before it is removed and reported.
fn expected_clock(before: &State, stamp_ms: u64) -> u64 {
    if before.cluster_version() >= 2 && before.clock_ms > 0 {
        before.clock_ms.max(stamp_ms.min(before.clock_ms.saturating_add(MAX_CLOCK_STEP_MS)))
    } else {
        before.clock_ms.max(stamp_ms)
    }
}

fn expiry_grace_ms(before: &State) -> u64 {
    if before.cluster_version() >= 2 { DELIVERY_ACK_GRACE_MS } else { 0 }
}

/// Counters, to see that a run reached the interesting paths.
#[derive(Clone, Debug, Default)]
pub struct Stats {
    pub batches: u64,
    pub commands: u64,
    pub rejected: u64,
    pub sent: u64,
    pub group_sent: u64,
    pub claimed_one_time: u64,
    pub acked: u64,
    pub expired: u64,
    pub restores: u64,
}

#[derive(Clone)]
pub struct Checker {
    /// Public keys are unique per upload (the structured target).
    tokens: bool,
    model: Model,
    /// `None` after a restore of a state this checker never saw.
    dedup: Option<DedupModel>,
    /// Kept across a restore: the Once answers are the cluster's own.
    once: OnceModel,
    /// Every (sender, message id) ever answered.
    keys: BTreeSet<Key>,
    /// States a later `Restore` may load, with their dedup.
    backups: Vec<(State, DedupModel)>,
    /// False once a `Restore` loaded a state this checker did not see being
    /// built: core trusts a backup's consistency, so nothing is checked after.
    trusted: bool,
    /// Public key -> (user, device, kind byte) of the accepted upload that stocked it.
    uploaded: BTreeMap<Bytes, (UserId, DeviceId, u8)>,
    /// One-time keys that left a stock (claimed or dropped), since the last restore.
    gone: BTreeSet<Bytes>,
    /// Highest limits ever in force (a lower limit does not shrink a stock).
    max_devices: u64,
    max_prekeys: u64,
    max_group_members: u64,
    pub stats: Stats,
}

/// Everything a batch did, gathered while walking its commands.
#[derive(Default)]
struct BatchNotes {
    /// A `Restore` was accepted (so far, walking the batch).
    restored: bool,
    limits_changed: bool,
    /// Seqs named by acks, per mailbox owner.
    acked: BTreeMap<ProviderId, BTreeSet<Seq>>,
    /// Fresh accepted 1:1 sends: (recipient provider, seq, key).
    fresh_sends: Vec<(ProviderId, Seq, Key)>,
    /// Successful claims per (requester, user).
    claims: BTreeMap<(ProviderId, UserId), u64>,
}

impl Checker {
    pub fn new(initial: &State, tokens: bool) -> Checker {
        let mut c = Checker {
            tokens,
            model: Model::of(initial),
            dedup: initial.mailboxes.is_empty().then(DedupModel::default),
            once: OnceModel::default(),
            keys: BTreeSet::new(),
            backups: Vec::new(),
            trusted: true,
            uploaded: BTreeMap::new(),
            gone: BTreeSet::new(),
            max_devices: 0,
            max_prekeys: 0,
            max_group_members: 0,
            stats: Stats::default(),
        };
        c.raise_limits(&initial.limits);
        c
    }

    /// Limits that were in force before `initial` (stocks and device lists built under them).
    pub fn raise_limits(&mut self, l: &Limits) {
        self.max_devices = self.max_devices.max(u64::from(l.max_devices_per_user));
        self.max_prekeys = self.max_prekeys.max(u64::from(l.max_one_time_prekeys_per_device));
        self.max_group_members = self.max_group_members.max(u64::from(l.max_group_members));
    }

    /// `state` (the state before the next batch) may come back by a `Restore`.
    pub fn remember_backup(&mut self, state: &State) {
        if let Some(d) = &self.dedup {
            self.backups.push((state.clone(), d.clone()));
        }
    }

    /// Checks one applied batch: `before` --`batch`--> `after`, answering `outs`.
    pub fn batch(&mut self, before: &State, batch: &Batch, outs: &[Outcome], after: &State) {
        if !self.trusted {
            return;
        }
        self.stats.batches += 1;
        assert_eq!(outs.len(), batch.commands.len(), "one outcome per command");
        assert_eq!(
            after.clock_ms,
            expected_clock(before, batch.stamp_ms),
            "clock of version {}",
            before.cluster_version()
        );
        assert!(after.cluster_version() >= before.cluster_version(), "the cluster version went down");
        let now = after.clock_ms;
        let mut notes = BatchNotes::default();
        if let Some(d) = &mut self.dedup {
            d.prune(now, &before.limits, before.cluster_version() >= router_core::dedup::SENDER_WINDOWS_VERSION);
        }
        self.once.prune(now);
        for (cmd, out) in batch.commands.iter().zip(outs) {
            self.command(before, now, cmd, out, &mut notes);
            if !self.trusted {
                return;
            }
        }
        self.state_invariants(after);
        if notes.restored {
            // A restore replaces everything; the diff checks below do not apply.
            self.model = Model::of(after);
            return;
        }
        self.model.assert_matches(after);
        self.diff(before, after, now, &notes);
        if !notes.limits_changed {
            for ((requester, user), n) in &notes.claims {
                assert!(
                    *n <= u64::from(before.limits.claim_burst),
                    "{n} claims by {requester} for {user} at one stamp, burst is {}",
                    before.limits.claim_burst
                );
            }
        }
    }

    fn command(&mut self, before: &State, now: u64, cmd: &Command, out: &Outcome, notes: &mut BatchNotes) {
        self.stats.commands += 1;
        if let Command::SetLimits { limits } = cmd {
            notes.limits_changed = true;
            self.raise_limits(limits);
        }
        if matches!(out, Outcome::Rejected(_)) {
            self.stats.rejected += 1;
        }
        // Federation (peers, relays, `provider@cluster` requesters) is outside
        // this model; core's unit tests cover it. A refused one changed
        // nothing (the state checks below still hold); after an accepted one
        // nothing more is checked, as after a restore of an unseen backup.
        if let Command::Once { request, command } = cmd {
            if let Some(answer) = self.once.answers.get(request) {
                assert_eq!(out, answer, "a retry of Once {request:?} must get the first answer");
                return;
            }
            self.command(before, now, command, out, notes);
            if !matches!(out, Outcome::Rejected(_)) {
                self.once.answers.insert(*request, out.clone());
                self.once.order.push_back((now, *request));
            }
            return;
        }
        if let Command::SetClusterVersion { .. } = cmd {
            assert_eq!(out, &Outcome::Done, "setting the cluster version is never refused");
            return;
        }
        if cmd.is_federation() || cmd.actor().is_some_and(|p| p.0.contains('@')) {
            if !matches!(out, Outcome::Rejected(_)) {
                self.trusted = false;
            }
            return;
        }
        let predicted = self.model.predict(cmd);
        if let Some(expected) = predicted {
            let expected = expected.unwrap_or_else(Outcome::Rejected);
            assert_eq!(out, &expected, "outcome of {cmd:?} differs from the model");
        }
        match (cmd, out) {
            (Command::Restore { state }, Outcome::Done) => {
                self.stats.restores += 1;
                notes.restored = true;
                let mut restored = Model::of(state);
                restored.limits = state.limits.clone();
                self.model = restored;
                self.raise_limits(&state.limits);
                // Keys claimed after the backup was taken are in its stock again.
                self.gone.clear();
                // A `Restore` carries what the log encodes: a backup's
                // per-sender windows are not part of it.
                let per_sender = state.send_answers().sender_windows().is_some();
                self.dedup = if per_sender {
                    Some(DedupModel::default())
                } else {
                    self.backups.iter().find(|(b, _)| b == state.as_ref()).map(|(_, d)| d.clone())
                };
                self.trusted = self.dedup.is_some();
            }
            (Command::Restore { .. }, Outcome::Rejected(Rejection::RestoreIntoNonEmpty)) => {}
            (Command::Restore { .. }, other) => panic!("restore answered {other:?}"),
            (
                Command::UploadPrekeys { user, device, upload, .. },
                Outcome::KeysStored { one_time_remaining, kyber_one_time_remaining },
            ) => {
                assert!(u64::from(*one_time_remaining) <= self.max_prekeys.max(upload.one_time.len() as u64));
                assert!(
                    u64::from(*kyber_one_time_remaining) <= self.max_prekeys.max(upload.kyber_one_time.len() as u64)
                );
                if self.tokens {
                    let keys = upload
                        .one_time
                        .iter()
                        .map(|k| &k.public_key)
                        .chain(upload.kyber_one_time.iter().map(|k| &k.public_key))
                        .chain(upload.signed_prekey.iter().map(|k| &k.public_key))
                        .chain(upload.kyber_last_resort.iter().map(|k| &k.public_key));
                    for k in keys {
                        let prev = self.uploaded.insert(k.clone(), (user.clone(), *device, k[0]));
                        assert!(prev.is_none(), "key {k:?} stored twice");
                    }
                }
            }
            (Command::UploadPrekeys { .. }, Outcome::Rejected(_)) => {}
            (Command::UploadPrekeys { .. }, other) => panic!("upload answered {other:?}"),
            (Command::ClaimPrekeys { requester, user, device }, Outcome::Bundles { provider, bundles }) => {
                assert!(self.model.refusal(requester).is_none(), "{requester} may not act but claimed");
                assert_eq!(self.model.users.get(user).map(|u| &u.provider), Some(provider), "bundle owner");
                assert!(!bundles.is_empty(), "empty bundle list is NO_KEYS");
                let devices: Vec<DeviceId> = bundles.iter().map(|b| b.device).collect();
                assert!(devices.windows(2).all(|w| w[0] < w[1]), "one bundle per device, in order: {devices:?}");
                if let Some(d) = device {
                    assert_eq!(devices, vec![*d]);
                }
                for b in bundles {
                    assert!(!b.kyber_is_last_resort || b.kyber.is_some());
                    // The wire form round-trips.
                    let wire = router_node::grpc::wire::bundle(b);
                    assert_eq!(v1::PrekeyBundle::decode(wire.encode_to_vec().as_slice()).as_ref(), Ok(&wire));
                    assert_eq!(wire.one_time_exhausted, b.one_time.is_none());
                    if !self.tokens {
                        continue;
                    }
                    let here = |kind: u8| Some((user.clone(), b.device, kind));
                    assert_eq!(self.uploaded.get(&b.signed_prekey.public_key).cloned(), here(KIND_SIGNED));
                    if let Some(k) = &b.one_time {
                        self.stats.claimed_one_time += 1;
                        assert_eq!(self.uploaded.get(&k.public_key).cloned(), here(KIND_EC), "EC key {k:?}");
                        assert!(self.gone.insert(k.public_key.clone()), "EC one-time key {k:?} handed out twice");
                    }
                    if let Some(k) = &b.kyber {
                        if b.kyber_is_last_resort {
                            assert_eq!(self.uploaded.get(&k.public_key).cloned(), here(KIND_LAST_RESORT));
                        } else {
                            assert_eq!(self.uploaded.get(&k.public_key).cloned(), here(KIND_KYBER), "{k:?}");
                            assert!(
                                self.gone.insert(k.public_key.clone()),
                                "Kyber one-time key {k:?} handed out twice"
                            );
                        }
                    }
                }
                *notes.claims.entry((requester.clone(), user.clone())).or_default() += 1;
            }
            (Command::ClaimPrekeys { .. }, Outcome::Rejected(_)) => {}
            (Command::ClaimPrekeys { .. }, other) => panic!("claim answered {other:?}"),
            (Command::Send(env), out) => {
                let key = (env.sender.clone(), env.message_id.clone());
                let checked = self.model.refusal(&env.sender).map_or(Ok(()), Err);
                if let Some(Outcome::Sent { seq, accepted_at_ms }) = self.dedup_answer(now, key.clone(), out, checked) {
                    self.stats.sent += 1;
                    assert_eq!(accepted_at_ms, now);
                    if let Some(su) = &env.sender_user {
                        assert_eq!(self.model.owned(&env.sender, su), Ok(()), "sender user of another provider");
                    }
                    let rec = self.model.users.get(&env.recipient).expect("send to an unknown user accepted");
                    let addressed: BTreeMap<DeviceId, RegistrationId> =
                        env.parts.iter().map(|p| (p.device, p.registration_id)).collect();
                    assert_eq!(addressed, rec.devices, "accepted send must address exactly the devices");
                    assert!(!rec.devices.is_empty());
                    if !notes.restored {
                        let floor = before.mailboxes.get(&rec.provider).map_or(0, |m| m.next_seq);
                        assert!(seq >= floor, "seq {seq} reused in {} (next was {floor})", rec.provider);
                        notes.fresh_sends.push((rec.provider.clone(), seq, key));
                    }
                }
            }
            (Command::SendGroup(g), out) => {
                let key = (g.sender.clone(), g.message_id.clone());
                let checked = match self.model.refusal(&g.sender) {
                    Some(r) => Err(r),
                    None => self.model.owned(&g.sender, &g.sender_user),
                };
                if let Some(Outcome::GroupSent { group_seq, epoch, accepted_at_ms }) =
                    self.dedup_answer(now, key, out, checked)
                {
                    self.stats.group_sent += 1;
                    assert_eq!(accepted_at_ms, now);
                    let m = self.model.groups.get_mut(&g.group).expect("group send to an unknown group accepted");
                    assert!(m.members.contains_key(&g.sender_user), "group send by a non-member accepted");
                    assert_eq!((group_seq, epoch), (m.next_seq, m.epoch), "group seq/epoch");
                    m.next_seq += 1;
                }
            }
            (Command::Ack { provider, seqs }, Outcome::Acked { removed, unknown }) => {
                assert_eq!(u64::from(*removed) + u64::from(*unknown), seqs.len() as u64);
                self.stats.acked += u64::from(*removed);
                notes.acked.entry(provider.clone()).or_default().extend(seqs.iter().copied());
            }
            (Command::Ack { .. }, Outcome::Rejected(_)) => {}
            (Command::Ack { .. }, other) => panic!("ack answered {other:?}"),
            _ => {}
        }
    }

    /// The dedup rule: a send whose (sender, message id) is remembered gets
    /// the remembered answer back and stores nothing; otherwise an accepted
    /// send is fresh and its answer is remembered. Returns the answer of a
    /// fresh acceptance (of a send not refused before the dedup lookup).
    /// `checked`: the checks a send passes before the lookup, per the model.
    fn dedup_answer(&mut self, now: u64, key: Key, out: &Outcome, checked: Result<(), Rejection>) -> Option<Outcome> {
        if let Err(r) = checked {
            assert_eq!(out, &Outcome::Rejected(r), "{key:?}");
            return None;
        }
        let d = self.dedup.as_mut()?;
        if let Some(remembered) = d.answers.get(&key) {
            assert_eq!(out, remembered, "a retry of {key:?} must get the remembered answer");
            return None;
        }
        if matches!(out, Outcome::Rejected(_)) {
            return None;
        }
        self.keys.insert(key.clone());
        d.insert(now, key, out.clone());
        Some(out.clone())
    }

    /// Invariants of one state on its own.
    fn state_invariants(&mut self, s: &State) {
        for (user, rec) in &s.users {
            assert!(rec.devices.len() as u64 <= self.max_devices, "{user}: {} devices", rec.devices.len());
            for (d, dev) in &rec.devices {
                let Some(k) = &dev.keys else { continue };
                assert!(k.one_time.len() as u64 <= self.max_prekeys, "{user}.{d}: EC stock {}", k.one_time.len());
                assert!(k.kyber_one_time.len() as u64 <= self.max_prekeys, "{user}.{d}: Kyber stock");
                let ec: BTreeSet<u32> = k.one_time.iter().map(|k| k.key_id).collect();
                assert_eq!(ec.len(), k.one_time.len(), "{user}.{d}: duplicate EC key ids in the stock");
                let ky: BTreeSet<u32> = k.kyber_one_time.iter().map(|k| k.key_id).collect();
                assert_eq!(ky.len(), k.kyber_one_time.len(), "{user}.{d}: duplicate Kyber key ids in the stock");
                if self.tokens {
                    let at = |kind: u8| Some((user.clone(), *d, kind));
                    assert_eq!(self.uploaded.get(&k.signed_prekey.public_key).cloned(), at(KIND_SIGNED));
                    if let Some(lr) = &k.kyber_last_resort {
                        assert_eq!(self.uploaded.get(&lr.public_key).cloned(), at(KIND_LAST_RESORT));
                    }
                    for (stock, kind) in [
                        (k.one_time.iter().map(|k| &k.public_key).collect::<Vec<_>>(), KIND_EC),
                        (k.kyber_one_time.iter().map(|k| &k.public_key).collect(), KIND_KYBER),
                    ] {
                        for key in &stock {
                            assert_eq!(self.uploaded.get(*key).cloned(), at(kind), "{user}.{d}: foreign key {key:?}");
                            assert!(!self.gone.contains(*key), "{user}.{d}: key {key:?} came back after leaving");
                        }
                        // Keys leave in upload order (FIFO), so the stock stays in upload order.
                        assert!(stock.windows(2).all(|w| w[0] < w[1]), "{user}.{d}: stock out of order");
                    }
                }
            }
        }
        for (g, rec) in &s.groups {
            assert!(rec.members.len() as u64 <= self.max_group_members, "{}: {} members", g.0, rec.members.len());
            assert!(rec.epoch >= 1);
            assert!(rec.members.values().any(|r| *r == Role::Admin) || rec.epoch > 1, "a new group has its admin");
        }
        for (owner, mb) in &s.mailboxes {
            let mut last_accepted = 0;
            for (k, e) in &mb.entries {
                assert_eq!(*k, e.seq, "{owner}: entry keyed by another seq");
                assert!(e.seq < mb.next_seq, "{owner}: seq {} >= next_seq {}", e.seq, mb.next_seq);
                assert!(e.accepted_at_ms >= last_accepted, "{owner}: acceptance order");
                assert!(e.accepted_at_ms <= s.clock_ms, "{owner}: accepted in the future");
                assert!(e.expires_at_ms >= e.accepted_at_ms, "{owner}: expires before acceptance");
                last_accepted = e.accepted_at_ms;
                if let MailboxItem::Group(g) = &e.item {
                    assert!(!g.recipients.is_empty(), "{owner}: group delivery to nobody");
                    assert!(g.recipients.windows(2).all(|w| w[0] < w[1]), "{owner}: recipients repeat");
                    assert!(g.per_device.iter().all(|(u, _)| g.recipients.contains(u)), "per-device part leaked");
                }
            }
        }
    }

    /// Checks `after` against `before` for a batch without a restore.
    fn diff(&mut self, before: &State, after: &State, now: u64, notes: &BatchNotes) {
        // One-time keys that left a stock without a claim (identity change,
        // reinstall, removal) are gone for good too.
        if self.tokens {
            let stocked = |s: &State| -> BTreeSet<Bytes> {
                s.users
                    .values()
                    .flat_map(|u| u.devices.values())
                    .filter_map(|d| d.keys.as_ref())
                    .flat_map(|k| {
                        k.one_time
                            .iter()
                            .map(|k| k.public_key.clone())
                            .chain(k.kyber_one_time.iter().map(|k| k.public_key.clone()))
                    })
                    .collect()
            };
            let still = stocked(after);
            for k in stocked(before) {
                if !still.contains(&k) {
                    self.gone.insert(k);
                }
            }
        }

        let empty = BTreeSet::new();
        let grace = expiry_grace_ms(before);
        let mut expected_reports: BTreeMap<ProviderId, Vec<MailboxItem>> = BTreeMap::new();
        for (owner, mb) in &before.mailboxes {
            let now_mb = after.mailboxes.get(owner).expect("mailboxes are never dropped");
            assert!(now_mb.next_seq >= mb.next_seq, "{owner}: next_seq went back");
            let named = notes.acked.get(owner).unwrap_or(&empty);
            for e in mb.entries.values() {
                let expired = e.expires_at_ms.saturating_add(grace) <= now;
                if named.contains(&e.seq) || expired {
                    assert!(!now_mb.entries.contains_key(&e.seq), "{owner}/{} should be gone", e.seq);
                } else {
                    assert_eq!(now_mb.entries.get(&e.seq), Some(e), "{owner}/{} should be there, unchanged", e.seq);
                }
                if expired {
                    self.stats.expired += 1;
                    // Expiry runs before the batch's commands, so an expired
                    // envelope is reported even if this batch also acks it.
                    if let MailboxItem::Envelope(env) = &e.item {
                        expected_reports.entry(env.sender.clone()).or_default().push(MailboxItem::Expired {
                            message_id: env.message_id.clone(),
                            recipient: env.recipient.clone(),
                            recipient_provider: owner.clone(),
                        });
                    }
                }
            }
        }
        // Expiry is never silent: one report per expired envelope, in the
        // sender's mailbox (unless the report itself is due at once, or the
        // batch acked seqs that did not exist before it).
        let report_due_now = before.limits.report_ttl_ms == 0 || now.checked_add(before.limits.report_ttl_ms).is_none();
        for (owner, mb) in &after.mailboxes {
            let prev_next = before.mailboxes.get(owner).map_or(0, |m| m.next_seq);
            for e in mb.entries.range(..prev_next).map(|(_, e)| e) {
                assert!(
                    before.mailboxes.get(owner).is_some_and(|m| m.entries.contains_key(&e.seq)),
                    "{owner}/{} appeared",
                    e.seq
                );
            }
            let mut reports: Vec<MailboxItem> = Vec::new();
            for e in mb.entries.range(prev_next..).map(|(_, e)| e) {
                assert_eq!(e.accepted_at_ms, now, "{owner}/{}: new entry not stamped with this batch", e.seq);
                // Version 2: seq 0 marks ephemeral entries, no stored entry gets it.
                assert!(e.seq > 0 || before.cluster_version() < 2, "{owner}: a new entry got seq 0");
                if matches!(e.item, MailboxItem::Expired { .. }) {
                    reports.push(e.item.clone());
                }
            }
            let acked_new = notes.acked.get(owner).is_some_and(|s| s.range(prev_next..).next().is_some());
            let mut expected = expected_reports.remove(owner).unwrap_or_default();
            if report_due_now || acked_new {
                continue;
            }
            let by_debug = |a: &MailboxItem, b: &MailboxItem| format!("{a:?}").cmp(&format!("{b:?}"));
            reports.sort_by(by_debug);
            expected.sort_by(by_debug);
            assert_eq!(reports, expected, "{owner}: expiry reports");
        }
        if !report_due_now {
            assert!(
                expected_reports.is_empty(),
                "expired envelopes of senders without a mailbox: {expected_reports:?}"
            );
        }

        // An accepted send is in its mailbox, once.
        for (rp, seq, key) in &notes.fresh_sends {
            if notes.acked.get(rp).is_some_and(|s| s.contains(seq)) {
                continue;
            }
            let e = after
                .mailboxes
                .get(rp)
                .and_then(|m| m.entries.get(seq))
                .unwrap_or_else(|| panic!("{key:?} not at {rp}/{seq}"));
            assert!(
                matches!(&e.item, MailboxItem::Envelope(env) if (&env.sender, &env.message_id) == (&key.0, &key.1)),
                "{rp}/{seq} holds another entry than {key:?}"
            );
        }
        // ... and nothing else was stored: every new envelope is a fresh send
        // of this batch (a retry stores nothing).
        let fresh: BTreeSet<(&ProviderId, Seq)> = notes.fresh_sends.iter().map(|(rp, seq, _)| (rp, *seq)).collect();
        for (owner, mb) in &after.mailboxes {
            let prev_next = before.mailboxes.get(owner).map_or(0, |m| m.next_seq);
            for e in mb.entries.range(prev_next..).map(|(_, e)| e) {
                if matches!(e.item, MailboxItem::Envelope(_)) {
                    assert!(fresh.contains(&(owner, e.seq)), "{owner}/{}: envelope stored without a fresh send", e.seq);
                }
            }
        }
        // What the state remembers is what the model remembers.
        if let Some(d) = &self.dedup {
            for key in &self.keys {
                assert_eq!(
                    after.dedup_answer(&key.0, &key.1).as_ref(),
                    d.answers.get(key),
                    "remembered answer of {key:?}"
                );
            }
        }
    }

    /// End of a run: the wire form of every mailbox entry round-trips, and
    /// every entry is in the expiry index (at the end of time all are gone).
    pub fn finish(&mut self, state: &State) {
        if !self.trusted {
            return;
        }
        for mb in state.mailboxes.values() {
            for e in mb.entries.values() {
                let wire = router_node::grpc::wire::mailbox_entry(router_core::MailboxEntry::clone(e))
                    .expect("in-memory ciphertexts always read");
                assert_eq!(
                    (wire.seq, wire.accepted_at_ms, wire.expires_at_ms),
                    (e.seq, e.accepted_at_ms, e.expires_at_ms)
                );
                assert!(wire.kind.is_some());
                assert_eq!(v1::MailboxEntry::decode(wire.encode_to_vec().as_slice()).as_ref(), Ok(&wire));
            }
        }
        let mut end = state.clone();
        // From version 2 one entry moves the clock by a bounded step: start
        // the end of time just before it.
        end.clock_ms = end.clock_ms.max(u64::MAX - 1);
        let stamp_ms = u64::MAX;
        let batch = Batch { stamp_ms, commands: Vec::new() };
        end.apply_batch(&batch);
        for (owner, mb) in &end.mailboxes {
            assert!(
                mb.entries.is_empty(),
                "{owner}: entries outlive the end of time (not in the expiry index): {:?}",
                mb.entries.keys().collect::<Vec<_>>()
            );
        }
    }
}
