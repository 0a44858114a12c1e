//! One decoder layer (pre-norm attention with RoPE and grouped KV heads, then a SwiGLU MLP) and
//! the loading of its weights under llama.cpp tensor names.

use candle_core::quantized::{GgmlDType, QMatMul, QTensor, ggml_file::qtensor_from_ggml};
use candle_core::{Device, Module, Tensor};
use unfed_gguf::GgmlType;

use crate::checkpoint::Checkpoint;
use crate::config::ModelConfig;
use crate::rope::RopeTables;
use crate::{ModelError, Result};

/// Keys and values seen so far by one layer, `[1, kv_heads, positions, head_dim]` each.
#[derive(Debug, Clone, Default)]
pub(crate) struct LayerCache {
    k: Option<Tensor>,
    v: Option<Tensor>,
}

pub(crate) struct RmsNorm {
    weight: Tensor,
    eps: f32,
}

impl RmsNorm {
    pub fn load(ck: &Checkpoint, name: &str, cfg: &ModelConfig, device: &Device) -> Result<Self> {
        let weight = dense(ck, name)?.to_device(device)?;
        if weight.dims() != [cfg.hidden] {
            return Err(shape_error(name, weight.dims(), &[cfg.hidden]));
        }
        Ok(Self {
            weight,
            eps: cfg.rms_eps as f32,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(candle_nn::ops::rms_norm(
            &x.contiguous()?,
            &self.weight,
            self.eps,
        )?)
    }
}

/// A projection `x W^T (+ b)` whose weight keeps the checkpoint's quantization.
struct Linear {
    weight: QMatMul,
    bias: Option<Tensor>,
}

impl Linear {
    fn load(
        ck: &Checkpoint,
        prefix: &str,
        shape: (usize, usize),
        bias: bool,
        on: Placement<'_>,
    ) -> Result<Self> {
        let name = format!("{prefix}.weight");
        let weight = matrix(ck, &name, shape, on)?;
        let bias = if bias {
            let b = dense(ck, &format!("{prefix}.bias"))?.to_device(on.device)?;
            if b.dims() != [shape.0] {
                return Err(shape_error(&format!("{prefix}.bias"), b.dims(), &[shape.0]));
            }
            Some(b)
        } else {
            None
        };
        Ok(Self { weight, bias })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = self.weight.forward(x)?;
        Ok(match &self.bias {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        })
    }
}

pub(crate) struct DecoderLayer {
    attn_norm: RmsNorm,
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    ffn_norm: RmsNorm,
    gate: Linear,
    up: Linear,
    down: Linear,
    n_head: usize,
    n_kv_head: usize,
    head_dim: usize,
    rope_interleaved: bool,
}

impl DecoderLayer {
    pub fn load(
        ck: &Checkpoint,
        cfg: &ModelConfig,
        index: usize,
        on: Placement<'_>,
    ) -> Result<Self> {
        let p = |n: &str| format!("blk.{index}.{n}");
        let (h, f) = (cfg.hidden, cfg.ffn);
        let q_dim = cfg.n_head * cfg.head_dim;
        let kv_dim = cfg.n_kv_head * cfg.head_dim;
        let bias = cfg.arch.qkv_bias();
        Ok(Self {
            attn_norm: RmsNorm::load(ck, &p("attn_norm.weight"), cfg, on.device)?,
            q: Linear::load(ck, &p("attn_q"), (q_dim, h), bias, on)?,
            k: Linear::load(ck, &p("attn_k"), (kv_dim, h), bias, on)?,
            v: Linear::load(ck, &p("attn_v"), (kv_dim, h), bias, on)?,
            o: Linear::load(ck, &p("attn_output"), (h, q_dim), false, on)?,
            ffn_norm: RmsNorm::load(ck, &p("ffn_norm.weight"), cfg, on.device)?,
            gate: Linear::load(ck, &p("ffn_gate"), (f, h), false, on)?,
            up: Linear::load(ck, &p("ffn_up"), (f, h), false, on)?,
            down: Linear::load(ck, &p("ffn_down"), (h, f), false, on)?,
            n_head: cfg.n_head,
            n_kv_head: cfg.n_kv_head,
            head_dim: cfg.head_dim,
            rope_interleaved: cfg.arch.rope_interleaved(),
        })
    }

    /// `x`: `[1, t, hidden]`; `mask`: additive `[t, positions]` or None for a single position.
    pub fn forward(
        &self,
        x: &Tensor,
        rope: &RopeTables,
        mask: Option<&Tensor>,
        cache: &mut LayerCache,
    ) -> Result<Tensor> {
        let residual = x;
        let h = self.attn_norm.forward(x)?;
        let h = self.attention(&h, rope, mask, cache)?;
        let x = (residual + h)?;
        let h = self.ffn_norm.forward(&x)?;
        let gate = candle_nn::ops::silu(&self.gate.forward(&h)?)?;
        let h = self.down.forward(&(gate * self.up.forward(&h)?)?)?;
        Ok((x + h)?)
    }

    fn attention(
        &self,
        x: &Tensor,
        rope: &RopeTables,
        mask: Option<&Tensor>,
        cache: &mut LayerCache,
    ) -> Result<Tensor> {
        let (b, t, _) = x.dims3()?;
        let heads = |y: Tensor, n: usize| -> Result<Tensor> {
            Ok(y.reshape((b, t, n, self.head_dim))?
                .transpose(1, 2)?
                .contiguous()?)
        };
        let q = rope.apply(
            &heads(self.q.forward(x)?, self.n_head)?,
            self.rope_interleaved,
        )?;
        let k = rope.apply(
            &heads(self.k.forward(x)?, self.n_kv_head)?,
            self.rope_interleaved,
        )?;
        let v = heads(self.v.forward(x)?, self.n_kv_head)?;
        let (k, v) = match (&cache.k, &cache.v) {
            (Some(pk), Some(pv)) => (Tensor::cat(&[pk, &k], 2)?, Tensor::cat(&[pv, &v], 2)?),
            _ => (k, v),
        };
        cache.k = Some(k.clone());
        cache.v = Some(v.clone());
        let k = repeat_kv(&k, self.n_head / self.n_kv_head)?;
        let v = repeat_kv(&v, self.n_head / self.n_kv_head)?;
        let scale = 1.0 / (self.head_dim as f64).sqrt();
        let scores = (q.matmul(&k.t()?)? * scale)?;
        let scores = match mask {
            Some(m) => scores.broadcast_add(m)?,
            None => scores,
        };
        let probs = candle_nn::ops::softmax_last_dim(&scores)?;
        let out =
            probs
                .matmul(&v)?
                .transpose(1, 2)?
                .reshape((b, t, self.n_head * self.head_dim))?;
        self.o.forward(&out)
    }
}

/// Repeats each KV head `n` times so that query head `h` meets KV head `h / n`.
fn repeat_kv(x: &Tensor, n: usize) -> Result<Tensor> {
    if n == 1 {
        return Ok(x.clone());
    }
    let (b, kv, t, d) = x.dims4()?;
    Ok(x.unsqueeze(2)?
        .expand((b, kv, n, t, d))?
        .reshape((b, kv * n, t, d))?)
}

/// The causal mask for `t` new positions after `past` cached ones: 0 where a query may attend,
/// -inf where the key lies in its future.
pub(crate) fn causal_mask(t: usize, past: usize, device: &Device) -> Result<Tensor> {
    let total = past + t;
    let data: Vec<f32> = (0..t)
        .flat_map(|i| (0..total).map(move |j| if j > past + i { f32::NEG_INFINITY } else { 0.0 }))
        .collect();
    Ok(Tensor::from_vec(data, (t, total), device)?)
}

/// Where candle's weights go and in what form.
#[derive(Clone, Copy)]
pub(crate) struct Placement<'a> {
    /// Dequantized to f32, so products are exact (the reference path, on the CPU).
    pub exact: bool,
    pub device: &'a Device,
}

/// Builds a candle quantized tensor from a checkpoint tensor, keeping its quantization, on
/// `device`.
pub(crate) fn qtensor(ck: &Checkpoint, name: &str, device: &Device) -> Result<QTensor> {
    let raw = ck.tensor(name)?;
    let dims: Vec<usize> = raw.dims.iter().rev().map(|&d| d as usize).collect();
    qtensor_from_ggml(candle_dtype(raw.ty), &raw.data, dims, device).map_err(|e| {
        ModelError::Tensor {
            name: name.into(),
            problem: e.to_string(),
        }
    })
}

/// A `[rows, cols]` weight as a quantized matmul (or, `exact`, dequantized to f32),
/// shape-checked.
pub(crate) fn matrix(
    ck: &Checkpoint,
    name: &str,
    shape: (usize, usize),
    on: Placement<'_>,
) -> Result<QMatMul> {
    let t = qtensor(ck, name, on.device)?;
    if t.shape().dims() != [shape.0, shape.1] {
        return Err(shape_error(name, t.shape().dims(), &[shape.0, shape.1]));
    }
    Ok(if on.exact {
        QMatMul::Tensor(t.dequantize(on.device)?)
    } else {
        QMatMul::from_qtensor(t)?
    })
}

/// A tensor dequantized to f32, in memory.
pub(crate) fn dense(ck: &Checkpoint, name: &str) -> Result<Tensor> {
    Ok(qtensor(ck, name, &Device::Cpu)?.dequantize(&Device::Cpu)?)
}

fn candle_dtype(t: GgmlType) -> GgmlDType {
    match t {
        GgmlType::F32 => GgmlDType::F32,
        GgmlType::F16 => GgmlDType::F16,
        GgmlType::BF16 => GgmlDType::BF16,
        GgmlType::Q4_0 => GgmlDType::Q4_0,
        GgmlType::Q4_1 => GgmlDType::Q4_1,
        GgmlType::Q5_0 => GgmlDType::Q5_0,
        GgmlType::Q5_1 => GgmlDType::Q5_1,
        GgmlType::Q8_0 => GgmlDType::Q8_0,
        GgmlType::Q8_1 => GgmlDType::Q8_1,
        GgmlType::Q2K => GgmlDType::Q2K,
        GgmlType::Q3K => GgmlDType::Q3K,
        GgmlType::Q4K => GgmlDType::Q4K,
        GgmlType::Q5K => GgmlDType::Q5K,
        GgmlType::Q6K => GgmlDType::Q6K,
        GgmlType::Q8K => GgmlDType::Q8K,
    }
}

fn shape_error(name: &str, got: &[usize], want: &[usize]) -> ModelError {
    ModelError::Tensor {
        name: name.into(),
        problem: format!("shape {got:?}, expected {want:?}"),
    }
}

impl Checkpoint {
    /// A tensor dequantized to f32, row-major, with its dimensions (outermost first).
    pub fn dequantized(&self, name: &str) -> Result<(Vec<usize>, Vec<f32>)> {
        let t = dense(self, name)?;
        Ok((t.dims().to_vec(), t.flatten_all()?.to_vec1::<f32>()?))
    }
}
