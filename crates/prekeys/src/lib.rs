//! Signal key formats and XEdDSA signature verification for the Interop Router.
//!
//! # What this crate owns
//!
//! * The wire formats of the keys a device uploads to the directory: Signal's
//!   33-byte EC ("DJB", type byte 0x05) public keys, and KEM (Kyber / ML-KEM)
//!   public keys with their libsignal type bytes and lengths.
//! * Verification of the XEdDSA signatures over signed prekeys, compatible with
//!   libsignal: the Edwards sign bit is read from the top bit of `signature[63]`,
//!   as libsignal and the libaxolotl lineage write it. A verifier that fixes that
//!   sign to 0 (as the XEdDSA paper, and the `xeddsa` crate, do) refuses about half
//!   of the valid signatures real clients send.
//! * A small libsignal-compatible signer ([`sign`]) for tests and fixtures.
//!
//! It is written on permissively licensed code only (curve25519-dalek, sha2), so
//! the router can stay permissively licensed. Compatibility is pinned by test
//! vectors from two independent Signal implementations (`testdata/`).
//!
//! # What it must not depend on
//!
//! libsignal or any other AGPL code; I/O; async runtimes; anything of the rest of
//! the workspace. `rand` is only pulled in by the optional `signing` feature (for
//! `sign::KeyPair::generate`).
//!
//! # Modules
//!
//! * [`error`] — [`KeyError`].
//! * [`ec`] — EC public keys: [`check_ec_public_key`], [`IdentityKey`].
//! * [`kem`] — KEM public keys: [`check_kyber_public_key`], [`KemKeyType`].
//! * [`xeddsa`] — the verification algorithm.
//! * [`sign`] — the signer for tests and fixtures.

pub mod ec;
pub mod error;
pub mod kem;
pub mod sign;
pub mod xeddsa;

pub use ec::{IdentityKey, check_ec_public_key};
pub use error::KeyError;
pub use kem::{KemKeyType, check_kyber_public_key, parse_kyber_public_key};

/// Type byte of a Signal ("DJB") Curve25519 public key.
pub const EC_KEY_TYPE: u8 = 0x05;
/// Length of a serialized EC public key: type byte + 32-byte Montgomery u.
pub const EC_PUBLIC_KEY_LEN: usize = 33;
/// Length of an XEdDSA signature.
pub const SIGNATURE_LEN: usize = 64;
/// Upper bound on a serialized KEM public key (the largest known type is 1569).
pub const MAX_KYBER_PUBLIC_KEY_LEN: usize = 2048;
