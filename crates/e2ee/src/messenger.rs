//! A provider's end-to-end-encrypted messaging over the router.
//!
//! ```text
//!  send(from, to_user, plaintext, message_id)
//!    Resolve(to_user) ─> devices ─> FetchBundles for devices without a session ─> PQXDH
//!    encrypt once per device ─> Messaging.Send (the SDK retries with the same id)
//!    DEVICE_MISMATCH ─> forget stale/extra sessions, resolve again, re-encrypt, same id
//!  next()
//!    Subscription.next ─> decrypt each part for the local recipient device ─> Inbound
//!    the application acks after handling (at least once; duplicates by message id dropped)
//! ```

use crate::device::SignalDevice;
use crate::error::E2eeError;
use libsignal_protocol::{CiphertextMessageType, ProtocolStore, SenderKeyStore, SignalProtocolError};
use router_sdk::v1::MailboxEntry;
use router_sdk::v1::{ContentType, DeviceCiphertext, SendRequest, SendResponse, mailbox_entry};
use router_sdk::{RouterClient, Subscription};
use std::collections::{BTreeMap, HashSet, VecDeque};

/// Plaintext framing inside the Signal payload of 1:1 messages: the first
/// byte says whether it is application content or a sender-key
/// distribution for a group (which the SDK consumes itself).
const FRAME_APP: u8 = 0x01;
const FRAME_SENDER_KEY: u8 = 0x02;

/// The sender-key distribution id of a group epoch: every membership change
/// starts a new sender key, so removed members cannot read later messages.
pub fn distribution_id(group_id: &str, epoch: u64) -> uuid::Uuid {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    h.update(b"interop-router sender key v1\0");
    h.update(group_id.as_bytes());
    h.update(epoch.to_be_bytes());
    let digest = h.finalize();
    uuid::Uuid::from_slice(&digest[..16]).expect("16 bytes")
}

/// How many times one send re-resolves the recipient after a device mismatch.
const MAX_SEND_ATTEMPTS: u32 = 4;
/// Message ids remembered to drop duplicates.
const SEEN_CAPACITY: usize = 100_000;

/// One decrypted envelope for the application.
#[derive(Clone, Debug)]
pub struct Received {
    pub seq: u64,
    pub message_id: String,
    pub sender_provider: String,
    pub sender_user: String,
    pub sender_device: u32,
    pub recipient_user: String,
    pub content_type: ContentType,
    /// (local device, plaintext) for every part this provider could decrypt.
    pub plaintexts: Vec<(u32, Vec<u8>)>,
    /// (device, ciphertext) exactly as the router stored and delivered it.
    pub ciphertexts: Vec<(u32, bytes::Bytes)>,
    /// Parts that failed to decrypt, with the reason.
    pub failures: Vec<(u32, String)>,
}

/// What the receive side yields.
#[derive(Clone, Debug)]
pub enum Inbound {
    Message(Received),
    /// An envelope this provider sent expired before the recipient acked it.
    Expired {
        seq: u64,
        message_id: String,
        recipient_user: String,
    },
    /// An envelope this provider sent to a user of a federated cluster was
    /// refused there (`reason`, e.g. `DEVICE_MISMATCH`): it will not arrive.
    Undeliverable {
        seq: u64,
        message_id: String,
        recipient_user: String,
        reason: String,
        detail: String,
    },
    /// A group message, decrypted with the sender's sender key for every
    /// local recipient device.
    Group(ReceivedGroup),
}

#[derive(Clone, Debug)]
pub struct ReceivedGroup {
    pub seq: u64,
    pub group_id: String,
    /// The hub's order, the same for every member.
    pub group_seq: u64,
    pub epoch: u64,
    pub message_id: String,
    pub sender_provider: String,
    pub sender_user: String,
    pub sender_device: u32,
    /// (local user, local device, plaintext).
    pub plaintexts: Vec<(String, u32, Vec<u8>)>,
    /// (local user, local device, reason) for copies that failed.
    pub failures: Vec<(String, u32, String)>,
}

impl Inbound {
    pub fn seq(&self) -> u64 {
        match self {
            Inbound::Message(m) => m.seq,
            Inbound::Expired { seq, .. } | Inbound::Undeliverable { seq, .. } => *seq,
            Inbound::Group(g) => g.seq,
        }
    }
}

pub struct Messenger<S> {
    client: RouterClient,
    devices: BTreeMap<(String, u32), SignalDevice<S>>,
    subscription: Option<Subscription>,
    window: u32,
    seen: HashSet<(String, String)>,
    seen_order: VecDeque<(String, String)>,
    /// One-time prekeys uploaded per top-up, and the stock below which a
    /// device tops up.
    pub prekey_batch: u32,
    pub prekey_low_water: u32,
    /// Accept a remote device's new identity key (reinstall) and report it
    /// through [`Messenger::take_identity_changes`], as Signal clients do by
    /// default. When false, such a send fails with `UntrustedIdentity`.
    pub accept_identity_changes: bool,
    identity_changes: Vec<(String, u32)>,
    /// (sending device, distribution id, member user) that has our sender key.
    distributed: HashSet<((String, u32), uuid::Uuid, String)>,
}

impl<S: ProtocolStore + SenderKeyStore> Messenger<S> {
    pub fn new(client: RouterClient) -> Self {
        Messenger {
            client,
            devices: BTreeMap::new(),
            subscription: None,
            window: 256,
            seen: HashSet::new(),
            seen_order: VecDeque::new(),
            prekey_batch: 50,
            prekey_low_water: 10,
            accept_identity_changes: true,
            identity_changes: Vec::new(),
            distributed: HashSet::new(),
        }
    }

    /// Remote (user, device) pairs whose identity key changed since the last
    /// call: the application should show a safety-number change.
    pub fn take_identity_changes(&mut self) -> Vec<(String, u32)> {
        std::mem::take(&mut self.identity_changes)
    }

    pub fn client(&self) -> &RouterClient {
        &self.client
    }

    /// Registers a local device (and its user) and publishes its keys.
    pub async fn add_device(&mut self, user: &str, device: u32, store: S) -> Result<(), E2eeError> {
        let mut signal = SignalDevice::new(user, device, store)?;
        self.client.register_user(user).await?;
        self.client.register_device(user, device, signal.registration_id()?).await?;
        let upload = signal.initial_upload(self.prekey_batch)?;
        self.client.upload_prekeys(upload).await?;
        self.devices.insert((user.to_string(), device), signal);
        Ok(())
    }

    /// Takes over a device registered earlier (e.g. after a restart, with
    /// its store reopened from disk); nothing is sent to the router.
    pub fn adopt_device(&mut self, user: &str, device: u32, store: S) -> Result<(), E2eeError> {
        let signal = SignalDevice::new(user, device, store)?;
        self.devices.insert((user.to_string(), device), signal);
        Ok(())
    }

    pub fn device(&self, user: &str, device: u32) -> Option<&SignalDevice<S>> {
        self.devices.get(&(user.to_string(), device))
    }

    /// Uploads a batch for every local device whose one-time stock is low.
    /// Returns how many devices were topped up.
    pub async fn top_up_prekeys(&mut self) -> Result<u32, E2eeError> {
        let mut topped = 0;
        for ((user, device), signal) in self.devices.iter_mut() {
            let count = self.client.prekey_count(user, *device).await?;
            if count.one_time_prekeys_remaining < self.prekey_low_water
                || count.kyber_one_time_prekeys_remaining < self.prekey_low_water
            {
                self.client.upload_prekeys(signal.replenish_upload(self.prekey_batch)?).await?;
                topped += 1;
            }
        }
        Ok(topped)
    }

    /// Encrypts `plaintext` for every device of `to_user` and sends it as one
    /// envelope under `message_id`. Safe to call again with the same id.
    pub async fn send(
        &mut self,
        from: (&str, u32),
        to_user: &str,
        content_type: ContentType,
        message_id: &str,
        plaintext: &[u8],
    ) -> Result<SendResponse, E2eeError> {
        let mut framed = Vec::with_capacity(plaintext.len() + 1);
        framed.push(FRAME_APP);
        framed.extend_from_slice(plaintext);
        self.send_framed(from, to_user, content_type, message_id, &framed).await
    }

    async fn send_framed(
        &mut self,
        from: (&str, u32),
        to_user: &str,
        content_type: ContentType,
        message_id: &str,
        plaintext: &[u8],
    ) -> Result<SendResponse, E2eeError> {
        let key = (from.0.to_string(), from.1);
        if !self.devices.contains_key(&key) {
            return Err(E2eeError::UnknownLocalDevice { user: key.0, device: key.1 });
        }
        for _ in 0..MAX_SEND_ATTEMPTS {
            let resolved = self.client.resolve(to_user).await?;
            let signal = self.devices.get_mut(&key).expect("checked above");
            let mut missing = Vec::new();
            for d in &resolved.devices {
                if !signal.has_session(to_user, d.device_id, d.registration_id)? {
                    missing.push(d.device_id);
                }
            }
            if !missing.is_empty() {
                // Claim one bundle per device that needs a session (all at once when all do).
                let bundles = if missing.len() == resolved.devices.len() {
                    self.client.fetch_bundles(to_user, 0).await?.bundles
                } else {
                    let mut all = Vec::new();
                    for d in &missing {
                        all.extend(self.client.fetch_bundles(to_user, *d).await?.bundles);
                    }
                    all
                };
                for b in bundles.iter().filter(|b| missing.contains(&b.device_id)) {
                    match signal.start_session(to_user, b) {
                        Err(E2eeError::Signal(SignalProtocolError::UntrustedIdentity(_)))
                            if self.accept_identity_changes =>
                        {
                            // Reinstalled device: Signal's default is to accept the new
                            // identity and tell the user that the safety number changed.
                            signal.trust_identity(to_user, b.device_id, &b.identity_key)?;
                            signal.start_session(to_user, b)?;
                            self.identity_changes.push((to_user.to_string(), b.device_id));
                        }
                        other => other?,
                    }
                }
            }
            let mut parts = Vec::with_capacity(resolved.devices.len());
            for d in &resolved.devices {
                // A device without keys yet cannot be addressed; the router will say so.
                if !signal.has_session(to_user, d.device_id, d.registration_id)? {
                    continue;
                }
                let (message_type, ciphertext) = signal.encrypt(to_user, d.device_id, plaintext)?;
                parts.push(DeviceCiphertext {
                    device_id: d.device_id,
                    registration_id: d.registration_id,
                    message_type,
                    ciphertext: ciphertext.into(),
                });
            }
            let request = SendRequest {
                message_id: message_id.to_string(),
                recipient_user_id: to_user.to_string(),
                content_type: content_type as i32,
                ttl_seconds: 0,
                parts,
                sender_user_id: from.0.to_string(),
                sender_device_id: from.1,
            };
            match self.client.send(request).await {
                Ok(resp) => return Ok(resp),
                Err(e) if e.reason() == Some("DEVICE_MISMATCH") => {
                    let m = e.detail().and_then(|d| d.device_mismatch.clone()).unwrap_or_default();
                    for d in m.stale_devices.iter().chain(&m.extra_devices) {
                        signal.forget_session(to_user, *d)?;
                    }
                    tracing::debug!(to_user, ?m, "device mismatch; resolving again");
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(E2eeError::DevicesUnsettled { attempts: MAX_SEND_ATTEMPTS })
    }

    /// The next inbound item, decrypted. Ack it with [`Messenger::ack`] once
    /// handled; unacked items come again after a reconnect or restart.
    pub async fn next(&mut self) -> Result<Inbound, E2eeError> {
        loop {
            let window = self.window;
            let client = self.client.clone();
            let sub = self.subscription.get_or_insert_with(|| client.subscribe(window));
            let entry = sub.next().await?;
            if let Some(inbound) = self.open(entry).await? {
                return Ok(inbound);
            }
        }
    }

    /// Decrypts one mailbox entry obtained elsewhere (e.g. a provider that
    /// runs its own receive loop). `None` for a duplicate, which is acked.
    pub async fn open(&mut self, entry: MailboxEntry) -> Result<Option<Inbound>, E2eeError> {
        let seq = entry.seq;
        match entry.kind {
            Some(mailbox_entry::Kind::Envelope(env)) => {
                let id = (env.sender_provider_id.clone(), env.message_id.clone());
                if self.seen.contains(&id) {
                    // The router stores a message id once; seen twice only if an ack was lost.
                    self.ack(vec![seq]).await?;
                    return Ok(None);
                }
                let received = self.decrypt(seq, env).await?;
                self.remember(id);
                match received {
                    Some(r) => Ok(Some(Inbound::Message(r))),
                    None => {
                        // A sender-key distribution, consumed by the SDK.
                        self.ack(vec![seq]).await?;
                        Ok(None)
                    }
                }
            }
            Some(mailbox_entry::Kind::Expired(r)) => {
                Ok(Some(Inbound::Expired { seq, message_id: r.message_id, recipient_user: r.recipient_user_id }))
            }
            Some(mailbox_entry::Kind::Undeliverable(r)) => Ok(Some(Inbound::Undeliverable {
                seq,
                message_id: r.message_id,
                recipient_user: r.recipient_user_id,
                reason: r.reason,
                detail: r.detail,
            })),
            // Group messages (sender keys) are not handled by this SDK yet:
            // they are passed through undecrypted.
            Some(mailbox_entry::Kind::Group(g)) => Ok(Some(Inbound::Group(self.open_group(seq, g)))),
            Some(mailbox_entry::Kind::LowStock(low)) => {
                // The router says a device is running out of one-time prekeys.
                self.ack(vec![seq]).await?;
                tracing::info!(user = %low.user_id, device = low.device_id, "low prekey stock reported; topping up");
                self.top_up_prekeys().await?;
                Ok(None)
            }
            None => Err(E2eeError::BadEntry("mailbox entry without content")),
        }
    }

    pub async fn ack(&mut self, seqs: Vec<u64>) -> Result<(), E2eeError> {
        match self.subscription.as_mut() {
            Some(sub) => sub.ack(seqs).await?,
            None => self.client.ack(seqs).await?,
        };
        Ok(())
    }

    fn remember(&mut self, id: (String, String)) {
        if self.seen_order.len() >= SEEN_CAPACITY
            && let Some(old) = self.seen_order.pop_front()
        {
            self.seen.remove(&old);
        }
        self.seen.insert(id.clone());
        self.seen_order.push_back(id);
    }

    /// `None` when the envelope only carried SDK control content (sender keys).
    async fn decrypt(&mut self, seq: u64, env: router_sdk::v1::Envelope) -> Result<Option<Received>, E2eeError> {
        let mut plaintexts = Vec::new();
        let mut failures = Vec::new();
        let mut consumed_prekey = false;
        let mut control = false;
        for part in &env.parts {
            let Some(signal) = self.devices.get_mut(&(env.recipient_user_id.clone(), part.device_id)) else {
                failures.push((part.device_id, "no such local device".to_string()));
                continue;
            };
            if env.sender_user_id.is_empty() {
                failures.push((part.device_id, "sealed sender is not supported by this SDK".to_string()));
                continue;
            }
            match signal.decrypt(&env.sender_user_id, env.sender_device_id, part.message_type, &part.ciphertext) {
                Ok(p) => {
                    consumed_prekey |= part.message_type == CiphertextMessageType::PreKey as u32;
                    match p.split_first() {
                        Some((&FRAME_APP, app)) => plaintexts.push((part.device_id, app.to_vec())),
                        Some((&FRAME_SENDER_KEY, skdm)) => {
                            match signal.process_sender_key_distribution(
                                &env.sender_user_id,
                                env.sender_device_id,
                                skdm,
                            ) {
                                Ok(()) => control = true,
                                Err(e) => failures.push((part.device_id, format!("sender key: {e}"))),
                            }
                        }
                        _ => failures.push((part.device_id, "unknown plaintext framing".to_string())),
                    }
                }
                Err(E2eeError::Signal(SignalProtocolError::DuplicatedMessage(..))) => {
                    failures.push((part.device_id, "already decrypted (duplicate)".to_string()));
                }
                Err(e) => failures.push((part.device_id, e.to_string())),
            }
        }
        if consumed_prekey {
            // A PreKey message used up one of our one-time keys.
            if let Err(e) = self.top_up_prekeys().await {
                tracing::warn!("failed to top up prekeys: {e}");
            }
        }
        if control && plaintexts.is_empty() && failures.is_empty() {
            return Ok(None);
        }
        Ok(Some(Received {
            seq,
            content_type: ContentType::try_from(env.content_type).unwrap_or(ContentType::Unspecified),
            message_id: env.message_id,
            sender_provider: env.sender_provider_id,
            sender_user: env.sender_user_id,
            sender_device: env.sender_device_id,
            recipient_user: env.recipient_user_id,
            ciphertexts: env.parts.iter().map(|p| (p.device_id, p.ciphertext.clone())).collect(),
            plaintexts,
            failures,
        }))
    }
}

/// Group messaging with Signal sender keys.
impl<S: ProtocolStore + SenderKeyStore> Messenger<S> {
    /// Encrypts `plaintext` once with this device's sender key for the
    /// group's current epoch and sends it to the group. Members that do not
    /// have the sender key yet get it first, as 1:1 Signal messages (which
    /// reach every provider's mailbox before the group message does).
    pub async fn send_group(
        &mut self,
        from: (&str, u32),
        group_id: &str,
        content_type: ContentType,
        message_id: &str,
        plaintext: &[u8],
    ) -> Result<router_sdk::v1::SendGroupResponse, E2eeError> {
        let key = (from.0.to_string(), from.1);
        if !self.devices.contains_key(&key) {
            return Err(E2eeError::UnknownLocalDevice { user: key.0, device: key.1 });
        }
        let info = self.client.get_group(group_id).await?;
        let dist = distribution_id(group_id, info.epoch);
        let skdm = self.devices.get_mut(&key).expect("checked above").sender_key_distribution(dist)?;
        let mut framed = Vec::with_capacity(skdm.len() + 1);
        framed.push(FRAME_SENDER_KEY);
        framed.extend_from_slice(&skdm);
        for member in info.members.iter().map(|m| m.user_id.clone()) {
            // The sender's own other devices are not sent its sender key (a known gap).
            if member == from.0 || self.distributed.contains(&(key.clone(), dist, member.clone())) {
                continue;
            }
            let id = format!("skd:{}:{}.{}:{member}", dist.simple(), from.0, from.1);
            self.send_framed(from, &member, ContentType::Message, &id, &framed).await?;
            self.distributed.insert((key.clone(), dist, member));
        }
        let ciphertext = self.devices.get_mut(&key).expect("checked above").group_encrypt(dist, plaintext)?;
        let request = router_sdk::v1::SendGroupRequest {
            group_id: group_id.to_string(),
            message_id: message_id.to_string(),
            sender_user_id: from.0.to_string(),
            sender_device_id: from.1,
            content_type: content_type as i32,
            ttl_seconds: 0,
            ciphertext: ciphertext.into(),
            per_device: Vec::new(),
        };
        Ok(self.client.send_group(request).await?)
    }
}

impl<S: ProtocolStore + SenderKeyStore> Messenger<S> {
    fn open_group(&mut self, seq: u64, g: router_sdk::v1::GroupMessage) -> ReceivedGroup {
        let mut plaintexts = Vec::new();
        let mut failures = Vec::new();
        for user in &g.recipient_user_ids {
            let locals: Vec<u32> = self.devices.keys().filter(|(u, _)| u == user).map(|(_, d)| *d).collect();
            for device in locals {
                if *user == g.sender_user_id && device == g.sender_device_id {
                    continue;
                }
                let signal = self.devices.get_mut(&(user.clone(), device)).expect("listed above");
                match signal.group_decrypt(&g.sender_user_id, g.sender_device_id, &g.ciphertext) {
                    Ok(p) => plaintexts.push((user.clone(), device, p)),
                    Err(e) => failures.push((user.clone(), device, e.to_string())),
                }
            }
        }
        ReceivedGroup {
            seq,
            group_id: g.group_id,
            group_seq: g.group_seq,
            epoch: g.epoch,
            message_id: g.message_id,
            sender_provider: g.sender_provider_id,
            sender_user: g.sender_user_id,
            sender_device: g.sender_device_id,
            plaintexts,
            failures,
        }
    }
}
