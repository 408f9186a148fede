//! `log_entry`: arbitrary bytes -> every kind of value router-raft reads back
//! from disk, through its real decoder (`router_raft::codec::decode`: format
//! version byte, then bincode): log entry, vote, committed and purged log
//! ids, stored snapshot and snapshot payload. None may panic; whatever
//! decodes must encode back to a value that decodes the same. A decoded log
//! entry's batch is then applied to a populated state (users, devices,
//! prekeys, mail, a group) and checked like the `state_machine` target, with
//! a second replica that must answer and end the same.

use crate::check::Checker;
use crate::model::T0;
use bytes::Bytes;
use openraft::EntryPayload;
use router_core::{
    Batch, Command, ContentType, DevicePart, GroupId, Limits, MessageId, OneTimePrekey, Outcome, PrekeyUpload,
    ProviderId, Role, SendEnvelope, SignedPrekey, State, UserId,
};
use router_raft::codec::{decode, encode};
use router_raft::{Entry, LogId, SnapshotMeta, StoredMembership, Vote};
use serde::{Deserialize, Serialize};
use std::sync::OnceLock;

/// Mirrors router-raft's private `StoredSnapshot` (meta tree, key `snapshot`).
#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta,
    data: Vec<u8>,
}

/// Mirrors router-raft's private `SnapshotPayload` (a snapshot's data).
#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct SnapshotPayload {
    last_applied: Option<LogId>,
    membership: StoredMembership,
    state: State,
}

/// Decodes `data` as `T`; if it decodes, its encoding must decode to the same value.
fn round_trip<T>(data: &[u8]) -> Option<T>
where
    T: Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug,
{
    let value: T = decode(data).ok()?;
    let again: T = decode(&encode(&value).expect("encode a decoded value")).expect("decode an encoded value");
    assert_eq!(again, value, "round trip of a stored {}", std::any::type_name::<T>());
    Some(value)
}

pub fn run(data: &[u8]) {
    round_trip::<Vote>(data);
    round_trip::<Option<LogId>>(data);
    round_trip::<LogId>(data);
    round_trip::<StoredSnapshot>(data);
    round_trip::<SnapshotPayload>(data);

    let Ok(entry) = decode::<Entry>(data) else {
        return;
    };
    let again: Entry = decode(&encode(&entry).expect("encode entry")).expect("decode entry");
    assert_eq!((&again.log_id, &again.payload), (&entry.log_id, &entry.payload), "log entry round trip");
    let EntryPayload::Normal(batch) = entry.payload else {
        return;
    };
    apply(&batch);
}

/// Applies one decoded batch to the populated state, checked, on two replicas.
fn apply(batch: &Batch) {
    let (before, checker) = world();
    let mut checker = checker.clone();
    let mut state = before.clone();
    let mut replica = before.clone();
    let outs = state.apply_batch(batch);
    checker.batch(before, batch, &outs, &state);
    assert_eq!(outs, replica.apply_batch(batch), "replicas answered differently");
    assert_eq!(state, replica, "replicas diverged");
    // (A restore of a decoded state stops the checks: core trusts a backup.)
    checker.finish(&state);
}

/// `pa`, `pb`, `pc` active; `u0`..`u3` registered (device 1, prekeys
/// uploaded); some mail in every mailbox; group `g0` of all four users.
/// With the checker that watched it being built (it knows the dedup).
pub fn world() -> &'static (State, Checker) {
    static WORLD: OnceLock<(State, Checker)> = OnceLock::new();
    WORLD.get_or_init(|| {
        let empty = State::new(Limits { max_mailbox_entries: 64, claim_burst: 4, ..Limits::default() });
        let mut checker = Checker::new(&empty, false);
        let batch = Batch { stamp_ms: T0, commands: world_commands() };
        let mut s = empty.clone();
        let outs = s.apply_batch(&batch);
        assert!(outs.iter().all(|o| !matches!(o, Outcome::Rejected(_))), "world setup: {outs:?}");
        checker.batch(&empty, &batch, &outs, &s);
        (s, checker)
    })
}

/// The commands that build [`world`] (also the seeds of the corpus).
pub fn world_commands() -> Vec<Command> {
    let p = |i: usize| ProviderId::new(["pa", "pb", "pc"][i % 3]);
    let u = |i: usize| UserId::new(format!("u{i}"));
    let mut cmds: Vec<Command> = (0..3).map(|i| Command::AddProvider { provider: p(i) }).collect();
    for i in 0..4 {
        cmds.push(Command::RegisterUser { provider: p(i), user: u(i) });
        cmds.push(Command::RegisterDevice { provider: p(i), user: u(i), device: 1, registration_id: 1 });
        cmds.push(Command::UploadPrekeys { provider: p(i), user: u(i), device: 1, upload: upload(i as u8) });
    }
    for i in 0..4 {
        cmds.push(send(p(i), u(i), u((i + 1) % 4), &format!("hello-{i}"), 60_000));
    }
    cmds.push(Command::CreateGroup {
        provider: p(0),
        creator: u(0),
        group: GroupId::new("g0"),
        members: (1..4).map(|i| (u(i), Role::Member)).collect(),
    });
    cmds
}

pub fn upload(n: u8) -> PrekeyUpload {
    let signed = |key_id: u32| SignedPrekey {
        key_id,
        public_key: Bytes::from(vec![n; 33]),
        signature: Bytes::from(vec![n ^ 0xff; 64]),
    };
    PrekeyUpload {
        identity_key: Bytes::from(vec![0x05; 33]),
        signed_prekey: Some(signed(1)),
        one_time: (1..=3).map(|key_id| OneTimePrekey { key_id, public_key: Bytes::from(vec![n; 33]) }).collect(),
        kyber_one_time: (1..=2).map(signed).collect(),
        kyber_last_resort: Some(signed(99)),
    }
}

pub fn send(sender: ProviderId, from: UserId, to: UserId, message_id: &str, ttl_ms: u64) -> Command {
    Command::Send(SendEnvelope {
        sender,
        sender_user: Some(from),
        sender_device: Some(1),
        message_id: MessageId::new(message_id),
        recipient: to,
        content_type: ContentType::Message,
        ttl_ms,
        parts: vec![DevicePart {
            device: 1,
            registration_id: 1,
            message_type: 2,
            ciphertext: router_core::Blob::from_static(b"ciphertext"),
        }],
        traceparent: None,
    })
}
