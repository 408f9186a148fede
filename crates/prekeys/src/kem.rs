//! Signal's serialized KEM (Kyber / ML-KEM) public keys: a type byte followed by the
//! raw public key. Type bytes and lengths follow libsignal's `kem` module.

use crate::MAX_KYBER_PUBLIC_KEY_LEN;
use crate::error::KeyError;

/// The KEM key types libsignal knows, by their serialized type byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KemKeyType {
    /// Kyber768 (round-3 Kyber), type byte 0x07; libsignal only enables it in tests.
    Kyber768,
    /// Kyber1024 (round-3 Kyber), type byte 0x08: what Signal clients upload.
    Kyber1024,
    /// ML-KEM-1024 (FIPS 203), type byte 0x0A.
    MlKem1024,
}

impl KemKeyType {
    /// The type byte that prefixes a serialized key of this type.
    pub const fn type_byte(self) -> u8 {
        match self {
            KemKeyType::Kyber768 => 0x07,
            KemKeyType::Kyber1024 => 0x08,
            KemKeyType::MlKem1024 => 0x0A,
        }
    }

    /// The type named by a serialized key's first byte, if any.
    pub const fn from_type_byte(byte: u8) -> Option<Self> {
        match byte {
            0x07 => Some(KemKeyType::Kyber768),
            0x08 => Some(KemKeyType::Kyber1024),
            0x0A => Some(KemKeyType::MlKem1024),
            _ => None,
        }
    }

    /// Length of the raw public key, without the type byte.
    pub const fn raw_public_key_len(self) -> usize {
        match self {
            KemKeyType::Kyber768 => 1184,
            KemKeyType::Kyber1024 | KemKeyType::MlKem1024 => 1568,
        }
    }

    /// Length of the serialized public key, type byte included.
    pub const fn serialized_public_key_len(self) -> usize {
        1 + self.raw_public_key_len()
    }
}

/// Checks the wire form of a KEM public key: non-empty, at most
/// [`MAX_KYBER_PUBLIC_KEY_LEN`] bytes, a known type byte, and exactly the length
/// of that type. Returns the key type.
///
/// Errors, in the order they are checked: [`KeyError::Empty`],
/// [`KeyError::TooLong`], [`KeyError::UnknownKeyType`], [`KeyError::WrongLength`].
pub fn parse_kyber_public_key(bytes: &[u8]) -> Result<KemKeyType, KeyError> {
    let Some(&first) = bytes.first() else {
        return Err(KeyError::Empty);
    };
    if bytes.len() > MAX_KYBER_PUBLIC_KEY_LEN {
        return Err(KeyError::TooLong { max: MAX_KYBER_PUBLIC_KEY_LEN, actual: bytes.len() });
    }
    let key_type = KemKeyType::from_type_byte(first).ok_or(KeyError::UnknownKeyType(first))?;
    let expected = key_type.serialized_public_key_len();
    if bytes.len() != expected {
        return Err(KeyError::WrongLength { expected, actual: bytes.len() });
    }
    Ok(key_type)
}

/// [`parse_kyber_public_key`] without the key type.
pub fn check_kyber_public_key(bytes: &[u8]) -> Result<(), KeyError> {
    parse_kyber_public_key(bytes).map(|_| ())
}
