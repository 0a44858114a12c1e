//! Runs a protocol the way the network does: the dealer first, on no data, then parties A and
//! B on two threads joined by an in-memory link, each on its share of the input.

#![allow(dead_code)]

use unfed_mpc::layer::{LayerShape, RawLayer};
use unfed_mpc::prg::Prg;
use unfed_mpc::{Ctx, Material, MpcError, Role, Stats, mem_pair, ring};

/// What one run produced.
pub struct Run {
    /// The reconstructed output.
    pub output: Vec<u64>,
    /// Party A's traffic.
    pub stats: Stats,
    /// Words dealt to A alone, to B alone, and to both alike.
    pub dealt: [usize; 3],
}

/// `protocol` on `input`, from the seed `seed` (every random choice of dealer and sharing).
pub fn run<F>(seed: u64, input: &[u64], protocol: F) -> Run
where
    F: Fn(&mut Ctx, &[u64]) -> Result<Vec<u64>, MpcError> + Sync,
{
    let mut rng = Prg::new(
        &[seed.to_le_bytes(), seed.to_le_bytes()]
            .concat()
            .try_into()
            .unwrap(),
    );
    let seeds = [rng.next_seed(), rng.next_seed()];
    let mut dealer = Ctx::dealer(seeds);
    protocol(&mut dealer, &vec![0; input.len()]).expect("the dealer never fails");
    let [material_a, material_b] = dealer.into_material().unwrap();
    let dealt = [
        material_a.words.len(),
        material_b.words.len(),
        material_a.common.len(),
    ];
    let [share_a, share_b] = ring::share(input, &rng.take(input.len()));
    let (mut link_a, mut link_b) = mem_pair();
    let party = |role: Role, material: Material, share: Vec<u64>, link: &mut unfed_mpc::MemLink| {
        let mut ctx = Ctx::party(role, material, link);
        let out = protocol(&mut ctx, &share).expect("the protocol runs");
        ctx.finish().expect("all material used");
        (out, ctx.stats())
    };
    let ((out_a, stats), (out_b, stats_b)) = std::thread::scope(|s| {
        let a = s.spawn(|| party(Role::A, material_a, share_a, &mut link_a));
        let b = s.spawn(|| party(Role::B, material_b, share_b, &mut link_b));
        (a.join().unwrap(), b.join().unwrap())
    });
    assert_eq!(stats.rounds, stats_b.rounds);
    Run {
        output: ring::reveal(&out_a, &out_b),
        stats,
        dealt,
    }
}

/// Reals from a seed, uniform in `[lo, hi)`.
pub fn reals(seed: u64, n: usize, lo: f64, hi: f64) -> Vec<f64> {
    let mut rng = Prg::new(
        &[(seed ^ 0x5eed).to_le_bytes(), seed.to_le_bytes()]
            .concat()
            .try_into()
            .unwrap(),
    );
    (0..n)
        .map(|_| lo + (hi - lo) * (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64)
        .collect()
}

pub fn encode(v: &[f64]) -> Vec<u64> {
    v.iter().map(|&v| ring::encode(v)).collect()
}

pub struct Weights {
    pub attn_norm: Vec<f32>,
    pub q: Vec<f32>,
    pub k: Vec<f32>,
    pub v: Vec<f32>,
    pub bias: Option<Vec<f32>>,
    pub o: Vec<f32>,
    pub ffn_norm: Vec<f32>,
    pub gate: Vec<f32>,
    pub up: Vec<f32>,
    pub down: Vec<f32>,
}

pub fn f32s(seed: u64, n: usize, lo: f64, hi: f64) -> Vec<f32> {
    reals(seed, n, lo, hi)
        .into_iter()
        .map(|v| v as f32)
        .collect()
}

pub fn random_weights(s: &LayerShape, seed: u64, bias: bool) -> Weights {
    let (h, f) = (s.hidden, s.ffn);
    let (qd, kvd) = (s.n_head * s.head_dim, s.n_kv_head * s.head_dim);
    let w = 1.0 / (h as f64).sqrt();
    Weights {
        attn_norm: f32s(seed, h, 0.5, 1.5),
        q: f32s(seed + 1, qd * h, -2.0 * w, 2.0 * w),
        k: f32s(seed + 2, kvd * h, -2.0 * w, 2.0 * w),
        v: f32s(seed + 3, kvd * h, -w, w),
        bias: bias.then(|| f32s(seed + 4, qd + 2 * kvd, -0.5, 0.5)),
        o: f32s(seed + 5, h * qd, -w, w),
        ffn_norm: f32s(seed + 6, h, 0.5, 1.5),
        gate: f32s(seed + 7, f * h, -2.0 * w, 2.0 * w),
        up: f32s(seed + 8, f * h, -w, w),
        down: f32s(seed + 9, h * f, -w, w),
    }
}

pub fn raw(w: &Weights) -> RawLayer<'_> {
    RawLayer {
        attn_norm: &w.attn_norm,
        q: &w.q,
        k: &w.k,
        v: &w.v,
        qkv_bias: w.bias.as_deref(),
        o: &w.o,
        ffn_norm: &w.ffn_norm,
        gate: &w.gate,
        up: &w.up,
        down: &w.down,
    }
}
