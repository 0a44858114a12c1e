//! `unfed bench`: prefill and decode tokens/s of the single-process engine and of the same model
//! split into shards, measured alternately in one run and printed as a table of medians.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Result, bail};
use clap::Args;
use unfed_engine::{GenerateRequest, Stats, generate};
use unfed_model::{Checkpoint, SamplingParams};

use crate::resolve::{self, Loaded};

#[derive(Args)]
pub struct BenchArgs {
    /// Catalog model name, GGUF file or safetensors directory.
    #[arg(long, default_value = "smollm2-135m")]
    model: String,
    /// Also measure the model split into this many shards (0: whole model only).
    #[arg(long, default_value_t = 3)]
    shards: usize,
    /// Tokens to generate per run (end-of-generation tokens are ignored).
    #[arg(long = "gen", default_value_t = 128)]
    generate: usize,
    /// Measured runs per path (after one warm-up run each); the table shows medians.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Prompt text file (default: the built-in benchmark prompt shared with the llama.cpp script).
    #[arg(long)]
    prompt_file: Option<PathBuf>,
    #[arg(long)]
    store: Option<PathBuf>,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    json: bool,
}

pub fn run(args: BenchArgs) -> Result<ExitCode> {
    if args.runs == 0 || args.generate == 0 {
        bail!("--runs and --gen must be at least 1");
    }
    let path = resolve::model_path(&args.model, args.store.as_deref())?;
    let quant = quantization(&Checkpoint::open(&path)?);
    let prompt = match &args.prompt_file {
        Some(f) => std::fs::read_to_string(f)?,
        None => unfed_engine::BENCH_PROMPT.to_string(),
    };
    let mut paths = vec![resolve::load_model(&path)?];
    let _split_dir = if args.shards > 0 {
        let dir = tempfile::tempdir()?;
        let opts = unfed_shard::SplitOptions {
            num_shards: args.shards,
            model_id: None,
            force: false,
        };
        unfed_shard::split(&path, dir.path(), &opts)?;
        paths.push(resolve::load_shards(dir.path())?);
        Some(dir)
    } else {
        None
    };
    let prompt_ids = paths[0].tokenizer.encode(&prompt)?;
    let req = GenerateRequest {
        prompt_ids,
        max_tokens: args.generate,
        sampling: SamplingParams::greedy(),
        ignore_eos: true,
    };
    let mut stats: Vec<Vec<Stats>> = vec![Vec::new(); paths.len()];
    let mut outputs: Vec<Vec<u32>> = vec![Vec::new(); paths.len()];
    for round in 0..=args.runs {
        for (i, p) in paths.iter().enumerate() {
            let (s, ids) = run_once(p, &req)?;
            if round == 0 {
                outputs[i] = ids; // warm-up
            } else {
                stats[i].push(s);
            }
        }
    }
    let model = path
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default();
    let threads = unfed_engine::compute_threads();
    let rows: Vec<(String, f64, f64)> = paths
        .iter()
        .zip(&stats)
        .map(|(p, s)| {
            let prefill = median(s.iter().map(Stats::prefill_tokens_per_s).collect());
            let decode = median(s.iter().map(Stats::decode_tokens_per_s).collect());
            (p.description.clone(), prefill, decode)
        })
        .collect();
    let identical = outputs.windows(2).all(|w| w[0] == w[1]);
    if args.json {
        let paths: Vec<_> = rows
            .iter()
            .map(|(d, p, t)| serde_json::json!({"path": d, "prefill_tok_s": p, "decode_tok_s": t}))
            .collect();
        let v = serde_json::json!({
            "model": model, "quant": quant, "threads": threads, "prompt_tokens": req.prompt_ids.len(),
            "generated": args.generate, "runs": args.runs, "paths": paths, "greedy_identical": identical,
        });
        println!("{v}");
    } else {
        println!(
            "| path | model | quant | threads | prompt tokens | generated | prefill tok/s | decode tok/s |"
        );
        println!("| --- | --- | --- | --- | --- | --- | --- | --- |");
        for (d, prefill, decode) in &rows {
            println!(
                "| {d} | {model} | {quant} | {threads} | {} | {} | {prefill:.1} | {decode:.1} |",
                req.prompt_ids.len(),
                args.generate
            );
        }
        if let [(_, wp, wd), (_, sp, sd)] = &rows[..] {
            println!(
                "\nsharded / whole: prefill {:.3}x, decode {:.3}x; greedy tokens identical: {identical}",
                sp / wp,
                sd / wd
            );
        }
    }
    eprintln!(
        "medians of {} runs after one warm-up run per path; paths alternate within each round",
        args.runs
    );
    Ok(ExitCode::SUCCESS)
}

fn run_once(p: &Loaded, req: &GenerateRequest) -> Result<(Stats, Vec<u32>)> {
    let mut ids = Vec::with_capacity(req.max_tokens);
    let stats = generate(&p.pipeline, &p.tokenizer, req, &mut |e| {
        if let unfed_engine::Event::Token { id, .. } = e {
            ids.push(id);
        }
        true
    })?;
    Ok((stats, ids))
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    let n = xs.len();
    if n % 2 == 1 {
        xs[n / 2]
    } else {
        (xs[n / 2 - 1] + xs[n / 2]) / 2.0
    }
}

/// The matrix quantization types of a checkpoint, most frequent first (`Q4_1+Q8_0`).
fn quantization(ck: &Checkpoint) -> String {
    let mut counts: Vec<(String, usize)> = Vec::new();
    for name in ck.tensor_names() {
        if let Some((ty, dims)) = ck.tensor_info(&name)
            && dims.len() == 2
        {
            match counts.iter_mut().find(|(t, _)| t == ty.name()) {
                Some((_, n)) => *n += 1,
                None => counts.push((ty.name().to_string(), 1)),
            }
        }
    }
    counts.sort_by_key(|c| std::cmp::Reverse(c.1));
    counts
        .into_iter()
        .map(|(t, _)| t)
        .collect::<Vec<_>>()
        .join("+")
}
