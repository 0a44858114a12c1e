//! Property tests: encode/decode round trips, decode never panics and accepts only canonical
//! bytes, sign→recover, and tampering never yields the original signer.

use proptest::prelude::*;
use unfed_identity::canonical::{
    Heartbeat, MAX_PAYLOAD_LEN, Payload, Register, RegisterGuard, Unregister, open_signed,
    sign_payload,
};
use unfed_identity::{Address, MpcRole, NodeKey, recover};

fn arb_address() -> impl Strategy<Value = Address> {
    any::<[u8; 20]>().prop_map(Address)
}

fn arb_mpc_role() -> impl Strategy<Value = MpcRole> {
    prop_oneof![
        Just(MpcRole::None),
        arb_address().prop_map(|peer| MpcRole::A { peer }),
        arb_address().prop_map(|peer| MpcRole::B { peer }),
    ]
}

/// At most 63 chars of up to 4 bytes each: always within the 255-byte caps.
fn arb_text() -> impl Strategy<Value = String> {
    "\\PC{0,63}"
}

fn arb_payload() -> impl Strategy<Value = Payload> {
    let register = (
        arb_address(),
        arb_text(),
        arb_text(),
        any::<u32>(),
        any::<[u8; 32]>(),
        proptest::collection::vec(any::<u8>(), 0..=64),
        arb_mpc_role(),
        any::<u64>(),
        any::<u64>(),
    )
        .prop_map(
            |(identity, address, model_id, shard_index, sha, onion_key, mpc, ts, nonce)| {
                Payload::Register(Register {
                    identity,
                    address,
                    model_id,
                    shard_index,
                    manifest_sha256: sha,
                    onion_key,
                    mpc,
                    timestamp_ms: ts,
                    nonce,
                })
            },
        );
    let heartbeat = (
        arb_address(),
        arb_text(),
        any::<u32>(),
        any::<u64>(),
        any::<u64>(),
    )
        .prop_map(
            |(identity, address, active_sessions, timestamp_ms, nonce)| {
                Payload::Heartbeat(Heartbeat {
                    identity,
                    address,
                    active_sessions,
                    timestamp_ms,
                    nonce,
                })
            },
        );
    let unregister = (arb_address(), arb_text(), any::<u64>(), any::<u64>()).prop_map(
        |(identity, address, timestamp_ms, nonce)| {
            Payload::Unregister(Unregister {
                identity,
                address,
                timestamp_ms,
                nonce,
            })
        },
    );
    let guard = (
        arb_address(),
        arb_text(),
        proptest::collection::vec(any::<u8>(), 0..=64),
        any::<u64>(),
        any::<u64>(),
    )
        .prop_map(|(identity, address, onion_key, timestamp_ms, nonce)| {
            Payload::RegisterGuard(RegisterGuard {
                identity,
                address,
                onion_key,
                timestamp_ms,
                nonce,
            })
        });
    prop_oneof![register, heartbeat, unregister, guard]
}

fn arb_key() -> impl Strategy<Value = NodeKey> {
    any::<[u8; 32]>().prop_filter_map("not a valid scalar", |b| {
        NodeKey::from_hex(&hex::encode(b)).ok()
    })
}

/// The same payload, signed by `key`'s identity.
fn owned_by(mut payload: Payload, key: &NodeKey) -> Payload {
    match &mut payload {
        Payload::Register(r) => r.identity = key.address(),
        Payload::Heartbeat(h) => h.identity = key.address(),
        Payload::Unregister(u) => u.identity = key.address(),
        Payload::RegisterGuard(g) => g.identity = key.address(),
    }
    payload
}

proptest! {
    #[test]
    fn encode_decode_round_trip(payload in arb_payload()) {
        let bytes = payload.try_encode().unwrap();
        prop_assert_eq!(&bytes, &payload.encode());
        prop_assert!(bytes.len() <= MAX_PAYLOAD_LEN);
        let decoded = Payload::decode(&bytes).unwrap();
        prop_assert_eq!(decoded.encode(), bytes);
        prop_assert_eq!(decoded, payload);
    }

    #[test]
    fn decode_never_panics_on_random_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..1100)) {
        if let Ok(payload) = Payload::decode(&bytes) {
            prop_assert_eq!(payload.encode(), bytes);
        }
    }

    #[test]
    fn decode_never_panics_on_random_bytes_after_a_valid_header(
        kind in 0u8..5,
        tail in proptest::collection::vec(any::<u8>(), 0..300),
    ) {
        let mut bytes = b"UNFED\x01".to_vec();
        bytes.push(kind);
        bytes.extend_from_slice(&tail);
        if let Ok(payload) = Payload::decode(&bytes) {
            prop_assert_eq!(payload.encode(), bytes);
        }
    }

    /// Every accepted mutation of a valid encoding is itself canonical.
    #[test]
    fn accepted_mutations_are_canonical(
        payload in arb_payload(),
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
    ) {
        let mut bytes = payload.encode();
        for (at, value) in edits {
            let i = at.index(bytes.len());
            bytes[i] = value;
        }
        if let Ok(decoded) = Payload::decode(&bytes) {
            prop_assert_eq!(decoded.encode(), bytes);
        }
    }

    #[test]
    fn every_truncation_and_extension_is_rejected(
        payload in arb_payload(),
        extra in proptest::collection::vec(any::<u8>(), 1..40),
    ) {
        let bytes = payload.encode();
        for len in 0..bytes.len() {
            prop_assert!(Payload::decode(&bytes[..len]).is_err(), "prefix of {} bytes accepted", len);
        }
        for n in 1..=extra.len() {
            let mut longer = bytes.clone();
            longer.extend_from_slice(&extra[..n]);
            prop_assert!(Payload::decode(&longer).is_err(), "{} extra bytes accepted", n);
        }
    }

    /// The role byte of a Register is 0, 1 or 2; any other value is refused, never misread.
    #[test]
    fn unknown_mpc_role_bytes_are_refused(
        payload in arb_payload(),
        value in 3u8..=255,
    ) {
        let Payload::Register(r) = &payload else { return Ok(()) };
        let mut bytes = payload.encode();
        // header 7, identity 20, three length-prefixed fields, shard 4, hash 32.
        let at = 7 + 20 + 2 + r.address.len() + 2 + r.model_id.len() + 4 + 32 + 2
            + r.onion_key.len();
        prop_assert_eq!(bytes[at], r.mpc.tag());
        bytes[at] = value;
        let err = Payload::decode(&bytes).unwrap_err().to_string();
        prop_assert_eq!(
            err,
            format!(
                "field mpc_role at byte {at} is {value}; expected 0 (no pair), 1 (party A) or \
                 2 (party B)"
            )
        );
    }

    #[test]
    fn sign_then_recover(key in arb_key(), message in proptest::collection::vec(any::<u8>(), 0..200)) {
        let signature = key.sign(&message);
        prop_assert!(signature[64] == 27 || signature[64] == 28);
        prop_assert_eq!(recover(&message, &signature).unwrap(), key.address());
        // v as 0/1 (raw recovery id) is accepted too.
        let mut raw = signature;
        raw[64] -= 27;
        prop_assert_eq!(recover(&message, &raw).unwrap(), key.address());
    }

    #[test]
    fn signed_payloads_open(key in arb_key(), payload in arb_payload()) {
        let payload = owned_by(payload, &key);
        let (bytes, signature) = sign_payload(&key, &payload).unwrap();
        prop_assert_eq!(open_signed(&bytes, &signature).unwrap(), payload);
    }

    #[test]
    fn tampered_payload_never_recovers_the_signer(
        key in arb_key(),
        payload in arb_payload(),
        at in any::<prop::sample::Index>(),
        flip in 1u8..=255,
    ) {
        let payload = owned_by(payload, &key);
        let (mut bytes, signature) = sign_payload(&key, &payload).unwrap();
        let i = at.index(bytes.len());
        bytes[i] ^= flip;
        if let Ok(signer) = recover(&bytes, &signature) {
            prop_assert_ne!(signer, key.address());
        }
        prop_assert!(open_signed(&bytes, &signature).is_err());
    }

    #[test]
    fn tampered_signature_never_recovers_the_signer(
        key in arb_key(),
        payload in arb_payload(),
        at in 0usize..65,
        flip in 1u8..=255,
    ) {
        let payload = owned_by(payload, &key);
        let (bytes, mut signature) = sign_payload(&key, &payload).unwrap();
        signature[at] ^= flip;
        if let Ok(signer) = recover(&bytes, &signature) {
            prop_assert_ne!(signer, key.address());
        }
        prop_assert!(open_signed(&bytes, &signature).is_err());
    }

    #[test]
    fn payload_naming_someone_else_is_refused(
        key in arb_key(),
        payload in arb_payload(),
    ) {
        prop_assume!(payload.identity() != key.address());
        let bytes = payload.encode();
        let signature = key.sign(&bytes);
        let err = open_signed(&bytes, &signature).unwrap_err().to_string();
        prop_assert_eq!(
            err,
            format!("signed by {} but the payload names {}", key.address(), payload.identity())
        );
        prop_assert!(sign_payload(&key, &payload).is_err());
    }

    #[test]
    fn recover_never_panics(
        message in proptest::collection::vec(any::<u8>(), 0..64),
        signature in proptest::collection::vec(any::<u8>(), 0..70),
    ) {
        let _ = recover(&message, &signature);
    }

    #[test]
    fn recover_never_panics_on_65_bytes(message in any::<[u8; 8]>(), rs in any::<[u8; 64]>(), v in 0u8..30) {
        let mut signature = rs.to_vec();
        signature.push(v);
        let _ = recover(&message, &signature);
    }

    #[test]
    fn address_display_parse_round_trip(address in arb_address()) {
        prop_assert_eq!(address.to_string().parse::<Address>().unwrap(), address);
        prop_assert_eq!(address.to_checksum().parse::<Address>().unwrap(), address);
    }
}
