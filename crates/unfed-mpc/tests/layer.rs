//! A decoder layer on shares against a plaintext f64 layer on the same random weights: a
//! prefill and decode steps over the secret-shared KV cache, for both RoPE layouts and with
//! and without biases, then the embedding lookup on shared one-hot rows.

mod common;

use common::{Weights, f32s, random_weights, raw, reals};
use unfed_mpc::embedding::{self, Embedding};
use unfed_mpc::layer::{self, LayerShape, LayerWeights, SharedKv};
use unfed_mpc::prg::Prg;
use unfed_mpc::ring::{self, decode};
use unfed_mpc::{Ctx, Material, MemLink, Role, mem_pair};

/// `W (rows×cols) · x` for each row of `x`.
fn matvec(w: &[f32], rows: usize, x: &[f64]) -> Vec<f64> {
    let cols = x.len();
    (0..rows)
        .map(|r| (0..cols).map(|c| w[r * cols + c] as f64 * x[c]).sum())
        .collect()
}

fn rmsnorm(x: &[f64], g: &[f32], eps: f64) -> Vec<f64> {
    let ms = x.iter().map(|v| v * v).sum::<f64>() / x.len() as f64;
    x.iter()
        .zip(g)
        .map(|(v, g)| v / (ms + eps).sqrt() * *g as f64)
        .collect()
}

fn rope(s: &LayerShape, head: &mut [f64], pos: usize) {
    let (d, half) = (s.head_dim, s.head_dim / 2);
    for f in 0..half {
        let freq = 1.0 / s.rope_theta.powf((2 * f) as f32 / d as f32);
        let angle = pos as f32 * freq;
        let (c, sn) = (angle.cos() as f64, angle.sin() as f64);
        let (a, b) = if s.interleaved {
            (2 * f, 2 * f + 1)
        } else {
            (f, f + half)
        };
        let (x0, x1) = (head[a], head[b]);
        head[a] = x0 * c - x1 * sn;
        head[b] = x0 * sn + x1 * c;
    }
}

/// The plaintext layer on one position at `pos`, with its caches of rotated keys and values.
fn plain_layer(
    s: &LayerShape,
    w: &Weights,
    x: &[f64],
    pos: usize,
    keys: &mut Vec<Vec<f64>>,
    values: &mut Vec<Vec<f64>>,
) -> Vec<f64> {
    let (d, nh, nkv) = (s.head_dim, s.n_head, s.n_kv_head);
    let xn = rmsnorm(x, &w.attn_norm, s.eps);
    let mut q = matvec(&w.q, nh * d, &xn);
    let mut k = matvec(&w.k, nkv * d, &xn);
    let mut v = matvec(&w.v, nkv * d, &xn);
    if let Some(b) = &w.bias {
        let all: Vec<&mut f64> = q
            .iter_mut()
            .chain(k.iter_mut())
            .chain(v.iter_mut())
            .collect();
        for (o, b) in all.into_iter().zip(b) {
            *o += *b as f64;
        }
    }
    q.chunks_mut(d).for_each(|h| rope(s, h, pos));
    k.chunks_mut(d).for_each(|h| rope(s, h, pos));
    keys.push(k);
    values.push(v);
    let mut attn = vec![0.0; nh * d];
    for head in 0..nh {
        let g = head / (nh / nkv);
        let qh = &q[head * d..][..d];
        let scores: Vec<f64> = keys
            .iter()
            .map(|k| {
                qh.iter()
                    .zip(&k[g * d..][..d])
                    .map(|(a, b)| a * b)
                    .sum::<f64>()
                    / (d as f64).sqrt()
            })
            .collect();
        let m = scores.iter().cloned().fold(f64::MIN, f64::max);
        let e: Vec<f64> = scores.iter().map(|s| (s - m).exp()).collect();
        let sum: f64 = e.iter().sum();
        for (p, v) in e.iter().zip(values.iter()) {
            for c in 0..d {
                attn[head * d + c] += p / sum * v[g * d + c];
            }
        }
    }
    let o = matvec(&w.o, s.hidden, &attn);
    let x: Vec<f64> = x.iter().zip(&o).map(|(a, b)| a + b).collect();
    let xn = rmsnorm(&x, &w.ffn_norm, s.eps);
    let g = matvec(&w.gate, s.ffn, &xn);
    let u = matvec(&w.up, s.ffn, &xn);
    let hmid: Vec<f64> = g
        .iter()
        .zip(&u)
        .map(|(g, u)| g / (1.0 + (-g).exp()) * u)
        .collect();
    let down = matvec(&w.down, s.hidden, &hmid);
    x.iter().zip(&down).map(|(a, b)| a + b).collect()
}

/// Dealer, A and B for a run of steps, each party keeping its shares of the cache.
struct Pair {
    rng: Prg,
    kv: [SharedKv; 3],
}

impl Pair {
    fn new(seed: u8) -> Self {
        Self {
            rng: Prg::new(&[seed; 16]),
            kv: Default::default(),
        }
    }

    /// One step on `t` positions of plaintext input `x`, shared here; returns the output.
    fn step(&mut self, s: &LayerShape, w: &LayerWeights, x: &[u64], t: usize) -> Vec<u64> {
        let seeds = [self.rng.next_seed(), self.rng.next_seed()];
        let [kv_dealer, kv_a, kv_b] = &mut self.kv;
        let mut dealer = Ctx::dealer(seeds);
        layer::forward(&mut dealer, s, None, &vec![0; x.len()], t, kv_dealer).unwrap();
        let [ma, mb] = dealer.into_material().unwrap();
        let [xa, xb] = ring::share(x, &self.rng.take(x.len()));
        let (mut la, mut lb) = mem_pair();
        let party = |role, m: Material, share: Vec<u64>, link: &mut MemLink, kv: &mut SharedKv| {
            let mut ctx = Ctx::party(role, m, link);
            let out = layer::forward(&mut ctx, s, Some(w), &share, t, kv).unwrap();
            ctx.finish().unwrap();
            out
        };
        let (oa, ob) = std::thread::scope(|sc| {
            let a = sc.spawn(|| party(Role::A, ma, xa, &mut la, kv_a));
            let b = sc.spawn(|| party(Role::B, mb, xb, &mut lb, kv_b));
            (a.join().unwrap(), b.join().unwrap())
        });
        ring::reveal(&oa, &ob)
    }
}

/// A small layer's shape (its random weights' gate activations stay under 2^5).
fn small_shape(interleaved: bool) -> LayerShape {
    LayerShape {
        hidden: 16,
        ffn: 24,
        n_head: 4,
        n_kv_head: 2,
        head_dim: 4,
        rope_theta: 10000.0,
        interleaved,
        eps: 1e-5,
        gate_log2: 5,
    }
}

fn check_layer(interleaved: bool, bias: bool, seed: u64) {
    let s = small_shape(interleaved);
    let w = random_weights(&s, seed, bias);
    let fixed = LayerWeights::new(&s, &raw(&w)).unwrap();
    let mut pair = Pair::new(seed as u8);
    let (mut keys, mut values) = (Vec::new(), Vec::new());
    let mut pos = 0;
    let mut worst: f64 = 0.0;
    for t in [3usize, 1, 1, 2] {
        let x: Vec<f64> = reals(seed + pos as u64 + 100, t * s.hidden, -1.0, 1.0)
            .iter()
            .map(|v| decode(ring::encode(*v)))
            .collect();
        let got = pair.step(
            &s,
            &fixed,
            &x.iter().map(|v| ring::encode(*v)).collect::<Vec<_>>(),
            t,
        );
        for i in 0..t {
            let want = plain_layer(
                &s,
                &w,
                &x[i * s.hidden..][..s.hidden],
                pos + i,
                &mut keys,
                &mut values,
            );
            for (g, w) in got[i * s.hidden..][..s.hidden].iter().zip(&want) {
                worst = worst.max((decode(*g) - w).abs());
            }
        }
        pos += t;
    }
    eprintln!("layer max abs error {worst:e}");
    assert!(
        worst < 1e-4,
        "interleaved={interleaved} bias={bias}: max abs error {worst:e}"
    );
}

#[test]
fn a_layer_on_shares_matches_the_plaintext_layer_through_prefill_and_decode() {
    check_layer(true, false, 1);
    check_layer(false, true, 2);
}

#[test]
fn the_embedding_lookup_on_shared_one_hot_rows_is_exact() {
    let (vocab, hidden) = (50, 40);
    // Arbitrary values (held at full width) and block-quantized ones, as a quantized
    // checkpoint dequantizes them (held in 8-bit blocks; the last block is short).
    let arbitrary = f32s(3, vocab * hidden, -0.1, 0.1);
    let quantized: Vec<f32> = f32s(4, vocab * hidden, 0.0, 256.0)
        .iter()
        .enumerate()
        .map(|(i, q)| {
            let (r, b) = (i / hidden, i % hidden / 32);
            let d = 2f32.powi(-(((r + b) % 9) as i32) - 6);
            q.floor() * d - ((3 * r + b) % 5) as f32 * 0.01
        })
        .collect();
    // As a checkpoint in 8-bit blocks without minimums has them: `d·q`, `q` from −128 to 127
    // (the extremes included).
    let centred: Vec<f32> = f32s(5, vocab * hidden, -128.0, 128.0)
        .iter()
        .enumerate()
        .map(|(i, q)| {
            let (r, b) = (i / hidden, i % hidden / 32);
            let q = match i % 97 {
                0 => -128.0,
                1 => 127.0,
                _ => q.floor(),
            };
            q * 2f32.powi(-(((r + 2 * b) % 9) as i32) - 6)
        })
        .collect();
    let forms = [
        (arbitrary, false, false),
        (quantized, true, false),
        (centred, true, true),
    ];
    for (table, compact, centred) in forms {
        let e = Embedding::encode(&table, vocab, hidden).unwrap();
        assert_eq!((e.compact(), e.centred()), (compact, centred));
        let tokens = [7u32, 0, 49, 7];
        let out = common::run(9, &[], |ctx, _| {
            let onehot = embedding::onehot_input(ctx, &tokens, tokens.len(), vocab)?;
            let looked = ctx.role().map(|_| e.lookup(&onehot, tokens.len()));
            embedding::finish(ctx, tokens.len(), hidden, looked)
        })
        .output;
        for (i, &tok) in tokens.iter().enumerate() {
            let want: Vec<u64> = table[tok as usize * hidden..][..hidden]
                .iter()
                .map(|v| ring::encode(*v as f64))
                .collect();
            assert_eq!(&out[i * hidden..][..hidden], want.as_slice());
        }
    }
}

#[test]
fn the_gate_bound_holds_for_any_input_and_a_narrower_one_is_refused() {
    // Two rows of a 4-wide gate: ‖g ⊙ W_i‖₂ = 1 and 100, so the bound is 1.01·√4·100 = 202.
    let norm = [1.0, 2.0, 1.0, 1.0];
    let gate = [1.0, 0.0, 0.0, 0.0, 0.0, 50.0, 0.0, 0.0];
    assert_eq!(layer::gate_log2(4, &norm, &gate), 8);
    // At least GATE_LOG2_MIN (SiLU's clamp needs the room), at most GATE_LOG2_MAX.
    assert_eq!(layer::gate_log2(4, &norm, &gate[..4]), layer::GATE_LOG2_MIN);
    assert_eq!(
        layer::gate_log2(4, &norm, &[1e9, 0.0, 0.0, 0.0]),
        layer::GATE_LOG2_MAX
    );
    assert_eq!(
        layer::gate_log2(4, &norm, &[f32::NAN, 0.0, 0.0, 0.0]),
        layer::GATE_LOG2_MAX
    );

    // Random layers, and inputs made to hit the bound: the RMSNorm of any input times each
    // row stays below 2^gate_log2, and the worst case (the input along a row) comes close.
    let mut s = small_shape(false);
    for seed in 0..20 {
        let w = random_weights(&s, seed, false);
        let l = layer::gate_log2(s.hidden, &w.ffn_norm, &w.gate);
        let bound = (l as f64).exp2();
        let (h, eps) = (s.hidden, s.eps);
        let gate_of = |x: &[f64], row: &[f32]| {
            let rms = (x.iter().map(|v| v * v).sum::<f64>() / h as f64 + eps).sqrt();
            let terms = row.iter().zip(&w.ffn_norm).zip(x);
            terms
                .map(|((w, g), x)| *w as f64 * *g as f64 * x / rms)
                .sum::<f64>()
        };
        let mut worst: f64 = 0.0;
        for (i, row) in w.gate.chunks(h).enumerate() {
            // Along the row (g ⊙ W_i): Cauchy–Schwarz is tight there.
            let along: Vec<f64> = row
                .iter()
                .zip(&w.ffn_norm)
                .map(|(w, g)| 1e3 * (*w * *g) as f64)
                .collect();
            worst = worst.max(gate_of(&along, row).abs());
            for x in [reals(seed * 100 + i as u64, h, -5.0, 5.0), vec![1e-3; h]] {
                assert!(gate_of(&x, row).abs() < bound);
            }
        }
        assert!(
            worst < bound && (l == 5 || worst > bound / 2.0 / 1.02),
            "{worst} vs 2^{l}"
        );
        // Weights whose gate could exceed the shape's bound are refused.
        s.gate_log2 = l - 1;
        let e = LayerWeights::new(&s, &raw(&w)).unwrap_err().to_string();
        assert!(e.contains("gate activations can reach"), "{e}");
        s.gate_log2 = l;
        LayerWeights::new(&s, &raw(&w)).unwrap();
    }
}
