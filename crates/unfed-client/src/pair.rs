//! The client's end of a shard-0 MPC pair: it is the dealer. Every step it deals both parties'
//! correlated randomness and the shares of its token ids (inside the material, never in the
//! clear), seals B's part for B alone (a one-hop onion to B's key, carried by A), and picks the
//! seed of the pad B takes off its output share, which only shard 1 is told.

use unfed_mpc::prg::{Prg, Seed};
use unfed_mpc::shard::{ShardSpec, ShardState, step};
use unfed_mpc::{Ctx, Material};
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
        })
    }

    /// Deals the next step for the first of `ids` (as many as fit one step's material).
    pub fn deal(&mut self, ids: &[u32]) -> Result<DealtStep, String> {
        if ids.is_empty() {
            return Err("an MPC step needs tokens".into());
        }
        let mut t = ids.len().min(self.chunk).min(MAX_STEP_POSITIONS);
        loop {
            let before = self.state.clone();
            let seeds = [
                self.rng.next_seed(),
                self.rng.next_seed(),
                self.rng.next_seed(),
            ];
            let mut dealer = Ctx::dealer(seeds);
            step(&mut dealer, &self.spec, None, &ids[..t], t, &mut self.state)
                .map_err(|e| format!("dealing: {e}"))?;
            let [a, b] = dealer.into_material().ok_or("dealing: not a dealer")?;
            let size = a.len_bytes() + b.len_bytes();
            let per_position = size.div_ceil(t);
            self.chunk = (MAX_STEP_MATERIAL / per_position).max(1);
            if size > MAX_STEP_MATERIAL && t > 1 {
                self.state = before;
                t = self.chunk.min(t - 1);
                continue;
            }
            return self.seal(a, b, t);
        }
    }

    fn seal(&mut self, a: Material, b: Material, t: usize) -> Result<DealtStep, String> {
        let pad: Seed = rand::random();
        let for_b = self
            .to_b
            .seal(&wire::encode_b_frame(t as u32, &pad, &b.to_bytes()))
            .map_err(|e| format!("sealing for party B: {e}"))?;
        Ok(DealtStep {
            input: MpcInput {
                positions: t as u32,
                material: a.to_bytes(),
                for_b,
                b_onion: self.b_onion.take().unwrap_or_default(),
            },
            pad,
            positions: t,
        })
    }
}
