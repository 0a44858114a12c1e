//! The embedding lookup on shares: the tokens' shared one-hot rows times the public table,
//! computed locally by each party over the whole table (any lookup that hides the row from
//! the party doing it must touch every row). The work streams through the table once per
//! token, so the table is held as small as it exactly can be: in blocks of 32 columns, each
//! `offset + scale·q` with 8-bit `q`, which the weights of a quantized checkpoint always
//! allow, and at full width otherwise.

use crate::layer::Matrix;
use crate::ring::gcd;
use crate::{Ctx, MpcError};

/// Columns of a block that shares one scale and offset.
const BLOCK: usize = 32;

/// A public `[vocab][hidden]` embedding table in fixed point.
#[derive(Clone, Debug)]
pub struct Embedding {
    rows: usize,
    cols: usize,
    form: Form,
}

#[derive(Clone, Debug)]
enum Form {
    /// Per row and block a scale and an offset; per entry `q`: the entry is
    /// `offset + scale·q`.
    Blocks {
        scales: Vec<u32>,
        offsets: Vec<i32>,
        q: Vec<u8>,
    },
    /// Every entry at full width.
    Full(Matrix),
}

impl Embedding {
    /// `w` row-major `[rows][cols]`, encoded as [`Matrix::encode`] does.
    pub fn encode(w: &[f32], rows: usize, cols: usize) -> Result<Self, MpcError> {
        let full = Matrix::encode("token_embd", w, rows, cols, None, |_| 1.0)?;
        let form = blocks(full.data(), cols).unwrap_or(Form::Full(full));
        Ok(Self { rows, cols, form })
    }

    /// Whether the table is held in 8-bit blocks.
    pub fn compact(&self) -> bool {
        matches!(self.form, Form::Blocks { .. })
    }

    /// `onehot (t × rows) · table`: shares of the rows the one-hot rows select (local, exact).
    pub fn lookup(&self, onehot: &[u64], t: usize) -> Vec<u64> {
        let (rows, cols) = (self.rows, self.cols);
        debug_assert_eq!(onehot.len(), t * rows);
        let mut out = vec![0u64; t * cols];
        match &self.form {
            Form::Full(m) => {
                for r in 0..rows {
                    let w = &m.data()[r * cols..(r + 1) * cols];
                    for (i, o) in out.chunks_mut(cols).enumerate() {
                        let e = onehot[i * rows + r];
                        for (o, w) in o.iter_mut().zip(w) {
                            *o = o.wrapping_add(e.wrapping_mul(*w as i64 as u64));
                        }
                    }
                }
            }
            Form::Blocks { scales, offsets, q } => {
                let nb = cols.div_ceil(BLOCK);
                // Σ_r onehot_r·offset_rb, per token and block, added at the end.
                let mut sums = vec![0u64; t * nb];
                // The products' high halves, kept apart in 32 bits (see `add_scaled`).
                let mut high = vec![0u32; t * cols];
                let whole = cols / BLOCK * BLOCK;
                for r in 0..rows {
                    let q = &q[r * cols..(r + 1) * cols];
                    let (scales, offsets) = (&scales[r * nb..][..nb], &offsets[r * nb..][..nb]);
                    let rows_out = out.chunks_mut(cols).zip(high.chunks_mut(cols));
                    for (i, ((o, high), sums)) in rows_out.zip(sums.chunks_mut(nb)).enumerate() {
                        let e = onehot[i * rows + r];
                        for (sum, offset) in sums.iter_mut().zip(offsets) {
                            *sum = sum.wrapping_add(e.wrapping_mul(*offset as i64 as u64));
                        }
                        let (o, o_rest) = o.split_at_mut(whole);
                        let blocks = o.chunks_exact_mut(BLOCK).zip(high.chunks_exact_mut(BLOCK));
                        for (((o, h), q), scale) in blocks.zip(q.chunks_exact(BLOCK)).zip(scales) {
                            let o: &mut [u64; BLOCK] = o.try_into().expect("a block");
                            let h: &mut [u32; BLOCK] = h.try_into().expect("a block");
                            let q: &[u8; BLOCK] = q.try_into().expect("a block");
                            add_scaled(o, h, q, e.wrapping_mul(*scale as u64));
                        }
                        // A short last block (hidden sizes not a multiple of 32).
                        if let Some(scale) = scales.get(cols / BLOCK) {
                            let a = e.wrapping_mul(*scale as u64);
                            for (o, q) in o_rest.iter_mut().zip(&q[whole..]) {
                                *o = o.wrapping_add(a.wrapping_mul(*q as u64));
                            }
                        }
                    }
                }
                for ((o, high), sums) in out
                    .chunks_mut(cols)
                    .zip(high.chunks(cols))
                    .zip(sums.chunks(nb))
                {
                    for ((o, high), sum) in o.chunks_mut(BLOCK).zip(high.chunks(BLOCK)).zip(sums) {
                        for (v, h) in o.iter_mut().zip(high) {
                            *v = v.wrapping_add(*sum).wrapping_add((*h as u64) << 32);
                        }
                    }
                }
            }
        }
        out
    }
}

/// Shares of the one-hot rows of `tokens` (`t × vocab`), each from a DPF key the dealer gives
/// both parties ([`Ctx::one_hot`]): no token id and no one-hot row is ever sent. `tokens` is
/// read only at the dealer.
pub fn onehot_input(
    ctx: &mut Ctx,
    tokens: &[u32],
    t: usize,
    vocab: usize,
) -> Result<Vec<u64>, MpcError> {
    ctx.one_hot(t, vocab, || tokens.iter().map(|&tok| tok as u64).collect())
}

/// The table in 8-bit blocks, when every block is exactly `offset + scale·q`: the offset is
/// the block's minimum, the scale the greatest common divisor of the differences from it.
fn blocks(data: &[i32], cols: usize) -> Option<Form> {
    let (mut scales, mut offsets) = (Vec::new(), Vec::new());
    let mut q = Vec::with_capacity(data.len());
    for row in data.chunks(cols) {
        for block in row.chunks(BLOCK) {
            let min = *block.iter().min()?;
            let diff = |v: &i32| (*v as i64 - min as i64) as u64;
            let scale = block.iter().map(diff).fold(0, gcd).max(1);
            if block.iter().any(|v| diff(v) / scale > u8::MAX as u64) {
                return None;
            }
            scales.push(u32::try_from(scale).ok()?);
            offsets.push(min);
            q.extend(block.iter().map(|v| (diff(v) / scale) as u8));
        }
    }
    Some(Form::Blocks { scales, offsets, q })
}

/// `a·q` added over one whole block, in two halves: `low += a_low·q` (32 × 8 bits, one
/// widening multiply per lane) and `high += a_high·q` (32 bits, wrapping: only its low half
/// survives the shift into place), which together are `a·q` modulo 2^64 once `high` is added
/// in shifted by 32. A full 64-bit multiply per lane costs three of the widening kind. As
/// arrays, the loop's length is known and it compiles to straight vector code.
fn add_scaled(low: &mut [u64; BLOCK], high: &mut [u32; BLOCK], q: &[u8; BLOCK], a: u64) {
    let (a_low, a_high) = (a as u32 as u64, (a >> 32) as u32);
    for ((l, h), q) in low.iter_mut().zip(high.iter_mut()).zip(q) {
        *l = l.wrapping_add(a_low * *q as u64);
        *h = h.wrapping_add(a_high.wrapping_mul(*q as u32));
    }
}
