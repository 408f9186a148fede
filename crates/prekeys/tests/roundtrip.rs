//! Property test by hand: sign → verify for random keys and messages.

use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};
use router_prekeys::sign::KeyPair;
use router_prekeys::{IdentityKey, KeyError, check_ec_public_key};

fn random_keypair(rng: &mut StdRng) -> KeyPair {
    let mut private = [0u8; 32];
    rng.fill_bytes(&mut private);
    KeyPair::from_private(private)
}

#[test]
fn sign_then_verify_random() {
    let mut rng = StdRng::seed_from_u64(0x5167_6e61_6c21);
    let mut sign_bits = [0usize; 2];
    for case in 0..120 {
        let kp = random_keypair(&mut rng);
        check_ec_public_key(&kp.public).unwrap();
        let mut message = vec![0u8; rng.gen_range(0..300)];
        rng.fill_bytes(&mut message);
        let mut random64 = [0u8; 64];
        rng.fill_bytes(&mut random64);
        let sig = kp.sign(&message, &random64);
        sign_bits[(sig[63] >> 7) as usize] += 1;

        let key = IdentityKey::from_serialized(&kp.public).unwrap();
        assert_eq!(key, kp.identity_key());
        assert_eq!(key.verify(&message, &sig), Ok(()), "case {case}");

        // A random tamper must fail.
        let mut bad = sig;
        bad[rng.gen_range(0..64)] ^= 1 << rng.gen_range(0..8);
        assert_eq!(key.verify(&message, &bad), Err(KeyError::BadSignature));
        if !message.is_empty() {
            let mut m = message.clone();
            let i = rng.gen_range(0..m.len());
            m[i] ^= 1 << rng.gen_range(0..8);
            assert_eq!(key.verify(&m, &sig), Err(KeyError::BadSignature));
        }
        let other = random_keypair(&mut rng).identity_key();
        assert_eq!(other.verify(&message, &sig), Err(KeyError::BadSignature));
    }
    assert!(sign_bits[0] > 30 && sign_bits[1] > 30, "{sign_bits:?}");
}

#[test]
fn from_private_clamps() {
    let kp = KeyPair::from_private([0xff; 32]);
    assert_eq!(kp.private[0] & 7, 0);
    assert_eq!(kp.private[31] & 0xc0, 0x40);
    assert_eq!(KeyPair::from_private(kp.private).public, kp.public);
}

#[test]
fn signing_is_deterministic_in_its_randomness() {
    let kp = KeyPair::from_private([7; 32]);
    assert_eq!(kp.sign(b"m", &[1; 64]), kp.sign(b"m", &[1; 64]));
    assert_ne!(kp.sign(b"m", &[1; 64]), kp.sign(b"m", &[2; 64]));
}

/// A signed-prekey upload as the directory sees it: the signature covers the
/// 33-byte serialized prekey.
#[test]
fn signed_prekey_upload_shape() {
    let mut rng = StdRng::seed_from_u64(42);
    let identity = random_keypair(&mut rng);
    let prekey = random_keypair(&mut rng);
    let sig = identity.sign(&prekey.public, &[9; 64]);
    check_ec_public_key(&prekey.public).unwrap();
    let id = IdentityKey::from_serialized(&identity.public).unwrap();
    assert_eq!(id.verify(&prekey.public, &sig), Ok(()));
    assert_eq!(id.verify(&prekey.public[1..], &sig), Err(KeyError::BadSignature));
}

#[cfg(feature = "signing")]
#[test]
fn generate_with_rng() {
    let mut rng = StdRng::seed_from_u64(7);
    let kp = KeyPair::generate(&mut rng);
    let sig = kp.sign(b"hello", &[3; 64]);
    assert_eq!(kp.identity_key().verify(b"hello", &sig), Ok(()));
    assert_ne!(KeyPair::generate(&mut rng).public, kp.public);
}
