//! The generated part of the seed corpus in `chaos/fuzz/corpus/<target>/`.
//! Regenerate with `bash deploy/fuzz.sh --write-seeds`, which runs each
//! target binary with `ROUTER_FUZZ_WRITE_SEEDS=<dir>`: the target's init hook
//! then writes its seeds there and exits instead of fuzzing. (`config` seeds
//! are hand-written TOML files; `state_machine` seeds are inputs picked from
//! a fuzzing run by what they reach, see the README.)
//!
//! - `log_entry`: encoded stored values: log entries (the populated world's
//!   setup batch, a batch of claims/sends/acks/group changes against it, a
//!   membership entry, a blank entry), a vote, a log id, a snapshot.
//! - `proto_decode`: one valid encoded request of every kind, the upload
//!   with real XEdDSA signatures so mutations get past the signature checks.

use crate::log_entry::{send, upload, world, world_commands};
use crate::proto_decode::KINDS;
use bytes::Bytes;
use openraft::{CommittedLeaderId, EntryPayload, Membership};
use prost::Message;
use router_core::{Batch, Command, GroupId, ProviderId, Role, UserId};
use router_prekeys::sign::KeyPair;
use router_proto::v1;
use router_raft::codec::encode;
use router_raft::{Entry, LogId, NodeAddr, SnapshotMeta, StoredMembership, Vote};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

pub const ENV: &str = "ROUTER_FUZZ_WRITE_SEEDS";

/// The init hook of every target: with `ROUTER_FUZZ_WRITE_SEEDS=<dir>`, write
/// this target's seeds into `<dir>` and exit.
pub fn write_if_asked(target: &str) {
    let Some(dir) = std::env::var_os(ENV) else {
        return;
    };
    let dir = Path::new(&dir);
    std::fs::create_dir_all(dir).expect("create the seed directory");
    let seeds = match target {
        "log_entry" => log_entry(),
        "proto_decode" => proto_decode(),
        _ => Vec::new(),
    };
    for (name, bytes) in &seeds {
        std::fs::write(dir.join(name), bytes).expect("write a seed");
    }
    eprintln!("{target}: wrote {} seeds to {}", seeds.len(), dir.display());
    std::process::exit(0);
}

fn log_id(term: u64, index: u64) -> LogId {
    LogId::new(CommittedLeaderId::new(term, 1), index)
}

fn entry(index: u64, payload: EntryPayload<router_raft::TypeConfig>) -> Vec<u8> {
    encode(&Entry { log_id: log_id(2, index), payload }).expect("encode entry")
}

fn membership() -> Membership<u64, NodeAddr> {
    let nodes: BTreeMap<u64, NodeAddr> = (1..=3)
        .map(|i| (i, NodeAddr { peer: format!("127.0.0.1:74{i}2"), provider: format!("127.0.0.1:74{i}1") }))
        .collect();
    Membership::new(vec![BTreeSet::from([1, 2, 3])], nodes)
}

fn log_entry() -> Vec<(String, Vec<u8>)> {
    let w = &world().0;
    let (p, u) = (|i: usize| ProviderId::new(["pa", "pb", "pc"][i]), |i: usize| UserId::new(format!("u{i}")));
    let traffic = Batch {
        stamp_ms: w.clock_ms + 1_000,
        commands: vec![
            Command::ClaimPrekeys { requester: p(1), user: u(0), device: None },
            Command::ClaimPrekeys { requester: p(2), user: u(0), device: Some(1) },
            send(p(1), u(1), u(2), "again", 1),
            send(p(1), u(1), u(2), "again", 1),
            Command::Ack { provider: p(1), seqs: vec![0, 7] },
            Command::ChangeGroup {
                provider: p(0),
                actor: u(0),
                group: GroupId::new("g0"),
                set: vec![(u(1), Role::Admin)],
                remove: vec![u(3)],
            },
            Command::UploadPrekeys { provider: p(1), user: u(1), device: 1, upload: upload(9) },
            Command::DeregisterUser { provider: p(2), user: u(2) },
        ],
    };
    // Version 2: the raise, then Once requests (one retried), written in
    // the format that holds them.
    let once = |seq: u64, command: Command| Command::Once {
        request: router_core::RequestId { origin: 2, seq },
        command: Box::new(command),
    };
    let version_2 = Batch {
        stamp_ms: w.clock_ms + 1_000,
        commands: vec![
            Command::SetClusterVersion { version: 2 },
            once(1, Command::ClaimPrekeys { requester: p(1), user: u(0), device: None }),
            once(1, Command::ClaimPrekeys { requester: p(1), user: u(0), device: None }),
            once(2, Command::UploadPrekeys { provider: p(1), user: u(1), device: 1, upload: upload(7) }),
            send(p(1), u(1), u(2), "after-raise", 1),
        ],
    };
    let version_2 = Entry { log_id: log_id(2, 43), payload: EntryPayload::Normal(version_2) };
    let version_2 =
        router_raft::codec::encode_at(router_raft::codec::entry_format(&version_2), &version_2).expect("encode entry");
    let later = Batch { stamp_ms: w.clock_ms + 120_000, commands: vec![send(p(0), u(0), u(1), "late", 0)] };
    let payload = StoredSnapshotSeed {
        last_applied: Some(log_id(2, 40)),
        membership: StoredMembership::new(Some(log_id(1, 1)), membership()),
        state: w.clone(),
    };
    let snapshot_data = encode(&payload).expect("encode snapshot payload");
    let meta = SnapshotMeta {
        last_log_id: Some(log_id(2, 40)),
        last_membership: StoredMembership::new(Some(log_id(1, 1)), membership()),
        snapshot_id: "2-40-1".into(),
    };
    vec![
        (
            "entry-world".into(),
            entry(3, EntryPayload::Normal(Batch { stamp_ms: 1_700_000_000_000, commands: world_commands() })),
        ),
        ("entry-traffic".into(), entry(41, EntryPayload::Normal(traffic))),
        ("entry-expiry".into(), entry(42, EntryPayload::Normal(later))),
        ("entry-version-2".into(), version_2),
        ("entry-membership".into(), entry(1, EntryPayload::Membership(membership()))),
        ("entry-blank".into(), entry(2, EntryPayload::Blank)),
        ("vote".into(), encode(&Vote::new_committed(2, 1)).expect("encode vote")),
        ("committed".into(), encode(&Some(log_id(2, 41))).expect("encode log id")),
        ("snapshot".into(), encode(&(meta, snapshot_data)).expect("encode snapshot")),
    ]
}

/// Same layout as router-raft's snapshot payload.
#[derive(serde::Serialize)]
struct StoredSnapshotSeed {
    last_applied: Option<LogId>,
    membership: StoredMembership,
    state: router_core::State,
}

fn request(kind: &str, provider: usize, msg: &impl Message) -> (String, Vec<u8>) {
    let index = KINDS.iter().position(|k| *k == kind).expect("known kind");
    let selector = (index + provider * KINDS.len()) as u8;
    let mut bytes = vec![selector];
    bytes.extend(msg.encode_to_vec());
    (kind.to_string(), bytes)
}

fn signed_upload() -> v1::UploadPrekeysRequest {
    let identity = KeyPair::from_private([7; 32]);
    let sign = |msg: &[u8], n: u8| Bytes::from(identity.sign(msg, &[n; 64]).to_vec());
    let ec = |n: u8| KeyPair::from_private([n; 32]).public.to_vec();
    let spk = Bytes::from(ec(8));
    let mut kyber = vec![0x07];
    kyber.extend((0..1184).map(|i| (i % 251) as u8));
    let kyber = Bytes::from(kyber);
    v1::UploadPrekeysRequest {
        user_id: "u0".into(),
        device_id: 1,
        identity_key: Bytes::from(identity.public.to_vec()),
        signed_prekey: Some(v1::SignedEcPrekey { key_id: 1, signature: sign(&spk, 1), public_key: spk }),
        one_time_prekeys: (10..13)
            .map(|n| v1::EcOneTimePrekey { key_id: u32::from(n), public_key: Bytes::from(ec(n)) })
            .collect(),
        kyber_one_time_prekeys: vec![v1::SignedKyberPrekey {
            key_id: 20,
            signature: sign(&kyber, 2),
            public_key: kyber.clone(),
        }],
        kyber_last_resort: Some(v1::SignedKyberPrekey { key_id: 99, signature: sign(&kyber, 3), public_key: kyber }),
    }
}

fn proto_decode() -> Vec<(String, Vec<u8>)> {
    let part = |device_id: u32| v1::DeviceCiphertext {
        device_id,
        registration_id: 1,
        message_type: 2,
        ciphertext: Bytes::from_static(b"signal-message"),
    };
    vec![
        request("RegisterUser", 0, &v1::RegisterUserRequest { user_id: "tel:+4915112345678".into() }),
        request("DeregisterUser", 1, &v1::DeregisterUserRequest { user_id: "u1".into() }),
        request(
            "RegisterDevice",
            0,
            &v1::RegisterDeviceRequest { user_id: "u0".into(), device_id: 2, registration_id: 77 },
        ),
        request("RemoveDevice", 0, &v1::RemoveDeviceRequest { user_id: "u0".into(), device_id: 1 }),
        request("Resolve", 1, &v1::ResolveRequest { user_id: "u0".into() }),
        request("UploadPrekeys", 0, &signed_upload()),
        request("FetchBundles", 1, &v1::FetchBundlesRequest { user_id: "u0".into(), device_id: 0 }),
        request("PrekeyCount", 0, &v1::PrekeyCountRequest { user_id: "u0".into(), device_id: 1 }),
        request(
            "Send",
            0,
            &v1::SendRequest {
                message_id: "msg-0001".into(),
                recipient_user_id: "u1".into(),
                content_type: v1::ContentType::Message as i32,
                ttl_seconds: 3600,
                parts: vec![part(1)],
                sender_user_id: "u0".into(),
                sender_device_id: 1,
            },
        ),
        request("Receive", 0, &v1::ReceiveRequest { window: 64 }),
        request("Ack", 1, &v1::AckRequest { seqs: vec![0, 1, 5] }),
        request(
            "CreateGroup",
            0,
            &v1::CreateGroupRequest {
                group_id: "g1".into(),
                creator_user_id: "u0".into(),
                members: vec![
                    v1::GroupMember { user_id: "u1".into(), role: v1::GroupRole::Member as i32 },
                    v1::GroupMember { user_id: "u2".into(), role: v1::GroupRole::Admin as i32 },
                ],
            },
        ),
        request(
            "UpdateGroup",
            0,
            &v1::UpdateGroupRequest {
                group_id: "g0".into(),
                actor_user_id: "u0".into(),
                set: vec![v1::GroupMember { user_id: "u1".into(), role: v1::GroupRole::Admin as i32 }],
                remove_user_ids: vec!["u3".into()],
            },
        ),
        request("GetGroup", 0, &v1::GetGroupRequest { group_id: "g0".into() }),
        request(
            "SendGroup",
            0,
            &v1::SendGroupRequest {
                group_id: "g0".into(),
                message_id: "grp-0001".into(),
                sender_user_id: "u0".into(),
                sender_device_id: 1,
                content_type: v1::ContentType::Message as i32,
                ttl_seconds: 0,
                ciphertext: Bytes::from_static(b"sender-key-message"),
                per_device: vec![v1::GroupDevicePart { user_id: "u1".into(), part: Some(part(1)) }],
            },
        ),
        request(
            "SetMediaHosts",
            0,
            &v1::SetMediaHostsRequest { media_hosts: vec!["media.example.net".into(), "cdn.example.net:8443".into()] },
        ),
        request(
            "FetchMedia",
            1,
            &v1::FetchMediaRequest {
                url: "https://cdn.example.net:8443/blobs/abc?sig=1".into(),
                sender_provider_id: "pa".into(),
                expected_sha256: Bytes::from(vec![0xab; 32]),
                max_bytes: 0,
            },
        ),
    ]
}
