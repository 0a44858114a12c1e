//! The client's end of a shard-0 MPC pair: it is the dealer. Every step it deals both parties'
//! correlated randomness and the shares of its token ids (inside the material, never in the
//! clear), seals B's part for B alone (a one-hop onion to B's key, carried by A), and picks the
//! seed of the pad B takes off its output share, which only shard 1 is told. The words both
//! parties are dealt alike go once, to A, which forwards them; B's sealed frame authenticates
//! them.

use unfed_mpc::Material;
use unfed_mpc::prg::{Prg, Seed};
use unfed_mpc::shard::{ShardSpec, ShardState, deal_input, deal_layers, wire_bytes};
use unfed_onion::{Direction, HopPayload, OnionPublicKey, RouteHop, SessionSender};
use unfed_proto::circuit as wire;
use unfed_proto::node::{MpcAhead, MpcInput};

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
    /// The caches' state after the one-position step whose layers went ahead
    /// ([`PairDealer::deal_ahead`]): the pair holds them, the next step deals only its input.
    ahead: Option<ShardState>,
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

    /// Deals the layers of a one-position step (the next decode step) now, for the pair to
    /// hold until it comes: they do not depend on the token, so a client sends them while the
    /// step before runs, and the next [`PairDealer::deal`] has only its input left to deal.
    pub fn deal_ahead(&mut self) -> Result<MpcAhead, String> {
        if self.ahead.is_some() {
            return Err("the layers of the next step went ahead already".into());
        }
        let mut state = self.state.clone();
        let [a, b] = deal_layers(&mut self.rng, &self.spec, 1, &mut state)
            .map_err(|e| format!("dealing: {e}"))?;
        let common = a.common_bytes();
        let frame = wire::encode_b_frame(0, &[0; 16], &[], &b.own_bytes());
        let for_b = self.seal_for_b(&frame, &[], &common)?;
        self.ahead = Some(state);
        Ok(MpcAhead {
            layers: a.own_bytes().into(),
            for_b: for_b.into(),
            layers_common: common.into(),
        })
    }

    /// Deals the next step for the first of `ids` (as many as fit one step's material; one
    /// when its layers went ahead).
    pub fn deal(&mut self, ids: &[u32]) -> Result<DealtStep, String> {
        if ids.is_empty() {
            return Err("an MPC step needs tokens".into());
        }
        let dealing = |e| format!("dealing: {e}");
        if let Some(state) = self.ahead.take() {
            let input = deal_input(&mut self.rng, &self.spec, &ids[..1]).map_err(dealing)?;
            self.state = state;
            return self.seal(input, None, 1);
        }
        let mut t = ids.len().min(self.chunk).min(MAX_STEP_POSITIONS);
        let (layers, state) = loop {
            let mut state = self.state.clone();
            let layers = deal_layers(&mut self.rng, &self.spec, t, &mut state).map_err(dealing)?;
            let size = wire_bytes(&layers);
            self.chunk = (MAX_STEP_MATERIAL / size.div_ceil(t)).max(1);
            if size <= MAX_STEP_MATERIAL || t == 1 {
                break (layers, state);
            }
            t = self.chunk.min(t - 1);
        };
        let input = deal_input(&mut self.rng, &self.spec, &ids[..t]).map_err(dealing)?;
        self.state = state;
        self.seal(input, Some(layers), t)
    }

    /// B's frame sealed for B, binding the common words of the input and of the layers that
    /// A forwards beside it (as [`unfed_proto::circuit::b_frame_bound`] lists them).
    fn seal_for_b(
        &mut self,
        frame: &[u8],
        input_common: &[u8],
        layers_common: &[u8],
    ) -> Result<Vec<u8>, String> {
        self.to_b
            .seal_bound(frame, &wire::b_frame_bound(input_common, layers_common))
            .map_err(|e| format!("sealing for party B: {e}"))
    }

    /// The step's frames: A's input, B's sealed; the layers `None` when they went ahead.
    fn seal(
        &mut self,
        input: [Material; 2],
        layers: Option<[Material; 2]>,
        t: usize,
    ) -> Result<DealtStep, String> {
        let [input_a, input_b] = input;
        let input_common = input_a.common_bytes();
        let [layers_a, layers_b, layers_common] = layers.map_or(Default::default(), |[a, b]| {
            [a.own_bytes(), b.own_bytes(), a.common_bytes()]
        });
        let pad: Seed = rand::random();
        let frame = wire::encode_b_frame(t as u32, &pad, &input_b.own_bytes(), &layers_b);
        let for_b = self.seal_for_b(&frame, &input_common, &layers_common)?;
        Ok(DealtStep {
            input: MpcInput {
                positions: t as u32,
                input: input_a.own_bytes().into(),
                layers: layers_a.into(),
                for_b: for_b.into(),
                b_onion: self.b_onion.take().unwrap_or_default().into(),
                input_common: input_common.into(),
                layers_common: layers_common.into(),
            },
            pad,
            positions: t,
        })
    }
}

#[cfg(test)]
mod tests {
    use unfed_mpc::layer::LayerShape;

    use super::*;

    fn dealer() -> PairDealer {
        let layer = LayerShape {
            hidden: 16,
            ffn: 24,
            n_head: 2,
            n_kv_head: 1,
            head_dim: 8,
            rope_theta: 10000.0,
            interleaved: false,
            eps: 1e-5,
            gate_log2: 5,
        };
        let spec = ShardSpec {
            layer,
            vocab: 50,
            k: 1,
        };
        let b = unfed_onion::OnionSecretKey::generate(&mut rand::rng()).public_key();
        PairDealer::new(spec, b).unwrap()
    }

    #[test]
    fn a_step_whose_layers_went_ahead_deals_one_position_and_only_its_input() {
        let mut d = dealer();
        let first = d.deal(&[3]).unwrap();
        assert!(!first.input.layers.is_empty() && !first.input.b_onion.is_empty());
        let ahead = d.deal_ahead().unwrap();
        // A's own part is its seed: all A is dealt beyond it are the common words.
        assert_eq!(ahead.layers.len(), 16);
        assert!(!ahead.layers_common.is_empty() && !ahead.for_b.is_empty());
        assert!(d.deal_ahead().unwrap_err().contains("already"));
        // However many tokens come next, the step takes one: its layers are dealt for one.
        let next = d.deal(&[4, 5]).unwrap();
        assert_eq!((next.positions, next.input.positions), (1, 1));
        assert!(next.input.layers.is_empty() && next.input.layers_common.is_empty());
        assert!(!next.input.input.is_empty() && !next.input.input_common.is_empty());
        assert!(next.input.b_onion.is_empty());
        // The step after deals its own layers again (more: it attends to one more position).
        let after = d.deal(&[5]).unwrap();
        assert!(after.input.layers_common.len() > ahead.layers_common.len());
    }
}
