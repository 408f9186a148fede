//! Persistent libsignal protocol store on sled.
//!
//! [`SledProtocolStore`] keeps everything one local Signal device needs to
//! survive a restart: its identity key pair and registration id, the
//! identities of the peers it has talked to (trust on first use), its
//! one-time EC prekeys, signed prekeys, one-time and last-resort Kyber
//! prekeys, its double-ratchet sessions and its sender keys. It implements
//! every libsignal store trait ([`IdentityKeyStore`], [`PreKeyStore`],
//! [`SignedPreKeyStore`], [`KyberPreKeyStore`], [`SessionStore`],
//! [`SenderKeyStore`]) and the marker trait [`ProtocolStore`], so it can be
//! used wherever libsignal's `InMemSignalProtocolStore` is.
//!
//! # Durability
//! Every mutating call flushes the database (`Db::flush`, then an fdatasync
//! of sled's files, `router_sled_durable`) before it returns.
//! A ratchet step that is lost after its message was sent breaks the session
//! (the peer has moved on, we have not), and a one-time prekey that comes
//! back after a crash could be used twice; so nothing is acknowledged to
//! libsignal until it is on disk.
//!
//! # Sharing
//! The store is a cheap handle (`Clone`) on one sled database: clones see
//! and write the same data. libsignal functions such as
//! [`libsignal_protocol::message_decrypt`] want several `&mut dyn …Store`
//! at once; pass a clone for each. sled locks its directory, so a second
//! [`SledProtocolStore::open`] of the same directory only succeeds once
//! every handle of the first one has been dropped.
//!
//! # Layout
//! Records are stored in their own libsignal serialization
//! (`serialize()` / `deserialize()`); ids are big-endian `u32`; an address
//! is the bytes of `"{name}.{device_id}"`.
//!
//! | tree                  | key                                           | value                          |
//! |-----------------------|-----------------------------------------------|--------------------------------|
//! | `meta`                | `"identity_key_pair"`, `"registration_id"`, `"schema_version"` | identity key pair, BE `u32`, BE `u32` |
//! | `identities`          | address                                       | peer [`IdentityKey`]           |
//! | `prekeys`             | prekey id                                     | [`PreKeyRecord`]               |
//! | `signed_prekeys`      | signed prekey id                              | [`SignedPreKeyRecord`]         |
//! | `kyber_prekeys`       | Kyber prekey id (one-time keys)               | [`KyberPreKeyRecord`]          |
//! | `kyber_last_resort`   | Kyber prekey id (last-resort keys)            | [`KyberPreKeyRecord`]          |
//! | `kyber_base_keys_seen`| Kyber id ‖ signed prekey id ‖ base key        | empty                          |
//! | `sessions`            | address                                       | [`SessionRecord`]              |
//! | `sender_keys`         | address ‖ distribution id (16 bytes)          | [`SenderKeyRecord`]            |
//!
//! One-time Kyber prekeys are deleted when libsignal marks them used; a
//! last-resort key (saved with
//! [`SledProtocolStore::save_last_resort_kyber_pre_key`]) is kept, and the
//! (key, signed prekey, base key) combination is remembered so that a
//! replayed session start is refused.

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use libsignal_protocol::{
    CiphertextMessageType, Direction, GenericSignedPreKey, IdentityChange, IdentityKey, IdentityKeyPair,
    IdentityKeyStore, KyberPreKeyId, KyberPreKeyRecord, KyberPreKeyStore, PreKeyId, PreKeyRecord, PreKeyStore,
    ProtocolAddress, ProtocolStore, PublicKey, SenderKeyRecord, SenderKeyStore, SessionRecord, SessionStore,
    SignalProtocolError, SignedPreKeyId, SignedPreKeyRecord, SignedPreKeyStore,
};
use router_sled_durable::FileSync;
use sled::Transactional as _;
use uuid::Uuid;

const TREE_META: &str = "meta";
const TREE_IDENTITIES: &str = "identities";
const TREE_PREKEYS: &str = "prekeys";
const TREE_SIGNED_PREKEYS: &str = "signed_prekeys";
const TREE_KYBER_PREKEYS: &str = "kyber_prekeys";
const TREE_KYBER_LAST_RESORT: &str = "kyber_last_resort";
const TREE_KYBER_BASE_KEYS_SEEN: &str = "kyber_base_keys_seen";
const TREE_SESSIONS: &str = "sessions";
const TREE_SENDER_KEYS: &str = "sender_keys";

const META_IDENTITY: &[u8] = b"identity_key_pair";
const META_REGISTRATION_ID: &[u8] = b"registration_id";
const META_SCHEMA_VERSION: &[u8] = b"schema_version";
const SCHEMA_VERSION: u32 = 1;

/// Why opening or maintaining a [`SledProtocolStore`] failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database could not be opened, read, written or flushed.
    #[error("sled: {0}")]
    Sled(#[from] sled::Error),
    /// A stored record could not be (de)serialized by libsignal.
    #[error("signal protocol: {0}")]
    Signal(#[from] SignalProtocolError),
    /// [`SledProtocolStore::open_existing`] found no identity in the database.
    #[error("protocol store not initialized: no identity key pair stored")]
    NotInitialized,
    /// The database already belongs to another identity (key pair or
    /// registration id); it is never silently replaced.
    #[error("protocol store already holds a different identity key pair or registration id")]
    IdentityMismatch,
    /// A stored value is malformed.
    #[error("protocol store corrupt: {0}")]
    Corrupt(&'static str),
}

/// A libsignal protocol store persisted in a sled database; see the
/// [module documentation](self) for what it stores and how.
#[derive(Clone)]
pub struct SledProtocolStore {
    db: sled::Db,
    /// Makes a sled flush survive a power cut (sled alone does not).
    files: Arc<FileSync>,
    identity: IdentityKeyPair,
    registration_id: u32,
    identities: sled::Tree,
    prekeys: sled::Tree,
    signed_prekeys: sled::Tree,
    kyber_prekeys: sled::Tree,
    kyber_last_resort: sled::Tree,
    kyber_base_keys_seen: sled::Tree,
    sessions: sled::Tree,
    sender_keys: sled::Tree,
}

impl std::fmt::Debug for SledProtocolStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material.
        f.debug_struct("SledProtocolStore")
            .field("registration_id", &self.registration_id)
            .field("identity_key", &self.identity.identity_key())
            .finish_non_exhaustive()
    }
}

/// Opens the sled database in `dir`.
///
/// No background flusher: every mutating call flushes before it returns, so
/// a timer flush would add nothing. A store dropped a moment ago in this
/// process may still hold the file lock, so that is waited out
/// ([`router_sled_durable::retry_while_locked`]).
fn open_db(dir: &Path) -> Result<sled::Db, StoreError> {
    let open = || sled::Config::new().path(dir).flush_every_ms(None).open();
    Ok(router_sled_durable::retry_while_locked(open, |e| match e {
        sled::Error::Io(e) => Some(e),
        _ => None,
    })?)
}

impl SledProtocolStore {
    /// Opens (creating if needed) the store in `dir` for `identity`.
    ///
    /// The first open records `identity` and `registration_id`; later opens
    /// must pass the same ones, otherwise this fails with
    /// [`StoreError::IdentityMismatch`] rather than replace the identity.
    pub fn open(dir: &Path, identity: IdentityKeyPair, registration_id: u32) -> Result<Self, StoreError> {
        let db = open_db(dir)?;
        let meta = db.open_tree(TREE_META)?;
        match read_identity(&meta)? {
            Some((stored, stored_registration_id)) => {
                if stored.serialize() != identity.serialize() || stored_registration_id != registration_id {
                    return Err(StoreError::IdentityMismatch);
                }
            }
            None => {
                let mut batch = sled::Batch::default();
                batch.insert(META_IDENTITY, &*identity.serialize());
                batch.insert(META_REGISTRATION_ID, &registration_id.to_be_bytes());
                batch.insert(META_SCHEMA_VERSION, &SCHEMA_VERSION.to_be_bytes());
                meta.apply_batch(batch)?;
                db.flush()?;
            }
        }
        Self::with_identity(db, dir, identity, registration_id)
    }

    /// Reopens a store created by [`open`](Self::open), reading the identity
    /// from the database; [`StoreError::NotInitialized`] if there is none.
    pub fn open_existing(dir: &Path) -> Result<Self, StoreError> {
        let db = open_db(dir)?;
        let meta = db.open_tree(TREE_META)?;
        let (identity, registration_id) = read_identity(&meta)?.ok_or(StoreError::NotInitialized)?;
        Self::with_identity(db, dir, identity, registration_id)
    }

    fn with_identity(
        db: sled::Db,
        dir: &Path,
        identity: IdentityKeyPair,
        registration_id: u32,
    ) -> Result<Self, StoreError> {
        Ok(Self {
            files: Arc::new(FileSync::open(dir).map_err(sled::Error::Io)?),
            identities: db.open_tree(TREE_IDENTITIES)?,
            prekeys: db.open_tree(TREE_PREKEYS)?,
            signed_prekeys: db.open_tree(TREE_SIGNED_PREKEYS)?,
            kyber_prekeys: db.open_tree(TREE_KYBER_PREKEYS)?,
            kyber_last_resort: db.open_tree(TREE_KYBER_LAST_RESORT)?,
            kyber_base_keys_seen: db.open_tree(TREE_KYBER_BASE_KEYS_SEEN)?,
            sessions: db.open_tree(TREE_SESSIONS)?,
            sender_keys: db.open_tree(TREE_SENDER_KEYS)?,
            db,
            identity,
            registration_id,
        })
    }

    /// The identity key pair this store belongs to.
    pub fn identity_key_pair(&self) -> IdentityKeyPair {
        self.identity
    }

    /// The local registration id this store belongs to.
    pub fn registration_id(&self) -> u32 {
        self.registration_id
    }

    /// Saves a last-resort Kyber prekey: unlike one-time keys saved through
    /// [`KyberPreKeyStore::save_kyber_pre_key`], it survives
    /// [`KyberPreKeyStore::mark_kyber_pre_key_used`]. Saving an id that was
    /// a one-time key turns it into a last-resort one.
    pub fn save_last_resort_kyber_pre_key(
        &mut self,
        id: KyberPreKeyId,
        record: &KyberPreKeyRecord,
    ) -> Result<(), StoreError> {
        let key = id_key(id.into());
        let value = record.serialize()?;
        (&self.kyber_prekeys, &self.kyber_last_resort)
            .transaction(|(one_time, last_resort)| {
                one_time.remove(&key)?;
                last_resort.insert(&key, value.as_slice())?;
                Ok(())
            })
            .map_err(|e: sled::transaction::TransactionError<()>| match e {
                sled::transaction::TransactionError::Storage(e) => e,
                sled::transaction::TransactionError::Abort(()) => {
                    sled::Error::ReportableBug("unexpected transaction abort".into())
                }
            })?;
        self.durable_flush()?;
        Ok(())
    }

    /// Deletes the session with `address` (for a recipient device that is
    /// stale or gone). Deleting a session that does not exist is not an error.
    pub fn delete_session(&mut self, address: &ProtocolAddress) -> Result<(), StoreError> {
        self.sessions.remove(address_key(address))?;
        self.durable_flush()?;
        Ok(())
    }

    /// Ids of the one-time EC prekeys still stored, ascending.
    pub fn pre_key_ids(&self) -> Result<Vec<PreKeyId>, StoreError> {
        tree_ids(&self.prekeys).map(|ids| ids.into_iter().map(PreKeyId::from).collect())
    }

    /// Ids of the one-time Kyber prekeys still stored (last-resort keys
    /// excluded), ascending.
    pub fn kyber_pre_key_ids(&self) -> Result<Vec<KyberPreKeyId>, StoreError> {
        tree_ids(&self.kyber_prekeys).map(|ids| ids.into_iter().map(KyberPreKeyId::from).collect())
    }

    /// Flushes the database; every mutating call already does this.
    pub fn flush(&self) -> Result<(), StoreError> {
        self.durable_flush()?;
        Ok(())
    }

    /// sled's flush, then an fdatasync of its files: only then is a write
    /// on the disk (see `router_sled_durable`).
    fn durable_flush(&self) -> Result<(), sled::Error> {
        self.files.flush_with(|| self.db.flush().map(drop))
    }

    /// Flushes, mapping a failure to the error type the libsignal traits use.
    fn flush_for(&self, op: &'static str) -> Result<(), SignalProtocolError> {
        self.durable_flush().map_err(sled_err(op))
    }
}

fn read_identity(meta: &sled::Tree) -> Result<Option<(IdentityKeyPair, u32)>, StoreError> {
    let Some(identity) = meta.get(META_IDENTITY)? else {
        return Ok(None);
    };
    let identity = IdentityKeyPair::try_from(&identity[..]).map_err(|_| StoreError::Corrupt("identity key pair"))?;
    let registration_id = meta.get(META_REGISTRATION_ID)?.ok_or(StoreError::Corrupt("registration id missing"))?;
    let registration_id = be_u32(&registration_id).ok_or(StoreError::Corrupt("registration id"))?;
    if let Some(version) = meta.get(META_SCHEMA_VERSION)? {
        match be_u32(&version) {
            Some(SCHEMA_VERSION) => {}
            Some(_) => return Err(StoreError::Corrupt("unsupported schema version")),
            None => return Err(StoreError::Corrupt("schema version")),
        }
    }
    Ok(Some((identity, registration_id)))
}

fn be_u32(bytes: &[u8]) -> Option<u32> {
    <[u8; 4]>::try_from(bytes).ok().map(u32::from_be_bytes)
}

fn tree_ids(tree: &sled::Tree) -> Result<Vec<u32>, StoreError> {
    tree.iter().keys().map(|k| be_u32(&k?).ok_or(StoreError::Corrupt("prekey id"))).collect()
}

fn id_key(id: u32) -> [u8; 4] {
    id.to_be_bytes()
}

fn address_key(address: &ProtocolAddress) -> Vec<u8> {
    format!("{}.{}", address.name(), u32::from(address.device_id())).into_bytes()
}

fn sender_key_key(sender: &ProtocolAddress, distribution_id: Uuid) -> Vec<u8> {
    // The address is variable-length, the uuid is always 16 bytes: putting
    // the uuid last keeps the key unambiguous.
    let mut key = address_key(sender);
    key.extend_from_slice(distribution_id.as_bytes());
    key
}

fn base_key_seen_key(kyber_id: KyberPreKeyId, ec_id: SignedPreKeyId, base_key: &PublicKey) -> Vec<u8> {
    let mut key = Vec::with_capacity(8 + 33);
    key.extend_from_slice(&id_key(kyber_id.into()));
    key.extend_from_slice(&id_key(ec_id.into()));
    key.extend_from_slice(&base_key.serialize());
    key
}

fn sled_err(op: &'static str) -> impl Fn(sled::Error) -> SignalProtocolError {
    move |e| SignalProtocolError::InvalidState(op, format!("sled: {e}"))
}

#[async_trait(?Send)]
impl IdentityKeyStore for SledProtocolStore {
    async fn get_identity_key_pair(&self) -> Result<IdentityKeyPair, SignalProtocolError> {
        Ok(self.identity)
    }

    async fn get_local_registration_id(&self) -> Result<u32, SignalProtocolError> {
        Ok(self.registration_id)
    }

    async fn save_identity(
        &mut self,
        address: &ProtocolAddress,
        identity: &IdentityKey,
    ) -> Result<IdentityChange, SignalProtocolError> {
        const OP: &str = "SledProtocolStore::save_identity";
        let new = identity.serialize();
        let previous = self.identities.insert(address_key(address), &*new).map_err(sled_err(OP))?;
        self.flush_for(OP)?;
        let replaced = previous.is_some_and(|old| old[..] != new[..]);
        Ok(IdentityChange::from_changed(replaced))
    }

    async fn is_trusted_identity(
        &self,
        address: &ProtocolAddress,
        identity: &IdentityKey,
        _direction: Direction,
    ) -> Result<bool, SignalProtocolError> {
        // Trust on first use: unknown peers are trusted, known ones only
        // with the identity first seen (or last saved).
        Ok(self.get_identity(address).await?.is_none_or(|known| known == *identity))
    }

    async fn get_identity(&self, address: &ProtocolAddress) -> Result<Option<IdentityKey>, SignalProtocolError> {
        self.identities
            .get(address_key(address))
            .map_err(sled_err("SledProtocolStore::get_identity"))?
            .map(|bytes| IdentityKey::decode(&bytes))
            .transpose()
    }
}

#[async_trait(?Send)]
impl PreKeyStore for SledProtocolStore {
    async fn get_pre_key(&self, prekey_id: PreKeyId) -> Result<PreKeyRecord, SignalProtocolError> {
        let bytes = self
            .prekeys
            .get(id_key(prekey_id.into()))
            .map_err(sled_err("SledProtocolStore::get_pre_key"))?
            .ok_or(SignalProtocolError::InvalidPreKeyId)?;
        PreKeyRecord::deserialize(&bytes)
    }

    async fn save_pre_key(&mut self, prekey_id: PreKeyId, record: &PreKeyRecord) -> Result<(), SignalProtocolError> {
        const OP: &str = "SledProtocolStore::save_pre_key";
        self.prekeys.insert(id_key(prekey_id.into()), record.serialize()?).map_err(sled_err(OP))?;
        self.flush_for(OP)
    }

    async fn remove_pre_key(&mut self, prekey_id: PreKeyId) -> Result<(), SignalProtocolError> {
        const OP: &str = "SledProtocolStore::remove_pre_key";
        self.prekeys.remove(id_key(prekey_id.into())).map_err(sled_err(OP))?;
        self.flush_for(OP)
    }
}

#[async_trait(?Send)]
impl SignedPreKeyStore for SledProtocolStore {
    async fn get_signed_pre_key(
        &self,
        signed_prekey_id: SignedPreKeyId,
    ) -> Result<SignedPreKeyRecord, SignalProtocolError> {
        let bytes = self
            .signed_prekeys
            .get(id_key(signed_prekey_id.into()))
            .map_err(sled_err("SledProtocolStore::get_signed_pre_key"))?
            .ok_or(SignalProtocolError::InvalidSignedPreKeyId)?;
        SignedPreKeyRecord::deserialize(&bytes)
    }

    async fn save_signed_pre_key(
        &mut self,
        signed_prekey_id: SignedPreKeyId,
        record: &SignedPreKeyRecord,
    ) -> Result<(), SignalProtocolError> {
        const OP: &str = "SledProtocolStore::save_signed_pre_key";
        self.signed_prekeys.insert(id_key(signed_prekey_id.into()), record.serialize()?).map_err(sled_err(OP))?;
        self.flush_for(OP)
    }
}

#[async_trait(?Send)]
impl KyberPreKeyStore for SledProtocolStore {
    async fn get_kyber_pre_key(
        &self,
        kyber_prekey_id: KyberPreKeyId,
    ) -> Result<KyberPreKeyRecord, SignalProtocolError> {
        const OP: &str = "SledProtocolStore::get_kyber_pre_key";
        let key = id_key(kyber_prekey_id.into());
        let bytes = match self.kyber_prekeys.get(key).map_err(sled_err(OP))? {
            Some(bytes) => bytes,
            None => self
                .kyber_last_resort
                .get(key)
                .map_err(sled_err(OP))?
                .ok_or(SignalProtocolError::InvalidKyberPreKeyId)?,
        };
        KyberPreKeyRecord::deserialize(&bytes)
    }

    /// Saves a one-time Kyber prekey; see
    /// [`SledProtocolStore::save_last_resort_kyber_pre_key`] for last-resort
    /// keys.
    async fn save_kyber_pre_key(
        &mut self,
        kyber_prekey_id: KyberPreKeyId,
        record: &KyberPreKeyRecord,
    ) -> Result<(), SignalProtocolError> {
        const OP: &str = "SledProtocolStore::save_kyber_pre_key";
        // `SignalDevice` publishes its last-resort key under this id; it must
        // survive being used.
        if u32::from(kyber_prekey_id) == crate::device::LAST_RESORT_KYBER_ID {
            return self
                .save_last_resort_kyber_pre_key(kyber_prekey_id, record)
                .map_err(|e| SignalProtocolError::InvalidState(OP, e.to_string()));
        }
        self.kyber_prekeys.insert(id_key(kyber_prekey_id.into()), record.serialize()?).map_err(sled_err(OP))?;
        self.flush_for(OP)
    }

    /// Removes a one-time key; keeps a last-resort key but refuses a base
    /// key already seen with the same (Kyber, signed) prekey pair.
    async fn mark_kyber_pre_key_used(
        &mut self,
        kyber_prekey_id: KyberPreKeyId,
        ec_prekey_id: SignedPreKeyId,
        base_key: &PublicKey,
    ) -> Result<(), SignalProtocolError> {
        const OP: &str = "SledProtocolStore::mark_kyber_pre_key_used";
        let key = id_key(kyber_prekey_id.into());
        if self.kyber_prekeys.remove(key).map_err(sled_err(OP))?.is_some() {
            return self.flush_for(OP);
        }
        if !self.kyber_last_resort.contains_key(key).map_err(sled_err(OP))? {
            return Err(SignalProtocolError::InvalidKyberPreKeyId);
        }
        let seen = base_key_seen_key(kyber_prekey_id, ec_prekey_id, base_key);
        let previous = self.kyber_base_keys_seen.insert(seen, Vec::<u8>::new()).map_err(sled_err(OP))?;
        if previous.is_some() {
            return Err(SignalProtocolError::InvalidMessage(CiphertextMessageType::PreKey, "reused base key"));
        }
        self.flush_for(OP)
    }
}

#[async_trait(?Send)]
impl SessionStore for SledProtocolStore {
    async fn load_session(&self, address: &ProtocolAddress) -> Result<Option<SessionRecord>, SignalProtocolError> {
        self.sessions
            .get(address_key(address))
            .map_err(sled_err("SledProtocolStore::load_session"))?
            .map(|bytes| SessionRecord::deserialize(&bytes))
            .transpose()
    }

    async fn store_session(
        &mut self,
        address: &ProtocolAddress,
        record: &SessionRecord,
    ) -> Result<(), SignalProtocolError> {
        const OP: &str = "SledProtocolStore::store_session";
        self.sessions.insert(address_key(address), record.serialize()?).map_err(sled_err(OP))?;
        self.flush_for(OP)
    }
}

#[async_trait(?Send)]
impl SenderKeyStore for SledProtocolStore {
    async fn store_sender_key(
        &mut self,
        sender: &ProtocolAddress,
        distribution_id: Uuid,
        record: &SenderKeyRecord,
    ) -> Result<(), SignalProtocolError> {
        const OP: &str = "SledProtocolStore::store_sender_key";
        self.sender_keys.insert(sender_key_key(sender, distribution_id), record.serialize()?).map_err(sled_err(OP))?;
        self.flush_for(OP)
    }

    async fn load_sender_key(
        &mut self,
        sender: &ProtocolAddress,
        distribution_id: Uuid,
    ) -> Result<Option<SenderKeyRecord>, SignalProtocolError> {
        self.sender_keys
            .get(sender_key_key(sender, distribution_id))
            .map_err(sled_err("SledProtocolStore::load_sender_key"))?
            .map(|bytes| SenderKeyRecord::deserialize(&bytes))
            .transpose()
    }
}

impl ProtocolStore for SledProtocolStore {}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use futures::executor::block_on;
    use libsignal_protocol::{
        CiphertextMessage, DeviceId, InMemSignalProtocolStore, KeyPair, PreKeyBundle, Timestamp,
        create_sender_key_distribution_message, kem, message_decrypt, message_encrypt, process_prekey_bundle,
    };
    use rand09::SeedableRng;
    use rand09::rngs::StdRng;

    use super::*;

    fn rng(seed: u64) -> StdRng {
        StdRng::seed_from_u64(seed)
    }

    fn addr(name: &str, device: u8) -> ProtocolAddress {
        ProtocolAddress::new(name.to_owned(), DeviceId::new(device).expect("device id"))
    }

    fn signed_pre_key(id: u32, identity: &IdentityKeyPair, rng: &mut StdRng) -> SignedPreKeyRecord {
        let pair = KeyPair::generate(rng);
        let signature = identity.private_key().calculate_signature(&pair.public_key.serialize(), rng).expect("sign");
        SignedPreKeyRecord::new(id.into(), Timestamp::from_epoch_millis(1_700_000_000_000), &pair, &signature)
    }

    fn kyber_pre_key(id: u32, identity: &IdentityKeyPair) -> KyberPreKeyRecord {
        KyberPreKeyRecord::generate(kem::KeyType::Kyber1024, id.into(), identity.private_key()).expect("kyber prekey")
    }

    fn same_identity_pair(a: &IdentityKeyPair, b: &IdentityKeyPair) -> bool {
        a.serialize() == b.serialize()
    }

    #[test]
    fn identity_is_stored_once_and_mismatch_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut r = rng(1);
        let identity = IdentityKeyPair::generate(&mut r);
        let other = IdentityKeyPair::generate(&mut r);

        assert!(matches!(SledProtocolStore::open_existing(dir.path()), Err(StoreError::NotInitialized)));

        let store = SledProtocolStore::open(dir.path(), identity, 42).expect("open");
        assert_eq!(block_on(store.get_local_registration_id()).expect("reg"), 42);
        drop(store);

        assert!(matches!(SledProtocolStore::open(dir.path(), other, 42), Err(StoreError::IdentityMismatch)));
        assert!(matches!(SledProtocolStore::open(dir.path(), identity, 43), Err(StoreError::IdentityMismatch)));

        let store = SledProtocolStore::open(dir.path(), identity, 42).expect("same identity");
        drop(store);
        let store = SledProtocolStore::open_existing(dir.path()).expect("open existing");
        let stored = block_on(store.get_identity_key_pair()).expect("identity");
        assert!(same_identity_pair(&stored, &identity));
        assert!(same_identity_pair(&store.identity_key_pair(), &identity));
        assert_eq!(store.registration_id(), 42);
    }

    #[test]
    fn identities_are_trusted_on_first_use_and_persist() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut r = rng(2);
        let identity = IdentityKeyPair::generate(&mut r);
        let alice = addr("alice", 1);
        let alice_key = *IdentityKeyPair::generate(&mut r).identity_key();
        let alice_new_key = *IdentityKeyPair::generate(&mut r).identity_key();

        let mut store = SledProtocolStore::open(dir.path(), identity, 7).expect("open");
        block_on(async {
            assert_eq!(store.get_identity(&alice).await.expect("get"), None);
            assert!(store.is_trusted_identity(&alice, &alice_key, Direction::Sending).await.expect("trusted"));
            assert_eq!(store.save_identity(&alice, &alice_key).await.expect("save"), IdentityChange::NewOrUnchanged);
            assert_eq!(store.save_identity(&alice, &alice_key).await.expect("save"), IdentityChange::NewOrUnchanged);
        });
        drop(store);

        let mut store = SledProtocolStore::open_existing(dir.path()).expect("reopen");
        block_on(async {
            assert_eq!(store.get_identity(&alice).await.expect("get"), Some(alice_key));
            assert!(store.is_trusted_identity(&alice, &alice_key, Direction::Receiving).await.expect("trusted"));
            assert!(!store.is_trusted_identity(&alice, &alice_new_key, Direction::Sending).await.expect("trusted"));
            // Another device of the same user is a separate address.
            assert!(
                store
                    .is_trusted_identity(&addr("alice", 2), &alice_new_key, Direction::Sending)
                    .await
                    .expect("trusted")
            );
            assert_eq!(
                store.save_identity(&alice, &alice_new_key).await.expect("save"),
                IdentityChange::ReplacedExisting
            );
        });
        drop(store);

        let store = SledProtocolStore::open_existing(dir.path()).expect("reopen");
        block_on(async {
            assert_eq!(store.get_identity(&alice).await.expect("get"), Some(alice_new_key));
            assert!(!store.is_trusted_identity(&alice, &alice_key, Direction::Sending).await.expect("trusted"));
        });
    }

    #[test]
    fn records_round_trip_across_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut r = rng(3);
        let identity = IdentityKeyPair::generate(&mut r);
        let pre_key = PreKeyRecord::new(PreKeyId::from(5), &KeyPair::generate(&mut r));
        let pre_key_gone = PreKeyRecord::new(PreKeyId::from(6), &KeyPair::generate(&mut r));
        let signed = signed_pre_key(9, &identity, &mut r);
        let kyber = kyber_pre_key(11, &identity);
        let last_resort = kyber_pre_key(12, &identity);
        let peer = addr("peer", 3);
        let session = SessionRecord::new_fresh();
        let distribution_id = Uuid::from_u128(0x1234_5678);
        let me = addr("me", 1);

        let mut store = SledProtocolStore::open(dir.path(), identity, 1).expect("open");
        let sender_key_bytes = block_on(async {
            store.save_pre_key(5.into(), &pre_key).await.expect("save");
            store.save_pre_key(6.into(), &pre_key_gone).await.expect("save");
            store.remove_pre_key(6.into()).await.expect("remove");
            // Removing an absent prekey is not an error.
            store.remove_pre_key(99.into()).await.expect("remove absent");
            store.save_signed_pre_key(9.into(), &signed).await.expect("save");
            store.save_kyber_pre_key(11.into(), &kyber).await.expect("save");
            store.save_last_resort_kyber_pre_key(12.into(), &last_resort).expect("save last resort");
            store.store_session(&peer, &session).await.expect("store");
            create_sender_key_distribution_message(&me, distribution_id, &mut store, &mut r).await.expect("sender key");
            store
                .load_sender_key(&me, distribution_id)
                .await
                .expect("load")
                .expect("sender key stored")
                .serialize()
                .expect("serialize")
        });
        drop(store);

        let mut store = SledProtocolStore::open_existing(dir.path()).expect("reopen");
        block_on(async {
            assert_eq!(
                store.get_pre_key(5.into()).await.expect("get").serialize().expect("ser"),
                pre_key.serialize().expect("ser")
            );
            assert!(matches!(store.get_pre_key(6.into()).await, Err(SignalProtocolError::InvalidPreKeyId)));
            assert_eq!(
                store.get_signed_pre_key(9.into()).await.expect("get").serialize().expect("ser"),
                signed.serialize().expect("ser")
            );
            assert!(matches!(
                store.get_signed_pre_key(10.into()).await,
                Err(SignalProtocolError::InvalidSignedPreKeyId)
            ));
            assert_eq!(
                store.get_kyber_pre_key(11.into()).await.expect("get").serialize().expect("ser"),
                kyber.serialize().expect("ser")
            );
            assert_eq!(
                store.get_kyber_pre_key(12.into()).await.expect("get").serialize().expect("ser"),
                last_resort.serialize().expect("ser")
            );
            assert!(matches!(store.get_kyber_pre_key(13.into()).await, Err(SignalProtocolError::InvalidKyberPreKeyId)));
            assert_eq!(
                store.load_session(&peer).await.expect("load").expect("session stored").serialize().expect("ser"),
                session.serialize().expect("ser")
            );
            assert!(store.load_session(&addr("peer", 4)).await.expect("load").is_none());
            assert_eq!(
                store
                    .load_sender_key(&me, distribution_id)
                    .await
                    .expect("load")
                    .expect("sender key stored")
                    .serialize()
                    .expect("ser"),
                sender_key_bytes
            );
            assert!(store.load_sender_key(&me, Uuid::from_u128(1)).await.expect("load").is_none());
            assert!(store.load_sender_key(&addr("me", 2), distribution_id).await.expect("load").is_none());
        });
        assert_eq!(store.pre_key_ids().expect("ids"), vec![PreKeyId::from(5)]);
        assert_eq!(store.kyber_pre_key_ids().expect("ids"), vec![KyberPreKeyId::from(11)]);

        store.delete_session(&peer).expect("delete");
        store.delete_session(&peer).expect("delete absent");
        drop(store);
        let store = SledProtocolStore::open_existing(dir.path()).expect("reopen");
        assert!(block_on(store.load_session(&peer)).expect("load").is_none());
    }

    #[test]
    fn marking_kyber_used_removes_one_time_but_keeps_last_resort() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut r = rng(4);
        let identity = IdentityKeyPair::generate(&mut r);
        let base_key = KeyPair::generate(&mut r).public_key;
        let other_base_key = KeyPair::generate(&mut r).public_key;

        let mut store = SledProtocolStore::open(dir.path(), identity, 1).expect("open");
        block_on(async {
            store.save_kyber_pre_key(1.into(), &kyber_pre_key(1, &identity)).await.expect("save");
            store.save_last_resort_kyber_pre_key(2.into(), &kyber_pre_key(2, &identity)).expect("save");

            store.mark_kyber_pre_key_used(1.into(), 7.into(), &base_key).await.expect("mark one-time");
            assert!(matches!(store.get_kyber_pre_key(1.into()).await, Err(SignalProtocolError::InvalidKyberPreKeyId)));
            assert!(matches!(
                store.mark_kyber_pre_key_used(1.into(), 7.into(), &base_key).await,
                Err(SignalProtocolError::InvalidKyberPreKeyId)
            ));

            store.mark_kyber_pre_key_used(2.into(), 7.into(), &base_key).await.expect("mark last resort");
            store.get_kyber_pre_key(2.into()).await.expect("last resort kept");
            store.mark_kyber_pre_key_used(2.into(), 7.into(), &other_base_key).await.expect("new base key");
        });
        drop(store);

        let mut store = SledProtocolStore::open_existing(dir.path()).expect("reopen");
        block_on(async {
            assert!(matches!(store.get_kyber_pre_key(1.into()).await, Err(SignalProtocolError::InvalidKyberPreKeyId)));
            store.get_kyber_pre_key(2.into()).await.expect("last resort kept");
            // A replayed session start (same base key) is refused, even after
            // a restart.
            assert!(matches!(
                store.mark_kyber_pre_key_used(2.into(), 7.into(), &base_key).await,
                Err(SignalProtocolError::InvalidMessage(CiphertextMessageType::PreKey, _))
            ));
            // The same base key with another signed prekey is a different
            // combination.
            store.mark_kyber_pre_key_used(2.into(), 8.into(), &base_key).await.expect("other signed prekey");
        });
        assert!(store.kyber_pre_key_ids().expect("ids").is_empty());
    }

    /// Bob publishes prekeys from a sled store, Alice (in memory) starts a
    /// session; they talk both ways, Bob restarts from disk and they go on.
    #[test]
    fn full_session_survives_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut r = rng(5);
        let bob_identity = IdentityKeyPair::generate(&mut r);
        let alice_identity = IdentityKeyPair::generate(&mut r);
        let alice_address = addr("alice", 1);
        let bob_address = addr("bob", 2);
        let now = SystemTime::now();

        let mut alice = InMemSignalProtocolStore::new(alice_identity, 1111).expect("alice store");
        let mut bob = SledProtocolStore::open(dir.path(), bob_identity, 2222).expect("bob store");

        block_on(async {
            // Bob publishes: a one-time EC prekey, a signed prekey and a
            // one-time Kyber prekey (plus a last-resort one).
            let pre_key = PreKeyRecord::new(PreKeyId::from(31), &KeyPair::generate(&mut r));
            let signed = signed_pre_key(32, &bob_identity, &mut r);
            let kyber = kyber_pre_key(33, &bob_identity);
            bob.save_pre_key(31.into(), &pre_key).await.expect("save");
            bob.save_signed_pre_key(32.into(), &signed).await.expect("save");
            bob.save_kyber_pre_key(33.into(), &kyber).await.expect("save");
            bob.save_last_resort_kyber_pre_key(34.into(), &kyber_pre_key(34, &bob_identity)).expect("save");

            let bundle = PreKeyBundle::new(
                bob.get_local_registration_id().await.expect("reg"),
                bob_address.device_id(),
                Some((31.into(), pre_key.public_key().expect("pk"))),
                32.into(),
                signed.public_key().expect("spk"),
                signed.signature().expect("sig"),
                33.into(),
                kyber.public_key().expect("kpk"),
                kyber.signature().expect("ksig"),
                *bob_identity.identity_key(),
            )
            .expect("bundle");

            process_prekey_bundle(
                &bob_address,
                &mut alice.session_store,
                &mut alice.identity_store,
                &bundle,
                now,
                &mut r,
            )
            .await
            .expect("process bundle");

            // Alice -> Bob (PreKey message).
            let first = message_encrypt(
                b"hello bob",
                &bob_address,
                &mut alice.session_store,
                &mut alice.identity_store,
                now,
                &mut r,
            )
            .await
            .expect("encrypt");
            assert!(matches!(first, CiphertextMessage::PreKeySignalMessage(_)));
            let plain = bob_decrypt(&mut bob, &first, &alice_address, &mut r).await;
            assert_eq!(plain, b"hello bob");

            // The one-time prekeys were consumed, the others kept.
            assert!(matches!(bob.get_pre_key(31.into()).await, Err(SignalProtocolError::InvalidPreKeyId)));
            assert!(matches!(bob.get_kyber_pre_key(33.into()).await, Err(SignalProtocolError::InvalidKyberPreKeyId)));
            bob.get_signed_pre_key(32.into()).await.expect("signed kept");
            bob.get_kyber_pre_key(34.into()).await.expect("last resort kept");
            assert_eq!(bob.get_identity(&alice_address).await.expect("get"), Some(*alice_identity.identity_key()));

            // Bob -> Alice.
            let reply = message_encrypt(b"hi alice", &alice_address, &mut bob.clone(), &mut bob.clone(), now, &mut r)
                .await
                .expect("bob encrypt");
            assert!(matches!(reply, CiphertextMessage::SignalMessage(_)));
            let plain = alice_decrypt(&mut alice, &reply, &bob_address, &mut r).await;
            assert_eq!(plain, b"hi alice");

            // Alice -> Bob again, now a plain Signal message.
            let second = message_encrypt(
                b"how are you",
                &bob_address,
                &mut alice.session_store,
                &mut alice.identity_store,
                now,
                &mut r,
            )
            .await
            .expect("encrypt");
            assert!(matches!(second, CiphertextMessage::SignalMessage(_)));
            assert_eq!(bob_decrypt(&mut bob, &second, &alice_address, &mut r).await, b"how are you");
        });

        // Bob restarts: everything he knows comes from disk.
        drop(bob);
        let mut bob = SledProtocolStore::open_existing(dir.path()).expect("bob reopen");

        block_on(async {
            let third = message_encrypt(
                b"still there?",
                &bob_address,
                &mut alice.session_store,
                &mut alice.identity_store,
                now,
                &mut r,
            )
            .await
            .expect("encrypt");
            assert_eq!(bob_decrypt(&mut bob, &third, &alice_address, &mut r).await, b"still there?");

            let reply = message_encrypt(
                b"yes, after a restart",
                &alice_address,
                &mut bob.clone(),
                &mut bob.clone(),
                now,
                &mut r,
            )
            .await
            .expect("bob encrypt");
            assert_eq!(alice_decrypt(&mut alice, &reply, &bob_address, &mut r).await, b"yes, after a restart");
        });

        // And once more across a restart in the middle of Bob's sending
        // chain: his ratchet state after encrypting was persisted.
        block_on(async {
            let m1 = message_encrypt(b"one", &alice_address, &mut bob.clone(), &mut bob.clone(), now, &mut r)
                .await
                .expect("bob encrypt");
            assert_eq!(alice_decrypt(&mut alice, &m1, &bob_address, &mut r).await, b"one");
        });
        drop(bob);
        let bob = SledProtocolStore::open_existing(dir.path()).expect("bob reopen");
        block_on(async {
            let m2 = message_encrypt(b"two", &alice_address, &mut bob.clone(), &mut bob.clone(), now, &mut r)
                .await
                .expect("bob encrypt");
            assert_eq!(alice_decrypt(&mut alice, &m2, &bob_address, &mut r).await, b"two");
            // Replaying an old message is refused: its key is gone.
            assert!(
                message_decrypt(
                    &m2,
                    &bob_address,
                    &mut alice.session_store,
                    &mut alice.identity_store,
                    &mut alice.pre_key_store,
                    &alice.signed_pre_key_store,
                    &mut alice.kyber_pre_key_store,
                    &mut r,
                )
                .await
                .is_err()
            );
            bob.flush().expect("flush");
        });
    }

    async fn bob_decrypt(
        bob: &mut SledProtocolStore,
        message: &CiphertextMessage,
        from: &ProtocolAddress,
        rng: &mut StdRng,
    ) -> Vec<u8> {
        message_decrypt(message, from, &mut bob.clone(), &mut bob.clone(), &mut bob.clone(), &bob.clone(), bob, rng)
            .await
            .expect("bob decrypt")
    }

    async fn alice_decrypt(
        alice: &mut InMemSignalProtocolStore,
        message: &CiphertextMessage,
        from: &ProtocolAddress,
        rng: &mut StdRng,
    ) -> Vec<u8> {
        message_decrypt(
            message,
            from,
            &mut alice.session_store,
            &mut alice.identity_store,
            &mut alice.pre_key_store,
            &alice.signed_pre_key_store,
            &mut alice.kyber_pre_key_store,
            rng,
        )
        .await
        .expect("alice decrypt")
    }
}
