//! The one error type of this crate.

/// Why a key or a signature was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq, Clone, Copy)]
pub enum KeyError {
    /// The input has the wrong length for its format (an EC key, a signature, or a
    /// KEM key of the type named by its first byte).
    #[error("wrong length: expected {expected} bytes, got {actual}")]
    WrongLength { expected: usize, actual: usize },
    /// The leading type byte names no key type this format knows.
    #[error("unknown key type byte 0x{0:02x}")]
    UnknownKeyType(u8),
    /// The input is empty, so it does not even carry a type byte.
    #[error("empty key: no type byte")]
    Empty,
    /// The input is longer than any key of this kind may be.
    #[error("key too long: at most {max} bytes, got {actual}")]
    TooLong { max: usize, actual: usize },
    /// The signature does not verify under the key (this includes malformed
    /// signatures and keys that are not on Curve25519).
    #[error("bad signature")]
    BadSignature,
}
