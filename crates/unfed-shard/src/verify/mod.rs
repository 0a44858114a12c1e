//! Verifying a split directory against its manifest, collecting every problem found: paths,
//! shard numbering and layer coverage, file bytes, GGUF metadata and tensors, the tokenizer,
//! and finally each shard's verification vector.

mod shard;
mod structure;

use std::path::Path;

use unfed_gguf::Value;
use unfed_model::TextTokenizer;
use unfed_model::checkpoint::HF_TOKENIZER_KEY;

use crate::ShardError;
use crate::files::Resolved;
use crate::manifest::{Manifest, read_manifest};
use crate::report::{CheckStatus, VerifyReport};
use shard::Expected;

/// Tokenizer files larger than this are not parsed (real ones are a few MiB).
const MAX_TOKENIZER_BYTES: u64 = 64 << 20;

/// Verifies the split in `dir`. An error means there is nothing to verify (no readable,
/// well-formed manifest); every problem with the split itself is a failed check in the report.
pub fn verify(dir: &Path) -> Result<VerifyReport, ShardError> {
    let manifest = read_manifest(dir)?;
    let canon = dir
        .canonicalize()
        .map_err(|e| ShardError::io("open directory", dir, e))?;
    let m = &manifest;
    let mut r = VerifyReport {
        dir: dir.to_path_buf(),
        model_id: m.model_id.clone(),
        checks: Vec::new(),
    };
    r.push(
        "manifest",
        None,
        CheckStatus::Pass,
        format!(
            "{} version {}, {} shards",
            m.format,
            m.version,
            m.shards.len()
        ),
    );
    structure::config(m, &mut r);
    structure::indexes(m, &mut r);
    structure::layer_ranges(m, &mut r);
    structure::roles(m, &mut r);
    let (shard_paths, tok_path) = structure::paths(m, &canon, &mut r);
    let usable_vectors = structure::vectors(m, &mut r);

    tokenizer_file(m, tok_path.as_ref(), &mut r);

    let mut loaded = Vec::with_capacity(m.shards.len());
    for (pos, s) in m.shards.iter().enumerate() {
        let resolved = shard_paths.get(pos).and_then(Option::as_ref);
        let bytes_ok = shard::file_bytes(
            format!("shard {pos} file"),
            Some(pos),
            &Expected::shard(s),
            resolved,
            &mut r,
        );
        let ck = shard::gguf(m, s, resolved, &mut r);
        loaded.push(match (bytes_ok, ck, resolved) {
            (true, Some(ck), Some(Resolved::Inside(p))) => Some((ck, p.clone())),
            _ => None,
        });
    }
    if let Some(Some((ck0, _))) = loaded.first() {
        tokenizer_metadata(m, ck0.metadata(), &mut r);
    }

    for (pos, entry) in loaded.iter().enumerate() {
        let name = format!("shard {pos} verification vector");
        let vector = m.verification.vectors.get(pos);
        match (
            entry,
            vector,
            usable_vectors.get(pos).copied().unwrap_or(false),
        ) {
            (Some((ck, path)), Some(v), true) => shard::vector(m, pos, path, ck, v, &mut r),
            (None, _, _) => r.push(
                name,
                Some(pos),
                CheckStatus::Skipped,
                "not run: the shard file failed its checks",
            ),
            _ => r.push(
                name,
                Some(pos),
                CheckStatus::Skipped,
                "not run: the manifest's vector is unusable",
            ),
        }
    }
    Ok(r)
}

/// `tokenizer.json`: bytes as recorded, and a tokenizer this build can load.
fn tokenizer_file(m: &Manifest, resolved: Option<&Resolved>, r: &mut VerifyReport) {
    let t = &m.tokenizer;
    let expected = Expected {
        file: &t.file,
        size: t.size,
        sha256: &t.sha256,
        chunks: None,
    };
    if !shard::file_bytes("tokenizer file".into(), None, &expected, resolved, r) {
        return;
    }
    let Some(Resolved::Inside(path)) = resolved else {
        return;
    };
    let parsed = if t.size > MAX_TOKENIZER_BYTES {
        Err(format!(
            "{} bytes is over the {MAX_TOKENIZER_BYTES}-byte limit",
            t.size
        ))
    } else {
        std::fs::read_to_string(path)
            .map_err(|e| e.to_string())
            .and_then(|json| {
                TextTokenizer::from_metadata(&[(HF_TOKENIZER_KEY.to_string(), Value::String(json))])
                    .map_err(|e| e.to_string())
            })
    };
    match parsed {
        Ok(tok) => r.push(
            "tokenizer loads",
            None,
            CheckStatus::Pass,
            format!("{} entries in the vocabulary", tok.vocab_size()),
        ),
        Err(e) => r.push("tokenizer loads", None, CheckStatus::Fail, e),
    }
}

/// The chat template, end-of-generation ids and tokenizer kind agree with shard 0's metadata.
fn tokenizer_metadata(m: &Manifest, meta: &[(String, Value)], r: &mut VerifyReport) {
    let mut problems = Vec::new();
    let template = meta
        .iter()
        .find(|(k, _)| k == "tokenizer.chat_template")
        .and_then(|(_, v)| v.as_str());
    if template != m.chat_template.as_deref() {
        problems.push("chat_template differs from shard 0's tokenizer.chat_template".to_string());
    }
    match TextTokenizer::from_metadata(meta) {
        Ok(tok) => {
            if tok.end_of_generation() != m.end_of_generation.as_slice() {
                problems.push(format!(
                    "end_of_generation {:?}, but shard 0's tokenizer gives {:?}",
                    m.end_of_generation,
                    tok.end_of_generation()
                ));
            }
            if tok.kind() != m.tokenizer.kind {
                problems.push(format!(
                    "tokenizer kind `{}`, but shard 0's tokenizer is `{}`",
                    m.tokenizer.kind,
                    tok.kind()
                ));
            }
        }
        Err(e) => problems.push(format!("shard 0's tokenizer: {e}")),
    }
    r.outcome(
        "tokenizer metadata",
        None,
        problems,
        format!(
            "chat template ({}) and end-of-generation ids {:?} agree with shard 0",
            if m.chat_template.is_some() {
                "present"
            } else {
                "none"
            },
            m.end_of_generation
        ),
    );
}
