//! Circuit setup headers: wrap/peel round trips, fixed length, what a hop can tell about its
//! position, and every rejection (tampering, wrong key, lengths, replays, bad routes).

mod common;

use common::{build_and_peel_all, hop_keys, longest_zero_run, peel_all, rng, simple_route};
use proptest::prelude::*;
use unfed_onion::{
    BuildError, HEADER_LEN, HopPayload, MAX_HOPS, MAX_NEXT_HOP_LEN, OnionHop, OnionSecretKey,
    PeelError, Role, RouteHop, build, peel,
};

/// (next-hop field, payload) of one hop.
type HopSpec = (Vec<u8>, [u8; 64]);

fn route_strategy() -> impl Strategy<Value = (u64, u64, Vec<HopSpec>)> {
    (1..=MAX_HOPS).prop_flat_map(|hops| {
        (
            any::<u64>(),
            any::<u64>(),
            prop::collection::vec(
                (
                    prop::collection::vec(any::<u8>(), 1..=MAX_NEXT_HOP_LEN),
                    any::<[u8; 64]>(),
                ),
                hops,
            ),
        )
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Every hop recovers exactly its next-hop field, its payload and the keys the client
    /// derived; every header on the way has the same length.
    #[test]
    fn wrap_then_peel_recovers_each_hops_layer((key_seed, build_seed, hops) in route_strategy()) {
        let keys = hop_keys(key_seed, hops.len());
        let last = hops.len() - 1;
        let route: Vec<RouteHop> = hops
            .iter()
            .zip(&keys)
            .enumerate()
            .map(|(i, ((next, payload), key))| RouteHop {
                public_key: key.public_key(),
                next_hop: if i == last { Vec::new() } else { next.clone() },
                payload: HopPayload(*payload),
            })
            .collect();
        let circuit = build(&mut rng(build_seed), &route).unwrap();
        prop_assert_eq!(circuit.hop_keys.len(), hops.len());

        let mut header = circuit.header.to_vec();
        for (i, key) in keys.iter().enumerate() {
            prop_assert_eq!(header.len(), HEADER_LEN);
            let layer = peel(key, &header).unwrap();
            prop_assert_eq!(layer.next_hop(), route[i].next_hop.as_slice());
            prop_assert_eq!(&layer.payload, &route[i].payload);
            prop_assert_eq!(&layer.keys, &circuit.hop_keys[i]);
            prop_assert_eq!(layer.replay_tag, circuit.replay_tags[i]);
            prop_assert_eq!(layer.is_last(), i == last);
            if let Role::Relay { header: next, .. } = layer.role {
                header = next.to_vec();
            }
        }
        // Session ids are per hop.
        for i in 0..hops.len() {
            for j in i + 1..hops.len() {
                prop_assert_ne!(circuit.hop_keys[i].session_id(), circuit.hop_keys[j].session_id());
            }
        }
    }

    /// Garbage of any length is an error, never a panic.
    #[test]
    fn garbage_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..2 * HEADER_LEN)) {
        let key = OnionSecretKey::from_bytes([9; 32]);
        prop_assert!(peel(&key, &bytes).is_err());
    }

    /// Garbage of exactly the header length fails the MAC (or is a small-order element).
    #[test]
    fn garbage_of_header_length_is_rejected(bytes in prop::collection::vec(any::<u8>(), HEADER_LEN)) {
        let key = OnionSecretKey::from_bytes([9; 32]);
        let err = peel(&key, &bytes).unwrap_err();
        prop_assert!(matches!(err, PeelError::Mac | PeelError::DegenerateElement), "{:?}", err);
    }
}

#[test]
fn header_length_is_the_same_for_every_route_length_and_position() {
    for hops in 1..=MAX_HOPS {
        let (keys, circuit, peeled) = build_and_peel_all(hops as u64, hops);
        assert_eq!(circuit.header.as_bytes().len(), HEADER_LEN);
        let mut header = circuit.header.to_vec();
        for (i, layer) in peeled.iter().enumerate() {
            assert_eq!(header.len(), HEADER_LEN, "route {hops}, hop {i}");
            if let Role::Relay { header: next, .. } = &layer.role {
                header = next.to_vec();
            }
        }
        assert_eq!(peeled.len(), keys.len());
    }
}

#[test]
fn last_hop_knows_it_is_last_only_from_the_empty_next_hop() {
    for hops in 1..=MAX_HOPS {
        let (_, _, peeled) = build_and_peel_all(100 + hops as u64, hops);
        for (i, layer) in peeled.iter().enumerate() {
            let last = i == hops - 1;
            assert_eq!(layer.is_last(), last);
            assert_eq!(layer.next_hop().is_empty(), last);
            assert_eq!(matches!(layer.role, Role::Last), last);
        }
    }
}

/// A relay's view is the same shape at every position: same header length in and out, and
/// the forwarded header is indistinguishable from random (no zero runs a shorter route or a
/// later position would leave).
#[test]
fn a_middle_hop_cannot_tell_its_position() {
    for hops in 2..=MAX_HOPS {
        let (_, circuit, peeled) = build_and_peel_all(200 + hops as u64, hops);
        assert!(longest_zero_run(circuit.header.as_bytes()) < 8);
        for layer in &peeled[..hops - 1] {
            let Role::Relay { header, .. } = &layer.role else {
                panic!("relay expected")
            };
            assert_eq!(header.as_bytes().len(), HEADER_LEN);
            assert!(longest_zero_run(header.as_bytes()) < 8, "route {hops}");
        }
    }
}

#[test]
fn tampering_any_part_of_the_header_fails_the_mac() {
    let (keys, circuit, _) = build_and_peel_all(7, 3);
    let header = circuit.header.to_vec();
    let positions = [0, 15, 31, 32, 33, 200, 700, 1319, 1320, 1351];
    for &pos in &positions {
        for flip in [0x01u8, 0x80] {
            let mut bad = header.clone();
            bad[pos] ^= flip;
            assert_eq!(
                peel(&keys[0], &bad).unwrap_err(),
                PeelError::Mac,
                "byte {pos} ^ {flip:#x}"
            );
        }
    }
    // Tampering between hops is caught by the next hop.
    let first = peel(&keys[0], &header).unwrap();
    let Role::Relay { header: next, .. } = first.role else {
        panic!("relay expected")
    };
    for pos in [0, 100, HEADER_LEN - 1] {
        let mut bad = next.to_vec();
        bad[pos] ^= 0x40;
        assert_eq!(
            peel(&keys[1], &bad).unwrap_err(),
            PeelError::Mac,
            "byte {pos}"
        );
    }
}

#[test]
fn peeling_with_the_wrong_key_fails_the_mac() {
    let (keys, circuit, _) = build_and_peel_all(8, 3);
    let stranger = OnionSecretKey::from_bytes([0x55; 32]);
    for key in [&keys[1], &keys[2], &stranger] {
        assert_eq!(
            peel(key, circuit.header.as_bytes()).unwrap_err(),
            PeelError::Mac
        );
    }
}

#[test]
fn wrong_lengths_are_length_errors() {
    let (keys, circuit, _) = build_and_peel_all(9, 2);
    let header = circuit.header.to_vec();
    for len in [0, 1, 32, HEADER_LEN - 1] {
        assert_eq!(
            peel(&keys[0], &header[..len]).unwrap_err(),
            PeelError::Length {
                got: len,
                expected: HEADER_LEN
            }
        );
    }
    let mut long = header.clone();
    long.push(0);
    assert_eq!(
        peel(&keys[0], &long).unwrap_err(),
        PeelError::Length {
            got: HEADER_LEN + 1,
            expected: HEADER_LEN
        }
    );
}

#[test]
fn small_order_elements_are_rejected() {
    let (keys, circuit, _) = build_and_peel_all(10, 1);
    let mut header = circuit.header.to_vec();
    header[..32].fill(0);
    assert_eq!(
        peel(&keys[0], &header).unwrap_err(),
        PeelError::DegenerateElement
    );
    header[0] = 1;
    assert_eq!(
        peel(&keys[0], &header).unwrap_err(),
        PeelError::DegenerateElement
    );
}

#[test]
fn replayed_headers_are_rejected() {
    let keys = hop_keys(11, 2);
    let mut first = OnionHop::new(keys[0].clone(), 16);
    let mut second = OnionHop::new(keys[1].clone(), 16);
    let circuit = build(&mut rng(1), &simple_route(&keys)).unwrap();

    let layer = first.process(circuit.header.as_bytes()).unwrap();
    assert_eq!(
        first.process(circuit.header.as_bytes()).unwrap_err(),
        PeelError::Replayed
    );
    let Role::Relay { header, .. } = layer.role else {
        panic!("relay expected")
    };
    second.process(header.as_bytes()).unwrap();
    assert_eq!(
        second.process(header.as_bytes()).unwrap_err(),
        PeelError::Replayed
    );

    // A fresh build of the same route is a different packet and is accepted.
    let again = build(&mut rng(2), &simple_route(&keys)).unwrap();
    first.process(again.header.as_bytes()).unwrap();
    // Garbage is not recorded.
    assert!(first.process(&[0u8; HEADER_LEN]).is_err());
    assert_eq!(first.cache().len(), 2);
}

#[test]
fn a_full_replay_cache_refuses_until_rotation() {
    let keys = hop_keys(12, 1);
    let mut hop = OnionHop::new(keys[0].clone(), 2);
    for seed in 0..2 {
        let circuit = build(&mut rng(seed), &simple_route(&keys)).unwrap();
        hop.process(circuit.header.as_bytes()).unwrap();
    }
    assert!(hop.cache().needs_rotation());
    let circuit = build(&mut rng(99), &simple_route(&keys)).unwrap();
    assert_eq!(
        hop.process(circuit.header.as_bytes()).unwrap_err(),
        PeelError::ReplayCacheFull { capacity: 2 }
    );
    // Both earlier packets are still refused as replays.
    let replay = build(&mut rng(0), &simple_route(&keys)).unwrap();
    assert_eq!(
        hop.process(replay.header.as_bytes()).unwrap_err(),
        PeelError::Replayed
    );
}

#[test]
fn invalid_routes_are_refused() {
    let keys = hop_keys(13, MAX_HOPS + 1);
    let route = simple_route(&keys);
    let mut r = rng(0);
    assert_eq!(build(&mut r, &[]).unwrap_err(), BuildError::EmptyRoute);
    assert_eq!(
        build(&mut r, &route).unwrap_err(),
        BuildError::TooManyHops {
            hops: MAX_HOPS + 1,
            max: MAX_HOPS
        }
    );

    let mut route = simple_route(&keys[..3]);
    route[1].next_hop = Vec::new();
    assert_eq!(
        build(&mut r, &route).unwrap_err(),
        BuildError::MissingNextHop { hop: 1 }
    );

    let mut route = simple_route(&keys[..3]);
    route[2].next_hop = b"x:1".to_vec();
    assert_eq!(
        build(&mut r, &route).unwrap_err(),
        BuildError::LastHopHasNextHop { hop: 2 }
    );

    let mut route = simple_route(&keys[..3]);
    route[0].next_hop = vec![b'a'; MAX_NEXT_HOP_LEN + 1];
    assert_eq!(
        build(&mut r, &route).unwrap_err(),
        BuildError::NextHopTooLong {
            hop: 0,
            len: MAX_NEXT_HOP_LEN + 1,
            max: MAX_NEXT_HOP_LEN
        }
    );

    // Full-length next-hop fields and a full-length route work.
    let mut route = simple_route(&keys[..MAX_HOPS]);
    for hop in &mut route[..MAX_HOPS - 1] {
        hop.next_hop = vec![b'h'; MAX_NEXT_HOP_LEN];
    }
    let circuit = build(&mut r, &route).unwrap();
    let peeled = peel_all(&keys[..MAX_HOPS], circuit.header.as_bytes());
    assert_eq!(
        peeled[0].next_hop(),
        vec![b'h'; MAX_NEXT_HOP_LEN].as_slice()
    );
    assert!(peeled[MAX_HOPS - 1].is_last());
}

#[test]
fn builds_are_deterministic_for_a_seed_and_differ_across_seeds() {
    let keys = hop_keys(14, 3);
    let route = simple_route(&keys);
    let a = build(&mut rng(5), &route).unwrap();
    let b = build(&mut rng(5), &route).unwrap();
    let c = build(&mut rng(6), &route).unwrap();
    assert_eq!(a.header, b.header);
    assert_eq!(a.hop_keys, b.hop_keys);
    assert_ne!(a.header, c.header);
    assert_ne!(a.hop_keys[0], c.hop_keys[0]);
}

#[test]
fn debug_output_shows_no_secrets() {
    let (_, circuit, peeled) = build_and_peel_all(15, 2);
    let keys = &circuit.hop_keys[0];
    let shown = format!("{circuit:?} {:?} {:?}", peeled[0], peeled[1]);
    let payload = &peeled[1].payload.0[..];
    for secret in [&keys.forward_key()[..], &keys.backward_key()[..], payload] {
        let hex: String = secret[..8].iter().map(|b| format!("{b:02x}")).collect();
        assert!(!shown.contains(&hex), "{shown}");
        let decimal = format!("{:?}", &secret[..4]);
        assert!(!shown.contains(&decimal[1..decimal.len() - 1]), "{shown}");
    }
}
