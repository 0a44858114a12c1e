//! Helpers shared by the integration tests: tiny models, running a split as a pipeline, and
//! editing a manifest in place.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use unfed_gguf::GgmlType;
use unfed_model::testing::{TinySpec, write_tiny_gguf};
use unfed_model::{Arch, Checkpoint, Input, LogitsMode, ShardModel};
use unfed_shard::{Manifest, SplitOptions};

/// Untied Llama with Q8_0 matrices, 4 layers.
pub fn llama_spec() -> TinySpec {
    TinySpec {
        arch: Arch::Llama,
        n_layer: 4,
        weight_type: GgmlType::Q8_0,
        tied: false,
        seed: 11,
        ..TinySpec::default()
    }
}

/// Tied Qwen2 with Q4_1 matrices, 5 layers.
pub fn qwen2_spec() -> TinySpec {
    TinySpec {
        arch: Arch::Qwen2,
        n_layer: 5,
        weight_type: GgmlType::Q4_1,
        tied: true,
        seed: 23,
        ..TinySpec::default()
    }
}

/// Writes a tiny model into `dir` and returns its path.
pub fn tiny(dir: &Path, name: &str, spec: &TinySpec) -> PathBuf {
    let path = dir.join(name);
    write_tiny_gguf(&path, spec).unwrap();
    path
}

/// The Hugging Face safetensors fixture of a tiny Llama (3 layers).
pub fn hf_tiny_llama() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../unfed-model/tests/fixtures/hf-tiny-llama")
}

pub fn opts(n: usize) -> SplitOptions {
    SplitOptions {
        num_shards: n,
        model_id: None,
        force: false,
        mpc_layers: None,
    }
}

/// The Hugging Face safetensors fixture of a tiny tied Qwen2 (3 layers).
pub fn hf_tiny_qwen2() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../unfed-model/tests/fixtures/hf-tiny-qwen2")
}

/// A prompt of `len` token ids inside `vocab`.
pub fn prompt(vocab: usize, len: usize) -> Vec<u32> {
    (0..len).map(|i| ((i * 37 + 5) % vocab) as u32).collect()
}

/// f32 values of a logits tensor as bit patterns (checked to be finite and not constant, so
/// that equal bits mean equal numbers).
pub fn bits(t: &candle_core::Tensor) -> Vec<u32> {
    let v = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert!(v.iter().all(|x| x.is_finite()), "non-finite logits");
    assert!(v.iter().any(|x| *x != v[0]), "constant logits");
    v.iter().map(|v| v.to_bits()).collect()
}

/// Index of the largest value (first on ties), by f32 order.
pub fn argmax(t: &candle_core::Tensor) -> u32 {
    let v = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let mut best = 0;
    for (i, x) in v.iter().enumerate() {
        if *x > v[best] {
            best = i;
        }
    }
    best as u32
}

/// Something that turns a step's input tokens into logits, keeping its own caches.
pub trait Pipeline {
    fn step(&mut self, tokens: &[u32], mode: LogitsMode) -> candle_core::Tensor;
}

/// The unsplit model.
pub struct Whole {
    model: ShardModel,
    cache: unfed_model::KvCache,
}

impl Whole {
    pub fn open(path: &Path) -> Self {
        let ck = Checkpoint::open(path).unwrap();
        let model = ShardModel::load(&ck).unwrap();
        let cache = model.new_cache();
        Self { model, cache }
    }
}

impl Pipeline for Whole {
    fn step(&mut self, tokens: &[u32], mode: LogitsMode) -> candle_core::Tensor {
        self.model
            .forward(Input::Tokens(tokens), &mut self.cache, mode)
            .unwrap()
    }
}

/// The shards of a split, each with its own KV cache, hidden states handed from one to the next.
pub struct Split {
    shards: Vec<(ShardModel, unfed_model::KvCache)>,
}

impl Split {
    pub fn open(dir: &Path, manifest: &Manifest) -> Self {
        let shards = manifest
            .shards
            .iter()
            .map(|s| {
                let ck = Checkpoint::open(&dir.join(&s.file)).unwrap();
                let model = ShardModel::load(&ck).unwrap();
                assert_eq!(model.role().layers, s.layer_start..s.layer_end);
                assert_eq!(model.role().embedding, s.embedding);
                assert_eq!(model.role().head, s.head);
                let cache = model.new_cache();
                (model, cache)
            })
            .collect();
        Self { shards }
    }
}

impl Pipeline for Split {
    fn step(&mut self, tokens: &[u32], mode: LogitsMode) -> candle_core::Tensor {
        let mut x: Option<candle_core::Tensor> = None;
        for (model, cache) in &mut self.shards {
            let input = match &x {
                None => Input::Tokens(tokens),
                Some(h) => Input::Hidden(h),
            };
            x = Some(model.forward(input, cache, mode).unwrap());
        }
        x.unwrap()
    }
}

/// Runs a prefill (logits of every position) then `decode` greedy single-token steps, and
/// returns every step's logits as bit patterns.
pub fn generate(p: &mut dyn Pipeline, prompt: &[u32], decode: usize) -> Vec<Vec<u32>> {
    let mut out = Vec::new();
    let logits = p.step(prompt, LogitsMode::All);
    assert_eq!(logits.dims()[0], prompt.len());
    let last = logits.narrow(0, prompt.len() - 1, 1).unwrap();
    let mut next = argmax(&last);
    out.push(bits(&logits));
    for _ in 0..decode {
        let logits = p.step(&[next], LogitsMode::Last);
        assert_eq!(logits.dims()[0], 1);
        next = argmax(&logits);
        out.push(bits(&logits));
    }
    out
}

/// Reads `dir/manifest.json`, lets `edit` change it as JSON, writes it back.
pub fn edit_manifest(dir: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let path = dir.join("manifest.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    edit(&mut v);
    std::fs::write(&path, serde_json::to_string_pretty(&v).unwrap()).unwrap();
}
