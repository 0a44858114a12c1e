//! Turning command-line model arguments into loaded pipelines: catalog names (fetched into the
//! model store when missing), model files or directories, and split directories.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use unfed_engine::Pipeline;
use unfed_model::{ChatTemplate, Checkpoint, Compute, ShardModel, TextTokenizer};
use unfed_store::{FetchOptions, ModelStore, Status};

/// The model store named by `--store`, or the default one.
pub fn store(dir: Option<&Path>) -> Result<ModelStore> {
    Ok(match dir {
        Some(d) => ModelStore::new(d),
        None => ModelStore::open_default()?,
    })
}

/// A path as given, or the stored file of a catalog model (fetching it first if needed).
pub fn model_path(arg: &str, store_dir: Option<&Path>) -> Result<PathBuf> {
    let p = Path::new(arg);
    if p.exists() {
        return Ok(p.to_path_buf());
    }
    let spec = unfed_store::find(arg)
        .with_context(|| format!("`{arg}` is neither a file nor a directory"))?;
    let store = store(store_dir)?;
    if store.status(spec) == Status::Absent {
        eprintln!("model {arg} is not in the store yet; fetching it");
    }
    Ok(store.fetch(spec, &FetchOptions::default())?)
}

/// Everything needed to generate text.
pub struct Loaded {
    pub pipeline: Pipeline,
    pub tokenizer: Arc<TextTokenizer>,
    pub chat: Option<ChatTemplate>,
    /// Human-readable description for diagnostics and tables.
    pub description: String,
}

/// Loads a whole model from a file or safetensors directory.
pub fn load_model(path: &Path) -> Result<Loaded> {
    let ck = Checkpoint::open(path)?;
    let model = ShardModel::load(&ck).with_context(|| format!("loading {}", path.display()))?;
    if !(model.role().embedding && model.role().head) {
        bail!(
            "{} is one shard of a split model; use --shards with its directory",
            path.display()
        );
    }
    finish(&ck, vec![model], "whole model".into())
}

/// Loads every shard of a split directory, each checked against the manifest (size, SHA-256,
/// verification vector) first; `unfed model verify` checks everything else.
pub fn load_shards(dir: &Path) -> Result<Loaded> {
    let manifest = unfed_shard::read_manifest(dir)?;
    let mut shards = Vec::new();
    let mut first = None;
    for s in &manifest.shards {
        let v = unfed_shard::load_verified_shard(dir, &manifest, s.index)?;
        shards.push(v.model);
        first.get_or_insert(v.checkpoint);
    }
    let first = first.context("the manifest lists no shards")?;
    let n = shards.len();
    finish(&first, shards, format!("{n} shards"))
}

fn finish(ck: &Checkpoint, shards: Vec<ShardModel>, description: String) -> Result<Loaded> {
    let tokenizer = TextTokenizer::from_metadata(ck.metadata())?;
    let chat = ChatTemplate::from_metadata(ck.metadata(), &tokenizer)?;
    let description = match shards.first().map(ShardModel::compute) {
        Some(Compute::Kernels) | None => description,
        Some(c) => format!("{description}, {}", c.name()),
    };
    Ok(Loaded {
        pipeline: Pipeline::new(shards)?,
        tokenizer: Arc::new(tokenizer),
        chat,
        description,
    })
}
