//! Splitting then composing the shards gives bit-identical logits to the unsplit model (prefill
//! and decode, through per-shard KV caches), and shard files keep the source's bytes.

mod common;

use std::collections::BTreeSet;
use std::path::Path;

use common::*;
use unfed_model::Checkpoint;
use unfed_shard::split;

/// Prefill of this many tokens, then this many decode steps.
const PROMPT: usize = 11;
const DECODE: usize = 6;

fn assert_bit_identical(source: &Path, max_shards: usize) {
    let vocab = Checkpoint::open(source).unwrap().config().unwrap().vocab;
    let prompt = prompt(vocab, PROMPT);
    let reference = generate(&mut Whole::open(source), &prompt, DECODE);
    assert_eq!(reference.len(), DECODE + 1);
    for n in 1..=max_shards {
        let out = tempfile::tempdir().unwrap();
        let manifest = split(source, out.path(), &opts(n)).unwrap();
        assert_eq!(manifest.shards.len(), n);
        let got = generate(&mut Split::open(out.path(), &manifest), &prompt, DECODE);
        for (step, (a, b)) in reference.iter().zip(&got).enumerate() {
            assert_eq!(a.len(), b.len(), "{n} shards, step {step}: logits count");
            let differing = a.iter().zip(b).filter(|(x, y)| x != y).count();
            assert_eq!(
                differing, 0,
                "{n} shards, step {step}: {differing} logits differ in their bits"
            );
        }
    }
}

#[test]
fn llama_q8_0_untied_is_bit_identical_for_1_2_3_shards() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny(dir.path(), "llama.gguf", &llama_spec());
    assert_bit_identical(&model, 3);
}

#[test]
fn qwen2_q4_1_tied_is_bit_identical_for_1_2_3_shards() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny(dir.path(), "qwen2.gguf", &qwen2_spec());
    assert_bit_identical(&model, 3);
}

#[test]
fn safetensors_llama_is_bit_identical_for_1_2_3_shards() {
    assert_bit_identical(&hf_tiny_llama(), 3);
}

#[test]
fn safetensors_qwen2_tied_is_bit_identical_for_1_2_3_shards() {
    assert_bit_identical(&hf_tiny_qwen2(), 3);
}

/// Every tensor in every shard has the source's type, shape and bytes; every source tensor
/// lands in a shard; every source metadata entry is carried unchanged.
fn assert_bytes_kept(source: &Path, n: usize) {
    let src = Checkpoint::open(source).unwrap();
    let out = tempfile::tempdir().unwrap();
    let manifest = split(source, out.path(), &opts(n)).unwrap();
    let mut seen = BTreeSet::new();
    for s in &manifest.shards {
        let shard = Checkpoint::open(&out.path().join(&s.file)).unwrap();
        assert_eq!(
            shard.tensor_names(),
            s.tensors,
            "shard {} tensor list",
            s.index
        );
        for name in shard.tensor_names() {
            let a = src.tensor(&name).unwrap();
            let b = shard.tensor(&name).unwrap();
            assert_eq!(
                (a.ty, &a.dims),
                (b.ty, &b.dims),
                "{name} in shard {}",
                s.index
            );
            assert!(
                a.data == b.data,
                "{name} in shard {}: bytes differ",
                s.index
            );
            seen.insert(name);
        }
        for (key, value) in src.metadata() {
            assert_eq!(
                shard.get(key),
                Some(value),
                "metadata {key} in shard {}",
                s.index
            );
        }
    }
    let all: BTreeSet<String> = src.tensor_names().into_iter().collect();
    assert_eq!(seen, all, "tensors of the source missing from every shard");
}

#[test]
fn shard_files_keep_the_source_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let llama = tiny(dir.path(), "llama.gguf", &llama_spec());
    let qwen = tiny(dir.path(), "qwen2.gguf", &qwen2_spec());
    for n in [1, 2, 3] {
        assert_bytes_kept(&llama, n);
        assert_bytes_kept(&qwen, n);
        assert_bytes_kept(&hf_tiny_llama(), n);
    }
}

#[test]
fn shards_hold_exactly_their_part() {
    let dir = tempfile::tempdir().unwrap();
    let qwen = tiny(dir.path(), "qwen2.gguf", &qwen2_spec());
    let out = tempfile::tempdir().unwrap();
    let m = split(&qwen, out.path(), &opts(3)).unwrap();
    let ranges: Vec<_> = m
        .shards
        .iter()
        .map(|s| s.layer_start..s.layer_end)
        .collect();
    assert_eq!(ranges, vec![0..2, 2..4, 4..5]);
    assert!(m.tied_embeddings);
    let has = |i: usize, n: &str| m.shards[i].tensors.iter().any(|t| t == n);
    assert!(has(0, "token_embd.weight"));
    assert!(!has(1, "token_embd.weight"));
    // Tied: the last shard needs the embedding matrix as its head.
    assert!(has(2, "token_embd.weight") && has(2, "output_norm.weight"));
    assert!(
        !m.shards
            .iter()
            .any(|s| s.tensors.iter().any(|t| t == "output.weight"))
    );
    assert!(has(1, "blk.3.attn_q.bias") && !has(1, "blk.4.attn_q.bias"));
    assert_eq!(m.shards[1].tensors.len(), 2 * 12);
    let flags: Vec<_> = m
        .shards
        .iter()
        .map(|s| (s.embedding, s.final_norm, s.head))
        .collect();
    assert_eq!(
        flags,
        vec![
            (true, false, false),
            (false, false, false),
            (false, true, true)
        ]
    );
    assert_eq!(m.model_id, "qwen2");
    assert_eq!(m.source.format, "gguf");
    assert_eq!(
        m.source.sha256,
        unfed_shard::hash::sha256_hex(&std::fs::read(&qwen).unwrap())
    );
    assert!(m.chat_template.as_deref().unwrap().contains("im_start"));
    assert!(m.end_of_generation.contains(&258));
    // Verification inputs: tokens for shard 0, recorded hidden states for the others.
    assert!(matches!(
        m.verification.vectors[0].input,
        unfed_shard::VectorInput::Tokens { .. }
    ));
    assert!(matches!(
        m.verification.vectors[1].input,
        unfed_shard::VectorInput::Hidden { .. }
    ));
    assert_eq!(
        m.verification.vectors[2].output_shape,
        vec![8, unfed_model::testing::TINY_VOCAB]
    );
    // The manifest on disk is the one returned.
    assert_eq!(unfed_shard::read_manifest(out.path()).unwrap(), m);
}

#[test]
fn safetensors_source_is_hashed_file_by_file() {
    let out = tempfile::tempdir().unwrap();
    let m = split(&hf_tiny_llama(), out.path(), &opts(2)).unwrap();
    assert_eq!(m.source.format, "safetensors");
    assert_eq!(m.model_id, "hf-tiny-llama");
    let bytes = std::fs::read(hf_tiny_llama().join("model.safetensors")).unwrap();
    assert_eq!(m.source.files.len(), 1);
    assert_eq!(m.source.files[0].name, "model.safetensors");
    assert_eq!(m.source.sha256, unfed_shard::hash::sha256_hex(&bytes));
    assert_eq!(m.source.size, bytes.len() as u64);
    let tok = std::fs::read_to_string(out.path().join("tokenizer.json")).unwrap();
    assert!(tok.contains("\"model\""));
}
