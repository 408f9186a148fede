//! XEdDSA signing compatible with libsignal — a test and fixture helper.
//!
//! Other crates' tests use it to build uploads whose signatures verify. It follows
//! libsignal / libaxolotl exactly (same nonce derivation, sign bit of the Edwards
//! public key stored in the top bit of `signature[63]`), so given the same 64
//! random bytes it reproduces their signatures byte for byte. It is not hardened
//! (secrets are not wiped) and the router itself never signs.
//!
//! `KeyPair::generate` needs the `signing` feature (it pulls in `rand`);
//! `from_private` and `sign` need nothing.

use curve25519_dalek::edwards::EdwardsPoint;
use curve25519_dalek::montgomery::MontgomeryPoint;
use curve25519_dalek::scalar::{Scalar, clamp_integer};
use sha2::{Digest, Sha512};

use crate::ec::IdentityKey;
use crate::xeddsa::{SIGN_BIT_MASK, challenge};
use crate::{EC_KEY_TYPE, EC_PUBLIC_KEY_LEN, SIGNATURE_LEN};

/// A Curve25519 key pair in Signal's formats.
#[derive(Clone)]
pub struct KeyPair {
    /// The clamped private scalar, as libsignal stores it.
    pub private: [u8; 32],
    /// The serialized public key: 0x05 followed by the Montgomery u-coordinate.
    pub public: [u8; EC_PUBLIC_KEY_LEN],
}

impl std::fmt::Debug for KeyPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyPair").field("public", &self.public).finish_non_exhaustive()
    }
}

impl KeyPair {
    /// The key pair of a private key; the private key is clamped first, like
    /// libsignal's `PrivateKey::from`.
    pub fn from_private(private: [u8; 32]) -> Self {
        let private = clamp_integer(private);
        let u = MontgomeryPoint::mul_base_clamped(private);
        let mut public = [0u8; EC_PUBLIC_KEY_LEN];
        public[0] = EC_KEY_TYPE;
        public[1..].copy_from_slice(u.as_bytes());
        KeyPair { private, public }
    }

    /// A fresh key pair from `rng`.
    #[cfg(feature = "signing")]
    pub fn generate<R: rand::RngCore + rand::CryptoRng>(rng: &mut R) -> Self {
        let mut private = [0u8; 32];
        rng.fill_bytes(&mut private);
        Self::from_private(private)
    }

    /// The public key as an [`IdentityKey`].
    pub fn identity_key(&self) -> IdentityKey {
        IdentityKey::from_serialized(&self.public).expect("own public key is well formed")
    }

    /// Signs `message`; `random64` is the 64 bytes of fresh randomness XEdDSA mixes
    /// into the nonce.
    pub fn sign(&self, message: &[u8], random64: &[u8; 64]) -> [u8; SIGNATURE_LEN] {
        let a = Scalar::from_bytes_mod_order(self.private);
        let a_bytes = EdwardsPoint::mul_base(&a).compress().to_bytes();
        let sign_bit = a_bytes[31] & SIGN_BIT_MASK;

        // r = SHA-512(0xFE || 0xFF * 31 || private || M || Z) mod l
        let mut prefix = [0xFFu8; 32];
        prefix[0] = 0xFE;
        let mut hash = Sha512::new();
        hash.update(prefix);
        hash.update(self.private);
        hash.update(message);
        hash.update(random64);
        let r = Scalar::from_bytes_mod_order_wide(&hash.finalize().into());
        let r_bytes = EdwardsPoint::mul_base(&r).compress().to_bytes();

        let h = challenge(&r_bytes, &a_bytes, message);
        let s = h * a + r;

        let mut signature = [0u8; SIGNATURE_LEN];
        signature[..32].copy_from_slice(&r_bytes);
        signature[32..].copy_from_slice(s.as_bytes());
        // s < l < 2^253, so the top bit is free to carry A's sign.
        signature[63] = (signature[63] & !SIGN_BIT_MASK) | sign_bit;
        signature
    }
}
