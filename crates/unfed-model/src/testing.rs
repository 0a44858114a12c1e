//! Tiny random-weight models written as real GGUF files, for tests everywhere in the workspace:
//! same tensor names, metadata keys and quantized layouts as llama.cpp's files, a byte-level
//! tokenizer with ChatML special tokens, and a chat template — only small and random.

use std::path::Path;

use candle_core::quantized::QTensor;
use candle_core::{Device, Tensor};
use unfed_gguf::{GgmlType, OutTensor, Value, write_gguf};

use crate::config::Arch;
use crate::{ModelError, Result};

/// Shape and storage of a tiny model.
#[derive(Debug, Clone)]
pub struct TinySpec {
    pub arch: Arch,
    pub n_layer: usize,
    pub hidden: usize,
    pub ffn: usize,
    pub n_head: usize,
    pub n_kv_head: usize,
    /// Type of the matrices (norms stay F32, as in llama.cpp files).
    pub weight_type: GgmlType,
    /// No `output.weight`: the head reuses the token embedding.
    pub tied: bool,
    pub seed: u64,
}

impl Default for TinySpec {
    fn default() -> Self {
        Self {
            arch: Arch::Llama,
            n_layer: 4,
            hidden: 64,
            ffn: 128,
            n_head: 4,
            n_kv_head: 2,
            weight_type: GgmlType::Q8_0,
            tied: false,
            seed: 1,
        }
    }
}

/// Special tokens of the tiny vocabulary (after the 256 byte tokens).
pub const TINY_SPECIALS: [&str; 3] = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"];
/// 256 byte tokens plus the specials.
pub const TINY_VOCAB: usize = 256 + TINY_SPECIALS.len();

const CHATML: &str = "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

/// Writes a tiny random model to `path`.
pub fn write_tiny_gguf(path: &Path, spec: &TinySpec) -> Result<()> {
    let arch = spec.arch.name();
    let head_dim = spec.hidden / spec.n_head;
    let key = |k: &str| format!("{arch}.{k}");
    let mut tokens: Vec<Value> = byte_level_alphabet()
        .into_iter()
        .map(Value::String)
        .collect();
    tokens.extend(TINY_SPECIALS.iter().map(|s| Value::String(s.to_string())));
    let mut types = vec![Value::I32(1); 256];
    types.extend(TINY_SPECIALS.iter().map(|_| Value::I32(3)));
    let metadata = vec![
        (
            "general.architecture".to_string(),
            Value::String(arch.into()),
        ),
        (
            "general.name".to_string(),
            Value::String(format!("tiny-{arch}")),
        ),
        (key("block_count"), Value::U32(spec.n_layer as u32)),
        (key("context_length"), Value::U32(256)),
        (key("embedding_length"), Value::U32(spec.hidden as u32)),
        (key("feed_forward_length"), Value::U32(spec.ffn as u32)),
        (key("attention.head_count"), Value::U32(spec.n_head as u32)),
        (
            key("attention.head_count_kv"),
            Value::U32(spec.n_kv_head as u32),
        ),
        (key("rope.freq_base"), Value::F32(10_000.0)),
        (key("attention.layer_norm_rms_epsilon"), Value::F32(1e-5)),
        (
            "tokenizer.ggml.model".to_string(),
            Value::String("gpt2".into()),
        ),
        (
            "tokenizer.ggml.pre".to_string(),
            Value::String("gpt2".into()),
        ),
        ("tokenizer.ggml.tokens".to_string(), Value::Array(tokens)),
        ("tokenizer.ggml.token_type".to_string(), Value::Array(types)),
        (
            "tokenizer.ggml.merges".to_string(),
            Value::Array(Vec::new()),
        ),
        ("tokenizer.ggml.eos_token_id".to_string(), Value::U32(258)),
        (
            "tokenizer.chat_template".to_string(),
            Value::String(CHATML.into()),
        ),
    ];

    let mut rng = Rng(spec.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let (h, f, v) = (spec.hidden, spec.ffn, TINY_VOCAB);
    let (q, kv) = (spec.n_head * head_dim, spec.n_kv_head * head_dim);
    // (name, rows, cols, is_matrix, scale, offset)
    let mut plan: Vec<(String, usize, usize, bool, f32, f32)> =
        vec![("token_embd.weight".into(), v, h, true, 1.0, 0.0)];
    for l in 0..spec.n_layer {
        let n = |s: &str| format!("blk.{l}.{s}");
        plan.push((n("attn_norm.weight"), 1, h, false, 0.1, 1.0));
        plan.push((n("attn_q.weight"), q, h, true, 0.25, 0.0));
        plan.push((n("attn_k.weight"), kv, h, true, 0.25, 0.0));
        plan.push((n("attn_v.weight"), kv, h, true, 0.25, 0.0));
        if spec.arch.qkv_bias() {
            plan.push((n("attn_q.bias"), 1, q, false, 0.1, 0.0));
            plan.push((n("attn_k.bias"), 1, kv, false, 0.1, 0.0));
            plan.push((n("attn_v.bias"), 1, kv, false, 0.1, 0.0));
        }
        plan.push((n("attn_output.weight"), h, q, true, 0.25, 0.0));
        plan.push((n("ffn_norm.weight"), 1, h, false, 0.1, 1.0));
        plan.push((n("ffn_gate.weight"), f, h, true, 0.25, 0.0));
        plan.push((n("ffn_up.weight"), f, h, true, 0.25, 0.0));
        plan.push((n("ffn_down.weight"), h, f, true, 0.2, 0.0));
    }
    plan.push(("output_norm.weight".into(), 1, h, false, 0.1, 1.0));
    if !spec.tied {
        plan.push(("output.weight".into(), v, h, true, 0.25, 0.0));
    }
    let mut datas = Vec::new();
    for (name, rows, cols, is_matrix, scale, offset) in &plan {
        let values: Vec<f32> = (0..rows * cols)
            .map(|_| offset + scale * rng.normal())
            .collect();
        let ty = if *is_matrix {
            spec.weight_type
        } else {
            GgmlType::F32
        };
        let bytes = encode(&values, *rows, *cols, ty).map_err(|e| ModelError::Tensor {
            name: name.clone(),
            problem: e,
        })?;
        let dims = if *rows == 1 {
            vec![*cols as u64]
        } else {
            vec![*cols as u64, *rows as u64]
        };
        datas.push((name.clone(), dims, ty, bytes));
    }
    let tensors: Vec<OutTensor<'_>> = datas
        .iter()
        .map(|(name, dims, ty, bytes)| OutTensor {
            name: name.clone(),
            dims: dims.clone(),
            ty: *ty,
            data: bytes,
        })
        .collect();
    let mut file = std::fs::File::create(path).map_err(|source| ModelError::Io {
        path: path.display().to_string(),
        source,
    })?;
    write_gguf(&mut file, &metadata, &tensors).map_err(|source| ModelError::Gguf {
        path: path.display().to_string(),
        source,
    })
}

/// Encodes f32 values of a `[rows, cols]` tensor in `ty`'s block layout.
fn encode(
    values: &[f32],
    rows: usize,
    cols: usize,
    ty: GgmlType,
) -> std::result::Result<Vec<u8>, String> {
    if ty == GgmlType::F32 {
        return Ok(values.iter().flat_map(|x| x.to_le_bytes()).collect());
    }
    let dtype = match ty {
        GgmlType::Q8_0 => candle_core::quantized::GgmlDType::Q8_0,
        GgmlType::Q4_0 => candle_core::quantized::GgmlDType::Q4_0,
        GgmlType::Q4_1 => candle_core::quantized::GgmlDType::Q4_1,
        GgmlType::Q5_0 => candle_core::quantized::GgmlDType::Q5_0,
        GgmlType::Q4K => candle_core::quantized::GgmlDType::Q4K,
        GgmlType::Q6K => candle_core::quantized::GgmlDType::Q6K,
        GgmlType::F16 => candle_core::quantized::GgmlDType::F16,
        other => return Err(format!("tiny models do not use {other}")),
    };
    let t =
        Tensor::from_vec(values.to_vec(), (rows, cols), &Device::Cpu).map_err(|e| e.to_string())?;
    let q = QTensor::quantize(&t, dtype).map_err(|e| e.to_string())?;
    Ok(q.data().map_err(|e| e.to_string())?.into_owned())
}

/// GPT-2's byte-to-character table: the 256 strings byte-level BPE uses for raw bytes.
fn byte_level_alphabet() -> Vec<String> {
    let printable =
        |b: u32| (33..=126).contains(&b) || (161..=172).contains(&b) || (174..=255).contains(&b);
    let mut extra = 0;
    (0u32..256)
        .map(|b| {
            let c = if printable(b) {
                b
            } else {
                extra += 1;
                255 + extra
            };
            char::from_u32(c).expect("valid code point").to_string()
        })
        .collect()
}

/// xorshift64* with a Box–Muller normal: reproducible without pulling in distributions.
struct Rng(u64);

impl Rng {
    fn next_f32(&mut self) -> f32 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        ((self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 40) as f32 + 0.5) / (1u64 << 24) as f32
    }

    fn normal(&mut self) -> f32 {
        let (u, v) = (self.next_f32(), self.next_f32());
        (-2.0 * u.ln()).sqrt() * (std::f32::consts::TAU * v).cos()
    }
}
