//! `unfed bench --mpc`: what running shard 0 as a two-party MPC pair costs, for K = 1 and 2
//! layers on shares, next to the plaintext shard 0 (embedding + the same K layers on the
//! engine's kernels) in the same run. Per prompt token and per decode token: both times, the
//! dealer's (the client's) time, rounds, bytes between A and B, bytes dealt. The two parties
//! run in this process on two threads joined by an in-memory link (no network: the figures
//! are the protocol's compute and traffic; each round on a real link adds its latency).

use std::time::{Duration, Instant};

use anyhow::Result;
use unfed_model::{Checkpoint, Input, LogitsMode, ShardModel, ShardRole};
use unfed_mpc::shard::LocalPair;
use unfed_node::mpc_weights;

/// One measured run of a prefill and `decode` single-token steps.
#[derive(Clone, Copy, Default)]
struct Phase {
    plain: Duration,
    pair: Duration,
    deal: Duration,
    rounds: u64,
    words: u64,
    dealt: usize,
}

pub fn run(path: &std::path::Path, prompt_ids: &[u32], decode: usize, runs: usize) -> Result<()> {
    let ck = Checkpoint::open(path)?;
    let cfg = ck.config()?;
    let p = prompt_ids.len();
    println!(
        "MPC shard 0 vs plaintext shard 0, {} ({} prompt tokens, {decode} decode steps, median of {runs})",
        path.file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default(),
        p
    );
    println!(
        "| K | phase | plaintext ms | pair ms | added ms | dealer ms | rounds/step | A↔B KB | A↔B KB/layer | dealt KB |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    for k in [1, 2].into_iter().filter(|&k| k <= cfg.n_layer) {
        let plan = mpc_weights::plan(&ck, &cfg, k)?;
        let weights = mpc_weights::load(&ck, &cfg, plan)?;
        let role = ShardRole {
            layers: 0..k,
            embedding: true,
            head: false,
        };
        let front = ShardModel::load_role(&ck, role)?;
        let mut prefills = Vec::new();
        let mut decodes = Vec::new();
        for round in 0..=runs {
            let mut pair = LocalPair::new(mpc_weights::spec(&cfg, plan), &weights, rand::random());
            let mut cache = front.new_cache();
            let mut measure = |tokens: &[u32]| -> Result<Phase> {
                let t0 = Instant::now();
                front.forward(Input::Tokens(tokens), &mut cache, LogitsMode::All)?;
                let plain = t0.elapsed();
                let before = (pair.stats, pair.dealt, pair.deal_time, pair.pair_time);
                pair.step(tokens)?;
                Ok(Phase {
                    plain,
                    pair: pair.pair_time - before.3,
                    deal: pair.deal_time - before.2,
                    rounds: pair.stats.rounds - before.0.rounds,
                    words: pair.stats.words_sent - before.0.words_sent,
                    dealt: pair.dealt - before.1,
                })
            };
            let prefill = measure(prompt_ids)?;
            let mut steps = Vec::new();
            for i in 0..decode {
                steps.push(measure(&[prompt_ids[i % p]])?);
            }
            if round > 0 {
                prefills.push(prefill);
                decodes.push(mean(&steps));
            }
        }
        row(k, "per prompt token", &median(&prefills), p);
        row(k, "per decode token", &median(&decodes), 1);
    }
    println!(
        "(A↔B counts both directions; rounds/step are for the whole prefill step or one decode step; \
         dealt is what the client sends A and B together)"
    );
    Ok(())
}

fn row(k: usize, phase: &str, m: &Phase, per: usize) {
    let ms = |d: Duration| d.as_secs_f64() * 1e3 / per as f64;
    let kb = |bytes: f64| bytes / 1024.0 / per as f64;
    let both = 2.0 * 8.0 * m.words as f64;
    println!(
        "| {k} | {phase} | {:.2} | {:.2} | {:.2} | {:.2} | {} | {:.1} | {:.1} | {:.1} |",
        ms(m.plain),
        ms(m.pair),
        ms(m.pair) - ms(m.plain),
        ms(m.deal),
        m.rounds,
        kb(both),
        kb(both) / k as f64,
        kb(m.dealt as f64),
    );
}

fn mean(steps: &[Phase]) -> Phase {
    let n = steps.len().max(1) as u32;
    let sum = |f: fn(&Phase) -> Duration| steps.iter().map(f).sum::<Duration>() / n;
    Phase {
        plain: sum(|s| s.plain),
        pair: sum(|s| s.pair),
        deal: sum(|s| s.deal),
        rounds: steps.iter().map(|s| s.rounds).sum::<u64>() / n as u64,
        words: steps.iter().map(|s| s.words).sum::<u64>() / n as u64,
        dealt: steps.iter().map(|s| s.dealt).sum::<usize>() / n as usize,
    }
}

/// The run with the median pair time.
fn median(runs: &[Phase]) -> Phase {
    let mut v = runs.to_vec();
    v.sort_by_key(|r| r.pair);
    v[v.len() / 2]
}
