//! Splitting a checkpoint into layer-range shard files: tensors copied byte for byte, each file
//! written under a temporary name and renamed when complete, the manifest written last.

use std::borrow::Cow;
use std::path::{Path, PathBuf};

use unfed_gguf::{OutTensor, Value, write_gguf};
use unfed_model::shard::keys;
use unfed_model::{Checkpoint, ModelConfig, ShardModel, ShardRole, TextTokenizer};

use crate::ShardError;
use crate::files::{sync_dir, write_atomic, write_bytes_atomic};
use crate::hash::{FileDigest, digest_concatenation};
use crate::manifest::{
    MANIFEST_FILE, MANIFEST_FORMAT, MANIFEST_VERSION, Manifest, ShardEntry, SourceFile, SourceInfo,
    TokenizerEntry, Verification, mpc_plan,
};
use crate::plan::{self, Part};
use crate::vectors;

/// File name of the tokenizer written next to the shards.
pub const TOKENIZER_FILE: &str = "tokenizer.json";

/// How to split.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SplitOptions {
    /// Number of shards (1 to the model's layer count).
    pub num_shards: usize,
    /// The model id recorded in the manifest; by default the source's file (or directory) name
    /// without extension.
    pub model_id: Option<String>,
    /// Overwrite a finished split already in the output directory.
    pub force: bool,
    /// Shard 0 runs on a two-party MPC pair: it holds the embedding and exactly this many
    /// layers, and the manifest requires the pair; the other layers are spread over the rest.
    pub mpc_layers: Option<usize>,
}

/// File name of shard `index`.
pub fn shard_file_name(index: usize) -> String {
    format!("shard-{index}.gguf")
}

/// Splits the model at `source` (a GGUF file or a safetensors directory) into
/// `opts.num_shards` shard files in `out_dir`, with `tokenizer.json` and `manifest.json`.
///
/// The manifest is written last, so a directory without one holds no finished split.
pub fn split(source: &Path, out_dir: &Path, opts: &SplitOptions) -> Result<Manifest, ShardError> {
    let model_id = match &opts.model_id {
        Some(id) => check_model_id(id)?,
        None => default_model_id(source),
    };
    let manifest_path = out_dir.join(MANIFEST_FILE);
    if manifest_path.exists() && !opts.force {
        return Err(ShardError::AlreadySplit {
            dir: out_dir.to_path_buf(),
        });
    }
    let src_err = |source_err| ShardError::Source {
        path: source.to_path_buf(),
        source: source_err,
    };
    let ck = Checkpoint::open(source).map_err(src_err)?;
    let config = ck.config().map_err(src_err)?;
    if ck
        .metadata()
        .iter()
        .any(|(k, _)| k.starts_with("unfed.shard."))
    {
        return Err(ShardError::SourceIsShard {
            path: source.to_path_buf(),
        });
    }
    let ranges = match opts.mpc_layers {
        None => plan::partition_layers(config.n_layer, opts.num_shards)?,
        Some(k) => plan::partition_with_mpc(config.n_layer, opts.num_shards, k)?,
    };
    let names = ck.tensor_names();
    let tied = ck.tensor_info(plan::OUTPUT).is_none();
    let parts: Vec<Part> = ranges
        .iter()
        .enumerate()
        .map(|(i, r)| Part {
            layers: r.clone(),
            embedding: i == 0,
            head: i + 1 == ranges.len(),
        })
        .collect();
    check_tensors(source, &ck, &config, &names, &parts, tied)?;

    let tok_err = |e| ShardError::Tokenizer {
        path: source.to_path_buf(),
        source: e,
    };
    let tokenizer = TextTokenizer::from_metadata(ck.metadata()).map_err(tok_err)?;
    let tokenizer_json = tokenizer.to_json().map_err(tok_err)?;
    let chat_template = ck
        .get("tokenizer.chat_template")
        .and_then(Value::as_str)
        .map(str::to_string);
    let source_info = hash_source(source, ck.format())?;

    std::fs::create_dir_all(out_dir).map_err(|e| ShardError::io("create", out_dir, e))?;
    if opts.force && manifest_path.exists() {
        // Until the new manifest lands, the directory must not look like a finished split.
        std::fs::remove_file(&manifest_path)
            .map_err(|e| ShardError::io("remove", &manifest_path, e))?;
        sync_dir(out_dir);
    }

    let mut shards = Vec::with_capacity(parts.len());
    for (i, part) in parts.iter().enumerate() {
        let file = shard_file_name(i);
        let path = out_dir.join(&file);
        let tensors: Vec<String> = names
            .iter()
            .filter(|n| plan::belongs(n, part, tied))
            .cloned()
            .collect();
        let digest = write_shard(&ck, source, &path, i, parts.len(), part, &tensors)?;
        shards.push(ShardEntry {
            index: i,
            file,
            layer_start: part.layers.start,
            layer_end: part.layers.end,
            embedding: part.embedding,
            final_norm: part.head,
            head: part.head,
            size: digest.size,
            sha256: digest.sha256,
            chunk_size: digest.chunk_size,
            chunk_sha256: digest.chunks,
            tensors,
        });
    }

    let tok_path = out_dir.join(TOKENIZER_FILE);
    let tok_digest = write_bytes_atomic(&tok_path, tokenizer_json.as_bytes())?;

    let mut vectors_out = Vec::with_capacity(shards.len());
    for (i, part) in parts.iter().enumerate() {
        vectors_out.push(compute_vector(
            &out_dir.join(&shards[i].file),
            i,
            part,
            &config,
        )?);
    }

    let mpc = opts
        .mpc_layers
        .map(|k| mpc_plan(&ck, &config, k))
        .transpose()
        .map_err(src_err)?;
    let manifest = Manifest {
        format: MANIFEST_FORMAT.into(),
        version: MANIFEST_VERSION,
        model_id,
        architecture: config.arch.name().into(),
        config: config.clone(),
        tied_embeddings: tied,
        source: source_info,
        shards,
        tokenizer: TokenizerEntry {
            file: TOKENIZER_FILE.into(),
            size: tok_digest.size,
            sha256: tok_digest.sha256,
            kind: tokenizer.kind().to_string(),
        },
        chat_template,
        end_of_generation: tokenizer.end_of_generation().to_vec(),
        mpc,
        verification: Verification {
            positions: vectors::POSITIONS,
            hidden_generator: vectors::HIDDEN_GENERATOR.into(),
            tolerance: vectors::DEFAULT_TOLERANCE,
            vectors: vectors_out,
        },
    };
    remove_stale_shards(out_dir, parts.len())?;
    sync_dir(out_dir);
    write_bytes_atomic(&manifest_path, manifest.to_json().as_bytes())?;
    sync_dir(out_dir);
    Ok(manifest)
}

/// Removes `shard-{k}.gguf` for `k >= count` (left by an earlier split into more shards), so
/// that the directory holds exactly the files of this split.
fn remove_stale_shards(out_dir: &Path, count: usize) -> Result<(), ShardError> {
    for k in count.. {
        let path = out_dir.join(shard_file_name(k));
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(ShardError::io("remove", &path, e)),
        }
    }
    Ok(())
}

/// Every source tensor has a place, and every shard finds the tensors it needs.
fn check_tensors(
    source: &Path,
    ck: &Checkpoint,
    config: &ModelConfig,
    names: &[String],
    parts: &[Part],
    tied: bool,
) -> Result<(), ShardError> {
    let problem = |problem: String| ShardError::SourceTensors {
        path: source.to_path_buf(),
        problem,
    };
    let stray = plan::unplaced(names, config.n_layer);
    if !stray.is_empty() {
        return Err(problem(format!(
            "tensors that belong to no shard of a {}-layer {} model: {}",
            config.n_layer,
            config.arch.name(),
            stray.join(", ")
        )));
    }
    let missing: Vec<String> = parts
        .iter()
        .flat_map(|p| plan::required(config.arch, p, tied))
        .filter(|n| ck.tensor_info(n).is_none())
        .collect();
    if !missing.is_empty() {
        return Err(problem(format!("missing tensors: {}", missing.join(", "))));
    }
    Ok(())
}

/// Writes one shard file: all source metadata plus the `unfed.shard.*` keys, and `tensors`
/// with their bytes exactly as the checkpoint holds them.
fn write_shard(
    ck: &Checkpoint,
    source: &Path,
    path: &Path,
    index: usize,
    count: usize,
    part: &Part,
    tensors: &[String],
) -> Result<FileDigest, ShardError> {
    let mut metadata = ck.metadata().to_vec();
    let int = |v: usize| Value::U32(v as u32);
    metadata.extend([
        (keys::INDEX.to_string(), int(index)),
        (keys::COUNT.to_string(), int(count)),
        (keys::LAYER_START.to_string(), int(part.layers.start)),
        (keys::LAYER_END.to_string(), int(part.layers.end)),
        (keys::HAS_EMBEDDING.to_string(), Value::Bool(part.embedding)),
        (keys::HAS_HEAD.to_string(), Value::Bool(part.head)),
    ]);
    let raw = tensors
        .iter()
        .map(|n| {
            ck.tensor(n)
                .map(|t| (n, t))
                .map_err(|e| ShardError::Source {
                    path: source.to_path_buf(),
                    source: e,
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let out: Vec<OutTensor<'_>> = raw
        .iter()
        .map(|(name, t)| OutTensor {
            name: name.to_string(),
            dims: t.dims.clone(),
            ty: t.ty,
            data: match &t.data {
                Cow::Borrowed(b) => b,
                Cow::Owned(v) => v.as_slice(),
            },
        })
        .collect();
    write_atomic(path, |w| {
        write_gguf(w, &metadata, &out).map_err(|source| ShardError::WriteShard {
            index,
            path: path.to_path_buf(),
            source,
        })
    })
}

/// Loads a written shard file and records its output on the fixed input.
fn compute_vector(
    path: &Path,
    index: usize,
    part: &Part,
    config: &ModelConfig,
) -> Result<crate::manifest::VerificationVector, ShardError> {
    let shard_err = |source| ShardError::Shard {
        index,
        path: path.to_path_buf(),
        source,
    };
    let ck = Checkpoint::open(path).map_err(shard_err)?;
    let model = ShardModel::load(&ck).map_err(shard_err)?;
    let want = ShardRole {
        layers: part.layers.clone(),
        embedding: part.embedding,
        head: part.head,
    };
    if model.role() != &want {
        return Err(shard_err(unfed_model::ModelError::Config(format!(
            "loads as {:?}, expected {want:?}",
            model.role()
        ))));
    }
    let input = vectors::input_for(index, part.embedding, config.vocab, config.hidden);
    let output = vectors::run(&model, &input).map_err(shard_err)?;
    Ok(vectors::record(index, input, &output))
}

/// Hashes the source: the GGUF file, or a directory's `*.safetensors` files in name order.
fn hash_source(source: &Path, format: &str) -> Result<SourceInfo, ShardError> {
    let name = source
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let files: Vec<(String, PathBuf)> = if source.is_dir() {
        let entries = std::fs::read_dir(source).map_err(|e| ShardError::io("list", source, e))?;
        let mut files = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| ShardError::io("list", source, e))?;
            let p = entry.path();
            if p.extension().is_some_and(|x| x == "safetensors") {
                files.push((entry.file_name().to_string_lossy().into_owned(), p));
            }
        }
        files.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
        files
    } else {
        vec![(name.clone(), source.to_path_buf())]
    };
    let mut listed = Vec::with_capacity(files.len());
    for (n, p) in &files {
        let d = digest_concatenation(&[p]).map_err(|e| ShardError::io("read", p, e))?;
        listed.push(SourceFile {
            name: n.clone(),
            size: d.size,
            sha256: d.sha256,
        });
    }
    let (size, sha256) = match listed.as_slice() {
        [one] => (one.size, one.sha256.clone()),
        _ => {
            let paths: Vec<&Path> = files.iter().map(|(_, p)| p.as_path()).collect();
            let d = digest_concatenation(&paths).map_err(|e| ShardError::io("read", source, e))?;
            (d.size, d.sha256)
        }
    };
    Ok(SourceInfo {
        format: format.to_string(),
        name,
        size,
        sha256,
        files: listed,
    })
}

fn check_model_id(id: &str) -> Result<String, ShardError> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-/:".contains(&b));
    if ok {
        Ok(id.to_string())
    } else {
        Err(ShardError::InvalidOptions(format!(
            "model id `{id}` must be 1 to 128 characters of A-Z a-z 0-9 . _ - / :"
        )))
    }
}

/// The source's name without extension, lowercased, with other characters replaced by `-`.
fn default_model_id(source: &Path) -> String {
    let canon = source
        .canonicalize()
        .unwrap_or_else(|_| source.to_path_buf());
    let source = canon.as_path();
    let stem = if source.is_dir() {
        source.file_name()
    } else {
        source.file_stem()
    };
    let id: String = stem
        .map(|s| s.to_string_lossy().to_lowercase())
        .unwrap_or_default()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-".contains(c) {
                c
            } else {
                '-'
            }
        })
        .take(128)
        .collect();
    if id.is_empty() { "model".into() } else { id }
}
