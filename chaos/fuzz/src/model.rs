//! The structured input of the `state_machine` target: a [`Plan`] (decoded
//! with `arbitrary` from the fuzzer's bytes) of batches of [`Op`]s over small
//! name spaces (4 providers, 5 users, 5 device ids, 8 message ids, 3 groups),
//! so that random commands collide, pass the lookups and reach the
//! interesting paths. Each op becomes one `router_core::Command`, resolved
//! against the state before its batch (who owns a user, which devices it
//! has, which mailbox seqs exist), like the property tests in
//! `crates/core/src/state/tests.rs`.
//!
//! Every uploaded prekey carries a unique public key (a kind byte and a
//! counter), so the checker can follow each key from upload to claim.

use arbitrary::{Arbitrary, Unstructured};
use bytes::Bytes;
use router_core::{
    Batch, Command, ContentType, DevicePart, GroupId, GroupSend, Limits, MessageId, OneTimePrekey, PrekeyUpload,
    ProviderAction, ProviderId, RequestId, Role, SendEnvelope, SignedPrekey, State, UserId,
};

/// `pa`, `pb`, `pc` are active from the start; `px` is not onboarded.
pub const PROVIDERS: [&str; 4] = ["pa", "pb", "pc", "px"];
/// `u0`..`u3` start registered (by provider `i % 3`, device 1); `u4` does not.
pub const USERS: [&str; 5] = ["u0", "u1", "u2", "u3", "u4"];
pub const GROUPS: [&str; 3] = ["g0", "g1", "g2"];
/// First leader stamp (Nov 2023, in ms).
pub const T0: u64 = 1_700_000_000_000;
/// Caps per input, so that one input stays fast (libFuzzer's timeout).
pub const MAX_BATCHES: usize = 48;
pub const MAX_OPS_PER_BATCH: usize = 12;
const MAX_LIST: usize = 6;

/// First byte of a test public key: which kind of key it is.
pub const KIND_EC: u8 = 1;
pub const KIND_KYBER: u8 = 2;
pub const KIND_SIGNED: u8 = 3;
pub const KIND_LAST_RESORT: u8 = 4;

/// The decoded input: a header, then batches until the input runs out.
#[derive(Debug)]
pub struct Plan {
    pub header: Header,
    pub batches: Vec<BatchSpec>,
}

#[derive(Arbitrary, Debug)]
pub struct Header {
    pub start: Start,
    pub limits: LimitsSpec,
    /// Where the replica is replaced by a bincode round trip of itself
    /// (a snapshot install), as a batch index.
    pub snapshot_at: u8,
}

impl Plan {
    /// Every input decodes (missing bytes read as zeros), into at most
    /// [`MAX_BATCHES`] batches.
    pub fn parse(data: &[u8]) -> Plan {
        let mut u = Unstructured::new(data);
        let header = Header::arbitrary(&mut u).unwrap_or(Header {
            start: Start::Populated,
            limits: LimitsSpec::Small,
            snapshot_at: 0,
        });
        let mut batches = Vec::new();
        while !u.is_empty() && batches.len() < MAX_BATCHES {
            match BatchSpec::arbitrary(&mut u) {
                Ok(b) => batches.push(b),
                Err(_) => break,
            }
        }
        Plan { header, batches }
    }
}

#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum Start {
    /// Providers active, users registered with device 1 (most commands get past the lookups).
    Populated,
    /// Providers active, nothing else (a `Restore` can succeed right away).
    Empty,
}

#[derive(Arbitrary, Debug, Clone)]
pub enum LimitsSpec {
    /// Small enough that the limits are hit.
    Small,
    Default,
    /// Anything, including zeros and maxima.
    Raw {
        max_devices_per_user: u32,
        max_one_time_prekeys_per_device: u32,
        max_mailbox_entries: u64,
        dedup_window_ms: u64,
        max_dedup_entries: u64,
        report_ttl_ms: u64,
        claim_burst: u32,
        claim_refill_ms: u64,
        low_prekey_threshold: u32,
        max_group_members: u32,
    },
}

impl LimitsSpec {
    pub fn limits(&self) -> Limits {
        match self {
            LimitsSpec::Small => Limits {
                max_devices_per_user: 3,
                max_one_time_prekeys_per_device: 4,
                max_mailbox_entries: 6,
                dedup_window_ms: 20_000,
                max_dedup_entries: 5,
                report_ttl_ms: 5_000,
                claim_burst: 2,
                claim_refill_ms: 1_000,
                low_prekey_threshold: 2,
                max_group_members: 3,
            },
            LimitsSpec::Default => Limits::default(),
            LimitsSpec::Raw {
                max_devices_per_user,
                max_one_time_prekeys_per_device,
                max_mailbox_entries,
                dedup_window_ms,
                max_dedup_entries,
                report_ttl_ms,
                claim_burst,
                claim_refill_ms,
                low_prekey_threshold,
                max_group_members,
            } => Limits {
                max_devices_per_user: *max_devices_per_user,
                max_one_time_prekeys_per_device: *max_one_time_prekeys_per_device,
                max_mailbox_entries: *max_mailbox_entries,
                dedup_window_ms: *dedup_window_ms,
                max_dedup_entries: *max_dedup_entries,
                report_ttl_ms: *report_ttl_ms,
                claim_burst: *claim_burst,
                claim_refill_ms: *claim_refill_ms,
                low_prekey_threshold: *low_prekey_threshold,
                max_group_members: *max_group_members,
            },
        }
    }
}

#[derive(Arbitrary, Debug)]
pub struct BatchSpec {
    pub dt: Dt,
    pub ops: Vec<Op>,
}

/// How the leader stamp moves from the previous batch's stamp.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum Dt {
    Same,
    Millis(u16),
    /// A leader with a slower clock: the stamp goes backwards.
    Back(u16),
    Seconds(u16),
    Days(u8),
    /// Any stamp at all.
    To(u64),
}

impl Dt {
    pub fn apply(self, stamp: u64) -> u64 {
        match self {
            Dt::Same => stamp,
            Dt::Millis(ms) => stamp.saturating_add(u64::from(ms)),
            Dt::Back(ms) => stamp.saturating_sub(u64::from(ms)),
            Dt::Seconds(s) => stamp.saturating_add(u64::from(s) * 1000),
            Dt::Days(d) => stamp.saturating_add(u64::from(d) * 86_400_000),
            Dt::To(t) => t,
        }
    }
}

/// Who issues a command about a user.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum Who {
    /// The user's current owner (or `pa` if it has none).
    Owner,
    Provider(u8),
}

#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum Action {
    Approve,
    Activate,
    Suspend,
    Reactivate,
    Revoke,
}

#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum Ttl {
    Zero,
    Millis(u16),
    Seconds(u16),
    Month,
    Max,
    Raw(u64),
}

impl Ttl {
    fn ms(self) -> u64 {
        match self {
            Ttl::Zero => 0,
            Ttl::Millis(ms) => u64::from(ms),
            Ttl::Seconds(s) => u64::from(s) * 1000,
            Ttl::Month => 30 * 86_400_000,
            Ttl::Max => u64::MAX,
            Ttl::Raw(ms) => ms,
        }
    }
}

#[derive(Arbitrary, Debug)]
pub enum Op {
    AddProvider {
        p: u8,
    },
    RequestProvider {
        p: u8,
        hosts: u8,
    },
    SetProviderStatus {
        p: u8,
        action: Action,
    },
    SetMediaHosts {
        p: u8,
        hosts: u8,
    },
    SetLimits(LimitsSpec),
    RegisterUser {
        who: Who,
        u: u8,
    },
    DeregisterUser {
        who: Who,
        u: u8,
    },
    RegisterDevice {
        who: Who,
        u: u8,
        d: u8,
        reg: u8,
    },
    RemoveDevice {
        who: Who,
        u: u8,
        d: u8,
    },
    Upload {
        who: Who,
        u: u8,
        d: u8,
        /// Which of two identity keys.
        ik: bool,
        spk: bool,
        ec: Vec<u8>,
        kyber: Vec<u8>,
        last_resort: bool,
    },
    Claim {
        p: u8,
        u: u8,
        d: Option<u8>,
    },
    Send {
        p: u8,
        /// Name a sender user (of `p`, or of whoever owns it).
        as_user: Option<u8>,
        u: u8,
        m: u8,
        ttl: Ttl,
        /// Address exactly the recipient's devices as registered before the batch.
        exact: bool,
        parts: Vec<(u8, u8)>,
        receipt: bool,
    },
    Ack {
        p: u8,
        /// Entries picked by index from the mailbox before the batch.
        picks: Vec<u8>,
        /// And any seq at all.
        raw: Option<u64>,
    },
    CreateGroup {
        who: Who,
        creator: u8,
        g: u8,
        members: Vec<(u8, bool)>,
    },
    ChangeGroup {
        who: Who,
        actor: u8,
        g: u8,
        set: Vec<(u8, bool)>,
        remove: Vec<u8>,
    },
    SendGroup {
        who: Who,
        user: u8,
        g: u8,
        m: u8,
        ttl: Ttl,
        per_device: Vec<(u8, u8, u8)>,
    },
    /// Keep the state before this batch as a backup for a later `Restore`.
    Snapshot,
    /// Restore one of the kept backups (or the initial state).
    Restore {
        slot: u8,
    },
    /// `SetClusterVersion`, 0 to 6 (6 is past what this build knows).
    SetClusterVersion {
        version: u8,
    },
    /// `SetIncarnation` of node 1, 2 or 3 (refused below cluster version 4).
    SetIncarnation {
        node: u8,
        incarnation: u8,
    },
    /// The op as a `Once` request; few request ids, so retries collide.
    Once {
        request: u8,
        op: Box<Op>,
    },
}

pub fn pid(i: u8) -> ProviderId {
    ProviderId::new(PROVIDERS[i as usize % PROVIDERS.len()])
}
pub fn uid(i: u8) -> UserId {
    UserId::new(USERS[i as usize % USERS.len()])
}
fn gid(i: u8) -> GroupId {
    GroupId::new(GROUPS[i as usize % GROUPS.len()])
}
fn mid(i: u8) -> MessageId {
    MessageId::new(format!("m{}", i % 8))
}
fn device(d: u8) -> u32 {
    u32::from(d % 5)
}
fn reg(r: u8) -> u32 {
    u32::from(r % 3)
}
fn role(admin: bool) -> Role {
    if admin { Role::Admin } else { Role::Member }
}
fn hosts(n: u8) -> Vec<String> {
    (0..n % 3).map(|i| format!("media{i}.example")).collect()
}
fn capped<T: Clone>(v: &[T]) -> impl Iterator<Item = T> + '_ {
    v.iter().take(MAX_LIST).cloned()
}

/// The commands that set up a run, applied at `T0`.
pub fn setup(start: Start) -> Vec<Command> {
    let mut cmds: Vec<Command> =
        PROVIDERS[..3].iter().map(|p| Command::AddProvider { provider: ProviderId::new(*p) }).collect();
    if let Start::Populated = start {
        for (i, u) in USERS[..4].iter().enumerate() {
            let provider = ProviderId::new(PROVIDERS[i % 3]);
            cmds.push(Command::RegisterUser { provider: provider.clone(), user: UserId::new(*u) });
            cmds.push(Command::RegisterDevice { provider, user: UserId::new(*u), device: 1, registration_id: 1 });
        }
    }
    cmds
}

/// Turns ops into commands against the state before the batch.
pub struct Builder {
    /// Counter behind every test public key, so each uploaded key is unique.
    next_key: u64,
    /// Backups `Restore` picks from; the first is the state right after setup.
    pub backups: Vec<State>,
}

impl Builder {
    pub fn new(initial: State) -> Self {
        Builder { next_key: 0, backups: vec![initial] }
    }

    fn key(&mut self, kind: u8) -> Bytes {
        self.next_key += 1;
        let mut k = vec![kind];
        k.extend_from_slice(&self.next_key.to_be_bytes());
        Bytes::from(k)
    }

    fn signed(&mut self, kind: u8, key_id: u32) -> SignedPrekey {
        let public_key = self.key(kind);
        SignedPrekey { key_id, signature: Bytes::from(vec![0x5a; 64]), public_key }
    }

    pub fn batch(&mut self, before: &State, stamp_ms: u64, ops: &[Op]) -> Batch {
        let mut commands = Vec::new();
        for op in ops.iter().take(MAX_OPS_PER_BATCH) {
            if let Op::Snapshot = op {
                if self.backups.len() < 4 {
                    self.backups.push(before.clone());
                }
                continue;
            }
            commands.push(self.command(before, op));
        }
        Batch { stamp_ms, commands }
    }

    fn actor(before: &State, who: Who, user: &UserId) -> ProviderId {
        match who {
            Who::Owner => before.user(user).map_or_else(|| pid(0), |r| r.provider.clone()),
            Who::Provider(p) => pid(p),
        }
    }

    fn command(&mut self, before: &State, op: &Op) -> Command {
        match op {
            Op::AddProvider { p } => Command::AddProvider { provider: pid(*p) },
            Op::RequestProvider { p, hosts: h } => Command::RequestProvider {
                provider: pid(*p),
                name: format!("Provider {}", pid(*p)),
                contact: "ops@example.org".into(),
                media_hosts: hosts(*h),
            },
            Op::SetProviderStatus { p, action } => Command::SetProviderStatus {
                provider: pid(*p),
                action: match action {
                    Action::Approve => ProviderAction::Approve,
                    Action::Activate => ProviderAction::Activate,
                    Action::Suspend => ProviderAction::Suspend,
                    Action::Reactivate => ProviderAction::Reactivate,
                    Action::Revoke => ProviderAction::Revoke,
                },
            },
            Op::SetMediaHosts { p, hosts: h } => Command::SetMediaHosts { provider: pid(*p), media_hosts: hosts(*h) },
            Op::SetLimits(spec) => Command::SetLimits { limits: spec.limits() },
            Op::RegisterUser { who, u } => {
                let user = uid(*u);
                let provider = match who {
                    // The user's home provider.
                    Who::Owner => pid(*u % 3),
                    Who::Provider(p) => pid(*p),
                };
                Command::RegisterUser { provider, user }
            }
            Op::DeregisterUser { who, u } => {
                let user = uid(*u);
                Command::DeregisterUser { provider: Self::actor(before, *who, &user), user }
            }
            Op::RegisterDevice { who, u, d, reg: r } => {
                let user = uid(*u);
                Command::RegisterDevice {
                    provider: Self::actor(before, *who, &user),
                    user,
                    device: device(*d),
                    registration_id: reg(*r),
                }
            }
            Op::RemoveDevice { who, u, d } => {
                let user = uid(*u);
                Command::RemoveDevice { provider: Self::actor(before, *who, &user), user, device: device(*d) }
            }
            Op::Upload { who, u, d, ik, spk, ec, kyber, last_resort } => {
                let user = uid(*u);
                let signed_prekey = spk.then(|| self.signed(KIND_SIGNED, 1));
                let one_time = capped(ec)
                    .map(|id| OneTimePrekey { key_id: u32::from(id), public_key: self.key(KIND_EC) })
                    .collect();
                let kyber_one_time = capped(kyber).map(|id| self.signed(KIND_KYBER, u32::from(id))).collect();
                let kyber_last_resort = last_resort.then(|| self.signed(KIND_LAST_RESORT, 0));
                Command::UploadPrekeys {
                    provider: Self::actor(before, *who, &user),
                    user,
                    device: device(*d),
                    upload: PrekeyUpload {
                        identity_key: Bytes::from(vec![if *ik { 0x05 } else { 0x06 }; 33]),
                        signed_prekey,
                        one_time,
                        kyber_one_time,
                        kyber_last_resort,
                    },
                }
            }
            Op::Claim { p, u, d } => Command::ClaimPrekeys { requester: pid(*p), user: uid(*u), device: d.map(device) },
            Op::Send { p, as_user, u, m, ttl, exact, parts, receipt } => {
                let sender = pid(*p);
                let recipient = uid(*u);
                let (sender_user, sender_device) = match as_user {
                    Some(su) => (Some(uid(*su)), Some(1)),
                    None => (None, None),
                };
                let addressed: Vec<(u32, u32)> = match before.user(&recipient) {
                    Some(rec) if *exact => rec.devices.iter().map(|(d, r)| (*d, r.registration_id)).collect(),
                    _ => capped(parts).map(|(d, r)| (device(d), reg(r))).collect(),
                };
                let message_id = mid(*m);
                Command::Send(SendEnvelope {
                    sender,
                    sender_user,
                    sender_device,
                    parts: addressed
                        .into_iter()
                        .map(|(device, registration_id)| DevicePart {
                            device,
                            registration_id,
                            message_type: 2,
                            ciphertext: router_core::Blob::from(format!("{message_id}->{recipient}.{device}")),
                        })
                        .collect(),
                    message_id,
                    recipient,
                    content_type: if *receipt { ContentType::Receipt } else { ContentType::Message },
                    ttl_ms: ttl.ms(),
                    traceparent: None,
                })
            }
            Op::Ack { p, picks, raw } => {
                let provider = pid(*p);
                let present: Vec<u64> =
                    before.mailboxes.get(&provider).map(|m| m.entries.keys().copied().collect()).unwrap_or_default();
                let mut seqs: Vec<u64> = if present.is_empty() {
                    Vec::new()
                } else {
                    capped(picks).map(|i| present[i as usize % present.len()]).collect()
                };
                seqs.extend(*raw);
                Command::Ack { provider, seqs }
            }
            Op::CreateGroup { who, creator, g, members } => {
                let creator = uid(*creator);
                Command::CreateGroup {
                    provider: Self::actor(before, *who, &creator),
                    creator,
                    group: gid(*g),
                    members: capped(members).map(|(u, admin)| (uid(u), role(admin))).collect(),
                }
            }
            Op::ChangeGroup { who, actor, g, set, remove } => {
                let actor = uid(*actor);
                Command::ChangeGroup {
                    provider: Self::actor(before, *who, &actor),
                    actor,
                    group: gid(*g),
                    set: capped(set).map(|(u, admin)| (uid(u), role(admin))).collect(),
                    remove: capped(remove).map(uid).collect(),
                }
            }
            Op::SendGroup { who, user, g, m, ttl, per_device } => {
                let sender_user = uid(*user);
                Command::SendGroup(GroupSend {
                    sender: Self::actor(before, *who, &sender_user),
                    sender_user,
                    sender_device: 1,
                    group: gid(*g),
                    message_id: mid(*m),
                    content_type: ContentType::Message,
                    ttl_ms: ttl.ms(),
                    ciphertext: router_core::Blob::from_static(b"sender-key ciphertext"),
                    per_device: capped(per_device)
                        .map(|(u, d, r)| {
                            (
                                uid(u),
                                DevicePart {
                                    device: device(d),
                                    registration_id: reg(r),
                                    message_type: 3,
                                    ciphertext: router_core::Blob::from_static(b"skdm"),
                                },
                            )
                        })
                        .collect(),
                    traceparent: None,
                })
            }
            Op::Restore { slot } => {
                let backup = self.backups[*slot as usize % self.backups.len()].clone();
                Command::Restore { state: Box::new(backup) }
            }
            Op::SetClusterVersion { version } => Command::SetClusterVersion { version: u32::from(version % 7) },
            Op::SetIncarnation { node, incarnation } => {
                Command::SetIncarnation { node: u64::from(node % 3) + 1, incarnation: u64::from(*incarnation) }
            }
            Op::Once { request, op } => {
                let command = match op.as_ref() {
                    // Keeping a backup is no command; a no-op stands in.
                    Op::Snapshot => Command::SetClusterVersion { version: 0 },
                    op => self.command(before, op),
                };
                Command::Once {
                    request: RequestId { origin: 1, seq: u64::from(request % 4) },
                    command: Box::new(command),
                }
            }
            Op::Snapshot => unreachable!("handled in batch()"),
        }
    }
}
