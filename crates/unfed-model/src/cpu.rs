//! The CPU forward pass of a decoder layer: products by `unfed-kernels` on the weights in their
//! file layout, and attention over a per-session cache that grows in place, all on the compute
//! pool. The candle path in `layers` does the same arithmetic for weights or devices these
//! kernels do not cover; `cpu_path_agrees_with_candle` in the tests keeps the two together.

use std::cell::Cell;

use unfed_gguf::GgmlType;
use unfed_kernels::pool::{self, Pool};
use unfed_kernels::{Isa, QMatrix, QuantType, matmul_many};

use crate::checkpoint::Checkpoint;
use crate::config::ModelConfig;
use crate::layers::dense;
use crate::{ModelError, Result};

/// A weight matrix for the kernels, or `None` if its type has no kernel.
pub(crate) fn load_matrix(
    ck: &Checkpoint,
    name: &str,
    (rows, cols): (usize, usize),
) -> Result<Option<QMatrix>> {
    let (ty, dims, bytes) = ck.tensor_bytes(name)?;
    if dims != [cols as u64, rows as u64] {
        return Err(ModelError::Tensor {
            name: name.into(),
            problem: format!("GGUF dims {dims:?}, expected [{cols}, {rows}]"),
        });
    }
    let Some(ty) = kernel_type(ty) else {
        return Ok(None);
    };
    QMatrix::new(ty, rows, cols, bytes)
        .map(Some)
        .map_err(|e| ModelError::Tensor {
            name: name.into(),
            problem: e.to_string(),
        })
}

fn kernel_type(t: GgmlType) -> Option<QuantType> {
    Some(match t {
        GgmlType::Q4_0 => QuantType::Q4_0,
        GgmlType::Q4_1 => QuantType::Q4_1,
        GgmlType::Q5_0 => QuantType::Q5_0,
        GgmlType::Q8_0 => QuantType::Q8_0,
        GgmlType::Q4K => QuantType::Q4K,
        GgmlType::Q6K => QuantType::Q6K,
        _ => return None,
    })
}

/// One decoder layer on the CPU kernels.
pub(crate) struct CpuLayer {
    attn_norm: Vec<f32>,
    ffn_norm: Vec<f32>,
    eps: f32,
    /// q, k, v.
    qkv: [QMatrix; 3],
    /// Biases of q, k and v, concatenated (Qwen2).
    qkv_bias: Option<Vec<f32>>,
    o: QMatrix,
    gate: QMatrix,
    up: QMatrix,
    down: QMatrix,
    n_head: usize,
    n_kv_head: usize,
    head_dim: usize,
    interleaved: bool,
}

/// One layer's keys and values, `[kv_head][position][head_dim]`, with room to grow.
#[derive(Debug, Clone, Default)]
pub(crate) struct CpuCache {
    k: Vec<f32>,
    v: Vec<f32>,
    len: usize,
    cap: usize,
}

/// Buffers of one layer step, reused by every layer and step of a session (decode allocates
/// nothing once they have grown to size).
#[derive(Debug, Clone, Default)]
pub(crate) struct Scratch {
    h: Vec<f32>,
    qkv: Vec<f32>,
    attn: Vec<f32>,
    o: Vec<f32>,
    g: Vec<f32>,
    u: Vec<f32>,
}

/// `v` as `len` zeros, reusing its allocation.
fn zeroed(v: &mut Vec<f32>, len: usize) -> &mut [f32] {
    v.clear();
    v.resize(len, 0.0);
    v
}

/// cos and sin for positions `start..start+len`, `[len][head_dim/2]` (see `rope`).
pub(crate) struct RopeRows {
    cos: Vec<f32>,
    sin: Vec<f32>,
    half: usize,
}

impl RopeRows {
    pub fn new(theta: f32, head_dim: usize, start: usize, len: usize) -> Self {
        let half = head_dim / 2;
        let inv_freq: Vec<f32> = (0..half)
            .map(|i| 1.0 / theta.powf((2 * i) as f32 / head_dim as f32))
            .collect();
        let (mut cos, mut sin) = (
            Vec::with_capacity(len * half),
            Vec::with_capacity(len * half),
        );
        for p in start..start + len {
            for f in &inv_freq {
                let angle = p as f32 * f;
                cos.push(angle.cos());
                sin.push(angle.sin());
            }
        }
        RopeRows { cos, sin, half }
    }
}

impl CpuLayer {
    /// The layer on the kernels, or `None` if one of its matrices has a type they lack.
    pub fn load(ck: &Checkpoint, cfg: &ModelConfig, index: usize) -> Result<Option<Self>> {
        let p = |n: &str| format!("blk.{index}.{n}");
        let (h, f) = (cfg.hidden, cfg.ffn);
        let (q_dim, kv_dim) = (cfg.n_head * cfg.head_dim, cfg.n_kv_head * cfg.head_dim);
        let m = |n: &str, shape| load_matrix(ck, &p(&format!("{n}.weight")), shape);
        let (Some(q), Some(k), Some(v), Some(o), Some(gate), Some(up), Some(down)) = (
            m("attn_q", (q_dim, h))?,
            m("attn_k", (kv_dim, h))?,
            m("attn_v", (kv_dim, h))?,
            m("attn_output", (h, q_dim))?,
            m("ffn_gate", (f, h))?,
            m("ffn_up", (f, h))?,
            m("ffn_down", (h, f))?,
        ) else {
            return Ok(None);
        };
        let vector = |name: String, len: usize| -> Result<Vec<f32>> {
            let v = dense(ck, &name)?.to_vec1::<f32>()?;
            if v.len() != len {
                return Err(ModelError::Tensor {
                    name,
                    problem: format!("{} values, expected {len}", v.len()),
                });
            }
            Ok(v)
        };
        let qkv_bias = if cfg.arch.qkv_bias() {
            let mut b = vector(p("attn_q.bias"), q_dim)?;
            b.extend(vector(p("attn_k.bias"), kv_dim)?);
            b.extend(vector(p("attn_v.bias"), kv_dim)?);
            Some(b)
        } else {
            None
        };
        Ok(Some(CpuLayer {
            attn_norm: vector(p("attn_norm.weight"), h)?,
            ffn_norm: vector(p("ffn_norm.weight"), h)?,
            eps: cfg.rms_eps as f32,
            qkv: [q, k, v],
            qkv_bias,
            o,
            gate,
            up,
            down,
            n_head: cfg.n_head,
            n_kv_head: cfg.n_kv_head,
            head_dim: cfg.head_dim,
            interleaved: cfg.arch.rope_interleaved(),
        }))
    }

    /// Runs the layer on `t` new positions of `x` (`[t, hidden]`, updated in place).
    pub fn forward(
        &self,
        x: &mut [f32],
        t: usize,
        rope: &RopeRows,
        cache: &mut CpuCache,
        scratch: &mut Scratch,
    ) {
        let pool = pool::global();
        let isa = Isa::detect();
        let hidden = x.len() / t;
        let (d, nh, nkv) = (self.head_dim, self.n_head, self.n_kv_head);
        let (q_dim, kv_dim) = (nh * d, nkv * d);

        let Scratch {
            h,
            qkv,
            attn,
            o,
            g,
            u,
        } = scratch;
        let h = zeroed(h, x.len());
        rms_norm(x, &self.attn_norm, self.eps, h);
        let qkv = zeroed(qkv, t * (q_dim + 2 * kv_dim));
        {
            let (q, kv) = qkv.split_at_mut(t * q_dim);
            let (k, v) = kv.split_at_mut(t * kv_dim);
            let mats = [&self.qkv[0], &self.qkv[1], &self.qkv[2]];
            product(&mats, h, t, &mut [q, k, v], pool, isa);
            if let Some(bias) = &self.qkv_bias {
                let (bq, bkv) = bias.split_at(q_dim);
                let (bk, bv) = bkv.split_at(kv_dim);
                for (out, b) in [(&mut *q, bq), (&mut *k, bk), (&mut *v, bv)] {
                    out.chunks_exact_mut(b.len())
                        .for_each(|row| row.iter_mut().zip(b).for_each(|(o, b)| *o += b));
                }
            }
            for (out, heads) in [(&mut *q, nh), (&mut *k, nkv)] {
                for (i, row) in out.chunks_exact_mut(heads * d).enumerate() {
                    for head in row.chunks_exact_mut(d) {
                        rotate(head, rope, i, self.interleaved);
                    }
                }
            }
            cache.append(k, v, t, nkv, d);
        }
        let attn = zeroed(attn, t * q_dim);
        attend(&qkv[..t * q_dim], cache, t, nh, nkv, d, attn, pool);
        let o = zeroed(o, t * hidden);
        product(&[&self.o], attn, t, &mut [&mut *o], pool, isa);
        x.iter_mut().zip(o.iter()).for_each(|(x, o)| *x += o);

        rms_norm(x, &self.ffn_norm, self.eps, h);
        let ffn = self.gate.rows();
        let (g, u) = (zeroed(g, t * ffn), zeroed(u, t * ffn));
        product(
            &[&self.gate, &self.up],
            h,
            t,
            &mut [&mut *g, &mut *u],
            pool,
            isa,
        );
        g.iter_mut()
            .zip(u.iter())
            .for_each(|(g, u)| *g = silu(*g) * u);
        product(&[&self.down], g, t, &mut [&mut *o], pool, isa);
        x.iter_mut().zip(o.iter()).for_each(|(x, o)| *x += o);
    }
}

impl CpuCache {
    /// Appends `t` positions of keys and values (`[t][kv_head][d]` each).
    fn append(&mut self, k: &[f32], v: &[f32], t: usize, heads: usize, d: usize) {
        if self.len + t > self.cap {
            let cap = (self.len + t).max(2 * self.cap).max(64);
            for buf in [&mut self.k, &mut self.v] {
                let mut grown = vec![0f32; heads * cap * d];
                for h in 0..heads {
                    let old = &buf[h * self.cap * d..][..self.len * d];
                    grown[h * cap * d..][..self.len * d].copy_from_slice(old);
                }
                *buf = grown;
            }
            self.cap = cap;
        }
        for (src, dst) in [(k, &mut self.k), (v, &mut self.v)] {
            for i in 0..t {
                for h in 0..heads {
                    let at = (h * self.cap + self.len + i) * d;
                    dst[at..at + d].copy_from_slice(&src[(i * heads + h) * d..][..d]);
                }
            }
        }
        self.len += t;
    }
}

/// `out = x / rms(x) * w`, row by row, as candle computes it.
pub(crate) fn rms_norm(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    let dim = w.len();
    for (row, o) in x.chunks_exact(dim).zip(out.chunks_exact_mut(dim)) {
        let sum2: f32 = row.iter().map(|v| v * v).sum();
        let m = (sum2 / dim as f32 + eps).sqrt();
        o.iter_mut()
            .zip(row.iter().zip(w))
            .for_each(|(o, (v, w))| *o = v / m * w);
    }
}

/// The products of one layer step; the shapes were checked when the layer was loaded.
fn product(mats: &[&QMatrix], x: &[f32], t: usize, ys: &mut [&mut [f32]], pool: &Pool, isa: Isa) {
    matmul_many(mats, x, t, ys, pool, isa).expect("layer shapes are checked at load");
}

fn silu(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}

/// Rotates one head of position `i` of the rope table.
fn rotate(x: &mut [f32], rope: &RopeRows, i: usize, interleaved: bool) {
    let half = rope.half;
    let (cos, sin) = (&rope.cos[i * half..][..half], &rope.sin[i * half..][..half]);
    for f in 0..half {
        let (a, b) = if interleaved {
            (2 * f, 2 * f + 1)
        } else {
            (f, f + half)
        };
        let (x0, x1) = (x[a], x[b]);
        x[a] = x0 * cos[f] - x1 * sin[f];
        x[b] = x0 * sin[f] + x1 * cos[f];
    }
}

/// Causal attention of `t` new queries (`[t][head][d]`) over the cache (which already holds
/// them), into `out` (`[t][head][d]`); one pool chunk per (head, query).
#[allow(clippy::too_many_arguments)]
fn attend(
    q: &[f32],
    cache: &CpuCache,
    t: usize,
    heads: usize,
    kv_heads: usize,
    d: usize,
    out: &mut [f32],
    pool: &Pool,
) {
    let past = cache.len - t;
    let group = heads / kv_heads;
    let scale = 1.0 / (d as f32).sqrt();
    let out_ptr = OutPtr(out.as_mut_ptr());
    pool.run(heads * t, &|c| {
        let (i, h) = (c / heads, c % heads);
        let kvh = h / group;
        let qi = &q[(i * heads + h) * d..][..d];
        let keys = &cache.k[kvh * cache.cap * d..];
        let values = &cache.v[kvh * cache.cap * d..];
        let n = past + i + 1;
        let mut scores = SCORES.take();
        scores.clear();
        scores.extend((0..n).map(|j| dot(qi, &keys[j * d..][..d]) * scale));
        let max = scores.iter().fold(f32::NEG_INFINITY, |m, &s| m.max(s));
        let mut sum = 0f32;
        for s in scores.iter_mut() {
            *s = (*s - max).exp();
            sum += *s;
        }
        // SAFETY: chunk (i, h) alone writes this head of this query; `out` outlives the job.
        let o = unsafe { std::slice::from_raw_parts_mut(out_ptr.at((i * heads + h) * d), d) };
        o.fill(0.0);
        for (j, s) in scores.iter().enumerate() {
            let p = s / sum;
            o.iter_mut()
                .zip(&values[j * d..][..d])
                .for_each(|(o, v)| *o += p * v);
        }
        SCORES.set(scores);
    });
}

/// A dot product in eight independent sums, which the compiler vectorizes.
#[inline]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    acc.iter().sum::<f32>() + tail
}

thread_local! {
    static SCORES: Cell<Vec<f32>> = const { Cell::new(Vec::new()) };
}

#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
// SAFETY: attention chunks write disjoint heads.
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

impl OutPtr {
    fn at(self, offset: usize) -> *mut f32 {
        self.0.wrapping_add(offset)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Tensor};

    fn random(n: usize, seed: u64) -> Vec<f32> {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        (0..n).map(|_| rng.random_range(-2.0..2.0)).collect()
    }

    fn close(a: &[f32], b: &[f32], tol: f32) {
        assert_eq!(a.len(), b.len());
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            assert!(
                (x - y).abs() <= tol * (1.0 + y.abs()),
                "value {i}: {x} vs {y}"
            );
        }
    }

    #[test]
    fn rms_norm_matches_candle() {
        let (x, w) = (random(3 * 64, 1), random(64, 2));
        let mut ours = vec![0f32; x.len()];
        rms_norm(&x, &w, 1e-5, &mut ours);
        let xt = Tensor::from_vec(x, (3, 64), &Device::Cpu).unwrap();
        let wt = Tensor::from_vec(w, 64, &Device::Cpu).unwrap();
        let theirs = candle_nn::ops::rms_norm(&xt, &wt, 1e-5).unwrap();
        close(
            &ours,
            &theirs.flatten_all().unwrap().to_vec1().unwrap(),
            1e-6,
        );
    }

    #[test]
    fn rope_matches_candle() {
        let (t, heads, d, start) = (5, 3, 16, 7);
        let x = random(t * heads * d, 3);
        let rows = RopeRows::new(10_000.0, d, start, t);
        let tables = crate::rope::RopeTables::new(10_000.0, d, start, t, &Device::Cpu).unwrap();
        for interleaved in [false, true] {
            let mut ours = x.clone();
            for (i, row) in ours.chunks_exact_mut(heads * d).enumerate() {
                row.chunks_exact_mut(d)
                    .for_each(|h| rotate(h, &rows, i, interleaved));
            }
            // candle's layout is [batch, head, position, d].
            let xt = Tensor::from_vec(x.clone(), (1, t, heads, d), &Device::Cpu).unwrap();
            let theirs = tables
                .apply(&xt.transpose(1, 2).unwrap(), interleaved)
                .unwrap()
                .transpose(1, 2)
                .unwrap();
            close(
                &ours,
                &theirs.flatten_all().unwrap().to_vec1().unwrap(),
                1e-6,
            );
        }
    }

    /// Causal grouped-query attention in f64, the textbook way.
    fn reference_attention(
        q: &[f32],
        k: &[f32],
        v: &[f32],
        (t, past, heads, kv_heads, d): (usize, usize, usize, usize, usize),
    ) -> Vec<f32> {
        let mut out = vec![0f32; t * heads * d];
        for i in 0..t {
            for h in 0..heads {
                let kvh = h / (heads / kv_heads);
                let qi = &q[(i * heads + h) * d..][..d];
                let n = past + i + 1;
                let scores: Vec<f64> = (0..n)
                    .map(|j| {
                        let kj = &k[(j * kv_heads + kvh) * d..][..d];
                        qi.iter()
                            .zip(kj)
                            .map(|(a, b)| *a as f64 * *b as f64)
                            .sum::<f64>()
                            / (d as f64).sqrt()
                    })
                    .collect();
                let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
                let sum: f64 = e.iter().sum();
                for (j, p) in e.iter().enumerate() {
                    let vj = &v[(j * kv_heads + kvh) * d..][..d];
                    for c in 0..d {
                        out[(i * heads + h) * d + c] += (p / sum * vj[c] as f64) as f32;
                    }
                }
            }
        }
        out
    }

    #[test]
    fn attention_over_a_growing_cache_matches_the_reference() {
        let (heads, kv_heads, d) = (6, 2, 16);
        let pool = Pool::new(3);
        let mut cache = CpuCache::default();
        let (mut all_k, mut all_v) = (Vec::new(), Vec::new());
        // A prefill, then single steps, then a chunk that forces the cache to grow.
        for (step, t) in [7usize, 1, 1, 70, 1].into_iter().enumerate() {
            let q = random(t * heads * d, 10 + step as u64);
            let k = random(t * kv_heads * d, 20 + step as u64);
            let v = random(t * kv_heads * d, 30 + step as u64);
            let past = all_k.len() / (kv_heads * d);
            all_k.extend_from_slice(&k);
            all_v.extend_from_slice(&v);
            cache.append(&k, &v, t, kv_heads, d);
            let mut ours = vec![0f32; t * heads * d];
            attend(&q, &cache, t, heads, kv_heads, d, &mut ours, &pool);
            let want = reference_attention(&q, &all_k, &all_v, (t, past, heads, kv_heads, d));
            close(&ours, &want, 1e-5);
        }
    }
}
