//! The product of a vector of ring elements with a table held in 8-bit blocks, on 16-bit
//! digits: each row's multiplier `a = e·scale` (one per row and block of 32 columns) is written
//! with four signed 16-bit digits, `a ≡ Σ_l 2^(16l)·d_l (mod 2^64)`, and each digit's sums
//! `S_l = Σ_r d_l(r)·q(r, c)` are exact in 32 bits over 64 row pairs (`|d·q| < 2^23`), so
//! that with AVX2 one `vpmaddwd` does 16 of them: two rows' digits against two rows' `q`, for
//! eight columns. `S_0` and `S_1` are carried on in 64 bits, `S_2` and `S_3` may wrap in 32
//! (only their low 32 and 16 bits reach the result). The portable path computes the same sums
//! in 64 bits.

/// Columns of a block that shares one scale and offset.
pub const BLOCK: usize = 32;
/// Columns one pass of the kernel covers (half a block).
const STRIP: usize = 16;
/// Row pairs whose 32-bit sums cannot overflow: `64 · 2 · 2^15 · 255 < 2^31`.
const FLUSH: usize = 64;
/// `2^15` in each 16-bit lane.
const HALVES: u64 = 0x8000_8000_8000_8000;

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

/// `out[c] += Σ_r e[r]·scales[b·rows + r]·q(r, c)` (wrapping; `b` the block of column `c`)
/// for `q` as [`interleave`] lays it out.
pub fn add_product(e: &[u64], scales: &[u32], q: &[u8], out: &mut [u64]) {
    let (rows, nb) = (e.len(), out.len().div_ceil(BLOCK));
    let pairs = rows.div_ceil(2);
    debug_assert_eq!(scales.len(), rows * nb);
    debug_assert_eq!(q.len(), nb * BLOCK * pairs * 2);
    // Per row, the multiplier's digits (padded with a row of zeros); per pair of rows, each
    // digit of both.
    let mut words = vec![0u64; 2 * pairs];
    let mut paired = vec![[0u32; 4]; pairs];
    let avx2 = avx2_present();
    for b in 0..nb {
        let scales = &scales[b * rows..(b + 1) * rows];
        for ((w, e), scale) in words.iter_mut().zip(e).zip(scales) {
            *w = digits(e.wrapping_mul(*scale as u64));
        }
        pair_up(avx2, &words, &mut paired);
        for half in 0..2 {
            let strip = 2 * b + half;
            let q = &q[strip * pairs * 2 * STRIP..][..pairs * 2 * STRIP];
            let mut sums = [[0u64; STRIP]; 4];
            strip_sums(avx2, &paired, q, &mut sums);
            let start = strip * STRIP;
            for (c, o) in out.iter_mut().enumerate().skip(start).take(STRIP) {
                let s = |l: usize| sums[l][c - start];
                let v = s(0)
                    .wrapping_add(s(1) << 16)
                    .wrapping_add(s(2) << 32)
                    .wrapping_add(s(3) << 48);
                *o = o.wrapping_add(v);
            }
        }
    }
}

/// `a`'s four signed 16-bit digits `d_l` (`a ≡ Σ_l 2^(16l)·d_l mod 2^64`), lowest first, as the
/// 16-bit lanes of one word: the lanes of `a + Σ_l 2^(16l + 15)` (carries included) are
/// `d_l + 2^15`, and flipping their top bits takes the `2^15` off in two's complement.
fn digits(a: u64) -> u64 {
    a.wrapping_add(HALVES) ^ HALVES
}

/// Whether the AVX2 kernel runs.
fn avx2_present() -> bool {
    #[cfg(target_arch = "x86_64")]
    return is_x86_feature_detected!("avx2");
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// Per pair of rows, from their digit words, lane `l`: the first row's digit `l` in the low 16
/// bits, the second's in the high.
#[cfg_attr(not(target_arch = "x86_64"), allow(unused_variables))]
fn pair_up(avx2: bool, words: &[u64], paired: &mut [[u32; 4]]) {
    debug_assert_eq!(words.len(), 2 * paired.len());
    #[cfg(target_arch = "x86_64")]
    if avx2 {
        // SAFETY: AVX2 is present (the caller checked).
        unsafe { avx2::pair_up(words, paired) };
        return;
    }
    for (w, p) in words.chunks_exact(2).zip(paired.iter_mut()) {
        *p = [0, 1, 2, 3]
            .map(|l| (w[0] >> (16 * l)) as u16 as u32 | ((w[1] >> (16 * l)) as u16 as u32) << 16);
    }
}

/// One strip's sums per digit (`sums[l][c]`, wrapping), from its pairs' digits.
#[cfg_attr(not(target_arch = "x86_64"), allow(unused_variables))]
fn strip_sums(avx2: bool, paired: &[[u32; 4]], q: &[u8], sums: &mut [[u64; STRIP]; 4]) {
    #[cfg(target_arch = "x86_64")]
    if avx2 {
        // SAFETY: AVX2 is present (the caller checked).
        unsafe { avx2::strip_sums(paired, q, sums) };
        return;
    }
    portable_sums(paired, q, sums);
}

fn portable_sums(paired: &[[u32; 4]], q: &[u8], sums: &mut [[u64; STRIP]; 4]) {
    for (p, q) in paired.iter().zip(q.chunks_exact(2 * STRIP)) {
        for (l, sums) in sums.iter_mut().enumerate() {
            let (lo, hi) = (p[l] as u16 as i16 as i64, (p[l] >> 16) as u16 as i16 as i64);
            for (c, s) in sums.iter_mut().enumerate() {
                let v = lo * q[2 * c] as i64 + hi * q[2 * c + 1] as i64;
                *s = s.wrapping_add(v as u64);
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::{FLUSH, STRIP};

    /// [`super::pair_up`]: one interleave of 16-bit lanes per pair.
    #[target_feature(enable = "avx2")]
    pub unsafe fn pair_up(words: &[u64], paired: &mut [[u32; 4]]) {
        for (w, p) in words.chunks_exact(2).zip(paired.iter_mut()) {
            unsafe {
                let w = _mm_loadu_si128(w.as_ptr().cast());
                let p4 = _mm_unpacklo_epi16(w, _mm_unpackhi_epi64(w, w));
                _mm_storeu_si128(p.as_mut_ptr().cast(), p4);
            }
        }
    }

    /// [`super::portable_sums`] with `vpmaddwd`: per pair of rows, two loads of eight
    /// columns' byte pairs widened to 16 bits, and per digit the pair's two digits broadcast
    /// to every 32-bit lane against each.
    #[target_feature(enable = "avx2")]
    pub unsafe fn strip_sums(paired: &[[u32; 4]], q: &[u8], sums: &mut [[u64; STRIP]; 4]) {
        debug_assert_eq!(q.len(), paired.len() * 2 * STRIP);
        // Digits 0 and 1 in 64 bits, per eight columns: [digit][column group][half].
        let mut wide = [[[_mm256_setzero_si256(); 2]; 2]; 2];
        let mut high = [[_mm256_setzero_si256(); 2]; 2];
        for (chunk, q) in paired.chunks(FLUSH).zip(q.chunks(FLUSH * 2 * STRIP)) {
            let mut acc = [[_mm256_setzero_si256(); 2]; 4];
            for (p, q) in chunk.iter().zip(q.chunks_exact(2 * STRIP)) {
                let (q0, q1) = unsafe {
                    (
                        _mm256_cvtepu8_epi16(_mm_loadu_si128(q.as_ptr().cast())),
                        _mm256_cvtepu8_epi16(_mm_loadu_si128(q.as_ptr().add(16).cast())),
                    )
                };
                let d = p.map(|d| _mm256_set1_epi32(d as i32));
                for (acc, d) in acc.iter_mut().zip(d) {
                    acc[0] = _mm256_add_epi32(acc[0], _mm256_madd_epi16(q0, d));
                    acc[1] = _mm256_add_epi32(acc[1], _mm256_madd_epi16(q1, d));
                }
            }
            for l in 0..2 {
                for g in 0..2 {
                    let [lo, hi] = widen(acc[l][g]);
                    wide[l][g][0] = _mm256_add_epi64(wide[l][g][0], lo);
                    wide[l][g][1] = _mm256_add_epi64(wide[l][g][1], hi);
                }
            }
            for l in 0..2 {
                for g in 0..2 {
                    high[l][g] = _mm256_add_epi32(high[l][g], acc[l + 2][g]);
                }
            }
        }
        for g in 0..2 {
            for l in 0..2 {
                let mut lanes = [0i64; 8];
                unsafe {
                    _mm256_storeu_si256(lanes.as_mut_ptr().cast(), wide[l][g][0]);
                    _mm256_storeu_si256(lanes.as_mut_ptr().add(4).cast(), wide[l][g][1]);
                }
                for (s, v) in sums[l][8 * g..8 * g + 8].iter_mut().zip(lanes) {
                    *s = s.wrapping_add(v as u64);
                }
                let mut lanes = [0i32; 8];
                unsafe { _mm256_storeu_si256(lanes.as_mut_ptr().cast(), high[l][g]) };
                for (s, v) in sums[l + 2][8 * g..8 * g + 8].iter_mut().zip(lanes) {
                    *s = s.wrapping_add(v as i64 as u64);
                }
            }
        }
    }

    /// Eight 32-bit lanes sign-extended to two vectors of four 64-bit ones, in order.
    #[target_feature(enable = "avx2")]
    fn widen(v: __m256i) -> [__m256i; 2] {
        [
            _mm256_cvtepi32_epi64(_mm256_castsi256_si128(v)),
            _mm256_cvtepi32_epi64(_mm256_extracti128_si256::<1>(v)),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The plain product: every entry a 64-bit multiply.
    fn reference(e: &[u64], scales: &[u32], q: &[u8], cols: usize) -> Vec<u64> {
        let e_len = e.len();
        let mut out = vec![0u64; cols];
        for (r, e) in e.iter().enumerate() {
            for (c, o) in out.iter_mut().enumerate() {
                let a = e.wrapping_mul(scales[c / BLOCK * e_len + r] as u64);
                *o = o.wrapping_add(a.wrapping_mul(q[r * cols + c] as u64));
            }
        }
        out
    }

    proptest! {
        #[test]
        fn the_product_on_digits_is_the_plain_one(
            rows in 1usize..400, blocks in 1usize..4, short in 0usize..32, seed in any::<u64>(),
            extreme in any::<bool>(),
        ) {
            let cols = blocks * BLOCK - short;
            let seed: [u8; 16] = [seed.to_le_bytes(), [3; 8]].concat().try_into().unwrap();
            let mut rng = crate::prg::Prg::new(&seed);
            let nb = cols.div_ceil(BLOCK);
            // Extreme: every digit at its largest magnitude, -2^15, and every q at 255.
            let (e, scales, q) = match extreme {
                true => (vec![HALVES; rows], vec![1; rows * nb], vec![255; rows * cols]),
                false => (
                    rng.take(rows),
                    rng.take(rows * nb).iter().map(|v| *v as u32).collect(),
                    rng.take(rows * cols).iter().map(|v| *v as u8).collect(),
                ),
            };
            let want = reference(&e, &scales, &q, cols);
            let laid = interleave(&q, rows, cols);
            let mut got = vec![0u64; cols];
            add_product(&e, &scales, &laid, &mut got);
            prop_assert_eq!(&got, &want);
            // The portable sums alone (the vector ones ran above where the CPU has them), which
            // keep every digit's sum in 64 bits where the vector ones keep those of digits 2
            // and 3 in 32.
            let mut words: Vec<u64> = e.iter().map(|e| digits(e.wrapping_mul(scales[0] as u64))).collect();
            words.resize(rows.div_ceil(2) * 2, 0);
            let (mut fast, mut plain) = (vec![[0; 4]; words.len() / 2], vec![[0; 4]; words.len() / 2]);
            pair_up(avx2_present(), &words, &mut fast);
            pair_up(false, &words, &mut plain);
            prop_assert_eq!(&fast, &plain);
            let q = &laid[..words.len() * STRIP];
            let (mut a, mut b) = ([[0u64; STRIP]; 4], [[0u64; STRIP]; 4]);
            strip_sums(avx2_present(), &plain, q, &mut a);
            portable_sums(&plain, q, &mut b);
            prop_assert_eq!(&a[..2], &b[..2]);
            for l in 2..4 {
                prop_assert_eq!(a[l].map(|v| v as u32), b[l].map(|v| v as u32));
            }
        }

        #[test]
        fn four_digits_make_the_element(a in any::<u64>()) {
            let w = digits(a);
            let digit = |l: usize| (w >> (16 * l)) as u16 as i16 as i64 as u64;
            let back = (0..4).fold(0u64, |s, l| s.wrapping_add(digit(l) << (16 * l)));
            prop_assert_eq!(back, a);
        }
    }
}
