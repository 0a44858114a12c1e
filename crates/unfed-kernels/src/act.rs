//! Activations quantized to 8 bits in runs of 32, the other operand of every integer dot product.

use crate::pool::Pool;

/// 32 activations as `x[e] ≈ d * q[e]`, with `s = d * Σ q` (what a weight offset multiplies).
#[repr(C, align(8))]
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ActBlock {
    pub q: [i8; 32],
    pub d: f32,
    pub s: f32,
}

impl ActBlock {
    pub const ZERO: ActBlock = ActBlock {
        q: [0; 32],
        d: 0.0,
        s: 0.0,
    };

    /// Quantizes 32 values symmetrically to the range -127..=127 (round half to even).
    pub fn quantize(x: &[f32]) -> ActBlock {
        let x: &[f32; 32] = x.try_into().expect("an activation run is 32 values");
        // Eight independent lanes, so the compiler keeps this in vector registers. `poison` is
        // NaN exactly when some value is not finite.
        let (mut lanes, mut poison) = ([0f32; 8], [0f32; 8]);
        for chunk in x.chunks_exact(8) {
            for l in 0..8 {
                let a = chunk[l].abs();
                lanes[l] = if a > lanes[l] { a } else { lanes[l] };
                poison[l] += chunk[l] * 0.0;
            }
        }
        let amax = lanes.iter().fold(0f32, |m, &v| if v > m { v } else { m });
        if amax == 0.0 || poison.iter().any(|p| p.is_nan()) {
            // Non-finite input poisons the result the same way a float product would.
            let d = if amax == 0.0 { 0.0 } else { f32::NAN };
            return ActBlock {
                q: [0; 32],
                d,
                s: d,
            };
        }
        let d = amax / 127.0;
        let id = 127.0 / amax;
        let mut q = [0i8; 32];
        let mut sum = 0i32;
        for (o, v) in q.iter_mut().zip(x) {
            *o = (v * id).round_ties_even() as i8;
            sum += *o as i32;
        }
        ActBlock {
            q,
            d,
            s: d * sum as f32,
        }
    }
}

/// Quantizes rows of `cols` activations (`cols` a multiple of 32) into `out`, reusing its
/// allocation; several rows are spread over `pool`.
pub fn quantize_rows(x: &[f32], cols: usize, out: &mut Vec<ActBlock>, pool: &Pool) {
    let blocks = x.len() / 32;
    out.clear();
    out.resize(blocks, ActBlock::ZERO);
    let rows = x.len() / cols;
    if rows < 2 {
        out.iter_mut()
            .zip(x.chunks_exact(32))
            .for_each(|(o, v)| *o = ActBlock::quantize(v));
        return;
    }
    let per_row = cols / 32;
    let dst = BlocksPtr(out.as_mut_ptr());
    pool.run(rows, &|row| {
        // SAFETY: each chunk writes the blocks of its own row; `out` outlives the job.
        let o = unsafe { std::slice::from_raw_parts_mut(dst.at(row * per_row), per_row) };
        o.iter_mut()
            .zip(x[row * cols..][..cols].chunks_exact(32))
            .for_each(|(o, v)| *o = ActBlock::quantize(v));
    });
}

#[derive(Clone, Copy)]
struct BlocksPtr(*mut ActBlock);
// SAFETY: rows are written by one chunk each.
unsafe impl Send for BlocksPtr {}
unsafe impl Sync for BlocksPtr {}

impl BlocksPtr {
    fn at(self, offset: usize) -> *mut ActBlock {
        self.0.wrapping_add(offset)
    }
}
