//! Checks of the manifest against itself: shard indexes, layer coverage, roles, file paths and
//! the shape of the verification vectors — everything that needs no shard file.

use std::collections::HashSet;
use std::path::Path;

use crate::files::{Resolved, resolve_in_dir};
use crate::manifest::{Manifest, VectorInput};
use crate::report::VerifyReport;
use crate::vectors;

/// Verification inputs longer than this are refused rather than run.
const MAX_POSITIONS: usize = 1024;

/// Model config and architecture agree.
pub(super) fn config(m: &Manifest, r: &mut VerifyReport) {
    let c = &m.config;
    let mut problems = Vec::new();
    if m.architecture != c.arch.name() {
        problems.push(format!(
            "architecture `{}` but config.arch `{}`",
            m.architecture,
            c.arch.name()
        ));
    }
    if c.n_layer == 0 || c.hidden == 0 || c.vocab == 0 {
        problems.push(format!(
            "degenerate config: {} layers, hidden {}, vocab {}",
            c.n_layer, c.hidden, c.vocab
        ));
    }
    let ok = format!(
        "{} model `{}`: {} layers, hidden {}, vocab {}{}",
        m.architecture,
        m.model_id,
        c.n_layer,
        c.hidden,
        c.vocab,
        if m.tied_embeddings { ", tied head" } else { "" }
    );
    r.outcome("model config", None, problems, ok);
}

/// Shards are numbered 0..n in order, with distinct files.
pub(super) fn indexes(m: &Manifest, r: &mut VerifyReport) {
    let mut problems = Vec::new();
    if m.shards.is_empty() {
        problems.push("the manifest lists no shards".to_string());
    }
    for (pos, s) in m.shards.iter().enumerate() {
        if s.index != pos {
            problems.push(format!("entry {pos} has index {}, expected {pos}", s.index));
        }
    }
    let mut seen = HashSet::new();
    for s in &m.shards {
        if !seen.insert(s.file.as_str()) {
            problems.push(format!("file `{}` is listed more than once", s.file));
        }
    }
    if seen.contains(m.tokenizer.file.as_str()) {
        problems.push(format!(
            "tokenizer file `{}` is also a shard file",
            m.tokenizer.file
        ));
    }
    let ok = format!("{} shards, indexes 0..{}", m.shards.len(), m.shards.len());
    r.outcome("shard indexes", None, problems, ok);
}

/// Layer ranges are contiguous, do not overlap and cover `0..n_layer` exactly.
pub(super) fn layer_ranges(m: &Manifest, r: &mut VerifyReport) {
    let n_layer = m.config.n_layer;
    let mut problems = Vec::new();
    for s in &m.shards {
        if s.layer_start >= s.layer_end {
            problems.push(format!(
                "shard {} has the empty or reversed layer range {}..{}",
                s.index, s.layer_start, s.layer_end
            ));
        }
        if s.layer_end > n_layer {
            problems.push(format!(
                "shard {} ends at layer {}, past the model's {n_layer} layers",
                s.index, s.layer_end
            ));
        }
    }
    if let Some(first) = m.shards.first()
        && first.layer_start > 0
    {
        problems.push(format!(
            "layers 0..{} are in no shard (shard {} starts at layer {})",
            first.layer_start, first.index, first.layer_start
        ));
    }
    for w in m.shards.windows(2) {
        let (a, b) = (&w[0], &w[1]);
        if b.layer_start < a.layer_end {
            let end = a.layer_end.min(b.layer_end);
            problems.push(format!(
                "shards {} (layers {}..{}) and {} (layers {}..{}) overlap on layers {}..{end}",
                a.index,
                a.layer_start,
                a.layer_end,
                b.index,
                b.layer_start,
                b.layer_end,
                b.layer_start
            ));
        } else if b.layer_start > a.layer_end {
            problems.push(format!(
                "layers {}..{} are in no shard (between shard {} ending at {} and shard {} starting at {})",
                a.layer_end, b.layer_start, a.index, a.layer_end, b.index, b.layer_start
            ));
        }
    }
    if let Some(last) = m.shards.last()
        && last.layer_end < n_layer
    {
        problems.push(format!(
            "layers {}..{n_layer} are in no shard (the last shard, {}, ends at layer {})",
            last.layer_end, last.index, last.layer_end
        ));
    }
    let ok = m
        .shards
        .iter()
        .map(|s| format!("{}..{}", s.layer_start, s.layer_end))
        .collect::<Vec<_>>()
        .join(", ");
    r.outcome(
        "layer ranges",
        None,
        problems,
        format!("layers 0..{n_layer} covered exactly: {ok}"),
    );
}

/// The first shard alone has the embedding; the last alone has the final norm and the head.
pub(super) fn roles(m: &Manifest, r: &mut VerifyReport) {
    let n = m.shards.len();
    let mut problems = Vec::new();
    for (pos, s) in m.shards.iter().enumerate() {
        let (first, last) = (pos == 0, pos + 1 == n);
        for (flag, value, want) in [
            ("embedding", s.embedding, first),
            ("final_norm", s.final_norm, last),
            ("head", s.head, last),
        ] {
            if value != want {
                let which = if flag == "embedding" { "first" } else { "last" };
                problems.push(if want {
                    format!("shard {pos} is the {which} shard but has no {flag}")
                } else {
                    format!("shard {pos} has {flag}, which only the {which} shard may have")
                });
            }
        }
    }
    r.outcome(
        "shard roles",
        None,
        problems,
        "the first shard has the embedding, the last the final norm and head",
    );
}

/// Resolves every file the manifest names; returns the shard files' resolutions and the
/// tokenizer's (None where the path is unsafe).
pub(super) fn paths(
    m: &Manifest,
    canon_dir: &Path,
    r: &mut VerifyReport,
) -> (Vec<Option<Resolved>>, Option<Resolved>) {
    let mut problems = Vec::new();
    let mut resolve = |what: String, name: &str| match resolve_in_dir(canon_dir, name) {
        Ok(res) => Some(res),
        Err(e) => {
            problems.push(format!("{what}: {e}"));
            None
        }
    };
    let shards: Vec<Option<Resolved>> = m
        .shards
        .iter()
        .enumerate()
        .map(|(pos, s)| resolve(format!("shard {pos}"), &s.file))
        .collect();
    let tokenizer = resolve("tokenizer".to_string(), &m.tokenizer.file);
    r.outcome(
        "file paths",
        None,
        problems,
        format!(
            "{} files, all inside {}",
            m.shards.len() + 1,
            canon_dir.display()
        ),
    );
    (shards, tokenizer)
}

/// The vectors are one per shard, with inputs and output shapes that fit each shard's role
/// and sane tolerances. Returns which shards have a usable vector.
pub(super) fn vectors(m: &Manifest, r: &mut VerifyReport) -> Vec<bool> {
    let v = &m.verification;
    let c = &m.config;
    let mut problems = Vec::new();
    let tol = v.tolerance;
    for (name, x) in [
        ("l2_rel", tol.l2_rel),
        ("sample_rms_fraction", tol.sample_rms_fraction),
    ] {
        if !(0.0..=1.0).contains(&x) {
            problems.push(format!("tolerance {name} = {x} is not within 0..=1"));
        }
    }
    if v.hidden_generator != vectors::HIDDEN_GENERATOR {
        problems.push(format!(
            "hidden-state generator `{}` is unknown (this build has `{}`)",
            v.hidden_generator,
            vectors::HIDDEN_GENERATOR
        ));
    }
    if v.positions == 0 || v.positions > c.context_length.min(MAX_POSITIONS) {
        problems.push(format!(
            "{} positions per vector (1 to {} allowed)",
            v.positions,
            c.context_length.min(MAX_POSITIONS)
        ));
    }
    if v.vectors.len() != m.shards.len() {
        problems.push(format!(
            "{} vectors for {} shards",
            v.vectors.len(),
            m.shards.len()
        ));
    }
    let mut usable = vec![problems.is_empty(); m.shards.len()];
    for (pos, s) in m.shards.iter().enumerate() {
        let Some(vec) = v.vectors.get(pos) else {
            usable[pos] = false;
            continue;
        };
        let mut bad = |p: String| {
            problems.push(format!("shard {pos}: {p}"));
            usable[pos] = false;
        };
        if vec.shard != pos {
            bad(format!("vector {pos} is for shard {}", vec.shard));
        }
        match (&vec.input, s.embedding) {
            (VectorInput::Tokens { token_ids }, true) => {
                if token_ids.len() != v.positions {
                    bad(format!(
                        "{} token ids, expected {}",
                        token_ids.len(),
                        v.positions
                    ));
                }
                if let Some(t) = token_ids.iter().find(|&&t| t as usize >= c.vocab) {
                    bad(format!(
                        "token id {t} is outside the vocabulary of {}",
                        c.vocab
                    ));
                }
            }
            (VectorInput::Hidden { rows, cols, .. }, false) => {
                if (*rows, *cols) != (v.positions, c.hidden) {
                    bad(format!(
                        "hidden input of {rows} x {cols}, expected {} x {}",
                        v.positions, c.hidden
                    ));
                }
            }
            (_, true) => bad("the shard with the embedding needs a token input".into()),
            (_, false) => bad("a shard without the embedding needs a hidden-state input".into()),
        }
        let width = if s.head { c.vocab } else { c.hidden };
        if vec.output_shape != [v.positions, width] {
            bad(format!(
                "output shape {:?}, expected [{}, {width}]",
                vec.output_shape, v.positions
            ));
        }
        if !vec.output_l2.is_finite() || vec.output_l2 <= 0.0 {
            bad(format!(
                "output L2 norm {} is not a positive number",
                vec.output_l2
            ));
        }
    }
    r.outcome(
        "verification vectors",
        None,
        problems,
        format!(
            "{} vectors of {} positions, tolerance l2 {:.0e} / samples {:.0e} of RMS",
            v.vectors.len(),
            v.positions,
            tol.l2_rel,
            tol.sample_rms_fraction
        ),
    );
    usable
}
