//! The manifest of a split (`manifest.json`): what the model is, which file holds which layers,
//! the hashes that pin every byte, and the verification vectors. See `docs/manifest.md`.

use std::io::Read;
use std::path::Path;

use serde::{Deserialize, Serialize};
use unfed_model::ModelConfig;

use crate::ShardError;

/// File name of the manifest inside a split directory.
pub const MANIFEST_FILE: &str = "manifest.json";
/// Value of the manifest's `format` field.
pub const MANIFEST_FORMAT: &str = "unfed-shard-manifest";
/// Value of the manifest's `version` field this build writes and reads.
pub const MANIFEST_VERSION: u32 = 1;
/// Manifests larger than this are refused unread.
pub const MAX_MANIFEST_BYTES: u64 = 16 << 20;

/// A split: the model, its shards, its tokenizer and the vectors that check a shard runs right.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Always [`MANIFEST_FORMAT`].
    pub format: String,
    /// Always [`MANIFEST_VERSION`] for this layout.
    pub version: u32,
    /// The model's identifier in registries and on the command line.
    pub model_id: String,
    /// `general.architecture` of the model (`llama`, `qwen2`).
    pub architecture: String,
    /// The model's hyper-parameters, as the runtime reads them.
    pub config: ModelConfig,
    /// The model has no `output.weight`: its head reuses `token_embd.weight`.
    pub tied_embeddings: bool,
    /// The checkpoint the shards were cut from.
    pub source: SourceInfo,
    /// One entry per shard, in pipeline order.
    pub shards: Vec<ShardEntry>,
    /// The Hugging Face `tokenizer.json` written next to the shards.
    pub tokenizer: TokenizerEntry,
    /// The Jinja chat template from the source metadata, if it has one.
    pub chat_template: Option<String>,
    /// Token ids that end a generation.
    pub end_of_generation: Vec<u32>,
    /// Present when shard 0 must run as a two-party MPC pair (docs/mpc.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mpc: Option<MpcPlan>,
    /// Fixed inputs and the outputs each shard must produce from them.
    pub verification: Verification,
}

/// Shard 0 on shares: the embedding and its decoder layers run by a two-party MPC pair, never
/// by one node in the clear.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MpcPlan {
    /// Decoder layers on shares (shard 0's whole layer range).
    pub layers: usize,
    /// Those layers' gate activations are below `2^gate_log2` whatever the input, as their
    /// weights show ([`mpc_plan`]); SiLU on shares compares that many integer bits. A manifest
    /// written before the bound was recorded reads as the widest one.
    #[serde(default = "widest_gate")]
    pub gate_log2: u32,
}

fn widest_gate() -> u32 {
    unfed_mpc::layer::GATE_LOG2_MAX
}

/// The plan of shard 0 on shares with the first `layers` decoder layers of `ck`: the bound on
/// their gate activations is the widest of theirs ([`unfed_mpc::layer::gate_log2`]).
pub fn mpc_plan(
    ck: &unfed_model::Checkpoint,
    cfg: &ModelConfig,
    layers: usize,
) -> Result<MpcPlan, unfed_model::ModelError> {
    let mut gate_log2 = 0;
    for i in 0..layers.min(cfg.n_layer) {
        let (_, norm) = ck.dequantized(&format!("blk.{i}.ffn_norm.weight"))?;
        let (_, gate) = ck.dequantized(&format!("blk.{i}.ffn_gate.weight"))?;
        gate_log2 = gate_log2.max(unfed_mpc::layer::gate_log2(cfg.hidden, &norm, &gate));
    }
    Ok(MpcPlan { layers, gate_log2 })
}

/// Where the shards came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceInfo {
    /// `gguf` or `safetensors`.
    pub format: String,
    /// The source's file or directory name (informational; not a path to open).
    pub name: String,
    /// Total bytes hashed.
    pub size: u64,
    /// SHA-256 of the GGUF file, or of the concatenated `*.safetensors` files in name order.
    pub sha256: String,
    /// The hashed files, in hashing order.
    pub files: Vec<SourceFile>,
}

/// One file of the source.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceFile {
    pub name: String,
    pub size: u64,
    pub sha256: String,
}

/// One shard file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShardEntry {
    /// Position in the pipeline, from 0.
    pub index: usize,
    /// File name relative to the split directory.
    pub file: String,
    /// First layer (global index).
    pub layer_start: usize,
    /// One past the last layer.
    pub layer_end: usize,
    /// Holds `token_embd.weight` and takes token ids.
    pub embedding: bool,
    /// Holds `output_norm.weight`.
    pub final_norm: bool,
    /// Holds the output head and produces logits.
    pub head: bool,
    /// File size in bytes.
    pub size: u64,
    /// SHA-256 of the whole file.
    pub sha256: String,
    /// Chunk size of `chunk_sha256`, in bytes.
    pub chunk_size: u64,
    /// SHA-256 of each `chunk_size` bytes of the file, in order (the last chunk may be shorter).
    pub chunk_sha256: Vec<String>,
    /// Names of the tensors in the file, in file order.
    pub tensors: Vec<String>,
}

impl ShardEntry {
    /// The layer range, end exclusive.
    pub fn layers(&self) -> std::ops::Range<usize> {
        self.layer_start..self.layer_end
    }
}

/// The tokenizer file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenizerEntry {
    /// File name relative to the split directory.
    pub file: String,
    pub size: u64,
    pub sha256: String,
    /// What the tokenizer is (`byte-level BPE, pre-tokenizer smollm, 49152 tokens`).
    pub kind: String,
}

/// The verification vectors and how to compare against them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Verification {
    /// Positions in each input (rows of the hidden-state input, or token ids).
    pub positions: usize,
    /// Name of the generator of hidden-state inputs (see `docs/manifest.md`).
    pub hidden_generator: String,
    /// When an output whose hash differs still counts as a match.
    pub tolerance: Tolerance,
    /// One vector per shard, in shard order.
    pub vectors: Vec<VerificationVector>,
}

/// Tolerances for outputs computed with different floating-point kernels.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tolerance {
    /// `|l2 - expected_l2| <= l2_rel * expected_l2`.
    pub l2_rel: f64,
    /// `|value - expected| <= sample_rms_fraction * expected_rms` for every sample, where
    /// `expected_rms = expected_l2 / sqrt(element count)`.
    pub sample_rms_fraction: f64,
}

/// A fixed input for one shard and a fingerprint of the output it must give.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VerificationVector {
    /// The shard this vector is for.
    pub shard: usize,
    pub input: VectorInput,
    /// Shape of the output: `[positions, hidden]`, or `[positions, vocab]` for the head shard
    /// (logits of every position).
    pub output_shape: Vec<usize>,
    /// SHA-256 of the output's f32 values, little-endian, row-major.
    pub output_sha256: String,
    /// Euclidean norm of the output, accumulated in f64 in row-major order.
    pub output_l2: f64,
    /// A few output values at fixed flat (row-major) indices.
    pub output_samples: Vec<Sample>,
}

/// The input of a verification vector.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum VectorInput {
    /// Token ids, for the shard with the embedding.
    Tokens { token_ids: Vec<u32> },
    /// A generated hidden-state input of shape `[rows, cols]`.
    Hidden {
        seed: u64,
        rows: usize,
        cols: usize,
        /// SHA-256 of the generated f32 values, little-endian, row-major.
        sha256: String,
    },
}

/// One output value.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sample {
    /// Flat row-major index into the output.
    pub index: usize,
    pub value: f32,
}

/// The shapes of shard 0 on shares for a model, as `plan` has it.
pub fn mpc_spec(cfg: &ModelConfig, plan: MpcPlan) -> unfed_mpc::shard::ShardSpec {
    unfed_mpc::shard::ShardSpec {
        layer: unfed_mpc::layer::LayerShape {
            hidden: cfg.hidden,
            ffn: cfg.ffn,
            n_head: cfg.n_head,
            n_kv_head: cfg.n_kv_head,
            head_dim: cfg.head_dim,
            rope_theta: cfg.rope_theta,
            interleaved: cfg.arch.rope_interleaved(),
            eps: cfg.rms_eps,
            gate_log2: plan.gate_log2,
        },
        vocab: cfg.vocab,
        k: plan.layers,
    }
}

impl Manifest {
    /// What shard 0 on shares is, when the model requires an MPC pair.
    pub fn mpc_spec(&self) -> Option<unfed_mpc::shard::ShardSpec> {
        self.mpc.map(|m| mpc_spec(&self.config, m))
    }

    /// The manifest as pretty-printed JSON, ending in a newline.
    pub fn to_json(&self) -> String {
        // Serialising plain structs of strings and numbers cannot fail; non-finite floats
        // (which JSON cannot hold) become `null` and are refused when read back.
        let mut s = serde_json::to_string_pretty(self).unwrap_or_default();
        s.push('\n');
        s
    }

    /// Parses a manifest and checks its `format` and `version`.
    pub fn from_json(text: &str) -> Result<Self, String> {
        // Look at the format first so that a different file gets a clearer message than
        // "unknown field".
        let raw: serde_json::Value =
            serde_json::from_str(text).map_err(|e| format!("not valid JSON: {e}"))?;
        match raw.get("format").and_then(|f| f.as_str()) {
            Some(MANIFEST_FORMAT) => {}
            Some(other) => return Err(format!("format is `{other}`, not `{MANIFEST_FORMAT}`")),
            None => return Err(format!("no `format` field: not a {MANIFEST_FORMAT}")),
        }
        match raw.get("version").and_then(|v| v.as_u64()) {
            Some(v) if v == u64::from(MANIFEST_VERSION) => {}
            Some(v) => {
                return Err(format!(
                    "version {v} is not supported (this build reads version {MANIFEST_VERSION})"
                ));
            }
            None => return Err("no numeric `version` field".into()),
        }
        let manifest: Self = serde_json::from_value(raw).map_err(|e| e.to_string())?;
        if let Some(plan) = manifest.mpc {
            let range = unfed_mpc::layer::GATE_LOG2_MIN..=unfed_mpc::layer::GATE_LOG2_MAX;
            if !range.contains(&plan.gate_log2) {
                return Err(format!(
                    "mpc.gate_log2 is {}, not from {} to {}",
                    plan.gate_log2,
                    range.start(),
                    range.end()
                ));
            }
        }
        Ok(manifest)
    }
}

/// Reads `DIR/manifest.json`, refusing files over [`MAX_MANIFEST_BYTES`].
pub fn read_manifest(dir: &Path) -> Result<Manifest, ShardError> {
    let path = dir.join(MANIFEST_FILE);
    let bad = |problem: String| ShardError::Manifest {
        path: path.clone(),
        problem,
    };
    let file = std::fs::File::open(&path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => {
            bad("missing: the directory holds no finished split".into())
        }
        _ => bad(format!("cannot open: {e}")),
    })?;
    let mut text = String::new();
    file.take(MAX_MANIFEST_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(|e| bad(format!("cannot read: {e}")))?;
    if text.len() as u64 > MAX_MANIFEST_BYTES {
        return Err(bad(format!(
            "larger than the {MAX_MANIFEST_BYTES}-byte limit"
        )));
    }
    Manifest::from_json(&text).map_err(bad)
}
