//! Long batches on the wide kernels (`x86_wide`), with their operands laid out once per product:
//! a block of weight rows unpacked into [`PACKED_PAIR`]-byte records (what a pair loader
//! returns), so each weight is unpacked once per product rather than once per four tokens, and
//! the tokens' activations as [`WideActs`], so a tile loads each token's run pair and four
//! tokens' sums whole. The `packed*` kernels compute exactly what the in-place ones do.

use std::arch::x86_64::*;

use crate::QuantType;
use crate::act::ActBlock;
use crate::x86_wide::{
    Pair, TokensPair, pair_q4_0, pair_q4_1, pair_q4k, pair_q5_0, pair_q6k, pair_q8_0, wide_kernel,
};

/// Bytes of one row's unpacked run pair: 64 weight bytes, 16 scales, and the two runs' factors
/// of the activation sum.
pub(crate) const PACKED_PAIR: usize = 64 + 64 + 8;

/// Unpacks `runs` (even) runs of `ty` from `row` into `out` (`runs / 2 * PACKED_PAIR` bytes).
///
/// # Safety
/// The CPU has the wide kernels' features (`x86_wide::available`), `row` holds `runs` runs of
/// `ty` and `out` has room for them.
#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx512vnni,avx2,fma")]
pub(crate) unsafe fn pack_row(ty: QuantType, row: *const u8, runs: usize, out: *mut u8) {
    macro_rules! pack {
        ($pair:ident) => {
            for r in (0..runs).step_by(2) {
                unsafe {
                    let (w, dv, m0, m1) = $pair(row, r);
                    let o = out.add(r / 2 * PACKED_PAIR);
                    _mm512_storeu_si512(o.cast(), w);
                    _mm512_storeu_ps(o.add(64).cast(), dv);
                    o.add(128).cast::<[f32; 2]>().write_unaligned([m0, m1]);
                }
            }
        };
    }
    match ty {
        QuantType::Q4_0 => pack!(pair_q4_0),
        QuantType::Q4_1 => pack!(pair_q4_1),
        QuantType::Q5_0 => pack!(pair_q5_0),
        QuantType::Q8_0 => pack!(pair_q8_0),
        QuantType::Q4K => pack!(pair_q4k),
        QuantType::Q6K => pack!(pair_q6k),
    }
}

/// A batch's activations as the packed kernels read them: per token, each run pair's 64 values
/// and 16 scales; per run, every token's sum side by side (four tokens' sums are one load),
/// followed by three zeros.
#[derive(Default)]
pub(crate) struct WideActs {
    pairs: Vec<WidePair>,
    sums: Vec<f32>,
    tokens: usize,
    runs: usize,
}

/// Two runs of one token: values as the wide kernels multiply them, each run's scale 8 times.
#[repr(C, align(64))]
#[derive(Clone, Copy)]
struct WidePair {
    x: [i8; 64],
    d: [f32; 16],
}

/// Tokens `t0..t0 + T` of [`WideActs`], where a tile reads them.
pub(crate) struct WideTile<const T: usize> {
    pairs: [*const WidePair; T],
    sums: *const f32,
    stride: usize,
}

impl WideActs {
    /// Lays out `tokens` rows of `runs` (even) blocks each, reusing the allocations.
    pub(crate) fn fill(&mut self, acts: &[ActBlock], tokens: usize, runs: usize) {
        let zero = WidePair {
            x: [0; 64],
            d: [0.0; 16],
        };
        let stride = tokens + 3;
        (self.tokens, self.runs) = (tokens, runs);
        self.pairs.clear();
        self.pairs.resize(tokens * runs / 2, zero);
        self.sums.clear();
        self.sums.resize(runs * stride, 0.0);
        for (t, row) in acts.chunks_exact(runs).take(tokens).enumerate() {
            for (p, two) in row.chunks_exact(2).enumerate() {
                let w = &mut self.pairs[t * runs / 2 + p];
                w.x[..32].copy_from_slice(&two[0].q);
                w.x[32..].copy_from_slice(&two[1].q);
                w.d[..8].fill(two[0].d);
                w.d[8..].fill(two[1].d);
            }
            for (r, a) in row.iter().enumerate() {
                self.sums[r * stride + t] = a.s;
            }
        }
    }

    /// Tokens `t0..t0 + T` (all within the batch).
    pub(crate) fn tile<const T: usize>(&self, t0: usize) -> WideTile<T> {
        assert!(t0 + T <= self.tokens);
        let per_token = self.runs / 2;
        WideTile {
            pairs: std::array::from_fn(|j| self.pairs[(t0 + j) * per_token..].as_ptr()),
            sums: self.sums[t0..].as_ptr(),
            stride: self.tokens + 3,
        }
    }
}

/// The packed kernel for `ty`: its weights' bias as unsigned bytes picks it.
///
/// # Safety
/// As [`pack_row`]; every row is `runs` runs packed by it, and `acts` has as many.
pub(crate) unsafe fn packed<const R: usize, const T: usize>(
    ty: QuantType,
    rows: [*const u8; R],
    acts: WideTile<T>,
    runs: usize,
) -> [[f32; T]; R] {
    unsafe {
        match ty {
            QuantType::Q8_0 => packed128(rows, acts, runs),
            QuantType::Q6K => packed32(rows, acts, runs),
            _ => packed0(rows, acts, runs),
        }
    }
}

#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx512vnni,avx2,fma")]
unsafe fn pair_packed(row: *const u8, r: usize) -> Pair {
    unsafe {
        let p = row.add(r / 2 * PACKED_PAIR);
        let [m0, m1] = p.add(128).cast::<[f32; 2]>().read_unaligned();
        (
            _mm512_loadu_si512(p.cast()),
            _mm512_loadu_ps(p.add(64).cast()),
            m0,
            m1,
        )
    }
}

#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx512vnni,avx2,fma")]
unsafe fn tokens_packed<const T: usize>(acts: &WideTile<T>, r: usize) -> TokensPair<T> {
    let mut x = [_mm512_setzero_si512(); T];
    let mut da = [_mm512_setzero_ps(); T];
    unsafe {
        for j in 0..T {
            let p = &*acts.pairs[j].add(r / 2);
            x[j] = _mm512_load_si512(p.x.as_ptr().cast());
            da[j] = _mm512_load_ps(p.d.as_ptr());
        }
        let s0 = _mm_loadu_ps(acts.sums.add(r * acts.stride));
        let s1 = _mm_loadu_ps(acts.sums.add((r + 1) * acts.stride));
        (x, da, s0, s1)
    }
}

wide_kernel!(packed0, pair_packed, 0, WideTile<T>, tokens_packed);
wide_kernel!(packed32, pair_packed, 32, WideTile<T>, tokens_packed);
wide_kernel!(packed128, pair_packed, 128, WideTile<T>, tokens_packed);
