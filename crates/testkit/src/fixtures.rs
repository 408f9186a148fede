//! Valid Signal key material for tests: an identity key pair per device, and
//! uploads whose every signature verifies the way libsignal verifies it.

use rand::RngCore;
use rand::SeedableRng;
use router_prekeys::sign::KeyPair;
use router_proto::v1::{EcOneTimePrekey, SignedEcPrekey, SignedKyberPrekey, UploadPrekeysRequest};

/// Kyber1024 in libsignal's serialization: type byte 0x08 + 1568 bytes.
pub const KYBER1024_TYPE: u8 = 0x08;
pub const KYBER1024_PUBLIC_LEN: usize = 1 + 1568;

pub struct DeviceIdentity {
    pub identity: KeyPair,
    rng: rand::rngs::StdRng,
}

impl DeviceIdentity {
    pub fn new(seed: u64) -> Self {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let identity = KeyPair::generate(&mut rng);
        DeviceIdentity { identity, rng }
    }

    pub fn identity_key(&self) -> Vec<u8> {
        self.identity.public.to_vec()
    }

    fn random64(&mut self) -> [u8; 64] {
        let mut r = [0u8; 64];
        self.rng.fill_bytes(&mut r);
        r
    }

    pub fn ec_public(&mut self) -> Vec<u8> {
        KeyPair::generate(&mut self.rng).public.to_vec()
    }

    pub fn signed_prekey(&mut self, key_id: u32) -> SignedEcPrekey {
        let public_key = self.ec_public();
        let r = self.random64();
        let signature = self.identity.sign(&public_key, &r).to_vec();
        SignedEcPrekey { key_id, public_key: public_key.into(), signature: signature.into() }
    }

    pub fn kyber(&mut self, key_id: u32) -> SignedKyberPrekey {
        let mut public_key = vec![0u8; KYBER1024_PUBLIC_LEN];
        public_key[0] = KYBER1024_TYPE;
        self.rng.fill_bytes(&mut public_key[1..]);
        let r = self.random64();
        let signature = self.identity.sign(&public_key, &r).to_vec();
        SignedKyberPrekey { key_id, public_key: public_key.into(), signature: signature.into() }
    }

    /// A full upload: signed prekey, `one_time` EC keys with ids starting at
    /// `first_id`, and when `kyber` is set as many Kyber keys plus a last resort.
    pub fn upload(
        &mut self,
        user: &str,
        device: u32,
        first_id: u32,
        one_time: u32,
        kyber: bool,
    ) -> UploadPrekeysRequest {
        let signed_prekey = Some(self.signed_prekey(1));
        let one_time_prekeys = (first_id..first_id + one_time)
            .map(|id| EcOneTimePrekey { key_id: id, public_key: self.ec_public().into() })
            .collect();
        let (kyber_one_time_prekeys, kyber_last_resort) = if kyber {
            ((first_id..first_id + one_time).map(|id| self.kyber(id)).collect(), Some(self.kyber(u32::MAX)))
        } else {
            (Vec::new(), None)
        };
        UploadPrekeysRequest {
            user_id: user.into(),
            device_id: device,
            identity_key: self.identity_key().into(),
            signed_prekey,
            one_time_prekeys,
            kyber_one_time_prekeys,
            kyber_last_resort,
        }
    }
}
