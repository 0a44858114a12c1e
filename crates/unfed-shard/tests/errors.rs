//! Bad sources and bad options end in clear errors, never a panic, and never leave a
//! `manifest.json` behind.

mod common;

use std::path::Path;

use common::*;
use unfed_shard::{ShardError, SplitOptions, split, verify};

/// Splits `source` expecting an error; checks that nothing looks like a finished split.
fn split_err(source: &Path, n: usize) -> String {
    let out = tempfile::tempdir().unwrap();
    let target = out.path().join("split");
    let err = split(source, &target, &opts(n)).unwrap_err();
    assert!(
        !target.join("manifest.json").exists(),
        "a manifest was left behind"
    );
    if let Ok(entries) = std::fs::read_dir(&target) {
        for e in entries {
            let name = e.unwrap().file_name();
            assert!(
                !name.to_string_lossy().ends_with(".partial"),
                "{name:?} left behind"
            );
        }
    }
    err.to_string()
}

#[test]
fn random_bytes_are_not_a_model() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("noise.gguf");
    let noise: Vec<u8> = (0..10_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(&path, noise).unwrap();
    let e = split_err(&path, 2);
    assert!(e.contains("cannot read the source model"), "{e}");
    assert!(e.contains("not a GGUF file"), "{e}");
    assert!(e.contains("noise.gguf"), "{e}");
}

#[test]
fn a_text_file_is_not_a_model() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notes.txt");
    std::fs::write(&path, "These are my notes, not a model.\n").unwrap();
    let e = split_err(&path, 1);
    assert!(e.contains("not a GGUF file"), "{e}");
    let empty = dir.path().join("empty.gguf");
    std::fs::write(&empty, b"").unwrap();
    let e = split_err(&empty, 1);
    assert!(e.contains("not a GGUF file"), "{e}");
}

#[test]
fn a_truncated_gguf_is_reported_as_truncated() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny(dir.path(), "llama.gguf", &llama_spec());
    let bytes = std::fs::read(&model).unwrap();
    for keep in [bytes.len() / 2, bytes.len() - 1000, 100, 30] {
        let cut = dir.path().join("cut.gguf");
        std::fs::write(&cut, &bytes[..keep]).unwrap();
        let e = split_err(&cut, 2);
        assert!(e.contains("truncated or corrupt"), "cut at {keep}: {e}");
    }
}

#[test]
fn a_directory_that_is_not_a_model() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("readme.md"), "hello").unwrap();
    let e = split_err(dir.path(), 1);
    assert!(e.contains("no config.json"), "{e}");
    assert!(
        split_err(Path::new("/nonexistent/model.gguf"), 1).contains("cannot read the source model")
    );
}

#[test]
fn shard_counts_must_fit_the_layers() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny(dir.path(), "llama.gguf", &llama_spec());
    let e = split_err(&model, 5);
    assert_eq!(
        e,
        "cannot split a model of 4 layers into 5 shards: the shard count must be between 1 and 4"
    );
    assert!(split_err(&model, 0).contains("into 0 shards"));
    let out = tempfile::tempdir().unwrap();
    assert_eq!(split(&model, out.path(), &opts(4)).unwrap().shards.len(), 4);
}

#[test]
fn a_finished_split_is_kept_unless_forced() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny(dir.path(), "llama.gguf", &llama_spec());
    let out = tempfile::tempdir().unwrap();
    split(&model, out.path(), &opts(2)).unwrap();
    let before = std::fs::read(out.path().join("manifest.json")).unwrap();
    let err = split(&model, out.path(), &opts(3)).unwrap_err();
    assert!(matches!(err, ShardError::AlreadySplit { .. }), "{err}");
    assert!(err.to_string().contains("already holds a split"), "{err}");
    assert_eq!(
        std::fs::read(out.path().join("manifest.json")).unwrap(),
        before
    );
    let forced = SplitOptions {
        num_shards: 1,
        model_id: None,
        force: true,
        mpc_layers: None,
    };
    split(&model, out.path(), &forced).unwrap();
    // The earlier split's second shard is gone with it.
    assert!(!out.path().join("shard-1.gguf").exists());
    let forced = SplitOptions {
        num_shards: 3,
        model_id: Some("tiny-llama".into()),
        force: true,
        mpc_layers: None,
    };
    let m = split(&model, out.path(), &forced).unwrap();
    assert_eq!((m.shards.len(), m.model_id.as_str()), (3, "tiny-llama"));
    assert!(verify(out.path()).unwrap().is_ok());
}

#[test]
fn a_shard_is_not_split_again() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny(dir.path(), "llama.gguf", &llama_spec());
    let out = tempfile::tempdir().unwrap();
    split(&model, out.path(), &opts(2)).unwrap();
    let e = split_err(&out.path().join("shard-0.gguf"), 1);
    assert!(e.contains("is already a shard of a split"), "{e}");
}

#[test]
fn model_ids_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny(dir.path(), "llama.gguf", &llama_spec());
    for bad in ["", "has space", "new\nline", &"x".repeat(129)] {
        let out = tempfile::tempdir().unwrap();
        let o = SplitOptions {
            num_shards: 1,
            model_id: Some(bad.to_string()),
            force: false,
            mpc_layers: None,
        };
        let e = split(&model, out.path(), &o).unwrap_err().to_string();
        assert!(e.starts_with("invalid split options: model id"), "{e}");
    }
}

#[test]
fn a_truncated_safetensors_directory_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    for f in ["config.json", "tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(hf_tiny_llama().join(f), dir.path().join(f)).unwrap();
    }
    let bytes = std::fs::read(hf_tiny_llama().join("model.safetensors")).unwrap();
    std::fs::write(
        dir.path().join("model.safetensors"),
        &bytes[..bytes.len() / 2],
    )
    .unwrap();
    let e = split_err(dir.path(), 1);
    assert!(e.contains("cannot read the source model"), "{e}");
    assert!(e.contains("model.safetensors"), "{e}");
}
