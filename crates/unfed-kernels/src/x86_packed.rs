//! Long batches with rows in lanes: a group of 16 weight rows is unpacked once per product into
//! signed bytes interleaved by four (lane `i` of vector `k` holds row `i`'s weights `4k..4k+4`
//! of a run), so one `vpdpbusd` multiplies 16 rows by four of a token's activations, broadcast.
//! A run's float work — converting its integer sum, scaling, adding — is then one instruction
//! for 16 rows instead of one per row, and results need no horizontal sums.
//!
//! `vpdpbusd` multiplies unsigned by signed bytes: the activations enter as `q + 128`, and each
//! (row, scale) starts from `-128 × Σ w`, computed when the rows are unpacked, so the integer
//! sums are exact.

use std::arch::x86_64::*;
use std::cell::Cell;
use std::ops::Range;

use crate::QuantType;
use crate::act::ActBlock;
use crate::x86_wide::{pair_q4_0, pair_q4_1, pair_q4k, pair_q5_0, pair_q6k, pair_q8_0};

/// Rows unpacked and multiplied together (one per 32-bit lane).
pub(crate) const GROUP: usize = 16;

/// Tokens one pass over a group's runs multiplies (its accumulators stay in registers).
const TOKENS: usize = 8;

/// Bytes of a group's unpacked runs of `ty`.
fn group_bytes(ty: QuantType, runs: usize) -> usize {
    runs * run_bytes(scales(ty))
}

/// Scales per run of 32 weights: Q6_K has one per 16.
fn scales(ty: QuantType) -> usize {
    if ty == QuantType::Q6K { 2 } else { 1 }
}

/// Bytes of one run of a group: 8 vectors of weights, then per scale the starting sums and the
/// scales, then the factors of the activation sum (the weights' minimums, or zero).
const fn run_bytes(scales: usize) -> usize {
    8 * 64 + scales * 2 * 64 + 64
}

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

/// Unpacks `rows.len()` (≤ [`GROUP`]) rows of `runs` (even) runs of `ty` into `out`
/// ([`group_bytes`]); missing rows are zeros.
///
/// # Safety
/// The CPU has the wide kernels' features (`x86_wide::available`) and every row holds `runs`
/// runs of `ty`.
#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx512vnni,avx2,fma")]
unsafe fn pack_group(ty: QuantType, rows: &[&[u8]], runs: usize, out: &mut [u8]) {
    assert!(rows.len() <= GROUP && out.len() == group_bytes(ty, runs));
    let (s, run_len) = (scales(ty), run_bytes(scales(ty)));
    let per = 8 / s;
    let bias = _mm512_set1_epi8(bias(ty) as i8);
    let ones = _mm512_set1_epi8(1);
    for r in (0..runs).step_by(2) {
        let (mut w, mut d) = (
            [_mm512_setzero_si512(); GROUP],
            [_mm512_setzero_si512(); GROUP],
        );
        let mut m = [[0f32; GROUP]; 2];
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
                    let start = _mm512_sub_epi32(_mm512_setzero_si512(), _mm512_slli_epi32(sum, 7));
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

/// A batch's activations as the packed kernels read them: per token and run, the 32 values as
/// unsigned bytes (`q + 128`), and the run's scale and sum.
#[derive(Default)]
pub(crate) struct WideActs {
    x: Vec<u8>,
    ds: Vec<[f32; 2]>,
    tokens: usize,
    runs: usize,
}

impl WideActs {
    /// Lays out rows of `runs` blocks each, reusing the allocations.
    pub(crate) fn fill(&mut self, acts: &[ActBlock], runs: usize) {
        (self.tokens, self.runs) = (acts.len() / runs, runs);
        self.x.resize(acts.len() * 32, 0);
        for (x, a) in self.x.chunks_exact_mut(32).zip(acts) {
            x.iter_mut().zip(a.q).for_each(|(x, q)| *x = q as u8 ^ 0x80);
        }
        self.ds.clear();
        self.ds.extend(acts.iter().map(|a| [a.d, a.s]));
    }
}

/// Rows `rows` of a matrix of `ty` (`row(r)`: row `r`'s bytes, `runs` runs) against every token
/// of `acts`, group by group; token `t`'s result for row `r` goes to `y[t * stride + r]`.
///
/// # Safety
/// The CPU has the wide kernels' features (`x86_wide::available`); every row holds `acts`' runs
/// (an even number) of `ty`; `y` has room for every token's `stride` values, `rows` among them.
pub(crate) unsafe fn product<'a>(
    ty: QuantType,
    row: impl Fn(usize) -> &'a [u8],
    rows: Range<usize>,
    acts: &WideActs,
    y: *mut f32,
    stride: usize,
) {
    let mut group = PACKED.take();
    group.resize(group_bytes(ty, acts.runs), 0);
    for first in rows.clone().step_by(GROUP) {
        let valid = (rows.end - first).min(GROUP);
        let bytes: [&[u8]; GROUP] =
            std::array::from_fn(|i| if i < valid { row(first + i) } else { &[] });
        // SAFETY: the caller's promises.
        unsafe { pack_group(ty, &bytes[..valid], acts.runs, &mut group) };
        let mut t0 = 0;
        while t0 < acts.tokens {
            let n = (acts.tokens - t0).min(TOKENS);
            macro_rules! go {
                ($t:literal) => {{
                    let out = std::array::from_fn(|j| y.wrapping_add((t0 + j) * stride + first));
                    // SAFETY: the caller's promises; `group` holds these rows unpacked, and
                    // each token's outputs have room for them.
                    unsafe { multiply::<$t>(ty, &group, acts, t0, valid, out) }
                }};
            }
            match n {
                8 => go!(8),
                7 => go!(7),
                6 => go!(6),
                5 => go!(5),
                4 => go!(4),
                3 => go!(3),
                2 => go!(2),
                _ => go!(1),
            }
            t0 += n;
        }
    }
    PACKED.set(group);
}

thread_local! {
    /// A pool thread's unpacked group of rows, reused between products.
    static PACKED: Cell<Vec<u8>> = const { Cell::new(Vec::new()) };
}

/// One group of rows (unpacked in `group`, the first `valid` of them real) against tokens
/// `t0..t0 + T`: token `t0 + j`'s results go to `out[j][..valid]`.
///
/// # Safety
/// The CPU has the wide kernels' features; `group` was unpacked by [`pack_group`] for `ty` and
/// `acts.runs` runs; each `out[j]` has room for `valid` values.
unsafe fn multiply<const T: usize>(
    ty: QuantType,
    group: &[u8],
    acts: &WideActs,
    t0: usize,
    valid: usize,
    out: [*mut f32; T],
) {
    debug_assert!(valid <= GROUP && group.len() == group_bytes(ty, acts.runs));
    let runs = acts.runs;
    let x: [*const u8; T] = std::array::from_fn(|j| acts.x[(t0 + j) * runs * 32..].as_ptr());
    let ds: [*const [f32; 2]; T] = std::array::from_fn(|j| acts.ds[(t0 + j) * runs..].as_ptr());
    let mask = ((1u32 << valid) - 1) as u16;
    let g = group.as_ptr();
    unsafe {
        let acc = match ty {
            QuantType::Q6K => kernel::<T, 2, false>(g, x, ds, runs),
            QuantType::Q4_1 | QuantType::Q4K => kernel::<T, 1, true>(g, x, ds, runs),
            _ => kernel::<T, 1, false>(g, x, ds, runs),
        };
        for (j, a) in acc.iter().enumerate() {
            store(out[j], mask, *a);
        }
    }
}

#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx512vnni,avx2,fma")]
unsafe fn store(out: *mut f32, mask: u16, v: __m512) {
    unsafe { _mm512_mask_storeu_ps(out, mask, v) }
}

/// One group's 16 rows against `T` tokens: `S` scales per run, and with `MIN` the weights'
/// minimums times the activation sums.
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
            let g = group.add(r * run_bytes(S));
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
                        let xs = _mm512_set1_epi32(xr.add(4 * k).cast::<i32>().read_unaligned());
                        p = _mm512_dpbusd_epi32(p, xs, *wk);
                    }
                    let da = _mm512_set1_ps((*ds[j].add(r))[0]);
                    acc[j] =
                        _mm512_fmadd_ps(_mm512_cvtepi32_ps(p), _mm512_mul_ps(scale, da), acc[j]);
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
