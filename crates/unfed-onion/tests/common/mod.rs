//! Shared helpers for the integration tests: seeded RNGs, hop keys and routes.
#![allow(dead_code)]

use rand_chacha::ChaCha20Rng;
use rand_chacha::rand_core::SeedableRng;
use unfed_onion::{BuiltCircuit, HopPayload, OnionSecretKey, Peeled, Role, RouteHop, build, peel};

/// A deterministic CSPRNG.
pub fn rng(seed: u64) -> ChaCha20Rng {
    ChaCha20Rng::seed_from_u64(seed)
}

/// `count` hop keys from one seed.
pub fn hop_keys(seed: u64, count: usize) -> Vec<OnionSecretKey> {
    let mut rng = rng(seed);
    (0..count)
        .map(|_| OnionSecretKey::generate(&mut rng))
        .collect()
}

/// A route over `keys` where hop i forwards to "127.0.0.1:5006(i+1)" and carries payload
/// bytes equal to its index.
pub fn simple_route(keys: &[OnionSecretKey]) -> Vec<RouteHop> {
    let last = keys.len() - 1;
    keys.iter()
        .enumerate()
        .map(|(i, key)| RouteHop {
            public_key: key.public_key(),
            next_hop: if i == last {
                Vec::new()
            } else {
                format!("127.0.0.1:{}", 50061 + i).into_bytes()
            },
            payload: HopPayload([i as u8; 64]),
        })
        .collect()
}

/// Build `hops` hops from `seed` and peel at every hop in turn.
pub fn build_and_peel_all(
    seed: u64,
    hops: usize,
) -> (Vec<OnionSecretKey>, BuiltCircuit, Vec<Peeled>) {
    let keys = hop_keys(seed, hops);
    let route = simple_route(&keys);
    let circuit = build(&mut rng(seed ^ 0xabcdef), &route).expect("valid route");
    let peeled = peel_all(&keys, circuit.header.as_bytes());
    (keys, circuit, peeled)
}

/// Peel `header` at each key in turn, following `Role::Relay`.
pub fn peel_all(keys: &[OnionSecretKey], header: &[u8]) -> Vec<Peeled> {
    let mut out: Vec<Peeled> = Vec::new();
    let mut current = header.to_vec();
    for (i, key) in keys.iter().enumerate() {
        let layer = peel(key, &current).unwrap_or_else(|e| panic!("hop {i}: {e}"));
        if let Role::Relay { header, .. } = &layer.role {
            current = header.to_vec();
        }
        out.push(layer);
    }
    out
}

/// Longest run of zero bytes.
pub fn longest_zero_run(bytes: &[u8]) -> usize {
    let (mut best, mut run) = (0, 0);
    for &b in bytes {
        run = if b == 0 { run + 1 } else { 0 };
        best = best.max(run);
    }
    best
}
