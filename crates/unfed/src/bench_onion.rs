//! `unfed bench --onion`: what onion circuits cost. Per token, all the circuit work of one step
//! (the client's sealed step with every hop's layer, each hop opening its frames and sealing the
//! next link, the reply cell sealed, relayed and unwrapped) next to the engine's own decode time
//! per token in the same run; per circuit, building the header and peeling it at every hop.

use std::time::{Duration, Instant};

use anyhow::{Result, anyhow};
use unfed_client::{Candidate, ClientCircuit, Route};
use unfed_engine::{GenerateRequest, generate};
use unfed_model::SamplingParams;
use unfed_node::circuit::{HopCircuit, Place};
use unfed_onion::{OnionHop, OnionSecretKey};
use unfed_proto::convert;

use crate::resolve::Loaded;

/// Steps measured per round for the per-token figure.
const STEPS: usize = 2000;
/// Circuits built per round for the setup figure.
const SETUPS: usize = 200;

/// Runs `rounds` rounds alternating the engine's decode and the circuit work; prints medians.
pub fn run(loaded: &Loaded, prompt_ids: Vec<u32>, hops: usize, rounds: usize) -> Result<()> {
    let hidden = loaded.pipeline.config().hidden;
    let req = GenerateRequest {
        prompt_ids,
        max_tokens: 64,
        sampling: SamplingParams::greedy(),
        ignore_eos: true,
    };
    let (mut decode, mut per_token, mut setup) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..=rounds {
        let stats = generate(&loaded.pipeline, &loaded.tokenizer, &req, &mut |_| true)?;
        let step = circuit_steps(hops, hidden)?;
        let built = circuit_setups(hops)?;
        if round > 0 {
            decode.push(stats.decode.as_secs_f64() / stats.decode_steps.max(1) as f64);
            per_token.push(step.as_secs_f64());
            setup.push(built.as_secs_f64());
        }
    }
    let (decode, per_token, setup) = (median(decode), median(per_token), median(setup));
    println!(
        "| hops | hidden | circuit work per token | engine decode per token | circuit / decode | setup per circuit |"
    );
    println!("| --- | --- | --- | --- | --- | --- |");
    println!(
        "| {hops} | {hidden} | {:.1} µs | {:.2} ms | {:.2}% | {:.0} µs |",
        per_token * 1e6,
        decode * 1e3,
        100.0 * per_token / decode,
        setup * 1e6
    );
    eprintln!("medians of {rounds} rounds; circuit work summed over the client and every hop");
    Ok(())
}

struct Party {
    onion: Vec<OnionHop>,
    route: Route,
}

fn party(hops: usize) -> Party {
    let onion: Vec<OnionHop> = (0..hops)
        .map(|_| OnionHop::new(OnionSecretKey::generate(&mut rand::rng()), 4 * SETUPS))
        .collect();
    let route = Route {
        hops: onion
            .iter()
            .enumerate()
            .map(|(i, h)| Candidate {
                pair: None,
                address: format!("127.0.0.1:{}", 50061 + i),
                shard_index: i as u32,
                onion_key: h.public_key(),
                rtt: None,
            })
            .collect(),
    };
    Party { onion, route }
}

/// Sets a circuit up at every hop, as the nodes do.
fn set_up(p: &mut Party, client: &ClientCircuit) -> Result<Vec<HopCircuit>> {
    let n = p.onion.len();
    let mut header = client.header();
    let mut circuits = Vec::with_capacity(n);
    for (i, hop) in p.onion.iter_mut().enumerate() {
        let peeled = hop.process(&header)?;
        let (c, place) = HopCircuit::setup(&peeled, i + 1 == n)?;
        if let Place::Relay { header: next, .. } = place {
            header = next;
        }
        circuits.push(c);
    }
    Ok(circuits)
}

/// Time per step of every party's circuit work on one decode step.
fn circuit_steps(hops: usize, hidden: usize) -> Result<Duration> {
    let mut p = party(hops);
    let mut client = ClientCircuit::build(
        &p.route,
        None,
        &unfed_proto::circuit::Output::Sample(SamplingParams::greedy()),
    )
    .map_err(anyhow::Error::msg)?;
    let mut circuits = set_up(&mut p, &client)?;
    let values = vec![0.5f32; hidden];
    let last = hops - 1;
    let start = Instant::now();
    for t in 0..STEPS {
        let mut frame = client
            .step(vec![t as u32], Vec::new())
            .map_err(anyhow::Error::msg)?;
        for c in &mut circuits[..last] {
            let (_, onward) = c.open_step(&frame)?;
            frame = c.seal_next(convert::hidden(1, hidden, &values), onward.onward)?;
        }
        circuits[last].open_step(&frame)?;
        let mut cell = circuits[last].seal_token(t as u32)?;
        for c in circuits[..last].iter_mut().rev() {
            cell = c.relay_reply(&cell)?;
        }
        if client.token(&cell).map_err(anyhow::Error::msg)? != t as u32 {
            return Err(anyhow!("the circuit returned the wrong token"));
        }
    }
    Ok(start.elapsed() / STEPS as u32)
}

/// Time per circuit: building the header and setting it up at every hop.
fn circuit_setups(hops: usize) -> Result<Duration> {
    let mut p = party(hops);
    let start = Instant::now();
    for _ in 0..SETUPS {
        let client = ClientCircuit::build(
            &p.route,
            None,
            &unfed_proto::circuit::Output::Sample(SamplingParams::greedy()),
        )
        .map_err(anyhow::Error::msg)?;
        set_up(&mut p, &client)?;
    }
    Ok(start.elapsed() / SETUPS as u32)
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}
