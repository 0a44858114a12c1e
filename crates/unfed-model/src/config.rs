//! The model configuration, read from GGUF-style metadata (llama.cpp's key names).
//!
//! Safetensors checkpoints get the same metadata synthesised from `config.json`
//! (see [`crate::checkpoint`]), so this is the one place a configuration is parsed.

use unfed_gguf::Value;

use crate::{ModelError, Result};

/// The architecture families the engine runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    /// Llama: RMSNorm, RoPE, GQA, SwiGLU, no attention biases.
    Llama,
    /// Qwen2: Llama plus biases on the query, key and value projections.
    Qwen2,
}

impl Arch {
    /// The `general.architecture` string and metadata key prefix.
    pub fn name(self) -> &'static str {
        match self {
            Arch::Llama => "llama",
            Arch::Qwen2 => "qwen2",
        }
    }

    pub fn from_name(name: &str) -> Result<Self> {
        match name {
            "llama" => Ok(Arch::Llama),
            "qwen2" => Ok(Arch::Qwen2),
            other => Err(ModelError::Config(format!(
                "architecture `{other}` is not supported (supported: llama, qwen2)"
            ))),
        }
    }

    /// Whether the query/key/value projections carry biases.
    pub fn qkv_bias(self) -> bool {
        matches!(self, Arch::Qwen2)
    }

    /// Whether RoPE rotates adjacent pairs (llama.cpp's "normal" mode, which GGUF Llama weights
    /// are permuted for) rather than the two halves of each head (NeoX style).
    pub fn rope_interleaved(self) -> bool {
        matches!(self, Arch::Llama)
    }
}

/// Hyper-parameters of a decoder-only transformer.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    pub arch: Arch,
    pub n_layer: usize,
    pub hidden: usize,
    pub ffn: usize,
    pub n_head: usize,
    pub n_kv_head: usize,
    pub head_dim: usize,
    pub vocab: usize,
    pub context_length: usize,
    pub rope_theta: f32,
    pub rms_eps: f64,
}

impl ModelConfig {
    /// Reads the configuration from metadata, with `vocab` taken from the embedding or tokenizer
    /// when the metadata does not say.
    pub fn from_metadata(meta: &[(String, Value)], vocab_hint: Option<usize>) -> Result<Self> {
        let get = |k: &str| meta.iter().find(|(key, _)| key == k).map(|(_, v)| v);
        let arch_name = get("general.architecture")
            .and_then(Value::as_str)
            .ok_or_else(|| ModelError::Config("general.architecture is missing".into()))?;
        let arch = Arch::from_name(arch_name)?;
        let p = arch.name();
        let uint = |key: &str| -> Result<Option<usize>> {
            match get(&format!("{p}.{key}")) {
                None => Ok(None),
                Some(v) => v
                    .as_u64()
                    .map(|v| Some(v as usize))
                    .ok_or_else(|| ModelError::Config(format!("{p}.{key} is not an integer"))),
            }
        };
        let req = |key: &str| -> Result<usize> {
            uint(key)?.ok_or_else(|| ModelError::Config(format!("{p}.{key} is missing")))
        };
        let float = |key: &str| get(&format!("{p}.{key}")).and_then(Value::as_f64);
        let n_layer = req("block_count")?;
        let hidden = req("embedding_length")?;
        let n_head = req("attention.head_count")?;
        let n_kv_head = uint("attention.head_count_kv")?.unwrap_or(n_head);
        let head_dim = match uint("attention.key_length")? {
            Some(d) => d,
            None if n_head > 0 => hidden / n_head,
            None => 0,
        };
        let vocab = match uint("vocab_size")? {
            Some(v) => v,
            None => vocab_hint
                .ok_or_else(|| ModelError::Config("vocabulary size is not recorded".into()))?,
        };
        let cfg = Self {
            arch,
            n_layer,
            hidden,
            ffn: req("feed_forward_length")?,
            n_head,
            n_kv_head,
            head_dim,
            vocab,
            context_length: uint("context_length")?.unwrap_or(2048),
            rope_theta: float("rope.freq_base").unwrap_or(10_000.0) as f32,
            rms_eps: float("attention.layer_norm_rms_epsilon").unwrap_or(1e-5),
        };
        cfg.validate()?;
        Ok(cfg)
    }

    fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(ModelError::Config(m));
        if self.n_layer == 0 || self.hidden == 0 || self.n_head == 0 || self.ffn == 0 {
            return bad(format!("degenerate shape: {self:?}"));
        }
        if self.n_kv_head == 0 || !self.n_head.is_multiple_of(self.n_kv_head) {
            return bad(format!(
                "{} heads cannot be grouped over {} KV heads",
                self.n_head, self.n_kv_head
            ));
        }
        if self.head_dim == 0 || !self.head_dim.is_multiple_of(2) {
            return bad(format!("head dimension {} must be even", self.head_dim));
        }
        if self.n_layer > 4096 || self.hidden > 1 << 16 || self.vocab > 1 << 22 {
            return bad(format!("implausible shape: {self:?}"));
        }
        Ok(())
    }

    /// Parameters (weights) of the whole model, counting a tied head once.
    pub fn parameter_count(&self, tied_head: bool) -> u64 {
        let (h, f, v) = (self.hidden as u64, self.ffn as u64, self.vocab as u64);
        let q = (self.n_head * self.head_dim) as u64;
        let kv = (self.n_kv_head * self.head_dim) as u64;
        let bias = if self.arch.qkv_bias() { q + 2 * kv } else { 0 };
        let per_layer = h * q + 2 * h * kv + q * h + 3 * h * f + 2 * h + bias;
        let head = if tied_head { 0 } else { v * h };
        v * h + self.n_layer as u64 * per_layer + h + head
    }
}
