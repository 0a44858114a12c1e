//! File-system helpers: files written under a temporary name and renamed when complete, and
//! manifest paths resolved so that they can never leave the split directory.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Component, Path, PathBuf};

use crate::ShardError;
use crate::hash::{CHUNK_SIZE, DigestWriter, FileDigest};

/// Suffix of files being written; a finished file never has it.
pub(crate) const PARTIAL_SUFFIX: &str = ".partial";

/// `dir/name.partial`.
pub(crate) fn partial_path(final_path: &Path) -> PathBuf {
    let mut s = final_path.as_os_str().to_owned();
    s.push(PARTIAL_SUFFIX);
    PathBuf::from(s)
}

/// Writes `final_path` through `fill`: the bytes go to `final_path.partial`, are hashed on the
/// way, synced, and the file is renamed into place only when `fill` succeeded. On any error
/// the partial file is removed.
pub(crate) fn write_atomic<E>(
    final_path: &Path,
    fill: impl FnOnce(&mut DigestWriter<BufWriter<File>>) -> Result<(), E>,
) -> Result<FileDigest, ShardError>
where
    E: Into<ShardError>,
{
    let tmp = partial_path(final_path);
    let result = (|| {
        let file = File::create(&tmp).map_err(|e| ShardError::io("create", &tmp, e))?;
        let mut w = DigestWriter::new(BufWriter::new(file), CHUNK_SIZE);
        fill(&mut w).map_err(Into::into)?;
        w.flush().map_err(|e| ShardError::io("write", &tmp, e))?;
        let (buf, digest) = w.finish();
        let file = buf
            .into_inner()
            .map_err(|e| ShardError::io("write", &tmp, e.into_error()))?;
        file.sync_all()
            .map_err(|e| ShardError::io("sync", &tmp, e))?;
        drop(file);
        std::fs::rename(&tmp, final_path).map_err(|e| ShardError::io("rename", &tmp, e))?;
        Ok(digest)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Writes a small file atomically.
pub(crate) fn write_bytes_atomic(path: &Path, bytes: &[u8]) -> Result<FileDigest, ShardError> {
    write_atomic(path, |w| {
        w.write_all(bytes)
            .map_err(|e| ShardError::io("write", path, e))
    })
}

/// Flushes a directory's entries (the renames in it) to disk, where the platform allows.
pub(crate) fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

/// Where a manifest path leads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolved {
    /// The file exists and its canonical path lies inside the directory.
    Inside(PathBuf),
    /// Nothing exists at that (lexically safe) path.
    Missing(PathBuf),
}

/// Checks that `name` is a plain relative path (normal components only: no root, no drive,
/// no `.` or `..`, no backslash) and that, with symbolic links followed, it stays inside the
/// canonical directory `canon_dir` and is a regular file (never a directory, FIFO or device).
/// Returns why not otherwise.
pub fn resolve_in_dir(canon_dir: &Path, name: &str) -> Result<Resolved, String> {
    if name.is_empty() {
        return Err("empty file name".into());
    }
    if name.contains('\\') || name.contains('\0') {
        return Err(format!("`{name}` contains a backslash or NUL"));
    }
    let p = Path::new(name);
    if p.is_absolute() || p.has_root() {
        return Err(format!("`{name}` is an absolute path"));
    }
    for c in p.components() {
        match c {
            Component::Normal(_) => {}
            Component::ParentDir => {
                return Err(format!("`{name}` uses `..` to leave the directory"));
            }
            _ => return Err(format!("`{name}` is not a plain relative path")),
        }
    }
    let joined = canon_dir.join(p);
    match std::fs::symlink_metadata(&joined) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Resolved::Missing(joined)),
        Err(e) => return Err(format!("`{name}`: {e}")),
        Ok(_) => {}
    }
    match joined.canonicalize() {
        Ok(real) if real.starts_with(canon_dir) => {
            if real.is_file() {
                Ok(Resolved::Inside(real))
            } else {
                Err(format!("`{name}` is not a regular file"))
            }
        }
        Ok(real) => Err(format!(
            "`{name}` resolves to {}, outside the directory",
            real.display()
        )),
        // A dangling symbolic link: it exists but leads nowhere.
        Err(e) => Err(format!("`{name}` is a link that cannot be followed: {e}")),
    }
}

/// The checked path of a file named in a manifest, for callers that open shard files (a node
/// loading its shard): the file must exist inside `dir`.
pub fn shard_file_path(dir: &Path, name: &str) -> Result<PathBuf, ShardError> {
    let canon = dir
        .canonicalize()
        .map_err(|e| ShardError::io("open directory", dir, e))?;
    match resolve_in_dir(&canon, name) {
        Ok(Resolved::Inside(p)) => Ok(p),
        Ok(Resolved::Missing(p)) => Err(ShardError::io(
            "open",
            &p,
            std::io::Error::from(std::io::ErrorKind::NotFound),
        )),
        Err(problem) => Err(ShardError::Manifest {
            path: dir.join(crate::MANIFEST_FILE),
            problem,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lexical_rules() {
        let dir = tempfile::tempdir().unwrap();
        let canon = dir.path().canonicalize().unwrap();
        for bad in ["", "/etc/passwd", "../x.gguf", "a/../../x", "./x", "a\\b"] {
            assert!(resolve_in_dir(&canon, bad).is_err(), "{bad:?} accepted");
        }
        assert_eq!(
            resolve_in_dir(&canon, "shard-0.gguf").unwrap(),
            Resolved::Missing(canon.join("shard-0.gguf"))
        );
        std::fs::write(canon.join("a.gguf"), b"x").unwrap();
        assert_eq!(
            resolve_in_dir(&canon, "a.gguf").unwrap(),
            Resolved::Inside(canon.join("a.gguf"))
        );
    }

    #[cfg(unix)]
    #[test]
    fn symlinks_must_stay_inside() {
        let outside = tempfile::tempdir().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let canon = dir.path().canonicalize().unwrap();
        std::fs::write(outside.path().join("x.gguf"), b"x").unwrap();
        std::os::unix::fs::symlink(outside.path().join("x.gguf"), canon.join("out.gguf")).unwrap();
        let err = resolve_in_dir(&canon, "out.gguf").unwrap_err();
        assert!(err.contains("outside the directory"), "{err}");
        std::fs::write(canon.join("real.gguf"), b"x").unwrap();
        std::os::unix::fs::symlink(canon.join("real.gguf"), canon.join("in.gguf")).unwrap();
        assert!(matches!(
            resolve_in_dir(&canon, "in.gguf"),
            Ok(Resolved::Inside(_))
        ));
        std::os::unix::fs::symlink(canon.join("nowhere"), canon.join("dangling.gguf")).unwrap();
        assert!(resolve_in_dir(&canon, "dangling.gguf").is_err());
        std::fs::create_dir(canon.join("d.gguf")).unwrap();
        let err = resolve_in_dir(&canon, "d.gguf").unwrap_err();
        assert!(err.contains("not a regular file"), "{err}");
    }
}
