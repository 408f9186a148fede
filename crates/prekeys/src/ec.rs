//! Signal's serialized Curve25519 public keys ("DJB" keys) and identity keys.

use crate::error::KeyError;
use crate::xeddsa;
use crate::{EC_KEY_TYPE, EC_PUBLIC_KEY_LEN, SIGNATURE_LEN};

/// Checks the wire form of a Signal EC public key: exactly 33 bytes, the first
/// being [`EC_KEY_TYPE`] (0x05), followed by a 32-byte Montgomery u-coordinate.
///
/// The length is checked first, so a raw 32-byte key (type byte forgotten) is
/// reported as [`KeyError::WrongLength`]. Like libsignal, the u-coordinate itself
/// is not checked here.
pub fn check_ec_public_key(bytes: &[u8]) -> Result<(), KeyError> {
    parse_ec_public_key(bytes).map(|_| ())
}

fn parse_ec_public_key(bytes: &[u8]) -> Result<[u8; 32], KeyError> {
    if bytes.len() != EC_PUBLIC_KEY_LEN {
        return Err(KeyError::WrongLength { expected: EC_PUBLIC_KEY_LEN, actual: bytes.len() });
    }
    if bytes[0] != EC_KEY_TYPE {
        return Err(KeyError::UnknownKeyType(bytes[0]));
    }
    let mut u = [0u8; 32];
    u.copy_from_slice(&bytes[1..]);
    Ok(u)
}

/// A parsed Curve25519 public key (the 32-byte Montgomery u-coordinate) that can
/// check libsignal-style XEdDSA signatures. Used for a device's identity key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IdentityKey([u8; 32]);

impl IdentityKey {
    /// Parses the 33-byte serialized form (type byte 0x05 + u-coordinate).
    pub fn from_serialized(bytes: &[u8]) -> Result<Self, KeyError> {
        parse_ec_public_key(bytes).map(IdentityKey)
    }

    /// The 33-byte serialized form, as accepted by [`IdentityKey::from_serialized`].
    pub fn serialize(&self) -> [u8; EC_PUBLIC_KEY_LEN] {
        let mut out = [0u8; EC_PUBLIC_KEY_LEN];
        out[0] = EC_KEY_TYPE;
        out[1..].copy_from_slice(&self.0);
        out
    }

    /// The raw Montgomery u-coordinate.
    pub fn montgomery_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Verifies an XEdDSA signature of `message` the way libsignal does (Edwards
    /// sign bit carried in the top bit of `signature[63]`). See [`crate::xeddsa`].
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> Result<(), KeyError> {
        let signature: &[u8; SIGNATURE_LEN] = signature
            .try_into()
            .map_err(|_| KeyError::WrongLength { expected: SIGNATURE_LEN, actual: signature.len() })?;
        if xeddsa::verify(&self.0, message, signature) { Ok(()) } else { Err(KeyError::BadSignature) }
    }
}
