//! `unfed bench --kernels`: the quantized products alone, in GMAC/s (billions of weight ×
//! activation products per second) per weight type and instruction set, for one token (as in
//! decode) and a batch of tokens (as in prefill), on random weights of a model-sized matrix.

use std::time::{Duration, Instant};

use unfed_kernels::testing::random_weights;
use unfed_kernels::{Bytes, Isa, QMatrix, QuantType, matmul_many, pool};

/// Qwen2.5-0.5B's `ffn_down`: 896 rows of 4864 (a multiple of every block length).
const ROWS: usize = 896;
const COLS: usize = 4864;

pub fn run(batch: usize) {
    let pool = pool::global();
    println!("| weights | instruction set | threads | GMAC/s, 1 token | GMAC/s, {batch} tokens |");
    println!("| --- | --- | --- | --- | --- |");
    for ty in QuantType::ALL {
        let m = QMatrix::new(
            ty,
            ROWS,
            COLS,
            Bytes::owned(random_weights(ty, ROWS, COLS, 1)),
        )
        .expect("the shape is a whole number of blocks");
        for isa in Isa::available() {
            let rate = |tokens: usize| {
                let x: Vec<f32> = (0..tokens * COLS)
                    .map(|i| ((i % 97) as f32 - 48.0) / 17.0)
                    .collect();
                let mut y = vec![0f32; tokens * ROWS];
                let mut once = || {
                    matmul_many(&[&m], &x, tokens, &mut [&mut y[..]], pool, isa)
                        .expect("shapes match")
                };
                once();
                let (start, mut reps) = (Instant::now(), 0u64);
                while start.elapsed() < Duration::from_millis(300) {
                    once();
                    reps += 1;
                }
                (ROWS * COLS * tokens) as f64 * reps as f64 / start.elapsed().as_secs_f64() / 1e9
            };
            println!(
                "| {} | {} | {} | {:.1} | {:.1} |",
                ty.name(),
                isa.name(),
                pool.threads(),
                rate(1),
                rate(batch)
            );
        }
    }
}
