//! The embedding lookup on shares: the tokens' shared one-hot rows times the public table,
//! computed locally by each party over the whole table (any lookup that hides the row from
//! the party doing it must touch every row). The work streams through the table once per
//! token, so the table is held as small as it exactly can be: in blocks of 32 columns, each
//! `offset + scale·q` with 8-bit `q`, which the weights of a quantized checkpoint always
//! allow — with no offsets at all where every block is `scale·(q − 128)`, as a checkpoint in
//! 8-bit blocks without minimums (Q8_0) has it — and at full width otherwise. For a table in
//! blocks the pass over the table computes the selected row's `q` modulo 2^16 (`pairs`) and
//! its scales and offsets at full width, and one round ([`finish`]) lifts `q` to full width
//! and multiplies it by its scale.

mod pairs;

use pairs::BLOCK;

use crate::layer::Matrix;
use crate::ring::{self, gcd};
use crate::{Ctx, MpcError};

/// A public `[vocab][hidden]` embedding table in fixed point.
#[derive(Clone, Debug)]
pub struct Embedding {
    rows: usize,
    cols: usize,
    form: Form,
}

#[derive(Clone, Debug)]
enum Form {
    /// Per row and block a scale and, unless `centred`, an offset (each row's scales, then its
    /// offsets, whose 32 bits are an `i32`; row by row, so that one pass over the one-hot rows
    /// sums them all), per entry `q` (in the order of [`pairs::interleave`]): the entry is
    /// `offset + scale·q`, and where `centred` the offset is `−128·scale`.
    Blocks {
        per_row: Vec<u32>,
        centred: bool,
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

    /// Whether the table is held in 8-bit blocks without offsets (`scale·(q − 128)`).
    pub fn centred(&self) -> bool {
        matches!(self.form, Form::Blocks { centred: true, .. })
    }

    /// The local part of `onehot (t × rows) · table` (exact), which [`finish`] completes.
    pub fn lookup(&self, onehot: &[u64], t: usize) -> Lookup {
        let (rows, cols) = (self.rows, self.cols);
        debug_assert_eq!(onehot.len(), t * rows);
        let mut out = Lookup::zeros(t, cols);
        match &self.form {
            Form::Full(m) => {
                for r in 0..rows {
                    let w = &m.data()[r * cols..(r + 1) * cols];
                    for (i, o) in out.base.chunks_mut(cols).enumerate() {
                        let e = onehot[i * rows + r];
                        for (o, w) in o.iter_mut().zip(w) {
                            *o = o.wrapping_add(e.wrapping_mul(*w as i64 as u64));
                        }
                    }
                }
            }
            Form::Blocks {
                per_row,
                centred,
                q,
            } => {
                let nb = cols.div_ceil(BLOCK);
                let stride = if *centred { nb } else { 2 * nb };
                let tokens = onehot.chunks(rows).zip(out.q.chunks_mut(cols));
                let mut sums = vec![0u64; 2 * nb];
                for (i, (onehot, q_out)) in tokens.enumerate() {
                    pairs::product16(onehot, q, q_out);
                    // Σ_r onehot_r·scale_rb and Σ_r onehot_r·offset_rb, every block in one pass.
                    sums.fill(0);
                    for (e, row) in onehot.iter().zip(per_row.chunks_exact(stride)) {
                        let (scales, offsets) = row.split_at(nb);
                        let (s, o) = sums.split_at_mut(nb);
                        for (s, v) in s.iter_mut().zip(scales) {
                            *s = s.wrapping_add(e.wrapping_mul(*v as u64));
                        }
                        for (o, v) in o.iter_mut().zip(offsets) {
                            *o = o.wrapping_add(e.wrapping_mul(*v as i32 as i64 as u64));
                        }
                    }
                    if *centred {
                        let (s, o) = sums.split_at_mut(nb);
                        for (o, s) in o.iter_mut().zip(s) {
                            *o = s.wrapping_mul(128u64.wrapping_neg());
                        }
                    }
                    out.scales[i * nb..(i + 1) * nb].copy_from_slice(&sums[..nb]);
                    let base = &mut out.base[i * cols..(i + 1) * cols];
                    for (block, offset) in base.chunks_mut(BLOCK).zip(&sums[nb..]) {
                        block.fill(*offset);
                    }
                }
            }
        }
        out
    }
}

/// What a party computes alone from its shares of the one-hot rows ([`Embedding::lookup`]).
pub struct Lookup {
    /// `t × cols`: each entry's block offset (a table in blocks) or the entry (at full width).
    base: Vec<u64>,
    /// `t × cols`: `q`, shared modulo 2^16 (zeros at full width).
    q: Vec<u64>,
    /// `t × blocks`: each block's scale (zeros at full width).
    scales: Vec<u64>,
}

impl Lookup {
    fn zeros(t: usize, cols: usize) -> Self {
        Self {
            base: vec![0; t * cols],
            q: vec![0; t * cols],
            scales: vec![0; t * cols.div_ceil(BLOCK)],
        }
    }
}

/// Completes a lookup in one round: shares of the `t × cols` rows, `offset + scale·q` (the
/// dealer passes `None`; a table at full width lifts zeros, so that the dealer need not know
/// the table's form). See [`Ctx::lift_mul`].
pub fn finish(
    ctx: &mut Ctx,
    t: usize,
    cols: usize,
    lookup: Option<Lookup>,
) -> Result<Vec<u64>, MpcError> {
    let nb = cols.div_ceil(BLOCK);
    let lookup = lookup.unwrap_or_else(|| Lookup::zeros(t, cols));
    debug_assert_eq!(lookup.base.len(), t * cols);
    let products = ctx.lift_mul(&lookup.q, &lookup.scales, |k| {
        k / cols * nb + k % cols / BLOCK
    })?;
    let mut rows = lookup.base;
    ring::add_assign(&mut rows, &products);
    Ok(rows)
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

/// The table in 8-bit blocks, when every block is exactly `offset + scale·q`: centred where
/// every block is `scale·(q − 128)` (the scale the greatest common divisor of its entries),
/// otherwise with the block's minimum as its offset and the greatest common divisor of the
/// differences from it as its scale.
fn blocks(data: &[i32], cols: usize) -> Option<Form> {
    let rows = data.len() / cols;
    let (per_row, centred, q) = centred(data, cols).or_else(|| with_offsets(data, cols))?;
    let q = pairs::interleave(&q, rows, cols);
    Some(Form::Blocks {
        per_row,
        centred,
        q,
    })
}

fn centred(data: &[i32], cols: usize) -> Option<(Vec<u32>, bool, Vec<u8>)> {
    let mut scales = Vec::new();
    let mut q = Vec::with_capacity(data.len());
    for block in data.chunks(cols).flat_map(|row| row.chunks(BLOCK)) {
        let scale = block
            .iter()
            .map(|v| v.unsigned_abs() as u64)
            .fold(0, gcd)
            .max(1);
        let q_of = |v: &i32| *v as i64 / scale as i64 + 128;
        if block.iter().any(|v| !(0..=255).contains(&q_of(v))) {
            return None;
        }
        scales.push(u32::try_from(scale).ok()?);
        q.extend(block.iter().map(|v| q_of(v) as u8));
    }
    Some((scales, true, q))
}

fn with_offsets(data: &[i32], cols: usize) -> Option<(Vec<u32>, bool, Vec<u8>)> {
    let mut per_row = Vec::new();
    let mut q = Vec::with_capacity(data.len());
    for row in data.chunks(cols) {
        let mut offsets = Vec::new();
        for block in row.chunks(BLOCK) {
            let min = *block.iter().min()?;
            let diff = |v: &i32| (*v as i64 - min as i64) as u64;
            let scale = block.iter().map(diff).fold(0, gcd).max(1);
            if block.iter().any(|v| diff(v) / scale > u8::MAX as u64) {
                return None;
            }
            per_row.push(u32::try_from(scale).ok()?);
            offsets.push(min as u32);
            q.extend(block.iter().map(|v| (diff(v) / scale) as u8));
        }
        per_row.extend(offsets);
    }
    Some((per_row, false, q))
}
