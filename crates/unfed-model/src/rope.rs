//! Rotary position embeddings: cos/sin tables for a run of positions, computed in f32 the way
//! Hugging Face and llama.cpp do (`inv_freq = theta^(-2i/d)`, angle = position × inv_freq).

use candle_core::{Device, Tensor};

use crate::Result;

/// cos and sin of every (position, frequency) pair for positions `start..start+len`, each
/// shaped `[len, head_dim/2]`.
pub(crate) struct RopeTables {
    pub cos: Tensor,
    pub sin: Tensor,
}

impl RopeTables {
    pub fn new(
        theta: f32,
        head_dim: usize,
        start: usize,
        len: usize,
        device: &Device,
    ) -> Result<Self> {
        let half = head_dim / 2;
        let inv_freq: Vec<f32> = (0..half)
            .map(|i| 1.0 / theta.powf((2 * i) as f32 / head_dim as f32))
            .collect();
        let mut cos = Vec::with_capacity(len * half);
        let mut sin = Vec::with_capacity(len * half);
        for p in start..start + len {
            for f in &inv_freq {
                let angle = p as f32 * f;
                cos.push(angle.cos());
                sin.push(angle.sin());
            }
        }
        Ok(Self {
            cos: Tensor::from_vec(cos, (len, half), device)?,
            sin: Tensor::from_vec(sin, (len, half), device)?,
        })
    }

    /// Applies the rotation to `x` shaped `[batch, heads, len, head_dim]`.
    pub fn apply(&self, x: &Tensor, interleaved: bool) -> Result<Tensor> {
        let x = x.contiguous()?;
        Ok(if interleaved {
            candle_nn::rotary_emb::rope_i(&x, &self.cos, &self.sin)?
        } else {
            candle_nn::rotary_emb::rope(&x, &self.cos, &self.sin)?
        })
    }
}
