//! [`Wide`]: 16 rows per 512-bit vector, one `vpdpbusd` per 16 rows × 4 activations.

use std::arch::x86_64::*;

use super::{Lanes, run_bytes, scales};
use crate::QuantType;
use crate::x86_wide::{pair_q4_0, pair_q4_1, pair_q4k, pair_q5_0, pair_q6k, pair_q8_0};

/// 16 rows per 512-bit vector, `vpdpbusd` (CPUs with the wide kernels, `x86_wide::available`).
pub(crate) struct Wide;

impl Wide {
    /// What is subtracted from each unpacked (unsigned) weight to make it signed.
    fn bias(ty: QuantType) -> u8 {
        match ty {
            QuantType::Q4_0 => 8,
            QuantType::Q5_0 => 16,
            QuantType::Q8_0 => 128,
            QuantType::Q6K => 32,
            QuantType::Q4_1 | QuantType::Q4K => 0,
        }
    }
}

impl Lanes for Wide {
    const GROUP: usize = 16;
    type Acc = __m512;

    fn takes(_: QuantType) -> bool {
        true
    }

    fn group_bytes(ty: QuantType, runs: usize) -> usize {
        runs * run_bytes(16, scales(ty))
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx512vnni,avx2,fma")]
    unsafe fn pack(ty: QuantType, rows: &[&[u8]], runs: usize, out: &mut [u8]) {
        assert!(rows.len() <= 16 && out.len() == Wide::group_bytes(ty, runs));
        let (s, run_len) = (scales(ty), run_bytes(16, scales(ty)));
        let per = 8 / s;
        let bias = _mm512_set1_epi8(Wide::bias(ty) as i8);
        let ones = _mm512_set1_epi8(1);
        for r in (0..runs).step_by(2) {
            let (mut w, mut d) = ([_mm512_setzero_si512(); 16], [_mm512_setzero_si512(); 16]);
            let mut m = [[0f32; 16]; 2];
            for (i, row) in rows.iter().enumerate() {
                // SAFETY: the caller's promises.
                let (wi, di, m0, m1) = unsafe {
                    match ty {
                        QuantType::Q4_0 => pair_q4_0(row.as_ptr(), r),
                        QuantType::Q4_1 => pair_q4_1(row.as_ptr(), r),
                        QuantType::Q5_0 => pair_q5_0(row.as_ptr(), r),
                        QuantType::Q8_0 => pair_q8_0(row.as_ptr(), r),
                        QuantType::Q4K => pair_q4k(row.as_ptr(), r),
                        QuantType::Q6K => pair_q6k(row.as_ptr(), r),
                    }
                };
                (w[i], d[i]) = (_mm512_sub_epi8(wi, bias), _mm512_castps_si512(di));
                (m[0][i], m[1][i]) = (m0, m1);
            }
            // Lane i of vector k: row i's 32-bit word k (words 0-7 run r, 8-15 run r + 1).
            let (w, d) = (transpose(w), transpose(d));
            for half in 0..2 {
                let run = out[(r + half) * run_len..][..run_len].as_mut_ptr();
                // SAFETY: every store lies within this run's record of `out`.
                unsafe {
                    for k in 0..8 {
                        _mm512_storeu_si512(run.add(k * 64).cast(), w[8 * half + k]);
                    }
                    for sc in 0..s {
                        let mut sum = _mm512_setzero_si512();
                        for k in sc * per..(sc + 1) * per {
                            sum = _mm512_dpbusd_epi32(sum, ones, w[8 * half + k]);
                        }
                        let start =
                            _mm512_sub_epi32(_mm512_setzero_si512(), _mm512_slli_epi32(sum, 7));
                        _mm512_storeu_si512(run.add(512 + sc * 64).cast(), start);
                        let scale = d[8 * half + sc * per];
                        _mm512_storeu_si512(run.add(512 + (s + sc) * 64).cast(), scale);
                    }
                    _mm512_storeu_ps(
                        run.add(512 + 2 * s * 64).cast(),
                        _mm512_loadu_ps(m[half].as_ptr()),
                    );
                }
            }
        }
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx512vnni,avx2,fma")]
    unsafe fn kernel<const T: usize, const S: usize, const MIN: bool>(
        group: *const u8,
        x: [*const u8; T],
        ds: [*const [f32; 2]; T],
        runs: usize,
    ) -> [__m512; T] {
        let mut acc = [_mm512_setzero_ps(); T];
        let per = 8 / S;
        for r in 0..runs {
            unsafe {
                let g = group.add(r * run_bytes(16, S));
                for sc in 0..S {
                    let mut w = [_mm512_setzero_si512(); 8];
                    for (k, wk) in w.iter_mut().enumerate().take(per) {
                        *wk = _mm512_loadu_si512(g.add((sc * per + k) * 64).cast());
                    }
                    let start = _mm512_loadu_si512(g.add(512 + sc * 64).cast());
                    let scale = _mm512_loadu_ps(g.add(512 + (S + sc) * 64).cast());
                    for j in 0..T {
                        let xr = x[j].add(r * 32 + sc * per * 4);
                        let mut p = start;
                        for (k, wk) in w.iter().enumerate().take(per) {
                            let xs =
                                _mm512_set1_epi32(xr.add(4 * k).cast::<i32>().read_unaligned());
                            p = _mm512_dpbusd_epi32(p, xs, *wk);
                        }
                        let da = _mm512_set1_ps((*ds[j].add(r))[0]);
                        acc[j] = _mm512_fmadd_ps(
                            _mm512_cvtepi32_ps(p),
                            _mm512_mul_ps(scale, da),
                            acc[j],
                        );
                    }
                }
                if MIN {
                    let m = _mm512_loadu_ps(g.add(512 + 2 * S * 64).cast());
                    for j in 0..T {
                        acc[j] = _mm512_fmadd_ps(m, _mm512_set1_ps((*ds[j].add(r))[1]), acc[j]);
                    }
                }
            }
        }
        acc
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx512vnni,avx2,fma")]
    unsafe fn store(out: *mut f32, valid: usize, acc: __m512) {
        unsafe { _mm512_mask_storeu_ps(out, ((1u32 << valid) - 1) as u16, acc) }
    }
}

/// The transpose of 16 × 16 32-bit words: lane `i` of vector `k` is lane `k` of vector `i`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx512vnni,avx2,fma")]
fn transpose(a: [__m512i; 16]) -> [__m512i; 16] {
    // Within each 128-bit lane: words, then pairs of words, from 2 and then 4 rows.
    let mut t = a;
    for i in 0..8 {
        t[2 * i] = _mm512_unpacklo_epi32(a[2 * i], a[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_epi32(a[2 * i], a[2 * i + 1]);
    }
    // u[4b + c], 128-bit lane l: word 4l + c of rows 4b..4b + 4.
    let mut u = t;
    for b in 0..4 {
        u[4 * b] = _mm512_unpacklo_epi64(t[4 * b], t[4 * b + 2]);
        u[4 * b + 1] = _mm512_unpackhi_epi64(t[4 * b], t[4 * b + 2]);
        u[4 * b + 2] = _mm512_unpacklo_epi64(t[4 * b + 1], t[4 * b + 3]);
        u[4 * b + 3] = _mm512_unpackhi_epi64(t[4 * b + 1], t[4 * b + 3]);
    }
    // Then the 128-bit lanes: word 4l + c of all rows is lane l of u[c], u[4 + c], u[8 + c],
    // u[12 + c].
    let mut out = u;
    for c in 0..4 {
        let v0 = _mm512_shuffle_i32x4::<0b10_00_10_00>(u[c], u[4 + c]);
        let v1 = _mm512_shuffle_i32x4::<0b11_01_11_01>(u[c], u[4 + c]);
        let w0 = _mm512_shuffle_i32x4::<0b10_00_10_00>(u[8 + c], u[12 + c]);
        let w1 = _mm512_shuffle_i32x4::<0b11_01_11_01>(u[8 + c], u[12 + c]);
        out[c] = _mm512_shuffle_i32x4::<0b10_00_10_00>(v0, w0);
        out[8 + c] = _mm512_shuffle_i32x4::<0b11_01_11_01>(v0, w0);
        out[4 + c] = _mm512_shuffle_i32x4::<0b10_00_10_00>(v1, w1);
        out[12 + c] = _mm512_shuffle_i32x4::<0b11_01_11_01>(v1, w1);
    }
    out
}
