//! Known-answer tests: keys, addresses, EIP-55, EIP-191 hashes and signatures, and the canonical
//! payload vectors of `docs/protocol.md` (signatures made independently with Python
//! `eth-account` 0.14.0 by `tests/vectors/gen_vectors.py`).

use unfed_identity::canonical::{
    Heartbeat, Payload, Register, RegisterGuard, Unregister, open_signed,
};
use unfed_identity::{Address, MpcRole, NodeKey, eip191_hash, keccak256, recover};

const KEY: &str = "0x4c0883a69102937d6231471b5dbb6204fe5129617082792ae468d01a3f362318";
const KEY_ADDRESS: &str = "0x2c7536e3605d9c16a7a3d7b1898e529396a65c23";

fn hex32(s: &str) -> [u8; 32] {
    let mut out = [0u8; 32];
    hex::decode_to_slice(s, &mut out).expect("test vector hex");
    out
}

fn key() -> NodeKey {
    NodeKey::from_hex(KEY).expect("test key")
}

fn identity() -> Address {
    KEY_ADDRESS.parse().expect("test address")
}

/// Vector 1: a register payload of a plain node (144 bytes).
fn register() -> Payload {
    Payload::Register(Register {
        identity: identity(),
        address: "127.0.0.1:7001".into(),
        model_id: "smollm2-135m".into(),
        shard_index: 1,
        manifest_sha256: hex32("b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"),
        onion_key: (0u8..32).collect(),
        mpc: MpcRole::None,
        timestamp_ms: 1_700_000_000_000,
        nonce: 42,
    })
}

/// Vector 2: a heartbeat payload (63 bytes).
fn heartbeat() -> Payload {
    Payload::Heartbeat(Heartbeat {
        identity: identity(),
        address: "127.0.0.1:7001".into(),
        active_sessions: 3,
        timestamp_ms: 1_700_000_030_000,
        nonce: 43,
    })
}

/// Vector 3: an unregister payload (62 bytes) with a non-ASCII host name.
fn unregister() -> Payload {
    Payload::Unregister(Unregister {
        identity: identity(),
        address: "nöde.example:443".into(),
        timestamp_ms: 1_700_000_060_000,
        nonce: 44,
    })
}

/// The second documented key (eth-account's `I♥SF` example), party B of vectors 4 and 5.
const KEY2: &str = "0xb25c7db31feed9122727bf0939dc769a96564b2de4c4726d035b36ecf1e5b364";
const KEY2_ADDRESS: &str = "0x5ce9454909639d2d17a3f753ce7d93fa0b9ab12e";

fn key2() -> NodeKey {
    NodeKey::from_hex(KEY2).expect("test key 2")
}

/// Vectors 4 and 5: the two halves of an MPC pair for shard 0 (164 bytes each).
fn register_party(role_a: bool) -> Payload {
    let (me, peer) = (identity(), KEY2_ADDRESS.parse().expect("test address 2"));
    let (identity, address, onion_key, mpc, nonce) = if role_a {
        let onion = (32u8..64).collect();
        (me, "127.0.0.1:7001", onion, MpcRole::A { peer }, 45)
    } else {
        let onion = (64u8..96).collect();
        (peer, "127.0.0.1:7002", onion, MpcRole::B { peer: me }, 46)
    };
    Payload::Register(Register {
        identity,
        address: address.into(),
        model_id: "smollm2-135m".into(),
        shard_index: 0,
        manifest_sha256: hex32("b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"),
        onion_key,
        mpc,
        timestamp_ms: 1_700_000_090_000,
        nonce,
    })
}

/// Vector 6: a guard relay's registration (96 bytes).
fn register_guard() -> Payload {
    Payload::RegisterGuard(RegisterGuard {
        identity: identity(),
        address: "guard.example:443".into(),
        onion_key: (96u8..128).collect(),
        timestamp_ms: 1_700_000_120_000,
        nonce: 47,
    })
}

/// (signing key, payload, encoding, EIP-191 hash, eth-account signature)
fn vectors() -> Vec<(NodeKey, Payload, &'static str, &'static str, &'static str)> {
    vec![
        (
            key(),
            register(),
            "554e46454401012c7536e3605d9c16a7a3d7b1898e529396a65c23000e3132372e302e302e313a373030\
             31000c736d6f6c6c6d322d3133356d00000001b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e\
             5bc70ea373728110db530020000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c\
             1d1e1f000000018bcfe56800000000000000002a",
            "b7f1463a20105111819c286787aa0f5053d7225db4c0718c8a1990334d95eb28",
            "d7457f428e6df142408059d2b6baaa7a167e8d8234701df67521610e5dbd02f526c74961733831b13173\
             f9598f58082c128791b4f44662a8cbb028811520bbcf1b",
        ),
        (
            key(),
            heartbeat(),
            "554e46454401022c7536e3605d9c16a7a3d7b1898e529396a65c23000e3132372e302e302e313a373030\
             31000000030000018bcfe5dd30000000000000002b",
            "5d08a0fc5ee62c82ffccd932d00da5f2385645910fce47de66d3e262a4e1aa30",
            "2907af38632a36c9be53287b9c6ed909b79dff0fe65c0ff80aa9e9517305ee5e70e62883b1c27833b482\
             e8c47913ed7fbd8cb810420c41279f11afc590a6385f1c",
        ),
        (
            key(),
            unregister(),
            "554e46454401032c7536e3605d9c16a7a3d7b1898e529396a65c2300116ec3b664652e6578616d706c65\
             3a3434330000018bcfe65260000000000000002c",
            "043470696236183b70d31ab3f40fcf528a90d5c7eb8c6aedcfbab4ca609126a0",
            "7ad492995c5c01246b80b2704b5da807f5129f7ddfcd22a8b37512675cefb5cd0c4c58683f87a3bac90b\
             22d23791cb15ebd7d2aeac44fc518e40b23f225d2f881c",
        ),
        (
            key(),
            register_party(true),
            "554e46454401012c7536e3605d9c16a7a3d7b1898e529396a65c23000e3132372e302e302e313a373030\
             31000c736d6f6c6c6d322d3133356d00000000b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e\
             5bc70ea373728110db530020202122232425262728292a2b2c2d2e2f303132333435363738393a3b3c\
             3d3e3f015ce9454909639d2d17a3f753ce7d93fa0b9ab12e0000018bcfe6c790000000000000002d",
            "cd9a022ac9d19300d1faee4296ea5dea87de3758196f54beb166e1e36b0644cb",
            "252a3170aaa5c47a9f4bb0796b2afc53ce7435185f06886a2a8626f77231ece2248a155e8b71e6ff02cc\
             f1cf26126e4fbafcdeee02044e016b0529c35e539b7a1b",
        ),
        (
            key2(),
            register_party(false),
            "554e46454401015ce9454909639d2d17a3f753ce7d93fa0b9ab12e000e3132372e302e302e313a373030\
             32000c736d6f6c6c6d322d3133356d00000000b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e\
             5bc70ea373728110db530020404142434445464748494a4b4c4d4e4f505152535455565758595a5b5c\
             5d5e5f022c7536e3605d9c16a7a3d7b1898e529396a65c230000018bcfe6c790000000000000002e",
            "905a8fd7edfc0215300a7cf166aea90c3d000d4fbb5645124b34e2f6f8cbec00",
            "0dbb72c6efcaf9d2e9b2a2257bd2ab6ab4640f7ba221874e5ed2d80ad6e697a878419d737bc86a709a6c\
             a01441cb5a06d861f3cee451e8c7c0c0e825a4c45a7d1b",
        ),
        (
            key(),
            register_guard(),
            "554e46454401042c7536e3605d9c16a7a3d7b1898e529396a65c23001167756172642e6578616d706c65\
             3a3434330020606162636465666768696a6b6c6d6e6f707172737475767778797a7b7c7d7e7f000001\
             8bcfe73cc0000000000000002f",
            "fe34ba91f6c368a5b9efb9ab23bfd6ece433c280c4d50fbf8951d534f485ba1f",
            "ffa51e8ea89e26f879de0fe42d1e40682962fee055b4e79a76c40cd24198691f63af02460c083d020a70\
             a539ad53572e40a21e107d1e3d6bc585b6e3e4404fd91b",
        ),
    ]
}

#[test]
fn keccak256_of_empty_input() {
    assert_eq!(
        hex::encode(keccak256(b"")),
        "c5d2460186f7233c927e7db2dcc703c0e500b653ca82273b7bfad8045d85a470"
    );
}

#[test]
fn well_known_key_has_well_known_address() {
    let key = key();
    assert_eq!(key.address().to_string(), KEY_ADDRESS);
    assert_eq!(
        key.address().to_checksum(),
        "0x2c7536E3605D9C16a7a3D7b1898e529396a65c23"
    );
    // The same key without the 0x prefix.
    assert_eq!(
        NodeKey::from_hex(&KEY[2..]).unwrap().address(),
        key.address()
    );
}

#[test]
fn eip55_examples_from_the_eip() {
    for s in [
        "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed",
        "0xfB6916095ca1df60bB79Ce92cE3Ea74c37c5d359",
        "0xdbF03B407c01E7cD3CBea99509d93f8DDDC8C6FB",
        "0xD1220A0cf47c7B9Be7A2E6BA89F429762e7b9aDb",
    ] {
        let address: Address = s.parse().unwrap();
        assert_eq!(address.to_checksum(), s);
        assert_eq!(address.to_string(), s.to_lowercase());
        assert_eq!(s.to_lowercase().parse::<Address>().unwrap(), address);
        assert_eq!(
            format!("0x{}", s[2..].to_uppercase())
                .parse::<Address>()
                .unwrap(),
            address
        );
    }
}

#[test]
fn web3_documentation_signature_of_some_data() {
    // web3.js `web3.eth.accounts.sign('Some data', '0x4c0883...')` documentation example.
    assert_eq!(
        hex::encode(eip191_hash(b"Some data")),
        "1da44b586eb0729ff70a73c326926f6ed5a25f5b056e7f47fbc6e58d86871655"
    );
    let signature = key().sign(b"Some data");
    assert_eq!(
        hex::encode(signature),
        "b91467e570a6466aa9e9876cbcd013baba02900b8979d43fe208a4a4f339f5fd6007e74cd82e037b80018\
         6422fc2da167c747ef045e5d18a5f5d4300f8e1a0291c"
    );
    assert_eq!(recover(b"Some data", &signature).unwrap(), identity());
}

#[test]
fn eth_account_documentation_signature() {
    // eth-account documentation example: sign_message(encode_defunct(text="I♥SF"), key).
    let key =
        NodeKey::from_hex("0xb25c7db31feed9122727bf0939dc769a96564b2de4c4726d035b36ecf1e5b364")
            .unwrap();
    assert_eq!(
        key.address().to_checksum(),
        "0x5ce9454909639D2D17A3F753ce7d93fa0b9aB12E"
    );
    let signature = key.sign("I♥SF".as_bytes());
    assert_eq!(
        hex::encode(signature),
        "e6ca9bba58c88611fad66a6ce8f996908195593807c4b38bd528d2cff09d4eb33e5bfbbf4d3e39b1a2fd8\
         16a7680c19ebebaf3a141b239934ad43cb33fcec8ce1c"
    );
}

#[test]
fn eth_account_signatures_of_short_messages() {
    let key = key();
    for (message, hash, signature) in [
        (
            &b"hello"[..],
            "50b2c43fd39106bafbba0da34fc430e1f91e3c96ea2acee2bc34119f92b37750",
            "a5d58782075bdf09490159d634d1aae66a8f6777c7247d2f233e9511cfd7c64c34f288cdbcea5370e4\
             863fdbe9f4d86654c2ba1d86589e9ebb64494c649008591b",
        ),
        (
            &b""[..],
            "5f35dce98ba4fba25530a026ed80b2cecdaa31091ba4958b99b52ea1d068adad",
            "8a68b4e66cd2b575338e16069d7b65f6f67c7ceae8945dccf8cb7bdb06278d933dd9c888f3444ca469\
             8464079a067ad3cfffe96d493b8ecf56885169d0fdfe7d1b",
        ),
    ] {
        assert_eq!(hex::encode(eip191_hash(message)), hash);
        assert_eq!(hex::encode(key.sign(message)), signature);
    }
}

#[test]
fn payload_vectors_encode_decode_sign_and_open() {
    for (key, payload, encoding, hash, signature) in vectors() {
        let bytes = payload.encode();
        assert_eq!(hex::encode(&bytes), encoding, "{payload:?}");
        assert_eq!(Payload::decode(&bytes).unwrap(), payload);
        assert_eq!(hex::encode(eip191_hash(&bytes)), hash);
        let made = key.sign(&bytes);
        assert_eq!(hex::encode(made), signature, "{payload:?}");
        // Deterministic (RFC 6979): signing again gives the same bytes.
        assert_eq!(key.sign(&bytes), made);
        let given = hex::decode(signature).unwrap();
        assert_eq!(recover(&bytes, &given).unwrap(), key.address());
        assert_eq!(key.address(), payload.identity());
        assert_eq!(open_signed(&bytes, &given).unwrap(), payload);
    }
}

#[test]
fn the_mpc_vectors_name_each_other() {
    let (Payload::Register(a), Payload::Register(b)) =
        (register_party(true), register_party(false))
    else {
        unreachable!()
    };
    assert_eq!(a.mpc, MpcRole::A { peer: b.identity });
    assert_eq!(b.mpc, MpcRole::B { peer: a.identity });
    assert_eq!(key2().address().to_string(), KEY2_ADDRESS);
    assert_eq!((a.mpc.tag(), b.mpc.tag()), (1, 2));
    assert_eq!(
        a.mpc.to_string(),
        format!("MPC party A with peer {KEY2_ADDRESS}")
    );
}

#[test]
fn truncated_vector_message_from_the_doc() {
    let bytes = register().encode();
    assert_eq!(
        Payload::decode(&bytes[..105]).unwrap_err().to_string(),
        "payload truncated at byte 95: onion_key needs 32 bytes, 10 left"
    );
    // Vector 1 with role byte 3.
    let mut bad_role = bytes.clone();
    bad_role[127] = 3;
    assert_eq!(
        Payload::decode(&bad_role).unwrap_err().to_string(),
        "field mpc_role at byte 127 is 3; expected 0 (no pair), 1 (party A) or 2 (party B)"
    );
    // Vector 4 cut inside the peer address that follows its role byte.
    let bytes = register_party(true).encode();
    assert_eq!(
        Payload::decode(&bytes[..140]).unwrap_err().to_string(),
        "payload truncated at byte 128: mpc_peer needs 20 bytes, 12 left"
    );
}

#[test]
fn payload_vector_lengths() {
    let lens: Vec<usize> = vectors().iter().map(|v| v.1.encode().len()).collect();
    assert_eq!(lens, [144, 63, 62, 164, 164, 96]);
}
