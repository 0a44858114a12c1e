//! A quantized weight matrix and its products with activations.

use std::cell::Cell;
use std::ops::Range;
use std::sync::Arc;

use crate::act::{ActBlock, quantize_rows};
use crate::formats::{QuantType, dequantize_row};
use crate::pool::Pool;
#[cfg(target_arch = "x86_64")]
use crate::x86_packed::{self, BatchActs, Lanes, Narrow, Wide};
use crate::{Isa, KernelError, portable};

/// Immutable bytes: owned, or a range of something shared (a memory-mapped file).
#[derive(Clone)]
pub struct Bytes {
    owner: Arc<dyn AsRef<[u8]> + Send + Sync>,
    range: Range<usize>,
}

impl Bytes {
    pub fn owned(bytes: Vec<u8>) -> Bytes {
        let range = 0..bytes.len();
        Bytes {
            owner: Arc::new(bytes),
            range,
        }
    }

    /// `range` of `owner`'s bytes; `None` if it lies outside them.
    pub fn shared(owner: Arc<dyn AsRef<[u8]> + Send + Sync>, range: Range<usize>) -> Option<Bytes> {
        let len = (*owner).as_ref().len();
        (range.start <= range.end && range.end <= len).then_some(Bytes { owner, range })
    }

    pub fn as_slice(&self) -> &[u8] {
        &(*self.owner).as_ref()[self.range.clone()]
    }
}

impl std::fmt::Debug for Bytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Bytes({} bytes)", self.range.len())
    }
}

/// A `rows × cols` matrix of quantized weights in GGUF layout (row-major, whole blocks per row).
#[derive(Debug, Clone)]
pub struct QMatrix {
    ty: QuantType,
    rows: usize,
    cols: usize,
    row_bytes: usize,
    data: Bytes,
}

impl QMatrix {
    pub fn new(ty: QuantType, rows: usize, cols: usize, data: Bytes) -> Result<Self, KernelError> {
        if cols == 0 || !cols.is_multiple_of(ty.block_len()) {
            return Err(KernelError::Columns {
                ty: ty.name(),
                cols,
                block: ty.block_len(),
            });
        }
        let row_bytes = cols / ty.block_len() * ty.block_bytes();
        let got = data.as_slice().len();
        if Some(got) != rows.checked_mul(row_bytes) {
            return Err(KernelError::Bytes {
                ty: ty.name(),
                rows,
                cols,
                want: rows.saturating_mul(row_bytes),
                got,
            });
        }
        Ok(QMatrix {
            ty,
            rows,
            cols,
            row_bytes,
            data,
        })
    }

    pub fn ty(&self) -> QuantType {
        self.ty
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Row `row` in f32 (`out`: `cols` values).
    pub fn dequantize_row(&self, row: usize, out: &mut [f32]) -> Result<(), KernelError> {
        if row >= self.rows {
            return Err(KernelError::Row {
                row,
                rows: self.rows,
            });
        }
        if out.len() != self.cols {
            return Err(KernelError::Output {
                got: out.len(),
                want: self.cols,
            });
        }
        dequantize_row(self.ty, self.row(row), out);
        Ok(())
    }

    /// `y = x Wᵀ` for `tokens` rows of `x` (`[tokens, cols]`), `y`: `[tokens, rows]`, on the
    /// global pool with the detected instruction set.
    pub fn matmul(&self, x: &[f32], tokens: usize, y: &mut [f32]) -> Result<(), KernelError> {
        matmul_many(
            &[self],
            x,
            tokens,
            &mut [y],
            crate::pool::global(),
            Isa::detect(),
        )
    }

    fn row(&self, r: usize) -> &[u8] {
        &self.data.as_slice()[r * self.row_bytes..][..self.row_bytes]
    }
}

/// The most matrices one [`matmul_many`] call takes.
pub const MAX_MATS: usize = 4;

/// `ys[i] = x Wᵢᵀ` for matrices sharing their column count (a layer's q/k/v, or gate/up): the
/// activations are quantized once and every row of every matrix is one job for the pool.
/// Each output value is computed by one thread in a fixed order, so results do not depend on
/// the thread count.
pub fn matmul_many(
    mats: &[&QMatrix],
    x: &[f32],
    tokens: usize,
    ys: &mut [&mut [f32]],
    pool: &Pool,
    isa: Isa,
) -> Result<(), KernelError> {
    let Some(cols) = mats.first().map(|m| m.cols) else {
        return Ok(());
    };
    if mats.len() > MAX_MATS || ys.len() != mats.len() {
        return Err(KernelError::Matrices {
            got: mats.len().max(ys.len()),
            max: MAX_MATS,
        });
    }
    // A caller may name an instruction set this CPU lacks; never run it.
    let isa = isa.min(Isa::best());
    if mats.iter().any(|m| m.cols != cols) || x.len() != tokens * cols {
        return Err(KernelError::Input {
            got: x.len(),
            tokens,
            cols,
        });
    }
    for (m, y) in mats.iter().zip(ys.iter()) {
        if y.len() != tokens * m.rows {
            return Err(KernelError::Output {
                got: y.len(),
                want: tokens * m.rows,
            });
        }
    }
    if tokens == 0 {
        return Ok(());
    }
    let mut acts = ACTS.take();
    quantize_rows(x, cols, &mut acts, pool);
    let runs = cols / 32;
    let total_rows: usize = mats.iter().map(|m| m.rows).sum();
    let packing = packing(isa, tokens, runs);
    let mut per_chunk = total_rows.div_ceil(pool.threads() * 8).max(4);
    #[cfg(target_arch = "x86_64")]
    let mut batch = BATCH.take();
    #[cfg(target_arch = "x86_64")]
    if packing.is_some() {
        // Whole groups of rows, so that only a matrix's last group is short.
        per_chunk = per_chunk.next_multiple_of(Wide::GROUP);
        batch.fill(&acts, runs);
    }
    let mut chunks = [0usize; MAX_MATS];
    let mut outs = [OutPtr(std::ptr::null_mut()); MAX_MATS];
    for (i, (m, y)) in mats.iter().zip(ys.iter_mut()).enumerate() {
        chunks[i] = m.rows.div_ceil(per_chunk);
        outs[i] = OutPtr(y.as_mut_ptr());
    }
    let acts_ref = &acts[..];
    #[cfg(target_arch = "x86_64")]
    let batch_ref = &batch;
    pool.run(chunks.iter().sum(), &|mut c| {
        let mut i = 0;
        while c >= chunks[i] {
            c -= chunks[i];
            i += 1;
        }
        let (mat, m) = (i, mats[i]);
        let rows = c * per_chunk..((c + 1) * per_chunk).min(m.rows);
        let act_row = |t: usize| &acts_ref[t * runs..(t + 1) * runs];
        if tokens == 1 {
            // One token: the weights stream through once; row kernels do that fastest.
            for r in rows {
                let v = row_dot(isa, m.ty, m.row(r), [act_row(0)], runs)[0];
                // SAFETY: rows are disjoint between chunks, and `ys` outlives the job.
                unsafe { *outs[mat].0.add(r) = v };
            }
            return;
        }
        #[cfg(target_arch = "x86_64")]
        {
            let (out, row) = (outs[mat].0, |r: usize| m.row(r));
            // SAFETY: `packing` checked the CPU, and each layout is used for the types it
            // takes; every row holds `runs` runs of its type, `batch` holds the activations of
            // every token, and `ys[mat]` is `tokens × m.rows` values of which this chunk alone
            // writes rows `rows`.
            match packing {
                Some(Packing::Wide) => {
                    return unsafe {
                        x86_packed::product::<Wide>(m.ty, row, rows, batch_ref, out, m.rows)
                    };
                }
                Some(Packing::Narrow) if Narrow::takes(m.ty) => {
                    return unsafe {
                        x86_packed::product::<Narrow>(m.ty, row, rows, batch_ref, out, m.rows)
                    };
                }
                _ => {}
            }
        }
        let mut t0 = 0;
        while t0 < tokens {
            let n = (tokens - t0).min(4);
            let mut r = rows.start;
            while r < rows.end {
                let tile = if rows.end - r >= 4 { 4 } else { 1 };
                let put = |i: usize, j: usize, v: f32| {
                    // SAFETY: (token, row) pairs are disjoint between chunks, and `ys` outlives
                    // the job.
                    unsafe { *outs[mat].0.add((t0 + j) * m.rows + r + i) = v };
                };
                macro_rules! go {
                    ($r:literal, $t:literal) => {{
                        let w: [&[u8]; $r] = std::array::from_fn(|i| m.row(r + i));
                        let a: [&[ActBlock]; $t] = std::array::from_fn(|j| act_row(t0 + j));
                        let out = tile_dot(isa, m.ty, w, a, runs);
                        for (i, row) in out.iter().enumerate() {
                            row.iter().enumerate().for_each(|(j, &v)| put(i, j, v));
                        }
                    }};
                }
                match (tile, n) {
                    (4, 4) => go!(4, 4),
                    (4, 3) => go!(4, 3),
                    (4, 2) => go!(4, 2),
                    (4, _) => go!(4, 1),
                    (_, 4) => go!(1, 4),
                    (_, 3) => go!(1, 3),
                    (_, 2) => go!(1, 2),
                    _ => go!(1, 1),
                }
                r += tile;
            }
            t0 += n;
        }
    });
    ACTS.set(acts);
    #[cfg(target_arch = "x86_64")]
    BATCH.set(batch);
    Ok(())
}

/// Products of at least this many tokens unpack each group of rows once and multiply it with
/// rows in lanes (`x86_packed`) rather than row by row.
const PACK_MIN_TOKENS: usize = 8;

/// The rows-in-lanes layout a product takes.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
#[derive(Clone, Copy)]
enum Packing {
    /// 16 rows per vector, on CPUs with the wide kernels.
    Wide,
    /// 8 rows per vector, on AVX2 (for the types it takes; the others keep the tiles).
    Narrow,
}

/// Which layout a product of `tokens` tokens over `runs` runs takes on `isa`, if any.
fn packing(isa: Isa, tokens: usize, runs: usize) -> Option<Packing> {
    #[cfg(target_arch = "x86_64")]
    if tokens >= PACK_MIN_TOKENS && runs.is_multiple_of(2) {
        return match isa {
            Isa::Avx512Vnni if crate::x86_wide::available() => Some(Packing::Wide),
            Isa::Avx512Vnni | Isa::Avx2 => Some(Packing::Narrow),
            Isa::Portable => None,
        };
    }
    let _ = (isa, tokens, runs);
    None
}

thread_local! {
    /// The calling thread's quantized activations, reused between products.
    static ACTS: Cell<Vec<ActBlock>> = const { Cell::new(Vec::new()) };
    /// The calling thread's activations laid out for `x86_packed`, reused between products.
    #[cfg(target_arch = "x86_64")]
    static BATCH: Cell<BatchActs> = Cell::new(BatchActs::default());
}

#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
// SAFETY: each job chunk writes a disjoint set of elements.
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

/// Calls the kernel for `ty` in module `$k`: `$k::q4_0(w, a, runs)` and so on.
#[cfg(target_arch = "x86_64")]
macro_rules! per_type {
    ($k:path, $ty:expr, $w:expr, $a:expr, $runs:expr) => {{
        use $k as k;
        match $ty {
            QuantType::Q4_0 => k::q4_0($w, $a, $runs),
            QuantType::Q4_1 => k::q4_1($w, $a, $runs),
            QuantType::Q5_0 => k::q5_0($w, $a, $runs),
            QuantType::Q8_0 => k::q8_0($w, $a, $runs),
            QuantType::Q4K => k::q4k($w, $a, $runs),
            QuantType::Q6K => k::q6k($w, $a, $runs),
        }
    }};
}

/// `R` weight rows against `T` token rows, on `isa`.
pub(crate) fn tile_dot<const R: usize, const T: usize>(
    isa: Isa,
    ty: QuantType,
    rows: [&[u8]; R],
    acts: [&[ActBlock]; T],
    runs: usize,
) -> [[f32; T]; R] {
    debug_assert!(acts.iter().all(|a| a.len() >= runs));
    debug_assert!(
        rows.iter()
            .all(|r| r.len() * ty.block_len() == runs * 32 * ty.block_bytes())
    );
    #[cfg(target_arch = "x86_64")]
    {
        let (w, a) = (rows.map(|r| r.as_ptr()), acts.map(|a| a.as_ptr()));
        // SAFETY: the CPU supports `isa` (`Isa::best` caps it; the wide kernels check their
        // own features), every row holds `runs` runs of `ty` and every activation row at least
        // `runs` blocks.
        unsafe {
            match isa {
                Isa::Avx512Vnni if runs.is_multiple_of(2) && crate::x86_wide::available() => {
                    return per_type!(crate::x86_wide, ty, w, a, runs);
                }
                Isa::Avx512Vnni => return per_type!(crate::x86::vnni::tile, ty, w, a, runs),
                Isa::Avx2 => return per_type!(crate::x86::avx2::tile, ty, w, a, runs),
                Isa::Portable => {}
            }
        }
    }
    rows.map(|row| portable::row_dot(ty, row, acts, runs))
}

/// One weight row against `T` token rows, on `isa`.
fn row_dot<const T: usize>(
    isa: Isa,
    ty: QuantType,
    row: &[u8],
    acts: [&[ActBlock]; T],
    runs: usize,
) -> [f32; T] {
    debug_assert!(acts.iter().all(|a| a.len() >= runs));
    #[cfg(target_arch = "x86_64")]
    {
        let (w, a) = (row.as_ptr(), acts.map(|a| a.as_ptr()));
        // SAFETY: as in `tile_dot`.
        unsafe {
            match isa {
                Isa::Avx512Vnni => return per_type!(crate::x86::vnni, ty, w, a, runs),
                Isa::Avx2 => return per_type!(crate::x86::avx2, ty, w, a, runs),
                Isa::Portable => {}
            }
        }
    }
    portable::row_dot(ty, row, acts, runs)
}
