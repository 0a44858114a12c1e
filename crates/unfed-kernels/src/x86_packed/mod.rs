//! Long batches with rows in lanes: a group of rows is unpacked once per product into signed
//! bytes interleaved by four (lane `i` of vector `k` holds row `i`'s weights `4k..4k+4` of a
//! run), so one integer dot product multiplies a whole group by four of a token's activations,
//! broadcast. A run's float work — converting its integer sum, scaling, adding — is then one
//! instruction per group instead of one per row, and results need no horizontal sums.
//!
//! Two layouts: [`Wide`], 16 rows per 512-bit vector with `vpdpbusd` (full AVX-512), and
//! [`Narrow`], 8 rows per 256-bit vector with `vpmaddubsw` + `vpmaddwd` (AVX2; not Q8_0, whose
//! products would saturate 16-bit pair sums). Both multiply unsigned by signed bytes: the
//! activations enter as `q + 128`, and each (row, scale) starts from `-128 × Σ w`, computed when
//! the rows are unpacked, so the integer sums are exact.

use std::cell::Cell;
use std::ops::Range;

use crate::QuantType;
use crate::act::ActBlock;

mod narrow;
mod wide;

pub(crate) use narrow::Narrow;
pub(crate) use wide::Wide;

/// A layout of unpacked rows and the kernels that read it.
pub(crate) trait Lanes {
    /// Rows unpacked and multiplied together (one per 32-bit lane).
    const GROUP: usize;
    /// The vector of one token's results for a group.
    type Acc: Copy;
    /// Whether weights of `ty` take this path.
    fn takes(ty: QuantType) -> bool;
    /// Bytes of a group's unpacked runs.
    fn group_bytes(ty: QuantType, runs: usize) -> usize;
    /// Unpacks `rows` (at most `GROUP`; missing rows are zeros), `runs` runs of `ty`, into `out`.
    ///
    /// # Safety
    /// The CPU has the layout's features and every row holds `runs` runs of `ty`.
    unsafe fn pack(ty: QuantType, rows: &[&[u8]], runs: usize, out: &mut [u8]);
    /// A group unpacked by `pack` against `T` tokens (their values and (scale, sum) per run),
    /// `runs` runs with `S` scales each; with `MIN`, the weights' minimums times the sums.
    ///
    /// # Safety
    /// The CPU has the layout's features; `group` holds `runs` runs unpacked, each token as many.
    unsafe fn kernel<const T: usize, const S: usize, const MIN: bool>(
        group: *const u8,
        x: [*const u8; T],
        ds: [*const [f32; 2]; T],
        runs: usize,
    ) -> [Self::Acc; T];
    /// Stores the first `valid` results of `acc` at `out`.
    ///
    /// # Safety
    /// The CPU has the layout's features; `out` has room for `valid` values.
    unsafe fn store(out: *mut f32, valid: usize, acc: Self::Acc);
}

/// Tokens one pass over a group's runs multiplies (its accumulators stay in registers).
const TOKENS: usize = 8;

/// Scales per run of 32 weights: Q6_K has one per 16.
fn scales(ty: QuantType) -> usize {
    if ty == QuantType::Q6K { 2 } else { 1 }
}

/// Bytes of one run of a group of `lanes` rows: 8 vectors of weights, then per scale the
/// starting sums and the scales, then the factors of the activation sum (the weights'
/// minimums, or zero).
const fn run_bytes(lanes: usize, scales: usize) -> usize {
    4 * lanes * (8 + scales * 2 + 1)
}

/// A batch's activations as the packed kernels read them: per token and run, the 32 values as
/// unsigned bytes (`q + 128`), and the run's scale and sum.
#[derive(Default)]
pub(crate) struct BatchActs {
    x: Vec<u8>,
    ds: Vec<[f32; 2]>,
    tokens: usize,
    runs: usize,
}

impl BatchActs {
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

/// Rows `rows` of a matrix of `ty` (`row(r)`: row `r`'s bytes) against every token of `acts`,
/// group by group in layout `L`; token `t`'s result for row `r` goes to `y[t * stride + r]`.
///
/// # Safety
/// The CPU has `L`'s features and `L` takes `ty`; every row holds `acts`' runs (an even number)
/// of `ty`; `y` has room for every token's `stride` values, `rows` among them.
pub(crate) unsafe fn product<'a, L: Lanes>(
    ty: QuantType,
    row: impl Fn(usize) -> &'a [u8],
    rows: Range<usize>,
    acts: &BatchActs,
    y: *mut f32,
    stride: usize,
) {
    let mut group = PACKED.take();
    group.resize(L::group_bytes(ty, acts.runs), 0);
    for first in rows.clone().step_by(L::GROUP) {
        let valid = (rows.end - first).min(L::GROUP);
        let bytes: [&[u8]; 16] =
            std::array::from_fn(|i| if i < valid { row(first + i) } else { &[] });
        // SAFETY: the caller's promises.
        unsafe { L::pack(ty, &bytes[..valid], acts.runs, &mut group) };
        let mut t0 = 0;
        while t0 < acts.tokens {
            let n = (acts.tokens - t0).min(TOKENS);
            macro_rules! go {
                ($t:literal) => {{
                    let out = std::array::from_fn(|j| y.wrapping_add((t0 + j) * stride + first));
                    // SAFETY: the caller's promises; `group` holds these rows unpacked, and
                    // each token's outputs have room for them.
                    unsafe { multiply::<L, $t>(ty, &group, acts, t0, valid, out) }
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

/// One unpacked group (the first `valid` rows real) against tokens `t0..t0 + T` of `acts`: token
/// `t0 + j`'s results go to `out[j][..valid]`.
///
/// # Safety
/// The CPU has `L`'s features; `group` was unpacked by `L::pack` for `ty` and `acts`' runs; each
/// `out[j]` has room for `valid` values.
unsafe fn multiply<L: Lanes, const T: usize>(
    ty: QuantType,
    group: &[u8],
    acts: &BatchActs,
    t0: usize,
    valid: usize,
    out: [*mut f32; T],
) {
    debug_assert!(valid <= L::GROUP && group.len() == L::group_bytes(ty, acts.runs));
    let (g, runs) = (group.as_ptr(), acts.runs);
    let x = std::array::from_fn(|j| acts.x[(t0 + j) * runs * 32..].as_ptr());
    let ds = std::array::from_fn(|j| acts.ds[(t0 + j) * runs..].as_ptr());
    unsafe {
        let acc = match ty {
            QuantType::Q6K => L::kernel::<T, 2, false>(g, x, ds, runs),
            QuantType::Q4_1 | QuantType::Q4K => L::kernel::<T, 1, true>(g, x, ds, runs),
            _ => L::kernel::<T, 1, false>(g, x, ds, runs),
        };
        for (j, a) in acc.into_iter().enumerate() {
            L::store(out[j], valid, a);
        }
    }
}
