//! The portable row kernel: any CPU, same arithmetic shape as the SIMD kernels (integer dot
//! products per run, scaled into a float sum).

use crate::act::ActBlock;
use crate::formats::{QuantType, unpack32};

/// One weight row (`runs` runs of 32) against `T` token rows of activations.
pub(crate) fn row_dot<const T: usize>(
    ty: QuantType,
    row: &[u8],
    acts: [&[ActBlock]; T],
    runs: usize,
) -> [f32; T] {
    let mut out = [0f32; T];
    for run in 0..runs {
        let u = unpack32(ty, row, run);
        for (o, a) in out.iter_mut().zip(acts) {
            let a = &a[run];
            let half =
                |h: usize| -> i32 { (16 * h..16 * h + 16).map(|e| u.q[e] * a.q[e] as i32).sum() };
            *o += a.d * (u.scale[0] * half(0) as f32 + u.scale[1] * half(1) as f32) + u.min * a.s;
        }
    }
    out
}
