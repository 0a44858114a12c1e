//! The client's side of an onion circuit: builds the setup header for a route, seals each
//! step for the first hop with the layered onward frames for every hop, and strips the reply
//! cells that come back. Protocol: docs/protocol.md, "Circuits".

use unfed_onion::{
    BuiltCircuit, Direction, HopPayload, OnionPublicKey, ReplyUnwrapper, RouteHop, SessionKeys,
    SessionSender,
};
use unfed_proto::circuit as wire;
use unfed_proto::node::{MpcAhead, Onward, Step, Tokens, step};
use zeroize::Zeroizing;

use crate::route::Route;

/// What a step tells the hops after the entry node, each in its own layer.
#[derive(Debug, Default)]
pub struct Extras {
    /// For the last shard: a resumed session's earlier picks.
    pub history: Vec<u32>,
    /// For shard 1 after an MPC pair: the seed of B's output pad.
    pub pad: Option<[u8; wire::PAD_SEED_LEN]>,
    /// For the last shard: more of the prompt follows; reply with a filler.
    pub defer: bool,
}

/// One generation's circuit, from the client's end.
pub struct ClientCircuit {
    header: Vec<u8>,
    /// Frames to the entry node (shard 0).
    link: SessionSender,
    /// With a guard: the outer frames to it, around each frame for the entry node.
    guard_link: Option<SessionSender>,
    /// One per hop: the frames only that hop can open, nested inside each step.
    onward: Vec<SessionSender>,
    replies: ReplyUnwrapper,
}

impl ClientCircuit {
    /// Fresh keys for every hop: a link secret per pair of consecutive hops (and one between
    /// the client and the entry node), what the last shard returns (`output`) in its own layer.
    /// With a `guard` (its onion key), the circuit starts at the guard, whose layer names the
    /// entry node and holds only the secret of the client's link to the guard.
    pub fn build(
        route: &Route,
        guard: Option<OnionPublicKey>,
        output: &wire::Output,
    ) -> Result<Self, String> {
        let n = route.hops.len();
        if n == 0 {
            return Err("a circuit needs at least one node".into());
        }
        let links: Vec<Zeroizing<[u8; 32]>> =
            (0..n).map(|_| Zeroizing::new(rand::random())).collect();
        let guard_secret: Zeroizing<[u8; 32]> = Zeroizing::new(rand::random());
        let guard_hop = guard.map(|public_key| RouteHop {
            public_key,
            next_hop: route.hops[0].address.as_bytes().to_vec(),
            payload: HopPayload(wire::relay_payload(&guard_secret, &[0; 32])),
        });
        let nodes = route.hops.iter().enumerate().map(|(i, hop)| {
            let last = i + 1 == n;
            let payload = if last {
                wire::last_payload(&links[i], output)
            } else {
                wire::relay_payload(&links[i], &links[i + 1])
            };
            RouteHop {
                public_key: hop.onion_key,
                next_hop: if last {
                    Vec::new()
                } else {
                    route.hops[i + 1].address.as_bytes().to_vec()
                },
                payload: HopPayload(payload),
            }
        });
        let hops: Vec<RouteHop> = guard_hop.into_iter().chain(nodes).collect();
        let BuiltCircuit {
            header, hop_keys, ..
        } = unfed_onion::build(&mut rand::rng(), &hops)
            .map_err(|e| format!("cannot build the circuit: {e}"))?;
        let replies = ReplyUnwrapper::new(&hop_keys).map_err(|e| e.to_string())?;
        let guarded = usize::from(guard.is_some());
        Ok(Self {
            header: header.to_vec(),
            link: SessionKeys::for_link(&links[0]).sender(Direction::Forward),
            guard_link: guard
                .map(|_| SessionKeys::for_link(&guard_secret).sender(Direction::Forward)),
            onward: hop_keys[guarded..]
                .iter()
                .map(|k| k.sender(Direction::Forward))
                .collect(),
            replies,
        })
    }

    /// The setup header for the first hop (the guard, if any).
    pub fn header(&self) -> Vec<u8> {
        self.header.clone()
    }

    /// The frame for one step: `ids` for shard 0; `history` (a resumed session's earlier picks)
    /// for the last shard only, inside its own layer.
    pub fn step(&mut self, ids: Vec<u32>, history: Vec<u32>) -> Result<Vec<u8>, String> {
        self.frame(step::Input::Tokens(Tokens { ids }), history)
    }

    /// The frame for one step with any input (a circuit whose first hop is a later shard takes
    /// hidden states: tests and tools that drive part of a route).
    pub fn frame(&mut self, input: step::Input, history: Vec<u32>) -> Result<Vec<u8>, String> {
        self.frame_with(
            input,
            Extras {
                history,
                ..Extras::default()
            },
        )
    }

    /// The frame for one step, with what the hops after the entry node are told in their own
    /// layers.
    pub fn frame_with(&mut self, input: step::Input, extras: Extras) -> Result<Vec<u8>, String> {
        let last = self.onward.len() - 1;
        let mut onward = Vec::new();
        let Extras {
            history,
            pad,
            defer,
        } = extras;
        let mut history = Some(history);
        for (i, sender) in self.onward.iter_mut().enumerate().rev() {
            let layer = Onward {
                onward,
                history: if i == last {
                    history.take().unwrap_or_default()
                } else {
                    Vec::new()
                },
                pad: match (i, pad) {
                    (1, Some(seed)) => seed.to_vec(),
                    _ => Vec::new(),
                },
                defer: i == last && defer,
            };
            onward = sender
                .seal(&wire::encode_onward(&layer))
                .map_err(|e| e.to_string())?;
        }
        self.seal(Step {
            input: Some(input),
            onward,
        })
    }

    /// The frame that takes an MPC pair the layers of its next step ahead: for the entry node
    /// alone (no onward layers), and answered by no reply cell.
    pub fn frame_ahead(&mut self, ahead: MpcAhead) -> Result<Vec<u8>, String> {
        self.seal(Step {
            input: Some(step::Input::Ahead(ahead)),
            onward: Vec::new(),
        })
    }

    fn seal(&mut self, step: Step) -> Result<Vec<u8>, String> {
        // Encoded straight into the frame: an MPC step's megabytes are not copied once more.
        let encode = |frame: &mut Vec<u8>| wire::encode_step_into(&step, frame);
        let frame = self
            .link
            .seal_written(wire::step_len(&step), encode, &[])
            .map_err(|e| e.to_string())?;
        match &mut self.guard_link {
            None => Ok(frame),
            Some(guard) => guard.seal(&frame).map_err(|e| e.to_string()),
        }
    }

    /// The token in a reply cell, which must come from the last shard.
    pub fn token(&mut self, cell: &[u8]) -> Result<u32, String> {
        let plain = self.reply(cell)?;
        let bytes: [u8; wire::TOKEN_REPLY_LEN] = plain
            .as_slice()
            .try_into()
            .map_err(|_| "a reply cell that holds no token".to_string())?;
        Ok(u32::from_le_bytes(bytes))
    }

    /// The logits in a reply cell from the last shard (mode `decode_client_sample`), as
    /// `vocab` values (those outside a `top_k` slice are negative infinity).
    pub fn logits(&mut self, cell: &[u8], top_k: u32, vocab: usize) -> Result<Vec<f32>, String> {
        wire::decode_logits(&self.reply(cell)?, top_k, vocab)
    }

    /// Takes the filler cell of a deferred step (checked like any reply, then dropped).
    pub fn filler(&mut self, cell: &[u8]) -> Result<(), String> {
        self.reply(cell).map(drop)
    }

    fn reply(&mut self, cell: &[u8]) -> Result<Vec<u8>, String> {
        self.replies
            .unwrap_from_last(cell)
            .map_err(|e| format!("a reply cell was refused: {e}"))
    }
}
