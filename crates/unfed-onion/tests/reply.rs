//! The return path: the last hop seals, every relay adds a layer, the client strips them all;
//! tampering at any layer, replays and reordering are refused.

mod common;

use common::build_and_peel_all;
use proptest::prelude::*;
use unfed_onion::{
    MAX_HOPS, MAX_REPLY_CELL_LEN, MIN_REPLY_CELL_LEN, ReplyError, ReplyUnwrapper, ReplyWrapper,
    SessionKeys, reply_cell_len,
};

struct Path {
    client: ReplyUnwrapper,
    hops: Vec<ReplyWrapper>,
}

fn path(seed: u64, hops: usize) -> Path {
    let (_, circuit, peeled) = build_and_peel_all(seed, hops);
    let hop_keys: Vec<SessionKeys> = peeled.iter().map(|p| p.keys.clone()).collect();
    Path {
        client: ReplyUnwrapper::new(&circuit.hop_keys).unwrap(),
        hops: hop_keys.iter().map(SessionKeys::reply_wrapper).collect(),
    }
}

impl Path {
    /// Hop `origin` seals; hops origin-1..=0 relay. Returns the cell at every step.
    fn send(&mut self, origin: usize, plaintext: &[u8], cell_len: usize) -> Vec<Vec<u8>> {
        let mut cells = vec![self.hops[origin].seal(plaintext, cell_len).unwrap()];
        for hop in (0..origin).rev() {
            let next = self.hops[hop].relay(cells.last().unwrap()).unwrap();
            cells.push(next);
        }
        cells
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    /// The client recovers the plaintext for any hop count; each relay's output differs from
    /// its input, and every hop sees the same length.
    #[test]
    fn client_recovers_replies_through_any_number_of_hops(
        seed in any::<u64>(),
        hops in 1..=MAX_HOPS,
        messages in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..200), 1..4),
    ) {
        let mut path = path(seed, hops);
        prop_assert_eq!(path.client.hop_count(), hops);
        for message in &messages {
            let cell_len = reply_cell_len(200);
            let cells = path.send(hops - 1, message, cell_len);
            for pair in cells.windows(2) {
                prop_assert_eq!(pair[0].len(), cell_len);
                prop_assert_eq!(pair[1].len(), cell_len);
                prop_assert_ne!(&pair[0], &pair[1]);
                let same = pair[0].iter().zip(&pair[1]).filter(|(a, b)| a == b).count();
                prop_assert!(same < cell_len / 8, "{} of {} bytes unchanged", same, cell_len);
            }
            let reply = path.client.unwrap(cells.last().unwrap()).unwrap();
            prop_assert_eq!(reply.origin, hops - 1);
            prop_assert_eq!(&reply.plaintext, message);
        }
    }

    /// A flipped bit anywhere, at any layer, is refused by the client.
    #[test]
    fn tampering_at_any_layer_is_refused(
        seed in any::<u64>(),
        hops in 1..=MAX_HOPS,
        layer_pick in any::<prop::sample::Index>(),
        byte_pick in any::<prop::sample::Index>(),
        bit in 0u8..8,
    ) {
        let mut path = path(seed, hops);
        let cell_len = 48;
        let origin = hops - 1;
        let mut cell = path.hops[origin].seal(b"secret output", cell_len).unwrap();
        let tamper_after = layer_pick.index(hops); // 0 = right after sealing
        if tamper_after == 0 {
            cell[byte_pick.index(cell_len)] ^= 1 << bit;
        }
        for (step, hop) in (0..origin).rev().enumerate() {
            cell = path.hops[hop].relay(&cell).unwrap();
            if step + 1 == tamper_after {
                cell[byte_pick.index(cell_len)] ^= 1 << bit;
            }
        }
        prop_assert_eq!(path.client.unwrap(&cell).unwrap_err(), ReplyError::Unauthenticated);
    }

    #[test]
    fn garbage_cells_are_errors(bytes in prop::collection::vec(any::<u8>(), 0..100)) {
        let mut path = path(3, 3);
        prop_assert!(path.client.unwrap(&bytes).is_err());
    }
}

#[test]
fn a_relay_cannot_read_the_reply() {
    let mut path = path(41, 3);
    let plaintext = b"the answer is forty-two, and only the client may read it";
    let cells = path.send(2, plaintext, 128);
    for cell in &cells {
        assert!(
            !cell
                .windows(8)
                .any(|w| plaintext.windows(8).any(|p| p == w))
        );
    }
    // A relay's own key does not open the cell it relays (only the origin's layer is sealed).
    let (_, circuit, _) = build_and_peel_all(41, 3);
    let mut only_relay = ReplyUnwrapper::new(&circuit.hop_keys[..2]).unwrap();
    assert_eq!(
        only_relay.unwrap(&cells[1]).unwrap_err(),
        ReplyError::Unauthenticated
    );
    assert_eq!(path.client.unwrap(&cells[2]).unwrap().plaintext, plaintext);
}

#[test]
fn replayed_and_reordered_cells_are_refused() {
    let mut path = path(42, 3);
    let first = path.send(2, b"one", 32).pop().unwrap();
    let second = path.send(2, b"two", 32).pop().unwrap();
    // Reordered: the second cell first.
    assert_eq!(
        path.client.unwrap(&second).unwrap_err(),
        ReplyError::Unauthenticated
    );
    assert_eq!(path.client.unwrap(&first).unwrap().plaintext, b"one");
    // Replayed.
    assert_eq!(
        path.client.unwrap(&first).unwrap_err(),
        ReplyError::Unauthenticated
    );
    assert_eq!(path.client.unwrap(&second).unwrap().plaintext, b"two");
}

#[test]
fn a_middle_hop_can_originate_a_reply() {
    let mut path = path(43, 4);
    let from_last = path.send(3, b"token", 40).pop().unwrap();
    let from_middle = path.send(1, b"error: overloaded", 40).pop().unwrap();
    let again_last = path.send(3, b"token 2", 40).pop().unwrap();

    let reply = path.client.unwrap(&from_last).unwrap();
    assert_eq!(
        (reply.origin, reply.plaintext.as_slice()),
        (3, &b"token"[..])
    );
    let reply = path.client.unwrap(&from_middle).unwrap();
    assert_eq!(
        (reply.origin, reply.plaintext.as_slice()),
        (1, &b"error: overloaded"[..])
    );
    // unwrap_from_last refuses a middle hop's cell without losing its place.
    assert_eq!(
        path.client.unwrap_from_last(&again_last).unwrap(),
        b"token 2"
    );
    let from_middle = path.send(1, b"late", 40).pop().unwrap();
    assert_eq!(
        path.client.unwrap_from_last(&from_middle).unwrap_err(),
        ReplyError::Unauthenticated
    );
    assert_eq!(path.client.unwrap(&from_middle).unwrap().origin, 1);
}

#[test]
fn lengths_are_bounded() {
    let mut path = path(44, 2);
    assert_eq!(MIN_REPLY_CELL_LEN, reply_cell_len(0));
    let err = path.hops[1].seal(b"", MIN_REPLY_CELL_LEN - 1).unwrap_err();
    assert!(matches!(err, ReplyError::CellLength { .. }));
    let err = path.hops[1].seal(b"", MAX_REPLY_CELL_LEN + 1).unwrap_err();
    assert!(matches!(err, ReplyError::CellLength { .. }));
    assert_eq!(
        path.hops[1].seal(b"hello", 24).unwrap_err(),
        ReplyError::TooLong {
            len: 5,
            cell_len: 24,
            needed: 25
        }
    );
    assert!(matches!(
        path.hops[0]
            .relay(&[0u8; MIN_REPLY_CELL_LEN - 1])
            .unwrap_err(),
        ReplyError::CellLength { .. }
    ));
    assert!(matches!(
        path.client.unwrap(&[0u8; 3]).unwrap_err(),
        ReplyError::CellLength { .. }
    ));
    // Exactly full and empty replies work.
    let cell = path
        .send(1, &[7u8; 100], reply_cell_len(100))
        .pop()
        .unwrap();
    assert_eq!(path.client.unwrap(&cell).unwrap().plaintext, vec![7u8; 100]);
    let cell = path.send(1, b"", MIN_REPLY_CELL_LEN).pop().unwrap();
    assert_eq!(path.client.unwrap(&cell).unwrap().plaintext, b"");
    assert!(matches!(
        ReplyUnwrapper::new(&[]).unwrap_err(),
        ReplyError::HopCount { .. }
    ));
}
