//! Loading one shard of a split for serving: the file must be the manifest's (size and SHA-256)
//! and must reproduce its verification vector before anyone is served by it.

use std::path::{Path, PathBuf};

use unfed_model::{Checkpoint, ShardModel};

use crate::error::ShardError;
use crate::files::shard_file_path;
use crate::hash::digest_file;
use crate::manifest::Manifest;
use crate::vectors::{self, Comparison};

/// A shard checked against its manifest and ready to run.
pub struct VerifiedShard {
    pub model: ShardModel,
    pub checkpoint: Checkpoint,
    pub path: PathBuf,
}

/// Loads shard `index` of the split in `dir`, refusing it unless its bytes match the manifest
/// and its verification vector reproduces (exactly, or within the manifest's tolerance).
pub fn load_verified_shard(
    dir: &Path,
    manifest: &Manifest,
    index: usize,
) -> Result<VerifiedShard, ShardError> {
    let bad = |path: &Path, problem: String| ShardError::Manifest {
        path: path.to_path_buf(),
        problem,
    };
    let entry = manifest
        .shards
        .iter()
        .find(|s| s.index == index)
        .ok_or_else(|| bad(dir, format!("the manifest has no shard {index}")))?;
    let path = shard_file_path(dir, &entry.file)?;
    let digest = digest_file(&path, entry.chunk_size).map_err(|source| ShardError::Io {
        action: "reading",
        path: path.clone(),
        source,
    })?;
    if digest.size != entry.size || digest.sha256 != entry.sha256 {
        return Err(bad(
            &path,
            format!(
                "shard {index} is {} bytes with SHA-256 {}, the manifest says {} bytes with {}",
                digest.size, digest.sha256, entry.size, entry.sha256
            ),
        ));
    }
    let shard_err = |source| ShardError::Shard {
        index,
        path: path.clone(),
        source,
    };
    let checkpoint = Checkpoint::open(&path).map_err(shard_err)?;
    let model = ShardModel::load(&checkpoint).map_err(shard_err)?;
    if model.role().layers != entry.layers() {
        return Err(bad(
            &path,
            format!(
                "shard {index} holds layers {:?}, the manifest says {:?}",
                model.role().layers,
                entry.layers()
            ),
        ));
    }
    let vector = manifest
        .verification
        .vectors
        .iter()
        .find(|v| v.shard == index)
        .ok_or_else(|| {
            bad(
                &path,
                format!("the manifest has no verification vector for shard {index}"),
            )
        })?;
    let out = vectors::run(&model, &vector.input).map_err(shard_err)?;
    if let Comparison::Mismatch(why) =
        vectors::compare(vector, &out, &manifest.verification.tolerance)
    {
        return Err(bad(
            &path,
            format!("shard {index} fails its verification vector: {why}"),
        ));
    }
    Ok(VerifiedShard {
        model,
        checkpoint,
        path,
    })
}
