//! Shard 0 on shares: the embedding lookup on shared one-hot rows and the first `k` decoder
//! layers, one step at a time over secret-shared KV caches. [`LocalPair`] runs the dealer and
//! both parties in one process (tests, benchmarks); the network runs the same [`step`].

use std::time::{Duration, Instant};

use crate::embedding::{self, Embedding};
use crate::layer::{self, LayerShape, LayerWeights, SharedKv};
use crate::link::RecordingLink;
use crate::prg::{Prg, Seed};
use crate::{Ctx, Material, MpcError, Role, Stats, mem_pair, ring};

/// What the dealer and the parties agree on: shapes only.
#[derive(Clone, Debug, PartialEq)]
pub struct ShardSpec {
    pub layer: LayerShape,
    pub vocab: usize,
    /// Decoder layers run on shares.
    pub k: usize,
}

/// The public weights a party holds.
pub struct ShardWeights {
    /// `[vocab][hidden]`.
    pub embedding: Embedding,
    pub layers: Vec<LayerWeights>,
}

/// One party's (or the dealer's) state of a session: the shared caches of its layers.
#[derive(Clone, Debug, Default)]
pub struct ShardState {
    kv: Vec<SharedKv>,
}

impl ShardState {
    pub fn positions(&self) -> usize {
        self.kv.first().map_or(0, SharedKv::positions)
    }
}

/// One step on `t` new tokens: shares of the output hidden states (`t × hidden`). The dealer
/// passes the tokens (and no weights); the parties pass `&[]` and their weights.
pub fn step(
    ctx: &mut Ctx,
    spec: &ShardSpec,
    weights: Option<&ShardWeights>,
    tokens: &[u32],
    t: usize,
    state: &mut ShardState,
) -> Result<Vec<u64>, MpcError> {
    if state.kv.is_empty() {
        state.kv = vec![SharedKv::default(); spec.k];
    }
    let onehot = embedding::onehot_input(ctx, tokens, t, spec.vocab)?;
    let mut x = match weights {
        Some(w) => w.embedding.lookup(&onehot, t),
        None => vec![0; t * spec.layer.hidden],
    };
    for (i, kv) in state.kv.iter_mut().enumerate() {
        x = layer::forward(ctx, &spec.layer, weights.map(|w| &w.layers[i]), &x, t, kv)?;
    }
    Ok(x)
}

/// The pad party B takes off its output share before handing it to party A, so that A holds
/// `output - pad` (uniform to A) and shard 1, given `seed` by the client, adds `pad` back.
pub fn pad(seed: &Seed, n: usize) -> Vec<u64> {
    Prg::new(seed).take(n)
}

/// Dealer, party A and party B of one session in one process, each party on its own thread
/// for every step, joined by an in-memory link.
pub struct LocalPair<'w> {
    spec: ShardSpec,
    weights: &'w ShardWeights,
    rng: Prg,
    states: [ShardState; 3],
    /// Party A's traffic so far.
    pub stats: Stats,
    /// Bytes dealt to A and to B so far.
    pub dealt: [usize; 2],
    /// Time spent dealing, and running the two parties, so far.
    pub deal_time: Duration,
    pub pair_time: Duration,
    /// What A and B received, when recording ([`LocalPair::record_views`]).
    pub views: Option<[View; 2]>,
}

/// Everything one party received in a session: from the other party, and from the dealer.
#[derive(Clone, Debug, Default)]
pub struct View {
    /// Ring elements the other party sent, every round of every step.
    pub link: Vec<u64>,
    /// The dealt words of every step (seeds not included).
    pub material: Vec<u64>,
}

impl<'w> LocalPair<'w> {
    /// A session whose every random choice comes from `seed` (tests and benchmarks; a client
    /// seeds from the operating system).
    pub fn new(spec: ShardSpec, weights: &'w ShardWeights, seed: Seed) -> Self {
        Self {
            spec,
            weights,
            rng: Prg::new(&seed),
            states: Default::default(),
            stats: Stats::default(),
            dealt: [0; 2],
            deal_time: Duration::ZERO,
            pair_time: Duration::ZERO,
            views: None,
        }
    }

    /// Keeps what each party receives from now on, in [`LocalPair::views`].
    pub fn record_views(&mut self) {
        self.views = Some(Default::default());
    }

    /// One step: the hidden states shard 1 reconstructs from the two parties' shares.
    pub fn step(&mut self, tokens: &[u32]) -> Result<Vec<f32>, MpcError> {
        let t = tokens.len();
        let start = Instant::now();
        let seeds = [
            self.rng.next_seed(),
            self.rng.next_seed(),
            self.rng.next_seed(),
        ];
        let [dealer_state, state_a, state_b] = &mut self.states;
        let mut dealer = Ctx::dealer(seeds);
        step(&mut dealer, &self.spec, None, tokens, t, dealer_state)?;
        let [ma, mb] = dealer.into_material().expect("a dealer");
        self.dealt[0] += ma.len_bytes();
        self.dealt[1] += mb.len_bytes();
        let dealt = Instant::now();
        self.deal_time += dealt - start;
        let (mut la, mut lb) = mem_pair();
        let (spec, weights) = (&self.spec, self.weights);
        let recording = self.views.is_some();
        let party = |role, m: Material, link: &mut crate::MemLink, state: &mut ShardState| {
            let material = if recording {
                m.words.clone()
            } else {
                Vec::new()
            };
            let mut recorder = RecordingLink::new(link, recording);
            let mut ctx = Ctx::party(role, m, &mut recorder);
            let out = step(&mut ctx, spec, Some(weights), &[], t, state)?;
            ctx.finish()?;
            let stats = ctx.stats();
            drop(ctx);
            let view = View {
                link: recorder.received,
                material,
            };
            Ok::<_, MpcError>((out, stats, view))
        };
        let (a, b) = std::thread::scope(|s| {
            let a = s.spawn(|| party(Role::A, ma, &mut la, state_a));
            let b = s.spawn(|| party(Role::B, mb, &mut lb, state_b));
            (a.join().expect("party A"), b.join().expect("party B"))
        });
        self.pair_time += dealt.elapsed();
        let ((out_a, stats, view_a), (out_b, _, view_b)) = (a?, b?);
        if let Some(views) = &mut self.views {
            for (all, new) in views.iter_mut().zip([view_a, view_b]) {
                all.link.extend(new.link);
                all.material.extend(new.material);
            }
        }
        self.stats.rounds += stats.rounds;
        self.stats.words_sent += stats.words_sent;
        Ok(ring::decode_all(&ring::reveal(&out_a, &out_b))
            .into_iter()
            .map(|v| v as f32)
            .collect())
    }
}
