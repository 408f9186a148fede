//! XEdDSA signature verification compatible with libsignal.
//!
//! A Signal key is a Curve25519 (Montgomery) u-coordinate, which fixes an Edwards
//! point only up to sign. Signal implementations of the libaxolotl lineage (and
//! libsignal, which verifies their signatures) put the sign bit of the signer's
//! Edwards public key A in the top bit of `signature[63]` — a bit that is always 0
//! in a reduced scalar s. The XEdDSA paper instead fixes that sign to 0 by negating
//! the private key; such signatures have the bit clear and verify here too.
//!
//! Steps, as libsignal does them:
//! 1. take the sign bit from the top bit of `signature[63]`, clear it in s;
//! 2. convert u to the Edwards point A with that sign (fails off the curve);
//! 3. refuse s unless it is canonical (s < l; this also refuses any of the top
//!    three bits set). libsignal only refuses the top bits and reduces
//!    s in `[l, 2^253)` mod l; no signer produces such an s, so being strict only
//!    refuses malleated copies of valid signatures;
//! 4. h = SHA-512(R || A || M) reduced mod l;
//! 5. accept iff the encoding of `[s]B - [h]A` equals R byte for byte.
//!
//! Everything here is public data, so variable-time arithmetic is fine.

use curve25519_dalek::edwards::EdwardsPoint;
use curve25519_dalek::montgomery::MontgomeryPoint;
use curve25519_dalek::scalar::Scalar;
use sha2::{Digest, Sha512};

use crate::SIGNATURE_LEN;

/// Mask of the sign bit in `signature[63]`.
pub(crate) const SIGN_BIT_MASK: u8 = 0x80;

/// `h = SHA-512(R || A || M) mod l`, shared by signing and verification.
pub(crate) fn challenge(r: &[u8; 32], a: &[u8; 32], message: &[u8]) -> Scalar {
    let mut hash = Sha512::new();
    hash.update(r);
    hash.update(a);
    hash.update(message);
    Scalar::from_bytes_mod_order_wide(&hash.finalize().into())
}

/// Whether `signature` is a valid libsignal-style XEdDSA signature of `message`
/// under the Montgomery public key `u`.
pub fn verify(u: &[u8; 32], message: &[u8], signature: &[u8; SIGNATURE_LEN]) -> bool {
    let sign = (signature[63] & SIGN_BIT_MASK) >> 7;
    let Some(a_point) = MontgomeryPoint(*u).to_edwards(sign) else {
        return false;
    };
    let a_bytes = a_point.compress().to_bytes();

    let mut r_bytes = [0u8; 32];
    r_bytes.copy_from_slice(&signature[..32]);
    let mut s_bytes = [0u8; 32];
    s_bytes.copy_from_slice(&signature[32..]);
    s_bytes[31] &= !SIGN_BIT_MASK;
    if s_bytes[31] & 0xE0 != 0 {
        return false;
    }
    let Some(s) = Option::<Scalar>::from(Scalar::from_canonical_bytes(s_bytes)) else {
        return false;
    };

    let h = challenge(&r_bytes, &a_bytes, message);
    // [s]B - [h]A == [-h]A + [s]B
    let r_check = EdwardsPoint::vartime_double_scalar_mul_basepoint(&h, &-a_point, &s);
    r_check.compress().to_bytes() == r_bytes
}
