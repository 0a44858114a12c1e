//! Random weights in real block layouts, for tests and the kernel benchmark.

use rand::{Rng, SeedableRng, rngs::StdRng};

use crate::QuantType;

/// `rows × cols` random weights of type `ty`: random quantized values, and scale fields holding
/// moderate finite f16 values of either sign (random bytes there could be NaN or huge).
pub fn random_weights(ty: QuantType, rows: usize, cols: usize, seed: u64) -> Vec<u8> {
    let mut rng = StdRng::seed_from_u64(seed);
    let blocks = rows * cols / ty.block_len();
    let mut bytes = vec![0u8; blocks * ty.block_bytes()];
    rng.fill(&mut bytes[..]);
    let scale_fields: &[usize] = match ty {
        QuantType::Q4_0 | QuantType::Q5_0 | QuantType::Q8_0 => &[0],
        QuantType::Q4_1 | QuantType::Q4K => &[0, 2],
        QuantType::Q6K => &[208],
    };
    for b in bytes.chunks_exact_mut(ty.block_bytes()) {
        for &at in scale_fields {
            let v: f32 = rng.random_range(0.001..0.05) * if rng.random() { 1.0 } else { -1.0 };
            b[at..at + 2].copy_from_slice(&half::f16::from_f32(v).to_le_bytes());
        }
    }
    bytes
}
