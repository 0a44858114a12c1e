//! Test helpers: tiny wheels that the real `pip download --no-index --find-links` accepts.

use std::ffi::OsString;
use std::io::Write;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use unfed_store::{FetchOptions, ModelStore};
use zip::write::SimpleFileOptions;

pub type TestResult = Result<(), Box<dyn std::error::Error>>;

/// Writes `<dist>-<version>-py3-none-any.whl` into `dir` holding `members` plus the
/// `.dist-info` files pip looks at (METADATA, WHEEL, RECORD).
pub fn write_wheel(
    dir: &Path,
    package: &str,
    version: &str,
    members: &[(&str, &[u8])],
) -> Result<PathBuf, Box<dyn std::error::Error>> {
    let dist = package.replace(['-', '.'], "_").to_lowercase();
    let path = dir.join(format!("{dist}-{version}-py3-none-any.whl"));
    let mut zip = zip::ZipWriter::new(std::fs::File::create(&path)?);
    let deflated =
        SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
    let info = format!("{dist}-{version}.dist-info");
    let mut record = String::new();
    let mut add = |zip: &mut zip::ZipWriter<std::fs::File>,
                   name: &str,
                   data: &[u8]|
     -> Result<(), Box<dyn std::error::Error>> {
        zip.start_file(name, deflated)?;
        zip.write_all(data)?;
        record.push_str(&format!("{name},,\n"));
        Ok(())
    };
    for (name, data) in members {
        add(&mut zip, name, data)?;
    }
    let metadata = format!("Metadata-Version: 2.1\nName: {package}\nVersion: {version}\n");
    add(&mut zip, &format!("{info}/METADATA"), metadata.as_bytes())?;
    let wheel = "Wheel-Version: 1.0\nGenerator: unfed-store-tests\nRoot-Is-Purelib: true\n\
                 Tag: py3-none-any\n";
    add(&mut zip, &format!("{info}/WHEEL"), wheel.as_bytes())?;
    record.push_str(&format!("{info}/RECORD,,\n"));
    zip.start_file(format!("{info}/RECORD"), deflated)?;
    zip.write_all(record.as_bytes())?;
    zip.finish()?;
    Ok(path)
}

/// Deterministic bytes that differ per `seed`.
pub fn pattern(seed: u8, len: usize) -> Vec<u8> {
    let mut state = u32::from(seed).wrapping_mul(2_654_435_761).wrapping_add(1);
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            state.to_le_bytes()[0]
        })
        .collect()
}

pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// Options that make pip use only the wheels in `wheel_dir`.
pub fn offline(wheel_dir: &Path) -> FetchOptions {
    FetchOptions {
        python: None,
        pip_args: vec![
            OsString::from("--no-index"),
            OsString::from("--find-links"),
            wheel_dir.as_os_str().to_owned(),
        ],
        quiet: true,
    }
}

/// Names in the model's directory, sorted.
pub fn dir_listing(store: &ModelStore, name: &str) -> Result<Vec<String>, std::io::Error> {
    let dir = store.root().join(name);
    if !dir.exists() {
        return Ok(Vec::new());
    }
    let mut names = std::fs::read_dir(dir)?
        .map(|entry| entry.map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect::<Result<Vec<_>, _>>()?;
    names.sort();
    Ok(names)
}
