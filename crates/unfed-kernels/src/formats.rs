//! The GGUF block layouts the kernels read, and their straightforward dequantization — the
//! reference every fast kernel is tested against.
//!
//! Every supported type is, per run of 32 weights, an affine map of small integers:
//! `w = scale(half) * q + min`, where the scale may differ between the two halves of 16 (Q6_K)
//! and `q` is unsigned (4/5-bit types, Q4_K) or signed (Q8_0, Q6_K after removing its offset).
//! [`unpack32`] exposes exactly that form; the portable kernel and the tests build on it.

use half::f16;

/// Quantization types with a fast kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum QuantType {
    Q4_0,
    Q4_1,
    Q5_0,
    Q8_0,
    Q4K,
    Q6K,
}

impl QuantType {
    /// Every supported type.
    pub const ALL: [QuantType; 6] = [
        QuantType::Q4_0,
        QuantType::Q4_1,
        QuantType::Q5_0,
        QuantType::Q8_0,
        QuantType::Q4K,
        QuantType::Q6K,
    ];

    /// Weights per block.
    pub fn block_len(self) -> usize {
        match self {
            QuantType::Q4K | QuantType::Q6K => 256,
            _ => 32,
        }
    }

    /// Bytes per block.
    pub fn block_bytes(self) -> usize {
        match self {
            QuantType::Q4_0 => 18,
            QuantType::Q4_1 => 20,
            QuantType::Q5_0 => 22,
            QuantType::Q8_0 => 34,
            QuantType::Q4K => 144,
            QuantType::Q6K => 210,
        }
    }

    /// The llama.cpp name.
    pub fn name(self) -> &'static str {
        match self {
            QuantType::Q4_0 => "Q4_0",
            QuantType::Q4_1 => "Q4_1",
            QuantType::Q5_0 => "Q5_0",
            QuantType::Q8_0 => "Q8_0",
            QuantType::Q4K => "Q4_K",
            QuantType::Q6K => "Q6_K",
        }
    }
}

/// One run of 32 weights as `w[e] = scale[e / 16] * q[e] + min`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Unpacked32 {
    pub q: [i32; 32],
    pub scale: [f32; 2],
    pub min: f32,
}

/// The run of 32 weights number `run` of a row (`row` holds whole blocks of type `ty`).
pub fn unpack32(ty: QuantType, row: &[u8], run: usize) -> Unpacked32 {
    let per_block = ty.block_len() / 32;
    let b = &row[(run / per_block) * ty.block_bytes()..][..ty.block_bytes()];
    let sub = run % per_block;
    let mut q = [0i32; 32];
    let (scale, min) = match ty {
        QuantType::Q4_0 | QuantType::Q4_1 => {
            let d = f16_at(b, 0);
            let qs = &b[if ty == QuantType::Q4_0 { 2 } else { 4 }..];
            for j in 0..16 {
                q[j] = (qs[j] & 0xF) as i32;
                q[j + 16] = (qs[j] >> 4) as i32;
            }
            let min = if ty == QuantType::Q4_0 {
                -8.0 * d
            } else {
                f16_at(b, 2)
            };
            ([d; 2], min)
        }
        QuantType::Q5_0 => {
            let d = f16_at(b, 0);
            let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
            let qs = &b[6..];
            for j in 0..16 {
                q[j] = ((qs[j] & 0xF) as u32 | ((qh >> j) & 1) << 4) as i32;
                q[j + 16] = ((qs[j] >> 4) as u32 | ((qh >> (j + 16)) & 1) << 4) as i32;
            }
            ([d; 2], -16.0 * d)
        }
        QuantType::Q8_0 => {
            for (j, v) in q.iter_mut().enumerate() {
                *v = b[2 + j] as i8 as i32;
            }
            ([f16_at(b, 0); 2], 0.0)
        }
        QuantType::Q4K => {
            let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
            let (sc, m) = q4k_scale_min(&b[4..16], sub);
            let qs = &b[16 + 32 * (sub / 2)..][..32];
            let shift = 4 * (sub % 2);
            for (j, v) in q.iter_mut().enumerate() {
                *v = ((qs[j] >> shift) & 0xF) as i32;
            }
            ([d * sc as f32; 2], -dmin * m as f32)
        }
        QuantType::Q6K => {
            let (half, group) = (sub / 4, sub % 4);
            let ql = &b[64 * half..];
            let qh = &b[128 + 32 * half..];
            let sc = &b[192 + 8 * half..];
            let d = f16_at(b, 208);
            for (l, v) in q.iter_mut().enumerate() {
                let low = if group % 2 == 0 { ql[l] } else { ql[l + 32] };
                let low = if group < 2 { low & 0xF } else { low >> 4 };
                let high = (qh[l] >> (2 * group)) & 3;
                *v = (low | high << 4) as i32 - 32;
            }
            (
                [
                    d * sc[2 * group] as i8 as f32,
                    d * sc[2 * group + 1] as i8 as f32,
                ],
                0.0,
            )
        }
    };
    Unpacked32 { q, scale, min }
}

/// Dequantizes a row of whole blocks into `out` (`out.len()` weights), ggml's formulas.
pub fn dequantize_row(ty: QuantType, row: &[u8], out: &mut [f32]) {
    for (run, chunk) in out.chunks_exact_mut(32).enumerate() {
        let u = unpack32(ty, row, run);
        for (e, w) in chunk.iter_mut().enumerate() {
            *w = u.scale[e / 16] * u.q[e] as f32 + u.min;
        }
    }
}

/// The 6-bit scale and minimum of sub-block `j` of a Q4_K block (`s`: its 12 scale bytes).
pub(crate) fn q4k_scale_min(s: &[u8], j: usize) -> (u8, u8) {
    if j < 4 {
        (s[j] & 63, s[j + 4] & 63)
    } else {
        (
            (s[j + 4] & 0xF) | ((s[j - 4] >> 6) << 4),
            (s[j + 4] >> 4) | ((s[j] >> 6) << 4),
        )
    }
}

pub(crate) fn f16_at(b: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([b[at], b[at + 1]]).to_f32()
}
