//! The product of a vector of ring elements with a table of 8-bit entries, modulo 2^16: only
//! each element's low 16 bits count, so with AVX2 one `vpmaddwd` does 16 products (two rows'
//! elements against two rows' entries, for eight columns) and its 32-bit sums may wrap. The
//! portable path computes the same sums.

/// Columns of a block that shares one scale and offset.
pub const BLOCK: usize = 32;
/// Columns one pass of the kernel covers (half a block).
const STRIP: usize = 16;

/// `q` of a `[rows][cols]` table, in the kernel's order: by half block, by pair of rows, the
/// 16 columns' two bytes (the pair's first row, then its second) side by side. Rows are padded
/// to an even count and columns to whole blocks with zeros.
pub fn interleave(q: &[u8], rows: usize, cols: usize) -> Vec<u8> {
    let (nb, pairs) = (cols.div_ceil(BLOCK), rows.div_ceil(2));
    let mut out = vec![0u8; nb * BLOCK * pairs * 2];
    for r in 0..rows {
        for c in 0..cols {
            let strip = c / STRIP;
            let at = ((strip * pairs + r / 2) * STRIP + c % STRIP) * 2 + r % 2;
            out[at] = q[r * cols + c];
        }
    }
    out
}

/// `out[c] = Σ_r e[r]·q(r, c) mod 2^16` for `q` as [`interleave`] lays it out.
pub fn product16(e: &[u64], q: &[u8], out: &mut [u64]) {
    let pairs = e.len().div_ceil(2);
    let strips = out.len().div_ceil(BLOCK) * 2;
    debug_assert_eq!(q.len(), strips * pairs * 2 * STRIP);
    // Per pair of rows, the first row's low 16 bits in the low half, the second's in the high.
    let low = |r: usize| e.get(r).map_or(0, |v| *v as u16 as u32);
    let paired: Vec<u32> = (0..pairs)
        .map(|p| low(2 * p) | low(2 * p + 1) << 16)
        .collect();
    let avx2 = avx2_present();
    for strip in 0..strips {
        let q = &q[strip * pairs * 2 * STRIP..][..pairs * 2 * STRIP];
        let sums = strip_sums(avx2, &paired, q);
        for (o, s) in out.iter_mut().skip(strip * STRIP).zip(sums) {
            *o = s as u16 as u64;
        }
    }
}

/// Whether the AVX2 kernel runs.
fn avx2_present() -> bool {
    #[cfg(target_arch = "x86_64")]
    return is_x86_feature_detected!("avx2");
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// One strip's sums (wrapping in 32 bits), from its pairs' elements.
#[cfg_attr(not(target_arch = "x86_64"), allow(unused_variables))]
fn strip_sums(avx2: bool, paired: &[u32], q: &[u8]) -> [u32; STRIP] {
    #[cfg(target_arch = "x86_64")]
    if avx2 {
        // SAFETY: AVX2 is present (the caller checked).
        return unsafe { avx2::strip_sums(paired, q) };
    }
    portable_sums(paired, q)
}

fn portable_sums(paired: &[u32], q: &[u8]) -> [u32; STRIP] {
    let mut sums = [0u32; STRIP];
    for (p, q) in paired.iter().zip(q.chunks_exact(2 * STRIP)) {
        let (lo, hi) = (*p as u16 as i16 as i32, (*p >> 16) as u16 as i16 as i32);
        for (c, s) in sums.iter_mut().enumerate() {
            let v = lo * q[2 * c] as i32 + hi * q[2 * c + 1] as i32;
            *s = s.wrapping_add(v as u32);
        }
    }
    sums
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::STRIP;

    /// [`super::portable_sums`] with `vpmaddwd`: per pair of rows, two loads of eight
    /// columns' byte pairs widened to 16 bits against the pair's two elements broadcast.
    #[target_feature(enable = "avx2")]
    pub unsafe fn strip_sums(paired: &[u32], q: &[u8]) -> [u32; STRIP] {
        debug_assert_eq!(q.len(), paired.len() * 2 * STRIP);
        let mut acc = [_mm256_setzero_si256(); 2];
        for (p, q) in paired.iter().zip(q.chunks_exact(2 * STRIP)) {
            let (q0, q1) = unsafe {
                (
                    _mm256_cvtepu8_epi16(_mm_loadu_si128(q.as_ptr().cast())),
                    _mm256_cvtepu8_epi16(_mm_loadu_si128(q.as_ptr().add(16).cast())),
                )
            };
            let d = _mm256_set1_epi32(*p as i32);
            acc[0] = _mm256_add_epi32(acc[0], _mm256_madd_epi16(q0, d));
            acc[1] = _mm256_add_epi32(acc[1], _mm256_madd_epi16(q1, d));
        }
        let mut sums = [0u32; STRIP];
        unsafe {
            _mm256_storeu_si256(sums.as_mut_ptr().cast(), acc[0]);
            _mm256_storeu_si256(sums.as_mut_ptr().add(8).cast(), acc[1]);
        }
        sums
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The plain product: every entry a 64-bit multiply.
    fn reference(e: &[u64], q: &[u8], cols: usize) -> Vec<u64> {
        let mut out = vec![0u64; cols];
        for (r, e) in e.iter().enumerate() {
            for (c, o) in out.iter_mut().enumerate() {
                *o = o.wrapping_add(e.wrapping_mul(q[r * cols + c] as u64));
            }
        }
        out.iter().map(|v| v & 0xffff).collect()
    }

    proptest! {
        #[test]
        fn the_product_modulo_2_16_is_the_plain_one(
            rows in 1usize..400, blocks in 1usize..4, short in 0usize..32, seed in any::<u64>(),
            extreme in any::<bool>(),
        ) {
            let cols = blocks * BLOCK - short;
            let seed: [u8; 16] = [seed.to_le_bytes(), [3; 8]].concat().try_into().unwrap();
            let mut rng = crate::prg::Prg::new(&seed);
            // Extreme: every element's low 16 bits at their largest magnitude as signed,
            // -2^15, and every q at 255.
            let (e, q) = match extreme {
                true => (vec![0x8000; rows], vec![255; rows * cols]),
                false => (
                    rng.take(rows),
                    rng.take(rows * cols).iter().map(|v| *v as u8).collect(),
                ),
            };
            let want = reference(&e, &q, cols);
            let laid = interleave(&q, rows, cols);
            let mut got = vec![0u64; cols];
            product16(&e, &laid, &mut got);
            prop_assert_eq!(&got, &want);
            // The portable sums alone (the vector ones ran above where the CPU has them).
            let paired: Vec<u32> = e.chunks(2)
                .map(|p| p[0] as u16 as u32 | (p.get(1).map_or(0, |v| *v as u16 as u32)) << 16)
                .collect();
            let q = &laid[..paired.len() * 2 * STRIP];
            prop_assert_eq!(strip_sums(avx2_present(), &paired, q), portable_sums(&paired, q));
        }
    }
}
