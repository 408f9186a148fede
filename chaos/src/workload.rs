//! The bounded client workload of a scenario, recorded into a [`Recorder`].
//!
//! - senders (provider alpha, one client per sender device of user `alice`)
//!   send 1:1 envelopes to `bob` (provider beta, devices 1 and 2), one at a
//!   time; the part for recipient device r carries `s<d>/r<r>/n<n>`, the
//!   sender device's sequence number n;
//! - the receiver (provider beta) subscribes and acks in batches;
//! - the claimer (provider alpha) claims bundles of `carol` (provider beta),
//!   whose two devices were stocked with one-time prekeys through signed uploads.
//!
//! Every loop stops at its stop flag, its operation cap or its deadline,
//! whichever comes first; every call is bounded by the SDK's call deadline.

use crate::history::{Delivery, Op, OpKind, Outcome, Recorder, classify};
use anyhow::{Context, Result};
use rand::SeedableRng;
use router_prekeys::sign::KeyPair;
use router_sdk::v1::{
    ContentType, DeviceCiphertext, EcOneTimePrekey, SendRequest, SignedEcPrekey, UploadPrekeysRequest, mailbox_entry,
};
use router_sdk::{RouterClient, SdkError};
use std::collections::BTreeMap;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;

pub const RECIPIENT_DEVICES: [(u32, u32); 2] = [(1, 4101), (2, 4102)];
pub const CLAIMED_DEVICES: [(u32, u32); 2] = [(1, 5101), (2, 5102)];

/// User ids of one scenario (unique per run).
#[derive(Clone, Debug)]
pub struct Users {
    pub sender: String,
    pub recipient: String,
    pub claimed: String,
}

impl Users {
    pub fn new(tag: &str) -> Users {
        Users {
            sender: format!("handle:{tag}-alice"),
            recipient: format!("handle:{tag}-bob"),
            claimed: format!("handle:{tag}-carol"),
        }
    }
}

/// A setup call, retried while the cluster settles (bounded by `deadline`).
/// ALREADY_EXISTS counts as done: an earlier attempt whose answer was lost committed.
async fn settle<T, F, Fut>(what: &str, deadline: Instant, mut f: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, SdkError>>,
{
    loop {
        match f().await {
            Ok(_) => return Ok(()),
            Err(e) if e.code() == Some(tonic::Code::AlreadyExists) => return Ok(()),
            Err(e) if Instant::now() >= deadline => return Err(anyhow::anyhow!("{what}: {e}")),
            Err(_) => tokio::time::sleep(Duration::from_millis(300)).await,
        }
    }
}

/// Registers the users and devices and stocks `claimed` with `per_device` one-time prekeys per device.
pub async fn setup(
    alpha: &RouterClient,
    beta: &RouterClient,
    users: &Users,
    senders: u32,
    per_device: u32,
    rec: &Recorder,
) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    settle("register sender", deadline, || alpha.register_user(&users.sender)).await?;
    for d in 1..=senders {
        settle("register sender device", deadline, || alpha.register_device(&users.sender, d, 3000 + d)).await?;
    }
    settle("register recipient", deadline, || beta.register_user(&users.recipient)).await?;
    for (d, reg) in RECIPIENT_DEVICES {
        settle("register recipient device", deadline, || beta.register_device(&users.recipient, d, reg)).await?;
    }
    settle("register claimed user", deadline, || beta.register_user(&users.claimed)).await?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x5eed);
    for (d, reg) in CLAIMED_DEVICES {
        settle("register claimed device", deadline, || beta.register_device(&users.claimed, d, reg)).await?;
        let identity = KeyPair::generate(&mut rng);
        let mut first = 1u32;
        while first <= per_device {
            let count = (per_device - first + 1).min(100);
            let req = signed_upload(&identity, &mut rng, &users.claimed, d, first, count);
            settle("upload prekeys", deadline, || beta.upload_prekeys(req.clone())).await?;
            rec.with(|h| h.stocked.extend((first..first + count).map(|k| (d, k))));
            first += count;
        }
    }
    Ok(())
}

/// A valid upload: a signed prekey (XEdDSA over the public key, as libsignal
/// checks it) and `count` one-time EC keys with ids from `first`.
fn signed_upload(
    identity: &KeyPair,
    rng: &mut rand::rngs::StdRng,
    user: &str,
    device: u32,
    first: u32,
    count: u32,
) -> UploadPrekeysRequest {
    use rand::RngCore;
    let spk_public = KeyPair::generate(rng).public.to_vec();
    let mut random = [0u8; 64];
    rng.fill_bytes(&mut random);
    let signature = identity.sign(&spk_public, &random).to_vec();
    UploadPrekeysRequest {
        user_id: user.into(),
        device_id: device,
        identity_key: identity.public.to_vec().into(),
        signed_prekey: Some(SignedEcPrekey { key_id: 1, public_key: spk_public.into(), signature: signature.into() }),
        one_time_prekeys: (first..first + count)
            .map(|key_id| EcOneTimePrekey { key_id, public_key: KeyPair::generate(rng).public.to_vec().into() })
            .collect(),
        kyber_one_time_prekeys: Vec::new(),
        kyber_last_resort: None,
    }
}

pub fn part_text(sender_device: u32, recipient_device: u32, n: u64) -> String {
    format!("s{sender_device}/r{recipient_device}/n{n}")
}

/// Bounds of one loop.
#[derive(Clone, Copy, Debug)]
pub struct Bounds {
    pub interval: Duration,
    pub max_ops: u64,
    pub deadline: Instant,
}

fn stopped(stop: &watch::Receiver<bool>, b: &Bounds, done: u64) -> bool {
    *stop.borrow() || done >= b.max_ops || Instant::now() >= b.deadline
}

/// One sender device's loop: rounds of `window` concurrent sends (the SDK
/// puts concurrent sends into `SendBatch` calls; 1 = one at a time), each
/// round once the previous one was answered. `first_n` lets a later phase
/// continue the sequence.
#[allow(clippy::too_many_arguments)] // one call site; a struct would only rename them
pub async fn sender(
    client: RouterClient,
    rec: Recorder,
    users: Users,
    tag: String,
    device: u32,
    first_n: u64,
    window: u32,
    stop: watch::Receiver<bool>,
    b: Bounds,
) -> u64 {
    let mut n = first_n;
    let who = format!("sender-{device}");
    while !stopped(&stop, &b, n - first_n) {
        let round = n;
        let sends =
            (n..n + u64::from(window.max(1))).map(|n| send_one(&client, &rec, &users, &tag, device, n, round, &who));
        futures::future::join_all(sends).await;
        n += u64::from(window.max(1));
        tokio::time::sleep(b.interval).await;
    }
    n
}

/// One recorded send (of `round`, see `OpKind::Send`); returns its outcome.
#[allow(clippy::too_many_arguments)]
pub async fn send_one(
    client: &RouterClient,
    rec: &Recorder,
    users: &Users,
    tag: &str,
    device: u32,
    n: u64,
    round: u64,
    who: &str,
) -> Outcome {
    let message_id = format!("{tag}-d{device}-{n:06}");
    let req = SendRequest {
        message_id: message_id.clone(),
        recipient_user_id: users.recipient.clone(),
        content_type: ContentType::Message as i32,
        ttl_seconds: 0,
        parts: RECIPIENT_DEVICES
            .iter()
            .map(|&(r, registration_id)| DeviceCiphertext {
                device_id: r,
                registration_id,
                message_type: 2,
                ciphertext: part_text(device, r, n).into_bytes().into(),
            })
            .collect(),
        sender_user_id: users.sender.clone(),
        sender_device_id: device,
    };
    let start_ms = rec.now_ms();
    let result = client.send(req).await;
    let end_ms = rec.now_ms();
    let (outcome, mailbox_seq, error) = match result {
        Ok(r) => (Outcome::Ok, Some(r.mailbox_seq), String::new()),
        Err(e) => (classify(&e), None, e.to_string()),
    };
    rec.op(Op {
        client: who.into(),
        kind: OpKind::Send { message_id, sender_device: device, n, round, mailbox_seq },
        start_ms,
        end_ms,
        outcome,
        error,
    });
    outcome
}

/// The claimer's loop: one FetchBundles for every device of `claimed` per round.
pub async fn claimer(client: RouterClient, rec: Recorder, users: Users, stop: watch::Receiver<bool>, b: Bounds) {
    let mut done = 0;
    while !stopped(&stop, &b, done) {
        let start_ms = rec.now_ms();
        let result = client.fetch_bundles(&users.claimed, 0).await;
        let end_ms = rec.now_ms();
        let (outcome, keys, exhausted, error) = match result {
            Ok(r) => {
                let keys = r
                    .bundles
                    .iter()
                    .filter_map(|bd| bd.one_time_prekey.as_ref().map(|k| (bd.device_id, k.key_id)))
                    .collect();
                let exhausted = r.bundles.iter().filter(|bd| bd.one_time_prekey.is_none()).count() as u32;
                (Outcome::Ok, keys, exhausted, String::new())
            }
            Err(e) => (classify(&e), Vec::new(), 0, e.to_string()),
        };
        rec.op(Op {
            client: "claimer".into(),
            kind: OpKind::Claim { keys, exhausted },
            start_ms,
            end_ms,
            outcome,
            error,
        });
        done += 1;
        tokio::time::sleep(b.interval).await;
    }
}

/// The receiver: records every envelope handed out, acks in batches, until
/// `stop` (or the deadline).
pub async fn receiver(client: RouterClient, rec: Recorder, stop: watch::Receiver<bool>, deadline: Instant) {
    const ACK_BATCH: usize = 32;
    let mut sub = client.subscribe(256);
    let mut pending: Vec<u64> = Vec::new();
    let mut last_ack = Instant::now();
    while !*stop.borrow() && Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_millis(200), sub.next()).await {
            Ok(Ok(entry)) => {
                if let Some(mailbox_entry::Kind::Envelope(env)) = &entry.kind {
                    let parts = env
                        .parts
                        .iter()
                        .map(|p| (p.device_id, String::from_utf8_lossy(&p.ciphertext).into_owned()))
                        .collect();
                    let d = Delivery { message_id: env.message_id.clone(), seq: entry.seq, at_ms: rec.now_ms(), parts };
                    rec.with(|h| h.deliveries.push(d));
                }
                if !entry.ephemeral {
                    pending.push(entry.seq);
                }
            }
            Ok(Err(e)) => rec.with(|h| h.receiver_errors.push(format!("next: {e}"))),
            Err(_) => {}
        }
        if !pending.is_empty() && (pending.len() >= ACK_BATCH || last_ack.elapsed() >= Duration::from_millis(250)) {
            last_ack = Instant::now();
            match sub.ack(pending.clone()).await {
                Ok(_) => rec.with(|h| h.acked_seqs.append(&mut pending)),
                Err(e) => rec.with(|h| h.receiver_errors.push(format!("ack: {e}"))),
            }
        }
    }
    let reconnects = sub.reconnects();
    rec.with(|h| h.receiver_reconnects = reconnects);
}

/// Whether every ok send has been delivered (for the drain phase).
pub fn all_ok_sends_delivered(rec: &Recorder) -> bool {
    rec.with(|h| {
        let delivered: BTreeMap<&str, ()> = h.deliveries.iter().map(|d| (d.message_id.as_str(), ())).collect();
        h.ops.iter().all(|op| match &op.kind {
            OpKind::Send { message_id, .. } => op.outcome != Outcome::Ok || delivered.contains_key(message_id.as_str()),
            _ => true,
        })
    })
}

/// The cluster's identities for a provider client with short deadlines, so
/// that an unavailable cluster shows up as `unknown` within seconds.
pub fn client(
    endpoints: Vec<String>,
    ca: Vec<u8>,
    cert_key: (Vec<u8>, Vec<u8>),
    call_deadline: Duration,
) -> Result<RouterClient> {
    let mut cfg = router_sdk::ClientConfig::new(endpoints, ca, cert_key.0, cert_key.1);
    cfg.attempt_timeout = Duration::from_secs(3);
    cfg.call_deadline = call_deadline;
    RouterClient::connect(cfg).context("provider client")
}
