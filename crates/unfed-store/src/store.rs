//! Where fetched models live on disk and how to tell a complete one from a partial one.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use crate::catalog::ModelSpec;
use crate::error::StoreError;

/// Environment variable that overrides the default store directory.
pub const MODEL_DIR_ENV: &str = "UNFED_MODEL_DIR";

/// Suffix of the completion marker written next to a verified model file.
pub const MARKER_SUFFIX: &str = ".sha256";

/// Prefix of every temporary file or directory the store creates; such entries are never taken
/// for a model and are removed by the next fetch of the same model.
pub(crate) const TEMP_PREFIX: &str = ".unfed-tmp-";

/// Name of the per-model lock file that serializes fetches.
pub(crate) const LOCK_NAME: &str = ".fetch.lock";

/// Whether a model is ready to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// The file has its pinned size and a completion marker with its pinned SHA-256.
    Present,
    /// Not fetched, or not completely: fetch it.
    Absent,
}

/// A directory of fetched models: `<root>/<model name>/<file name>`, plus a completion marker
/// `<file name>.sha256` (in `sha256sum` format) written only after the hash was checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelStore {
    root: PathBuf,
}

impl ModelStore {
    /// A store rooted at an explicit directory (created on first fetch).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// A store at [`ModelStore::default_root`].
    ///
    /// # Errors
    /// [`StoreError::NoStoreDir`] when no default directory can be determined.
    pub fn open_default() -> Result<Self, StoreError> {
        Self::default_root().map(Self::new)
    }

    /// `$UNFED_MODEL_DIR` when set and non-empty, else `<user cache dir>/unfed/models`
    /// (e.g. `~/.cache/unfed/models` on Linux).
    ///
    /// # Errors
    /// [`StoreError::NoStoreDir`] when the variable is unset and the platform has no cache
    /// directory.
    pub fn default_root() -> Result<PathBuf, StoreError> {
        default_root_from(std::env::var_os(MODEL_DIR_ENV), dirs::cache_dir())
            .ok_or(StoreError::NoStoreDir)
    }

    /// The store's root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The directory holding one model's file, marker, lock and temporary files.
    pub fn model_dir(&self, spec: &ModelSpec<'_>) -> PathBuf {
        self.root.join(spec.name)
    }

    /// Where the assembled model file lives once fetched.
    pub fn path_of(&self, spec: &ModelSpec<'_>) -> PathBuf {
        self.model_dir(spec).join(spec.file_name)
    }

    /// Where the completion marker lives.
    pub fn marker_path(&self, spec: &ModelSpec<'_>) -> PathBuf {
        self.model_dir(spec)
            .join(format!("{}{MARKER_SUFFIX}", spec.file_name))
    }

    /// The lock file that serializes fetches of this model (it stays after a fetch; only the
    /// lock on it matters).
    pub fn lock_path(&self, spec: &ModelSpec<'_>) -> PathBuf {
        self.model_dir(spec).join(LOCK_NAME)
    }

    /// Whether the model is present: the file exists with the pinned size and the marker
    /// records the pinned SHA-256. Anything that cannot be confirmed (including I/O errors)
    /// counts as absent; [`ModelStore::fetch`] then repairs it or reports the error.
    pub fn status(&self, spec: &ModelSpec<'_>) -> Status {
        let size_ok = std::fs::metadata(self.path_of(spec))
            .is_ok_and(|meta| meta.is_file() && meta.len() == spec.size);
        if size_ok && self.marker_matches(spec) {
            Status::Present
        } else {
            Status::Absent
        }
    }

    fn marker_matches(&self, spec: &ModelSpec<'_>) -> bool {
        std::fs::read_to_string(self.marker_path(spec)).is_ok_and(|text| {
            text.split_whitespace()
                .next()
                .is_some_and(|hash| hash.eq_ignore_ascii_case(spec.sha256))
        })
    }
}

fn default_root_from(env: Option<OsString>, cache_dir: Option<PathBuf>) -> Option<PathBuf> {
    match env {
        Some(dir) if !dir.is_empty() => Some(PathBuf::from(dir)),
        _ => cache_dir.map(|cache| cache.join("unfed").join("models")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::find;

    #[test]
    fn default_root_prefers_the_environment() {
        let cache = Some(PathBuf::from("/cache"));
        assert_eq!(
            default_root_from(Some("/models".into()), cache.clone()),
            Some(PathBuf::from("/models"))
        );
        assert_eq!(
            default_root_from(Some("".into()), cache.clone()),
            Some(PathBuf::from("/cache/unfed/models"))
        );
        assert_eq!(
            default_root_from(None, cache),
            Some(PathBuf::from("/cache/unfed/models"))
        );
        assert_eq!(default_root_from(None, None), None);
    }

    #[test]
    fn paths_are_under_the_model_directory() -> Result<(), StoreError> {
        let store = ModelStore::new("/store");
        let spec = find("smollm2-135m")?;
        assert_eq!(
            store.path_of(spec),
            Path::new("/store/smollm2-135m/SmolLM2-135M-Instruct.Q4_1.gguf")
        );
        assert_eq!(
            store.marker_path(spec),
            Path::new("/store/smollm2-135m/SmolLM2-135M-Instruct.Q4_1.gguf.sha256")
        );
        Ok(())
    }

    #[test]
    fn present_needs_size_and_marker() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let store = ModelStore::new(dir.path());
        let spec = ModelSpec {
            name: "tiny",
            description: "",
            parts: &[],
            file_name: "tiny.bin",
            sha256: "ab",
            size: 3,
        };
        assert_eq!(store.status(&spec), Status::Absent);
        std::fs::create_dir_all(store.model_dir(&spec))?;
        std::fs::write(store.path_of(&spec), b"abc")?;
        assert_eq!(store.status(&spec), Status::Absent, "no marker yet");
        std::fs::write(store.marker_path(&spec), "cd  tiny.bin\n")?;
        assert_eq!(
            store.status(&spec),
            Status::Absent,
            "marker for another hash"
        );
        std::fs::write(store.marker_path(&spec), "ab  tiny.bin\n")?;
        assert_eq!(store.status(&spec), Status::Present);
        std::fs::write(store.path_of(&spec), b"ab")?;
        assert_eq!(store.status(&spec), Status::Absent, "truncated file");
        Ok(())
    }
}
