//! What each party of the pair receives, recorded over a whole session (a prompt and decode
//! steps) for two different prompts of equal length: from the other party every word must look
//! like a uniform ring element and the two prompts' views must be alike; in nothing received,
//! from the other party or from the dealer, may a token id, one-hot entry or embedding value of
//! the prompt appear. The dealt input is a DPF key per token, whose shares `dpf.rs` tests.

mod common;

use common::{f32s, random_weights, raw};
use unfed_mpc::embedding::Embedding;
use unfed_mpc::layer::{LayerShape, LayerWeights};
use unfed_mpc::ring;
use unfed_mpc::shard::{LocalPair, ShardSpec, ShardWeights, View};

const VOCAB: usize = 300;

fn spec() -> ShardSpec {
    let layer = LayerShape {
        hidden: 32,
        ffn: 48,
        n_head: 4,
        n_kv_head: 2,
        head_dim: 8,
        rope_theta: 10000.0,
        interleaved: false,
        eps: 1e-5,
        gate_log2: 5,
    };
    ShardSpec {
        layer,
        vocab: VOCAB,
        k: 1,
    }
}

fn weights(s: &ShardSpec) -> (Vec<f32>, ShardWeights) {
    let table = f32s(40, VOCAB * s.layer.hidden, -0.5, 0.5);
    let embedding = Embedding::encode(&table, VOCAB, s.layer.hidden).unwrap();
    let w = random_weights(&s.layer, 41, true);
    let layers = vec![LayerWeights::new(&s.layer, &raw(&w)).unwrap()];
    (table, ShardWeights { embedding, layers })
}

/// The views of A and B for a prompt and three decode steps.
fn session(prompt: &[u32], seed: u8) -> [View; 2] {
    let s = spec();
    let (_, w) = weights(&s);
    let mut pair = LocalPair::new(s, &w, [seed; 16]);
    pair.record_views();
    pair.step(prompt).unwrap();
    // docs/mpc.md: 49 + ⌈log2 n⌉ rounds per layer and step, and one for the embedding.
    let n = prompt.len() as f64;
    assert_eq!(pair.stats.rounds, 50 + n.log2().ceil() as u64);
    for tok in [5, 250, 5] {
        pair.step(&[tok]).unwrap();
    }
    pair.views.take().unwrap()
}

/// Bits per position and bytes per value must be as frequent as for uniform words.
fn assert_uniform(what: &str, words: &[u64]) {
    let n = words.len() as f64;
    assert!(n >= 1000.0, "{what}: only {n} words");
    for bit in 0..64 {
        let ones = words.iter().filter(|w| (*w >> bit) & 1 == 1).count() as f64;
        let z = (ones - n / 2.0) / (n / 4.0).sqrt();
        assert!(
            z.abs() < 6.0,
            "{what}: bit {bit} set in {ones} of {n} words (z = {z:.1})"
        );
    }
    let mut counts = [0f64; 256];
    for w in words {
        for b in w.to_le_bytes() {
            counts[b as usize] += 1.0;
        }
    }
    let expected = 8.0 * n / 256.0;
    let chi2: f64 = counts
        .iter()
        .map(|c| (c - expected).powi(2) / expected)
        .sum();
    // 255 degrees of freedom: P(chi2 > 380) < 1e-6 for uniform bytes.
    assert!(chi2 < 380.0, "{what}: byte chi-square {chi2:.0}");
}

/// The top bytes of two views must come from the same distribution (two-sample chi-square).
fn assert_alike(what: &str, x: &[u64], y: &[u64]) {
    let hist = |v: &[u64]| {
        let mut h = [0f64; 256];
        v.iter().for_each(|w| h[(w >> 56) as usize] += 1.0);
        h
    };
    let (hx, hy) = (hist(x), hist(y));
    let (nx, ny) = (x.len() as f64, y.len() as f64);
    let chi2: f64 = hx
        .iter()
        .zip(&hy)
        .filter(|(a, b)| **a + **b > 0.0)
        .map(|(a, b)| {
            let (ea, eb) = ((a + b) * nx / (nx + ny), (a + b) * ny / (nx + ny));
            (a - ea).powi(2) / ea + (b - eb).powi(2) / eb
        })
        .sum();
    assert!(chi2 < 380.0, "{what}: two-sample chi-square {chi2:.0}");
}

#[test]
fn the_parties_views_look_uniform_and_carry_nothing_of_the_prompt() {
    let prompts: [&[u32]; 2] = [&[1, 17, 17, 200, 42, 299], &[2, 3, 150, 77, 9, 0]];
    let views = [session(prompts[0], 1), session(prompts[1], 2)];
    let s = spec();
    let (table, _) = weights(&s);
    let t = prompts[0].len();
    for (p, [a, b]) in views.iter().enumerate() {
        assert_uniform(&format!("prompt {p}: A from B"), &a.link);
        assert_uniform(&format!("prompt {p}: B from A"), &b.link);
        for view in [a, b] {
            let all: std::collections::HashSet<u64> =
                view.link.iter().chain(&view.material).copied().collect();
            for &tok in prompts[p] {
                let row = &table[tok as usize * s.layer.hidden..][..s.layer.hidden];
                let hits = row
                    .iter()
                    .filter(|v| all.contains(&ring::encode(**v as f64)))
                    .count();
                assert_eq!(
                    hits, 0,
                    "prompt {p}: an embedding value of token {tok} appears"
                );
            }
            let small = view.link.iter().filter(|w| **w < VOCAB as u64).count();
            assert_eq!(
                small, 0,
                "prompt {p}: a word that could be a token id or one-hot entry"
            );
        }
    }
    for (i, name) in ["A", "B"].iter().enumerate() {
        assert_alike(
            &format!("{name}'s link view"),
            &views[0][i].link,
            &views[1][i].link,
        );
    }

    // Control: the plaintext one-hot rows, fed to the same check, fail it.
    let mut onehot = vec![0u64; t * VOCAB];
    prompts[0]
        .iter()
        .enumerate()
        .for_each(|(i, &tok)| onehot[i * VOCAB + tok as usize] = 1);
    let caught = std::panic::catch_unwind(|| assert_uniform("plaintext one-hot", &onehot));
    assert!(
        caught.is_err(),
        "the uniformity check must reject plaintext"
    );
}
