//! Per-session message frames: round trips both ways and each kind of refusal with its own error.

mod common;

use common::build_and_peel_all;
use proptest::prelude::*;
use unfed_onion::{Direction, FRAME_OVERHEAD, MAX_MESSAGE_LEN, SessionError, SessionKeys};

/// (client's keys for hop 0, hop 0's own keys, client's keys for hop 1).
fn keys() -> (SessionKeys, SessionKeys, SessionKeys) {
    let (_, circuit, peeled) = build_and_peel_all(31, 2);
    (
        circuit.hop_keys[0].clone(),
        peeled[0].keys.clone(),
        circuit.hop_keys[1].clone(),
    )
}

#[test]
fn messages_flow_both_ways_in_order() {
    let (client, hop, _) = keys();
    let mut to_hop = client.sender(Direction::Forward);
    let mut at_hop = hop.receiver(Direction::Forward);
    let mut to_client = hop.sender(Direction::Backward);
    let mut at_client = client.receiver(Direction::Backward);
    for i in 0..5u8 {
        let message = vec![i; usize::from(i) * 10];
        let frame = to_hop.seal(&message).unwrap();
        assert_eq!(frame.len(), message.len() + FRAME_OVERHEAD);
        assert_eq!(at_hop.open(&frame).unwrap(), message);
        let frame = to_client.seal(&message).unwrap();
        assert_eq!(at_client.open(&frame).unwrap(), message);
    }
    assert_eq!(at_hop.expected_counter(), 5);
    assert_eq!(to_client.next_counter(), 5);
}

#[test]
fn a_frame_that_binds_bytes_beside_it_opens_only_with_those_bytes() {
    let (client, hop, _) = keys();
    let (common, other) = (vec![7u8; 1000], vec![9u8; 10]);
    let mut sender = client.sender(Direction::Forward);
    let frame = sender.seal_bound(b"step", &[&common, &other]).unwrap();
    // Altered, moved between parts, dropped or ignored: each is refused, and a refused frame
    // leaves the receiver as it was.
    let mut altered = common.clone();
    altered[500] ^= 1;
    let moved = [&common[..999], &[common[999]][..], &other[..]].concat();
    let mut receiver = hop.receiver(Direction::Forward);
    for bound in [
        vec![&altered[..], &other[..]],
        vec![&moved[..999], &moved[999..]],
        vec![&common[..]],
        vec![],
    ] {
        let e = receiver.open_bound(&frame, &bound).unwrap_err();
        assert_eq!(e, SessionError::Authentication { counter: 0 });
        if bound.is_empty() {
            assert_eq!(receiver.open(&frame).unwrap_err(), e);
        }
    }
    assert_eq!(
        receiver.open_bound(&frame, &[&common, &other]).unwrap(),
        b"step"
    );
    // With no parts a frame is an ordinary one.
    let plain = sender.seal_bound(b"next", &[]).unwrap();
    assert_eq!(receiver.open(&plain).unwrap(), b"next");
    // A plaintext written straight into the frame seals as the same bytes passed in would.
    let mut twin = client.sender(Direction::Forward);
    for _ in 0..2 {
        twin.seal(b"").unwrap();
    }
    let written = sender
        .seal_written(4, |f| f.extend_from_slice(b"last"), &[&other])
        .unwrap();
    assert_eq!(written, twin.seal_bound(b"last", &[&other]).unwrap());
    assert_eq!(receiver.open_bound(&written, &[&other]).unwrap(), b"last");
}

#[test]
fn replayed_frames_are_refused() {
    let (client, hop, _) = keys();
    let mut sender = client.sender(Direction::Forward);
    let mut receiver = hop.receiver(Direction::Forward);
    let first = sender.seal(b"a").unwrap();
    let second = sender.seal(b"b").unwrap();
    receiver.open(&first).unwrap();
    receiver.open(&second).unwrap();
    assert_eq!(
        receiver.open(&first).unwrap_err(),
        SessionError::Replayed {
            counter: 0,
            expected: 2
        }
    );
    assert_eq!(
        receiver.open(&second).unwrap_err(),
        SessionError::Replayed {
            counter: 1,
            expected: 2
        }
    );
}

#[test]
fn reordered_or_dropped_frames_are_refused() {
    let (client, hop, _) = keys();
    let mut sender = client.sender(Direction::Forward);
    let mut receiver = hop.receiver(Direction::Forward);
    let frames: Vec<_> = (0..3).map(|i| sender.seal(&[i]).unwrap()).collect();
    receiver.open(&frames[0]).unwrap();
    // Frame 1 was dropped (or is late): frame 2 is refused, and nothing advanced.
    assert_eq!(
        receiver.open(&frames[2]).unwrap_err(),
        SessionError::OutOfOrder {
            counter: 2,
            expected: 1
        }
    );
    assert_eq!(receiver.expected_counter(), 1);
    // When the late frame arrives the stream continues in order.
    assert_eq!(receiver.open(&frames[1]).unwrap(), [1]);
    assert_eq!(receiver.open(&frames[2]).unwrap(), [2]);
}

#[test]
fn tampered_frames_are_refused() {
    let (client, hop, _) = keys();
    let mut sender = client.sender(Direction::Forward);
    let frame = sender.seal(b"the next token").unwrap();
    for pos in [1, 8, 9, 15, frame.len() - 1] {
        let mut receiver = hop.receiver(Direction::Forward);
        let mut bad = frame.clone();
        bad[pos] ^= 0x01;
        let err = receiver.open(&bad).unwrap_err();
        assert!(
            matches!(err, SessionError::Authentication { .. }),
            "byte {pos}: {err:?}"
        );
        assert_eq!(receiver.open(&frame).unwrap(), b"the next token");
    }
}

#[test]
fn wrong_direction_and_wrong_session_are_refused() {
    let (client, hop, other_hop) = keys();
    let forward = client.sender(Direction::Forward).seal(b"x").unwrap();
    let backward = hop.sender(Direction::Backward).seal(b"x").unwrap();

    // Our own frame reflected back at us.
    assert_eq!(
        client
            .receiver(Direction::Backward)
            .open(&forward)
            .unwrap_err(),
        SessionError::WrongDirection {
            expected: Direction::Backward,
            got: Direction::Forward
        }
    );
    assert_eq!(
        hop.receiver(Direction::Forward)
            .open(&backward)
            .unwrap_err(),
        SessionError::WrongDirection {
            expected: Direction::Forward,
            got: Direction::Backward
        }
    );
    // The direction byte rewritten to pass the check: the AEAD (key, nonce, AD) refuses it.
    let mut rewritten = forward.clone();
    rewritten[0] = Direction::Backward.byte();
    assert_eq!(
        client
            .receiver(Direction::Backward)
            .open(&rewritten)
            .unwrap_err(),
        SessionError::Authentication { counter: 0 }
    );
    // Unknown direction byte.
    let mut unknown = forward.clone();
    unknown[0] = 0x07;
    assert_eq!(
        hop.receiver(Direction::Forward).open(&unknown).unwrap_err(),
        SessionError::UnknownDirection(0x07)
    );
    // Another hop's session.
    assert_eq!(
        other_hop
            .receiver(Direction::Forward)
            .open(&forward)
            .unwrap_err(),
        SessionError::Authentication { counter: 0 }
    );
}

#[test]
fn lengths_are_bounded() {
    let (client, hop, _) = keys();
    let mut receiver = hop.receiver(Direction::Forward);
    for len in [0, 1, FRAME_OVERHEAD - 1] {
        assert_eq!(
            receiver.open(&vec![1u8; len]).unwrap_err(),
            SessionError::FrameTooShort {
                len,
                min: FRAME_OVERHEAD
            }
        );
    }
    let huge = vec![0u8; MAX_MESSAGE_LEN + 1];
    assert_eq!(
        client.sender(Direction::Forward).seal(&huge).unwrap_err(),
        SessionError::TooLong {
            len: MAX_MESSAGE_LEN + 1,
            max: MAX_MESSAGE_LEN
        }
    );
    let mut frame = vec![Direction::Forward.byte()];
    frame.resize(MAX_MESSAGE_LEN + FRAME_OVERHEAD + 1, 0);
    assert!(matches!(
        receiver.open(&frame).unwrap_err(),
        SessionError::TooLong { .. }
    ));
    // An empty message is fine.
    let empty = client.sender(Direction::Forward).seal(b"").unwrap();
    assert_eq!(empty.len(), FRAME_OVERHEAD);
    assert_eq!(receiver.open(&empty).unwrap(), b"");
}

#[test]
fn debug_output_shows_no_keys() {
    let (client, _, _) = keys();
    let shown = format!(
        "{client:?} {:?} {:?}",
        client.sender(Direction::Forward),
        client.receiver(Direction::Backward)
    );
    for key in [client.forward_key(), client.backward_key()] {
        let hex: String = key[..8].iter().map(|b| format!("{b:02x}")).collect();
        assert!(!shown.contains(&hex), "{shown}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn garbage_frames_are_errors(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
        let (_, hop, _) = keys();
        prop_assert!(hop.receiver(Direction::Forward).open(&bytes).is_err());
    }
}
