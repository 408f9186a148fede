//! One local Signal device: its keys, its sessions, encrypt and decrypt.
//!
//! The store's futures are driven to completion on the calling thread
//! (`block_on`): libsignal's stores are `?Send`, and the in-memory and sled
//! stores never wait on I/O of their own. A provider bringing a store that
//! does (a database) should call these methods from `spawn_blocking`.

use crate::error::E2eeError;
use futures::executor::block_on;
use libsignal_protocol::{
    CiphertextMessage, CiphertextMessageType, DeviceId, GenericSignedPreKey, IdentityKey, IdentityKeyPair,
    IdentityKeyStore, KeyPair, KyberPreKeyId, KyberPreKeyRecord, KyberPreKeyStore, PreKeyBundle, PreKeyId,
    PreKeyRecord, PreKeySignalMessage, PreKeyStore, ProtocolAddress, ProtocolStore, PublicKey, SessionRecord,
    SessionStore, SessionUsabilityRequirements, SignalMessage, SignedPreKeyId, SignedPreKeyRecord, SignedPreKeyStore,
    Timestamp, kem, message_decrypt, message_encrypt, process_prekey_bundle,
};
use libsignal_protocol::{
    Direction, IdentityChange, SenderKeyDistributionMessage, SenderKeyRecord, SenderKeyStore, SignalProtocolError,
    create_sender_key_distribution_message, group_decrypt, group_encrypt, process_sender_key_distribution_message,
};
use rand09::rngs::StdRng;
use rand09::{Rng, SeedableRng};
use router_sdk::v1::{EcOneTimePrekey, PrekeyBundle, SignedEcPrekey, SignedKyberPrekey, UploadPrekeysRequest};
use std::cell::RefCell;
use std::time::SystemTime;

/// Id of the last-resort Kyber key; one-time ids never reach it. Stores
/// keep the key under this id after it is used.
pub const LAST_RESORT_KYBER_ID: u32 = 0x00FF_FFFF;

pub struct SignalDevice<S> {
    pub user: String,
    pub device: u32,
    /// libsignal takes the session and identity stores as two `&mut`; one
    /// provider store serves both through [`View`]s of this cell. The calls
    /// are sequential, so the borrows never overlap.
    store: RefCell<S>,
    rng: StdRng,
    /// Next one-time prekey id. Random start (as Signal clients do), so a
    /// device re-created with a fresh store does not reuse ids.
    next_key_id: u32,
    signed_prekey_id: u32,
}

pub fn address(user: &str, device: u32) -> Result<ProtocolAddress, E2eeError> {
    let id = u8::try_from(device).ok().and_then(|d| DeviceId::new(d).ok()).ok_or(E2eeError::BadDeviceId(device))?;
    Ok(ProtocolAddress::new(user.to_string(), id))
}

/// A fresh identity key pair and registration id for a new device.
pub fn new_identity() -> (IdentityKeyPair, u32) {
    let mut rng = StdRng::from_os_rng();
    (IdentityKeyPair::generate(&mut rng), rng.random_range(1..=16380))
}

impl<S: ProtocolStore> SignalDevice<S> {
    pub fn new(user: &str, device: u32, store: S) -> Result<Self, E2eeError> {
        address(user, device)?;
        let mut rng = StdRng::from_os_rng();
        let next_key_id = rng.random_range(1..0x0040_0000);
        Ok(SignalDevice {
            user: user.into(),
            device,
            store: RefCell::new(store),
            rng,
            next_key_id,
            signed_prekey_id: 1,
        })
    }

    pub fn into_store(self) -> S {
        self.store.into_inner()
    }

    pub fn registration_id(&self) -> Result<u32, E2eeError> {
        Ok(block_on(View(&self.store).get_local_registration_id())?)
    }

    pub fn identity_key(&self) -> Result<IdentityKey, E2eeError> {
        Ok(*block_on(View(&self.store).get_identity_key_pair())?.identity_key())
    }

    fn now() -> Timestamp {
        let ms = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        Timestamp::from_epoch_millis(ms)
    }

    /// Everything a new device publishes: signed prekey, `count` one-time EC
    /// and Kyber prekeys, and a last-resort Kyber key. Private halves go to
    /// the store before the upload is returned.
    pub fn initial_upload(&mut self, count: u32) -> Result<UploadPrekeysRequest, E2eeError> {
        let identity = block_on(View(&self.store).get_identity_key_pair())?;
        let spk_pair = KeyPair::generate(&mut self.rng);
        let spk_public = spk_pair.public_key.serialize();
        let spk_signature = identity
            .private_key()
            .calculate_signature(&spk_public, &mut self.rng)
            .map_err(SignalProtocolError::from)?;
        let spk_id = SignedPreKeyId::from(self.signed_prekey_id);
        let record = SignedPreKeyRecord::new(spk_id, Self::now(), &spk_pair, &spk_signature);
        block_on(View(&self.store).save_signed_pre_key(spk_id, &record))?;

        let last_resort = KyberPreKeyRecord::generate(
            kem::KeyType::Kyber1024,
            KyberPreKeyId::from(LAST_RESORT_KYBER_ID),
            identity.private_key(),
        )?;
        block_on(View(&self.store).save_kyber_pre_key(KyberPreKeyId::from(LAST_RESORT_KYBER_ID), &last_resort))?;

        let mut upload = self.replenish_upload(count)?;
        upload.signed_prekey = Some(SignedEcPrekey {
            key_id: self.signed_prekey_id,
            public_key: spk_public.to_vec().into(),
            signature: spk_signature.to_vec().into(),
        });
        upload.kyber_last_resort = Some(kyber_wire(LAST_RESORT_KYBER_ID, &last_resort)?);
        Ok(upload)
    }

    /// `count` more one-time EC and Kyber prekeys (to top up the stock).
    pub fn replenish_upload(&mut self, count: u32) -> Result<UploadPrekeysRequest, E2eeError> {
        let identity = block_on(View(&self.store).get_identity_key_pair())?;
        let mut one_time_prekeys = Vec::with_capacity(count as usize);
        let mut kyber_one_time_prekeys = Vec::with_capacity(count as usize);
        for _ in 0..count {
            let id = self.next_key_id;
            self.next_key_id = if id + 1 >= LAST_RESORT_KYBER_ID { 1 } else { id + 1 };
            let pair = KeyPair::generate(&mut self.rng);
            block_on(
                View(&self.store).save_pre_key(PreKeyId::from(id), &PreKeyRecord::new(PreKeyId::from(id), &pair)),
            )?;
            one_time_prekeys
                .push(EcOneTimePrekey { key_id: id, public_key: pair.public_key.serialize().to_vec().into() });
            let kyber =
                KyberPreKeyRecord::generate(kem::KeyType::Kyber1024, KyberPreKeyId::from(id), identity.private_key())?;
            block_on(View(&self.store).save_kyber_pre_key(KyberPreKeyId::from(id), &kyber))?;
            kyber_one_time_prekeys.push(kyber_wire(id, &kyber)?);
        }
        Ok(UploadPrekeysRequest {
            user_id: self.user.clone(),
            device_id: self.device,
            identity_key: identity.identity_key().serialize().to_vec().into(),
            signed_prekey: None,
            one_time_prekeys,
            kyber_one_time_prekeys,
            kyber_last_resort: None,
        })
    }

    /// A usable session with the remote device exists, established with the
    /// given registration id (a new registration id means a reinstall).
    pub fn has_session(&self, user: &str, device: u32, registration_id: u32) -> Result<bool, E2eeError> {
        let Some(record) = block_on(View(&self.store).load_session(&address(user, device)?))? else { return Ok(false) };
        let usable = record.has_usable_sender_chain(SystemTime::now(), SessionUsabilityRequirements::empty())?;
        Ok(usable && record.remote_registration_id()? == registration_id)
    }

    /// Records `identity_key` as the trusted identity of a remote device
    /// (after the application accepted a safety-number change).
    pub fn trust_identity(&mut self, user: &str, device: u32, identity_key: &[u8]) -> Result<(), E2eeError> {
        let key = IdentityKey::decode(identity_key)?;
        block_on(View(&self.store).save_identity(&address(user, device)?, &key))?;
        Ok(())
    }

    /// Drops the session with a remote device (stale or removed device).
    pub fn forget_session(&mut self, user: &str, device: u32) -> Result<(), E2eeError> {
        block_on(View(&self.store).store_session(&address(user, device)?, &SessionRecord::new_fresh()))?;
        Ok(())
    }

    /// Starts a session (PQXDH) from a bundle claimed from the router.
    pub fn start_session(&mut self, user: &str, bundle: &PrekeyBundle) -> Result<(), E2eeError> {
        let spk = bundle.signed_prekey.as_ref().ok_or(E2eeError::BadBundle("no signed prekey"))?;
        let kyber = bundle.kyber_prekey.as_ref().ok_or(E2eeError::BadBundle("no Kyber prekey (PQXDH needs one)"))?;
        let one_time = match &bundle.one_time_prekey {
            Some(k) => Some((
                PreKeyId::from(k.key_id),
                PublicKey::deserialize(&k.public_key).map_err(SignalProtocolError::from)?,
            )),
            None => None,
        };
        let device_id = u8::try_from(bundle.device_id)
            .ok()
            .and_then(|d| DeviceId::new(d).ok())
            .ok_or(E2eeError::BadDeviceId(bundle.device_id))?;
        let libsignal_bundle = PreKeyBundle::new(
            bundle.registration_id,
            device_id,
            one_time,
            SignedPreKeyId::from(spk.key_id),
            PublicKey::deserialize(&spk.public_key).map_err(SignalProtocolError::from)?,
            spk.signature.to_vec(),
            KyberPreKeyId::from(kyber.key_id),
            kem::PublicKey::deserialize(&kyber.public_key)?,
            kyber.signature.to_vec(),
            IdentityKey::decode(&bundle.identity_key)?,
        )?;
        let remote = address(user, bundle.device_id)?;
        block_on(process_prekey_bundle(
            &remote,
            &mut View(&self.store),
            &mut View(&self.store),
            &libsignal_bundle,
            SystemTime::now(),
            &mut self.rng,
        ))?;
        Ok(())
    }

    /// Encrypts for one remote device: (Signal message type, ciphertext).
    pub fn encrypt(&mut self, user: &str, device: u32, plaintext: &[u8]) -> Result<(u32, Vec<u8>), E2eeError> {
        let remote = address(user, device)?;
        let message = block_on(message_encrypt(
            plaintext,
            &remote,
            &mut View(&self.store),
            &mut View(&self.store),
            SystemTime::now(),
            &mut self.rng,
        ))?;
        Ok((message.message_type() as u32, message.serialize().to_vec()))
    }

    /// Decrypts a message from a remote device.
    pub fn decrypt(
        &mut self,
        user: &str,
        device: u32,
        message_type: u32,
        ciphertext: &[u8],
    ) -> Result<Vec<u8>, E2eeError> {
        let remote = address(user, device)?;
        let message = match message_type {
            t if t == CiphertextMessageType::PreKey as u32 => {
                CiphertextMessage::PreKeySignalMessage(PreKeySignalMessage::try_from(ciphertext)?)
            }
            t if t == CiphertextMessageType::Whisper as u32 => {
                CiphertextMessage::SignalMessage(SignalMessage::try_from(ciphertext)?)
            }
            _ => return Err(E2eeError::BadEntry("unsupported Signal message type")),
        };
        Ok(block_on(message_decrypt(
            &message,
            &remote,
            &mut View(&self.store),
            &mut View(&self.store),
            &mut View(&self.store),
            &View(&self.store),
            &mut View(&self.store),
            &mut self.rng,
        ))?)
    }
}

fn kyber_wire(id: u32, record: &KyberPreKeyRecord) -> Result<SignedKyberPrekey, E2eeError> {
    Ok(SignedKyberPrekey {
        key_id: id,
        public_key: record.public_key()?.serialize().to_vec().into(),
        signature: record.signature()?.into(),
    })
}

/// One store seen through a `RefCell`, so libsignal can hold it as several
/// `&mut dyn …Store` at once.
///
/// Each method holds its borrow across the inner store's await. That is
/// sound here: libsignal awaits store calls one at a time (never two
/// concurrently), so no two borrows overlap, and `SignalDevice` drives every
/// future to completion with `block_on` before the next call.
struct View<'a, S>(&'a RefCell<S>);

type SignalResult<T> = Result<T, SignalProtocolError>;

#[allow(clippy::await_holding_refcell_ref)]
#[async_trait::async_trait(?Send)]
impl<S: ProtocolStore> IdentityKeyStore for View<'_, S> {
    async fn get_identity_key_pair(&self) -> SignalResult<IdentityKeyPair> {
        let store = self.0.borrow();
        store.get_identity_key_pair().await
    }
    async fn get_local_registration_id(&self) -> SignalResult<u32> {
        let store = self.0.borrow();
        store.get_local_registration_id().await
    }
    async fn save_identity(
        &mut self,
        address: &ProtocolAddress,
        identity: &IdentityKey,
    ) -> SignalResult<IdentityChange> {
        let mut store = self.0.borrow_mut();
        store.save_identity(address, identity).await
    }
    async fn is_trusted_identity(
        &self,
        address: &ProtocolAddress,
        identity: &IdentityKey,
        direction: Direction,
    ) -> SignalResult<bool> {
        let store = self.0.borrow();
        store.is_trusted_identity(address, identity, direction).await
    }
    async fn get_identity(&self, address: &ProtocolAddress) -> SignalResult<Option<IdentityKey>> {
        let store = self.0.borrow();
        store.get_identity(address).await
    }
}

#[allow(clippy::await_holding_refcell_ref)]
#[async_trait::async_trait(?Send)]
impl<S: ProtocolStore> SessionStore for View<'_, S> {
    async fn load_session(&self, address: &ProtocolAddress) -> SignalResult<Option<SessionRecord>> {
        let store = self.0.borrow();
        store.load_session(address).await
    }
    async fn store_session(&mut self, address: &ProtocolAddress, record: &SessionRecord) -> SignalResult<()> {
        let mut store = self.0.borrow_mut();
        store.store_session(address, record).await
    }
}

#[allow(clippy::await_holding_refcell_ref)]
#[async_trait::async_trait(?Send)]
impl<S: ProtocolStore> PreKeyStore for View<'_, S> {
    async fn get_pre_key(&self, id: PreKeyId) -> SignalResult<PreKeyRecord> {
        let store = self.0.borrow();
        store.get_pre_key(id).await
    }
    async fn save_pre_key(&mut self, id: PreKeyId, record: &PreKeyRecord) -> SignalResult<()> {
        let mut store = self.0.borrow_mut();
        store.save_pre_key(id, record).await
    }
    async fn remove_pre_key(&mut self, id: PreKeyId) -> SignalResult<()> {
        let mut store = self.0.borrow_mut();
        store.remove_pre_key(id).await
    }
}

#[allow(clippy::await_holding_refcell_ref)]
#[async_trait::async_trait(?Send)]
impl<S: ProtocolStore> SignedPreKeyStore for View<'_, S> {
    async fn get_signed_pre_key(&self, id: SignedPreKeyId) -> SignalResult<SignedPreKeyRecord> {
        let store = self.0.borrow();
        store.get_signed_pre_key(id).await
    }
    async fn save_signed_pre_key(&mut self, id: SignedPreKeyId, record: &SignedPreKeyRecord) -> SignalResult<()> {
        let mut store = self.0.borrow_mut();
        store.save_signed_pre_key(id, record).await
    }
}

#[allow(clippy::await_holding_refcell_ref)]
#[async_trait::async_trait(?Send)]
impl<S: ProtocolStore> KyberPreKeyStore for View<'_, S> {
    async fn get_kyber_pre_key(&self, id: KyberPreKeyId) -> SignalResult<KyberPreKeyRecord> {
        let store = self.0.borrow();
        store.get_kyber_pre_key(id).await
    }
    async fn save_kyber_pre_key(&mut self, id: KyberPreKeyId, record: &KyberPreKeyRecord) -> SignalResult<()> {
        let mut store = self.0.borrow_mut();
        store.save_kyber_pre_key(id, record).await
    }
    async fn mark_kyber_pre_key_used(
        &mut self,
        id: KyberPreKeyId,
        ec_prekey_id: SignedPreKeyId,
        base_key: &PublicKey,
    ) -> SignalResult<()> {
        let mut store = self.0.borrow_mut();
        store.mark_kyber_pre_key_used(id, ec_prekey_id, base_key).await
    }
}

#[allow(clippy::await_holding_refcell_ref)]
#[async_trait::async_trait(?Send)]
impl<S: ProtocolStore + SenderKeyStore> SenderKeyStore for View<'_, S> {
    async fn store_sender_key(
        &mut self,
        sender: &ProtocolAddress,
        distribution_id: uuid::Uuid,
        record: &SenderKeyRecord,
    ) -> SignalResult<()> {
        let mut store = self.0.borrow_mut();
        store.store_sender_key(sender, distribution_id, record).await
    }
    async fn load_sender_key(
        &mut self,
        sender: &ProtocolAddress,
        distribution_id: uuid::Uuid,
    ) -> SignalResult<Option<SenderKeyRecord>> {
        let mut store = self.0.borrow_mut();
        store.load_sender_key(sender, distribution_id).await
    }
}

/// Group sessions (Signal sender keys).
impl<S: ProtocolStore + SenderKeyStore> SignalDevice<S> {
    /// This device's sender-key distribution message for `distribution_id`
    /// (creating the sender key on first use), serialized.
    pub fn sender_key_distribution(&mut self, distribution_id: uuid::Uuid) -> Result<Vec<u8>, E2eeError> {
        let me = address(&self.user, self.device)?;
        let skdm = block_on(create_sender_key_distribution_message(
            &me,
            distribution_id,
            &mut View(&self.store),
            &mut self.rng,
        ))?;
        Ok(skdm.serialized().to_vec())
    }

    /// Stores a remote device's sender key from its distribution message.
    pub fn process_sender_key_distribution(&mut self, user: &str, device: u32, skdm: &[u8]) -> Result<(), E2eeError> {
        let skdm = SenderKeyDistributionMessage::try_from(skdm)?;
        block_on(process_sender_key_distribution_message(&address(user, device)?, &skdm, &mut View(&self.store)))?;
        Ok(())
    }

    /// Encrypts once for every member holding this device's sender key.
    pub fn group_encrypt(&mut self, distribution_id: uuid::Uuid, plaintext: &[u8]) -> Result<Vec<u8>, E2eeError> {
        let me = address(&self.user, self.device)?;
        let m = block_on(group_encrypt(&mut View(&self.store), &me, distribution_id, plaintext, &mut self.rng))?;
        Ok(m.serialized().to_vec())
    }

    pub fn group_decrypt(
        &mut self,
        sender_user: &str,
        sender_device: u32,
        ciphertext: &[u8],
    ) -> Result<Vec<u8>, E2eeError> {
        Ok(block_on(group_decrypt(ciphertext, &mut View(&self.store), &address(sender_user, sender_device)?))?)
    }
}
