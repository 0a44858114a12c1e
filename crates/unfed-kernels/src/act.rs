//! Activations quantized to 8 bits in runs of 32, the other operand of every integer dot product.

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
        let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
        if amax == 0.0 || !amax.is_finite() {
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

/// Quantizes `rows` rows of `cols` activations (`cols` a multiple of 32) into `out`, reusing its
/// allocation.
pub fn quantize_rows(x: &[f32], cols: usize, out: &mut Vec<ActBlock>) {
    out.clear();
    out.extend(
        x.chunks_exact(cols)
            .flat_map(|row| row.chunks_exact(32).map(ActBlock::quantize)),
    );
}
