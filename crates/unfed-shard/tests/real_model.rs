//! Split, verify and compose the real models (slow: real weights, fetched into the model store;
//! run with `UNFED_SLOW=1`). The composed shards must give the unsplit model's logits bit for bit.

mod common;

use std::path::PathBuf;
use std::time::Instant;

use common::*;
use unfed_model::{Checkpoint, TextTokenizer};
use unfed_shard::{CheckStatus, split, verify};
use unfed_store::{FetchOptions, ModelStore, find};

#[test]
#[cfg_attr(not(unfed_slow), ignore = "slow: real model weights; set UNFED_SLOW=1")]
fn smollm2_split_composes_bit_for_bit() {
    split_and_compose("smollm2-135m", 3);
}

#[test]
#[cfg_attr(not(unfed_slow), ignore = "slow: real model weights; set UNFED_SLOW=1")]
fn qwen_split_composes_bit_for_bit() {
    split_and_compose("qwen2.5-coder-0.5b", 3);
}

fn split_and_compose(name: &str, n: usize) {
    let store = ModelStore::open_default().unwrap();
    let source: PathBuf = store
        .fetch(find(name).unwrap(), &FetchOptions::default())
        .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path();
    let options = opts(n);
    let t = Instant::now();
    let m = split(&source, out, &options).unwrap();
    let split_s = t.elapsed().as_secs_f64();
    eprintln!("split {} into {n} shards: {split_s:.2} s", source.display());
    for s in &m.shards {
        eprintln!(
            "  {}: layers {}..{}, {} tensors, {} bytes",
            s.file,
            s.layer_start,
            s.layer_end,
            s.tensors.len(),
            s.size
        );
    }

    let t = Instant::now();
    let r = verify(out).unwrap();
    let verify_s = t.elapsed().as_secs_f64();
    eprint!("{r}");
    eprintln!("verify: {verify_s:.2} s");
    assert!(r.is_ok());
    assert!(r.checks.iter().all(|c| c.status == CheckStatus::Pass));

    // The split composes to the unsplit model's logits, bit for bit.
    let ck = Checkpoint::open(&source).unwrap();
    let tok = TextTokenizer::from_metadata(ck.metadata()).unwrap();
    let prompt = tok.encode("The capital of France is").unwrap();
    let t = Instant::now();
    let whole = generate(&mut Whole::open(&source), &prompt, 4);
    let split_run = generate(&mut Split::open(out, &m), &prompt, 4);
    assert_eq!(
        whole, split_run,
        "split logits differ from the whole model's"
    );
    eprintln!(
        "whole vs split: {} prompt tokens + 4 decode steps bit-identical ({:.2} s)",
        prompt.len(),
        t.elapsed().as_secs_f64()
    );
}
