//! The runtime on tiny generated GGUF models: layer ranges compose exactly, bad inputs and bad
//! files are errors with clear messages, never panics.

use unfed_gguf::GgmlType;
use unfed_model::config::Arch;
use unfed_model::testing::{TinySpec, write_tiny_gguf};
use unfed_model::{Checkpoint, Compute, Input, KvCache, LogitsMode, ShardModel, ShardRole};

fn tiny(spec: &TinySpec) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tiny.gguf");
    write_tiny_gguf(&path, spec).unwrap();
    (dir, path)
}

fn bits(t: &candle_core::Tensor) -> Vec<u32> {
    t.flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
        .iter()
        .map(|x| x.to_bits())
        .collect()
}

#[test]
fn layer_ranges_compose_to_the_whole_model_bit_for_bit() {
    compose_bit_for_bit(Compute::from_env());
}

/// Shards of a model, run one after the other, give the whole model's logits to the bit.
fn compose_bit_for_bit(compute: Compute) {
    for spec in [
        TinySpec::default(),
        TinySpec {
            arch: Arch::Qwen2,
            tied: true,
            weight_type: GgmlType::Q4_1,
            n_layer: 5,
            ..TinySpec::default()
        },
    ] {
        let (_d, path) = tiny(&spec);
        let ck = Checkpoint::open(&path).unwrap();
        let n = spec.n_layer;
        let load = |role| ShardModel::load_role_with(&ck, role, compute).unwrap();
        let whole = load(ShardRole::whole(&ck.config().unwrap()));
        assert_eq!(whole.compute(), compute);
        let parts: Vec<ShardModel> = [0..2, 2..3, 3..n]
            .into_iter()
            .map(|layers| {
                let role = ShardRole {
                    embedding: layers.start == 0,
                    head: layers.end == n,
                    layers,
                };
                load(role)
            })
            .collect();
        let mut whole_cache = whole.new_cache();
        let mut caches: Vec<_> = parts.iter().map(ShardModel::new_cache).collect();
        let steps: [&[u32]; 4] = [&[5, 17, 200, 3, 99], &[42], &[7], &[258]];
        for (i, ids) in steps.iter().enumerate() {
            let mode = if i == 0 {
                LogitsMode::All
            } else {
                LogitsMode::Last
            };
            let expected = whole
                .forward(Input::Tokens(ids), &mut whole_cache, mode)
                .unwrap();
            let mut h = parts[0]
                .forward(Input::Tokens(ids), &mut caches[0], mode)
                .unwrap();
            for (p, c) in parts[1..].iter().zip(&mut caches[1..]) {
                h = p.forward(Input::Hidden(&h), c, mode).unwrap();
            }
            assert_eq!(bits(&h), bits(&expected), "{:?} step {i}", spec.arch);
        }
    }
}

#[test]
fn bad_inputs_are_errors() {
    let (_d, path) = tiny(&TinySpec::default());
    let ck = Checkpoint::open(&path).unwrap();
    let first = ShardModel::load_role(
        &ck,
        ShardRole {
            layers: 0..2,
            embedding: true,
            head: false,
        },
    )
    .unwrap();
    let second = ShardModel::load_role(
        &ck,
        ShardRole {
            layers: 2..4,
            embedding: false,
            head: true,
        },
    )
    .unwrap();
    let mut c1 = first.new_cache();
    let mut c2 = second.new_cache();
    let err = |r: unfed_model::Result<candle_core::Tensor>| r.expect_err("an error").to_string();
    assert!(
        err(first.forward(Input::Tokens(&[]), &mut c1, LogitsMode::Last)).contains("no tokens")
    );
    assert!(
        err(first.forward(Input::Tokens(&[99999]), &mut c1, LogitsMode::Last))
            .contains("outside the vocabulary")
    );
    let wrong =
        candle_core::Tensor::zeros((3, 7), candle_core::DType::F32, &candle_core::Device::Cpu)
            .unwrap();
    assert!(
        err(second.forward(Input::Hidden(&wrong), &mut c2, LogitsMode::Last))
            .contains("expected [n > 0, 64]")
    );
    assert!(
        err(second.forward(Input::Tokens(&[1]), &mut c2, LogitsMode::Last))
            .contains("takes hidden states")
    );
    assert!(
        err(second.forward(Input::Tokens(&[1]), &mut c1, LogitsMode::Last))
            .contains("different shard")
    );
    // Context overflow.
    let long: Vec<u32> = (0..300).map(|i| i % 250).collect();
    assert!(
        err(first.forward(Input::Tokens(&long), &mut c1, LogitsMode::Last))
            .contains("context length")
    );
    // Still usable after the errors.
    assert!(
        first
            .forward(Input::Tokens(&[1, 2]), &mut c1, LogitsMode::Last)
            .is_ok()
    );
    assert_eq!(c1.positions(), 2);
}

#[test]
fn bad_files_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let text = dir.path().join("notes.txt");
    std::fs::write(&text, "this is not a model").unwrap();
    let msg = Checkpoint::open(&text).err().unwrap().to_string();
    assert!(msg.contains("not a GGUF file"), "{msg}");

    let empty = dir.path().join("empty.gguf");
    std::fs::write(&empty, "").unwrap();
    assert!(Checkpoint::open(&empty).is_err());

    let (_d, path) = tiny(&TinySpec::default());
    let bytes = std::fs::read(&path).unwrap();
    for cut in [10, 100, 5000, bytes.len() / 2, bytes.len() - 40] {
        let truncated = dir.path().join("truncated.gguf");
        std::fs::write(&truncated, &bytes[..cut]).unwrap();
        let msg = Checkpoint::open(&truncated)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            msg.contains("truncated or corrupt"),
            "cut at {cut}: {msg:?}"
        );
    }

    let not_hf = dir.path().join("somedir");
    std::fs::create_dir(&not_hf).unwrap();
    let msg = Checkpoint::open(&not_hf).err().unwrap().to_string();
    assert!(msg.contains("no config.json"), "{msg}");

    let missing = dir.path().join("nope.gguf");
    assert!(
        Checkpoint::open(&missing)
            .err()
            .unwrap()
            .to_string()
            .contains("No such file")
    );
}

#[test]
fn safetensors_and_gguf_loaders_agree_on_names() {
    let dir =
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hf-tiny-qwen2");
    let ck = Checkpoint::open(&dir).unwrap();
    let cfg = ck.config().unwrap();
    assert_eq!(
        (cfg.arch, cfg.n_layer, cfg.hidden, cfg.n_kv_head),
        (Arch::Qwen2, 3, 64, 2)
    );
    assert!(ck.tensor_info("blk.2.attn_q.bias").is_some());
    assert!(ck.tensor_info("output.weight").is_none(), "tied");
    assert_eq!(
        ck.tensor_info("token_embd.weight").unwrap().1,
        vec![64, 272]
    );
}

/// The CPU kernels compute the same layers as candle: measured against the exact products
/// (candle on weights dequantized to f32), over a prefill and decode steps, the kernels' logits
/// are no further off than candle's own quantized path — both quantize activations to 8 bits,
/// so neither is exact, and on random tiny models the error is several percent of the logit
/// scale. A mistake between the products (rope, attention, the cache, norms) would be far off.
#[test]
fn cpu_path_is_as_close_to_exact_as_candle() {
    as_close_to_exact_as_candle(Compute::Kernels);
}

/// `ours` is within 1.5× candle's CPU path's distance from the exact path (plus 1% of the
/// logits' scale) on tiny models of each weight type.
fn as_close_to_exact_as_candle(ours: Compute) {
    let cases = [
        (Arch::Llama, GgmlType::Q8_0, 64, false),
        (Arch::Llama, GgmlType::Q4_1, 64, true),
        (Arch::Qwen2, GgmlType::Q5_0, 64, true),
        (Arch::Qwen2, GgmlType::Q4_0, 64, false),
        (Arch::Llama, GgmlType::Q4K, 256, false),
        (Arch::Qwen2, GgmlType::Q6K, 256, true),
    ];
    for (arch, weight_type, hidden, tied) in cases {
        let spec = TinySpec {
            arch,
            weight_type,
            hidden,
            ffn: 256,
            tied,
            ..TinySpec::default()
        };
        let (_d, path) = tiny(&spec);
        let ck = Checkpoint::open(&path).unwrap();
        let load = |c| ShardModel::load_role_with(&ck, ShardRole::whole(&ck.config().unwrap()), c);
        let models = [ours, Compute::Candle, Compute::Reference].map(|c| {
            let m = load(c).unwrap();
            assert_eq!(m.compute(), c, "{weight_type:?}");
            m
        });
        let mut caches: Vec<KvCache> = models.iter().map(ShardModel::new_cache).collect();
        let prompt: Vec<u32> = b"the tiny model".iter().map(|&b| b as u32).collect();
        let steps: [&[u32]; 4] = [&prompt, &[104], &[105], &[33]];
        // Summed over the steps: single steps of a random model are noisy either way.
        let (mut ours_off, mut candle, mut scale) = (0f32, 0f32, 0f32);
        for ids in steps {
            let logits: Vec<Vec<f32>> = models
                .iter()
                .zip(caches.iter_mut())
                .map(|(m, c)| {
                    let l = m.forward(Input::Tokens(ids), c, LogitsMode::All).unwrap();
                    l.flatten_all().unwrap().to_vec1::<f32>().unwrap()
                })
                .collect();
            let off = |a: &[f32]| {
                a.iter()
                    .zip(&logits[2])
                    .fold(0f32, |m, (x, y)| m.max((x - y).abs()))
            };
            ours_off += off(&logits[0]);
            candle += off(&logits[1]);
            scale += logits[2].iter().fold(0f32, |m, v| m.max(v.abs()));
        }
        assert!(
            ours_off <= 1.5 * candle + 0.01 * scale,
            "{arch:?} {weight_type:?}: {:?} {ours_off} from exact, candle {candle} (scale {scale})",
            models[0].compute()
        );
    }
}

/// The GPU path (a build with `--features cuda`, on a machine with an NVIDIA GPU): as close to
/// exact as candle on the CPU, and its shards compose to the bit.
#[cfg(feature = "cuda")]
#[test]
fn cuda_path_is_close_to_exact_and_composes_bit_for_bit() {
    as_close_to_exact_as_candle(Compute::Cuda);
    compose_bit_for_bit(Compute::Cuda);
}

#[cfg(not(feature = "cuda"))]
#[test]
fn cuda_without_the_feature_is_a_clear_error() {
    let (_d, path) = tiny(&TinySpec::default());
    let ck = Checkpoint::open(&path).unwrap();
    let role = ShardRole::whole(&ck.config().unwrap());
    let err = ShardModel::load_role_with(&ck, role, Compute::Cuda)
        .err()
        .expect("no CUDA in this build")
        .to_string();
    assert!(err.contains("--features cuda"), "{err}");
}
