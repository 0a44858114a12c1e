//! Llama/Qwen2 decoder layers on shares, with secret-shared KV
//! caches: what the MPC pair runs for shard 0.
//!
//! Weights are public (they are the model's); activations, keys, values and every
//! intermediate are shared. Public linear maps are local; the products of two shared values
//! (attention scores, attention-weighted values, RMSNorm's scaling, SiLU(gate)·up) and the
//! non-linear functions use the protocols of [`crate::func`]. The dealer runs the same code
//! with no weights (`None`) to make the material.

use crate::func;
use crate::ring::{self, FRAC, encode};
use crate::{Ctx, MpcError};

type R = Result<Vec<u64>, MpcError>;

/// Shapes and constants of one decoder layer.
#[derive(Clone, Debug, PartialEq)]
pub struct LayerShape {
    pub hidden: usize,
    pub ffn: usize,
    pub n_head: usize,
    pub n_kv_head: usize,
    pub head_dim: usize,
    pub rope_theta: f32,
    /// RoPE rotates adjacent pairs (Llama in GGUF layout) rather than the two halves (Qwen2).
    pub interleaved: bool,
    pub eps: f64,
    /// The gate activations are below `2^gate_log2` in magnitude (from the weights:
    /// [`gate_log2`]); SiLU's comparisons look at that many integer bits.
    pub gate_log2: u32,
}

/// Bounds the protocols rely on, as reals: attention scores `< 2^SCORE_LOG2` in magnitude,
/// gate activations `< 2^LayerShape::gate_log2` (`gate_log2` from `GATE_LOG2_MIN`, which
/// SiLU's clamp needs, to `GATE_LOG2_MAX`), RMSNorm's `dim·(mean(x²) + eps)` in
/// `[4^RMS_LO, 4^RMS_HI)`. Values outside give wrong results, not leaks.
pub const SCORE_LOG2: u32 = 11;
pub const GATE_LOG2_MIN: u32 = 5;
pub const GATE_LOG2_MAX: u32 = 12;
pub const RMS_LO: i32 = -6;
pub const RMS_HI: i32 = 11;

/// The least `gate_log2` (from [`GATE_LOG2_MIN`] to [`GATE_LOG2_MAX`]) that bounds a layer's
/// gate activations whatever its input, from its weights alone: the gate's row `i` applies to
/// the RMSNorm of the input, `g ⊙ x/rms(x)`, whose length is at most `√hidden`
/// (`rms(x)² ≥ mean(x²)`), so by Cauchy–Schwarz `|gate_i| ≤ √hidden·‖g ⊙ W_i‖₂`. A margin of 1% covers the fixed point's
/// rounding and RMSNorm's approximation on shares. `gate` is row-major `[ffn][hidden]`.
pub fn gate_log2(hidden: usize, ffn_norm: &[f32], gate: &[f32]) -> u32 {
    // Weights that are not finite fail the fixed-point encoding later; here they ask for the
    // widest range.
    if gate.iter().chain(ffn_norm).any(|v| !v.is_finite()) {
        return GATE_LOG2_MAX;
    }
    let length = |row: &[f32]| {
        let terms = row.iter().zip(ffn_norm);
        terms
            .map(|(w, g)| (*w as f64 * *g as f64).powi(2))
            .sum::<f64>()
            .sqrt()
    };
    let longest = gate.chunks(hidden.max(1)).map(length).fold(0.0, f64::max);
    let bound = 1.01 * (hidden as f64).sqrt() * longest;
    (bound.log2().ceil().max(0.0) as u32).clamp(GATE_LOG2_MIN, GATE_LOG2_MAX)
}

/// A public matrix `[rows][cols]` in fixed point.
#[derive(Clone, Debug)]
pub struct Matrix {
    pub rows: usize,
    pub cols: usize,
    data: Vec<i32>,
}

/// Largest weight magnitude the i32 fixed-point encoding holds.
const WEIGHT_MAX: f64 = (1u64 << (31 - FRAC)) as f64;

impl Matrix {
    /// `w` row-major `[rows][cols]`, each column `j` multiplied by `col_scale[j]` and every
    /// entry of row `i` by `row_scale(i)`.
    pub fn encode(
        name: &str,
        w: &[f32],
        rows: usize,
        cols: usize,
        col_scale: Option<&[f32]>,
        row_scale: impl Fn(usize) -> f64,
    ) -> Result<Self, MpcError> {
        if w.len() != rows * cols {
            return Err(MpcError::Weights(format!(
                "{name}: {} values, expected {rows}×{cols}",
                w.len()
            )));
        }
        let mut data = Vec::with_capacity(w.len());
        for (i, row) in w.chunks(cols).enumerate() {
            let rs = row_scale(i);
            for (j, &v) in row.iter().enumerate() {
                let v = v as f64 * rs * col_scale.map_or(1.0, |c| c[j] as f64);
                if v.is_nan() || v.abs() >= WEIGHT_MAX {
                    return Err(MpcError::Weights(format!(
                        "{name}: weight {v} outside ±{WEIGHT_MAX}"
                    )));
                }
                data.push((v * (1u64 << FRAC) as f64).round() as i32);
            }
        }
        Ok(Self { rows, cols, data })
    }

    /// The entries, row-major.
    pub(crate) fn data(&self) -> &[i32] {
        &self.data
    }

    /// `x (t×cols) · Wᵀ` at twice the fixed-point scale (local).
    fn apply(&self, x: &[u64], t: usize) -> Vec<u64> {
        let mut out = vec![0u64; t * self.rows];
        for (xr, or) in x.chunks(self.cols).zip(out.chunks_mut(self.rows)) {
            for (o, wr) in or.iter_mut().zip(self.data.chunks(self.cols)) {
                *o = wr.iter().zip(xr).fold(0u64, |a, (w, v)| {
                    a.wrapping_add((*w as i64 as u64).wrapping_mul(*v))
                });
            }
        }
        out
    }
}

/// The public weights of one layer, RMSNorm weights and the attention scale folded into the
/// matrices that follow them.
#[derive(Clone, Debug)]
pub struct LayerWeights {
    qkv: Matrix,
    qkv_bias: Option<Vec<u64>>,
    o: Matrix,
    gate_up: Matrix,
    down: Matrix,
}

/// A layer's weights as f32, row-major `[out][in]`, as a checkpoint holds them.
pub struct RawLayer<'a> {
    pub attn_norm: &'a [f32],
    pub q: &'a [f32],
    pub k: &'a [f32],
    pub v: &'a [f32],
    /// q, k and v biases, concatenated (Qwen2).
    pub qkv_bias: Option<&'a [f32]>,
    pub o: &'a [f32],
    pub ffn_norm: &'a [f32],
    pub gate: &'a [f32],
    pub up: &'a [f32],
    pub down: &'a [f32],
}

impl LayerWeights {
    pub fn new(shape: &LayerShape, raw: &RawLayer) -> Result<Self, MpcError> {
        let (h, d) = (shape.hidden, shape.head_dim);
        let (q_dim, kv_dim) = (shape.n_head * d, shape.n_kv_head * d);
        let scale = 1.0 / (d as f64).sqrt();
        let qkv: Vec<f32> = [raw.q, raw.k, raw.v].concat();
        let qkv = Matrix::encode(
            "attn_qkv",
            &qkv,
            q_dim + 2 * kv_dim,
            h,
            Some(raw.attn_norm),
            |i| {
                if i < q_dim { scale } else { 1.0 }
            },
        )?;
        let qkv_bias = match raw.qkv_bias {
            Some(b) if b.len() != q_dim + 2 * kv_dim => {
                return Err(MpcError::Weights(format!("qkv bias: {} values", b.len())));
            }
            Some(b) => Some(
                b.iter()
                    .enumerate()
                    .map(|(i, &v)| encode(v as f64 * if i < q_dim { scale } else { 1.0 }) << FRAC)
                    .collect(),
            ),
            None => None,
        };
        let needed = gate_log2(h, raw.ffn_norm, raw.gate);
        if needed > shape.gate_log2 {
            return Err(MpcError::Weights(format!(
                "the gate activations can reach 2^{needed}, above the bound of 2^{} the shard's \
                 plan states",
                shape.gate_log2
            )));
        }
        let gate_up: Vec<f32> = [raw.gate, raw.up].concat();
        Ok(Self {
            qkv,
            qkv_bias,
            o: Matrix::encode("attn_output", raw.o, h, q_dim, None, |_| 1.0)?,
            gate_up: Matrix::encode(
                "ffn_gate_up",
                &gate_up,
                2 * shape.ffn,
                h,
                Some(raw.ffn_norm),
                |_| 1.0,
            )?,
            down: Matrix::encode("ffn_down", raw.down, h, shape.ffn, None, |_| 1.0)?,
        })
    }
}

/// One party's part of a layer's keys and values, `[kv_head][position][head_dim]`: its share
/// of each row's mask (dealt when the row arrived) and the masked row, opened once and the
/// same at both parties. A row is `open + mask`.
#[derive(Clone, Debug, Default)]
pub struct SharedKv {
    mask_k: Vec<Vec<u64>>,
    open_k: Vec<Vec<u64>>,
    mask_v: Vec<Vec<u64>>,
    open_v: Vec<Vec<u64>>,
    len: usize,
}

impl SharedKv {
    pub fn positions(&self) -> usize {
        self.len
    }
}

/// Runs the layer on `t` new positions of shared hidden states `x` (`t × hidden`),
/// extending the shared cache. `weights` is `None` only at the dealer.
pub fn forward(
    ctx: &mut Ctx,
    shape: &LayerShape,
    weights: Option<&LayerWeights>,
    x: &[u64],
    t: usize,
    kv: &mut SharedKv,
) -> R {
    let (h, d, nh, nkv) = (shape.hidden, shape.head_dim, shape.n_head, shape.n_kv_head);
    let (q_dim, kv_dim) = (nh * d, nkv * d);
    let past = kv.len;

    // Attention block.
    let xn = func::rmsnorm(ctx, x, h, shape.eps, RMS_LO, RMS_HI)?;
    let mut qkv_raw = linear(
        weights.map(|w| &w.qkv),
        xn.as_slice(),
        t,
        q_dim + 2 * kv_dim,
    );
    if let Some(bias) = weights.and_then(|w| w.qkv_bias.as_ref()) {
        for row in qkv_raw.chunks_mut(bias.len()) {
            ctx.add_public_vec(row, bias);
        }
    }
    let qkv = ctx.trunc(&qkv_raw, FRAC)?;
    let (mut q, mut k, v) = split_qkv(&qkv, t, q_dim, kv_dim);
    rope(ctx, shape, &mut q, &mut k, t, past)?;
    let attn = attention(ctx, shape, &q, (&k, &v), kv, t)?;
    let o = ctx.trunc(&linear(weights.map(|w| &w.o), &attn, t, h), FRAC)?;
    let x = ring::add(x, &o);

    // Feed-forward block.
    let xn = func::rmsnorm(ctx, &x, h, shape.eps, RMS_LO, RMS_HI)?;
    let gu = ctx.trunc(
        &linear(weights.map(|w| &w.gate_up), &xn, t, 2 * shape.ffn),
        FRAC,
    )?;
    let (gate, up): (Vec<u64>, Vec<u64>) = {
        let f = shape.ffn;
        let mut g = Vec::with_capacity(t * f);
        let mut u = Vec::with_capacity(t * f);
        for row in gu.chunks(2 * f) {
            g.extend_from_slice(&row[..f]);
            u.extend_from_slice(&row[f..]);
        }
        (g, u)
    };
    let act = func::silu(ctx, &gate, FRAC + shape.gate_log2)?;
    let hmid = func::mul(ctx, &act, &up)?;
    let down = ctx.trunc(&linear(weights.map(|w| &w.down), &hmid, t, h), FRAC)?;
    Ok(ring::add(&x, &down))
}

/// `x · Wᵀ` at twice the scale, or zeros of the right size at the dealer.
fn linear(w: Option<&Matrix>, x: &[u64], t: usize, rows: usize) -> Vec<u64> {
    match w {
        Some(w) => w.apply(x, t),
        None => vec![0; t * rows],
    }
}

fn split_qkv(qkv: &[u64], t: usize, q_dim: usize, kv_dim: usize) -> (Vec<u64>, Vec<u64>, Vec<u64>) {
    let (mut q, mut k, mut v) = (Vec::with_capacity(t * q_dim), Vec::new(), Vec::new());
    for row in qkv.chunks(q_dim + 2 * kv_dim) {
        q.extend_from_slice(&row[..q_dim]);
        k.extend_from_slice(&row[q_dim..q_dim + kv_dim]);
        v.extend_from_slice(&row[q_dim + kv_dim..]);
    }
    (q, k, v)
}

/// Rotary embeddings of q and k (public rotations; one truncation round for both), with the
/// angles computed in f32 exactly as the plaintext engine does.
fn rope(
    ctx: &mut Ctx,
    shape: &LayerShape,
    q: &mut [u64],
    k: &mut [u64],
    t: usize,
    past: usize,
) -> Result<(), MpcError> {
    let d = shape.head_dim;
    let half = d / 2;
    let inv_freq: Vec<f32> = (0..half)
        .map(|i| 1.0 / shape.rope_theta.powf((2 * i) as f32 / d as f32))
        .collect();
    let rotate = |x: &[u64], out: &mut Vec<u64>| {
        let heads = x.len() / (t * d);
        for (i, row) in x.chunks(heads * d).enumerate() {
            let p = (past + i) as f32;
            for head in row.chunks(d) {
                let mut rotated = head.iter().map(|_| 0u64).collect::<Vec<_>>();
                for (f, freq) in inv_freq.iter().enumerate() {
                    let angle = p * freq;
                    let (c, s) = (encode(angle.cos() as f64), encode(angle.sin() as f64));
                    let (a, b) = if shape.interleaved {
                        (2 * f, 2 * f + 1)
                    } else {
                        (f, f + half)
                    };
                    rotated[a] = head[a]
                        .wrapping_mul(c)
                        .wrapping_sub(head[b].wrapping_mul(s));
                    rotated[b] = head[a]
                        .wrapping_mul(s)
                        .wrapping_add(head[b].wrapping_mul(c));
                }
                out.extend(rotated);
            }
        }
    };
    let mut raw = Vec::with_capacity(q.len() + k.len());
    rotate(q, &mut raw);
    rotate(k, &mut raw);
    let done = ctx.trunc(&raw, FRAC)?;
    q.copy_from_slice(&done[..q.len()]);
    k.copy_from_slice(&done[q.len()..]);
    Ok(())
}

/// Causal attention of `t` new queries (`[t][head][d]`, already scaled by 1/√d) over the
/// shared cache: scores and weighted values are Beaver matrix products, one round each for
/// all heads; softmax over each query's row with the future masked.
///
/// The cache's rows are masked once, when they arrive: each new key and value row gets a dealt
/// mask kept for the session, and its masked value is opened once (with the queries' masks)
/// and kept in the clear. Every later product with the cache uses that fixed mask as the
/// second half of its Beaver triple, so a step opens only the queries, the new rows and the
/// probabilities, not the whole cache.
fn attention(
    ctx: &mut Ctx,
    shape: &LayerShape,
    q: &[u64],
    (k, v): (&[u64], &[u64]),
    kv: &mut SharedKv,
    t: usize,
) -> R {
    let (d, nh, nkv) = (shape.head_dim, shape.n_head, shape.n_kv_head);
    let group = nh / nkv;
    let past = kv.len;
    let n = past + t;
    if kv.mask_k.is_empty() {
        *kv = SharedKv {
            mask_k: vec![Vec::new(); nkv],
            open_k: vec![Vec::new(); nkv],
            mask_v: vec![Vec::new(); nkv],
            open_v: vec![Vec::new(); nkv],
            len: 0,
        };
    }
    let rows_of = |x: &[u64], g: usize| -> Vec<u64> {
        (0..t)
            .flat_map(|i| x[(i * nkv + g) * d..][..d].iter().copied())
            .collect()
    };
    let (mut masked_rows, mut queries, mut query_masks, mut dealt) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for g in 0..nkv {
        let (mk, mv) = (ctx.random(t * d), ctx.random(t * d));
        masked_rows.push((
            ring::sub(&rows_of(k, g), &mk),
            ring::sub(&rows_of(v, g), &mv),
        ));
        kv.mask_k[g].extend(mk);
        kv.mask_v[g].extend(mv);
        let mut rows = Vec::with_capacity(group * t * d);
        for hl in 0..group {
            let head = g * group + hl;
            for i in 0..t {
                rows.extend_from_slice(&q[(i * nh + head) * d..][..d]);
            }
        }
        let a = ctx.random(group * t * d);
        let mask_t = transpose(&kv.mask_k[g], n, d);
        dealt.push(ctx.derived(group * t * n, || ring::matmul(&a, &mask_t, group * t, d, n))?);
        queries.push(rows);
        query_masks.push(a);
    }
    let mut to_open = Vec::new();
    for g in 0..nkv {
        to_open.extend(ring::sub(&queries[g], &query_masks[g]));
        to_open.extend_from_slice(&masked_rows[g].0);
        to_open.extend_from_slice(&masked_rows[g].1);
    }
    let opened = ctx.open(&to_open)?;
    let mut scores_raw = Vec::with_capacity(nh * t * n);
    let mut at = 0;
    for g in 0..nkv {
        let dq = &opened[at..at + group * t * d];
        at += group * t * d;
        kv.open_k[g].extend_from_slice(&opened[at..at + t * d]);
        kv.open_v[g].extend_from_slice(&opened[at + t * d..at + 2 * t * d]);
        at += 2 * t * d;
        let open_t = transpose(&kv.open_k[g], n, d);
        let mask_t = transpose(&kv.mask_k[g], n, d);
        let shape = (group * t, d, n);
        scores_raw.extend(with_cached(
            ctx,
            dq,
            &query_masks[g],
            &dealt[g],
            &open_t,
            &mask_t,
            shape,
        ));
    }
    kv.len = n;
    let scores = ctx.trunc(&scores_raw, FRAC)?;
    // Row r = (g, hl, i) sees keys j ≤ past + i.
    let masked: Vec<bool> = (0..nkv * group * t)
        .flat_map(|r| {
            let i = r % t;
            (0..n).map(move |j| j > past + i)
        })
        .collect();
    let probs = func::softmax_rows(ctx, &scores, n, Some(&masked), FRAC + SCORE_LOG2 + 1)?;
    let per_group = group * t * n;
    let (mut prob_masks, mut dealt) = (Vec::new(), Vec::new());
    for g in 0..nkv {
        let a = ctx.random(per_group);
        let mask_v = &kv.mask_v[g];
        dealt.push(ctx.derived(group * t * d, || ring::matmul(&a, mask_v, group * t, n, d))?);
        prob_masks.push(a);
    }
    let to_open: Vec<u64> = (0..nkv)
        .flat_map(|g| ring::sub(&probs[g * per_group..(g + 1) * per_group], &prob_masks[g]))
        .collect();
    let opened = ctx.open(&to_open)?;
    let mut out_raw = Vec::with_capacity(nh * t * d);
    for g in 0..nkv {
        let dp = &opened[g * per_group..(g + 1) * per_group];
        let shape = (group * t, n, d);
        out_raw.extend(with_cached(
            ctx,
            dp,
            &prob_masks[g],
            &dealt[g],
            &kv.open_v[g],
            &kv.mask_v[g],
            shape,
        ));
    }
    let out = ctx.trunc(&out_raw, FRAC)?;
    // Back to [t][head][d].
    let mut attn = vec![0u64; t * nh * d];
    for g in 0..nkv {
        for hl in 0..group {
            let head = g * group + hl;
            for i in 0..t {
                let src = ((g * group + hl) * t + i) * d;
                attn[(i * nh + head) * d..][..d].copy_from_slice(&out[src..src + d]);
            }
        }
    }
    Ok(attn)
}

/// `x · y` (`m×k` by `k×n`) from the opened `x − a`, the shares of `a`, of `c = a·mask` and of
/// `y`'s fixed mask, and `y − mask` in the clear: `Δ·open + Δ·mask + a·open + c` (`Δ·open`
/// added once, by A).
fn with_cached(
    ctx: &Ctx,
    delta: &[u64],
    a: &[u64],
    c: &[u64],
    open: &[u64],
    mask: &[u64],
    (m, k, n): (usize, usize, usize),
) -> Vec<u64> {
    let mut z = c.to_vec();
    ring::add_assign(&mut z, &ring::matmul(delta, mask, m, k, n));
    ring::add_assign(&mut z, &ring::matmul(a, open, m, k, n));
    ctx.add_public_vec(&mut z, &ring::matmul(delta, open, m, k, n));
    z
}

/// `[rows][cols]` → `[cols][rows]`.
fn transpose(x: &[u64], rows: usize, cols: usize) -> Vec<u64> {
    let mut out = vec![0u64; x.len()];
    for r in 0..rows {
        for c in 0..cols {
            out[c * rows + r] = x[r * cols + c];
        }
    }
    out
}
