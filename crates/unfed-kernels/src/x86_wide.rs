//! Wide tile kernels for CPUs with full AVX-512 (F, BW, DQ, VL, VNNI): two runs of 32 weights
//! per 512-bit instruction, so each (row, token) pair costs half the dot products, conversions
//! and multiply-adds of the 256-bit tiles. Signed weights (Q8_0, Q6_K) enter shifted to
//! unsigned bytes (`vpdpbusd` multiplies unsigned by signed); the shift's contribution,
//! `bias × Σ x` per group of four, is computed once per token and run and starts each row's dot
//! product, so the integer sums stay exact. For an even number of runs; an odd one keeps the
//! 256-bit tiles. Long batches unpack their rows with the same pair loaders (`x86_packed`).

use std::arch::x86_64::*;

use crate::act::ActBlock;
use crate::x86::vnni::tile::load_q8_0;

/// Q8_0 as unsigned bytes: `w + 128`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx512vnni,avx2,fma")]
unsafe fn load_q8_0_u(row: *const u8, r: usize) -> (__m256i, __m256, f32) {
    let (w, d, _) = unsafe { load_q8_0(row, r) };
    (_mm256_xor_si256(w, _mm256_set1_epi8(-128)), d, 0.0)
}

/// Whether this CPU runs the wide kernels.
pub(crate) fn available() -> bool {
    static OK: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *OK.get_or_init(|| {
        is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512dq")
            && is_x86_feature_detected!("avx512vl")
            && is_x86_feature_detected!("avx512vnni")
    })
}

/// Runs `r` and `r + 1` of a row: weights as unsigned bytes (run `r` in the low half), the
/// scale per 4-lane group, and each run's factor of the activation sum.
pub(crate) type Pair = (__m512i, __m512, f32, f32);

macro_rules! pair_of {
    ($name:ident, $load:ident) => {
        #[inline]
        #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx512vnni,avx2,fma")]
        pub(crate) unsafe fn $name(row: *const u8, r: usize) -> Pair {
            let ((w0, d0, m0), (w1, d1, m1)) = unsafe { ($load(row, r), $load(row, r + 1)) };
            let w = _mm512_inserti64x4::<1>(_mm512_castsi256_si512(w0), w1);
            let dv = _mm512_insertf32x8::<1>(_mm512_castps256_ps512(d0), d1);
            (w, dv, m0, m1)
        }
    };
}

pair_of!(pair_q8_0, load_q8_0_u);

/// Two consecutive blocks' 16 bytes of packed nibbles (at `at` in blocks of `bytes`) → 64
/// bytes: block 0's low then high nibbles, then block 1's.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx512vnni,avx2,fma")]
unsafe fn nibbles2(b: *const u8, bytes: usize, at: usize) -> __m512i {
    let q = unsafe {
        _mm256_inserti128_si256::<1>(
            _mm256_castsi128_si256(_mm_loadu_si128(b.add(at).cast())),
            _mm_loadu_si128(b.add(bytes + at).cast()),
        )
    };
    // 128-bit lanes [q0, q1, q0 >> 4, q1 >> 4], reordered to [q0, q0 >> 4, q1, q1 >> 4].
    let both = _mm512_inserti64x4::<1>(_mm512_castsi256_si512(q), _mm256_srli_epi16(q, 4));
    let ordered = _mm512_shuffle_i64x2::<0b11_01_10_00>(both, both);
    _mm512_and_si512(ordered, _mm512_set1_epi8(0xF))
}

#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx512vnni,avx2,fma")]
unsafe fn scales2(d0: f32, d1: f32) -> __m512 {
    _mm512_insertf32x8::<1>(_mm512_set1_ps(d0), _mm256_set1_ps(d1))
}

#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx512vnni,avx2,fma")]
pub(crate) unsafe fn pair_q4_0(row: *const u8, r: usize) -> Pair {
    unsafe {
        let b = row.add(r * 18);
        let (d0, d1) = (f16_at(b), f16_at(b.add(18)));
        (nibbles2(b, 18, 2), scales2(d0, d1), -8.0 * d0, -8.0 * d1)
    }
}

#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx512vnni,avx2,fma")]
pub(crate) unsafe fn pair_q4_1(row: *const u8, r: usize) -> Pair {
    unsafe {
        let b = row.add(r * 20);
        let w = nibbles2(b, 20, 4);
        (
            w,
            scales2(f16_at(b), f16_at(b.add(20))),
            f16_at(b.add(2)),
            f16_at(b.add(22)),
        )
    }
}

/// Q5_0: the fifth bits of both blocks become a 64-bit mask, expanded to bytes in one step.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx512vnni,avx2,fma")]
pub(crate) unsafe fn pair_q5_0(row: *const u8, r: usize) -> Pair {
    unsafe {
        let b = row.add(r * 22);
        let (d0, d1) = (f16_at(b), f16_at(b.add(22)));
        let qh0 = b.add(2).cast::<u32>().read_unaligned() as u64;
        let qh1 = b.add(24).cast::<u32>().read_unaligned() as u64;
        let high = _mm512_and_si512(_mm512_movm_epi8(qh0 | qh1 << 32), _mm512_set1_epi8(0x10));
        let w = _mm512_or_si512(nibbles2(b, 22, 6), high);
        (w, scales2(d0, d1), -16.0 * d0, -16.0 * d1)
    }
}

/// Q4_K: runs `r` (even) and `r + 1` are the low and high nibbles of the same 32 bytes; their
/// 6-bit scales and minimums come from adjacent scale bytes (see `q4k_scale_min`).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx512vnni,avx2,fma")]
pub(crate) unsafe fn pair_q4k(row: *const u8, r: usize) -> Pair {
    unsafe {
        let (blk, j) = (r / 8, r % 8);
        let b = row.add(blk * 144);
        let (d, dmin) = (f16_at(b), f16_at(b.add(2)));
        let s = b.add(4);
        let byte = |i: usize| *s.add(i) as u32;
        // Sub-blocks j and j + 1: scales in the low bytes, minimums in the high bytes.
        let (sm0, sm1) = if j < 4 {
            (
                (byte(j) & 63) | (byte(j + 4) & 63) << 8,
                (byte(j + 1) & 63) | (byte(j + 5) & 63) << 8,
            )
        } else {
            let pick = |i: usize| {
                ((byte(i + 4) & 0xF) | (byte(i - 4) >> 6) << 4)
                    | ((byte(i + 4) >> 4) | (byte(i) >> 6) << 4) << 8
            };
            (pick(j), pick(j + 1))
        };
        let qs = _mm256_loadu_si256(b.add(16 + 16 * j).cast());
        let both = _mm512_inserti64x4::<1>(_mm512_castsi256_si512(qs), _mm256_srli_epi16(qs, 4));
        let w = _mm512_and_si512(both, _mm512_set1_epi8(0xF));
        let dv = scales2(d * (sm0 & 0xFF) as f32, d * (sm1 & 0xFF) as f32);
        (w, dv, -dmin * (sm0 >> 8) as f32, -dmin * (sm1 >> 8) as f32)
    }
}

/// Q6_K: runs `r` (even) and `r + 1` take their low four bits from 64 consecutive bytes (same
/// nibble), their top two bits from the same 32 bytes (shifted by 2 more for `r + 1`), and four
/// scales, one per 16 weights, from 4 consecutive bytes. Unsigned (`w + 32`).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx512vnni,avx2,fma")]
pub(crate) unsafe fn pair_q6k(row: *const u8, r: usize) -> Pair {
    unsafe {
        let (blk, sub) = (r / 8, r % 8);
        let (half, g) = (sub / 4, sub % 4);
        let b = row.add(blk * 210);
        let d = f16_at(b.add(208));
        let ql = _mm512_loadu_si512(b.add(64 * half).cast());
        let ql = if g < 2 { ql } else { _mm512_srli_epi16(ql, 4) };
        let low = _mm512_and_si512(ql, _mm512_set1_epi8(0xF));
        let qh = _mm256_loadu_si256(b.add(128 + 32 * half).cast());
        let qh = _mm256_srl_epi16(qh, _mm_cvtsi32_si128(2 * g as i32));
        let qh = _mm512_inserti64x4::<1>(_mm512_castsi256_si512(qh), _mm256_srli_epi16(qh, 2));
        let high = _mm512_slli_epi16(_mm512_and_si512(qh, _mm512_set1_epi8(3)), 4);
        let w = _mm512_or_si512(low, high);
        let sc = b.add(192 + 8 * half + 2 * g).cast::<i32>().read_unaligned();
        let sc = _mm_cvtepi32_ps(_mm_cvtepi8_epi32(_mm_cvtsi32_si128(sc)));
        let sc = _mm_mul_ps(sc, _mm_set1_ps(d));
        let spread = _mm512_set_epi32(3, 3, 3, 3, 2, 2, 2, 2, 1, 1, 1, 1, 0, 0, 0, 0);
        let dv = _mm512_permutexvar_ps(spread, _mm512_castps128_ps512(sc));
        (w, dv, 0.0, 0.0)
    }
}

#[inline]
unsafe fn f16_at(p: *const u8) -> f32 {
    unsafe { half::f16::from_bits(p.cast::<u16>().read_unaligned()).to_f32() }
}

macro_rules! wide_kernel {
    ($name:ident, $pair:ident, $bias:expr) => {
        /// `R` weight rows against `T` (≤ 4) token rows, `runs` (even) runs of 32; for a given
        /// `T`, every value goes through the same operations whatever `R`.
        #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx512vnni,avx2,fma")]
        pub(crate) unsafe fn $name<const R: usize, const T: usize>(
            rows: [*const u8; R],
            acts: [*const ActBlock; T],
            runs: usize,
        ) -> [[f32; T]; R] {
            debug_assert!(runs.is_multiple_of(2));
            let mut acc = [[_mm512_setzero_ps(); T]; R];
            let mut offset = [_mm_setzero_ps(); R];
            for r in (0..runs).step_by(2) {
                let mut x = [_mm512_setzero_si512(); T];
                let mut da = [_mm512_setzero_ps(); T];
                let (mut s0, mut s1) = ([0f32; 4], [0f32; 4]);
                for j in 0..T {
                    let (a0, a1) = unsafe { (&*acts[j].add(r), &*acts[j].add(r + 1)) };
                    let (q0, q1) = unsafe {
                        (
                            _mm256_loadu_si256(a0.q.as_ptr().cast()),
                            _mm256_loadu_si256(a1.q.as_ptr().cast()),
                        )
                    };
                    x[j] = _mm512_inserti64x4::<1>(_mm512_castsi256_si512(q0), q1);
                    da[j] = _mm512_insertf32x8::<1>(_mm512_set1_ps(a0.d), _mm256_set1_ps(a1.d));
                    s0[j] = a0.s;
                    s1[j] = a1.s;
                }
                let (s0, s1) = unsafe { (_mm_loadu_ps(s0.as_ptr()), _mm_loadu_ps(s1.as_ptr())) };
                // Each row's dot product starts from -bias × Σx per group of four.
                let mut start = [_mm512_setzero_si512(); T];
                if $bias != 0 {
                    let bias = _mm512_set1_epi8($bias as u8 as i8);
                    for j in 0..T {
                        let sums = _mm512_dpbusd_epi32(_mm512_setzero_si512(), bias, x[j]);
                        start[j] = _mm512_sub_epi32(_mm512_setzero_si512(), sums);
                    }
                }
                for i in 0..R {
                    let (w, dv, m0, m1) = unsafe { $pair(rows[i], r) };
                    for j in 0..T {
                        let p = _mm512_dpbusd_epi32(start[j], w, x[j]);
                        acc[i][j] = _mm512_fmadd_ps(
                            _mm512_cvtepi32_ps(p),
                            _mm512_mul_ps(dv, da[j]),
                            acc[i][j],
                        );
                    }
                    if $bias == 0 {
                        offset[i] = _mm_fmadd_ps(_mm_set1_ps(m0), s0, offset[i]);
                        offset[i] = _mm_fmadd_ps(_mm_set1_ps(m1), s1, offset[i]);
                    }
                }
            }
            let mut out = [[0f32; T]; R];
            for i in 0..R {
                let mut o = [0f32; 4];
                unsafe { _mm_storeu_ps(o.as_mut_ptr(), offset[i]) };
                for j in 0..T {
                    out[i][j] = _mm512_reduce_add_ps(acc[i][j]) + o[j];
                }
            }
            out
        }
    };
}

wide_kernel!(q4_0, pair_q4_0, 0);
wide_kernel!(q4_1, pair_q4_1, 0);
wide_kernel!(q5_0, pair_q5_0, 0);
wide_kernel!(q4k, pair_q4k, 0);
wide_kernel!(q8_0, pair_q8_0, 128);
wide_kernel!(q6k, pair_q6k, 32);
