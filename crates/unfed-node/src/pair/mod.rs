//! Shard 0 as a two-party MPC pair over the network (`unfed mpc`, docs/mpc.md "On the wire").
//!
//! Party A is a node clients reach: the shard-0 hop of their circuits. Party B is reached only
//! by A. Per client session A opens one stream to B (over A's one connection to it) and hands
//! B the client's one-hop onion header for B; each step A forwards B's sealed frame, both
//! parties run [`unfed_mpc::shard::run`] on their dealt material, exchanging one message per
//! round on the stream, then B sends its output share minus a pad to A, and A sends the sum —
//! the output masked by B's pad — to shard 1, which the client tells the pad's seed.

mod bridge;
pub mod party_a;
pub mod party_b;
pub mod view;

use std::sync::Arc;

use unfed_mpc::shard::{ShardSpec, ShardState, ShardWeights, StepMaterial};
use unfed_mpc::{Link, Material, MpcError, Role, ring};

pub use party_a::PartyA;
pub use party_b::{PairConfig, run_b};
pub use view::ViewFile;

/// Positions one step may add (a prompt comes in several steps: the dealt material of one
/// position is megabytes).
pub const MAX_STEP_POSITIONS: usize = 64;

/// Party A's configuration: its party B.
#[derive(Clone)]
pub struct PairPeer {
    /// Where B serves (`host:port`, or `https://host:port`).
    pub address: String,
    /// B's identity, named in A's signed registration.
    pub identity: unfed_identity::Address,
    /// `--record-view`.
    pub view: Option<ViewFile>,
}

/// Whether a node may serve shard `index` of `manifest` as a party (`party`) or plainly: shard 0
/// of a model that requires MPC only on a pair, and a pair only there.
pub fn check_role(
    manifest: &unfed_shard::Manifest,
    index: usize,
    party: bool,
) -> Result<(), crate::NodeError> {
    match (manifest.mpc.is_some() && index == 0, party) {
        (true, false) => Err(crate::NodeError::Pair(format!(
            "shard 0 of {} runs on a two-party MPC pair: serve it with `unfed mpc --role a|b`",
            manifest.model_id
        ))),
        (false, true) => Err(crate::NodeError::Pair(format!(
            "only shard 0 of a model whose manifest asks for MPC runs on a pair; {} does not",
            manifest.model_id
        ))),
        _ => Ok(()),
    }
}

/// Loads shard 0 of `manifest` from `dir` (verified against the manifest) as a party's
/// fixed-point weights.
pub fn load_party(
    dir: &std::path::Path,
    manifest: &unfed_shard::Manifest,
    role: Role,
    view: Option<ViewFile>,
    max_positions: usize,
) -> Result<Party, crate::NodeError> {
    check_role(manifest, 0, true)?;
    let plan = manifest
        .mpc
        .expect("check_role: the manifest has an MPC plan");
    let shard = unfed_shard::load_verified_shard(dir, manifest, 0).map_err(Box::new)?;
    let cfg = shard.model.config().clone();
    let weights = crate::mpc_weights::load(&shard.checkpoint, &cfg, plan)
        .map_err(|e| crate::NodeError::Pair(e.to_string()))?;
    Ok(Party {
        role,
        spec: crate::mpc_weights::spec(&cfg, plan),
        weights: Arc::new(weights),
        view,
        max_positions,
    })
}

/// What both parties hold: the public weights of shard 0 on shares, and where to record.
pub struct Party {
    pub role: Role,
    pub spec: ShardSpec,
    pub weights: Arc<ShardWeights>,
    /// `--record-view`: where what this party receives is written.
    pub view: Option<ViewFile>,
    /// Positions one session may reach.
    pub max_positions: usize,
}

/// The layers of a session's next one-position step when they came ahead of it
/// (`MpcAhead`): a client sends them while the step before runs.
#[derive(Default)]
pub(crate) struct Ahead(Option<Material>);

/// One part of a step's material in its wire form: the party's own (a seed, then words) and
/// the common words.
pub(crate) type Wire<'a> = (&'a [u8], &'a [u8]);

impl Ahead {
    /// Keeps the layers of the next step (in their wire form): one step's at a time.
    pub fn keep(&mut self, layers: Wire) -> Result<(), tonic::Status> {
        if self.0.is_some() {
            return Err(tonic::Status::invalid_argument(
                "the layers of the next MPC step came ahead twice",
            ));
        }
        self.0 = Some(part(layers)?);
        Ok(())
    }

    /// A step's material from its wire form: the layers from the step itself or, when it
    /// carries none, those that came ahead (for one position).
    pub fn material(
        &mut self,
        positions: usize,
        input: Wire,
        layers: Wire,
    ) -> Result<StepMaterial, tonic::Status> {
        let layers = match (self.0.take(), layers.0.is_empty()) {
            (None, false) => part(layers)?,
            (Some(ahead), true) if positions == 1 => ahead,
            (None, true) => {
                return Err(tonic::Status::invalid_argument(
                    "an MPC step without layers, and none came ahead",
                ));
            }
            (Some(_), _) => {
                return Err(tonic::Status::invalid_argument(
                    "the layers that came ahead are for the next one-position MPC step",
                ));
            }
        };
        Ok(StepMaterial {
            input: part(input)?,
            layers,
        })
    }
}

fn part((own, common): Wire) -> Result<Material, tonic::Status> {
    Material::from_bytes(own, common).ok_or_else(|| {
        tonic::Status::invalid_argument("the dealt material is not a seed and words")
    })
}

/// One step's work for a party, on a compute thread.
pub(crate) struct StepJob {
    pub party: Arc<Party>,
    pub session: u64,
    pub step: u32,
    pub positions: usize,
    pub material: StepMaterial,
    /// B: the pad taken off its output share.
    pub pad: Option<Vec<u64>>,
    pub state: ShardState,
}

impl StepJob {
    /// Runs the step over `link`: for A, the output masked by B's pad; for B, nothing (its
    /// share, minus the pad, went to A as the last message).
    pub fn run(self, link: &mut dyn Link) -> Result<(Option<Vec<u64>>, ShardState), MpcError> {
        let StepJob {
            party: p,
            session,
            step,
            positions,
            material,
            pad,
            mut state,
        } = self;
        let dealt = p.view.is_some().then(|| material.words());
        let mut rec = unfed_mpc::link::RecordingLink::new(link, p.view.is_some());
        let (out, _) = unfed_mpc::shard::run(
            p.role, &p.spec, &p.weights, positions, &mut state, material, &mut rec,
        )?;
        let result = match (p.role, pad) {
            (Role::B, Some(pad)) => {
                rec.exchange(&ring::sub(&out, &pad))?;
                None
            }
            (Role::A, None) => {
                let theirs = rec.exchange(&[])?;
                if theirs.len() != out.len() {
                    return Err(MpcError::PeerLength {
                        expected: out.len(),
                        got: theirs.len(),
                    });
                }
                Some(ring::add(&out, &theirs))
            }
            _ => return Err(MpcError::Link("a pad is B's alone".into())),
        };
        if let (Some(view), Some(dealt)) = (&p.view, dealt) {
            let records = records(session, step, dealt, &rec.received, &rec.rounds, p.role);
            view.write(&records)
                .map_err(|e| MpcError::Link(format!("recording the view: {e}")))?;
        }
        Ok((result, state))
    }
}

/// What a party records of one step: what it was dealt, then what the other party sent, round
/// by round.
fn records(
    session: u64,
    step: u32,
    dealt: Vec<u64>,
    received: &[u64],
    rounds: &[usize],
    role: Role,
) -> Vec<view::Record> {
    let record = |label: &str, round: usize, words: Vec<u64>| view::Record {
        label: label.into(),
        session,
        step,
        round: round as u32,
        words,
    };
    let mut out = vec![record("dealt", 0, dealt)];
    for (i, &start) in rounds.iter().enumerate() {
        let end = rounds.get(i + 1).copied().unwrap_or(received.len());
        let last = i + 1 == rounds.len();
        // The last exchange carries the output: B's share minus its pad, to A.
        let label = match (last, role) {
            (true, Role::A) => "output",
            _ => "peer",
        };
        if !(last && role == Role::B) {
            out.push(record(label, i, received[start..end].to_vec()));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::Ahead;

    /// A seed and two words, in the wire form.
    fn wire(fill: u8) -> Vec<u8> {
        vec![fill; 16 + 16]
    }

    #[test]
    fn layers_that_came_ahead_serve_the_next_one_position_step_only() {
        let common = [5u8; 24];
        let (one, two) = (wire(1), wire(2));
        let (input, none) = ((&one[..], &common[..]), (&[][..], &[][..]));
        let mut ahead = Ahead::default();
        let e = ahead.material(1, input, none).unwrap_err();
        assert!(e.message().contains("none came ahead"), "{e}");

        ahead.keep((&two, &common[..16])).unwrap();
        let e = ahead.keep((&wire(3), &[])).unwrap_err();
        assert!(e.message().contains("ahead twice"), "{e}");
        let m = ahead.material(1, input, none).unwrap();
        assert_eq!((m.input.seed, m.layers.seed), ([1; 16], [2; 16]));
        assert_eq!((m.input.common.len(), m.layers.common.len()), (3, 2));
        // Used once: the step after needs its own again.
        assert!(ahead.material(1, input, none).is_err());

        // Layers that came ahead are for one position, and a step that brings its own while
        // some are held is refused: the client and the pair disagree about what was dealt.
        let four = wire(4);
        for (positions, layers) in [(2, none), (1, (&four[..], &[][..]))] {
            let mut ahead = Ahead::default();
            ahead.keep((&two, &[])).unwrap();
            let e = ahead.material(positions, input, layers).unwrap_err();
            assert!(e.message().contains("next one-position"), "{e}");
        }
        for bad in [(&[0u8; 20][..], &[][..]), (&two[..], &[0u8; 12][..])] {
            let e = Ahead::default().keep(bad).unwrap_err();
            assert!(e.message().contains("not a seed and words"), "{e}");
        }
    }
}
