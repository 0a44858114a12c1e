//! Checks of one shard file: bytes (size, SHA-256, which chunk differs), GGUF header and
//! `unfed.shard.*` metadata, tensor list and coverage, and finally its verification vector.

use std::collections::BTreeSet;
use std::path::Path;

use unfed_gguf::Value;
use unfed_model::shard::keys;
use unfed_model::{Checkpoint, ShardModel};

use crate::files::Resolved;
use crate::hash::{CHUNK_SIZE, digest_file};
use crate::manifest::{Manifest, ShardEntry, VectorInput, VerificationVector};
use crate::plan::{self, Part};
use crate::report::{CheckStatus, VerifyReport};
use crate::vectors::{self, Comparison};

/// Differing chunks listed by name before the rest are only counted.
const MAX_LISTED: usize = 8;

/// What the manifest records about one file's bytes.
pub(super) struct Expected<'a> {
    pub file: &'a str,
    pub size: u64,
    pub sha256: &'a str,
    /// Chunk size and chunk hashes, for shard files.
    pub chunks: Option<(u64, &'a [String])>,
}

impl<'a> Expected<'a> {
    pub fn shard(s: &'a ShardEntry) -> Self {
        Self {
            file: &s.file,
            size: s.size,
            sha256: &s.sha256,
            chunks: Some((s.chunk_size, &s.chunk_sha256)),
        }
    }
}

/// Size, whole-file hash and chunk hashes. Returns whether the file's bytes are as recorded.
pub(super) fn file_bytes(
    name: String,
    index: Option<usize>,
    s: &Expected<'_>,
    resolved: Option<&Resolved>,
    r: &mut VerifyReport,
) -> bool {
    let path = match resolved {
        None => {
            r.push(
                name,
                index,
                CheckStatus::Skipped,
                format!("`{}`: unsafe path, not opened", s.file),
            );
            return false;
        }
        Some(Resolved::Missing(_)) => {
            r.push(
                name,
                index,
                CheckStatus::Fail,
                format!("`{}` is missing", s.file),
            );
            return false;
        }
        Some(Resolved::Inside(p)) => p,
    };
    let mut problems = Vec::new();
    let (chunk_size, recorded_chunks): (u64, &[String]) = match s.chunks {
        Some((size, chunks)) if (1..=1 << 30).contains(&size) => (size, chunks),
        Some((size, chunks)) => {
            problems.push(format!(
                "recorded chunk size {size} is not within 1..=1 GiB"
            ));
            (CHUNK_SIZE, chunks)
        }
        None => (CHUNK_SIZE, &[]),
    };
    let d = match digest_file(path, chunk_size) {
        Ok(d) => d,
        Err(e) => {
            r.push(
                name,
                index,
                CheckStatus::Fail,
                format!("`{}` cannot be read: {e}", s.file),
            );
            return false;
        }
    };
    let expected_chunks = s.size.div_ceil(chunk_size);
    if s.chunks.is_some() && recorded_chunks.len() as u64 != expected_chunks {
        problems.push(format!(
            "the manifest lists {} chunk hashes, but {} bytes make {expected_chunks} chunks",
            recorded_chunks.len(),
            s.size
        ));
    }
    if d.size != s.size {
        problems.push(format!("size is {} bytes, recorded {}", d.size, s.size));
    }
    if d.sha256 != s.sha256 {
        problems.push(format!("SHA-256 is {}, recorded {}", d.sha256, s.sha256));
    }
    let differing: Vec<usize> = (0..d.chunks.len().max(recorded_chunks.len()))
        .filter(|&i| d.chunks.get(i) != recorded_chunks.get(i))
        .collect();
    if s.chunks.is_some() && !differing.is_empty() {
        let file_len = d.size.max(s.size);
        let mut listed: Vec<String> = differing
            .iter()
            .take(MAX_LISTED)
            .map(|&i| {
                let start = i as u64 * chunk_size;
                let end = (start + chunk_size).min(file_len);
                format!("chunk {i} (bytes {start}..{end})")
            })
            .collect();
        if differing.len() > MAX_LISTED {
            listed.push(format!("and {} more", differing.len() - MAX_LISTED));
        }
        problems.push(format!("differing: {}", listed.join(", ")));
    }
    r.outcome(
        name,
        index,
        problems,
        match s.chunks {
            Some(_) => format!(
                "`{}`: {} bytes, SHA-256 and {} chunk hashes match",
                s.file,
                d.size,
                d.chunks.len()
            ),
            None => format!("`{}`: {} bytes, SHA-256 matches", s.file, d.size),
        },
    )
}

/// Opens the shard as GGUF and checks its metadata and tensors against the manifest.
/// Returns the opened checkpoint when every check passed.
pub(super) fn gguf(
    m: &Manifest,
    s: &ShardEntry,
    resolved: Option<&Resolved>,
    r: &mut VerifyReport,
) -> Option<Checkpoint> {
    let i = s.index;
    let name = format!("shard {i} gguf");
    let Some(Resolved::Inside(path)) = resolved else {
        r.push(name, Some(i), CheckStatus::Skipped, "no file to open");
        return None;
    };
    let ck = match Checkpoint::open(path) {
        Ok(ck) => ck,
        Err(e) => {
            r.push(
                name,
                Some(i),
                CheckStatus::Fail,
                format!("`{}` does not parse: {e}", s.file),
            );
            return None;
        }
    };
    let mut problems = Vec::new();
    let int = |k: &str| ck.get(k).and_then(Value::as_u64);
    let flag = |k: &str| ck.get(k).and_then(Value::as_bool);
    let count = m.shards.len() as u64;
    for (key, got, want) in [
        (keys::INDEX, int(keys::INDEX), i as u64),
        (keys::COUNT, int(keys::COUNT), count),
        (
            keys::LAYER_START,
            int(keys::LAYER_START),
            s.layer_start as u64,
        ),
        (keys::LAYER_END, int(keys::LAYER_END), s.layer_end as u64),
    ] {
        if got != Some(want) {
            problems.push(format!("{key} is {}, manifest says {want}", show(got)));
        }
    }
    for (key, got, want) in [
        (keys::HAS_EMBEDDING, flag(keys::HAS_EMBEDDING), s.embedding),
        (keys::HAS_HEAD, flag(keys::HAS_HEAD), s.head),
    ] {
        if got != Some(want) {
            problems.push(format!("{key} is {}, manifest says {want}", show(got)));
        }
    }
    match ck.config() {
        Ok(c) if c == m.config => {}
        Ok(c) => problems.push(format!("model config {c:?} differs from the manifest's")),
        Err(e) => problems.push(format!("model config: {e}")),
    }
    let gguf_ok = r.outcome(
        name,
        Some(i),
        problems,
        format!(
            "`{}` parses; unfed.shard.* metadata and model config agree",
            s.file
        ),
    );
    let tensors_ok = tensors(m, s, &ck, r);
    (gguf_ok && tensors_ok).then_some(ck)
}

fn show<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map_or_else(|| "absent".to_string(), |v| v.to_string())
}

/// The file's tensors equal the manifest's list, which covers the shard's required tensors
/// and holds nothing of other shards.
fn tensors(m: &Manifest, s: &ShardEntry, ck: &Checkpoint, r: &mut VerifyReport) -> bool {
    let listed: BTreeSet<&str> = s.tensors.iter().map(String::as_str).collect();
    let names = ck.tensor_names();
    let in_file: BTreeSet<&str> = names.iter().map(String::as_str).collect();
    let mut problems = Vec::new();
    if listed.len() != s.tensors.len() {
        problems.push("the manifest lists a tensor more than once".to_string());
    }
    let absent: Vec<&str> = listed.difference(&in_file).copied().collect();
    let unlisted: Vec<&str> = in_file.difference(&listed).copied().collect();
    if !absent.is_empty() {
        problems.push(format!("listed but not in the file: {}", few(&absent)));
    }
    if !unlisted.is_empty() {
        problems.push(format!("in the file but not listed: {}", few(&unlisted)));
    }
    let part = Part {
        layers: s.layers(),
        embedding: s.embedding,
        head: s.head,
    };
    let required = plan::required(m.config.arch, &part, m.tied_embeddings);
    let lacking: Vec<&str> = required
        .iter()
        .map(String::as_str)
        .filter(|n| !listed.contains(n))
        .collect();
    if !lacking.is_empty() {
        problems.push(format!("required tensors missing: {}", few(&lacking)));
    }
    let foreign: Vec<&str> = listed
        .iter()
        .copied()
        .filter(|n| !plan::belongs(n, &part, m.tied_embeddings))
        .collect();
    if !foreign.is_empty() {
        problems.push(format!(
            "tensors outside this shard's part: {}",
            few(&foreign)
        ));
    }
    r.outcome(
        format!("shard {} tensors", s.index),
        Some(s.index),
        problems,
        format!(
            "{} tensors, as listed, covering layers {}..{}{}{}",
            in_file.len(),
            s.layer_start,
            s.layer_end,
            if s.embedding { " + embedding" } else { "" },
            if s.head { " + final norm and head" } else { "" },
        ),
    )
}

fn few(names: &[&str]) -> String {
    let mut s = names
        .iter()
        .take(MAX_LISTED)
        .copied()
        .collect::<Vec<_>>()
        .join(", ");
    if names.len() > MAX_LISTED {
        s.push_str(&format!(" and {} more", names.len() - MAX_LISTED));
    }
    s
}

/// Loads the shard, runs it on the vector's input and compares with the record.
pub(super) fn vector(
    m: &Manifest,
    index: usize,
    path: &Path,
    ck: &Checkpoint,
    v: &VerificationVector,
    r: &mut VerifyReport,
) {
    let name = format!("shard {index} verification vector");
    if let VectorInput::Hidden {
        seed,
        rows,
        cols,
        sha256,
    } = &v.input
    {
        let n = rows.saturating_mul(*cols).min(1 << 26);
        let got = crate::hash::sha256_f32_le(&vectors::hidden_values(*seed, n));
        if &got != sha256 {
            r.push(
                name,
                Some(index),
                CheckStatus::Fail,
                format!("generated hidden input (seed {seed}) hashes to {got}, recorded {sha256}"),
            );
            return;
        }
    }
    let outcome = ShardModel::load(ck).and_then(|model| vectors::run(&model, &v.input));
    let output = match outcome {
        Ok(o) => o,
        Err(e) => {
            let msg = format!("`{}` failed to load or run: {e}", path.display());
            r.push(name, Some(index), CheckStatus::Fail, msg);
            return;
        }
    };
    match vectors::compare(v, &output, &m.verification.tolerance) {
        Comparison::Exact => r.push(
            name,
            Some(index),
            CheckStatus::Pass,
            format!("exact match: output {:?} hashes to {}", v.output_shape, v.output_sha256),
        ),
        Comparison::WithinTolerance { l2_rel_dev, max_sample_dev } => r.push(
            name,
            Some(index),
            CheckStatus::WithinTolerance,
            format!(
                "matches within tolerance, not bit-identical (other floating-point kernels?): \
                 L2 relative deviation {l2_rel_dev:.2e}, largest sample deviation {max_sample_dev:.2e}"
            ),
        ),
        Comparison::Mismatch(why) => {
            r.push(name, Some(index), CheckStatus::Fail, format!("mismatch: {why}"))
        }
    }
}
