//! The client's and the hops' ends of a circuit together, without sockets: a step travels the
//! whole route and the token comes back; what each link carries differs; tampered, replayed and
//! reordered frames are refused; a hop's layer must agree with its shard.

use unfed_client::{Candidate, ClientCircuit, Route};
use unfed_model::SamplingParams;
use unfed_node::circuit::{CircuitError, HopCircuit, Place};
use unfed_onion::{OnionHop, OnionSecretKey};
use unfed_proto::circuit::Output;
use unfed_proto::convert;
use unfed_proto::node::{Hidden, step};

const HIDDEN: usize = 8;

struct Hops {
    onion: Vec<OnionHop>,
    route: Route,
}

fn hops(n: usize) -> Hops {
    let onion: Vec<OnionHop> = (0..n)
        .map(|_| OnionHop::new(OnionSecretKey::generate(&mut rand::rng()), 64))
        .collect();
    let route = Route {
        hops: onion
            .iter()
            .enumerate()
            .map(|(i, h)| Candidate {
                pair: None,
                address: format!("127.0.0.1:{}", 50061 + i),
                shard_index: i as u32,
                onion_key: h.public_key(),
                rtt: None,
            })
            .collect(),
    };
    Hops { onion, route }
}

/// Sets the circuit up at every hop, as the nodes would.
fn set_up(h: &mut Hops, header: Vec<u8>) -> Vec<HopCircuit> {
    let n = h.onion.len();
    let mut header = header;
    let mut circuits = Vec::new();
    for (i, hop) in h.onion.iter_mut().enumerate() {
        let peeled = hop.process(&header).expect("peels");
        let (c, place) = HopCircuit::setup(&peeled, i + 1 == n).expect("fits its shard");
        match place {
            Place::Relay {
                next_hop,
                header: next,
            } => {
                assert_eq!(next_hop, format!("127.0.0.1:{}", 50062 + i));
                header = next;
            }
            Place::Last { output } => assert_eq!(output, Output::Sample(SamplingParams::greedy())),
        }
        circuits.push(c);
    }
    circuits
}

/// One step through every hop: returns the frames each link carried and the reply cell.
fn travel(hops: &mut [HopCircuit], first: Vec<u8>, token: u32) -> (Vec<Vec<u8>>, Vec<u8>) {
    let mut frames = vec![first];
    for i in 0..hops.len() - 1 {
        let (_, onward) = hops[i].open_step(frames.last().unwrap()).unwrap();
        let hidden = convert::hidden(1, HIDDEN, &[i as f32; HIDDEN]);
        frames.push(hops[i].seal_next(hidden, onward.onward).unwrap());
    }
    let last = hops.len() - 1;
    let (input, _) = hops[last].open_step(frames.last().unwrap()).unwrap();
    assert!(matches!(
        input,
        Some(step::Input::Hidden(_)) | Some(step::Input::Tokens(_))
    ));
    let mut cell = hops[last].seal_token(token).unwrap();
    for hop in hops[..last].iter_mut().rev() {
        cell = hop.relay_reply(&cell).unwrap();
    }
    (frames, cell)
}

#[test]
fn steps_travel_the_route_and_tokens_come_back_for_every_route_length() {
    for n in 1..=4 {
        let mut h = hops(n);
        let mut client =
            ClientCircuit::build(&h.route, None, &Output::Sample(SamplingParams::greedy()))
                .unwrap();
        let mut circuits = set_up(&mut h, client.header());
        for (round, token) in [7u32, 49151, 0].into_iter().enumerate() {
            let first = client.step(vec![1, 2, 3], vec![]).unwrap();
            let (frames, cell) = travel(&mut circuits, first, token);
            assert_eq!(
                client.token(&cell).unwrap(),
                token,
                "{n} hops, round {round}"
            );
            // No link carries the bytes of another.
            for (a, fa) in frames.iter().enumerate() {
                for fb in &frames[a + 1..] {
                    assert_ne!(fa, fb);
                }
            }
        }
    }
}

#[test]
fn history_reaches_the_last_hop_only() {
    let mut h = hops(3);
    let mut client =
        ClientCircuit::build(&h.route, None, &Output::Sample(SamplingParams::greedy())).unwrap();
    let mut c = set_up(&mut h, client.header());
    let first = client.step(vec![1, 2], vec![5, 6]).unwrap();
    let (_, o0) = c[0].open_step(&first).unwrap();
    assert!(o0.history.is_empty());
    let f1 = c[0]
        .seal_next(convert::hidden(2, HIDDEN, &[0.0; 2 * HIDDEN]), o0.onward)
        .unwrap();
    let (_, o1) = c[1].open_step(&f1).unwrap();
    assert!(o1.history.is_empty());
    let f2 = c[1]
        .seal_next(convert::hidden(2, HIDDEN, &[0.0; 2 * HIDDEN]), o1.onward)
        .unwrap();
    let (_, o2) = c[2].open_step(&f2).unwrap();
    assert_eq!(o2.history, vec![5, 6]);
    assert!(o2.onward.is_empty());
}

#[test]
fn tampered_replayed_and_reordered_frames_are_refused() {
    let mut h = hops(2);
    let mut client =
        ClientCircuit::build(&h.route, None, &Output::Sample(SamplingParams::greedy())).unwrap();
    let mut c = set_up(&mut h, client.header());
    let a = client.step(vec![1], vec![]).unwrap();
    let b = client.step(vec![2], vec![]).unwrap();
    let mut bad = a.clone();
    let mid = bad.len() / 2;
    bad[mid] ^= 0x40;
    let frame_err = |r: Result<_, CircuitError>| match r {
        Err(CircuitError::Frame(e)) => e.to_string(),
        Err(e) => panic!("expected a frame error, got {e}"),
        Ok(_) => panic!("accepted"),
    };
    assert!(frame_err(c[0].open_step(&bad)).contains("does not authenticate"));
    assert!(frame_err(c[0].open_step(&b)).contains("out of order: expected 0"));
    c[0].open_step(&a).unwrap();
    assert!(frame_err(c[0].open_step(&a)).contains("replayed"));
    c[0].open_step(&b).unwrap();
}

#[test]
fn a_reply_cell_changed_on_the_way_is_refused_by_the_client() {
    let mut h = hops(3);
    let mut client =
        ClientCircuit::build(&h.route, None, &Output::Sample(SamplingParams::greedy())).unwrap();
    let mut c = set_up(&mut h, client.header());
    let first = client.step(vec![1], vec![]).unwrap();
    let (_, mut cell) = travel(&mut c, first, 42);
    cell[3] ^= 1;
    assert!(client.token(&cell).unwrap_err().contains("refused"));
}

#[test]
fn a_layer_that_does_not_fit_the_shard_is_refused() {
    // A two-hop circuit: hop 0 told it is a relay, hop 1 the last. Served the other way round,
    // each refuses.
    let mut h = hops(2);
    let client =
        ClientCircuit::build(&h.route, None, &Output::Sample(SamplingParams::greedy())).unwrap();
    let peeled = h.onion[0].process(&client.header()).unwrap();
    assert!(matches!(
        HopCircuit::setup(&peeled, true),
        Err(CircuitError::LastHasNoNextHop)
    ));
    let mut one = hops(1);
    let client =
        ClientCircuit::build(&one.route, None, &Output::Sample(SamplingParams::greedy())).unwrap();
    let peeled = one.onion[0].process(&client.header()).unwrap();
    assert!(matches!(
        HopCircuit::setup(&peeled, false),
        Err(CircuitError::NeedsNextHop)
    ));
}

#[test]
fn a_hop_refuses_a_step_without_its_own_layer_from_the_client() {
    // A relay forwards hidden states but drops the client's layer for the next hop: the next
    // hop cannot tell the step came from the client and refuses it.
    let mut h = hops(2);
    let mut client =
        ClientCircuit::build(&h.route, None, &Output::Sample(SamplingParams::greedy())).unwrap();
    let mut c = set_up(&mut h, client.header());
    let ok = client.step(vec![1], vec![]).unwrap();
    c[0].open_step(&ok).unwrap();
    let hidden = Hidden {
        rows: 1,
        cols: HIDDEN as u32,
        data: vec![0; 4 * HIDDEN],
    };
    let frame = c[0].seal_next(hidden, Vec::new()).unwrap();
    assert!(matches!(
        c[1].open_step(&frame),
        Err(CircuitError::Onward(_))
    ));
}
