//! Rejection paths and their messages: malformed payloads, addresses, keys and signatures.

use unfed_identity::canonical::{
    Heartbeat, MAX_ADDRESS_LEN, MAX_ONION_KEY_LEN, Payload, Register, Unregister, open_signed,
    sign_payload,
};
use unfed_identity::{Address, IdentityError, MpcRole, NodeKey, recover};

const KEY: &str = "4c0883a69102937d6231471b5dbb6204fe5129617082792ae468d01a3f362318";

fn key() -> NodeKey {
    NodeKey::from_hex(KEY).unwrap()
}

fn heartbeat(address: &str) -> Payload {
    Payload::Heartbeat(Heartbeat {
        identity: key().address(),
        address: address.into(),
        active_sessions: 0,
        timestamp_ms: 1,
        nonce: 2,
    })
}

fn register(model_id: String, onion_key: Vec<u8>) -> Payload {
    Payload::Register(Register {
        identity: key().address(),
        address: "h:1".into(),
        model_id,
        shard_index: 0,
        manifest_sha256: [7; 32],
        onion_key,
        mpc: MpcRole::None,
        timestamp_ms: 0,
        nonce: 0,
    })
}

fn decode_err(bytes: &[u8]) -> String {
    Payload::decode(bytes).unwrap_err().to_string()
}

#[test]
fn decode_error_messages() {
    let good = heartbeat("h:1").encode();
    assert_eq!(
        decode_err(&good[..3]),
        "payload truncated at byte 0: magic needs 5 bytes, 3 left"
    );
    assert_eq!(
        decode_err(b"UNFEX\x01\x02"),
        "payload does not start with the magic bytes \"UNFED\""
    );
    assert_eq!(
        decode_err(b"UNFED\x02\x02"),
        "unsupported payload version 2 (this node speaks version 1)"
    );
    assert_eq!(
        decode_err(b"UNFED\x01\x05"),
        "unknown payload kind 5 (expected 1 register, 2 heartbeat, 3 unregister or 4 register a guard)"
    );
    assert_eq!(
        decode_err(&good[..good.len() - 1]),
        format!(
            "payload truncated at byte {}: nonce needs 8 bytes, 7 left",
            good.len() - 8
        )
    );
    let mut long = good.clone();
    long.extend_from_slice(b"xy");
    assert_eq!(
        decode_err(&long),
        "payload has 2 trailing bytes after its last field"
    );
    assert_eq!(
        decode_err(&vec![0; 1025]),
        "payload is 1025 bytes, more than the limit of 1024"
    );
}

#[test]
fn field_caps_are_enforced_on_both_sides() {
    let at_cap = heartbeat(&"a".repeat(MAX_ADDRESS_LEN));
    let bytes = at_cap.try_encode().unwrap();
    assert_eq!(Payload::decode(&bytes).unwrap(), at_cap);

    let over = heartbeat(&"a".repeat(MAX_ADDRESS_LEN + 1));
    let expected = "field address is 256 bytes, more than its limit of 255";
    assert_eq!(over.try_encode().unwrap_err().to_string(), expected);
    assert_eq!(decode_err(&over.encode()), expected);
    assert!(sign_payload(&key(), &over).is_err());

    let huge = heartbeat(&"a".repeat(70_000));
    assert!(Payload::decode(&huge.encode()).is_err());

    let model = register("m".repeat(256), vec![]);
    assert_eq!(
        decode_err(&model.encode()),
        "field model_id is 256 bytes, more than its limit of 255"
    );
    let onion = register("m".into(), vec![1; MAX_ONION_KEY_LEN + 1]);
    assert_eq!(
        decode_err(&onion.encode()),
        "field onion_key is 65 bytes, more than its limit of 64"
    );
    let biggest = register("m".repeat(255), vec![1; MAX_ONION_KEY_LEN]);
    assert_eq!(Payload::decode(&biggest.encode()).unwrap(), biggest);
}

#[test]
fn mpc_role_bytes_are_strict() {
    // model "m", no onion key: the role byte sits at 7 + 20 + 2 + 3 + 2 + 1 + 4 + 32 + 2 = 73.
    const AT: usize = 73;
    let plain = register("m".into(), vec![]);
    let bytes = plain.encode();
    assert_eq!(bytes.len(), 90);
    assert_eq!(bytes[AT], 0);
    for value in [3u8, 4, 0x80, 0xff] {
        let mut bad = bytes.clone();
        bad[AT] = value;
        let err = Payload::decode(&bad).unwrap_err();
        assert!(
            matches!(err, IdentityError::BadMpcRole { offset: AT, value: v } if v == value),
            "{err}"
        );
        assert_eq!(
            err.to_string(),
            format!(
                "field mpc_role at byte 73 is {value}; expected 0 (no pair), 1 (party A) or 2 \
                 (party B)"
            )
        );
    }

    // A party's role byte is followed by exactly 20 bytes of peer address.
    let Payload::Register(mut r) = plain else {
        unreachable!()
    };
    let peer = Address([0x5c; 20]);
    for (mpc, tag) in [(MpcRole::A { peer }, 1u8), (MpcRole::B { peer }, 2)] {
        r.mpc = mpc;
        let party = Payload::Register(r.clone());
        let bytes = party.encode();
        assert_eq!(bytes.len(), 110);
        assert_eq!((bytes[AT], &bytes[AT + 1..AT + 21]), (tag, &[0x5c; 20][..]));
        assert_eq!(Payload::decode(&bytes).unwrap(), party);
        // Role 0 where a party was encoded: the peer bytes are then read as the timestamp, and
        // 20 bytes are left over.
        let mut as_plain = bytes.clone();
        as_plain[AT] = 0;
        assert_eq!(
            decode_err(&as_plain),
            "payload has 20 trailing bytes after its last field"
        );
        // Cut inside the peer address.
        assert_eq!(
            decode_err(&bytes[..AT + 5]),
            "payload truncated at byte 74: mpc_peer needs 20 bytes, 4 left"
        );
    }
    // A plain payload relabelled as a party runs out of bytes for the peer address.
    let mut as_party = bytes.clone();
    as_party[AT] = 1;
    assert_eq!(
        decode_err(&as_party),
        "payload truncated at byte 74: mpc_peer needs 20 bytes, 16 left"
    );
}

#[test]
fn strings_must_be_utf8() {
    let mut bytes = Payload::Unregister(Unregister {
        identity: Address::ZERO,
        address: "ab".into(),
        timestamp_ms: 0,
        nonce: 0,
    })
    .encode();
    // magic 5 + version 1 + kind 1 + identity 20 + length 2 = 29: the first address byte.
    bytes[29] = 0xff;
    assert_eq!(
        decode_err(&bytes),
        "field address at byte 29 is not valid UTF-8"
    );
}

#[test]
fn signature_rejections() {
    let key = key();
    let message = b"payload";
    let good = key.sign(message);
    assert_eq!(
        recover(message, &good[..64]).unwrap_err().to_string(),
        "signature is not 65 bytes (got 64)"
    );
    assert!(matches!(
        recover(message, &[good.as_slice(), &[0]].concat()),
        Err(IdentityError::SignatureLength(66))
    ));
    for v in [2u8, 26, 29, 30, 255] {
        let mut bad = good;
        bad[64] = v;
        assert!(
            matches!(recover(message, &bad), Err(IdentityError::SignatureRecoveryByte(x)) if x == v)
        );
    }
    let mut zero_r = good;
    zero_r[..32].fill(0);
    assert!(matches!(
        recover(message, &zero_r),
        Err(IdentityError::SignatureInvalid(_))
    ));
    let mut big_s = good;
    big_s[32..64].fill(0xff);
    assert!(matches!(
        recover(message, &big_s),
        Err(IdentityError::SignatureInvalid(_))
    ));
}

/// secp256k1 group order n.
const ORDER: [u8; 32] = [
    0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xfe,
    0xba, 0xae, 0xdc, 0xe6, 0xaf, 0x48, 0xa0, 0x3b, 0xbf, 0xd2, 0x5e, 0x8c, 0xd0, 0x36, 0x41, 0x41,
];

/// n - s, big-endian.
fn negate(s: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    let mut borrow = 0i16;
    for i in (0..32).rev() {
        let mut d = i16::from(ORDER[i]) - i16::from(s[i]) - borrow;
        borrow = i16::from(d < 0);
        if d < 0 {
            d += 256;
        }
        out[i] = d as u8;
    }
    out
}

#[test]
fn high_s_twin_is_rejected() {
    let key = key();
    for message in [&b"a"[..], b"b", b"some longer message"] {
        let good = key.sign(message);
        // The malleable twin: (r, n - s) with the other recovery bit verifies mathematically.
        let mut twin = good;
        twin[32..64].copy_from_slice(&negate(&good[32..64]));
        twin[64] = if good[64] == 27 { 28 } else { 27 };
        assert_eq!(
            recover(message, &twin).unwrap_err().to_string(),
            "signature has a high s value (non-canonical, malleable form)"
        );
        assert!(open_signed(message, &twin).is_err());
    }
}

#[test]
fn r_not_on_the_curve_is_rejected() {
    // x = 5 is not the x coordinate of any secp256k1 point (5^3 + 7 = 132 is a non-residue).
    let mut signature = [0u8; 65];
    signature[31] = 5;
    signature[63] = 1;
    signature[64] = 27;
    assert!(matches!(
        recover(b"m", &signature),
        Err(IdentityError::SignatureInvalid(_))
    ));
}

#[test]
fn address_parse_errors() {
    for bad in [
        "",
        "2c7536e3605d9c16a7a3d7b1898e529396a65c23",
        "0x2c7536e3605d9c16a7a3d7b1898e529396a65c2",
        "0x2c7536e3605d9c16a7a3d7b1898e529396a65c233",
        "0x2c7536e3605d9c16a7a3d7b1898e529396a65c2g",
        "0x+c7536e3605d9c16a7a3d7b1898e529396a65c23",
        "0x2c7536e3605d9c16a7a3d7b1898e529396a65cé",
    ] {
        assert!(
            matches!(
                bad.parse::<Address>(),
                Err(IdentityError::InvalidAddress { .. })
            ),
            "{bad}"
        );
    }
    // Mixed case with a wrong checksum (one letter's case flipped).
    let err = "0x2C7536E3605D9C16a7a3D7b1898e529396a65C23"
        .parse::<Address>()
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "address 0x2C7536E3605D9C16a7a3D7b1898e529396a65C23 has a bad EIP-55 checksum \
         (expected 0x2c7536E3605D9C16a7a3D7b1898e529396a65c23)"
    );
    let long = format!("0x{}", "a".repeat(1000));
    assert!(long.parse::<Address>().unwrap_err().to_string().len() < 200);
}

#[test]
fn key_parse_errors_never_echo_the_input() {
    for bad in [
        "",
        "0x",
        &KEY[..63],
        &format!("{KEY}00"),
        &format!("{}zz", &KEY[..62]),
        "0000000000000000000000000000000000000000000000000000000000000000",
        "fffffffffffffffffffffffffffffffebaaedce6af48a03bbfd25e8cd0364141",
    ] {
        let err = NodeKey::from_hex(bad).unwrap_err();
        assert!(matches!(err, IdentityError::InvalidKey(_)), "{bad}");
        assert!(!err.to_string().contains(&KEY[..16]));
    }
}

#[test]
fn node_key_prints_only_its_address() {
    let key = key();
    let debug = format!("{key:?}");
    let display = format!("{key}");
    assert_eq!(
        debug,
        "NodeKey { address: 0x2c7536e3605d9c16a7a3d7b1898e529396a65c23, .. }"
    );
    assert_eq!(display, "0x2c7536e3605d9c16a7a3d7b1898e529396a65c23");
    assert!(!debug.contains(&KEY[..8]) && !display.contains(&KEY[..8]));
}

#[test]
fn generated_keys_differ_and_sign() {
    let a = NodeKey::generate();
    let b = NodeKey::generate();
    assert_ne!(a.address(), b.address());
    assert_eq!(recover(b"x", &a.sign(b"x")).unwrap(), a.address());
}
