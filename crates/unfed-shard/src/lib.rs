//! Model splitting: cut a checkpoint (GGUF file or safetensors directory) into layer-range
//! shard files, describe them in a manifest that pins every byte and records verification
//! vectors, and verify a split directory against its manifest.
//!
//! A split directory holds `shard-{i}.gguf` (all source metadata plus the `unfed.shard.*`
//! keys, and exactly the tensors the shard needs, bytes unchanged), `tokenizer.json` and
//! `manifest.json`, written last. The manifest format is specified in `docs/manifest.md`.
//!
//! Composing the shards of a split reproduces the unsplit model bit for bit: every shard runs
//! the same layer code on the same bytes (see `unfed_model::ShardModel`).

mod error;
mod files;
pub mod hash;
mod load;
mod manifest;
mod plan;
mod report;
mod split;
pub mod vectors;
mod verify;

pub use error::ShardError;
pub use files::{Resolved, resolve_in_dir, shard_file_path};
pub use load::{VerifiedShard, load_verified_shard};
pub use manifest::{
    MANIFEST_FILE, MANIFEST_FORMAT, MANIFEST_VERSION, MAX_MANIFEST_BYTES, Manifest, MpcPlan,
    Sample, ShardEntry, SourceFile, SourceInfo, TokenizerEntry, Tolerance, VectorInput,
    Verification, VerificationVector, mpc_plan, mpc_spec, read_manifest,
};
pub use plan::{partition_layers, partition_with_mpc};
pub use report::{Check, CheckStatus, VerifyReport};
pub use split::{SplitOptions, TOKENIZER_FILE, shard_file_name, split};
pub use verify::verify;
