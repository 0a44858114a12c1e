//! Shard 0 on shares: the embedding lookup on shared one-hot rows and the first `k` decoder
//! layers, one step at a time over secret-shared KV caches. [`LocalPair`] runs the dealer and
//! both parties in one process (tests, benchmarks); the network deals with [`deal_input`] and
//! [`deal_layers`] and runs the same [`run`].

use std::time::{Duration, Instant};

use crate::embedding::{self, Embedding};
use crate::layer::{self, LayerShape, LayerWeights, SharedKv};
use crate::link::RecordingLink;
use crate::prg::{Prg, Seed};
use crate::{Ctx, Link, Material, MpcError, Role, Stats, mem_pair, ring};

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

/// One party's (or the dealer's) state of a session: the shared caches of its layers (and at
/// the dealer, the sizes of what it dealt last, to allocate the next step's words at once).
#[derive(Clone, Debug, Default)]
pub struct ShardState {
    kv: Vec<SharedKv>,
    dealt: [usize; 3],
}

impl ShardState {
    pub fn positions(&self) -> usize {
        self.kv.first().map_or(0, SharedKv::positions)
    }
}

/// One party's material for one step, in two parts dealt apart: the input's (the keys of the
/// token ids, dealt once the tokens are known) and the layers' (independent of the tokens, so a
/// client can deal it while the step before is still running).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StepMaterial {
    pub input: Material,
    pub layers: Material,
}

impl StepMaterial {
    /// Every dealt word, the input's first, each part's own words before its common ones
    /// (seeds not included).
    pub fn words(&self) -> Vec<u64> {
        let (i, l) = (&self.input, &self.layers);
        [&i.words[..], &i.common, &l.words, &l.common].concat()
    }
}

/// Bytes a dealer sends for one part of a step: each party's own part, and the common words
/// once.
pub fn wire_bytes([a, b]: &[Material; 2]) -> usize {
    a.own_len_bytes() + b.own_len_bytes() + 8 * a.common.len()
}

/// Deals the input part of a step on `tokens`: each party's shares of their one-hot rows.
pub fn deal_input(
    rng: &mut Prg,
    spec: &ShardSpec,
    tokens: &[u32],
) -> Result<[Material; 2], MpcError> {
    let mut dealer = dealer(rng);
    embedding::onehot_input(&mut dealer, tokens, tokens.len(), spec.vocab)?;
    Ok(dealer.into_material().expect("a dealer"))
}

/// Deals the layers part of a step adding `t` positions, advancing the dealer's `state` (the
/// masks it dealt for the shared caches) as the parties' steps will advance theirs.
pub fn deal_layers(
    rng: &mut Prg,
    spec: &ShardSpec,
    t: usize,
    state: &mut ShardState,
) -> Result<[Material; 2], MpcError> {
    let mut dealer = dealer(rng);
    // Room for a step somewhat larger than the last (the softmax's keys grow with the
    // context), in whole megabytes, so that steps of about one size reuse the same memory.
    dealer.reserve(state.dealt.map(|n| (n + n / 16).next_multiple_of(1 << 17)));
    layers(&mut dealer, spec, None, t, state)?;
    state.dealt = dealer.dealt_len();
    Ok(dealer.into_material().expect("a dealer"))
}

/// A party's step adding `t` positions: its share of the output hidden states (`t × hidden`)
/// and its traffic. Every dealt word must be used.
pub fn run(
    role: Role,
    spec: &ShardSpec,
    weights: &ShardWeights,
    t: usize,
    state: &mut ShardState,
    material: StepMaterial,
    link: &mut dyn Link,
) -> Result<(Vec<u64>, Stats), MpcError> {
    let mut ctx = Ctx::party(role, material.input, link);
    let onehot = embedding::onehot_input(&mut ctx, &[], t, spec.vocab)?;
    ctx.finish()?;
    let first = ctx.stats();
    let looked = weights.embedding.lookup(&onehot, t);
    let mut ctx = Ctx::party(role, material.layers, link);
    let out = layers(&mut ctx, spec, Some((weights, looked)), t, state)?;
    ctx.finish()?;
    let second = ctx.stats();
    Ok((
        out,
        Stats {
            rounds: first.rounds + second.rounds,
            words_sent: first.words_sent + second.words_sent,
        },
    ))
}

fn dealer(rng: &mut Prg) -> Ctx<'static> {
    Ctx::dealer([rng.next_seed(), rng.next_seed()])
}

/// The end of the embedding lookup and the decoder layers on its output (the dealer passes
/// no weights and no lookup).
fn layers(
    ctx: &mut Ctx,
    spec: &ShardSpec,
    party: Option<(&ShardWeights, embedding::Lookup)>,
    t: usize,
    state: &mut ShardState,
) -> Result<Vec<u64>, MpcError> {
    let (weights, looked) = party.unzip();
    let mut x = embedding::finish(ctx, t, spec.layer.hidden, looked)?;
    if state.kv.is_empty() {
        state.kv = vec![SharedKv::default(); spec.k];
    }
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
    /// Bytes dealt so far (A's and B's own, and the common words once).
    pub dealt: usize,
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
            dealt: 0,
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
        let [dealer_state, state_a, state_b] = &mut self.states;
        let input = deal_input(&mut self.rng, &self.spec, tokens)?;
        let layers = deal_layers(&mut self.rng, &self.spec, t, dealer_state)?;
        self.dealt += wire_bytes(&input) + wire_bytes(&layers);
        let ([ia, ib], [la, lb]) = (input, layers);
        let (ma, mb) = (
            StepMaterial {
                input: ia,
                layers: la,
            },
            StepMaterial {
                input: ib,
                layers: lb,
            },
        );
        let dealt = Instant::now();
        self.deal_time += dealt - start;
        let (mut link_a, mut link_b) = mem_pair();
        let (spec, weights) = (&self.spec, self.weights);
        let recording = self.views.is_some();
        let party = |role, m: StepMaterial, link: &mut crate::MemLink, state: &mut ShardState| {
            let material = if recording { m.words() } else { Vec::new() };
            let mut recorder = RecordingLink::new(link, recording);
            let (out, stats) = run(role, spec, weights, t, state, m, &mut recorder)?;
            let view = View {
                link: recorder.received,
                material,
            };
            Ok::<_, MpcError>((out, stats, view))
        };
        let (a, b) = std::thread::scope(|s| {
            let a = s.spawn(|| party(Role::A, ma, &mut link_a, state_a));
            let b = s.spawn(|| party(Role::B, mb, &mut link_b, state_b));
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
