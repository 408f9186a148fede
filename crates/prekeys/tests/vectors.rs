//! Signatures made by two independent Signal implementations must verify, and
//! any tampering must not. See `testdata/gen_vectors_*.py` for their origin.

use router_prekeys::sign::KeyPair;
use router_prekeys::{IdentityKey, KeyError};

/// One signature from a vector file.
#[derive(Debug, Clone)]
struct Vector {
    /// `libsignal` (sign bit carried in signature[63]) or `spec` (sign bit 0).
    kind: String,
    private: [u8; 32],
    public: Vec<u8>,
    message: Vec<u8>,
    random: [u8; 64],
    signature: Vec<u8>,
    sign_bit: u8,
}

fn hex(s: &str) -> Vec<u8> {
    if s == "-" {
        return Vec::new();
    }
    assert!(s.len().is_multiple_of(2), "odd hex length");
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex")).collect()
}

fn parse(text: &str, with_kind: bool) -> Vec<Vector> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|line| {
            let mut f: Vec<&str> = line.split(' ').collect();
            let kind = if with_kind { f.remove(0).to_string() } else { "libsignal".into() };
            assert_eq!(f.len(), 6, "bad vector line: {line}");
            Vector {
                kind,
                private: hex(f[0]).try_into().unwrap(),
                public: hex(f[1]),
                message: hex(f[2]),
                random: hex(f[3]).try_into().unwrap(),
                signature: hex(f[4]),
                sign_bit: f[5].parse().unwrap(),
            }
        })
        .collect()
}

fn axolotl() -> Vec<Vector> {
    parse(include_str!("../testdata/axolotl_vectors.txt"), false)
}

fn xeddsa() -> Vec<Vector> {
    parse(include_str!("../testdata/xeddsa_vectors.txt"), true)
}

fn all() -> Vec<Vector> {
    let mut v = axolotl();
    v.extend(xeddsa());
    v
}

fn verifies(public: &[u8], message: &[u8], signature: &[u8]) -> bool {
    match IdentityKey::from_serialized(public) {
        Ok(key) => key.verify(message, signature).is_ok(),
        Err(_) => false,
    }
}

#[test]
fn vector_files_cover_both_sign_bits_and_kinds() {
    let a = axolotl();
    let x = xeddsa();
    assert_eq!(a.len(), 64);
    assert_eq!(x.len(), 80);
    for set in [&a, &x] {
        let ones = set.iter().filter(|v| v.sign_bit == 1).count();
        assert!(ones >= 16, "too few sign-bit-1 keys: {ones}");
        assert!(set.len() - ones >= 16);
        assert!(set.iter().any(|v| v.message.is_empty()));
    }
    assert_eq!(x.iter().filter(|v| v.kind == "spec").count(), 16);
    for v in all() {
        assert_eq!(v.signature[63] >> 7, v.sign_bit, "sign bit column matches");
    }
}

#[test]
fn all_vectors_verify() {
    for (i, v) in all().iter().enumerate() {
        let key = IdentityKey::from_serialized(&v.public).expect("well-formed key");
        assert_eq!(key.verify(&v.message, &v.signature), Ok(()), "vector {i} ({})", v.kind);
    }
}

#[test]
fn our_public_keys_match_both_implementations() {
    for v in all() {
        assert_eq!(KeyPair::from_private(v.private).public.as_slice(), v.public);
    }
}

/// Same algorithm, same randomness: our signer reproduces axolotl's and
/// libxeddsa's libsignal-style signatures byte for byte.
#[test]
fn our_signer_reproduces_their_signatures() {
    for v in all().iter().filter(|v| v.kind == "libsignal") {
        let kp = KeyPair::from_private(v.private);
        assert_eq!(kp.sign(&v.message, &v.random).as_slice(), v.signature);
    }
}

#[test]
fn forcing_sign_bit_to_zero_fails_for_sign_one_keys() {
    let mut checked = 0;
    for v in all().iter().filter(|v| v.sign_bit == 1) {
        let mut sig = v.signature.clone();
        sig[63] &= 0x7f;
        assert!(!verifies(&v.public, &v.message, &sig));
        checked += 1;
    }
    assert!(checked >= 50);
}

#[test]
fn setting_sign_bit_fails_for_sign_zero_keys() {
    for v in all().iter().filter(|v| v.sign_bit == 0) {
        let mut sig = v.signature.clone();
        sig[63] |= 0x80;
        assert!(!verifies(&v.public, &v.message, &sig));
    }
}

fn flip(bytes: &[u8], bit: usize) -> Vec<u8> {
    let mut out = bytes.to_vec();
    out[bit / 8] ^= 1 << (bit % 8);
    out
}

/// Every bit of signature, key and message, on vectors of both implementations.
#[test]
fn flipping_any_bit_fails() {
    let a = axolotl();
    let x = xeddsa();
    // (Each verification is slow in a debug build, so one sign-bit-1 vector from
    // each implementation; every vector gets a random bit flipped in
    // `flipping_a_bit_fails_on_every_vector`.)
    // Messages that are a serialized EC key, as in a signed-prekey upload.
    let prekey_msg = |v: &&Vector| v.message.len() == 33;
    let picks = [
        a.iter().filter(prekey_msg).find(|v| v.sign_bit == 1).unwrap(),
        x.iter().filter(prekey_msg).find(|v| v.sign_bit == 1 && v.kind == "libsignal").unwrap(),
    ];
    for v in picks {
        for bit in 0..v.signature.len() * 8 {
            assert!(!verifies(&v.public, &v.message, &flip(&v.signature, bit)), "sig bit {bit}");
        }
        for bit in 0..v.message.len() * 8 {
            assert!(!verifies(&v.public, &flip(&v.message, bit), &v.signature), "msg bit {bit}");
        }
        for bit in 0..v.public.len() * 8 {
            // Bit 7 of the last byte is the unused top bit of u (2^255): like
            // libsignal (and X25519), it is ignored.
            if bit == 32 * 8 + 7 {
                continue;
            }
            assert!(!verifies(&flip(&v.public, bit), &v.message, &v.signature), "key bit {bit}");
        }
    }
}

/// One random bit of each part on every vector.
#[test]
fn flipping_a_bit_fails_on_every_vector() {
    for (i, v) in all().iter().enumerate() {
        let sig_bit = (i * 37) % 512;
        let key_bit = 8 + (i * 11) % 255; // skip the type byte and bit 2^255
        assert!(!verifies(&v.public, &v.message, &flip(&v.signature, sig_bit)));
        assert!(!verifies(&flip(&v.public, key_bit), &v.message, &v.signature));
        if !v.message.is_empty() {
            let msg_bit = (i * 13) % (v.message.len() * 8);
            assert!(!verifies(&v.public, &flip(&v.message, msg_bit), &v.signature));
        } else {
            assert!(!verifies(&v.public, &[0], &v.signature));
        }
    }
}

#[test]
fn ignored_top_bit_of_u_matches_libsignal() {
    let v = &axolotl()[0];
    assert!(verifies(&flip(&v.public, 32 * 8 + 7), &v.message, &v.signature));
}

/// s + l is the same scalar mod l; libsignal would reduce it, we refuse it as
/// non-canonical (no signer emits it; it is a malleated copy).
#[test]
fn non_canonical_s_is_refused() {
    // l = 2^252 + 27742317777372353535851937790883648493, little endian
    const L: [u8; 32] = [
        0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9, 0xde, 0x14, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x10,
    ];
    let mut refused = 0;
    for v in all() {
        let sign = v.signature[63] & 0x80;
        let mut s = [0u8; 32];
        s.copy_from_slice(&v.signature[32..]);
        s[31] &= 0x7f;
        let mut carry = 0u16;
        for (b, l) in s.iter_mut().zip(L) {
            let sum = *b as u16 + l as u16 + carry;
            *b = sum as u8;
            carry = sum >> 8;
        }
        if s[31] & 0x80 != 0 {
            continue; // would clobber the sign bit; not representable
        }
        let mut sig = v.signature.clone();
        sig[32..].copy_from_slice(&s);
        sig[63] |= sign;
        assert_eq!(
            IdentityKey::from_serialized(&v.public).unwrap().verify(&v.message, &sig),
            Err(KeyError::BadSignature)
        );
        refused += 1;
    }
    assert!(refused > 100);
}

#[test]
fn signature_for_another_key_fails() {
    let a = axolotl();
    for w in a.windows(2) {
        assert!(!verifies(&w[1].public, &w[0].message, &w[0].signature));
    }
}
