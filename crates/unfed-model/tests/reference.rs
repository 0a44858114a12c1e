//! Layer math against an independent implementation: Hugging Face `transformers` logits for tiny
//! random Llama and Qwen2 models (fixtures made by `scripts/make_reference_fixtures.py`).

use std::path::PathBuf;

use unfed_model::{Checkpoint, Compute, Input, LogitsMode, ShardModel, ShardRole, TextTokenizer};

/// Largest absolute difference allowed between our f32 logits and transformers' f32 logits.
const TOLERANCE: f32 = 1e-4;

struct Reference {
    input_ids: Vec<u32>,
    logits: Vec<Vec<f32>>,
    greedy_continuation: Vec<u32>,
    input_text: String,
}

fn fixture(name: &str) -> (PathBuf, Reference) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    let text = std::fs::read_to_string(dir.join("reference.json")).expect("fixture present");
    let v: serde_json::Value = serde_json::from_str(&text).expect("fixture is JSON");
    let ids = |k: &str| -> Vec<u32> {
        v[k].as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect()
    };
    let logits = v["logits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| {
            row.as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap() as f32)
                .collect()
        })
        .collect();
    let reference = Reference {
        input_ids: ids("input_ids"),
        logits,
        greedy_continuation: ids("greedy_continuation"),
        input_text: v["input_text"].as_str().unwrap().to_string(),
    };
    (dir, reference)
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn check(name: &str, compute: Compute) {
    let (dir, r) = fixture(name);
    let ck = Checkpoint::open(&dir).unwrap();
    let role = ShardRole::whole(&ck.config().unwrap());
    let model = ShardModel::load_role_with(&ck, role, compute).unwrap();

    // Whole sequence at once.
    let mut cache = model.new_cache();
    let out = model
        .forward(Input::Tokens(&r.input_ids), &mut cache, LogitsMode::All)
        .unwrap();
    let rows: Vec<Vec<f32>> = out.to_vec2().unwrap();
    let worst = rows
        .iter()
        .zip(&r.logits)
        .map(|(a, b)| max_abs_diff(a, b))
        .fold(0.0, f32::max);
    eprintln!("{name} ({compute:?}): max |logit - transformers| over the prompt = {worst:e}");
    assert!(
        worst < TOLERANCE,
        "{name}: logits differ from transformers by {worst}"
    );

    // One position at a time through the KV cache: the same logits.
    let mut cache = model.new_cache();
    for (pos, id) in r.input_ids.iter().enumerate() {
        let out = model
            .forward(Input::Tokens(&[*id]), &mut cache, LogitsMode::Last)
            .unwrap();
        let row: Vec<f32> = out.flatten_all().unwrap().to_vec1().unwrap();
        let d = max_abs_diff(&row, &r.logits[pos]);
        assert!(
            d < TOLERANCE,
            "{name}: incremental logits at position {pos} differ by {d}"
        );
    }

    // Greedy continuation (transformers' generate, KV cache on both sides).
    let mut cache = model.new_cache();
    let mut logits: Vec<f32> = model
        .forward(Input::Tokens(&r.input_ids), &mut cache, LogitsMode::Last)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let mut generated = Vec::new();
    for _ in 0..r.greedy_continuation.len() {
        let next = unfed_model::sampling::argmax(&logits);
        generated.push(next);
        logits = model
            .forward(Input::Tokens(&[next]), &mut cache, LogitsMode::Last)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
    }
    assert_eq!(
        generated, r.greedy_continuation,
        "{name}: greedy continuation"
    );

    // The fixture's tokenizer.json gives the fixture's ids.
    let tok = TextTokenizer::from_metadata(ck.metadata()).unwrap();
    assert_eq!(tok.encode(&r.input_text).unwrap(), r.input_ids);
    assert_eq!(tok.decode(&r.input_ids).unwrap(), r.input_text);
}

#[test]
fn llama_matches_transformers() {
    check("hf-tiny-llama", Compute::from_env());
}

#[test]
fn qwen2_matches_transformers() {
    check("hf-tiny-qwen2", Compute::from_env());
}

/// The same on the GPU (a build with `--features cuda`, on a machine with an NVIDIA GPU).
#[cfg(feature = "cuda")]
#[test]
fn cuda_matches_transformers() {
    check("hf-tiny-llama", Compute::Cuda);
    check("hf-tiny-qwen2", Compute::Cuda);
}
