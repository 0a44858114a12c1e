//! [`Narrow`]: 8 rows per 256-bit vector on AVX2, `vpmaddubsw` + `vpmaddwd`.

use std::arch::x86_64::*;

use super::{Lanes, run_bytes, scales};
use crate::QuantType;
use crate::x86::avx2::tile as loaders;

/// 8 rows per 256-bit vector, `vpmaddubsw` + `vpmaddwd` (AVX2 + FMA). Two activation quads'
/// 16-bit products are added before widening: with unsigned activations below 256 and weights
/// within ±32 (every type here but Q8_0) no sum leaves 16 bits.
pub(crate) struct Narrow;

impl Narrow {
    /// What is subtracted from each weight as the AVX2 loaders give it to make it signed.
    fn bias(ty: QuantType) -> u8 {
        match ty {
            QuantType::Q4_0 => 8,
            QuantType::Q5_0 => 16,
            _ => 0,
        }
    }
}

impl Lanes for Narrow {
    const GROUP: usize = 8;
    type Acc = __m256;

    fn takes(ty: QuantType) -> bool {
        ty != QuantType::Q8_0
    }

    fn group_bytes(ty: QuantType, runs: usize) -> usize {
        runs * run_bytes(8, scales(ty))
    }

    #[target_feature(enable = "avx2,fma")]
    unsafe fn pack(ty: QuantType, rows: &[&[u8]], runs: usize, out: &mut [u8]) {
        assert!(rows.len() <= 8 && Narrow::takes(ty) && out.len() == Narrow::group_bytes(ty, runs));
        let (s, run_len) = (scales(ty), run_bytes(8, scales(ty)));
        let per = 8 / s;
        let bias = _mm256_set1_epi8(Narrow::bias(ty) as i8);
        let (ones8, ones16) = (_mm256_set1_epi8(1), _mm256_set1_epi16(1));
        for r in 0..runs {
            let (mut w, mut d) = ([_mm256_setzero_si256(); 8], [_mm256_setzero_si256(); 8]);
            let mut m = [0f32; 8];
            for (i, row) in rows.iter().enumerate() {
                // SAFETY: the caller's promises.
                let (wi, di, mi) = unsafe {
                    match ty {
                        QuantType::Q4_0 => loaders::load_q4_0(row.as_ptr(), r),
                        QuantType::Q4_1 => loaders::load_q4_1(row.as_ptr(), r),
                        QuantType::Q5_0 => loaders::load_q5_0(row.as_ptr(), r),
                        QuantType::Q4K => loaders::load_q4k(row.as_ptr(), r),
                        QuantType::Q6K => loaders::load_q6k(row.as_ptr(), r),
                        QuantType::Q8_0 => unreachable!("Q8_0 does not take this path"),
                    }
                };
                (w[i], d[i], m[i]) = (_mm256_sub_epi8(wi, bias), _mm256_castps_si256(di), mi);
            }
            // Lane i of vector k: row i's 32-bit word k.
            let (w, d) = (transpose8(w), transpose8(d));
            let run = out[r * run_len..][..run_len].as_mut_ptr();
            // SAFETY: every store lies within this run's record of `out`.
            unsafe {
                for (k, wk) in w.iter().enumerate() {
                    _mm256_storeu_si256(run.add(k * 32).cast(), *wk);
                }
                for sc in 0..s {
                    let mut sum = _mm256_setzero_si256();
                    for wk in &w[sc * per..(sc + 1) * per] {
                        let quads = _mm256_madd_epi16(_mm256_maddubs_epi16(ones8, *wk), ones16);
                        sum = _mm256_add_epi32(sum, quads);
                    }
                    let start = _mm256_sub_epi32(_mm256_setzero_si256(), _mm256_slli_epi32(sum, 7));
                    _mm256_storeu_si256(run.add(256 + sc * 32).cast(), start);
                    _mm256_storeu_si256(run.add(256 + (s + sc) * 32).cast(), d[sc * per]);
                }
                _mm256_storeu_ps(
                    run.add(256 + 2 * s * 32).cast(),
                    _mm256_loadu_ps(m.as_ptr()),
                );
            }
        }
    }

    #[target_feature(enable = "avx2,fma")]
    unsafe fn kernel<const T: usize, const S: usize, const MIN: bool>(
        group: *const u8,
        x: [*const u8; T],
        ds: [*const [f32; 2]; T],
        runs: usize,
    ) -> [__m256; T] {
        let mut acc = [_mm256_setzero_ps(); T];
        let per = 8 / S;
        let ones16 = _mm256_set1_epi16(1);
        for r in 0..runs {
            unsafe {
                let g = group.add(r * run_bytes(8, S));
                for sc in 0..S {
                    let start = _mm256_loadu_si256(g.add(256 + sc * 32).cast());
                    let scale = _mm256_loadu_ps(g.add(256 + (S + sc) * 32).cast());
                    for j in 0..T {
                        let xr = x[j].add(r * 32 + sc * per * 4);
                        let mut p = start;
                        for k in (0..per).step_by(2) {
                            let xs = xr.add(4 * k).cast::<[i32; 2]>().read_unaligned();
                            let w0 = _mm256_loadu_si256(g.add((sc * per + k) * 32).cast());
                            let w1 = _mm256_loadu_si256(g.add((sc * per + k + 1) * 32).cast());
                            let pairs = _mm256_add_epi16(
                                _mm256_maddubs_epi16(_mm256_set1_epi32(xs[0]), w0),
                                _mm256_maddubs_epi16(_mm256_set1_epi32(xs[1]), w1),
                            );
                            p = _mm256_add_epi32(p, _mm256_madd_epi16(pairs, ones16));
                        }
                        let da = _mm256_set1_ps((*ds[j].add(r))[0]);
                        acc[j] = _mm256_fmadd_ps(
                            _mm256_cvtepi32_ps(p),
                            _mm256_mul_ps(scale, da),
                            acc[j],
                        );
                    }
                }
                if MIN {
                    let m = _mm256_loadu_ps(g.add(256 + 2 * S * 32).cast());
                    for j in 0..T {
                        acc[j] = _mm256_fmadd_ps(m, _mm256_set1_ps((*ds[j].add(r))[1]), acc[j]);
                    }
                }
            }
        }
        acc
    }

    #[target_feature(enable = "avx2,fma")]
    unsafe fn store(out: *mut f32, valid: usize, acc: __m256) {
        let mask = _mm256_cmpgt_epi32(
            _mm256_set1_epi32(valid as i32),
            _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
        );
        unsafe { _mm256_maskstore_ps(out, mask, acc) }
    }
}

/// The transpose of 8 × 8 32-bit words: lane `i` of vector `k` is lane `k` of vector `i`.
#[inline]
#[target_feature(enable = "avx2,fma")]
fn transpose8(a: [__m256i; 8]) -> [__m256i; 8] {
    // Within each 128-bit lane: words of 2 rows, then pairs of words of 4 rows.
    let mut t = a;
    for i in 0..4 {
        t[2 * i] = _mm256_unpacklo_epi32(a[2 * i], a[2 * i + 1]);
        t[2 * i + 1] = _mm256_unpackhi_epi32(a[2 * i], a[2 * i + 1]);
    }
    // u[4b + c], 128-bit lane l: word 4l + c of rows 4b..4b + 4.
    let mut u = t;
    for b in 0..2 {
        u[4 * b] = _mm256_unpacklo_epi64(t[4 * b], t[4 * b + 2]);
        u[4 * b + 1] = _mm256_unpackhi_epi64(t[4 * b], t[4 * b + 2]);
        u[4 * b + 2] = _mm256_unpacklo_epi64(t[4 * b + 1], t[4 * b + 3]);
        u[4 * b + 3] = _mm256_unpackhi_epi64(t[4 * b + 1], t[4 * b + 3]);
    }
    // Word c of all rows: lane 0 of u[c] and of u[4 + c]; word 4 + c: their lanes 1.
    let mut out = u;
    for c in 0..4 {
        out[c] = _mm256_permute2x128_si256::<0x20>(u[c], u[4 + c]);
        out[4 + c] = _mm256_permute2x128_si256::<0x31>(u[c], u[4 + c]);
    }
    out
}
