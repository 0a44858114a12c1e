//! `unfed bench`: prefill and decode tokens/s of the single-process engine and of the same model
//! split into shards, measured alternately in one run and printed as a table of medians.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

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
    /// Also measure the split model served by a loopback network (`unfed testnet up`: a
    /// registry and one node process per shard) through the client, once on TLS (as the
    /// testnet runs) and once in plaintext.
    #[arg(long)]
    network: bool,
    /// With --network: also a TLS testnet whose shard 0 (the embedding and this many layers)
    /// runs as a two-party MPC pair (`testnet up --mpc`), measured against the plain one.
    #[arg(long, value_name = "K", requires = "network")]
    mpc_layers: Option<usize>,
    /// Measure only the quantized matrix kernels (GMAC/s per weight type and instruction set,
    /// for 1 token and for this many), no model needed.
    #[arg(long, value_name = "BATCH", num_args = 0..=1, default_missing_value = "64")]
    kernels: Option<usize>,
    /// Measure only what onion circuits cost: the circuit work of one step through `--shards`
    /// hops next to the whole model's decode time per token, and the setup of one circuit.
    #[arg(long)]
    onion: bool,
    /// Measure only shard 0 as a two-party MPC pair (K = 1 and 2 layers on shares, the two
    /// parties in this process) next to the plaintext shard 0; `--gen` decode steps.
    #[arg(long)]
    mpc: bool,
}

/// One way of running the model (a few per run: their size does not matter).
#[allow(clippy::large_enum_variant)]
enum Path {
    Local(Loaded),
    Network(Network),
}

/// A loopback testnet and a client connected to it; dropping it stops the testnet.
struct Network {
    runtime: tokio::runtime::Runtime,
    client: unfed_client::Client,
    model: unfed_client::RemoteModel,
    dir: tempfile::TempDir,
    tls: bool,
    /// Shard 0 on an MPC pair holding this many layers.
    mpc_layers: Option<usize>,
    /// The testnet's processes (the registry and the nodes).
    pids: Vec<u32>,
}

impl Drop for Network {
    fn drop(&mut self) {
        if let (Ok(exe), Some(dir)) = (
            std::env::current_exe(),
            self.dir.path().join("testnet").to_str(),
        ) {
            let _ = std::process::Command::new(exe)
                .args(["testnet", "down", "--dir", dir])
                .status();
        }
    }
}

impl Path {
    fn description(&self) -> String {
        match self {
            Path::Local(l) => l.description.clone(),
            Path::Network(n) => format!(
                "network, {} shards, {}{}",
                n.model.manifest.shards.len(),
                if n.tls { "TLS" } else { "plaintext" },
                match n.mpc_layers {
                    Some(k) => format!(", shard 0 on an MPC pair (K = {k})"),
                    None => String::new(),
                }
            ),
        }
    }
}

fn start_network(
    model: &str,
    shards: usize,
    store: Option<&std::path::Path>,
    tls: bool,
    mpc_layers: Option<usize>,
) -> Result<Network> {
    let dir = tempfile::tempdir()?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port()
        .to_string();
    let tn = dir.path().join("testnet");
    let exe = std::env::current_exe()?;
    let mut cmd = std::process::Command::new(exe);
    cmd.args([
        "testnet",
        "up",
        "--model",
        model,
        "--shards",
        &shards.to_string(),
        "--registry-port",
        &port,
    ]);
    cmd.arg("--dir").arg(&tn);
    if let Some(s) = store {
        cmd.arg("--store").arg(s);
    }
    if !tls {
        cmd.arg("--no-tls");
    }
    if let Some(k) = mpc_layers {
        cmd.args(["--mpc", "--mpc-layers", &k.to_string()]);
    }
    let runtime = tokio::runtime::Runtime::new()?;
    let status = cmd.status()?;
    if !status.success() {
        bail!("the testnet did not start");
    }
    let (registry, dialer) = if tls {
        (
            format!("https://127.0.0.1:{port}"),
            unfed_proto::Dialer::trusting_file(&tn.join("tls/ca.pem"))?,
        )
    } else {
        (format!("127.0.0.1:{port}"), unfed_proto::Dialer::default())
    };
    let (client, model) = runtime.block_on(async {
        let mut client = unfed_client::Client::connect_with(&registry, dialer).await?;
        client.set_ignore_eos(true);
        let id = client
            .list_models()
            .await?
            .first()
            .map(|m| m.model_id.clone())
            .unwrap_or_default();
        let model = client.model(&id).await?;
        anyhow::Ok((client, model))
    })?;
    Ok(Network {
        runtime,
        client,
        model,
        pids: crate::testnet_cmd::started_pids(&tn)?,
        dir,
        tls,
        mpc_layers,
    })
}

pub fn run(args: BenchArgs) -> Result<ExitCode> {
    if let Some(batch) = args.kernels {
        crate::bench_kernels::run(batch.max(1));
        return Ok(ExitCode::SUCCESS);
    }
    if args.runs == 0 || args.generate == 0 {
        bail!("--runs and --gen must be at least 1");
    }
    let path = resolve::model_path(&args.model, args.store.as_deref())?;
    let quant = quantization(&Checkpoint::open(&path)?);
    let prompt = match &args.prompt_file {
        Some(f) => std::fs::read_to_string(f)?,
        None => unfed_engine::BENCH_PROMPT.to_string(),
    };
    if args.mpc {
        let ck = Checkpoint::open(&path)?;
        let ids = unfed_model::TextTokenizer::from_metadata(ck.metadata())?.encode(&prompt)?;
        crate::bench_mpc::run(&path, &ids, args.generate, args.runs)?;
        return Ok(ExitCode::SUCCESS);
    }
    if args.onion {
        let loaded = resolve::load_model(&path)?;
        let ids = loaded.tokenizer.encode(&prompt)?;
        crate::bench_onion::run(&loaded, ids, args.shards.max(1), args.runs)?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut paths = vec![Path::Local(resolve::load_model(&path)?)];
    let _split_dir = if args.shards > 0 {
        let dir = tempfile::tempdir()?;
        let opts = unfed_shard::SplitOptions {
            num_shards: args.shards,
            model_id: None,
            force: false,
            mpc_layers: None,
        };
        unfed_shard::split(&path, dir.path(), &opts)?;
        paths.push(Path::Local(resolve::load_shards(dir.path())?));
        Some(dir)
    } else {
        None
    };
    if args.network {
        if args.shards == 0 {
            bail!("--network needs --shards of at least 1");
        }
        let store = args.store.as_deref();
        for tls in [true, false] {
            let network = start_network(&args.model, args.shards, store, tls, None)?;
            paths.push(Path::Network(network));
        }
        if let Some(k) = args.mpc_layers {
            let network = start_network(&args.model, args.shards, store, true, Some(k))?;
            paths.push(Path::Network(network));
        }
    }
    let Path::Local(first) = &paths[0] else {
        unreachable!("the whole model comes first")
    };
    let prompt_ids = first.tokenizer.encode(&prompt)?;
    let req = GenerateRequest {
        prompt_ids,
        max_tokens: args.generate,
        sampling: SamplingParams::greedy(),
        ignore_eos: true,
    };
    let mut stats: Vec<Vec<Stats>> = vec![Vec::new(); paths.len()];
    let mut outputs: Vec<Vec<u32>> = vec![Vec::new(); paths.len()];
    let mut switches: Vec<Vec<Switches>> = vec![Vec::new(); paths.len()];
    for round in 0..=args.runs {
        for (i, p) in paths.iter_mut().enumerate() {
            let (s, ids, sw) = run_once(p, &req)?;
            if round == 0 {
                outputs[i] = ids; // warm-up
            } else {
                stats[i].push(s);
                switches[i].extend(sw);
            }
        }
    }
    // Context switches per decode token of a network path (medians), where /proc has them.
    let switches: Vec<Option<(f64, f64)>> = switches
        .into_iter()
        .map(|s| {
            (!s.is_empty()).then(|| {
                let nodes = median(s.iter().map(|x| x.testnet).collect());
                (nodes, median(s.iter().map(|x| x.client).collect()))
            })
        })
        .collect();
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
            (p.description(), prefill, decode)
        })
        .collect();
    // Fixed point on shares is close to the engine, not bit-identical: the MPC path's greedy
    // tokens are compared apart, as the length of the prefix they share with the whole model's.
    let is_mpc = |p: &Path| matches!(p, Path::Network(n) if n.mpc_layers.is_some());
    let exact: Vec<&Vec<u32>> = paths
        .iter()
        .zip(&outputs)
        .filter(|(p, _)| !is_mpc(p))
        .map(|(_, o)| o)
        .collect();
    let identical = exact.windows(2).all(|w| w[0] == w[1]);
    let mpc_row = paths.iter().position(is_mpc);
    let mpc_agrees = mpc_row.map(|i| {
        outputs[i]
            .iter()
            .zip(&outputs[0])
            .take_while(|(a, b)| a == b)
            .count()
    });
    if args.json {
        let paths: Vec<_> = rows
            .iter()
            .zip(&switches)
            .map(|((d, p, t), sw)| {
                serde_json::json!({"path": d, "prefill_tok_s": p, "decode_tok_s": t,
                    "context_switches_per_decode_token": sw.map(|(n, c)| serde_json::json!({"testnet": n, "client": c}))})
            })
            .collect();
        let v = serde_json::json!({
            "model": model, "quant": quant, "threads": threads, "prompt_tokens": req.prompt_ids.len(),
            "generated": args.generate, "runs": args.runs, "paths": paths, "greedy_identical": identical,
            "mpc_greedy_prefix": mpc_agrees,
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
        let (_, wp, wd) = &rows[0];
        for (d, p, t) in &rows[1..] {
            println!(
                "{d} / whole model: prefill {:.3}x, decode {:.3}x",
                p / wp,
                t / wd
            );
        }
        if args.network {
            // Rows: whole, [3 shards,] TLS network, plaintext network[, MPC network].
            let tls = paths
                .iter()
                .position(|p| matches!(p, Path::Network(n) if n.tls && n.mpc_layers.is_none()));
            if let Some(t) = tls {
                let ((_, tp, td), (_, pp, pd)) = (&rows[t], &rows[t + 1]);
                println!(
                    "TLS / plaintext network: prefill {:.3}x, decode {:.3}x",
                    tp / pp,
                    td / pd
                );
                if let Some(m) = mpc_row {
                    let (_, mp, md) = &rows[m];
                    println!(
                        "MPC pair / plain shard 0, both networks on TLS: added {:.1} ms per decode \
                         token, {:.1} ms per prompt token",
                        1e3 / md - 1e3 / td,
                        1e3 / mp - 1e3 / tp
                    );
                }
            }
        }
        println!(
            "greedy tokens identical on every path{}: {identical}",
            if mpc_row.is_some() {
                " but the MPC pair's"
            } else {
                ""
            }
        );
        if let Some(n) = mpc_agrees {
            println!(
                "MPC pair's greedy tokens equal the whole model's for the first {n} of {} \
                 (the default kernels' 8-bit activations turn the pair's ~1e-3 error into \
                 flipped near-ties; on the exact path they are equal: docs/mpc.md)",
                req.max_tokens
            );
        }
        for ((d, ..), sw) in rows.iter().zip(&switches) {
            if let Some((testnet, client)) = sw {
                println!(
                    "{d}: {testnet:.1} context switches per decode token in the testnet's \
                     processes, {client:.1} in the client's"
                );
            }
        }
        if args.network {
            println!("(network prefill includes discovery and opening the route)");
        }
    }
    eprintln!(
        "medians of {} runs after one warm-up run per path; paths alternate within each round",
        args.runs
    );
    Ok(ExitCode::SUCCESS)
}

/// Context switches during one network generation's decode, per decode token.
#[derive(Clone, Copy)]
struct Switches {
    testnet: f64,
    client: f64,
}

/// Context switches (voluntary or not) of every thread of `pids` so far; None where /proc does
/// not tell.
fn context_switches(pids: &[u32]) -> Option<u64> {
    let mut total = 0;
    for pid in pids {
        for task in std::fs::read_dir(format!("/proc/{pid}/task")).ok()? {
            // A thread that ended meanwhile is skipped.
            let Ok(status) = std::fs::read_to_string(task.ok()?.path().join("status")) else {
                continue;
            };
            total += status
                .lines()
                .filter(|l| l.contains("ctxt_switches:"))
                .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
                .sum::<u64>();
        }
    }
    Some(total)
}

fn run_once(p: &mut Path, req: &GenerateRequest) -> Result<(Stats, Vec<u32>, Option<Switches>)> {
    let mut ids = Vec::with_capacity(req.max_tokens);
    match p {
        Path::Local(l) => {
            let stats = generate(&l.pipeline, &l.tokenizer, req, &mut |e| {
                if let unfed_engine::Event::Token { id, .. } = e {
                    ids.push(id);
                }
                true
            })?;
            Ok((stats, ids, None))
        }
        Path::Network(n) => {
            let mut times = Vec::with_capacity(req.max_tokens);
            let start = Instant::now();
            let Network {
                runtime,
                client,
                model,
                pids,
                ..
            } = n;
            let me = [std::process::id()];
            // Counted from the first token to the last, while the route's sessions still run.
            let (mut at_first, mut at_last) = (None, None);
            let mut on_token = |id: u32| {
                times.push(Instant::now());
                ids.push(id);
                if ids.len() == 1 || ids.len() == req.max_tokens {
                    let count = context_switches(pids).zip(context_switches(&me));
                    *if ids.len() == 1 {
                        &mut at_first
                    } else {
                        &mut at_last
                    } = count;
                }
                true
            };
            runtime.block_on(client.generate(
                model,
                &req.prompt_ids,
                req.max_tokens,
                &req.sampling,
                &mut on_token,
            ))?;
            let (first, last) = (times[0], times[times.len() - 1]);
            let stats = Stats {
                prompt_tokens: req.prompt_ids.len(),
                generated_tokens: ids.len(),
                prefill: first - start,
                decode_steps: ids.len() - 1,
                decode: last - first,
                stop: unfed_engine::StopReason::MaxTokens,
            };
            let steps = stats.decode_steps.max(1) as f64;
            let switches = at_first.zip(at_last).map(|((n0, c0), (n1, c1))| Switches {
                testnet: n1.saturating_sub(n0) as f64 / steps,
                client: c1.saturating_sub(c0) as f64 / steps,
            });
            Ok((stats, ids, switches))
        }
    }
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
