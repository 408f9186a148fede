//! Layer-1 tests of the state machine (STYLE §5): feed commands, assert the
//! exact outcomes and the exact state, in the style of openraft's engine
//! tests. Property tests at the bottom run random command sequences and check
//! the invariants listed at the top of `state.rs` after every batch.

use crate::command::{Batch, Command, DevicePart, PrekeyUpload, SendEnvelope};
use crate::ids::{ContentType, DeviceId, MessageId, ProviderId, RegistrationId, Seq, UserId};
use crate::keys::{Bundle, OneTimePrekey, SignedPrekey};
use crate::limits::Limits;
use crate::mailbox::{MailboxEntry, MailboxItem};
use crate::outcome::{Outcome, Rejection};
use crate::state::State;
use bytes::Bytes;

// ---------------------------------------------------------------- helpers

fn pid(s: &str) -> ProviderId {
    ProviderId::new(s)
}
fn uid(s: &str) -> UserId {
    UserId::new(s)
}
fn mid(s: &str) -> MessageId {
    MessageId::new(s)
}

/// Onboarded by `Harness::new`.
const PA: &str = "pa";
const PB: &str = "pb";
const PC: &str = "pc";
/// Never onboarded.
const PX: &str = "px";

const T0: u64 = 1_000_000;

fn identity(n: u8) -> Bytes {
    Bytes::from(vec![n; 33])
}

fn signed(key_id: u32) -> SignedPrekey {
    SignedPrekey {
        key_id,
        public_key: Bytes::from(format!("pub-{key_id}")),
        signature: Bytes::from(format!("sig-{key_id}")),
    }
}

fn one_time(key_id: u32) -> OneTimePrekey {
    OneTimePrekey { key_id, public_key: Bytes::from(format!("otk-{key_id}")) }
}

/// An upload: identity key `ik`, optional signed prekey id, EC one-time ids,
/// Kyber one-time ids, optional Kyber last-resort id.
fn upload(ik: u8, spk: Option<u32>, ec: &[u32], kyber: &[u32], last_resort: Option<u32>) -> PrekeyUpload {
    PrekeyUpload {
        identity_key: identity(ik),
        signed_prekey: spk.map(signed),
        one_time: ec.iter().copied().map(one_time).collect(),
        kyber_one_time: kyber.iter().copied().map(signed).collect(),
        kyber_last_resort: last_resort.map(signed),
    }
}

fn envelope(
    sender: &str,
    message_id: &str,
    recipient: &str,
    parts: &[(DeviceId, RegistrationId)],
    ttl_ms: u64,
) -> SendEnvelope {
    SendEnvelope {
        sender: pid(sender),
        sender_user: None,
        sender_device: None,
        traceparent: None,
        message_id: mid(message_id),
        recipient: uid(recipient),
        content_type: ContentType::Message,
        ttl_ms,
        parts: parts
            .iter()
            .map(|&(device, registration_id)| DevicePart {
                device,
                registration_id,
                message_type: 1,
                ciphertext: crate::Blob::from(format!("{message_id}->{recipient}.{device}")),
            })
            .collect(),
    }
}

fn send(sender: &str, message_id: &str, recipient: &str, parts: &[(DeviceId, RegistrationId)], ttl_ms: u64) -> Command {
    Command::Send(envelope(sender, message_id, recipient, parts, ttl_ms))
}

fn register_user(provider: &str, user: &str) -> Command {
    Command::RegisterUser { provider: pid(provider), user: uid(user) }
}
fn deregister_user(provider: &str, user: &str) -> Command {
    Command::DeregisterUser { provider: pid(provider), user: uid(user) }
}
fn register_device(provider: &str, user: &str, device: DeviceId, registration_id: RegistrationId) -> Command {
    Command::RegisterDevice { provider: pid(provider), user: uid(user), device, registration_id }
}
fn remove_device(provider: &str, user: &str, device: DeviceId) -> Command {
    Command::RemoveDevice { provider: pid(provider), user: uid(user), device }
}
fn upload_cmd(provider: &str, user: &str, device: DeviceId, upload: PrekeyUpload) -> Command {
    Command::UploadPrekeys { provider: pid(provider), user: uid(user), device, upload }
}
fn claim(requester: &str, user: &str, device: Option<DeviceId>) -> Command {
    Command::ClaimPrekeys { requester: pid(requester), user: uid(user), device }
}
fn ack(provider: &str, seqs: &[Seq]) -> Command {
    Command::Ack { provider: pid(provider), seqs: seqs.to_vec() }
}

fn sent(seq: Seq, accepted_at_ms: u64) -> Outcome {
    Outcome::Sent { seq, accepted_at_ms }
}

fn stored(one_time_remaining: u32, kyber_one_time_remaining: u32) -> Outcome {
    Outcome::KeysStored { one_time_remaining, kyber_one_time_remaining }
}

/// Drives a `State` one command per batch, each batch stamped one
/// millisecond after the previous one unless a test picks the stamp.
struct Harness {
    state: State,
    stamp: u64,
}

impl Harness {
    fn new() -> Self {
        Self::with_limits(Limits::default())
    }

    /// A fresh state with `pa`, `pb` and `pc` onboarded at `T0`.
    fn with_limits(limits: Limits) -> Self {
        let mut h = Harness { state: State::new(limits), stamp: T0 };
        let outs = h.batch_at(
            T0,
            vec![
                Command::AddProvider { provider: pid(PA) },
                Command::AddProvider { provider: pid(PB) },
                Command::AddProvider { provider: pid(PC) },
            ],
        );
        assert_eq!(outs, vec![Outcome::Done; 3]);
        h
    }

    /// One command in its own batch, one millisecond after the last one.
    fn apply(&mut self, cmd: Command) -> Outcome {
        self.at(self.stamp + 1, cmd)
    }

    /// One command in a batch stamped `stamp_ms`.
    fn at(&mut self, stamp_ms: u64, cmd: Command) -> Outcome {
        let mut outs = self.batch_at(stamp_ms, vec![cmd]);
        assert_eq!(outs.len(), 1);
        outs.pop().expect("one outcome")
    }

    fn batch_at(&mut self, stamp_ms: u64, commands: Vec<Command>) -> Vec<Outcome> {
        self.stamp = stamp_ms;
        self.state.apply_batch(&Batch { stamp_ms, commands })
    }

    /// Applies `cmd` at the current stamp (so the clock does not move),
    /// asserts it was rejected and that the state is exactly as before.
    fn reject_unchanged(&mut self, cmd: Command) -> Rejection {
        let before = self.state.clone();
        let out = self.at(self.stamp, cmd.clone());
        assert_eq!(self.state, before, "rejected command {cmd:?} changed the state");
        match out {
            Outcome::Rejected(r) => r,
            other => panic!("expected a rejection for {cmd:?}, got {other:?}"),
        }
    }

    fn ok(&mut self, cmd: Command) {
        let out = self.apply(cmd.clone());
        assert_eq!(out, Outcome::Done, "{cmd:?}");
    }

    /// Registers `user` for `provider` with the given (device, registration id)s.
    fn user(&mut self, provider: &str, user: &str, devices: &[(DeviceId, RegistrationId)]) {
        self.ok(register_user(provider, user));
        for &(d, r) in devices {
            self.ok(register_device(provider, user, d, r));
        }
    }

    fn entries(&self, provider: &str) -> Vec<MailboxEntry> {
        self.state
            .mailbox_from(&pid(provider), 0, usize::MAX)
            .into_iter()
            .map(std::sync::Arc::unwrap_or_clone)
            .collect()
    }

    fn seqs(&self, provider: &str) -> Vec<Seq> {
        self.entries(provider).iter().map(|e| e.seq).collect()
    }

    fn bundles(&mut self, cmd: Command) -> Vec<Bundle> {
        match self.apply(cmd.clone()) {
            Outcome::Bundles { bundles, .. } => bundles,
            other => panic!("expected bundles for {cmd:?}, got {other:?}"),
        }
    }
}

fn small_limits() -> Limits {
    Limits {
        max_devices_per_user: 2,
        max_one_time_prekeys_per_device: 4,
        max_mailbox_entries: 2,
        dedup_window_ms: 1_000,
        max_dedup_entries: 100,
        report_ttl_ms: 500,
        ..Limits::default()
    }
}

// ---------------------------------------------------------- registration

#[test]
fn register_user_and_reregister_by_owner_is_idempotent() {
    let mut h = Harness::new();
    assert_eq!(h.apply(register_user(PA, "alice")), Outcome::Done);
    let rec = h.state.user(&uid("alice")).expect("registered");
    assert_eq!(rec.provider, pid(PA));
    assert!(rec.devices.is_empty());

    h.ok(register_device(PA, "alice", 1, 11));
    let before = h.state.clone();
    assert_eq!(h.at(h.stamp, register_user(PA, "alice")), Outcome::Done);
    assert_eq!(h.state, before, "re-registering keeps the devices");
}

#[test]
fn register_user_taken_by_another_provider() {
    let mut h = Harness::new();
    h.user(PA, "alice", &[(1, 11)]);
    assert_eq!(h.reject_unchanged(register_user(PB, "alice")), Rejection::UserTaken { user: uid("alice") });
}

#[test]
fn provider_not_onboarded_is_rejected_for_every_acting_command() {
    let mut h = Harness::new();
    h.user(PA, "alice", &[(1, 11)]);
    let not_onboarded = Rejection::ProviderNotOnboarded { provider: pid(PX) };
    for cmd in [
        register_user(PX, "bob"),
        register_user(PX, "alice"),
        deregister_user(PX, "alice"),
        register_device(PX, "alice", 2, 22),
        remove_device(PX, "alice", 1),
        upload_cmd(PX, "alice", 1, upload(1, Some(1), &[], &[], None)),
        claim(PX, "alice", None),
        send(PX, "m1", "alice", &[(1, 11)], 1_000),
        ack(PX, &[0]),
    ] {
        assert_eq!(h.reject_unchanged(cmd), not_onboarded);
    }
    assert!(!h.state.is_onboarded(&pid(PX)));

    // Onboarding is idempotent and then the provider can act.
    assert_eq!(h.apply(Command::AddProvider { provider: pid(PX) }), Outcome::Done);
    assert_eq!(h.apply(Command::AddProvider { provider: pid(PX) }), Outcome::Done);
    assert!(h.state.is_onboarded(&pid(PX)));
    assert_eq!(h.apply(register_user(PX, "bob")), Outcome::Done);
}

#[test]
fn another_provider_is_not_owner() {
    let mut h = Harness::new();
    h.user(PA, "alice", &[(1, 11)]);
    h.apply(upload_cmd(PA, "alice", 1, upload(1, Some(1), &[1], &[], None)));
    let not_owner = Rejection::NotOwner { user: uid("alice") };
    for cmd in [
        deregister_user(PB, "alice"),
        register_device(PB, "alice", 2, 22),
        register_device(PB, "alice", 1, 99),
        remove_device(PB, "alice", 1),
        upload_cmd(PB, "alice", 1, upload(2, Some(2), &[2], &[], None)),
    ] {
        assert_eq!(h.reject_unchanged(cmd), not_owner);
    }
}

#[test]
fn unknown_user_is_not_found() {
    let mut h = Harness::new();
    let not_found = Rejection::UserNotFound { user: uid("nobody") };
    for cmd in [
        deregister_user(PA, "nobody"),
        register_device(PA, "nobody", 1, 1),
        remove_device(PA, "nobody", 1),
        upload_cmd(PA, "nobody", 1, upload(1, Some(1), &[], &[], None)),
        claim(PA, "nobody", None),
        send(PA, "m1", "nobody", &[(1, 1)], 1_000),
    ] {
        assert_eq!(h.reject_unchanged(cmd), not_found);
    }
}

#[test]
fn deregister_frees_the_user_id() {
    let mut h = Harness::new();
    h.user(PA, "alice", &[(1, 11)]);
    assert_eq!(h.apply(deregister_user(PA, "alice")), Outcome::Done);
    assert!(h.state.user(&uid("alice")).is_none());
    assert_eq!(h.reject_unchanged(deregister_user(PA, "alice")), Rejection::UserNotFound { user: uid("alice") });
    assert_eq!(h.apply(register_user(PB, "alice")), Outcome::Done);
    assert_eq!(h.state.user(&uid("alice")).expect("registered").provider, pid(PB));
}

#[test]
fn too_many_devices_at_the_limit() {
    let mut h = Harness::with_limits(Limits { max_devices_per_user: 2, ..Limits::default() });
    h.user(PA, "alice", &[(1, 11), (2, 22)]);
    assert_eq!(h.reject_unchanged(register_device(PA, "alice", 3, 33)), Rejection::TooManyDevices { limit: 2 });
    // An existing device does not count as new, whatever its registration id.
    assert_eq!(h.apply(register_device(PA, "alice", 2, 22)), Outcome::Done);
    assert_eq!(h.apply(register_device(PA, "alice", 2, 23)), Outcome::Done);
    // Removing one makes room.
    assert_eq!(h.apply(remove_device(PA, "alice", 1)), Outcome::Done);
    assert_eq!(h.apply(register_device(PA, "alice", 3, 33)), Outcome::Done);
    let devices: Vec<(DeviceId, RegistrationId)> =
        h.state.user(&uid("alice")).expect("user").devices.iter().map(|(d, r)| (*d, r.registration_id)).collect();
    assert_eq!(devices, vec![(2, 23), (3, 33)]);
}

#[test]
fn remove_unknown_device_is_device_not_found() {
    let mut h = Harness::new();
    h.user(PA, "alice", &[(1, 11)]);
    assert_eq!(
        h.reject_unchanged(remove_device(PA, "alice", 2)),
        Rejection::DeviceNotFound { user: uid("alice"), device: 2 }
    );
}

#[test]
fn device_reregistration_with_new_registration_id_drops_its_keys() {
    let mut h = Harness::new();
    h.user(PA, "alice", &[(1, 11), (2, 22)]);
    assert_eq!(h.apply(upload_cmd(PA, "alice", 1, upload(1, Some(100), &[1, 2], &[], None))), stored(2, 0));
    assert_eq!(h.apply(upload_cmd(PA, "alice", 2, upload(2, Some(200), &[3], &[], None))), stored(1, 0));

    // Same registration id: nothing changes.
    let before = h.state.clone();
    assert_eq!(h.at(h.stamp, register_device(PA, "alice", 1, 11)), Outcome::Done);
    assert_eq!(h.state, before);

    // Reinstalled: the old keys are gone, the other device keeps its own.
    assert_eq!(h.apply(register_device(PA, "alice", 1, 12)), Outcome::Done);
    let rec = h.state.user(&uid("alice")).expect("user");
    assert_eq!(rec.devices[&1].registration_id, 12);
    assert_eq!(rec.devices[&1].keys, None);
    assert!(rec.devices[&2].keys.is_some());
    assert_eq!(h.reject_unchanged(claim(PB, "alice", Some(1))), Rejection::NoKeys { user: uid("alice") });
    let bundles = h.bundles(claim(PB, "alice", None));
    assert_eq!(bundles.iter().map(|b| b.device).collect::<Vec<_>>(), vec![2]);
    // The new installation must upload a signed prekey again.
    assert_eq!(
        h.reject_unchanged(upload_cmd(PA, "alice", 1, upload(1, None, &[9], &[], None))),
        Rejection::SignedPrekeyRequired
    );
}

// --------------------------------------------------------------- prekeys

#[test]
fn first_upload_requires_a_signed_prekey() {
    let mut h = Harness::new();
    h.user(PA, "alice", &[(1, 11)]);
    assert_eq!(
        h.reject_unchanged(upload_cmd(PA, "alice", 1, upload(1, None, &[1, 2], &[10], Some(99)))),
        Rejection::SignedPrekeyRequired
    );
    assert_eq!(
        h.reject_unchanged(upload_cmd(PA, "alice", 7, upload(1, Some(1), &[], &[], None))),
        Rejection::DeviceNotFound { user: uid("alice"), device: 7 }
    );
}

#[test]
fn upload_then_claim_pops_keys_fifo_and_falls_back_to_last_resort() {
    let mut h = Harness::new();
    h.user(PA, "alice", &[(1, 11)]);
    assert_eq!(h.apply(upload_cmd(PA, "alice", 1, upload(1, Some(100), &[1, 2], &[10, 11], Some(99)))), stored(2, 2));
    // A later upload with the same identity key needs no signed prekey and appends.
    assert_eq!(h.apply(upload_cmd(PA, "alice", 1, upload(1, None, &[3], &[], None))), stored(3, 2));

    let bundle = |one_time_id: Option<u32>, kyber_id: u32, last_resort: bool| Bundle {
        device: 1,
        registration_id: 11,
        identity_key: identity(1),
        signed_prekey: signed(100),
        one_time: one_time_id.map(one_time),
        kyber: Some(signed(kyber_id)),
        kyber_is_last_resort: last_resort,
    };
    let claim_one = |h: &mut Harness| h.apply(claim(PB, "alice", None));
    let answer = |b: Bundle| Outcome::Bundles { provider: pid(PA), bundles: vec![b] };

    assert_eq!(claim_one(&mut h), answer(bundle(Some(1), 10, false)));
    assert_eq!(claim_one(&mut h), answer(bundle(Some(2), 11, false)));
    assert_eq!(claim_one(&mut h), answer(bundle(Some(3), 99, true)));
    // EC stock empty: the bundle has no one-time key.
    let out = claim_one(&mut h);
    assert_eq!(out, answer(bundle(None, 99, true)));
    let Outcome::Bundles { bundles, .. } = out else { unreachable!() };
    assert!(bundles[0].one_time_exhausted());

    let keys = h.state.user(&uid("alice")).expect("user").devices[&1].keys.clone().expect("keys");
    assert!(keys.one_time.is_empty());
    assert!(keys.kyber_one_time.is_empty());
    assert_eq!(keys.kyber_last_resort, Some(signed(99)));
}

#[test]
fn claim_without_any_kyber_key_has_no_kyber() {
    let mut h = Harness::new();
    h.user(PA, "alice", &[(1, 11)]);
    h.apply(upload_cmd(PA, "alice", 1, upload(1, Some(100), &[], &[], None)));
    assert_eq!(
        h.apply(claim(PA, "alice", None)),
        Outcome::Bundles {
            provider: pid(PA),
            bundles: vec![Bundle {
                device: 1,
                registration_id: 11,
                identity_key: identity(1),
                signed_prekey: signed(100),
                one_time: None,
                kyber: None,
                kyber_is_last_resort: false,
            }],
        }
    );
}

#[test]
fn new_signed_prekey_with_same_identity_keeps_the_stock() {
    let mut h = Harness::new();
    h.user(PA, "alice", &[(1, 11)]);
    h.apply(upload_cmd(PA, "alice", 1, upload(1, Some(100), &[1], &[10], Some(99))));
    assert_eq!(h.apply(upload_cmd(PA, "alice", 1, upload(1, Some(101), &[], &[], Some(98)))), stored(1, 1));
    let b = h.bundles(claim(PB, "alice", Some(1)));
    assert_eq!(b[0].signed_prekey, signed(101));
    assert_eq!(b[0].one_time, Some(one_time(1)));
    assert_eq!(b[0].kyber, Some(signed(10)));
    assert_eq!(
        h.state.user(&uid("alice")).expect("user").devices[&1].keys.as_ref().expect("keys").kyber_last_resort,
        Some(signed(98))
    );
}

#[test]
fn identity_key_change_resets_the_stock() {
    let mut h = Harness::new();
    h.user(PA, "alice", &[(1, 11)]);
    h.apply(upload_cmd(PA, "alice", 1, upload(1, Some(100), &[1, 2], &[10], Some(99))));

    // A new identity without a signed prekey is refused.
    assert_eq!(
        h.reject_unchanged(upload_cmd(PA, "alice", 1, upload(2, None, &[5], &[], None))),
        Rejection::SignedPrekeyRequired
    );
    // With one, the old stock (one-time, Kyber, last resort) is gone and
    // the old key ids may be reused.
    assert_eq!(h.apply(upload_cmd(PA, "alice", 1, upload(2, Some(200), &[1], &[], None))), stored(1, 0));
    let b = h.bundles(claim(PB, "alice", None));
    assert_eq!(
        b,
        vec![Bundle {
            device: 1,
            registration_id: 11,
            identity_key: identity(2),
            signed_prekey: signed(200),
            one_time: Some(one_time(1)),
            kyber: None,
            kyber_is_last_resort: false,
        }]
    );
}

#[test]
fn prekey_stock_full_rejects_the_whole_upload() {
    let mut h = Harness::with_limits(Limits { max_one_time_prekeys_per_device: 4, ..Limits::default() });
    h.user(PA, "alice", &[(1, 11)]);
    assert_eq!(
        h.apply(upload_cmd(PA, "alice", 1, upload(1, Some(100), &[1, 2, 3], &[10, 11, 12], None))),
        stored(3, 3)
    );

    // EC over the limit: nothing of the upload is kept, not even the new signed
    // prekey, last resort or the Kyber keys that would have fit.
    assert_eq!(
        h.reject_unchanged(upload_cmd(PA, "alice", 1, upload(1, Some(101), &[4, 5], &[13], Some(99)))),
        Rejection::PrekeyStockFull { limit: 4, actual: 5 }
    );
    // Kyber over the limit.
    assert_eq!(
        h.reject_unchanged(upload_cmd(PA, "alice", 1, upload(1, None, &[4], &[13, 14], None))),
        Rejection::PrekeyStockFull { limit: 4, actual: 5 }
    );
    // A first upload over the limit.
    h.ok(register_device(PA, "alice", 2, 22));
    assert_eq!(
        h.reject_unchanged(upload_cmd(PA, "alice", 2, upload(1, Some(1), &[1, 2, 3, 4, 5], &[], None))),
        Rejection::PrekeyStockFull { limit: 4, actual: 5 }
    );
    // Exactly at the limit is fine.
    assert_eq!(h.apply(upload_cmd(PA, "alice", 1, upload(1, None, &[4], &[13], None))), stored(4, 4));
}

#[test]
fn duplicate_prekey_id_rejects_the_whole_upload() {
    let mut h = Harness::new();
    h.user(PA, "alice", &[(1, 11)]);
    h.apply(upload_cmd(PA, "alice", 1, upload(1, Some(100), &[1, 2], &[10], None)));

    // Already in the stock; key 5 before it must not be kept either.
    assert_eq!(
        h.reject_unchanged(upload_cmd(PA, "alice", 1, upload(1, Some(101), &[5, 2], &[], Some(99)))),
        Rejection::DuplicatePrekeyId { key_id: 2 }
    );
    // Twice in the same upload.
    assert_eq!(
        h.reject_unchanged(upload_cmd(PA, "alice", 1, upload(1, None, &[7, 7], &[], None))),
        Rejection::DuplicatePrekeyId { key_id: 7 }
    );
    // Kyber ids are checked against the Kyber stock.
    assert_eq!(
        h.reject_unchanged(upload_cmd(PA, "alice", 1, upload(1, None, &[3], &[11, 10], None))),
        Rejection::DuplicatePrekeyId { key_id: 10 }
    );
    // EC and Kyber id spaces are separate.
    assert_eq!(h.apply(upload_cmd(PA, "alice", 1, upload(1, None, &[10], &[1], None))), stored(3, 2));
    // A claimed key id may be uploaded again (it left the stock).
    h.bundles(claim(PB, "alice", None));
    assert_eq!(h.apply(upload_cmd(PA, "alice", 1, upload(1, None, &[1], &[], None))), stored(3, 1));
}

#[test]
fn no_keys_when_no_device_has_keys() {
    let mut h = Harness::new();
    h.user(PA, "alice", &[(1, 11), (2, 22)]);
    h.user(PA, "bob", &[]);
    assert_eq!(h.reject_unchanged(claim(PB, "alice", None)), Rejection::NoKeys { user: uid("alice") });
    assert_eq!(h.reject_unchanged(claim(PB, "alice", Some(2))), Rejection::NoKeys { user: uid("alice") });
    assert_eq!(h.reject_unchanged(claim(PB, "bob", None)), Rejection::NoKeys { user: uid("bob") });
    assert_eq!(
        h.reject_unchanged(claim(PB, "alice", Some(3))),
        Rejection::DeviceNotFound { user: uid("alice"), device: 3 }
    );
}

#[test]
fn claim_all_devices_or_one_specific_device() {
    let mut h = Harness::new();
    h.user(PA, "alice", &[(1, 11), (2, 22), (3, 33)]);
    h.apply(upload_cmd(PA, "alice", 3, upload(3, Some(300), &[31, 32], &[], None)));
    h.apply(upload_cmd(PA, "alice", 1, upload(1, Some(100), &[11, 12], &[], None)));
    // Device 2 has no keys.

    let b = h.bundles(claim(PC, "alice", Some(3)));
    assert_eq!(b.len(), 1);
    assert_eq!((b[0].device, b[0].registration_id, b[0].one_time.clone()), (3, 33, Some(one_time(31))));
    let rec = h.state.user(&uid("alice")).expect("user");
    assert_eq!(rec.devices[&1].keys.as_ref().expect("keys").one_time.len(), 2, "device 1 untouched");

    // All devices with keys, in device order, one key each.
    let b = h.bundles(claim(PB, "alice", None));
    let got: Vec<_> = b.iter().map(|b| (b.device, b.one_time.as_ref().map(|k| k.key_id))).collect();
    assert_eq!(got, vec![(1, Some(11)), (3, Some(32))]);

    // The owner can claim its own user's keys too; the answer names the owner.
    assert!(matches!(h.apply(claim(PA, "alice", None)), Outcome::Bundles { provider, .. } if provider == pid(PA)));
}

// ------------------------------------------------------------------ send

#[test]
fn device_mismatch_lists_missing_extra_and_stale_sorted() {
    let mut h = Harness::new();
    h.user(PB, "bob", &[(1, 11), (2, 22), (3, 33), (5, 55)]);
    assert_eq!(
        h.reject_unchanged(send(PA, "m1", "bob", &[(7, 1), (5, 56), (1, 11), (4, 1), (3, 9)], 1_000)),
        Rejection::DeviceMismatch { missing: vec![2], extra: vec![4, 7], stale: vec![3, 5] }
    );
    assert_eq!(
        h.reject_unchanged(send(PA, "m1", "bob", &[], 1_000)),
        Rejection::DeviceMismatch { missing: vec![1, 2, 3, 5], extra: vec![], stale: vec![] }
    );
    // A user without devices cannot receive: said plainly, not as a mismatch.
    h.user(PB, "carol", &[]);
    assert_eq!(
        h.reject_unchanged(send(PA, "m1", "carol", &[], 1_000)),
        Rejection::NoDevices { user: UserId::new("carol") }
    );
    assert_eq!(
        h.reject_unchanged(send(PA, "m1", "carol", &[(1, 1)], 1_000)),
        Rejection::NoDevices { user: UserId::new("carol") }
    );
    // A rejected send is not remembered: the same id is then accepted.
    assert_eq!(h.state.dedup_answer(&pid(PA), &mid("m1")), None);
    let stamp = h.stamp + 1;
    assert_eq!(h.at(stamp, send(PA, "m1", "bob", &[(1, 11), (2, 22), (3, 33), (5, 55)], 1_000)), sent(0, stamp));
}

#[test]
fn accepted_sends_get_consecutive_seqs_per_recipient_provider() {
    let mut h = Harness::new();
    h.user(PB, "bob", &[(1, 11)]);
    h.user(PB, "bert", &[(1, 12), (2, 13)]);
    h.user(PC, "carol", &[(1, 14)]);
    h.user(PA, "alice", &[(1, 15)]);

    let s = T0 + 100;
    let outs = h.batch_at(
        s,
        vec![
            send(PA, "m1", "bob", &[(1, 11)], 1_000),
            send(PA, "m2", "bert", &[(1, 12), (2, 13)], 1_000),
            send(PA, "m3", "carol", &[(1, 14)], 1_000),
            send(PC, "m1", "bob", &[(1, 11)], 1_000),
            // A provider may send to its own user.
            send(PA, "m4", "alice", &[(1, 15)], 1_000),
        ],
    );
    assert_eq!(outs, vec![sent(0, s), sent(1, s), sent(0, s), sent(2, s), sent(0, s)]);
    assert_eq!(h.at(s + 5, send(PB, "m9", "bob", &[(1, 11)], 1_000)), sent(3, s + 5));

    let bob_box = h.entries(PB);
    assert_eq!(bob_box.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![0, 1, 2, 3]);
    assert_eq!(
        bob_box[0],
        MailboxEntry {
            seq: 0,
            accepted_at_ms: s,
            expires_at_ms: s + 1_000,
            item: MailboxItem::Envelope(envelope(PA, "m1", "bob", &[(1, 11)], 1_000)),
        }
    );
    assert_eq!(h.seqs(PC), vec![0]);
    assert_eq!(h.seqs(PA), vec![0]);
    assert_eq!(h.state.mailbox_depth(&pid(PB)), 4);
    assert_eq!(h.state.mailbox_depth(&pid(PX)), 0);
    // Paging.
    assert_eq!(h.state.mailbox_from(&pid(PB), 1, 2).iter().map(|e| e.seq).collect::<Vec<_>>(), vec![1, 2]);
}

#[test]
fn retried_send_gets_the_first_answer_and_is_stored_once() {
    let mut h = Harness::new();
    h.user(PB, "bob", &[(1, 11)]);
    h.user(PC, "carol", &[(1, 14)]);
    let s = T0 + 10;
    assert_eq!(h.at(s, send(PA, "m1", "bob", &[(1, 11)], 10_000)), sent(0, s));
    let after_first = h.state.clone();

    // Same batch, a later batch, even a retry whose body differs (different
    // recipient, stale device list): the key is (sender provider, message id).
    let outs =
        h.batch_at(s + 100, vec![send(PA, "m1", "bob", &[(1, 11)], 10_000), send(PA, "m1", "bob", &[(1, 11)], 10_000)]);
    assert_eq!(outs, vec![sent(0, s), sent(0, s)]);
    assert_eq!(h.apply(send(PA, "m1", "carol", &[(9, 9)], 10_000)), sent(0, s));
    assert_eq!(h.seqs(PB), vec![0]);
    assert_eq!(h.seqs(PC), Vec::<Seq>::new());
    assert_eq!(h.state.mailboxes, after_first.mailboxes);
    assert_eq!(h.state.dedup_answer(&pid(PA), &mid("m1")), Some(sent(0, s)));

    // After the recipient acked it, a retry still gets the first answer and
    // does not store it again.
    assert_eq!(h.apply(ack(PB, &[0])), Outcome::Acked { removed: 1, unknown: 0 });
    assert_eq!(h.apply(send(PA, "m1", "bob", &[(1, 11)], 10_000)), sent(0, s));
    assert!(h.entries(PB).is_empty());
    assert_eq!(h.state.mailboxes[&pid(PB)].next_seq, 1);
}

#[test]
fn same_message_id_from_another_sender_is_another_message() {
    let mut h = Harness::new();
    h.user(PB, "bob", &[(1, 11)]);
    let s = h.stamp + 1;
    let outs = h.batch_at(s, vec![send(PA, "m1", "bob", &[(1, 11)], 1_000), send(PC, "m1", "bob", &[(1, 11)], 1_000)]);
    assert_eq!(outs, vec![sent(0, s), sent(1, s)]);
    let senders: Vec<ProviderId> = h
        .entries(PB)
        .into_iter()
        .map(|e| match e.item {
            MailboxItem::Envelope(env) => env.sender,
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(senders, vec![pid(PA), pid(PC)]);
}

#[test]
fn mailbox_full_at_max_entries() {
    let mut h = Harness::with_limits(Limits { max_mailbox_entries: 2, ..Limits::default() });
    h.user(PB, "bob", &[(1, 11)]);
    h.user(PC, "carol", &[(1, 14)]);
    let s = h.stamp + 1;
    assert_eq!(h.at(s, send(PA, "m1", "bob", &[(1, 11)], 1_000)), sent(0, s));
    assert_eq!(h.at(s, send(PA, "m2", "bob", &[(1, 11)], 1_000)), sent(1, s));
    assert_eq!(
        h.reject_unchanged(send(PA, "m3", "bob", &[(1, 11)], 1_000)),
        Rejection::MailboxFull { provider: pid(PB), limit: 2 }
    );
    // Another provider's mailbox is independent; a retry of an accepted send
    // is answered even when the mailbox is full.
    assert_eq!(h.at(s, send(PA, "m3", "carol", &[(1, 14)], 1_000)), sent(0, s));
    assert_eq!(h.at(s, send(PA, "m1", "bob", &[(1, 11)], 1_000)), sent(0, s));
    // Acking makes room; the rejected id was not remembered.
    assert_eq!(h.apply(ack(PB, &[0])), Outcome::Acked { removed: 1, unknown: 0 });
    let s = h.stamp + 1;
    assert_eq!(h.at(s, send(PC, "m3", "bob", &[(1, 11)], 1_000)), sent(2, s));
}

#[test]
fn mailbox_full_with_zero_limit_does_not_create_a_mailbox() {
    // Regression: the mailbox used to be created (empty) before the check,
    // so a rejected send changed the state.
    let mut h = Harness::with_limits(Limits { max_mailbox_entries: 0, ..Limits::default() });
    h.user(PB, "bob", &[(1, 11)]);
    assert_eq!(
        h.reject_unchanged(send(PA, "m1", "bob", &[(1, 11)], 1_000)),
        Rejection::MailboxFull { provider: pid(PB), limit: 0 }
    );
    assert!(h.state.mailboxes.is_empty());
}

// ------------------------------------------------------------------- ack

#[test]
fn ack_removes_exactly_the_named_seqs() {
    let mut h = Harness::new();
    h.user(PB, "bob", &[(1, 11)]);
    for i in 0..5 {
        h.apply(send(PA, &format!("m{i}"), "bob", &[(1, 11)], 10_000));
    }
    assert_eq!(h.seqs(PB), vec![0, 1, 2, 3, 4]);
    // Unknown and repeated seqs are counted, not errors.
    assert_eq!(h.apply(ack(PB, &[1, 3, 99, 3])), Outcome::Acked { removed: 2, unknown: 2 });
    assert_eq!(h.seqs(PB), vec![0, 2, 4]);
    assert_eq!(h.apply(ack(PB, &[])), Outcome::Acked { removed: 0, unknown: 0 });
    assert_eq!(h.apply(ack(PB, &[1])), Outcome::Acked { removed: 0, unknown: 1 });
    assert_eq!(h.seqs(PB), vec![0, 2, 4]);
    // Seqs are never reused after acks.
    let s = h.stamp + 1;
    assert_eq!(h.at(s, send(PA, "m9", "bob", &[(1, 11)], 10_000)), sent(5, s));
}

#[test]
fn ack_by_another_provider_does_not_touch_this_mailbox() {
    let mut h = Harness::new();
    h.user(PB, "bob", &[(1, 11)]);
    h.apply(send(PA, "m1", "bob", &[(1, 11)], 10_000));
    h.apply(send(PA, "m2", "bob", &[(1, 11)], 10_000));
    let before = h.state.mailboxes.clone();
    // pc has no mailbox: all unknown, and none is created.
    assert_eq!(h.apply(ack(PC, &[0, 1])), Outcome::Acked { removed: 0, unknown: 2 });
    // pa has a mailbox (its own), without these seqs.
    assert_eq!(h.state.mailboxes, before);
    h.user(PA, "alice", &[(1, 1)]);
    h.apply(send(PB, "r1", "alice", &[(1, 1)], 10_000));
    assert_eq!(h.apply(ack(PA, &[0, 1])), Outcome::Acked { removed: 1, unknown: 1 });
    assert_eq!(h.seqs(PB), vec![0, 1]);
}

#[test]
fn acked_entry_is_not_reported_as_expired() {
    let mut h = Harness::new();
    h.user(PB, "bob", &[(1, 11)]);
    h.at(T0 + 1, send(PA, "m1", "bob", &[(1, 11)], 100));
    h.at(T0 + 2, ack(PB, &[0]));
    h.at(T0 + 10_000, Command::AddProvider { provider: pid(PA) });
    assert!(!h.state.mailboxes.contains_key(&pid(PA)), "no expiry report for an acked entry");
    assert!(h.entries(PB).is_empty());
}

// ------------------------------------------------------------------- TTL

#[test]
fn entry_expires_when_a_later_stamp_reaches_its_expiry_and_the_sender_is_told() {
    let limits = Limits { report_ttl_ms: 5_000, ..Limits::default() };
    let mut h = Harness::with_limits(limits);
    h.user(PB, "bob", &[(1, 11)]);
    let s = T0 + 10;
    assert_eq!(h.at(s, send(PA, "m1", "bob", &[(1, 11)], 100)), sent(0, s));
    assert_eq!(h.at(s, send(PA, "m2", "bob", &[(1, 11)], 200)), sent(1, s));

    // One millisecond before: still there.
    h.at(s + 99, ack(PB, &[]));
    assert_eq!(h.seqs(PB), vec![0, 1]);
    assert!(h.entries(PA).is_empty());

    // At expiry (clock >= expires_at): removed before the batch's commands
    // run, so an ack in that batch finds nothing.
    assert_eq!(h.at(s + 100, ack(PB, &[0])), Outcome::Acked { removed: 0, unknown: 1 });
    assert_eq!(h.seqs(PB), vec![1]);
    assert_eq!(
        h.entries(PA),
        vec![MailboxEntry {
            seq: 0,
            accepted_at_ms: s + 100,
            expires_at_ms: s + 100 + 5_000,
            item: MailboxItem::Expired { message_id: mid("m1"), recipient: uid("bob"), recipient_provider: pid(PB) },
        }]
    );

    // A stamp far in the future expires the rest, in one batch.
    h.at(s + 3_000, ack(PB, &[]));
    assert!(h.entries(PB).is_empty());
    assert_eq!(h.seqs(PA), vec![0, 1]);

    // Reports expire silently after report_ttl_ms (no report of a report).
    h.at(s + 100 + 5_000, ack(PB, &[]));
    assert_eq!(h.seqs(PA), vec![1]);
    h.at(s + 3_000 + 5_000, ack(PB, &[]));
    assert!(h.entries(PA).is_empty());
    assert!(h.entries(PB).is_empty());
    assert_eq!(h.state.mailboxes[&pid(PA)].next_seq, 2);
}

#[test]
fn a_stamp_that_goes_backwards_does_not_unexpire() {
    let mut h = Harness::new();
    h.user(PB, "bob", &[(1, 11)]);
    let s = T0 + 10;
    h.at(s, send(PA, "m1", "bob", &[(1, 11)], 100));
    h.at(s + 500, ack(PB, &[]));
    assert_eq!(h.state.clock_ms, s + 500);
    assert!(h.entries(PB).is_empty());
    let expired = h.state.clone();

    // A leader with a slow clock: the clock stays at the max, nothing returns.
    h.at(s, ack(PB, &[]));
    assert_eq!(h.state, expired);
    // A send stamped in the past is accepted at the replicated clock.
    assert_eq!(h.at(s + 1, send(PA, "m2", "bob", &[(1, 11)], 100)), sent(1, s + 500));
    assert_eq!(h.entries(PB)[0].expires_at_ms, s + 600);
}

#[test]
fn zero_ttl_expires_at_the_next_batch() {
    let mut h = Harness::new();
    h.user(PB, "bob", &[(1, 11)]);
    let s = T0 + 10;
    let outs = h.batch_at(s, vec![send(PA, "m1", "bob", &[(1, 11)], 0), ack(PB, &[])]);
    assert_eq!(outs, vec![sent(0, s), Outcome::Acked { removed: 0, unknown: 0 }]);
    assert_eq!(h.seqs(PB), vec![0], "visible until the next batch");
    // Even at the same stamp.
    h.at(s, ack(PB, &[]));
    assert!(h.entries(PB).is_empty());
    assert_eq!(h.entries(PA).len(), 1);
}

#[test]
fn dedup_answer_outlives_expiry_within_the_window() {
    // Contract: within the dedup window a retry is answered with the first
    // answer even after the envelope expired (the sender got an Expired
    // report); it is not stored again.
    let mut h = Harness::new();
    h.user(PB, "bob", &[(1, 11)]);
    let s = T0 + 10;
    h.at(s, send(PA, "m1", "bob", &[(1, 11)], 100));
    assert_eq!(h.at(s + 1_000, send(PA, "m1", "bob", &[(1, 11)], 100)), sent(0, s));
    assert!(h.entries(PB).is_empty());
    assert_eq!(h.entries(PA).len(), 1);
}

#[test]
fn dedup_answers_are_pruned_after_the_window_and_the_id_is_then_new() {
    // Contract: dedup holds for dedup_window_ms (inclusive) after acceptance.
    // A retry arriving later is a new message: stored again with a new seq.
    let limits = Limits { dedup_window_ms: 1_000, ..Limits::default() };
    let mut h = Harness::with_limits(limits);
    h.user(PB, "bob", &[(1, 11)]);
    let s = T0 + 10;
    assert_eq!(h.at(s, send(PA, "m1", "bob", &[(1, 11)], 1_000_000)), sent(0, s));
    assert_eq!(h.at(s + 1_000, send(PA, "m1", "bob", &[(1, 11)], 1_000_000)), sent(0, s));
    assert_eq!(h.seqs(PB), vec![0]);

    h.at(s + 1_001, ack(PB, &[]));
    assert_eq!(h.state.dedup_answer(&pid(PA), &mid("m1")), None);
    assert_eq!(h.at(s + 1_002, send(PA, "m1", "bob", &[(1, 11)], 1_000_000)), sent(1, s + 1_002));
    assert_eq!(h.seqs(PB), vec![0, 1]);
    // The new answer is the one remembered now.
    assert_eq!(h.at(s + 1_003, send(PA, "m1", "bob", &[(1, 11)], 1_000_000)), sent(1, s + 1_002));
}

#[test]
fn dedup_keeps_at_most_max_entries_oldest_first() {
    // Pruning happens at the start of a batch, so a batch may briefly hold
    // more than max_dedup_entries answers.
    let limits = Limits { max_dedup_entries: 2, ..Limits::default() };
    let mut h = Harness::with_limits(limits);
    h.user(PB, "bob", &[(1, 11)]);
    let s = T0 + 10;
    let outs = h.batch_at(
        s,
        vec![
            send(PA, "m1", "bob", &[(1, 11)], 1_000_000),
            send(PA, "m2", "bob", &[(1, 11)], 1_000_000),
            send(PA, "m3", "bob", &[(1, 11)], 1_000_000),
        ],
    );
    assert_eq!(outs, vec![sent(0, s), sent(1, s), sent(2, s)]);
    assert!(h.state.dedup_answer(&pid(PA), &mid("m1")).is_some());
    let outs = h.batch_at(
        s + 1,
        vec![send(PA, "m3", "bob", &[(1, 11)], 1_000_000), send(PA, "m1", "bob", &[(1, 11)], 1_000_000)],
    );
    assert_eq!(outs, vec![sent(2, s), sent(3, s + 1)]);
}

// -------------------------------------------------------------- limits

#[test]
fn set_limits_replaces_the_replicated_limits() {
    let mut h = Harness::new();
    h.user(PA, "alice", &[(1, 1), (2, 2)]);
    let limits = Limits { max_devices_per_user: 1, ..Limits::default() };
    assert_eq!(h.apply(Command::SetLimits { limits: limits.clone() }), Outcome::Done);
    assert_eq!(h.state.limits, limits);
    // Existing devices stay; no new ones.
    assert_eq!(h.reject_unchanged(register_device(PA, "alice", 3, 3)), Rejection::TooManyDevices { limit: 1 });
    assert_eq!(h.state.user(&uid("alice")).expect("user").devices.len(), 2);
}

// ---------------------------------------------------------- determinism

/// A fixed scenario touching every command kind.
fn scenario() -> Vec<Batch> {
    let mut batches = vec![Batch {
        stamp_ms: T0,
        commands: vec![
            Command::AddProvider { provider: pid(PA) },
            Command::AddProvider { provider: pid(PB) },
            Command::SetLimits { limits: small_limits() },
            register_user(PA, "alice"),
            register_user(PB, "bob"),
            register_device(PA, "alice", 1, 1),
            register_device(PB, "bob", 1, 2),
            register_device(PB, "bob", 2, 3),
            upload_cmd(PB, "bob", 1, upload(1, Some(1), &[1, 2], &[3], Some(4))),
        ],
    }];
    for i in 0..20u64 {
        batches.push(Batch {
            stamp_ms: T0 + i * 97 - (i % 3) * 150,
            commands: vec![
                send(PA, &format!("m{}", i % 4), "bob", &[(1, 2), (2, 3)], 100 + i * 50),
                send(PB, &format!("m{i}"), "alice", &[(1, 1)], 300),
                claim(PA, "bob", None),
                ack(PB, &[i.saturating_sub(2)]),
                upload_cmd(PB, "bob", 1, upload(1, None, &[100 + i as u32], &[], None)),
            ],
        });
    }
    batches
}

#[test]
fn same_batches_give_the_same_state_outcomes_and_bytes() {
    let (mut a, mut b) = (State::new(Limits::default()), State::new(Limits::default()));
    let mut outs_a = Vec::new();
    let mut outs_b = Vec::new();
    for batch in scenario() {
        outs_a.push(a.apply_batch(&batch));
        outs_b.push(b.apply_batch(&batch));
    }
    assert_eq!(outs_a, outs_b);
    assert_eq!(a, b);
    assert_eq!(bincode::serialize(&a).expect("serialize"), bincode::serialize(&b).expect("serialize"));
    // The scenario exercised acceptance, expiry and claims.
    let flat: Vec<&Outcome> = outs_a.iter().flatten().collect();
    assert!(flat.iter().any(|o| matches!(o, Outcome::Sent { .. })));
    assert!(flat.iter().any(|o| matches!(o, Outcome::Bundles { .. })));
    assert!(
        a.mailboxes.values().flat_map(|m| m.entries.values()).any(|e| matches!(e.item, MailboxItem::Expired { .. }))
    );
}

#[test]
fn a_state_restored_from_a_snapshot_continues_identically() {
    let batches = scenario();
    let (head, tail) = batches.split_at(8);
    let mut live = State::new(Limits::default());
    for b in head {
        live.apply_batch(b);
    }
    let snapshot = bincode::serialize(&live).expect("serialize");
    let mut restored: State = bincode::deserialize(&snapshot).expect("deserialize");
    assert_eq!(restored, live);
    for b in tail {
        assert_eq!(live.apply_batch(b), restored.apply_batch(b));
    }
    assert_eq!(restored, live);
    assert_eq!(bincode::serialize(&live).expect("serialize"), bincode::serialize(&restored).expect("serialize"));
}

// ------------------------------------------------------------- properties

mod properties {
    use super::*;
    use proptest::prelude::*;
    use std::collections::{BTreeMap, BTreeSet};

    /// The last one is not onboarded at the start (it may be by `AddProvider`).
    /// User `u{i}` starts registered by provider `i % 3` with device 1.
    const PROVIDERS: [&str; 4] = [PA, PB, PC, PX];
    const USERS: [&str; 4] = ["u0", "u1", "u2", "u3"];
    const MESSAGE_IDS: u8 = 6;
    /// Small and huge TTLs, so some entries expire and some never do.
    const TTLS: [u64; 4] = [0, 1_000, 10_000, 1 << 40];
    /// A seq no mailbox reaches in a run.
    const UNKNOWN_SEQ: Seq = 1_000_000;

    fn limits() -> Limits {
        Limits {
            max_devices_per_user: 3,
            max_one_time_prekeys_per_device: 4,
            max_mailbox_entries: 6,
            // Every run stays well inside the window (< 40 batches × 3 s).
            dedup_window_ms: 24 * 3600 * 1000,
            max_dedup_entries: 1_000_000,
            report_ttl_ms: 5_000,
            ..Limits::default()
        }
    }

    #[derive(Clone, Debug)]
    enum Op {
        AddProvider {
            p: u8,
        },
        /// `as_home`: by the user's home provider (`u % 3`), else by `p`.
        RegisterUser {
            as_home: bool,
            p: u8,
            u: u8,
        },
        /// `as_owner`: by the current owner (if any), else by `p`.
        DeregisterUser {
            as_owner: bool,
            p: u8,
            u: u8,
        },
        RegisterDevice {
            as_owner: bool,
            p: u8,
            u: u8,
            d: u8,
            reg: u8,
        },
        RemoveDevice {
            as_owner: bool,
            p: u8,
            u: u8,
            d: u8,
        },
        Upload {
            as_owner: bool,
            p: u8,
            u: u8,
            d: u8,
            ik: u8,
            spk: bool,
            ec: u8,
            kyber: u8,
            last_resort: bool,
        },
        Claim {
            p: u8,
            u: u8,
            d: Option<u8>,
        },
        /// `exact`: address the recipient's devices as registered before the batch.
        Send {
            p: u8,
            u: u8,
            m: u8,
            ttl: u8,
            exact: bool,
            parts: Vec<(u8, u8)>,
        },
        /// Acks entries picked by index from the mailbox before the batch.
        Ack {
            p: u8,
            picks: Vec<u8>,
            unknown: bool,
        },
    }

    #[derive(Clone, Debug)]
    struct Plan {
        /// Stamp delta from the previous batch's stamp; may be negative.
        dt: i64,
        ops: Vec<Op>,
    }

    fn op() -> impl Strategy<Value = Op> {
        // Mostly onboarded providers; `px` only now and then.
        let p = prop_oneof![9 => 0u8..3, 1 => Just(3u8)];
        let u = 0u8..4;
        // Device 1 exists from the start; the others come and go.
        let d = prop_oneof![1 => Just(1u8), 2 => 1u8..5];
        let mostly = || prop::bool::weighted(0.85);
        prop_oneof![
            1 => p.clone().prop_map(|p| Op::AddProvider { p }),
            3 => (mostly(), p.clone(), u.clone()).prop_map(|(as_home, p, u)| Op::RegisterUser { as_home, p, u }),
            1 => (prop::bool::weighted(0.5), p.clone(), u.clone())
                .prop_map(|(as_owner, p, u)| Op::DeregisterUser { as_owner, p, u }),
            4 => (mostly(), p.clone(), u.clone(), d.clone(), 1u8..3)
                .prop_map(|(as_owner, p, u, d, reg)| Op::RegisterDevice { as_owner, p, u, d, reg }),
            1 => (mostly(), p.clone(), u.clone(), d.clone())
                .prop_map(|(as_owner, p, u, d)| Op::RemoveDevice { as_owner, p, u, d }),
            5 => (mostly(), p.clone(), u.clone(), d.clone(), 0u8..2, prop::bool::weighted(0.7), 0u8..4, 0u8..3, any::<bool>())
                .prop_map(|(as_owner, p, u, d, ik, spk, ec, kyber, last_resort)| Op::Upload {
                    as_owner, p, u, d, ik, spk, ec, kyber, last_resort
                }),
            4 => (p.clone(), u.clone(), prop::option::of(d.clone())).prop_map(|(p, u, d)| Op::Claim { p, u, d }),
            8 => (p.clone(), u.clone(), 0..MESSAGE_IDS, 0u8..4, mostly(), prop::collection::vec((d.clone(), 1u8..3), 0..3))
                .prop_map(|(p, u, m, ttl, exact, parts)| Op::Send { p, u, m, ttl, exact, parts }),
            4 => (p, prop::collection::vec(any::<u8>(), 0..4), prop::bool::weighted(0.2))
                .prop_map(|(p, picks, unknown)| Op::Ack { p, picks, unknown }),
        ]
    }

    fn plans() -> impl Strategy<Value = Vec<Plan>> {
        let plan = (-300i64..3_000, prop::collection::vec(op(), 1..5)).prop_map(|(dt, ops)| Plan { dt, ops });
        prop::collection::vec(plan, 1..40)
    }

    fn owner(state: &State, u: &str) -> Option<ProviderId> {
        state.user(&uid(u)).map(|r| r.provider.clone())
    }

    fn actor(state: &State, as_owner: bool, p: u8, u: &str) -> ProviderId {
        match owner(state, u) {
            Some(o) if as_owner => o,
            _ => pid(PROVIDERS[p as usize]),
        }
    }

    /// Turns an op into a command, looking at the state before the batch.
    /// One-time key ids come from `next_key_id`, so each id is uploaded once.
    fn command(state: &State, op: &Op, next_key_id: &mut u32) -> Command {
        let mut fresh = |n: u8| -> Vec<u32> {
            (0..n)
                .map(|_| {
                    *next_key_id += 1;
                    *next_key_id
                })
                .collect()
        };
        match op {
            Op::AddProvider { p } => Command::AddProvider { provider: pid(PROVIDERS[*p as usize]) },
            Op::RegisterUser { as_home, p, u } => {
                let provider = if *as_home { PROVIDERS[(*u % 3) as usize] } else { PROVIDERS[*p as usize] };
                register_user(provider, USERS[*u as usize])
            }
            Op::DeregisterUser { as_owner, p, u } => {
                let user = USERS[*u as usize];
                Command::DeregisterUser { provider: actor(state, *as_owner, *p, user), user: uid(user) }
            }
            Op::RegisterDevice { as_owner, p, u, d, reg } => {
                let user = USERS[*u as usize];
                Command::RegisterDevice {
                    provider: actor(state, *as_owner, *p, user),
                    user: uid(user),
                    device: DeviceId::from(*d),
                    registration_id: RegistrationId::from(*reg),
                }
            }
            Op::RemoveDevice { as_owner, p, u, d } => {
                let user = USERS[*u as usize];
                Command::RemoveDevice {
                    provider: actor(state, *as_owner, *p, user),
                    user: uid(user),
                    device: DeviceId::from(*d),
                }
            }
            Op::Upload { as_owner, p, u, d, ik, spk, ec, kyber, last_resort } => {
                let user = USERS[*u as usize];
                let spk_id = spk.then(|| fresh(1)[0]);
                let ec_ids = fresh(*ec);
                let kyber_ids = fresh(*kyber);
                let lr_id = last_resort.then(|| fresh(1)[0]);
                Command::UploadPrekeys {
                    provider: actor(state, *as_owner, *p, user),
                    user: uid(user),
                    device: DeviceId::from(*d),
                    upload: upload(*ik, spk_id, &ec_ids, &kyber_ids, lr_id),
                }
            }
            Op::Claim { p, u, d } => claim(PROVIDERS[*p as usize], USERS[*u as usize], d.map(DeviceId::from)),
            Op::Send { p, u, m, ttl, exact, parts } => {
                let user = USERS[*u as usize];
                let parts: Vec<(DeviceId, RegistrationId)> = match state.user(&uid(user)) {
                    Some(rec) if *exact => rec.devices.iter().map(|(d, r)| (*d, r.registration_id)).collect(),
                    _ => {
                        let unique: BTreeMap<DeviceId, RegistrationId> =
                            parts.iter().map(|&(d, r)| (DeviceId::from(d), RegistrationId::from(r))).collect();
                        unique.into_iter().collect()
                    }
                };
                send(PROVIDERS[*p as usize], &format!("m{m}"), user, &parts, TTLS[*ttl as usize])
            }
            Op::Ack { p, picks, unknown } => {
                let provider = pid(PROVIDERS[*p as usize]);
                let present: Vec<Seq> =
                    state.mailboxes.get(&provider).map(|m| m.entries.keys().copied().collect()).unwrap_or_default();
                let mut seqs: Vec<Seq> = if present.is_empty() {
                    Vec::new()
                } else {
                    picks.iter().map(|i| present[*i as usize % present.len()]).collect()
                };
                if *unknown {
                    seqs.push(UNKNOWN_SEQ);
                }
                Command::Ack { provider, seqs }
            }
        }
    }

    #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
    enum KeyKind {
        Ec,
        Kyber,
    }

    /// What the checker remembers across batches: a small model built only
    /// from commands and their outcomes.
    #[derive(Default)]
    struct Checker {
        /// (kind, key id) -> where it was uploaded (only accepted uploads).
        uploaded: BTreeMap<(KeyKind, u32), (UserId, DeviceId)>,
        /// Every one-time key handed out.
        claimed: BTreeSet<(KeyKind, UserId, DeviceId, u32)>,
        /// First answer per (sender, message id).
        answers: BTreeMap<(ProviderId, MessageId), Outcome>,
        /// Fresh sends: (sender, message id) -> (recipient provider, seq).
        accepted: BTreeMap<(ProviderId, MessageId), (ProviderId, Seq)>,
        /// User ownership as the outcomes tell it.
        owners: BTreeMap<UserId, ProviderId>,
        /// Last seq given to a fresh send, per recipient provider.
        last_seq: BTreeMap<ProviderId, Seq>,
        claims: usize,
        sends: usize,
        acks_removed: u64,
        expired: usize,
    }

    impl Checker {
        /// Checks one command's outcome against the model and updates it.
        fn outcome(
            &mut self,
            before: &State,
            after: &State,
            cmd: &Command,
            out: &Outcome,
            acked: &mut BTreeMap<ProviderId, BTreeSet<Seq>>,
        ) {
            match (cmd, out) {
                (Command::RegisterUser { provider, user }, Outcome::Done) => {
                    let prev = self.owners.insert(user.clone(), provider.clone());
                    assert!(
                        prev.is_none() || prev.as_ref() == Some(provider),
                        "{user} re-registered by {provider} from {prev:?}"
                    );
                }
                (Command::RegisterUser { provider, user }, Outcome::Rejected(Rejection::UserTaken { .. })) => {
                    let o = self.owners.get(user).expect("taken user has an owner");
                    assert_ne!(o, provider);
                }
                (Command::DeregisterUser { provider, user }, Outcome::Done) => {
                    assert_eq!(self.owners.remove(user).as_ref(), Some(provider));
                }
                (Command::UploadPrekeys { user, device, upload, .. }, Outcome::KeysStored { .. }) => {
                    for k in &upload.one_time {
                        assert!(self.uploaded.insert((KeyKind::Ec, k.key_id), (user.clone(), *device)).is_none());
                    }
                    for k in &upload.kyber_one_time {
                        assert!(self.uploaded.insert((KeyKind::Kyber, k.key_id), (user.clone(), *device)).is_none());
                    }
                }
                (Command::ClaimPrekeys { user, device, .. }, Outcome::Bundles { provider, bundles }) => {
                    self.claims += 1;
                    assert_eq!(self.owners.get(user), Some(provider));
                    assert!(!bundles.is_empty());
                    if let Some(d) = device {
                        assert!(bundles.iter().all(|b| b.device == *d));
                    }
                    let mut taken = Vec::new();
                    for b in bundles {
                        if let Some(k) = &b.one_time {
                            taken.push((KeyKind::Ec, k.key_id, b.device));
                        }
                        if let (Some(k), false) = (&b.kyber, b.kyber_is_last_resort) {
                            taken.push((KeyKind::Kyber, k.key_id, b.device));
                        }
                    }
                    // (a) A one-time key leaves the stock once, from the device it was uploaded to.
                    for (kind, key_id, dev) in taken {
                        assert_eq!(
                            self.uploaded.get(&(kind, key_id)),
                            Some(&(user.clone(), dev)),
                            "{kind:?} key {key_id} was not uploaded to {user}.{dev}"
                        );
                        assert!(
                            self.claimed.insert((kind, user.clone(), dev, key_id)),
                            "{kind:?} key {user}.{dev}/{key_id} claimed twice"
                        );
                    }
                }
                (Command::Send(env), out) => {
                    let key = (env.sender.clone(), env.message_id.clone());
                    if let Some(first) = self.answers.get(&key) {
                        // A retry inside the window gets the first answer.
                        assert_eq!(out, first, "retry of {key:?}");
                    } else if let Outcome::Sent { seq, accepted_at_ms } = out {
                        self.sends += 1;
                        assert_eq!(*accepted_at_ms, after.clock_ms);
                        let rp = self.owners.get(&env.recipient).expect("recipient registered").clone();
                        let floor = before.mailboxes.get(&rp).map_or(0, |m| m.next_seq);
                        assert!(*seq >= floor, "seq {seq} reused in {rp} (next was {floor})");
                        // (c) Strictly increasing in acceptance order.
                        if let Some(last) = self.last_seq.get(&rp) {
                            assert!(seq > last, "seq {seq} after {last} in {rp}");
                        }
                        self.last_seq.insert(rp.clone(), *seq);
                        self.answers.insert(key.clone(), out.clone());
                        self.accepted.insert(key, (rp, *seq));
                    }
                }
                (Command::Ack { provider, seqs }, Outcome::Acked { removed, unknown }) => {
                    assert_eq!(u64::from(*removed) + u64::from(*unknown), seqs.len() as u64);
                    self.acks_removed += u64::from(*removed);
                    acked.entry(provider.clone()).or_default().extend(seqs.iter().copied());
                }
                _ => {}
            }
        }

        /// Checks the state after a batch against the state before it.
        fn batch(
            &mut self,
            before: &State,
            after: &State,
            acked: &BTreeMap<ProviderId, BTreeSet<Seq>>,
            fresh: &[(ProviderId, MessageId)],
        ) {
            assert!(after.clock_ms >= before.clock_ms);

            // Ownership as the outcomes tell it.
            let owners: BTreeMap<UserId, ProviderId> =
                after.users.iter().map(|(u, r)| (u.clone(), r.provider.clone())).collect();
            assert_eq!(owners, self.owners);
            for rec in after.users.values() {
                assert!(rec.devices.len() as u32 <= after.limits.max_devices_per_user);
                for dev in rec.devices.values() {
                    if let Some(k) = &dev.keys {
                        assert!(k.one_time.len() as u32 <= after.limits.max_one_time_prekeys_per_device);
                        assert!(k.kyber_one_time.len() as u32 <= after.limits.max_one_time_prekeys_per_device);
                    }
                }
            }

            // (b) Each (sender, message id) is stored at most once, and it is
            // the entry its answer names.
            let mut stored: BTreeMap<(ProviderId, MessageId), usize> = BTreeMap::new();
            for (owner, mb) in &after.mailboxes {
                for e in mb.entries.values() {
                    if let MailboxItem::Envelope(env) = &e.item {
                        let key = (env.sender.clone(), env.message_id.clone());
                        assert_eq!(
                            self.accepted.get(&key),
                            Some(&(owner.clone(), e.seq)),
                            "stored {key:?} was never answered with {owner}/{}",
                            e.seq
                        );
                        *stored.entry(key).or_default() += 1;
                    }
                }
            }
            for (key, n) in stored {
                assert_eq!(n, 1, "{key:?} stored {n} times");
            }

            // (c) Seqs: keyed by their own seq, below next_seq, in acceptance order.
            for (owner, mb) in &after.mailboxes {
                let prev_next = before.mailboxes.get(owner).map_or(0, |m| m.next_seq);
                assert!(mb.next_seq >= prev_next);
                let mut last_accepted = 0;
                for (k, e) in &mb.entries {
                    assert_eq!(*k, e.seq);
                    assert!(e.seq < mb.next_seq, "{owner}: seq {} >= next_seq {}", e.seq, mb.next_seq);
                    assert!(e.accepted_at_ms >= last_accepted);
                    // Nothing overdue survives, except a zero-TTL entry of this batch.
                    assert!(
                        e.expires_at_ms > after.clock_ms || (e.seq >= prev_next && e.accepted_at_ms == after.clock_ms),
                        "{owner}/{} overdue",
                        e.seq
                    );
                    last_accepted = e.accepted_at_ms;
                }
            }

            // (d) An ack removes exactly what it names; expiry removes exactly
            // what is due; everything else that was there is still there.
            let empty = BTreeSet::new();
            let mut expected_reports: Vec<(ProviderId, MailboxItem)> = Vec::new();
            for (owner, mb) in &before.mailboxes {
                let named = acked.get(owner).unwrap_or(&empty);
                let now = after.mailboxes.get(owner).expect("mailboxes are never dropped");
                for e in mb.entries.values() {
                    let expired = e.expires_at_ms <= after.clock_ms;
                    if named.contains(&e.seq) || expired {
                        assert!(!now.entries.contains_key(&e.seq), "{owner}/{} should be gone", e.seq);
                    } else {
                        assert_eq!(now.entries.get(&e.seq), Some(e), "{owner}/{} should remain", e.seq);
                    }
                    if expired && !named.contains(&e.seq) {
                        self.expired += 1;
                    }
                    if let (true, MailboxItem::Envelope(env)) = (expired, &e.item) {
                        // Expiry runs before the batch's acks, so it reports
                        // even what an ack in this batch named.
                        expected_reports.push((
                            env.sender.clone(),
                            MailboxItem::Expired {
                                message_id: env.message_id.clone(),
                                recipient: env.recipient.clone(),
                                recipient_provider: owner.clone(),
                            },
                        ));
                    }
                }
            }
            for (owner, named) in acked {
                if let Some(now) = after.mailboxes.get(owner) {
                    for seq in named {
                        assert!(!now.entries.contains_key(seq), "acked {owner}/{seq} still there");
                    }
                }
            }
            // Expiry is never silent: exactly one new report per expired envelope.
            let mut new_reports: Vec<(ProviderId, MailboxItem)> = Vec::new();
            for (owner, mb) in &after.mailboxes {
                let prev_next = before.mailboxes.get(owner).map_or(0, |m| m.next_seq);
                for e in mb.entries.range(prev_next..).map(|(_, e)| e) {
                    if matches!(e.item, MailboxItem::Expired { .. }) {
                        new_reports.push((owner.clone(), e.item.clone()));
                    }
                }
            }
            expected_reports.sort_by(|a, b| format!("{a:?}").cmp(&format!("{b:?}")));
            new_reports.sort_by(|a, b| format!("{a:?}").cmp(&format!("{b:?}")));
            assert_eq!(new_reports, expected_reports);

            // A fresh send of this batch is in its mailbox (acks only name
            // seqs that existed before the batch, and nothing new expires).
            for key in fresh {
                let (rp, seq) = &self.accepted[key];
                let e = after
                    .mailboxes
                    .get(rp)
                    .and_then(|m| m.entries.get(seq))
                    .unwrap_or_else(|| panic!("{key:?} not in {rp}/{seq}"));
                assert!(
                    matches!(&e.item, MailboxItem::Envelope(env) if (&env.sender, &env.message_id) == (&key.0, &key.1))
                );
            }
        }
    }

    /// Runs the plans from a fresh state, checking every invariant after
    /// every batch. Returns the final state, all outcomes and the checker.
    fn run(plans: &[Plan]) -> (State, Vec<Vec<Outcome>>, Checker) {
        let mut state = State::new(limits());
        let mut checker = Checker::default();
        let mut stamp = T0;
        let mut next_key_id = 0u32;
        // Onboard pa, pb, pc; register every user with its home provider and
        // device 1, so that most random commands get past the lookups.
        let mut setup: Vec<Command> =
            PROVIDERS[..3].iter().map(|p| Command::AddProvider { provider: pid(p) }).collect();
        for (i, u) in USERS.iter().enumerate() {
            setup.push(register_user(PROVIDERS[i % 3], u));
            setup.push(register_device(PROVIDERS[i % 3], u, 1, 1));
            checker.owners.insert(uid(u), pid(PROVIDERS[i % 3]));
        }
        let outs = state.apply_batch(&Batch { stamp_ms: stamp, commands: setup });
        assert!(outs.iter().all(|o| *o == Outcome::Done));
        let mut outcomes = vec![outs];
        for plan in plans {
            stamp = stamp.saturating_add_signed(plan.dt);
            let before = state.clone();
            let commands: Vec<Command> = plan.ops.iter().map(|op| command(&before, op, &mut next_key_id)).collect();
            let batch = Batch { stamp_ms: stamp, commands };
            let outs = state.apply_batch(&batch);
            assert_eq!(outs.len(), batch.commands.len());
            assert_eq!(state.clock_ms, before.clock_ms.max(stamp));

            let mut acked = BTreeMap::new();
            let known: BTreeSet<_> = checker.accepted.keys().cloned().collect();
            for (cmd, out) in batch.commands.iter().zip(&outs) {
                checker.outcome(&before, &state, cmd, out, &mut acked);
            }
            let fresh: Vec<_> = checker.accepted.keys().filter(|k| !known.contains(*k)).cloned().collect();
            checker.batch(&before, &state, &acked, &fresh);
            outcomes.push(outs);
        }
        (state, outcomes, checker)
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        /// (a) one-time keys leave once, (b) a message is stored once,
        /// (c) seqs increase, (d) acks and expiry remove exactly what they
        /// should; checked after every batch inside `run`.
        #[test]
        fn invariants_hold_after_every_batch(plans in plans()) {
            run(&plans);
        }

        /// Two replicas applying the same log agree on outcomes, state and
        /// snapshot bytes; a snapshot round-trips.
        #[test]
        fn replicas_agree(plans in plans()) {
            let (a, outs_a, _) = run(&plans);
            let (b, outs_b, _) = run(&plans);
            prop_assert_eq!(&outs_a, &outs_b);
            prop_assert_eq!(&a, &b);
            let bytes = bincode::serialize(&a).expect("serialize");
            prop_assert_eq!(&bytes, &bincode::serialize(&b).expect("serialize"));
            let restored: State = bincode::deserialize(&bytes).expect("deserialize");
            prop_assert_eq!(&restored, &a);
        }
    }

    /// The generator reaches the interesting paths (otherwise the
    /// properties above would pass vacuously).
    #[test]
    fn generator_covers_claims_sends_acks_and_expiry() {
        use proptest::strategy::ValueTree;
        use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
        let rng = TestRng::from_seed(RngAlgorithm::ChaCha, &[7; 32]);
        let mut runner = TestRunner::new_with_rng(Config::default(), rng);
        let (mut claims, mut keys, mut sends, mut removed, mut expired) = (0, 0, 0, 0, 0);
        let mut hist = std::collections::BTreeMap::new();
        for _ in 0..64 {
            let plans = plans().new_tree(&mut runner).expect("tree").current();
            let (_, outs, c) = run(&plans);
            for o in outs.iter().flatten() {
                let k = match o {
                    Outcome::Rejected(r) => r.reason().to_string(),
                    o => format!("{o:?}").chars().take(8).collect(),
                };
                *hist.entry(k).or_insert(0) += 1;
            }
            claims += c.claims;
            keys += c.claimed.len();
            sends += c.sends;
            removed += c.acks_removed;
            expired += c.expired;
        }
        assert!(
            claims > 20 && keys > 20 && sends > 50 && removed > 20 && expired > 20,
            "claims {claims} keys {keys} sends {sends} acked {removed} expired {expired}; outcomes {hist:?}"
        );
    }
}

#[test]
fn a_provider_may_name_only_its_own_users_as_sender() {
    let mut h = Harness::new();
    h.user(PA, "alice", &[(1, 10)]);
    h.user(PB, "bob", &[(1, 11)]);
    let with_sender = |provider: &str, sender_user: &str, id: &str| {
        let Command::Send(mut env) = send(provider, id, "bob", &[(1, 11)], 1_000) else { unreachable!() };
        env.sender_user = Some(uid(sender_user));
        env.sender_device = Some(1);
        Command::Send(env)
    };
    // pc claims to send as pa's alice.
    h.ok(Command::AddProvider { provider: pid(PC) });
    assert_eq!(h.reject_unchanged(with_sender(PC, "alice", "s1")), Rejection::NotOwner { user: uid("alice") });
    assert_eq!(h.reject_unchanged(with_sender(PA, "ghost", "s1")), Rejection::UserNotFound { user: uid("ghost") });
    assert!(matches!(h.apply(with_sender(PA, "alice", "s1")), Outcome::Sent { .. }));
}

#[test]
fn restore_loads_a_backup_only_into_an_empty_state() {
    let mut source = Harness::new();
    source.user(PB, "bob", &[(1, 11)]);
    assert!(matches!(source.apply(send(PA, "m1", "bob", &[(1, 11)], 60_000)), Outcome::Sent { .. }));
    let backup = source.state.clone();

    let mut fresh = Harness::new();
    assert_eq!(fresh.apply(Command::Restore { state: Box::new(backup.clone()) }), Outcome::Done);
    assert_eq!(fresh.state.users, backup.users);
    assert_eq!(fresh.state.mailboxes, backup.mailboxes);
    // The restored dedup window still answers a retry identically.
    assert_eq!(
        fresh.apply(send(PA, "m1", "bob", &[(1, 11)], 60_000)),
        source.apply(send(PA, "m1", "bob", &[(1, 11)], 60_000))
    );

    // Not over existing data.
    assert_eq!(fresh.reject_unchanged(Command::Restore { state: Box::new(backup) }), Rejection::RestoreIntoNonEmpty);
}

#[test]
fn provider_lifecycle_and_the_three_month_deadline() {
    use crate::provider::{ProviderAction as A, ProviderStatus as S};
    let mut h = Harness::new();
    let t0 = h.state.clock_ms;
    let request = Command::RequestProvider {
        provider: pid("pd"),
        name: "Delta Chat".into(),
        contact: "ops@delta.example".into(),
        media_hosts: vec!["media.delta.example".into()],
    };
    assert_eq!(h.apply(request.clone()), Outcome::Done);
    let rec = h.state.provider(&pid("pd")).unwrap().clone();
    assert_eq!(rec.status, S::Requested);
    // Requested is not onboarded: it may not act yet.
    assert_eq!(h.reject_unchanged(register_user("pd", "dan")), Rejection::ProviderNotOnboarded { provider: pid("pd") });
    assert_eq!(
        h.reject_unchanged(Command::SetProviderStatus { provider: pid("pd"), action: A::Activate }),
        Rejection::BadTransition { provider: pid("pd"), from: S::Requested }
    );
    // The deadline is three months after the request; overdue only past it and while not enabled.
    let deadline = rec.deadline_ms();
    assert!(deadline > t0 + 89 * 86_400_000 && deadline < t0 + 93 * 86_400_000);
    assert!(!rec.overdue(deadline) && rec.overdue(deadline + 1));
    // A repeated request keeps the clock.
    h.at(t0 + 1_000_000, request);
    assert_eq!(h.state.provider(&pid("pd")).unwrap().requested_at_ms, rec.requested_at_ms);

    for (action, status) in [(A::Approve, S::Approved), (A::Activate, S::Active)] {
        assert_eq!(h.apply(Command::SetProviderStatus { provider: pid("pd"), action }), Outcome::Done);
        assert_eq!(h.state.provider(&pid("pd")).unwrap().status, status);
    }
    let rec = h.state.provider(&pid("pd")).unwrap().clone();
    assert!(!rec.overdue(deadline + 1), "enabled providers are never overdue");
    h.user("pd", "dan", &[(1, 1)]);
    assert!(matches!(h.apply(send(PA, "to-dan", "dan", &[(1, 1)], 60_000)), Outcome::Sent { .. }));
    // Suspended: refused, but its mailbox and users are kept, and mail to it is still accepted.
    h.ok(Command::SetProviderStatus { provider: pid("pd"), action: A::Suspend });
    assert_eq!(
        h.reject_unchanged(ack("pd", &[0])),
        Rejection::ProviderSuspended { provider: pid("pd"), status: S::Suspended }
    );
    assert!(matches!(h.apply(send(PA, "to-dan-2", "dan", &[(1, 1)], 60_000)), Outcome::Sent { .. }));
    assert_eq!(h.state.mailbox_depth(&pid("pd")), 2);
    h.ok(Command::SetProviderStatus { provider: pid("pd"), action: A::Reactivate });
    assert_eq!(h.apply(ack("pd", &[0, 1])), Outcome::Acked { removed: 2, unknown: 0 });
    h.ok(Command::SetProviderStatus { provider: pid("pd"), action: A::Revoke });
    assert_eq!(
        h.reject_unchanged(register_user("pd", "dora")),
        Rejection::ProviderSuspended { provider: pid("pd"), status: S::Revoked }
    );
    assert_eq!(
        h.reject_unchanged(Command::SetProviderStatus { provider: pid("nobody"), action: A::Approve }),
        Rejection::UnknownProvider { provider: pid("nobody") }
    );
}

#[test]
fn claim_token_bucket_refills_with_leader_time() {
    let mut h = Harness::with_limits(Limits { claim_burst: 2, claim_refill_ms: 1_000, ..Limits::default() });
    h.user(PB, "bob", &[(1, 11)]);
    assert!(matches!(
        h.apply(upload_cmd(PB, "bob", 1, upload(1, Some(1), &[1, 2, 3, 4, 5], &[], None))),
        Outcome::KeysStored { .. }
    ));
    let t = h.state.clock_ms + 10;
    assert!(matches!(h.at(t, claim(PA, "bob", None)), Outcome::Bundles { .. }));
    assert!(matches!(h.at(t, claim(PA, "bob", None)), Outcome::Bundles { .. }));
    assert_eq!(h.at(t, claim(PA, "bob", None)), Outcome::Rejected(Rejection::RateLimited { retry_after_ms: 1_000 }));
    assert_eq!(
        h.at(t + 400, claim(PA, "bob", None)),
        Outcome::Rejected(Rejection::RateLimited { retry_after_ms: 600 })
    );
    assert!(matches!(h.at(t + 1_000, claim(PA, "bob", None)), Outcome::Bundles { .. }));
    // Per requester: another provider has its own bucket.
    h.ok(Command::AddProvider { provider: pid(PC) });
    assert!(matches!(h.at(t + 1_000, claim(PC, "bob", None)), Outcome::Bundles { .. }));
}

/// Found by the `state_machine` fuzz target: the token bucket's arithmetic
/// overflowed (a panic inside `apply` with overflow checks) for a stamp far
/// past the last claim, or a refill period near `u64::MAX`.
#[test]
fn claim_token_bucket_saturates_instead_of_overflowing() {
    let mut h = Harness::with_limits(Limits { claim_burst: 1, claim_refill_ms: u64::MAX, ..Limits::default() });
    h.user(PB, "bob", &[(1, 11)]);
    assert!(matches!(
        h.apply(upload_cmd(PB, "bob", 1, upload(1, Some(1), &[1, 2, 3], &[], None))),
        Outcome::KeysStored { .. }
    ));
    let t = h.state.clock_ms + 1;
    assert!(matches!(h.at(t, claim(PA, "bob", None)), Outcome::Bundles { .. }));
    assert_eq!(
        h.at(t, claim(PA, "bob", None)),
        Outcome::Rejected(Rejection::RateLimited { retry_after_ms: u64::MAX.div_ceil(1000) })
    );
    h.ok(Command::SetLimits { limits: Limits { claim_burst: 1, claim_refill_ms: 1_000, ..Limits::default() } });
    // Half a million years later: the bucket is full again, and pruning it does not overflow either.
    assert!(matches!(h.at(u64::MAX, claim(PA, "bob", None)), Outcome::Bundles { .. }));
    assert!(h.state.apply_batch(&Batch { stamp_ms: u64::MAX, commands: vec![] }).is_empty());
}

// ---------------------------------------------------------------- federation

/// Registers federation peer `peer` serving `providers` (queue quota
/// `max_queue`, 0 = none); endpoints and CA do not matter to the state.
fn register_peer_with_quota(peer: &str, providers: &[&str], max_queue: u64) -> Command {
    Command::RegisterPeer {
        peer: crate::federation::ClusterId::new(peer),
        endpoints: vec!["127.0.0.1:1".into()],
        ca_pem: "CA".into(),
        providers: providers.iter().map(|p| pid(p)).collect(),
        max_queue,
    }
}

fn register_peer(peer: &str, providers: &[&str]) -> Command {
    register_peer_with_quota(peer, providers, 0)
}

mod federation {
    use super::*;
    use crate::federation::{ClusterId, PeerStatus, RelayedItem, RelayedKind, UndeliverableReason, outbound_queue};

    fn cid(s: &str) -> ClusterId {
        ClusterId::new(s)
    }

    fn relay_send(peer: &str, recipient_provider: &str, env: SendEnvelope) -> Command {
        Command::RelaySend { peer: cid(peer), recipient_provider: pid(recipient_provider), envelope: env }
    }

    fn relayed(queue_seq: u64, ttl_left_ms: u64, env: SendEnvelope) -> RelayedItem {
        RelayedItem { queue_seq, ttl_left_ms, item: RelayedKind::Envelope(env) }
    }

    /// Cluster "b": providers pb (bob, devices 1 and 2) and peer "a" serving "alpha".
    fn cluster_b() -> Harness {
        let mut h = Harness::new();
        h.apply(register_user(PB, "bob"));
        h.apply(register_device(PB, "bob", 1, 11));
        h.apply(register_device(PB, "bob", 2, 22));
        assert_eq!(h.apply(register_peer("a", &["alpha"])), Outcome::Done);
        h
    }

    #[test]
    fn relay_send_queues_for_the_peer_and_dedups() {
        let mut h = Harness::new();
        let env = envelope(PA, "m1", "bob", &[(1, 11)], 60_000);
        // Unknown peer: nothing queued.
        assert_eq!(
            h.apply(relay_send("b", "beta", env.clone())),
            Outcome::Rejected(Rejection::UnknownPeer { peer: cid("b") })
        );
        h.apply(register_peer("b", &["beta"]));
        // Only providers the peer serves are reached through it.
        assert_eq!(
            h.apply(relay_send("b", "gamma", env.clone())),
            Outcome::Rejected(Rejection::NotServedByPeer { provider: pid("gamma"), peer: cid("b") })
        );
        assert_eq!(h.state.mailbox_depth(&outbound_queue(&cid("b"))), 0);
        let first = h.apply(relay_send("b", "beta", env.clone()));
        assert!(matches!(first, Outcome::Sent { seq: 0, .. }), "{first:?}");
        // A retry gets the first answer and queues nothing more.
        assert_eq!(h.apply(relay_send("b", "beta", env.clone())), first);
        assert_eq!(h.state.mailbox_depth(&outbound_queue(&cid("b"))), 1);
        // Suspended: refused; removal refused while the queue holds entries.
        h.apply(Command::SetPeerStatus { peer: cid("b"), status: PeerStatus::Suspended });
        assert_eq!(
            h.apply(relay_send("b", "beta", envelope(PA, "m2", "bob", &[(1, 11)], 60_000))),
            Outcome::Rejected(Rejection::PeerSuspended { peer: cid("b") })
        );
        assert_eq!(
            h.apply(Command::RemovePeer { peer: cid("b") }),
            Outcome::Rejected(Rejection::PeerQueueNotEmpty { peer: cid("b"), depth: 1 })
        );
        // Delivered: the entry leaves the queue; then the peer can go.
        assert_eq!(
            h.apply(Command::RelayAcked { peer: cid("b"), delivered: vec![0, 7], refused: vec![] }),
            Outcome::Acked { removed: 1, unknown: 1 }
        );
        assert_eq!(h.apply(Command::RemovePeer { peer: cid("b") }), Outcome::Done);
        assert!(h.state.peer(&cid("b")).is_none());
    }

    #[test]
    fn accepted_relays_are_stored_once_under_the_qualified_sender() {
        let mut h = cluster_b();
        let env = envelope("alpha", "m1", "bob", &[(1, 11), (2, 22)], 60_000);
        let out = h.apply(Command::AcceptRelayed { origin: cid("a"), items: vec![relayed(0, 5_000, env.clone())] });
        let Outcome::Relayed { results } = out else { panic!("{out:?}") };
        assert!(matches!(results[..], [Outcome::Sent { seq: 0, .. }]), "{results:?}");
        // Relayed again after a failover: the same answer, stored once.
        let again = h.apply(Command::AcceptRelayed { origin: cid("a"), items: vec![relayed(0, 5_000, env.clone())] });
        assert_eq!(again, Outcome::Relayed { results: results.clone() });
        let entries = h.state.mailbox_from(&pid(PB), 0, 10);
        assert_eq!(entries.len(), 1);
        let MailboxItem::Envelope(stored) = &entries[0].item else { panic!("{entries:?}") };
        assert_eq!(stored.sender, pid("alpha@a"));
        // The TTL restarts from what was left.
        assert_eq!(entries[0].expires_at_ms, entries[0].accepted_at_ms + 5_000);
    }

    #[test]
    fn a_peer_relays_only_its_providers_and_only_when_registered_and_active() {
        let mut h = cluster_b();
        let foreign = envelope("mallory", "m1", "bob", &[(1, 11), (2, 22)], 60_000);
        let out = h.apply(Command::AcceptRelayed { origin: cid("a"), items: vec![relayed(0, 5_000, foreign)] });
        assert_eq!(
            out,
            Outcome::Relayed {
                results: vec![Outcome::Rejected(Rejection::NotServedByPeer {
                    provider: pid("mallory"),
                    peer: cid("a")
                })]
            }
        );
        let env = envelope("alpha", "m2", "bob", &[(1, 11), (2, 22)], 60_000);
        assert_eq!(
            h.apply(Command::AcceptRelayed { origin: cid("z"), items: vec![relayed(1, 5_000, env.clone())] }),
            Outcome::Rejected(Rejection::UnknownPeer { peer: cid("z") })
        );
        h.apply(Command::SetPeerStatus { peer: cid("a"), status: PeerStatus::Suspended });
        assert_eq!(
            h.apply(Command::AcceptRelayed { origin: cid("a"), items: vec![relayed(1, 5_000, env)] }),
            Outcome::Rejected(Rejection::PeerSuspended { peer: cid("a") })
        );
        assert_eq!(h.state.mailbox_depth(&pid(PB)), 0);
    }

    #[test]
    fn a_transient_refusal_stops_the_batch_so_order_is_kept() {
        let mut h = Harness::with_limits(Limits { max_mailbox_entries: 1, ..Limits::default() });
        h.apply(register_user(PB, "bob"));
        h.apply(register_device(PB, "bob", 1, 11));
        h.apply(register_peer("a", &["alpha"]));
        let items: Vec<RelayedItem> =
            (0..3).map(|i| relayed(i, 5_000, envelope("alpha", &format!("m{i}"), "bob", &[(1, 11)], 60_000))).collect();
        let out = h.apply(Command::AcceptRelayed { origin: cid("a"), items });
        let Outcome::Relayed { results } = out else { panic!("{out:?}") };
        assert_eq!(results.len(), 2, "stops after the full mailbox: {results:?}");
        assert!(matches!(results[1], Outcome::Rejected(Rejection::MailboxFull { .. })));
        assert_eq!(h.state.mailbox_depth(&pid(PB)), 1);
    }

    #[test]
    fn refusals_and_remote_expiry_come_back_as_reports() {
        // Sending side: pa's envelope queued for peer b, then refused there.
        let mut a = Harness::new();
        a.apply(register_peer("b", &["beta"]));
        let env = envelope(PA, "m1", "bob", &[(1, 11)], 60_000);
        let Outcome::Sent { seq, .. } = a.apply(relay_send("b", "beta", env)) else { panic!() };
        let out = a.apply(Command::RelayAcked {
            peer: cid("b"),
            delivered: vec![],
            refused: vec![(seq, "DEVICE_MISMATCH".into(), "missing [2]".into())],
        });
        assert_eq!(out, Outcome::Acked { removed: 1, unknown: 0 });
        let reports = a.state.mailbox_from(&pid(PA), 0, 10);
        assert_eq!(
            reports[0].item,
            MailboxItem::Undeliverable {
                to: pid(PA),
                message_id: mid("m1"),
                recipient: uid("bob"),
                reason: UndeliverableReason::Refused { reason: "DEVICE_MISMATCH".into(), detail: "missing [2]".into() },
            }
        );

        // Receiving side: a relayed envelope expires unacked; the report is
        // queued back to its origin, for provider "alpha" there.
        let mut b = cluster_b();
        let env = envelope("alpha", "m9", "bob", &[(1, 11), (2, 22)], 60_000);
        b.apply(Command::AcceptRelayed { origin: cid("a"), items: vec![relayed(4, 100, env)] });
        let later = b.stamp + 1_000;
        b.at(later, Command::SetLimits { limits: b.state.limits.clone() });
        assert_eq!(b.state.mailbox_depth(&pid(PB)), 0);
        let back = b.state.mailbox_from(&outbound_queue(&cid("a")), 0, 10);
        assert_eq!(
            back[0].item,
            MailboxItem::Undeliverable {
                to: pid("alpha"),
                message_id: mid("m9"),
                recipient: uid("bob"),
                reason: UndeliverableReason::Expired { recipient_provider: pid(PB) },
            }
        );

        // Back at the origin the report lands in alpha's mailbox as an expiry, once.
        let mut origin = Harness::new();
        origin.apply(Command::AddProvider { provider: pid("alpha") });
        origin.apply(register_peer("b", &["beta"]));
        let report = RelayedItem {
            queue_seq: back[0].seq,
            ttl_left_ms: 1_000,
            item: RelayedKind::from_queue(&back[0].item).expect("reports are relayed"),
        };
        for _ in 0..2 {
            let out = origin.apply(Command::AcceptRelayed { origin: cid("b"), items: vec![report.clone()] });
            assert_eq!(out, Outcome::Relayed { results: vec![Outcome::Done] });
        }
        let got = origin.state.mailbox_from(&pid("alpha"), 0, 10);
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!(
            got[0].item,
            MailboxItem::Expired { message_id: mid("m9"), recipient: uid("bob"), recipient_provider: pid("pb@b") }
        );
    }
}

mod federated_claims {
    use super::*;
    use crate::federation::{ClusterId, PeerStatus};

    #[test]
    fn a_peer_provider_claims_under_its_qualified_name_once_per_key() {
        let mut h = Harness::new();
        h.apply(register_user(PB, "bob"));
        h.apply(register_device(PB, "bob", 1, 11));
        h.apply(upload_cmd(PB, "bob", 1, upload(1, Some(1), &[10], &[], None)));
        // Not registered yet: refused, nothing consumed.
        assert_eq!(
            h.apply(claim("alpha@a", "bob", None)),
            Outcome::Rejected(Rejection::UnknownPeer { peer: ClusterId::new("a") })
        );
        h.apply(register_peer("a", &["alpha"]));
        assert_eq!(
            h.apply(claim("mallory@a", "bob", None)),
            Outcome::Rejected(Rejection::NotServedByPeer { provider: pid("mallory"), peer: ClusterId::new("a") })
        );
        let Outcome::Bundles { bundles, .. } = h.apply(claim("alpha@a", "bob", None)) else { panic!() };
        assert_eq!(bundles[0].one_time.as_ref().map(|k| k.key_id), Some(10));
        // The key is gone for everyone, local or remote.
        let Outcome::Bundles { bundles, .. } = h.apply(claim(PA, "bob", None)) else { panic!() };
        assert!(bundles[0].one_time.is_none());
        h.apply(Command::SetPeerStatus { peer: ClusterId::new("a"), status: PeerStatus::Suspended });
        assert_eq!(
            h.apply(claim("alpha@a", "bob", None)),
            Outcome::Rejected(Rejection::PeerSuspended { peer: ClusterId::new("a") })
        );
    }
}

#[test]
fn federation_once_used_stays_marked_after_the_last_peer_goes() {
    use crate::federation::ClusterId;
    let mut h = Harness::new();
    assert!(h.state.federation.is_empty());
    h.apply(register_peer("b", &["beta"]));
    assert_eq!(h.apply(Command::RemovePeer { peer: ClusterId::new("b") }), Outcome::Done);
    assert!(!h.state.federation.is_empty(), "reports may still be queued: keep the newer format");
}

mod federated_groups {
    use super::*;
    use crate::federation::{ClusterId, RelayedItem, RelayedKind, outbound_queue};
    use crate::group::{GroupId, GroupSend, Role};

    fn peer(h: &mut Harness, id: &str, providers: &[&str]) {
        h.apply(register_peer(id, providers));
    }

    fn gsend(sender: &str, user: &str, id: &str) -> GroupSend {
        GroupSend {
            sender: pid(sender),
            sender_user: uid(user),
            sender_device: 1,
            group: GroupId::new("fam"),
            message_id: mid(id),
            content_type: ContentType::Message,
            ttl_ms: 60_000,
            ciphertext: crate::Blob::from_static(b"sk"),
            per_device: vec![],
            traceparent: None,
        }
    }

    #[test]
    fn the_hub_orders_and_queues_one_delivery_per_peer_and_takes_sends_from_peer_members() {
        let mut h = Harness::new();
        h.apply(register_user(PA, "alice"));
        peer(&mut h, "b", &["beta"]);
        let create = |remote: Vec<(UserId, ClusterId)>| Command::FederatedGroup {
            provider: pid(PA),
            actor: uid("alice"),
            group: GroupId::new("fam"),
            create: true,
            set: vec![(uid("bob"), Role::Member), (uid("carol"), Role::Member)],
            remote,
            remove: vec![],
        };
        // carol is known nowhere: refused, nothing created.
        assert_eq!(
            h.apply(create(vec![(uid("bob"), ClusterId::new("b"))])),
            Outcome::Rejected(Rejection::UserNotFound { user: uid("carol") })
        );
        let remote = vec![(uid("bob"), ClusterId::new("b")), (uid("carol"), ClusterId::new("b"))];
        assert_eq!(h.apply(create(remote)), Outcome::GroupEpoch { epoch: 1 });

        assert!(matches!(
            h.apply(Command::SendGroup(gsend(PA, "alice", "m0"))),
            Outcome::GroupSent { group_seq: 0, .. }
        ));
        // bob, at b, sends through b: ordered here under his qualified provider.
        let from_b = Command::SendGroupFromPeer { origin: ClusterId::new("b"), send: gsend("beta", "bob", "m1") };
        assert!(matches!(h.apply(from_b.clone()), Outcome::GroupSent { group_seq: 1, .. }));
        assert!(matches!(h.apply(from_b), Outcome::GroupSent { group_seq: 1, .. }), "a retry is answered the same");
        // alice is not a member at b: refused.
        let impostor = Command::SendGroupFromPeer { origin: ClusterId::new("b"), send: gsend("beta", "alice", "m2") };
        assert_eq!(h.apply(impostor), Outcome::Rejected(Rejection::NotGroupMember { user: uid("alice") }));

        // One entry per message in b's queue, for both of its members, in group order.
        let queued = h.state.mailbox_from(&outbound_queue(&ClusterId::new("b")), 0, 10);
        let order: Vec<(u64, Vec<UserId>, ProviderId)> = queued
            .iter()
            .map(|e| match &e.item {
                MailboxItem::Group(g) => (g.group_seq, g.recipients.clone(), g.sender.clone()),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(
            order,
            vec![(0, vec![uid("bob"), uid("carol")], pid(PA)), (1, vec![uid("bob"), uid("carol")], pid("beta@b"))]
        );

        // At b, the relayed deliveries land in the members' provider, once.
        let mut b = Harness::new();
        b.apply(register_user(PB, "bob"));
        peer(&mut b, "a", &[PA]);
        // Named as b's federation edge renames it: a's provider and group qualified.
        let Some(RelayedKind::Group(mut delivery)) = RelayedKind::from_queue(&queued[0].item) else {
            panic!("group items are relayed")
        };
        delivery.sender = crate::federation::qualified(&delivery.sender, &ClusterId::new("a"));
        delivery.group = crate::federation::qualified_group(&delivery.group, &ClusterId::new("a"));
        let item = RelayedItem { queue_seq: queued[0].seq, ttl_left_ms: 5_000, item: RelayedKind::Group(delivery) };
        for _ in 0..2 {
            let out = b.apply(Command::AcceptRelayed { origin: ClusterId::new("a"), items: vec![item.clone()] });
            assert_eq!(out, Outcome::Relayed { results: vec![Outcome::Done] });
        }
        let got = b.state.mailbox_from(&pid(PB), 0, 10);
        assert_eq!(got.len(), 1, "{got:?}");
        let MailboxItem::Group(g) = &got[0].item else { panic!("{got:?}") };
        assert_eq!(g.recipients, vec![uid("bob")], "only b's own users (carol is not registered here)");

        // A home cluster cannot name as sender a provider it is not registered for.
        let Some(RelayedKind::Group(mut forged)) = RelayedKind::from_queue(&queued[1].item) else { panic!() };
        forged.sender = pid("mallory@a");
        let forged = RelayedItem { queue_seq: queued[1].seq, ttl_left_ms: 5_000, item: RelayedKind::Group(forged) };
        let out = b.apply(Command::AcceptRelayed { origin: ClusterId::new("a"), items: vec![forged] });
        assert_eq!(
            out,
            Outcome::Relayed {
                results: vec![Outcome::Rejected(Rejection::NotServedByPeer {
                    provider: pid("mallory"),
                    peer: ClusterId::new("a")
                })]
            }
        );
    }
}

#[test]
fn a_peer_queue_quota_refuses_sends_beyond_it() {
    use crate::federation::{ClusterId, outbound_queue};
    let mut h = Harness::new();
    h.apply(register_peer_with_quota("b", &["beta"], 1));
    let send = |id: &str| Command::RelaySend {
        peer: ClusterId::new("b"),
        recipient_provider: pid("beta"),
        envelope: envelope(PA, id, "bob", &[(1, 11)], 60_000),
    };
    assert!(matches!(h.apply(send("m1")), Outcome::Sent { .. }));
    assert_eq!(
        h.apply(send("m2")),
        Outcome::Rejected(Rejection::MailboxFull { provider: outbound_queue(&ClusterId::new("b")), limit: 1 })
    );
}

#[test]
fn a_restore_brings_the_federation_section_back_in_its_own_command() {
    use crate::federation::Federation;
    let mut source = Harness::new();
    source.apply(register_peer("b", &["beta"]));
    let backup = source.state.clone();
    let mut target = Harness::new();
    // The Restore command's encoding leaves the section out; an in-memory
    // copy that still holds it must not make this replica differ.
    assert_eq!(target.apply(Command::Restore { state: Box::new(backup.clone()) }), Outcome::Done);
    assert!(target.state.federation.is_empty(), "Restore never touches the federation section");
    let federation: Federation = backup.federation.clone();
    assert_eq!(target.apply(Command::RestoreFederation { federation: Box::new(federation) }), Outcome::Done);
    assert_eq!(target.state.federation, backup.federation);
}

// ------------------------------------------------------ cluster version 2

mod cluster_version_2 {
    use super::*;
    use crate::command::RequestId;
    use crate::version::{DELIVERY_ACK_GRACE_MS, MAX_CLOCK_STEP_MS};

    /// `cmd` at `to`, after entries that walk the clock there in steps it accepts.
    fn walk_to(h: &mut Harness, to: u64, cmd: Command) -> Outcome {
        while h.stamp + MAX_CLOCK_STEP_MS < to {
            let next = h.stamp + MAX_CLOCK_STEP_MS;
            h.at(next, ack(PC, &[]));
        }
        let out = h.at(to, cmd);
        assert_eq!(h.state.clock_ms, to);
        out
    }

    fn raised() -> Harness {
        let mut h = Harness::new();
        assert_eq!(h.state.cluster_version(), crate::version::BASE_CLUSTER_VERSION);
        h.ok(Command::SetClusterVersion { version: 2 });
        assert_eq!(h.state.cluster_version(), 2);
        h
    }

    #[test]
    fn stored_sequences_start_at_one_and_an_ack_of_zero_is_unknown() {
        let mut h = raised();
        h.user(PB, "bob", &[(1, 11)]);
        assert!(matches!(h.apply(send(PA, "m1", "bob", &[(1, 11)], 10_000)), Outcome::Sent { seq: 1, .. }));
        assert_eq!(h.apply(ack(PB, &[0])), Outcome::Acked { removed: 0, unknown: 1 });
        assert_eq!(h.seqs(PB), vec![1]);
        assert_eq!(h.apply(ack(PB, &[1])), Outcome::Acked { removed: 1, unknown: 0 });
    }

    #[test]
    fn a_mailbox_from_before_keeps_its_entries_and_never_hands_out_zero_again() {
        let mut h = Harness::new();
        h.user(PB, "bob", &[(1, 11)]);
        assert!(matches!(h.apply(send(PA, "m0", "bob", &[(1, 11)], 10_000)), Outcome::Sent { seq: 0, .. }));
        h.user(PC, "carol", &[(1, 12)]);
        assert_eq!(h.apply(ack(PC, &[])), Outcome::Acked { removed: 0, unknown: 0 });
        assert_eq!(h.state.mailboxes.get(&pid(PC)).map(|m| m.next_seq), None, "an empty ack creates nothing");
        // An empty mailbox at 0 (all acked): moves to 1 when the version is raised.
        h.state.mailboxes.entry(pid(PC)).or_default();
        h.ok(Command::SetClusterVersion { version: 2 });
        assert_eq!(h.state.mailboxes[&pid(PC)].next_seq, 1);
        assert!(matches!(h.apply(send(PA, "m1", "bob", &[(1, 11)], 10_000)), Outcome::Sent { seq: 1, .. }));
        // The entry stored at 0 before the upgrade is still there and still acked as 0.
        assert_eq!(h.seqs(PB), vec![0, 1]);
        assert_eq!(h.apply(ack(PB, &[0])), Outcome::Acked { removed: 1, unknown: 0 });
    }

    #[test]
    fn the_version_only_goes_up() {
        let mut h = raised();
        h.ok(Command::SetClusterVersion { version: 1 });
        assert_eq!(h.state.cluster_version(), 2);
        // One this build does not know is left alone (router-raft stops the node before it).
        h.ok(Command::SetClusterVersion { version: crate::version::CLUSTER_VERSION + 1 });
        assert_eq!(h.state.cluster_version(), 2);
    }

    #[test]
    fn raising_to_the_base_version_changes_nothing_a_snapshot_would_lose() {
        let mut state = State::default();
        let before = state.clone();
        assert_eq!(
            state.apply_batch(&Batch { stamp_ms: 1, commands: vec![Command::SetClusterVersion { version: 1 }] }),
            vec![Outcome::Done]
        );
        assert!(state.extras().is_none(), "a base-version state has no snapshot section");
        assert_eq!(State { clock_ms: 0, ..state }, before, "found by the state_machine fuzz target");
    }

    #[test]
    fn an_entry_acked_within_the_grace_after_its_expiry_is_not_reported() {
        let mut h = raised();
        h.user(PB, "bob", &[(1, 11)]);
        let s = h.stamp + 1;
        assert_eq!(h.at(s, send(PA, "m1", "bob", &[(1, 11)], 1_000)), sent(1, s));
        assert_eq!(h.state.next_expiry_ms(), Some(s + 1_000 + DELIVERY_ACK_GRACE_MS));
        // Past expires_at (streams no longer hand it out), inside the grace: the ack wins.
        let late = s + 1_000 + DELIVERY_ACK_GRACE_MS - 1;
        assert_eq!(walk_to(&mut h, late, ack(PB, &[1])), Outcome::Acked { removed: 1, unknown: 0 });
        walk_to(&mut h, late + 5_000, ack(PB, &[]));
        assert!(h.entries(PA).is_empty(), "no expiry report for a delivered and acked entry");
    }

    #[test]
    fn an_unacked_entry_is_reported_once_the_grace_is_over() {
        let mut h = raised();
        h.user(PB, "bob", &[(1, 11)]);
        let s = h.stamp + 1;
        h.at(s, send(PA, "m1", "bob", &[(1, 11)], 1_000));
        walk_to(&mut h, s + 1_000 + DELIVERY_ACK_GRACE_MS - 1, ack(PB, &[]));
        assert_eq!(h.seqs(PB), vec![1]);
        walk_to(&mut h, s + 1_000 + DELIVERY_ACK_GRACE_MS, ack(PB, &[]));
        assert!(h.entries(PB).is_empty());
        assert!(matches!(&h.entries(PA)[..], [MailboxEntry { seq: 1, item: MailboxItem::Expired { .. }, .. }]));
    }

    #[test]
    fn a_leader_clock_a_month_ahead_moves_time_by_one_step() {
        let mut h = raised();
        h.user(PB, "bob", &[(1, 11)]);
        let s = h.stamp + 1;
        h.at(s, send(PA, "m1", "bob", &[(1, 11)], 3_600_000));
        let month = 30 * 24 * 3_600_000;
        h.at(s + month, ack(PB, &[]));
        assert_eq!(h.state.clock_ms, s + MAX_CLOCK_STEP_MS);
        assert_eq!(h.seqs(PB), vec![1], "the queued envelope did not expire");
        // And never backwards.
        h.at(s, ack(PB, &[]));
        assert_eq!(h.state.clock_ms, s + MAX_CLOCK_STEP_MS);
    }

    #[test]
    fn before_the_version_is_raised_the_clock_follows_the_leader() {
        let mut h = Harness::new();
        let month = 30 * 24 * 3_600_000;
        h.at(T0 + month, ack(PB, &[]));
        assert_eq!(h.state.clock_ms, T0 + month);
    }

    #[test]
    fn a_retried_once_request_gets_the_first_answer_and_consumes_one_key() {
        let mut h = raised();
        h.user(PB, "bob", &[(1, 11)]);
        h.apply(upload_cmd(PB, "bob", 1, upload(1, Some(1), &[10, 11, 12], &[], None)));
        let request = RequestId { origin: 42, seq: 7 };
        let once = || Command::Once { request, command: Box::new(claim(PA, "bob", None)) };
        let first = h.apply(once());
        assert!(matches!(&first, Outcome::Bundles { bundles, .. } if bundles[0].one_time.is_some()), "{first:?}");
        let again = h.apply(once());
        assert_eq!(again, first, "the retry is answered from the window");
        let keys = h.state.user(&uid("bob")).and_then(|u| u.devices[&1].keys.clone()).expect("keys");
        assert_eq!(keys.one_time.len(), 2, "one key consumed, not two");
        // A different request id is a new claim.
        let other = h.apply(Command::Once {
            request: RequestId { origin: 42, seq: 8 },
            command: Box::new(claim(PA, "bob", None)),
        });
        assert_ne!(other, first);
    }

    #[test]
    fn a_rejected_once_request_leaves_no_answer_behind() {
        let mut h = raised();
        let request = RequestId { origin: 3, seq: 1 };
        let cmd = Command::Once { request, command: Box::new(claim(PA, "nobody", None)) };
        let before = h.state.clone();
        let out = h.at(h.stamp, cmd);
        assert!(matches!(out, Outcome::Rejected(Rejection::UserNotFound { .. })), "{out:?}");
        assert_eq!(h.state, before, "a rejection changes nothing, the Once window included");
    }

    #[test]
    fn once_answers_are_forgotten_after_the_window() {
        let mut h = raised();
        let request = RequestId { origin: 1, seq: 1 };
        let cmd = Command::Once { request, command: Box::new(ack(PB, &[])) };
        let s = h.stamp + 1;
        h.at(s, cmd.clone());
        assert_eq!(h.state.once.len(), 1);
        // The clock moves one step per entry at most: walk it past the window.
        let mut stamp = s;
        while stamp <= s + crate::version::ONCE_WINDOW_MS {
            stamp += MAX_CLOCK_STEP_MS / 2;
            h.at(stamp, ack(PB, &[]));
            if stamp <= s + crate::version::ONCE_WINDOW_MS {
                assert_eq!(h.state.once.len(), 1, "kept inside the window");
            }
        }
        assert!(h.state.once.is_empty());
    }

    #[test]
    fn extras_round_trip_and_are_absent_before_the_raise() {
        let h = Harness::new();
        assert!(h.state.extras().is_none(), "a state older builds can hold writes no extras");
        let h = raised();
        let extras = h.state.extras().expect("raised");
        let bytes = bincode::serialize(&extras).expect("encode");
        let back: crate::state::StateExtras = bincode::deserialize(&bytes).expect("decode");
        let mut copy: State = bincode::deserialize(&bincode::serialize(&h.state).expect("encode")).expect("decode");
        assert_eq!(copy.cluster_version(), crate::version::BASE_CLUSTER_VERSION, "not in the serde encoding");
        copy.set_extras(back);
        assert_eq!(copy, h.state);
    }

    #[test]
    fn a_restore_keeps_the_target_clusters_version() {
        let mut source = Harness::new();
        source.user(PB, "bob", &[(1, 11)]);
        let backup = source.state.clone();
        let mut h = raised();
        assert_eq!(h.apply(Command::Restore { state: Box::new(backup) }), Outcome::Done);
        assert_eq!(h.state.cluster_version(), 2);
        assert!(matches!(h.apply(send(PA, "m1", "bob", &[(1, 11)], 10_000)), Outcome::Sent { seq: 1, .. }));
    }
}

mod parted_restore {
    use super::*;
    use crate::state::restore::StateItem;
    use crate::version::MAX_CLOCK_STEP_MS;

    fn at_version_3() -> Harness {
        let mut h = Harness::new();
        h.ok(Command::SetClusterVersion { version: 3 });
        assert_eq!(h.state.cluster_version(), 3);
        h
    }

    /// A state with a bit of everything a backup carries.
    fn populated() -> Harness {
        let mut h = at_version_3();
        h.user(PA, "alice", &[(1, 10)]);
        h.user(PB, "bob", &[(1, 11), (2, 12)]);
        assert_eq!(h.apply(upload_cmd(PB, "bob", 1, upload(1, Some(1), &[1, 2, 3], &[], Some(9)))), stored(3, 0));
        assert!(matches!(h.apply(claim(PA, "bob", Some(1))), Outcome::Bundles { .. }));
        for n in 0..5 {
            let out = h.apply(send(PA, &format!("m{n}"), "bob", &[(1, 11), (2, 12)], 600_000));
            assert!(matches!(out, Outcome::Sent { .. }), "{out:?}");
        }
        assert!(matches!(h.apply(send(PB, "r1", "alice", &[(1, 10)], 600_000)), Outcome::Sent { .. }));
        h.ok(register_peer("eu-hub", &[PC]));
        h
    }

    fn restore_in_parts(target: &mut Harness, id: u64, items: Vec<StateItem>, per_part: usize) {
        target.ok(Command::RestoreBegin { id });
        let parts: Vec<Vec<StateItem>> = items.chunks(per_part).map(|c| c.to_vec()).collect();
        for (n, part) in parts.iter().enumerate() {
            target.ok(Command::RestoreItems { id, part: n as u32, items: part.clone() });
        }
        target.ok(Command::RestoreFinish { id, parts: parts.len() as u32 });
    }

    #[test]
    fn a_state_restored_in_parts_is_the_state_backed_up() {
        let source = populated();
        let items: Vec<StateItem> = source.state.clone().into_items().collect();
        assert!(matches!(items[0], StateItem::Settings { .. }), "settings come first");
        assert!(matches!(items.last(), Some(StateItem::Peers(_))));
        let mut target = at_version_3();
        restore_in_parts(&mut target, 7, items, 3);
        assert_eq!(target.state.restore_progress(), None);
        // Everything but what is the target cluster's own.
        let mut expected = source.state.clone();
        expected.clock_ms = target.state.clock_ms;
        expected.once = target.state.once.clone();
        assert_eq!(target.state, expected);
        // The dedup window answers a retry as the source would.
        let retry = send(PA, "m2", "bob", &[(1, 11), (2, 12)], 600_000);
        let mut source = source;
        assert_eq!(target.apply(retry.clone()), source.apply(retry));
    }

    #[test]
    fn while_a_restore_runs_other_writes_are_refused_and_nothing_expires() {
        let mut source = at_version_3();
        source.user(PB, "bob", &[(1, 11)]);
        assert!(matches!(source.apply(send(PA, "short", "bob", &[(1, 11)], 1_000)), Outcome::Sent { .. }));
        let items: Vec<StateItem> = source.state.clone().into_items().collect();
        let mut h = at_version_3();
        h.ok(Command::RestoreBegin { id: 1 });
        h.ok(Command::RestoreItems { id: 1, part: 0, items: items.clone() });
        assert_eq!(h.reject_unchanged(register_user(PA, "alice")), Rejection::RestoreInProgress);
        assert_eq!(h.reject_unchanged(ack(PB, &[1])), Rejection::RestoreInProgress);
        assert!(Rejection::RestoreInProgress.is_transient());
        // Time passes well beyond the entry's TTL and grace: it stays.
        for _ in 0..5 {
            let stamp = h.stamp + MAX_CLOCK_STEP_MS;
            h.batch_at(stamp, vec![]);
        }
        assert_eq!(h.seqs(PB), vec![1]);
        // A retried part changes nothing; a gap or another restore's part is refused.
        let before = h.state.clone();
        h.ok(Command::RestoreItems { id: 1, part: 0, items: items.clone() });
        assert_eq!(h.state.restore_progress(), before.restore_progress());
        assert_eq!(
            h.reject_unchanged(Command::RestoreItems { id: 1, part: 2, items: vec![] }),
            Rejection::RestoreMismatch { id: 1, expected_part: 1, part: 2 }
        );
        assert!(matches!(
            h.reject_unchanged(Command::RestoreItems { id: 2, part: 1, items: vec![] }),
            Rejection::RestoreMismatch { id: 2, .. }
        ));
        assert!(matches!(
            h.reject_unchanged(Command::RestoreFinish { id: 1, parts: 3 }),
            Rejection::RestoreMismatch { expected_part: 1, .. }
        ));
        h.ok(Command::RestoreFinish { id: 1, parts: 1 });
        // Time resumes: the entry expires and its sender hears of it.
        let stamp = h.stamp + MAX_CLOCK_STEP_MS;
        h.batch_at(stamp, vec![]);
        assert!(h.seqs(PB).is_empty());
        assert!(matches!(h.entries(PA)[0].item, MailboxItem::Expired { .. }));
    }

    #[test]
    fn a_new_restore_starts_over_one_that_was_cut_off() {
        let source = populated();
        let items: Vec<StateItem> = source.state.clone().into_items().collect();
        let mut h = at_version_3();
        h.ok(Command::RestoreBegin { id: 1 });
        h.ok(Command::RestoreItems { id: 1, part: 0, items: items[..4].to_vec() });
        // The operator runs the restore again: the first one's items are gone.
        h.ok(Command::RestoreBegin { id: 2 });
        assert!(h.state.users.is_empty() && h.state.providers.is_empty());
        restore_in_parts(&mut h, 3, items, 5);
        assert_eq!(h.state.users, source.state.users);
        assert_eq!(h.state.mailboxes, source.state.mailboxes);
    }

    #[test]
    fn a_restore_needs_an_empty_cluster_at_version_3() {
        let mut h = Harness::new();
        h.ok(Command::SetClusterVersion { version: 2 });
        assert_eq!(
            h.reject_unchanged(Command::RestoreBegin { id: 1 }),
            Rejection::ClusterVersionTooLow { needed: 3, current: 2 }
        );
        let mut h = at_version_3();
        h.user(PB, "bob", &[(1, 11)]);
        assert_eq!(h.reject_unchanged(Command::RestoreBegin { id: 1 }), Rejection::RestoreIntoNonEmpty);
        assert!(matches!(
            h.reject_unchanged(Command::RestoreItems { id: 1, part: 0, items: vec![] }),
            Rejection::RestoreMismatch { .. }
        ));
    }

    #[test]
    fn restored_mailboxes_hand_out_sequences_after_the_backups() {
        let source = populated();
        let next = source.state.mailboxes[&pid(PB)].next_seq;
        let mut h = at_version_3();
        restore_in_parts(&mut h, 1, source.state.clone().into_items().collect(), 100);
        let out = h.apply(send(PA, "new", "bob", &[(1, 11), (2, 12)], 600_000));
        assert!(matches!(out, Outcome::Sent { seq, .. } if seq == next), "{out:?}");
    }
}

mod incarnations {
    use super::*;
    use crate::state::incarnation::INCARNATION_VERSION;

    #[test]
    fn below_version_4_nothing_is_recorded_and_every_incarnation_is_admitted() {
        let mut h = Harness::new();
        h.ok(Command::SetClusterVersion { version: INCARNATION_VERSION - 1 });
        let refused = h.reject_unchanged(Command::SetIncarnation { node: 2, incarnation: 77 });
        assert_eq!(refused, Rejection::ClusterVersionTooLow { needed: INCARNATION_VERSION, current: 3 });
        assert!(h.state.admits_incarnation(2, 77) && h.state.admits_incarnation(2, 0));
        assert_eq!(h.state.incarnation_of(2), None);
    }

    #[test]
    fn a_recorded_incarnation_admits_only_itself_until_it_is_replaced() {
        let mut h = Harness::new();
        h.ok(Command::SetClusterVersion { version: INCARNATION_VERSION });
        h.ok(Command::SetIncarnation { node: 2, incarnation: 77 });
        assert_eq!(h.state.incarnation_of(2), Some(77));
        assert!(h.state.admits_incarnation(2, 77));
        assert!(!h.state.admits_incarnation(2, 78), "a wiped node's new incarnation");
        assert!(!h.state.admits_incarnation(2, 0), "a build without incarnations under a recorded id");
        assert!(h.state.admits_incarnation(3, 5), "node 3 has no record yet");
        h.ok(Command::SetIncarnation { node: 2, incarnation: 78 });
        assert!(h.state.admits_incarnation(2, 78) && !h.state.admits_incarnation(2, 77));
    }

    #[test]
    fn a_restore_keeps_the_clusters_own_incarnations_and_backups_carry_none() {
        let mut source = Harness::new();
        source.ok(Command::SetClusterVersion { version: INCARNATION_VERSION });
        source.ok(Command::SetIncarnation { node: 1, incarnation: 11 });
        source.user(PB, "bob", &[(1, 11)]);
        let items: Vec<crate::state::restore::StateItem> = source.state.clone().into_items().collect();
        let mut target = Harness::new();
        target.ok(Command::SetClusterVersion { version: INCARNATION_VERSION });
        target.ok(Command::SetIncarnation { node: 1, incarnation: 99 });
        target.ok(Command::RestoreBegin { id: 3 });
        assert_eq!(target.state.incarnation_of(1), Some(99), "kept through the restore");
        target.ok(Command::SetIncarnation { node: 2, incarnation: 5 });
        target.ok(Command::RestoreItems { id: 3, part: 0, items });
        target.ok(Command::RestoreFinish { id: 3, parts: 1 });
        assert_eq!(target.state.incarnations(), &std::collections::BTreeMap::from([(1, 99), (2, 5)]));
        assert!(target.state.user(&uid("bob")).is_some());
    }
}

// ------------------------------------------------------ cluster version 5

mod cluster_version_5 {
    use super::*;
    use crate::dedup::SENDER_WINDOWS_VERSION;
    use crate::state::restore::StateItem;

    fn flood(h: &mut Harness, sender: &str, n: usize, stamp: u64) {
        let sends: Vec<_> = (0..n).map(|i| send(sender, &format!("{sender}-{i}"), "bob", &[(1, 11)], 60_000)).collect();
        h.batch_at(stamp, sends);
    }

    /// Below version 5 the cap is shared: a flood from one sender evicts
    /// another sender's answer, and its retry is stored a second time.
    #[test]
    fn below_version_5_one_senders_flood_evicts_anothers_answer() {
        let limits = Limits { max_dedup_entries: 3, max_mailbox_entries: 100, ..Limits::default() };
        let mut h = Harness::with_limits(limits);
        h.user(PB, "bob", &[(1, 11)]);
        h.at(T0 + 1, send(PC, "c-1", "bob", &[(1, 11)], 60_000));
        flood(&mut h, PA, 5, T0 + 2);
        h.at(T0 + 3, ack(PC, &[]));
        assert_eq!(h.state.dedup_answer(&pid(PC), &mid("c-1")), None, "evicted by pa's flood");
    }

    #[test]
    fn from_version_5_a_flood_evicts_only_its_senders_answers() {
        let limits = Limits { max_dedup_entries: 3, max_mailbox_entries: 100, ..Limits::default() };
        let mut h = Harness::with_limits(limits);
        h.ok(Command::SetClusterVersion { version: SENDER_WINDOWS_VERSION });
        h.user(PB, "bob", &[(1, 11)]);
        let first = h.at(T0 + 1, send(PC, "c-1", "bob", &[(1, 11)], 60_000));
        flood(&mut h, PA, 5, T0 + 2);
        h.at(T0 + 3, ack(PC, &[]));
        assert_eq!(h.state.dedup_answer(&pid(PC), &mid("c-1")), Some(first.clone()));
        // pa keeps its newest three, oldest first out.
        assert_eq!(h.state.dedup_answer(&pid(PA), &mid("pa-0")), None);
        assert!(h.state.dedup_answer(&pid(PA), &mid("pa-2")).is_some());
        assert_eq!(h.state.send_answers().len(), 4);
        // A retry of pc's send is answered, not stored again.
        let depth = h.state.mailbox_depth(&pid(PB));
        assert_eq!(h.at(T0 + 4, send(PC, "c-1", "bob", &[(1, 11)], 60_000)), first);
        assert_eq!(h.state.mailbox_depth(&pid(PB)), depth);
    }

    /// The entry that raises the version turns the shared window into
    /// per-sender windows holding every answer, on every replica alike.
    #[test]
    fn raising_the_version_keeps_every_answer() {
        let limits = Limits { max_mailbox_entries: 100, ..Limits::default() };
        let mut h = Harness::with_limits(limits);
        h.user(PB, "bob", &[(1, 11)]);
        h.ok(Command::SetClusterVersion { version: SENDER_WINDOWS_VERSION - 1 });
        flood(&mut h, PA, 4, T0 + 2);
        flood(&mut h, PC, 2, T0 + 3);
        let before: Vec<_> = ["pa-0", "pa-3", "pc-1"]
            .iter()
            .map(|m| h.state.dedup_answer(&pid(&m[..2]), &mid(m)).expect("remembered"))
            .collect();
        let mut replica = h.state.clone();
        h.ok(Command::SetClusterVersion { version: SENDER_WINDOWS_VERSION });
        assert!(h.state.send_answers().sender_windows().is_some());
        assert_eq!(h.state.send_answers().len(), 6);
        let after: Vec<_> =
            ["pa-0", "pa-3", "pc-1"].iter().map(|m| h.state.dedup_answer(&pid(&m[..2]), &mid(m)).unwrap()).collect();
        assert_eq!(before, after);
        replica.apply_batch(&Batch {
            stamp_ms: h.stamp,
            commands: vec![Command::SetClusterVersion { version: SENDER_WINDOWS_VERSION }],
        });
        assert_eq!(replica, h.state);
        assert_eq!(format!("{replica:?}"), format!("{:?}", h.state), "same rendering on every replica");
    }

    /// A backup of a version-5 state restores its answers into a version-5
    /// cluster; the shared layout cannot hold them (the node refuses such a
    /// restore into an older cluster, `StateItem::needs_sender_windows`).
    #[test]
    fn per_sender_answers_survive_a_backup_and_a_restore_in_parts() {
        let limits = Limits { max_mailbox_entries: 100, ..Limits::default() };
        let mut source = Harness::with_limits(limits.clone());
        source.ok(Command::SetClusterVersion { version: SENDER_WINDOWS_VERSION });
        source.user(PB, "bob", &[(1, 11)]);
        flood(&mut source, PA, 3, T0 + 2);
        let items: Vec<StateItem> = source.state.clone().into_items().collect();
        assert!(items.iter().any(StateItem::needs_sender_windows));
        let offline = State::from_items(items.clone());
        assert_eq!(offline.dedup_answer(&pid(PA), &mid("pa-1")), source.state.dedup_answer(&pid(PA), &mid("pa-1")));

        let mut target = Harness::with_limits(limits);
        target.ok(Command::SetClusterVersion { version: SENDER_WINDOWS_VERSION });
        assert_eq!(target.apply(Command::RestoreBegin { id: 7 }), Outcome::Done);
        assert_eq!(target.apply(Command::RestoreItems { id: 7, part: 0, items }), Outcome::Done);
        assert_eq!(target.apply(Command::RestoreFinish { id: 7, parts: 1 }), Outcome::Done);
        for m in ["pa-0", "pa-1", "pa-2"] {
            assert_eq!(target.state.dedup_answer(&pid(PA), &mid(m)), source.state.dedup_answer(&pid(PA), &mid(m)));
        }
        let depth = target.state.mailbox_depth(&pid(PB));
        target.at(target.stamp + 1, send(PA, "pa-1", "bob", &[(1, 11)], 60_000));
        assert_eq!(target.state.mailbox_depth(&pid(PB)), depth, "a retry after the restore is not stored again");
    }
}
