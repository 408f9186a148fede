//! Wrong lengths and type bytes give precise errors.

use router_prekeys::{
    EC_PUBLIC_KEY_LEN, IdentityKey, KemKeyType, KeyError, MAX_KYBER_PUBLIC_KEY_LEN, SIGNATURE_LEN, check_ec_public_key,
    check_kyber_public_key, parse_kyber_public_key,
};

fn ec_key(type_byte: u8) -> Vec<u8> {
    let mut k = vec![9u8; EC_PUBLIC_KEY_LEN];
    k[0] = type_byte;
    k
}

#[test]
fn ec_key_ok() {
    assert_eq!(check_ec_public_key(&ec_key(0x05)), Ok(()));
    let key = IdentityKey::from_serialized(&ec_key(0x05)).unwrap();
    assert_eq!(key.serialize().to_vec(), ec_key(0x05));
    assert_eq!(key.montgomery_bytes(), &[9u8; 32]);
}

#[test]
fn ec_key_wrong_length() {
    for len in [0, 1, 32, 34, 65] {
        let mut k = vec![0x05u8; len];
        k.truncate(len);
        let want = Err(KeyError::WrongLength { expected: 33, actual: len });
        assert_eq!(check_ec_public_key(&k), want);
        assert_eq!(IdentityKey::from_serialized(&k), want.map(|_: ()| unreachable!()));
    }
}

#[test]
fn ec_key_wrong_type() {
    for t in [0x00, 0x04, 0x06, 0x08, 0xff] {
        assert_eq!(check_ec_public_key(&ec_key(t)), Err(KeyError::UnknownKeyType(t)));
        assert_eq!(IdentityKey::from_serialized(&ec_key(t)), Err(KeyError::UnknownKeyType(t)));
    }
}

#[test]
fn signature_wrong_length() {
    let key = IdentityKey::from_serialized(&ec_key(0x05)).unwrap();
    for len in [0, 63, 65, 128] {
        assert_eq!(
            key.verify(b"m", &vec![0u8; len]),
            Err(KeyError::WrongLength { expected: SIGNATURE_LEN, actual: len })
        );
    }
    assert_eq!(key.verify(b"m", &[0u8; 64]), Err(KeyError::BadSignature));
}

#[test]
fn key_off_the_curve_fails_verification() {
    // u = 2 is on the twist (2^3 + 486662*4 + 2 is a non-square), u = p - 1 is the
    // exceptional point: neither converts to Edwards.
    let mut twist = ec_key(0x05);
    twist[1..].fill(0);
    twist[1] = 2;
    let mut minus_one = ec_key(0x05);
    minus_one[1..].fill(0xff);
    minus_one[1] = 0xec;
    minus_one[32] = 0x7f;
    for k in [twist, minus_one] {
        let key = IdentityKey::from_serialized(&k).unwrap();
        assert_eq!(key.verify(b"m", &[0u8; 64]), Err(KeyError::BadSignature));
    }
}

fn kem_key(t: KemKeyType) -> Vec<u8> {
    let mut k = vec![0x5au8; t.serialized_public_key_len()];
    k[0] = t.type_byte();
    k
}

#[test]
fn kem_type_bytes_and_lengths_follow_libsignal() {
    assert_eq!(KemKeyType::Kyber768.type_byte(), 0x07);
    assert_eq!(KemKeyType::Kyber1024.type_byte(), 0x08);
    assert_eq!(KemKeyType::MlKem1024.type_byte(), 0x0A);
    assert_eq!(KemKeyType::Kyber768.serialized_public_key_len(), 1185);
    assert_eq!(KemKeyType::Kyber1024.serialized_public_key_len(), 1569);
    assert_eq!(KemKeyType::MlKem1024.serialized_public_key_len(), 1569);
    for t in [KemKeyType::Kyber768, KemKeyType::Kyber1024, KemKeyType::MlKem1024] {
        assert_eq!(KemKeyType::from_type_byte(t.type_byte()), Some(t));
        assert!(t.serialized_public_key_len() <= MAX_KYBER_PUBLIC_KEY_LEN);
    }
}

#[test]
fn kem_key_ok() {
    for t in [KemKeyType::Kyber768, KemKeyType::Kyber1024, KemKeyType::MlKem1024] {
        assert_eq!(check_kyber_public_key(&kem_key(t)), Ok(()));
        assert_eq!(parse_kyber_public_key(&kem_key(t)), Ok(t));
    }
}

#[test]
fn kem_key_empty() {
    assert_eq!(check_kyber_public_key(&[]), Err(KeyError::Empty));
}

#[test]
fn kem_key_too_long() {
    let mut k = vec![0u8; MAX_KYBER_PUBLIC_KEY_LEN + 1];
    k[0] = 0x08;
    assert_eq!(
        check_kyber_public_key(&k),
        Err(KeyError::TooLong { max: MAX_KYBER_PUBLIC_KEY_LEN, actual: MAX_KYBER_PUBLIC_KEY_LEN + 1 })
    );
}

#[test]
fn kem_key_unknown_type() {
    for t in [0x00u8, 0x05, 0x06, 0x09, 0x0B, 0xff] {
        let mut k = kem_key(KemKeyType::Kyber1024);
        k[0] = t;
        assert_eq!(check_kyber_public_key(&k), Err(KeyError::UnknownKeyType(t)));
    }
    assert_eq!(check_kyber_public_key(&[0x05]), Err(KeyError::UnknownKeyType(0x05)));
}

#[test]
fn kem_key_wrong_length_for_type() {
    let cases = [
        (KemKeyType::Kyber768, 1184),
        (KemKeyType::Kyber768, 1569), // a 1024 key's length under the 768 type
        (KemKeyType::Kyber1024, 1185),
        (KemKeyType::Kyber1024, 1),
        (KemKeyType::MlKem1024, 1570),
    ];
    for (t, len) in cases {
        let mut k = vec![0u8; len];
        k[0] = t.type_byte();
        assert_eq!(
            check_kyber_public_key(&k),
            Err(KeyError::WrongLength { expected: t.serialized_public_key_len(), actual: len }),
            "{t:?} {len}"
        );
    }
}

#[test]
fn errors_display() {
    assert_eq!(
        KeyError::WrongLength { expected: 33, actual: 32 }.to_string(),
        "wrong length: expected 33 bytes, got 32"
    );
    assert_eq!(KeyError::UnknownKeyType(0x06).to_string(), "unknown key type byte 0x06");
}
