//! The kernels against their references: the dequantization against candle's independent
//! implementation of the GGUF formats, and every product, on every instruction set this CPU
//! has, against the f32 product of the dequantized weights, within the bound that 8-bit
//! activation rounding allows.

use candle_core::Device;
use candle_core::quantized::{GgmlDType, ggml_file::qtensor_from_ggml};
use proptest::prelude::*;
use rand::{Rng, SeedableRng, rngs::StdRng};
use unfed_kernels::pool::Pool;
use unfed_kernels::testing::random_weights;
use unfed_kernels::{
    ActBlock, Bytes, Isa, QMatrix, QuantType, dequantize_row, matmul_many, unpack32,
};

fn random_rows(ty: QuantType, rows: usize, cols: usize, rng: &mut StdRng) -> Vec<u8> {
    random_weights(ty, rows, cols, rng.random())
}

fn candle_type(ty: QuantType) -> GgmlDType {
    match ty {
        QuantType::Q4_0 => GgmlDType::Q4_0,
        QuantType::Q4_1 => GgmlDType::Q4_1,
        QuantType::Q5_0 => GgmlDType::Q5_0,
        QuantType::Q8_0 => GgmlDType::Q8_0,
        QuantType::Q4K => GgmlDType::Q4K,
        QuantType::Q6K => GgmlDType::Q6K,
    }
}

fn dense(ty: QuantType, bytes: &[u8], rows: usize, cols: usize) -> Vec<f32> {
    let row_bytes = bytes.len() / rows;
    let mut w = vec![0f32; rows * cols];
    for (r, out) in w.chunks_exact_mut(cols).enumerate() {
        dequantize_row(ty, &bytes[r * row_bytes..][..row_bytes], out);
    }
    w
}

#[test]
fn dequantization_matches_candle() {
    let mut rng = StdRng::seed_from_u64(7);
    for ty in QuantType::ALL {
        let (rows, cols) = (3, 512);
        let bytes = random_rows(ty, rows, cols, &mut rng);
        let ours = dense(ty, &bytes, rows, cols);
        let theirs = qtensor_from_ggml(candle_type(ty), &bytes, vec![rows, cols], &Device::Cpu)
            .unwrap()
            .dequantize(&Device::Cpu)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert_eq!(ours, theirs, "{}", ty.name());
    }
}

/// Checks `matmul_many` on every instruction set against the f32 reference.
fn check_products(ty: QuantType, shapes: &[usize], cols: usize, tokens: usize, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let weights: Vec<Vec<u8>> = shapes
        .iter()
        .map(|&rows| random_rows(ty, rows, cols, &mut rng))
        .collect();
    let mats: Vec<QMatrix> = shapes
        .iter()
        .zip(&weights)
        .map(|(&rows, w)| QMatrix::new(ty, rows, cols, Bytes::owned(w.clone())).unwrap())
        .collect();
    let x: Vec<f32> = (0..tokens * cols)
        .map(|_| rng.random_range(-2.0f32..2.0) * if rng.random_ratio(1, 50) { 20.0 } else { 1.0 })
        .collect();
    let pool = Pool::new(3);
    // Per (matrix, token, row): the f32 product, the bound on its distance from ours, and the
    // size of the terms summed (what float rounding is relative to).
    let mut expected = Vec::new();
    for ((&rows, bytes), _) in shapes.iter().zip(&weights).zip(&mats) {
        let w = dense(ty, bytes, rows, cols);
        let row_bytes = bytes.len() / rows;
        for t in 0..tokens {
            let xt = &x[t * cols..][..cols];
            for r in 0..rows {
                let wr = &w[r * cols..][..cols];
                let exact: f64 = wr.iter().zip(xt).map(|(a, b)| *a as f64 * *b as f64).sum();
                let (mut rounding, mut terms) = (0f64, 0f64);
                for (run, xs) in xt.chunks(32).enumerate() {
                    let u = unpack32(ty, &bytes[r * row_bytes..][..row_bytes], run);
                    let step = xs.iter().fold(0f32, |m, v| m.max(v.abs())) as f64 / 127.0;
                    for (e, xe) in xs.iter().enumerate() {
                        rounding += wr[run * 32 + e].abs() as f64 * step / 2.0;
                        let parts = (u.scale[e / 16] * u.q[e] as f32).abs() + u.min.abs();
                        terms += parts as f64 * (xe.abs() as f64 + step);
                    }
                }
                expected.push((exact, rounding * 1.001 + terms * 1e-5 + 1e-6, terms));
            }
        }
    }
    let mut portable: Option<Vec<f32>> = None;
    for isa in Isa::available() {
        let mut ys: Vec<Vec<f32>> = shapes.iter().map(|&r| vec![f32::NAN; r * tokens]).collect();
        let mut outs: Vec<&mut [f32]> = ys.iter_mut().map(|y| &mut y[..]).collect();
        matmul_many(
            &mats.iter().collect::<Vec<_>>(),
            &x,
            tokens,
            &mut outs,
            &pool,
            isa,
        )
        .unwrap();
        let got: Vec<f32> = ys.concat();
        for (i, (&g, &(exact, bound, _))) in got.iter().zip(&expected).enumerate() {
            assert!(
                (g as f64 - exact).abs() <= bound,
                "{} on {}: value {i}: {g} vs {exact} (bound {bound})",
                ty.name(),
                isa.name()
            );
        }
        // The instruction sets agree with each other far more tightly than with the f32
        // product: only float summation order differs.
        if let Some(reference) = &portable {
            for ((a, b), &(_, _, terms)) in reference.iter().zip(&got).zip(&expected) {
                assert!(
                    ((a - b).abs() as f64) <= terms * 1e-5 + 1e-6,
                    "{} on {}: {b} vs portable {a}",
                    ty.name(),
                    isa.name()
                );
            }
        } else {
            portable = Some(got);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn products_match_the_reference(
        ty in proptest::sample::select(QuantType::ALL.to_vec()),
        blocks in 1usize..5,
        rows in proptest::collection::vec(1usize..40, 1..4),
        tokens in 1usize..20,
        seed in any::<u64>(),
    ) {
        check_products(ty, &rows, blocks * ty.block_len(), tokens, seed);
    }
}

/// Thread counts change how rows are grouped into tiles (or, for long batches, groups); no value
/// may change with them.
#[test]
fn results_do_not_depend_on_the_thread_count() {
    let mut rng = StdRng::seed_from_u64(3);
    let (rows, cols) = (101, 256);
    for (ty, tokens) in QuantType::ALL
        .into_iter()
        .flat_map(|ty| [(ty, 7), (ty, 11)])
    {
        let w = random_rows(ty, rows, cols, &mut rng);
        let m = QMatrix::new(ty, rows, cols, Bytes::owned(w)).unwrap();
        let x: Vec<f32> = (0..tokens * cols)
            .map(|_| rng.random_range(-1.0..1.0))
            .collect();
        let run = |threads: usize| {
            let mut y = vec![0f32; rows * tokens];
            let pool = Pool::new(threads);
            matmul_many(&[&m], &x, tokens, &mut [&mut y[..]], &pool, Isa::detect()).unwrap();
            y
        };
        let one = run(1);
        for threads in [2, 3, 5] {
            assert_eq!(
                one,
                run(threads),
                "{} × {tokens} with {threads} threads",
                ty.name()
            );
        }
    }
}

/// Long batches take another path on some CPUs (rows unpacked once per product, 16 to a
/// vector): every type, with groups of rows cut short and every remainder of tokens.
#[test]
fn long_batches_match_the_reference() {
    for (seed, ty) in QuantType::ALL.into_iter().enumerate() {
        for tokens in 8..=16 {
            check_products(ty, &[37, 16, 3], 512, tokens, seed as u64);
        }
    }
}

#[test]
fn bad_operands_are_refused() {
    let m = QMatrix::new(QuantType::Q8_0, 2, 32, Bytes::owned(vec![0; 68])).unwrap();
    assert!(QMatrix::new(QuantType::Q8_0, 2, 32, Bytes::owned(vec![0; 67])).is_err());
    assert!(QMatrix::new(QuantType::Q4K, 1, 32, Bytes::owned(vec![0; 144])).is_err());
    assert!(Bytes::shared(std::sync::Arc::new(vec![0u8; 4]), 2..5).is_none());
    let mut y = vec![0f32; 2];
    assert!(m.matmul(&[0.0; 31], 1, &mut y).is_err());
    assert!(m.matmul(&[0.0; 32], 1, &mut y[..1]).is_err());
    assert!(m.dequantize_row(2, &mut [0.0; 32]).is_err());
    m.matmul(&[1.0; 32], 1, &mut y).unwrap();
    assert_eq!(y, [0.0, 0.0]);
}

#[test]
fn activation_rounding_is_within_half_a_step() {
    let x: Vec<f32> = (0..32).map(|i| (i as f32 - 15.5) * 0.37).collect();
    let a = ActBlock::quantize(&x);
    for (v, q) in x.iter().zip(a.q) {
        assert!((v - a.d * q as f32).abs() <= a.d / 2.0 + 1e-6);
    }
    assert!((a.s - a.d * a.q.iter().map(|&q| q as i32).sum::<i32>() as f32).abs() < 1e-6);
}

#[test]
fn non_finite_activations_poison_the_block() {
    let mut x = [0.5f32; 32];
    x[7] = f32::NAN;
    assert!(ActBlock::quantize(&x).d.is_nan());
    x[7] = f32::INFINITY;
    assert!(ActBlock::quantize(&x).d.is_nan());
    assert_eq!(ActBlock::quantize(&[0.0; 32]).d, 0.0);
}
