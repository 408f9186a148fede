//! Provider clients inside the simulation: senders (alpha's devices to bob's
//! two devices, each message retried under its id until a definite answer, as
//! the SDK does), prekey claimers from both providers on carol's device, and
//! beta's receiver, which reads its mailbox from a replica and acks what it
//! read. Every operation lands in the [`History`] with ok / failed / unknown.

use crate::net::Net;
use bytes::Bytes;
use openraft::error::{ClientWriteError, RaftError};
use rand::Rng;
use rand::rngs::StdRng;
use router_core::{
    Batch, Command, ContentType, DevicePart, MailboxItem, MessageId, Outcome, PrekeyUpload, ProviderId, SendEnvelope,
    UserId,
};
use router_core::{OneTimePrekey, SignedPrekey};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

pub const ALPHA: &str = "alpha";
pub const BETA: &str = "beta";
pub const SENDER: &str = "alice";
pub const RECIPIENT: &str = "bob";
pub const KEY_OWNER: &str = "carol";
/// bob's devices and their registration ids.
pub const RECIPIENT_DEVICES: [(u32, u32); 2] = [(1, 1001), (2, 1002)];
/// Leader stamps start here (a fixed wall-clock origin keeps runs identical).
const EPOCH_MS: u64 = 1_800_000_000_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Res {
    Ok,
    Failed,
    Unknown,
}

#[derive(Clone, Debug)]
pub enum Kind {
    Send { device: u32, index: u64 },
    Claim { requester: &'static str, one_time: Option<u32> },
}

#[derive(Clone, Debug)]
pub struct Op {
    pub kind: Kind,
    pub res: Res,
    pub start_ms: u64,
    pub end_ms: u64,
    pub detail: String,
}

#[derive(Clone, Debug)]
pub struct Received {
    pub seq: u64,
    pub message_id: String,
    pub at_ms: u64,
}

#[derive(Default)]
pub struct History {
    pub ops: Vec<Op>,
    pub received: Vec<Received>,
    pub faults: Vec<(u64, String)>,
    pub unexpected: Vec<String>,
}

#[derive(Clone)]
pub struct World {
    pub net: Net,
    pub history: Arc<Mutex<History>>,
    pub t0: Instant,
    pub stop: Arc<AtomicBool>,
}

/// What one attempt at a write came to.
pub enum Attempt {
    Done(Outcome),
    /// Definitely not applied (the node knew it was not the leader).
    NotLeader,
    /// Maybe applied: the node died, or no answer in time.
    Unknown,
}

impl World {
    pub fn now_ms(&self) -> u64 {
        self.t0.elapsed().as_millis() as u64
    }

    pub fn history(&self) -> std::sync::MutexGuard<'_, History> {
        self.history.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn stopped(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    /// One write, sent where the client believes the leader is (or to any up node).
    pub async fn submit(&self, rng: &mut StdRng, cmd: Command) -> Attempt {
        let raft = {
            let net = self.net.lock();
            if net.up.is_empty() {
                None
            } else {
                let ids: Vec<_> = net.up.keys().copied().collect();
                let asked = ids[rng.gen_range(0..ids.len())];
                let believed = net.up[&asked].metrics().borrow().current_leader;
                Some(believed.and_then(|l| net.up.get(&l).cloned()).unwrap_or_else(|| net.up[&asked].clone()))
            }
        };
        let Some(raft) = raft else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            return Attempt::NotLeader;
        };
        let batch = Batch { stamp_ms: EPOCH_MS + self.now_ms(), commands: vec![cmd] };
        match tokio::time::timeout(Duration::from_secs(1), raft.client_write(batch)).await {
            Ok(Ok(resp)) => match resp.data.into_iter().next() {
                Some(o) => Attempt::Done(o),
                None => Attempt::Unknown,
            },
            Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_)))) => {
                tokio::time::sleep(Duration::from_millis(20)).await;
                Attempt::NotLeader
            }
            Ok(Err(_)) | Err(_) => Attempt::Unknown,
        }
    }

    /// Setup writes: retried until applied; anything but success is a setup failure.
    pub async fn must(&self, rng: &mut StdRng, cmd: Command, deadline: Instant) -> Result<Outcome, String> {
        while Instant::now() < deadline {
            match self.submit(rng, cmd.clone()).await {
                Attempt::Done(Outcome::Rejected(r)) => return Err(format!("setup {cmd:?} rejected: {r:?}")),
                Attempt::Done(o) => return Ok(o),
                Attempt::NotLeader | Attempt::Unknown => tokio::time::sleep(Duration::from_millis(30)).await,
            }
        }
        Err(format!("setup {cmd:?} not applied in time"))
    }
}

fn pid(s: &str) -> ProviderId {
    ProviderId::new(s)
}
fn uid(s: &str) -> UserId {
    UserId::new(s)
}

fn signed(key_id: u32) -> SignedPrekey {
    SignedPrekey { key_id, public_key: Bytes::from(vec![5; 33]), signature: Bytes::from(vec![7; 64]) }
}

/// The members' incarnations, providers, users, devices, and `keys`
/// one-time prekeys on carol's device.
pub fn setup_commands(incarnations: &[(u64, u64)], senders: u32, keys: u32) -> Vec<Command> {
    let mut limits = router_core::Limits { claim_burst: 1_000_000, claim_refill_ms: 1, ..Default::default() };
    limits.max_one_time_prekeys_per_device = limits.max_one_time_prekeys_per_device.max(keys);
    let mut cmds = vec![
        // The rules this build applies (what a new cluster of it starts with).
        Command::SetClusterVersion { version: router_core::CLUSTER_VERSION },
        Command::SetLimits { limits },
        Command::AddProvider { provider: pid(ALPHA) },
        Command::AddProvider { provider: pid(BETA) },
        Command::RegisterUser { provider: pid(ALPHA), user: uid(SENDER) },
    ];
    for d in 1..=senders {
        cmds.push(Command::RegisterDevice { provider: pid(ALPHA), user: uid(SENDER), device: d, registration_id: d });
    }
    cmds.splice(1..1, incarnations.iter().map(|&(node, incarnation)| Command::SetIncarnation { node, incarnation }));
    cmds.push(Command::RegisterUser { provider: pid(BETA), user: uid(RECIPIENT) });
    for (device, registration_id) in RECIPIENT_DEVICES {
        cmds.push(Command::RegisterDevice { provider: pid(BETA), user: uid(RECIPIENT), device, registration_id });
    }
    cmds.push(Command::RegisterUser { provider: pid(BETA), user: uid(KEY_OWNER) });
    cmds.push(Command::RegisterDevice { provider: pid(BETA), user: uid(KEY_OWNER), device: 1, registration_id: 77 });
    cmds.push(Command::UploadPrekeys {
        provider: pid(BETA),
        user: uid(KEY_OWNER),
        device: 1,
        upload: PrekeyUpload {
            identity_key: Bytes::from(vec![9; 33]),
            signed_prekey: Some(signed(1)),
            one_time: (1..=keys).map(|key_id| OneTimePrekey { key_id, public_key: Bytes::from(vec![3; 33]) }).collect(),
            kyber_one_time: Vec::new(),
            kyber_last_resort: Some(signed(2)),
        },
    });
    cmds
}

pub fn message_id(device: u32, index: u64) -> String {
    format!("m-{device}-{index}")
}

fn envelope(device: u32, index: u64) -> SendEnvelope {
    SendEnvelope {
        sender: pid(ALPHA),
        sender_user: Some(uid(SENDER)),
        sender_device: Some(device),
        message_id: MessageId::new(message_id(device, index)),
        recipient: uid(RECIPIENT),
        content_type: ContentType::Message,
        ttl_ms: 24 * 3600 * 1000,
        parts: RECIPIENT_DEVICES
            .iter()
            .map(|&(device, registration_id)| DevicePart {
                device,
                registration_id,
                message_type: 1,
                ciphertext: router_core::Blob::from(format!("ciphertext {index}")),
            })
            .collect(),
        traceparent: None,
    }
}

/// The progress probe's envelope: device 1's shape under its own id.
pub fn probe_envelope() -> SendEnvelope {
    SendEnvelope { message_id: MessageId::new("probe"), ..envelope(1, 0) }
}

/// Sends `max` messages from alice's `device`, one at a time, each retried
/// under its message id (at most 10 attempts) until a definite answer.
pub async fn sender(w: World, mut rng: StdRng, device: u32, max: u64) -> u64 {
    let mut index = 0;
    while index < max && !w.stopped() {
        let start_ms = w.now_ms();
        let mut res = Res::Unknown;
        let mut detail = String::new();
        let mut maybe_applied = false;
        for _ in 0..10 {
            match w.submit(&mut rng, Command::Send(envelope(device, index))).await {
                Attempt::Done(Outcome::Sent { seq, .. }) => {
                    res = Res::Ok;
                    detail = format!("seq {seq}");
                    break;
                }
                Attempt::Done(other) => {
                    w.history().unexpected.push(format!("send {}: {other:?}", message_id(device, index)));
                    res = Res::Failed;
                    break;
                }
                Attempt::NotLeader => {}
                Attempt::Unknown => {
                    maybe_applied = true;
                    tokio::time::sleep(Duration::from_millis(rng.gen_range(20..80))).await;
                }
            }
        }
        if res == Res::Unknown && !maybe_applied {
            res = Res::Failed;
        }
        let end_ms = w.now_ms();
        w.history().ops.push(Op { kind: Kind::Send { device, index }, res, start_ms, end_ms, detail });
        index += 1;
        tokio::time::sleep(Duration::from_millis(rng.gen_range(5..40))).await;
    }
    index
}

/// Claims carol's prekeys as `requester` until stopped. A claim is not
/// idempotent, so it goes as `Command::Once`, as the node's writer sends it:
/// an unknown outcome is retried with the same request id (a few times), and
/// must then come back with the first attempt's key, never consume another.
pub async fn claimer(w: World, mut rng: StdRng, requester: &'static str, max: u32) {
    let origin = requester.bytes().fold(0u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b)));
    let mut claims = 0;
    while claims < max && !w.stopped() {
        let start_ms = w.now_ms();
        let claim = Command::ClaimPrekeys { requester: pid(requester), user: uid(KEY_OWNER), device: Some(1) };
        let request = router_core::RequestId { origin, seq: u64::from(claims) };
        let cmd = Command::Once { request, command: Box::new(claim) };
        let mut retries = 0;
        let attempt = loop {
            match w.submit(&mut rng, cmd.clone()).await {
                Attempt::Unknown if retries < 4 && !w.stopped() => {
                    retries += 1;
                    tokio::time::sleep(Duration::from_millis(rng.gen_range(20..80))).await;
                }
                other => break other,
            }
        };
        let (res, one_time, detail) = match attempt {
            Attempt::Done(Outcome::Bundles { bundles, .. }) => {
                let key = bundles.first().and_then(|b| b.one_time.as_ref()).map(|k| k.key_id);
                (Res::Ok, key, String::new())
            }
            Attempt::Done(other) => {
                w.history().unexpected.push(format!("claim by {requester}: {other:?}"));
                (Res::Failed, None, format!("{other:?}"))
            }
            Attempt::NotLeader => continue,
            Attempt::Unknown => (Res::Unknown, None, String::new()),
        };
        let end_ms = w.now_ms();
        w.history().ops.push(Op { kind: Kind::Claim { requester, one_time }, res, start_ms, end_ms, detail });
        claims += 1;
        tokio::time::sleep(Duration::from_millis(rng.gen_range(20..120))).await;
    }
}

/// beta's receiver: reads its mailbox from a replica (the one the client
/// thinks leads, or any), records what it has not seen, acks it.
pub async fn receiver(w: World, mut rng: StdRng, until: Arc<AtomicBool>) {
    let mut next = 0u64;
    while !until.load(Ordering::SeqCst) {
        let entries = {
            let net = w.net.lock();
            let ids: Vec<_> = net.replicas.keys().copied().collect();
            if ids.is_empty() {
                Vec::new()
            } else {
                let id = ids[rng.gen_range(0..ids.len())];
                let state = net.replicas[&id].read().unwrap_or_else(std::sync::PoisonError::into_inner);
                state.mailbox_from(&pid(BETA), next, 200)
            }
        };
        let mut seqs = Vec::new();
        let at_ms = w.now_ms();
        for e in entries {
            next = next.max(e.seq + 1);
            seqs.push(e.seq);
            if let MailboxItem::Envelope(env) = &e.item {
                w.history().received.push(Received { seq: e.seq, message_id: env.message_id.0.clone(), at_ms });
            }
        }
        if !seqs.is_empty() {
            // Lost acks only mean redelivery; the receiver dedupes by sequence.
            let _ = w.submit(&mut rng, Command::Ack { provider: pid(BETA), seqs }).await;
        }
        tokio::time::sleep(Duration::from_millis(rng.gen_range(20..60))).await;
    }
}
