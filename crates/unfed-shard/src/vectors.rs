//! Verification vectors: the fixed inputs each shard is run on, the fingerprint of its output
//! (SHA-256 of the f32 bytes, L2 norm, a few sampled values) and the comparison that tells an
//! exact match from a match within tolerance (other floating-point kernels) from a mismatch.

use candle_core::{Device, Tensor};
use unfed_model::{Input, LogitsMode, ModelError, ShardModel};

use crate::hash::sha256_f32_le;
use crate::manifest::{Sample, Tolerance, VectorInput, VerificationVector};

/// Positions in every verification input.
pub const POSITIONS: usize = 8;
/// Name of the hidden-state input generator recorded in manifests.
pub const HIDDEN_GENERATOR: &str = "splitmix64-f32-uniform-pm1";
/// Seed of shard `i`'s hidden-state input is `SEED_BASE + i`.
pub const SEED_BASE: u64 = 0x5EED_0000;
/// Output values recorded per vector.
pub const SAMPLES: usize = 8;
/// Tolerances written into new manifests.
pub const DEFAULT_TOLERANCE: Tolerance = Tolerance {
    l2_rel: 1e-3,
    sample_rms_fraction: 1e-2,
};

/// The token ids fed to the shard with the embedding: `(2k + 1) * vocab / (2 * POSITIONS)`
/// for `k` in `0..POSITIONS`, evenly spread over the vocabulary.
pub fn token_ids(vocab: usize) -> Vec<u32> {
    (0..POSITIONS)
        .map(|k| ((2 * k as u64 + 1) * vocab as u64 / (2 * POSITIONS as u64)) as u32)
        .collect()
}

/// `n` values uniform in `[-1, 1)`, each exactly representable in f32: SplitMix64 from `seed`,
/// the top 24 bits of each output `z` give `(z >> 40) / 2^23 - 1`.
pub fn hidden_values(seed: u64, n: usize) -> Vec<f32> {
    let mut state = seed;
    (0..n)
        .map(|_| {
            state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            (z >> 40) as f32 / (1u32 << 23) as f32 - 1.0
        })
        .collect()
}

/// The input for a shard: token ids if it has the embedding, else generated hidden states.
pub(crate) fn input_for(shard: usize, embedding: bool, vocab: usize, hidden: usize) -> VectorInput {
    if embedding {
        VectorInput::Tokens {
            token_ids: token_ids(vocab),
        }
    } else {
        let seed = SEED_BASE + shard as u64;
        VectorInput::Hidden {
            seed,
            rows: POSITIONS,
            cols: hidden,
            sha256: sha256_f32_le(&hidden_values(seed, POSITIONS * hidden)),
        }
    }
}

/// An output in flat row-major order.
pub(crate) struct Output {
    pub shape: Vec<usize>,
    pub values: Vec<f32>,
}

/// Runs a freshly loaded shard on a vector's input (logits of every position for the head).
pub(crate) fn run(model: &ShardModel, input: &VectorInput) -> Result<Output, ModelError> {
    let mut cache = model.new_cache();
    let out = match input {
        VectorInput::Tokens { token_ids } => {
            model.forward(Input::Tokens(token_ids), &mut cache, LogitsMode::All)?
        }
        VectorInput::Hidden {
            seed, rows, cols, ..
        } => {
            let n = rows
                .checked_mul(*cols)
                .filter(|&n| n <= 1 << 26)
                .ok_or_else(|| {
                    ModelError::Input(format!("hidden input of {rows} x {cols} is too large"))
                })?;
            let h = Tensor::from_vec(hidden_values(*seed, n), (*rows, *cols), &Device::Cpu)?;
            model.forward(Input::Hidden(&h), &mut cache, LogitsMode::All)?
        }
    };
    let shape = out.dims().to_vec();
    let values = out
        .to_dtype(candle_core::DType::F32)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    Ok(Output { shape, values })
}

/// Euclidean norm accumulated in f64, in order.
pub(crate) fn l2(values: &[f32]) -> f64 {
    values
        .iter()
        .map(|&v| f64::from(v) * f64::from(v))
        .sum::<f64>()
        .sqrt()
}

/// Flat indices of the recorded samples: `k * (n - 1) / (SAMPLES - 1)`, first and last included.
pub(crate) fn sample_indices(n: usize) -> Vec<usize> {
    if n == 0 {
        return Vec::new();
    }
    let mut idx: Vec<usize> = (0..SAMPLES).map(|k| k * (n - 1) / (SAMPLES - 1)).collect();
    idx.dedup();
    idx
}

/// The vector recording `output` for `input`.
pub(crate) fn record(shard: usize, input: VectorInput, output: &Output) -> VerificationVector {
    VerificationVector {
        shard,
        input,
        output_shape: output.shape.clone(),
        output_sha256: sha256_f32_le(&output.values),
        output_l2: l2(&output.values),
        output_samples: sample_indices(output.values.len())
            .into_iter()
            .map(|index| Sample {
                index,
                value: output.values[index],
            })
            .collect(),
    }
}

/// How a recomputed output compares with the recorded one.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Comparison {
    /// Same SHA-256: bit-identical.
    Exact,
    /// Different bytes, but the norm and every sample lie within tolerance.
    WithinTolerance {
        l2_rel_dev: f64,
        max_sample_dev: f64,
    },
    /// Shape, norm or samples differ beyond tolerance, or the record contradicts itself.
    Mismatch(String),
}

/// Compares a recomputed output with a recorded vector.
pub(crate) fn compare(expected: &VerificationVector, got: &Output, tol: &Tolerance) -> Comparison {
    if got.shape != expected.output_shape {
        return Comparison::Mismatch(format!(
            "output shape {:?}, expected {:?}",
            got.shape, expected.output_shape
        ));
    }
    let sha = sha256_f32_le(&got.values);
    if sha == expected.output_sha256 {
        return Comparison::Exact;
    }
    let n = got.values.len().max(1) as f64;
    let got_l2 = l2(&got.values);
    let l2_rel_dev =
        (got_l2 - expected.output_l2).abs() / expected.output_l2.abs().max(f64::MIN_POSITIVE);
    let rms = expected.output_l2 / n.sqrt();
    let mut max_sample_dev = 0f64;
    let mut all_samples_identical = true;
    for s in &expected.output_samples {
        let Some(&v) = got.values.get(s.index) else {
            return Comparison::Mismatch(format!("sample index {} is outside the output", s.index));
        };
        all_samples_identical &= v.to_bits() == s.value.to_bits();
        let dev = (f64::from(v) - f64::from(s.value)).abs();
        max_sample_dev = max_sample_dev.max(if dev.is_nan() { f64::INFINITY } else { dev });
    }
    if all_samples_identical && got_l2.to_bits() == expected.output_l2.to_bits() {
        // Any real difference in the output would show in the f64 norm; identical statistics
        // with a different hash mean the recorded hash itself is wrong.
        return Comparison::Mismatch(format!(
            "output SHA-256 is {sha}, recorded {}, yet the norm and every sample are \
             bit-identical: the recorded hash does not belong to this output",
            expected.output_sha256
        ));
    }
    // Written so that a NaN deviation counts as outside the tolerance.
    let within = l2_rel_dev <= tol.l2_rel && max_sample_dev <= tol.sample_rms_fraction * rms;
    if !within {
        return Comparison::Mismatch(format!(
            "L2 norm {got_l2:.6e} vs recorded {:.6e} (relative deviation {l2_rel_dev:.2e}, \
             tolerance {:.1e}); largest sample deviation {max_sample_dev:.3e} (tolerance {:.3e})",
            expected.output_l2,
            tol.l2_rel,
            tol.sample_rms_fraction * rms
        ));
    }
    Comparison::WithinTolerance {
        l2_rel_dev,
        max_sample_dev,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generators_are_fixed() {
        assert_eq!(token_ids(16), vec![1, 3, 5, 7, 9, 11, 13, 15]);
        assert_eq!(
            token_ids(49152),
            vec![3072, 9216, 15360, 21504, 27648, 33792, 39936, 46080]
        );
        let v = hidden_values(SEED_BASE, 1000);
        assert!(v.iter().all(|x| (-1.0..1.0).contains(x)));
        assert_eq!(v, hidden_values(SEED_BASE, 1000));
        assert_ne!(v, hidden_values(SEED_BASE + 1, 1000));
        // Known answers (also produced by an independent Python implementation), so that
        // other implementations can check themselves against this one.
        let bits: Vec<u32> = v[..4].iter().map(|x| x.to_bits()).collect();
        assert_eq!(bits, [3209067868, 3142138368, 1059099078, 3182805664]);
        assert_eq!(
            sha256_f32_le(&hidden_values(SEED_BASE, 64)),
            "6f851df79f912b76fd1fb4903918614e9dcc21aed1a2b7bdecfc79f205b9bfc7"
        );
        assert_eq!(sample_indices(100), vec![0, 14, 28, 42, 56, 70, 84, 99]);
        assert_eq!(sample_indices(3), vec![0, 1, 2]);
    }

    fn out(values: Vec<f32>) -> Output {
        Output {
            shape: vec![1, values.len()],
            values,
        }
    }

    #[test]
    fn comparison_outcomes() {
        let base: Vec<f32> = (0..64).map(|i| (i as f32 * 0.37).sin()).collect();
        let rec = record(
            0,
            VectorInput::Tokens { token_ids: vec![1] },
            &out(base.clone()),
        );
        let tol = DEFAULT_TOLERANCE;
        assert_eq!(compare(&rec, &out(base.clone()), &tol), Comparison::Exact);
        let mut tiny = base.clone();
        for v in &mut tiny {
            *v *= 1.0 + 1e-6;
        }
        assert!(matches!(
            compare(&rec, &out(tiny), &tol),
            Comparison::WithinTolerance { .. }
        ));
        let mut big = base.clone();
        big[0] += 1.0;
        assert!(matches!(
            compare(&rec, &out(big), &tol),
            Comparison::Mismatch(_)
        ));
        let mut wrong_hash = rec.clone();
        wrong_hash.output_sha256 = "00".repeat(32);
        let Comparison::Mismatch(m) = compare(&wrong_hash, &out(base.clone()), &tol) else {
            panic!("a wrong hash passed");
        };
        assert!(m.contains("recorded hash"), "{m}");
        let mut nan = base;
        nan[63] = f32::NAN;
        assert!(matches!(
            compare(&rec, &out(nan), &tol),
            Comparison::Mismatch(_)
        ));
    }
}
