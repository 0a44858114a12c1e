//! Known-answer vectors: a deterministic 3-hop build, its keys, a session frame and a reply
//! cell, checked against the values printed in `docs/onion.md` (so the two cannot drift).

use std::collections::BTreeMap;

use chacha20::ChaCha20;
use chacha20::cipher::{KeyIvInit, StreamCipher};
use rand_chacha::ChaCha20Rng;
use rand_chacha::rand_core::{RngCore, SeedableRng};
use sha2::{Digest, Sha256};
use unfed_onion::{
    Direction, HopPayload, OnionSecretKey, ReplyUnwrapper, Role, RouteHop, build, peel,
};

const DOC: &str = include_str!("../../../docs/onion.md");
const BUILD_SEED: [u8; 32] = [0x42; 32];

/// Every value of the vector, computed.
fn compute() -> (BTreeMap<String, String>, String) {
    let secrets = [[0xa1u8; 32], [0xa2; 32], [0xa3; 32]];
    let keys: Vec<OnionSecretKey> = secrets
        .iter()
        .map(|s| OnionSecretKey::from_bytes(*s))
        .collect();
    let next_hops: [&[u8]; 3] = [b"127.0.0.1:50061", b"127.0.0.1:50062", b""];
    let route: Vec<RouteHop> = keys
        .iter()
        .enumerate()
        .map(|(i, key)| RouteHop {
            public_key: key.public_key(),
            next_hop: next_hops[i].to_vec(),
            payload: HopPayload([0x11 * (i as u8 + 1); 64]),
        })
        .collect();
    let circuit = build(&mut ChaCha20Rng::from_seed(BUILD_SEED), &route).unwrap();

    let mut values = BTreeMap::new();
    let mut put = |name: String, bytes: &[u8]| {
        values.insert(name, hex::encode(bytes));
    };
    let mut header = circuit.header.to_vec();
    let mut peeled = Vec::new();
    for (i, key) in keys.iter().enumerate() {
        put(format!("hop{i}.secret"), &secrets[i]);
        put(format!("hop{i}.public"), key.public_key().as_bytes());
        put(format!("hop{i}.alpha"), &header[..32]);
        put(format!("hop{i}.header_sha256"), &Sha256::digest(&header));
        let layer = peel(key, &header).unwrap();
        assert_eq!(layer.keys, circuit.hop_keys[i]);
        put(format!("hop{i}.replay_tag"), &layer.replay_tag.0);
        put(format!("hop{i}.forward_key"), layer.keys.forward_key());
        put(format!("hop{i}.backward_key"), layer.keys.backward_key());
        put(
            format!("hop{i}.session_id"),
            layer.keys.session_id().as_bytes(),
        );
        if let Role::Relay { header: next, .. } = &layer.role {
            header = next.to_vec();
        }
        peeled.push(layer);
    }

    let frame = peeled[0]
        .keys
        .sender(Direction::Forward)
        .seal(b"hello")
        .unwrap();
    put("frame.hop0_forward_hello".into(), &frame);
    let frame = peeled[0]
        .keys
        .sender(Direction::Backward)
        .seal_bound(b"step", &[b"common", b""])
        .unwrap();
    put("frame.hop0_backward_step_bound".into(), &frame);
    let mut cell = peeled[2].keys.reply_wrapper().seal(b"token", 32).unwrap();
    put("reply.sealed_by_hop2".into(), &cell);
    for hop in [1, 0] {
        cell = peeled[hop].keys.reply_wrapper().relay(&cell).unwrap();
    }
    put("reply.at_client".into(), &cell);
    let mut client = ReplyUnwrapper::new(&circuit.hop_keys).unwrap();
    assert_eq!(client.unwrap_from_last(&cell).unwrap(), b"token");

    (values, hex::encode(circuit.header.as_bytes()))
}

/// The `name = hex` lines between the markers, and the header hex block.
fn from_doc() -> (BTreeMap<String, String>, String) {
    let section = |begin: &str, end: &str| -> String {
        let start = DOC
            .find(begin)
            .unwrap_or_else(|| panic!("{begin} missing from docs/onion.md"));
        let stop = DOC[start..]
            .find(end)
            .unwrap_or_else(|| panic!("{end} missing"))
            + start;
        DOC[start + begin.len()..stop].to_string()
    };
    let mut values = BTreeMap::new();
    for line in section("<!-- kat:begin -->", "<!-- kat:end -->").lines() {
        if let Some((name, value)) = line.split_once(" = ") {
            values.insert(name.trim().to_string(), value.trim().to_string());
        }
    }
    let header: String = section("<!-- kat-header:begin -->", "<!-- kat-header:end -->")
        .lines()
        .filter(|l| !l.starts_with("```"))
        .map(str::trim)
        .collect();
    (values, header)
}

#[test]
fn known_answer_vectors_match_the_spec() {
    let (computed, header) = compute();
    let (documented, doc_header) = from_doc();
    let listing: String = computed
        .iter()
        .map(|(k, v)| format!("{k} = {v}\n"))
        .collect();
    assert_eq!(
        documented, computed,
        "docs/onion.md vectors differ; computed:\n{listing}"
    );
    let wrapped: String = header
        .as_bytes()
        .chunks(64)
        .map(|c| format!("{}\n", std::str::from_utf8(c).unwrap()))
        .collect();
    assert_eq!(
        doc_header, header,
        "docs/onion.md header differs; computed:\n{wrapped}"
    );
}

#[test]
fn the_vector_header_hash_is_pinned_here_too() {
    let (computed, _) = compute();
    assert_eq!(
        computed["hop0.header_sha256"],
        "701d48238e7a79d510c682a13b00f0e79d715d96e660078d84dea21551b651e8"
    );
}

/// The builder RNG of the vectors is the plain ChaCha20 keystream (key = seed, zero nonce), so
/// other implementations can reproduce the vectors without rand_chacha.
#[test]
fn the_vector_rng_is_the_chacha20_keystream() {
    let mut rng = ChaCha20Rng::from_seed(BUILD_SEED);
    let mut drawn = vec![0u8; 4096];
    rng.fill_bytes(&mut drawn);
    let mut stream = vec![0u8; 4096];
    ChaCha20::new(&BUILD_SEED.into(), &[0u8; 12].into()).apply_keystream(&mut stream);
    assert_eq!(drawn, stream);
}
