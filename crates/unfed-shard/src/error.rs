//! Typed errors of splitting and verification, each naming the file or shard involved.

use std::path::{Path, PathBuf};

use unfed_model::ModelError;

/// Everything that can stop a split, or stop a verification before it can check anything.
///
/// Problems found *while* verifying a split are not errors: they are failed checks in the
/// [`crate::VerifyReport`].
#[derive(Debug, thiserror::Error)]
pub enum ShardError {
    /// The split options make no sense on their own (a bad model id, zero shards).
    #[error("invalid split options: {0}")]
    InvalidOptions(String),

    /// The shard count does not fit the model.
    #[error(
        "cannot split a model of {n_layer} layers into {requested} shards: \
         the shard count must be between 1 and {n_layer}"
    )]
    ShardCount {
        /// The number of shards asked for.
        requested: usize,
        /// Layers of the model.
        n_layer: usize,
    },

    /// The source is not a model this project can read (not GGUF, truncated, unsupported).
    #[error("cannot read the source model {}: {}", .path.display(), strip_path(.source, .path))]
    Source {
        /// The source file or directory.
        path: PathBuf,
        /// What the model runtime reported.
        source: ModelError,
    },

    /// The source model is itself a shard of a split.
    #[error(
        "{} is already a shard of a split (it has `unfed.shard.*` metadata); split the whole model instead",
        .path.display()
    )]
    SourceIsShard {
        /// The source file.
        path: PathBuf,
    },

    /// The source holds a tensor that belongs to no shard, or lacks one that a shard needs.
    #[error("source model {}: {problem}", .path.display())]
    SourceTensors {
        /// The source file or directory.
        path: PathBuf,
        /// Which tensors and why.
        problem: String,
    },

    /// The output directory already holds a finished split.
    #[error(
        "{} already holds a split (manifest.json exists); choose another directory or force overwriting",
        .dir.display()
    )]
    AlreadySplit {
        /// The output directory.
        dir: PathBuf,
    },

    /// A file could not be read, written, renamed or synced.
    #[error("cannot {action} {}: {source}", .path.display())]
    Io {
        /// What we were doing (`write`, `read`, `rename`, ...).
        action: &'static str,
        /// The file involved.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },

    /// A shard file could not be encoded as GGUF.
    #[error("cannot write shard {index} ({}): {source}", .path.display())]
    WriteShard {
        /// Shard index.
        index: usize,
        /// The file being written.
        path: PathBuf,
        /// The GGUF writer's error.
        source: unfed_gguf::GgufError,
    },

    /// A freshly written shard failed to load or run (while computing its verification vector).
    #[error("shard {index} ({}): {}", .path.display(), strip_path(.source, .path))]
    Shard {
        /// Shard index.
        index: usize,
        /// The shard file.
        path: PathBuf,
        /// What the model runtime reported.
        source: ModelError,
    },

    /// The source's tokenizer cannot be built or serialised.
    #[error("cannot build the tokenizer of {}: {source}", .path.display())]
    Tokenizer {
        /// The source file or directory.
        path: PathBuf,
        /// What the tokenizer code reported.
        source: ModelError,
    },

    /// `manifest.json` is missing, too large, not valid JSON, or not a manifest of this format.
    #[error("manifest {}: {problem}", .path.display())]
    Manifest {
        /// The manifest file.
        path: PathBuf,
        /// What is wrong with it.
        problem: String,
    },
}

impl ShardError {
    pub(crate) fn io(action: &'static str, path: &Path, source: std::io::Error) -> Self {
        Self::Io {
            action,
            path: path.to_path_buf(),
            source,
        }
    }
}

/// The runtime's message without a leading `PATH: `, which the outer message already shows.
fn strip_path(e: &ModelError, path: &Path) -> String {
    let msg = e.to_string();
    let prefix = format!("{}: ", path.display());
    match msg.strip_prefix(&prefix) {
        Some(rest) => rest.to_string(),
        None => msg,
    }
}
