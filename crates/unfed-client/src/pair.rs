//! The client's end of a shard-0 MPC pair: it is the dealer. Every step it deals both parties'
//! correlated randomness and the shares of its token ids (inside the material, never in the
//! clear), seals B's part for B alone (a one-hop onion to B's key, carried by A), and picks the
//! seed of the pad B takes off its output share, which only shard 1 is told.

use unfed_mpc::prg::{Prg, Seed};
use unfed_mpc::Material;
use unfed_mpc::shard::{ShardSpec, ShardState, deal_input, deal_layers};
use unfed_onion::{Direction, HopPayload, OnionPublicKey, RouteHop, SessionSender};
use unfed_proto::circuit as wire;
use unfed_proto::node::MpcInput;

/// Bytes of material (A's and B's together) one step may carry: a frame holds at most
/// `unfed_proto::MAX_NODE_MESSAGE`, and a prompt whose material is larger is sent in several
/// steps.
pub const MAX_STEP_MATERIAL: usize = 48 << 20;
/// Positions one step may add (as the parties allow).
pub const MAX_STEP_POSITIONS: usize = 64;

/// One session's dealer.
pub struct PairDealer {
    spec: ShardSpec,
    /// The dealer's side of the shared caches (the masks it dealt for them).
    state: ShardState,
    rng: Prg,
    /// Frames for B, sealed with the keys of B's one-hop onion.
    to_b: SessionSender,
    /// B's onion header, until the first step carries it.
    b_onion: Option<Vec<u8>>,
    /// Positions a step took last time without passing the material limit.
    chunk: usize,
    /// The layers of a one-position step dealt ahead ([`PairDealer::deal_ahead`]), with the
    /// caches' state after it.
    ahead: Option<([Material; 2], ShardState)>,
}

/// One dealt step.
pub struct DealtStep {
    /// Party A's input.
    pub input: MpcInput,
    /// The seed of B's output pad, for shard 1.
    pub pad: Seed,
    /// How many of the given tokens the step covers.
    pub positions: usize,
}

impl PairDealer {
    /// A fresh session with the pair whose party B has onion key `b_key`.
    pub fn new(spec: ShardSpec, b_key: OnionPublicKey) -> Result<Self, String> {
        let hop = RouteHop {
            public_key: b_key,
            next_hop: Vec::new(),
            payload: HopPayload::default(),
        };
        let built = unfed_onion::build(&mut rand::rng(), &[hop])
            .map_err(|e| format!("cannot build party B's onion: {e}"))?;
        Ok(Self {
            spec,
            state: ShardState::default(),
            rng: Prg::new(&rand::random()),
            to_b: built.hop_keys[0].sender(Direction::Forward),
            b_onion: Some(built.header.to_vec()),
            chunk: 1,
            ahead: None,
        })
    }

    /// Deals the layers of a one-position step (the next decode step) now, so that
    /// [`PairDealer::deal`] of one token has only its input left to deal. The layers do not
    /// depend on the token; a client calls this while the step before runs.
    pub fn deal_ahead(&mut self) -> Result<(), String> {
        if self.ahead.is_none() {
            let mut state = self.state.clone();
            let layers = deal_layers(&mut self.rng, &self.spec, 1, &mut state)
                .map_err(|e| format!("dealing: {e}"))?;
            self.ahead = Some((layers, state));
        }
        Ok(())
    }

    /// Deals the next step for the first of `ids` (as many as fit one step's material).
    pub fn deal(&mut self, ids: &[u32]) -> Result<DealtStep, String> {
        if ids.is_empty() {
            return Err("an MPC step needs tokens".into());
        }
        let mut t = ids.len().min(self.chunk).min(MAX_STEP_POSITIONS);
        // Layers dealt ahead serve a one-position step; a longer one deals its own.
        let ahead = self.ahead.take().filter(|_| t == 1);
        let dealing = |e| format!("dealing: {e}");
        let (layers, state) = match ahead {
            Some(dealt) => dealt,
            None => loop {
                let mut state = self.state.clone();
                let layers = deal_layers(&mut self.rng, &self.spec, t, &mut state).map_err(dealing)?;
                let size = layers[0].len_bytes() + layers[1].len_bytes();
                self.chunk = (MAX_STEP_MATERIAL / size.div_ceil(t)).max(1);
                if size <= MAX_STEP_MATERIAL || t == 1 {
                    break (layers, state);
                }
                t = self.chunk.min(t - 1);
            },
        };
        let input = deal_input(&mut self.rng, &self.spec, &ids[..t]).map_err(dealing)?;
        self.state = state;
        self.seal(input, layers, t)
    }

    fn seal(&mut self, input: [Material; 2], layers: [Material; 2], t: usize) -> Result<DealtStep, String> {
        let [input_a, input_b] = input;
        let [layers_a, layers_b] = layers;
        let pad: Seed = rand::random();
        let frame = wire::encode_b_frame(t as u32, &pad, &input_b.to_bytes(), &layers_b.to_bytes());
        let for_b = self
            .to_b
            .seal(&frame)
            .map_err(|e| format!("sealing for party B: {e}"))?;
        Ok(DealtStep {
            input: MpcInput {
                positions: t as u32,
                input: input_a.to_bytes(),
                layers: layers_a.to_bytes(),
                for_b,
                b_onion: self.b_onion.take().unwrap_or_default(),
            },
            pad,
            positions: t,
        })
    }
}
