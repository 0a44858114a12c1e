//! `unfed model fetch | list | inspect | split | verify`: the operator's model tools.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Subcommand;
use unfed_model::shard::ShardRole;
use unfed_model::{ChatTemplate, Checkpoint, TextTokenizer};
use unfed_store::{FetchOptions, Status};

use crate::resolve;

#[derive(Subcommand)]
pub enum ModelCommand {
    /// Download a supported model's weights into the model store (idempotent).
    Fetch {
        /// Catalog name, e.g. smollm2-135m or qwen2.5-coder-0.5b.
        name: String,
        /// Model store directory (default: $UNFED_MODEL_DIR or the user's cache).
        #[arg(long)]
        store: Option<PathBuf>,
    },
    /// List the supported models and whether each is in the store.
    List {
        #[arg(long)]
        store: Option<PathBuf>,
    },
    /// Show a model's architecture, shape, quantization and tokenizer.
    Inspect {
        /// GGUF file (whole model or shard), safetensors directory, or catalog name.
        path: String,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        #[arg(long)]
        store: Option<PathBuf>,
    },
    /// Split a model into layer shards plus a manifest.
    Split {
        /// GGUF file, safetensors directory, or catalog name.
        path: String,
        #[arg(long)]
        output: PathBuf,
        #[arg(long)]
        num_text_shards: usize,
        /// Model id recorded in the manifest (default: the catalog name or the file name).
        #[arg(long)]
        model_id: Option<String>,
        /// Replace an existing split in the output directory.
        #[arg(long)]
        force: bool,
        /// Shard 0 runs on a two-party MPC pair (`unfed mpc`) with this many decoder layers.
        #[arg(long)]
        mpc_layers: Option<usize>,
        #[arg(long)]
        store: Option<PathBuf>,
    },
    /// Check a split directory: manifest, files, hashes, layer coverage, verification vectors.
    Verify { dir: PathBuf },
}

pub fn run(cmd: ModelCommand) -> Result<ExitCode> {
    match cmd {
        ModelCommand::Fetch { name, store } => {
            let spec = unfed_store::find(&name)?;
            let path = resolve::store(store.as_deref())?.fetch(spec, &FetchOptions::default())?;
            println!("{}", path.display());
        }
        ModelCommand::List { store } => {
            let store = resolve::store(store.as_deref())?;
            println!("{:<22} {:>8}  {:<8}  description", "name", "size", "status");
            for spec in unfed_store::catalog() {
                let status = match store.status(spec) {
                    Status::Present => "fetched",
                    Status::Absent => "-",
                };
                println!(
                    "{:<22} {:>6} MB  {:<8}  {}",
                    spec.name,
                    spec.size / 1_000_000,
                    status,
                    spec.description
                );
            }
        }
        ModelCommand::Inspect { path, json, store } => {
            inspect(&resolve::model_path(&path, store.as_deref())?, json)?
        }
        ModelCommand::Split {
            path,
            output,
            num_text_shards,
            model_id,
            force,
            mpc_layers,
            store,
        } => {
            let source = resolve::model_path(&path, store.as_deref())?;
            let model_id =
                model_id.or_else(|| unfed_store::find(&path).ok().map(|s| s.name.to_string()));
            let opts = unfed_shard::SplitOptions {
                num_shards: num_text_shards,
                model_id,
                force,
                mpc_layers,
            };
            let manifest = unfed_shard::split(&source, &output, &opts)
                .with_context(|| format!("splitting {}", source.display()))?;
            for s in &manifest.shards {
                println!(
                    "{}  layers {:>3}..{:<3} {:>10} bytes  {}",
                    s.file, s.layer_start, s.layer_end, s.size, s.sha256
                );
            }
            println!("{}", output.join("manifest.json").display());
        }
        ModelCommand::Verify { dir } => {
            let report = unfed_shard::verify(&dir)
                .with_context(|| format!("verifying {}", dir.display()))?;
            print!("{report}");
            if !report.is_ok() {
                eprintln!("verification FAILED");
                return Ok(ExitCode::FAILURE);
            }
            eprintln!("verification passed");
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn inspect(path: &Path, json: bool) -> Result<()> {
    let ck = Checkpoint::open(path)?;
    let cfg = ck.config()?;
    let mut types: BTreeMap<String, usize> = BTreeMap::new();
    let mut params: u64 = 0;
    for name in ck.tensor_names() {
        if let Some((ty, dims)) = ck.tensor_info(&name) {
            *types.entry(ty.name().to_string()).or_default() += 1;
            params += dims.iter().product::<u64>();
        }
    }
    let tied = ck.tensor_info("output.weight").is_none();
    let tokenizer = TextTokenizer::from_metadata(ck.metadata());
    let tokenizer_kind = match &tokenizer {
        Ok(t) => t.kind().to_string(),
        Err(e) => format!("unavailable ({e})"),
    };
    let chat = match &tokenizer {
        Ok(t) => ChatTemplate::from_metadata(ck.metadata(), t)?.is_some(),
        Err(_) => ck.get("tokenizer.chat_template").is_some(),
    };
    let role = ShardRole::from_checkpoint(&ck, &cfg)?;
    let name = ck
        .get("general.name")
        .and_then(|v| v.as_str())
        .unwrap_or("-")
        .to_string();
    let size: u64 = if path.is_dir() {
        std::fs::read_dir(path)?
            .filter_map(|e| e.ok()?.metadata().ok())
            .map(|m| m.len())
            .sum()
    } else {
        std::fs::metadata(path)?.len()
    };
    if json {
        let v = serde_json::json!({
            "path": path, "format": ck.format(), "name": name, "config": cfg,
            "parameters": params, "tensor_types": types, "tied_head": tied,
            "tokenizer": tokenizer_kind, "chat_template": chat,
            "layers_in_file": {"start": role.layers.start, "end": role.layers.end,
                               "embedding": role.embedding, "head": role.head},
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    let types = types
        .iter()
        .map(|(t, n)| format!("{t} ×{n}"))
        .collect::<Vec<_>>()
        .join(", ");
    let rows = [
        (
            "file",
            format!(
                "{} ({}, {:.1} MB)",
                path.display(),
                ck.format(),
                size as f64 / 1e6
            ),
        ),
        ("name", name),
        ("architecture", cfg.arch.name().to_string()),
        ("layers", cfg.n_layer.to_string()),
        ("hidden size", cfg.hidden.to_string()),
        (
            "heads",
            format!(
                "{} (KV heads {}, head dim {})",
                cfg.n_head, cfg.n_kv_head, cfg.head_dim
            ),
        ),
        ("feed-forward", cfg.ffn.to_string()),
        ("vocabulary", cfg.vocab.to_string()),
        ("context length", cfg.context_length.to_string()),
        ("RoPE theta", cfg.rope_theta.to_string()),
        ("RMSNorm eps", format!("{:e}", cfg.rms_eps as f32)),
        (
            "parameters",
            format!("{params} ({:.1} M) in this file", params as f64 / 1e6),
        ),
        ("tensor types", types),
        (
            "output head",
            if tied {
                "tied to the token embedding".into()
            } else {
                "separate".to_string()
            },
        ),
        ("tokenizer", tokenizer_kind),
        (
            "chat template",
            if chat { "present" } else { "absent" }.to_string(),
        ),
        (
            "layers in file",
            format!(
                "{}..{} of {}{}{}",
                role.layers.start,
                role.layers.end,
                cfg.n_layer,
                if role.embedding { ", embedding" } else { "" },
                if role.head { ", final norm + head" } else { "" }
            ),
        ),
    ];
    for (k, v) in rows {
        println!("{k:<15} {v}");
    }
    Ok(())
}
