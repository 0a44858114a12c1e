//! `verify` passes on a fresh split and catches every kind of damage: changed bytes (naming the
//! chunk), missing files, broken layer coverage, paths leaving the directory, a tampered
//! tokenizer and wrong verification records.

mod common;

use std::path::Path;

use common::*;
use serde_json::json;
use unfed_gguf::GgmlType;
use unfed_model::Arch;
use unfed_model::testing::TinySpec;
use unfed_shard::{CheckStatus, SplitOptions, VerifyReport, split, verify};

/// A fresh 3-shard split of the tiny Llama (layers 0..2, 2..3, 3..4) in a temporary directory.
fn fresh_split() -> (tempfile::TempDir, tempfile::TempDir) {
    let src = tempfile::tempdir().unwrap();
    let model = tiny(src.path(), "llama.gguf", &llama_spec());
    let out = tempfile::tempdir().unwrap();
    split(&model, out.path(), &opts(3)).unwrap();
    (src, out)
}

/// The named check, which must exist.
fn check<'a>(r: &'a VerifyReport, name: &str) -> &'a unfed_shard::Check {
    r.check(name)
        .unwrap_or_else(|| panic!("no check `{name}` in\n{r}"))
}

fn assert_fails(r: &VerifyReport, name: &str, needles: &[&str]) {
    let c = check(r, name);
    assert_eq!(c.status, CheckStatus::Fail, "`{name}` did not fail:\n{r}");
    for n in needles {
        assert!(
            c.detail.contains(n),
            "`{name}` detail lacks {n:?}: {}",
            c.detail
        );
    }
    assert!(!r.is_ok());
}

#[test]
fn fresh_split_verifies_exactly() {
    let (_src, out) = fresh_split();
    let r = verify(out.path()).unwrap();
    assert!(r.is_ok(), "{r}");
    assert!(
        r.checks.iter().all(|c| c.status == CheckStatus::Pass),
        "{r}"
    );
    for i in 0..3 {
        for what in ["file", "gguf", "tensors", "verification vector"] {
            check(&r, &format!("shard {i} {what}"));
        }
        assert!(
            check(&r, &format!("shard {i} verification vector"))
                .detail
                .contains("exact match")
        );
    }
    check(&r, "tokenizer file");
    check(&r, "tokenizer metadata");
    let text = r.to_string();
    assert_eq!(text.lines().count(), r.checks.len());
    assert!(text.lines().all(|l| l.starts_with("PASS ")), "{text}");
    // A split of a safetensors directory verifies too.
    let out2 = tempfile::tempdir().unwrap();
    split(&hf_tiny_llama(), out2.path(), &opts(2)).unwrap();
    let r = verify(out2.path()).unwrap();
    assert!(r.is_ok(), "{r}");
}

#[test]
fn a_flipped_byte_is_found_and_its_chunk_named() {
    // F16 matrices make shards of several 4 MiB chunks.
    let spec = TinySpec {
        arch: Arch::Llama,
        n_layer: 4,
        hidden: 384,
        ffn: 1536,
        n_head: 4,
        n_kv_head: 2,
        weight_type: GgmlType::F16,
        tied: false,
        seed: 5,
    };
    let src = tempfile::tempdir().unwrap();
    let model = tiny(src.path(), "big.gguf", &spec);
    let out = tempfile::tempdir().unwrap();
    let m = split(&model, out.path(), &opts(2)).unwrap();
    assert!(
        m.shards[1].chunk_sha256.len() >= 3,
        "{} chunks",
        m.shards[1].chunk_sha256.len()
    );
    let path = out.path().join("shard-1.gguf");
    let mut bytes = std::fs::read(&path).unwrap();
    let at = (4 << 20) + 12345;
    bytes[at] ^= 0x01;
    std::fs::write(&path, &bytes).unwrap();
    let r = verify(out.path()).unwrap();
    assert_fails(
        &r,
        "shard 1 file",
        &["SHA-256", "chunk 1 (bytes 4194304..8388608)"],
    );
    let detail = &check(&r, "shard 1 file").detail;
    assert!(
        !detail.contains("chunk 0") && !detail.contains("chunk 2"),
        "{detail}"
    );
    assert_eq!(
        check(&r, "shard 1 verification vector").status,
        CheckStatus::Skipped
    );
    assert_eq!(check(&r, "shard 0 file").status, CheckStatus::Pass);
    assert_eq!(
        check(&r, "shard 0 verification vector").status,
        CheckStatus::Pass
    );
    assert_eq!(r.failures().count(), 1, "{r}");
}

#[test]
fn a_missing_shard_file_is_reported() {
    let (_src, out) = fresh_split();
    std::fs::remove_file(out.path().join("shard-1.gguf")).unwrap();
    let r = verify(out.path()).unwrap();
    assert_fails(&r, "shard 1 file", &["shard-1.gguf", "missing"]);
    assert_eq!(check(&r, "shard 1 gguf").status, CheckStatus::Skipped);
    assert_eq!(
        check(&r, "shard 1 verification vector").status,
        CheckStatus::Skipped
    );
    assert_eq!(
        check(&r, "shard 2 verification vector").status,
        CheckStatus::Pass
    );
}

#[test]
fn an_overlapping_layer_range_is_reported() {
    let (_src, out) = fresh_split();
    edit_manifest(out.path(), |m| m["shards"][1]["layer_start"] = json!(1));
    let r = verify(out.path()).unwrap();
    assert_fails(
        &r,
        "layer ranges",
        &["shards 0 (layers 0..2) and 1 (layers 1..3) overlap on layers 1..2"],
    );
    // The file's own metadata disagrees with the edited manifest, too.
    assert_fails(
        &r,
        "shard 1 gguf",
        &["unfed.shard.layer_start is 2, manifest says 1"],
    );
}

#[test]
fn a_missing_layer_range_is_reported() {
    let (_src, out) = fresh_split();
    edit_manifest(out.path(), |m| m["shards"][0]["layer_end"] = json!(1));
    let r = verify(out.path()).unwrap();
    assert_fails(&r, "layer ranges", &["layers 1..2 are in no shard"]);

    // A shard dropped from the manifest altogether leaves a gap as well.
    let (_src, out) = fresh_split();
    edit_manifest(out.path(), |m| {
        m["shards"].as_array_mut().unwrap().remove(1);
        m["verification"]["vectors"]
            .as_array_mut()
            .unwrap()
            .remove(1);
    });
    let r = verify(out.path()).unwrap();
    assert_fails(&r, "layer ranges", &["layers 2..3 are in no shard"]);
    assert_fails(&r, "shard indexes", &["entry 1 has index 2"]);

    // Coverage must end at the last layer.
    let (_src, out) = fresh_split();
    edit_manifest(out.path(), |m| m["config"]["n_layer"] = json!(5));
    let r = verify(out.path()).unwrap();
    assert_fails(&r, "layer ranges", &["layers 4..5 are in no shard"]);
}

#[test]
fn paths_outside_the_directory_are_refused() {
    let (_src, out) = fresh_split();
    edit_manifest(out.path(), |m| m["shards"][0]["file"] = json!("../x.gguf"));
    let r = verify(out.path()).unwrap();
    assert_fails(&r, "file paths", &["`../x.gguf` uses `..`"]);
    assert_eq!(check(&r, "shard 0 file").status, CheckStatus::Skipped);

    let (_src, out) = fresh_split();
    let absolute = out.path().join("shard-1.gguf");
    let absolute = absolute.to_str().unwrap().to_string();
    edit_manifest(out.path(), |m| m["shards"][1]["file"] = json!(absolute));
    let r = verify(out.path()).unwrap();
    assert_fails(&r, "file paths", &["is an absolute path"]);

    let (_src, out) = fresh_split();
    edit_manifest(out.path(), |m| {
        m["tokenizer"]["file"] = json!("/etc/passwd")
    });
    let r = verify(out.path()).unwrap();
    assert_fails(
        &r,
        "file paths",
        &["tokenizer: `/etc/passwd` is an absolute path"],
    );
}

#[cfg(unix)]
#[test]
fn a_symlink_leaving_the_directory_is_refused() {
    let (_src, out) = fresh_split();
    let elsewhere = tempfile::tempdir().unwrap();
    let shard = out.path().join("shard-2.gguf");
    std::fs::rename(&shard, elsewhere.path().join("shard-2.gguf")).unwrap();
    std::os::unix::fs::symlink(elsewhere.path().join("shard-2.gguf"), &shard).unwrap();
    let r = verify(out.path()).unwrap();
    assert_fails(
        &r,
        "file paths",
        &["`shard-2.gguf` resolves to", "outside the directory"],
    );
}

#[test]
fn a_tampered_tokenizer_is_reported() {
    let (_src, out) = fresh_split();
    let path = out.path().join("tokenizer.json");
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, text.replacen("<|im_end|>", "<|im_END|>", 1)).unwrap();
    let r = verify(out.path()).unwrap();
    assert_fails(&r, "tokenizer file", &["SHA-256 is", "recorded"]);
}

#[test]
fn a_changed_verification_hash_is_reported() {
    let (_src, out) = fresh_split();
    edit_manifest(out.path(), |m| {
        m["verification"]["vectors"][1]["output_sha256"] = json!("0".repeat(64));
    });
    let r = verify(out.path()).unwrap();
    assert_fails(
        &r,
        "shard 1 verification vector",
        &["mismatch", "recorded hash"],
    );
    assert_eq!(r.failures().count(), 1, "{r}");
}

#[test]
fn wrong_recorded_outputs_are_mismatches() {
    let (_src, out) = fresh_split();
    edit_manifest(out.path(), |m| {
        let v = &mut m["verification"]["vectors"][2];
        v["output_sha256"] = json!("1".repeat(64));
        let l2 = v["output_l2"].as_f64().unwrap();
        v["output_l2"] = json!(l2 * 1.1);
    });
    let r = verify(out.path()).unwrap();
    assert_fails(&r, "shard 2 verification vector", &["mismatch", "L2 norm"]);

    let (_src, out) = fresh_split();
    edit_manifest(out.path(), |m| {
        m["verification"]["vectors"][1]["input"]["seed"] = json!(7);
    });
    let r = verify(out.path()).unwrap();
    assert_fails(
        &r,
        "shard 1 verification vector",
        &["hidden input (seed 7)"],
    );
}

#[test]
fn a_small_numeric_difference_is_reported_as_within_tolerance() {
    // What another machine's kernels look like: a different hash, values a hair apart.
    let (_src, out) = fresh_split();
    edit_manifest(out.path(), |m| {
        let v = &mut m["verification"]["vectors"][0];
        v["output_sha256"] = json!("2".repeat(64));
        let x = v["output_samples"][3]["value"].as_f64().unwrap() as f32;
        v["output_samples"][3]["value"] = json!(x + x.abs().max(1e-3) * 1e-4);
    });
    let r = verify(out.path()).unwrap();
    let c = check(&r, "shard 0 verification vector");
    assert_eq!(c.status, CheckStatus::WithinTolerance, "{r}");
    assert!(c.detail.contains("within tolerance"), "{}", c.detail);
    assert!(r.is_ok(), "{r}");
    assert!(
        r.to_string()
            .lines()
            .any(|l| l.starts_with("TOL  shard 0 verification vector"))
    );
}

#[test]
fn unreadable_manifests_are_errors() {
    let (_src, out) = fresh_split();
    edit_manifest(out.path(), |m| m["surprise"] = json!(1));
    let e = verify(out.path()).unwrap_err().to_string();
    assert!(e.contains("unknown field `surprise`"), "{e}");

    edit_manifest(out.path(), |m| {
        m.as_object_mut().unwrap().remove("surprise");
        m["version"] = json!(99);
    });
    let e = verify(out.path()).unwrap_err().to_string();
    assert!(e.contains("version 99 is not supported"), "{e}");

    std::fs::write(
        out.path().join("manifest.json"),
        "{\"format\": \"something-else\"}",
    )
    .unwrap();
    let e = verify(out.path()).unwrap_err().to_string();
    assert!(e.contains("format is `something-else`"), "{e}");

    std::fs::write(out.path().join("manifest.json"), vec![b' '; 17 << 20]).unwrap();
    let e = verify(out.path()).unwrap_err().to_string();
    assert!(e.contains("larger than"), "{e}");

    std::fs::remove_file(out.path().join("manifest.json")).unwrap();
    let e = verify(out.path()).unwrap_err().to_string();
    assert!(e.contains("missing"), "{e}");
    assert!(verify(Path::new("/nonexistent/split")).is_err());
}

#[test]
fn wrong_roles_and_tensor_lists_are_reported() {
    let (_src, out) = fresh_split();
    edit_manifest(out.path(), |m| {
        m["shards"][2]["head"] = json!(false);
        let t = m["shards"][1]["tensors"].as_array_mut().unwrap();
        t.retain(|n| n != "blk.2.ffn_down.weight");
        t.push(json!("blk.0.ffn_up.weight"));
    });
    let r = verify(out.path()).unwrap();
    assert_fails(
        &r,
        "shard roles",
        &["shard 2 is the last shard but has no head"],
    );
    assert_fails(
        &r,
        "shard 1 tensors",
        &[
            "listed but not in the file: blk.0.ffn_up.weight",
            "in the file but not listed: blk.2.ffn_down.weight",
            "required tensors missing: blk.2.ffn_down.weight",
            "outside this shard's part: blk.0.ffn_up.weight",
        ],
    );
    assert_eq!(
        check(&r, "shard 1 verification vector").status,
        CheckStatus::Skipped
    );
}

#[test]
fn an_mpc_plan_records_the_gate_bound_its_weights_give() {
    let src = tempfile::tempdir().unwrap();
    let model = tiny(src.path(), "llama.gguf", &llama_spec());
    let out = tempfile::tempdir().unwrap();
    let m = split(
        &model,
        out.path(),
        &SplitOptions {
            mpc_layers: Some(2),
            ..opts(3)
        },
    )
    .unwrap();
    let plan = m.mpc.unwrap();
    let ck = unfed_model::Checkpoint::open(&model).unwrap();
    let cfg = ck.config().unwrap();
    let widest = (0..2)
        .map(|i| {
            let w = |n: &str| ck.dequantized(&format!("blk.{i}.{n}.weight")).unwrap().1;
            unfed_mpc::layer::gate_log2(cfg.hidden, &w("ffn_norm"), &w("ffn_gate"))
        })
        .max()
        .unwrap();
    assert_eq!((plan.layers, plan.gate_log2), (2, widest));
    assert_eq!(m.mpc_spec().unwrap().layer.gate_log2, widest);

    // Written out and read back; without the field (a manifest from before it) the widest.
    let text = m.to_json();
    assert_eq!(unfed_shard::Manifest::from_json(&text).unwrap().mpc, m.mpc);
    let mut raw: serde_json::Value = serde_json::from_str(&text).unwrap();
    raw["mpc"].as_object_mut().unwrap().remove("gate_log2");
    let old = unfed_shard::Manifest::from_json(&raw.to_string()).unwrap();
    assert_eq!(old.mpc.unwrap().gate_log2, unfed_mpc::layer::GATE_LOG2_MAX);
    // A bound SiLU cannot work with is refused when the manifest is read.
    for bad in [0, 4, 13, 200] {
        raw["mpc"]["gate_log2"] = json!(bad);
        let e = unfed_shard::Manifest::from_json(&raw.to_string()).unwrap_err();
        assert!(e.contains("mpc.gate_log2"), "{e}");
    }
}
