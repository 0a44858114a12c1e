//! The non-linear functions of a Llama/Qwen2 layer on shares: fixed-point products, row max,
//! exp, reciprocal, reciprocal square root, SiLU, softmax and RMSNorm. Nothing is
//! opened but the masked values of the building blocks in [`crate::ctx`]. Rounds are listed
//! per function; measured costs and error bounds are in `docs/mpc.md`.
//!
//! `bits` arguments bound the magnitude of compared values: `|x| < 2^(bits − FRAC)` as reals.

use crate::ring::{self, FRAC, encode, encode_at};
use std::sync::LazyLock;

use crate::{Ctx, LutTable, MpcError};

type R = Result<Vec<u64>, MpcError>;

/// Exp takes inputs above `−2^EXP_INPUT_LOG2`.
pub const EXP_INPUT_LOG2: u32 = 12;

/// How far above 0 exp's input may be: what an approximate row max leaves, up to
/// [`MAX_SLACK`] per tournament level for 16 levels.
pub const EXP_ABOVE: f64 = 0.5;

/// Fractional bits of the unit-range results of reciprocal and rsqrt (below 4 in magnitude):
/// the octave's scale factor applied after them (for rsqrt up to `c·2^−lo`) then magnifies a
/// rounding of 2^−28, not of 2^−22.
pub const WIDE: u32 = 28;

/// Fixed-point product (2 rounds).
pub fn mul(ctx: &mut Ctx, x: &[u64], y: &[u64]) -> R {
    let raw = ctx.mul_raw(x, y)?;
    ctx.trunc(&raw, FRAC)
}

/// Each row's value repeated `cols` times.
pub fn broadcast(per_row: &[u64], cols: usize) -> Vec<u64> {
    per_row
        .iter()
        .flat_map(|&v| std::iter::repeat_n(v, cols))
        .collect()
}

/// Sums of the rows of a `rows × cols` matrix (local).
pub fn row_sums(x: &[u64], cols: usize) -> Vec<u64> {
    x.chunks(cols)
        .map(|row| row.iter().fold(0u64, |a, b| a.wrapping_add(*b)))
        .collect()
}

/// An element of each row within `⌈log2 cols⌉·2^−MAX_SLACK` of the row's maximum (a
/// tournament: ⌈log2 cols⌉ levels of a comparison and its product, one round each). The
/// comparisons look at the bits above `2^−MAX_SLACK` only ([`Ctx::compare`]): a pick can be
/// wrong only between two values closer than that.
pub fn max_rows(ctx: &mut Ctx, x: &[u64], cols: usize, bits: u32) -> R {
    let rows = x.len() / cols;
    let mut cur = x.to_vec();
    let mut width = cols;
    while width > 1 {
        let half = width / 2;
        let (mut left, mut right) = (Vec::new(), Vec::new());
        for row in cur.chunks(width) {
            for j in 0..half {
                left.push(row[2 * j]);
                right.push(row[2 * j + 1]);
            }
        }
        // left − [left < right]·(left − right)
        let diff = ring::sub(&left, &right);
        let (_, lt_diff) = ctx.compare(&diff, &[0], bits + 1, FRAC - MAX_SLACK, true)?;
        let winners = ring::sub(&left, &lt_diff);
        let next_width = width.div_ceil(2);
        let mut next = Vec::with_capacity(rows * next_width);
        for (r, row) in cur.chunks(width).enumerate() {
            next.extend_from_slice(&winners[r * half..(r + 1) * half]);
            if width % 2 == 1 {
                next.push(row[width - 1]);
            }
        }
        cur = next;
        width = next_width;
    }
    Ok(cur)
}

/// Row maxima are within `2^−MAX_SLACK` per tournament level of the true maximum (rows of up
/// to 2^16 leave up to [`EXP_ABOVE`] for exp).
pub const MAX_SLACK: u32 = 5;

/// `exp(x)` for `−2^EXP_INPUT_LOG2 < x ≤ EXP_ABOVE` (3 rounds; slightly positive `x` is
/// what an approximate row max leaves), `bits ≤ FRAC + EXP_INPUT_LOG2` bounding `x` as in
/// [`Ctx::compare`]: `e^−t = e^−c · e^−d` for `t = −x`, with `c` the centre of `t`'s cell in
/// a table of cells of width 1/32 (looked up at the cell's shared index, which [`cells`] finds
/// locally) and `|d| ≤ 1/32`, `e^−d ≈ 1 − d + d²/2` (relative error ≤ 5.1e−6), the products of
/// `e^−c` with `d` and `d²` from the lookup ([`Ctx::lut_powers`], on `d` at [`EXP_OFFSET`]
/// bits), and one truncation. No comparison clamps `t`: the lookup's index covers its whole
/// range, and the table is 0 past its last cell (`t` ≈ 15.47, `e^−15.47` ≈ 1.9e−7, under a
/// unit in the last place), so only the cells up to there cost work.
pub fn exp_nonpositive(ctx: &mut Ctx, x: &[u64], bits: u32) -> R {
    debug_assert!(bits <= FRAC + EXP_INPUT_LOG2);
    let t = ring::scale(x, u64::MAX);
    let (idx, d) = cells(ctx, &t, EXP_STEP);
    static TABLE: LazyLock<LutTable> = LazyLock::new(|| {
        let entries = table_at(EXP_LOG2, EXP_STEP, FRAC, EXP_BELOW, |c| (-c).exp());
        // Indices from −EXP_BELOW to 2^(EXP_INPUT_LOG2 + EXP_STEP), each once.
        LutTable::window(&entries, EXP_BELOW as usize, EXP_INPUT_LOG2 + EXP_STEP + 1)
    });
    let d = coarse(&d, EXP_OFFSET);
    let [e, e_d, e_d2]: [Vec<u64>; 3] = ctx
        .lut_powers(&idx, &d, &[(&TABLE, 2)])?
        .remove(0)
        .try_into()
        .expect("three powers");
    // e·(d²/2 − d) at FRAC + 2·EXP_OFFSET + 1 bits, where e·d² (at one bit fewer) is
    // e·d²/2 and e·d (at FRAC + EXP_OFFSET) is scaled up.
    let raw = ring::sub(&e_d2, &ring::scale(&e_d, 1 << (EXP_OFFSET + 1)));
    let correction = ctx.trunc(&raw, 2 * EXP_OFFSET + 1)?;
    Ok(ring::add(&e, &correction))
}

/// Fractional bits of the offsets `d` that exp's series takes: at `FRAC + 2·20 + 1` bits
/// `e·d²/2` is below 2^52 and `e·d` below 2^59 (`e ≤ e^(1/2 + 1/32)`; under truncation's
/// 2^61), and the coarser `d` costs at most 2·2^−20 of `e·d`.
const EXP_OFFSET: u32 = 20;

/// The offsets `d` of [`cells`] at `frac ≤ FRAC` fractional bits (local, no round): each
/// party shifts its own share, and since [`cells`] leaves both shares small (in
/// `(−2^FRAC, 2^FRAC)`, without wrapping) their sum is `⌊d·2^(frac − FRAC)⌋` or one less.
fn coarse(d: &[u64], frac: u32) -> Vec<u64> {
    d.iter()
        .map(|v| ((*v as i64) >> (FRAC - frac)) as u64)
        .collect()
}

/// Cells of exp's table: 2^EXP_LOG2 of width 2^−EXP_STEP, the last EXP_BELOW standing for the
/// indices −17 … −1 (`t` down to one cell below −EXP_ABOVE); at every other index of its
/// domain exp's table is 0.
const EXP_LOG2: u32 = 9;
const EXP_STEP: u32 = 5;
const EXP_BELOW: i64 = 17;
/// Cells of SiLU's table: 2^SILU_LOG2 of width 2^−SILU_STEP, the last SILU_BELOW for the
/// indices −17 … −1 (`t` down to −1), looked up at an index of SILU_DOMAIN bits (0 at every
/// other index of that domain).
const SILU_LOG2: u32 = 8;
const SILU_STEP: u32 = 4;
const SILU_BELOW: i64 = 17;
const SILU_DOMAIN: u32 = 9;
/// Fractional bits of the offsets `d` SiLU's quadratic takes: `h″·d²/2` at
/// `FRAC + 2·19` bits is below 2^50 and `h′·d` scaled to it below 2^56, and the coarser `d`
/// costs at most 2·2^−19 of `h′·d`.
const SILU_OFFSET: u32 = 19;

/// For a shared `t` at [`FRAC`] bits (a negative `t` has a negative index, which a table
/// lookup takes modulo its size): the shared index `i` of its cell of width
/// `2^−step` and its offset `d` from that cell's centre, `t = (i + 1)·2^−step + d` exactly,
/// `|d| ≤ 2^−step` (local, no round). Each party splits its own share at bit `FRAC − step`:
/// the high parts add up to `⌊t·2^step⌋` or one less (the carry between the low parts),
/// plus a multiple of `2^(64 − FRAC + step)` that vanishes modulo any table size up to that,
/// and the low parts add up, without wrapping, to the rest.
fn cells(ctx: &Ctx, t: &[u64], step: u32) -> (Vec<u64>, Vec<u64>) {
    let k = FRAC - step;
    let idx = t.iter().map(|v| v >> k).collect();
    let mut d: Vec<u64> = t.iter().map(|v| v & ((1 << k) - 1)).collect();
    ctx.add_public(&mut d, (1u64 << k).wrapping_neg());
    (idx, d)
}

/// The table of `f` at the centres of the cells of [`cells`]: entry `i` holds
/// `f((i + 1)·2^−step)`, the last two `f(−2^−step)` and `f(0)` (the indices −2 and −1).
fn table(log2: u32, step: u32, f: impl Fn(f64) -> f64) -> Vec<u64> {
    table_at(log2, step, FRAC, 2, f)
}

/// [`table`] with its entries at `frac` fractional bits and its last `below` entries for the
/// indices `−below … −1`.
fn table_at(log2: u32, step: u32, frac: u32, below: i64, f: impl Fn(f64) -> f64) -> Vec<u64> {
    let size = 1i64 << log2;
    (0..size)
        .map(|i| {
            let i = if i >= size - below { i - size } else { i };
            encode_at(f((i + 1) as f64 * (-(step as f64)).exp2()), frac)
        })
        .collect()
}

/// Entries of the tables of [`unit_table`].
const UNIT_LOG2: u32 = 12;

/// What [`unit_table`] looks `f(m)` up in: cells of width `2^−step` of `m − 1/2`, the table of
/// `f` at [`WIDE`] fractional bits and that of `f′` at [`FRAC`].
struct UnitTables {
    step: u32,
    value: LutTable,
    slope: LutTable,
}

impl UnitTables {
    fn new(step: u32, f: impl Fn(f64) -> f64, df: impl Fn(f64) -> f64) -> Self {
        Self {
            step,
            value: LutTable::new(&table_at(UNIT_LOG2, step, WIDE, 2, |t| f(t + 0.5))),
            slope: LutTable::new(&table(UNIT_LOG2, step, |t| df(t + 0.5))),
        }
    }
}

/// `f(m)` for `m` (at [`FRAC`] bits) in `[1/2, 1/2 + 2^(UNIT_LOG2 − step)·0.999)`, returned
/// at [`WIDE`] fractional bits (3 rounds): the tangent at the centre of the cell of width
/// `2^−step` holding `m − 1/2`, `f(c) + f′(c)·d` with `|d| ≤ 2^−step`, from `f`'s and `f′`'s
/// tables looked up together; error ≤ `max|f″|·2^(−2·step)/2`.
fn unit_table(ctx: &mut Ctx, m: &[u64], tables: &UnitTables) -> R {
    let mut t = m.to_vec();
    ctx.add_public(&mut t, encode(-0.5));
    let (idx, d) = cells(ctx, &t, tables.step);
    let [value, slope]: [Vec<u64>; 2] = ctx
        .lut(&idx, &[&tables.value, &tables.slope])?
        .try_into()
        .expect("two tables");
    let raw = ctx.mul_raw(&slope, &d)?;
    let correction = ctx.trunc(&raw, 2 * FRAC - WIDE)?;
    Ok(ring::add(&value, &correction))
}

/// `1/m` for `m ∈ [1, 2]` (3 rounds), returned at [`WIDE`] fractional bits: the tangent at the
/// centre of `m`'s cell of width 2^−11 (cells of `m − 1/2` up to 1.999, so the `m` slightly
/// outside `[1, 2]` that approximate octaves leave are covered), error ≤ 2^−22.
pub fn recip_unit(ctx: &mut Ctx, m: &[u64]) -> R {
    static TABLES: LazyLock<UnitTables> =
        LazyLock::new(|| UnitTables::new(11, |m| 1.0 / m, |m| -1.0 / (m * m)));
    unit_table(ctx, m, &TABLES)
}

/// `1/x` for `x ∈ [1, 2^log2_max)` (7 rounds): the comparisons `x ≥ 2^j` and their products
/// with `x` (one round) select the octave and scale `x` into `[1, 2)`, [`recip_unit`], and
/// the result is scaled back.
pub fn recip(ctx: &mut Ctx, x: &[u64], log2_max: u32) -> R {
    let [onehot, times_x] = octaves(ctx, x, FRAC, 2.0, 0, log2_max as usize, FRAC + log2_max + 1)?;
    let down: Vec<f64> = (0..log2_max).map(|j| (-(j as f64)).exp2()).collect();
    let m = scale_selected(ctx, &times_x, FRAC, &down, 2.0)?;
    let y = recip_unit(ctx, &m)?;
    scale_by(ctx, &y, WIDE, &onehot, &down, 1.1)
}

/// `c/√x` for `x ∈ [4^lo, 4^hi)` given at `x_frac` fractional bits (7 rounds): the
/// comparisons `x ≥ 4^j` and their products with `x` select the octave pair and scale `x`
/// into `[1, 4)`, `1/√m` is the tangent at the centre of `m`'s cell of width 2^−10 (error
/// ≤ 3.6e−7), scaled back by `c·2^−j`. Needs `x_frac + 2·hi ≤ 61` and `x_frac ≤ 39`.
pub fn rsqrt(ctx: &mut Ctx, x: &[u64], x_frac: u32, lo: i32, hi: i32, c: f64) -> R {
    let bits = (x_frac as i32 + 2 * hi + 1).max(x_frac as i32 + 1) as u32;
    let [onehot, times_x] = octaves(ctx, x, x_frac, 4.0, lo, (hi - lo) as usize, bits)?;
    let down: Vec<f64> = (lo..hi).map(|j| (-2.0 * j as f64).exp2()).collect();
    let m = scale_selected(ctx, &times_x, x_frac, &down, 4.0)?;
    static TABLES: LazyLock<UnitTables> =
        LazyLock::new(|| UnitTables::new(10, |m| 1.0 / m.sqrt(), |m| -0.5 / (m * m.sqrt())));
    let y = unit_table(ctx, &m, &TABLES)?;
    let up: Vec<f64> = (lo..hi).map(|j| c * (-(j as f64)).exp2()).collect();
    let product_max = c * (-(lo as f64)).exp2() * 1.1;
    scale_by(ctx, &y, WIDE, &onehot, &up, product_max)
}

/// Where SiLU's clamp is: beyond, `SiLU(x)` is taken as `ReLU(x)`.
pub const SILU_CLAMP: f64 = 15.8;

/// `SiLU(x) = x·σ(x) = ReLU(x) − h(|x|)`, `h(t) = t/(1 + e^t)` (4 rounds), for
/// `|x| < 2^(bits − FRAC)`, `bits ≥ FRAC + 5`: the comparisons of `x` with 0 and ±SILU_CLAMP
/// and their products with `x`, all in one round, give `ReLU(x)` and `t = min(|x|,
/// SILU_CLAMP)`; `h(t)` is the quadratic at the centre of `t`'s cell in a table of cells of
/// width 1/16, `h(c) + h′(c)·d + h″(c)/2·d²` (error ≤ max|h‴|·(1/16)³/6 ≈ 1.3e−5), `h` and the
/// products of `h′` with `d` and of `h″/2` with `d²` from one lookup ([`Ctx::lut_powers`], on
/// `d` at [`SILU_OFFSET`] bits), and one truncation.
///
/// The comparisons look only at the bits above one unit ([`Ctx::compare`]), so their DCF
/// keys are `bits − FRAC + 1` levels deep: within one of 0 a wrong sign gives `t = −|x|`, and
/// `ReLU(x) − h(t)` is `SiLU(x)` on both sides (`x − h(x) = −h(−x)`), with `t` above −1, which
/// the table covers; within one of the clamp either answer is past the table's last cell. The
/// table holds `h` for `t` from −1 to 14.94 (`h(14.94) < 4.9e−6`, the error of taking it as 0
/// beyond) and is 0 at the other indices of a 9-bit domain, which `t < SILU_CLAMP + 1` never
/// leaves, so each party walks its DPF key down to the 17 leaves over the table only.
pub fn silu(ctx: &mut Ctx, x: &[u64], bits: u32) -> R {
    let n = x.len();
    let clamp = encode(SILU_CLAMP);
    // [x < 0], [x < −clamp], [x < clamp], and each times x.
    let thresholds = [0, clamp.wrapping_neg(), clamp];
    let (below, products) = ctx.compare(x, &thresholds, bits + 1, FRAC, true)?;
    let (nx, mx, px) = (&products[..n], &products[n..2 * n], &products[2 * n..]);
    let relu = ring::sub(x, nx);
    // t = |x| inside the clamp, the clamp outside: p·x + m·x − 2n·x + clamp·(1 − p + m).
    let mut t = ring::sub(&ring::add(px, mx), &ring::scale(nx, 2));
    let outside = ring::sub(&below[n..2 * n], &below[2 * n..]);
    ring::add_assign(&mut t, &ring::scale(&outside, clamp));
    ctx.add_public(&mut t, clamp);
    let (idx, d) = cells(ctx, &t, SILU_STEP);
    static TABLES: LazyLock<[LutTable; 3]> = LazyLock::new(|| {
        let sigma = |t: f64| 1.0 / (1.0 + (-t).exp());
        // h = t·σ(−t), h′ = σ(−t) − t·σ(t)σ(−t), h″ = −σ(t)σ(−t)·(2 + t·(σ(−t) − σ(t))).
        let at = |f: &dyn Fn(f64) -> f64| {
            let entries = table_at(SILU_LOG2, SILU_STEP, FRAC, SILU_BELOW, f);
            LutTable::window(&entries, SILU_BELOW as usize, SILU_DOMAIN)
        };
        [
            at(&|t| t * sigma(-t)),
            at(&|t| sigma(-t) - t * sigma(-t) * sigma(t)),
            at(&|t| -sigma(t) * sigma(-t) * (2.0 + t * (sigma(-t) - sigma(t))) / 2.0),
        ]
    });
    let d = coarse(&d, SILU_OFFSET);
    let tables = [(&TABLES[0], 0), (&TABLES[1], 1), (&TABLES[2], 2)];
    let [h, slope, curve]: [Vec<Vec<u64>>; 3] = ctx
        .lut_powers(&idx, &d, &tables)?
        .try_into()
        .expect("three tables");
    // h′·d at FRAC + SILU_OFFSET bits, scaled to h″/2·d²'s FRAC + 2·SILU_OFFSET.
    let raw = ring::add(&ring::scale(&slope[1], 1 << SILU_OFFSET), &curve[2]);
    let correction = ctx.trunc(&raw, 2 * SILU_OFFSET)?;
    Ok(ring::sub(&relu, &ring::add(&h[0], &correction)))
}

/// Softmax of each row of a `rows × cols` matrix (masked entries, a public pattern, get
/// probability 0): the row max, `exp(x − max)`, the row sum's reciprocal, the product. Needs
/// `|x| < 2^(bits − FRAC − 1)`.
pub fn softmax_rows(
    ctx: &mut Ctx,
    x: &[u64],
    cols: usize,
    masked: Option<&[bool]>,
    bits: u32,
) -> R {
    let mut x = x.to_vec();
    if let Some(masked) = masked {
        // A masked entry takes a public value below every unmasked one: it never wins the max.
        let floor = encode(-(((bits - FRAC - 1) as f64).exp2()));
        let a = ctx.role() == Some(crate::Role::A);
        for (v, &m) in x.iter_mut().zip(masked) {
            if m {
                *v = if a { floor } else { 0 };
            }
        }
    }
    let max = max_rows(ctx, &x, cols, bits)?;
    let shifted = ring::sub(&x, &broadcast(&max, cols));
    let mut e = exp_nonpositive(ctx, &shifted, bits)?;
    if let Some(masked) = masked {
        e.iter_mut()
            .zip(masked)
            .filter(|(_, m)| **m)
            .for_each(|(v, _)| *v = 0);
    }
    let sums = row_sums(&e, cols);
    let log2_max = (usize::BITS - cols.leading_zeros()) + 1;
    let inv = recip(ctx, &sums, log2_max)?;
    let raw = ctx.mul_rows(&e, &inv)?;
    ctx.trunc(&raw, FRAC)
}

/// `1/rms(row)` for each row of a `rows × dim` matrix, `rms = √(mean(x²) + eps)`, for
/// `|x| < 2^(31 − FRAC)` and `mean(x²)·dim + eps·dim ∈ [4^lo, 4^hi)`, `hi ≤ 11` (9 rounds).
/// The squares keep [`SUM_FRAC`] fractional bits, so that small activations keep their
/// precision.
pub fn inv_rms(ctx: &mut Ctx, x: &[u64], dim: usize, eps: f64, lo: i32, hi: i32) -> R {
    let sq = ctx.square_raw(x)?;
    let mut sums = row_sums(&ctx.trunc(&sq, 2 * FRAC - SUM_FRAC)?, dim);
    ctx.add_public(&mut sums, encode_at(eps * dim as f64, SUM_FRAC));
    rsqrt(ctx, &sums, SUM_FRAC, lo, hi, (dim as f64).sqrt())
}

/// Fractional bits of the sums of squares RMSNorm takes the root of (as many as leave room for
/// rsqrt's scaling product under 2^62).
pub const SUM_FRAC: u32 = 58 - FRAC;

/// RMSNorm without its weight: `x / rms(row)` (11 rounds). The weight is public and is folded
/// into whatever public linear map follows.
pub fn rmsnorm(ctx: &mut Ctx, x: &[u64], dim: usize, eps: f64, lo: i32, hi: i32) -> R {
    let inv = inv_rms(ctx, x, dim, eps, lo, hi)?;
    let raw = ctx.mul_rows(x, &inv)?;
    ctx.trunc(&raw, FRAC)
}

/// For `x ∈ [base^lo, base^(lo+k))`: shares of the one-hot vector of the octave
/// `[base^(lo+j), base^(lo+j+1))` holding each element, as `k` vectors, and of their products
/// with `x` (one round: the `k − 1` comparisons `x < base^(lo+j)` of every element and their
/// products at once). The comparisons look at the bits above 2^−10 of the lowest boundary: an
/// element within that relative distance of a boundary may land in the octave beside it,
/// which the iterations that follow tolerate.
fn octaves(
    ctx: &mut Ctx,
    x: &[u64],
    x_frac: u32,
    base: f64,
    lo: i32,
    k: usize,
    bits: u32,
) -> Result<[Vec<Vec<u64>>; 2], MpcError> {
    let n = x.len();
    let thresholds: Vec<u64> = (1..k)
        .map(|j| encode_at(base.powi(lo + j as i32), x_frac))
        .collect();
    let lowest = x_frac as f64 + (lo + 1) as f64 * base.log2() - 10.0;
    let (below, times) = ctx.compare(x, &thresholds, bits, lowest.max(0.0) as u32, true)?;
    // below_j = [x < base^(lo+j)] (0 for j = 0, 1 for j = k); onehot_j = below_(j+1) − below_j,
    // and the same for the products with x.
    let differences = |all: &[u64], top: Vec<u64>| -> Vec<Vec<u64>> {
        let at = |j: usize| -> Vec<u64> {
            match j {
                0 => vec![0; n],
                j if j == k => top.clone(),
                j => all[(j - 1) * n..j * n].to_vec(),
            }
        };
        (0..k).map(|j| ring::sub(&at(j + 1), &at(j))).collect()
    };
    let mut one = vec![0; n];
    ctx.add_public(&mut one, 1);
    Ok([differences(&below, one), differences(&times, x.to_vec())])
}

/// `Σ_j values_j·products_j` for the products `onehot_j·x` of [`octaves`], `x` at `x_frac`
/// fractional bits, returned at `FRAC` (1 round, the truncation); the values are encoded with
/// as many extra fractional bits as the bound `|x · value| < product_max` leaves room for.
fn scale_selected(
    ctx: &mut Ctx,
    products: &[Vec<u64>],
    x_frac: u32,
    values: &[f64],
    product_max: f64,
) -> R {
    let extra = extra_bits(x_frac, product_max);
    let mut raw = vec![0u64; products[0].len()];
    for (p, v) in products.iter().zip(values) {
        ring::add_assign(&mut raw, &ring::scale(p, encode_at(*v, FRAC + extra)));
    }
    ctx.trunc(&raw, x_frac + extra)
}

/// Fractional bits a public factor can carry beyond `FRAC` in a product of magnitude below
/// `product_max` with a value at `x_frac` bits, under 2^61.
fn extra_bits(x_frac: u32, product_max: f64) -> u32 {
    let room = 61.0 - (x_frac + FRAC) as f64 - product_max.log2().ceil();
    room.clamp(0.0, FRAC as f64) as u32
}

/// `x · Σ_j onehot_j·values_j` for `x` at `x_frac` fractional bits, returned at `FRAC`
/// (2 rounds); the selected value is encoded with as many extra fractional bits as the bound
/// `|x · value| < product_max` leaves room for.
fn scale_by(
    ctx: &mut Ctx,
    x: &[u64],
    x_frac: u32,
    onehot: &[Vec<u64>],
    values: &[f64],
    product_max: f64,
) -> R {
    let extra = extra_bits(x_frac, product_max);
    let mut selected = vec![0u64; x.len()];
    for (hot, v) in onehot.iter().zip(values) {
        let c = encode_at(*v, FRAC + extra);
        ring::add_assign(&mut selected, &ring::scale(hot, c));
    }
    let raw = ctx.mul_raw(x, &selected)?;
    ctx.trunc(&raw, x_frac + extra)
}
