//! What an MPC party of shard 0 loads: the public weights of the embedding and the first `k`
//! decoder layers, dequantized from the shard file into the fixed point of `unfed-mpc`.

use unfed_model::{Checkpoint, ModelConfig};
use unfed_mpc::embedding::Embedding;
use unfed_mpc::layer::{LayerWeights, RawLayer};
use unfed_mpc::shard::ShardWeights;
use unfed_shard::MpcPlan;

/// Why the weights could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum MpcWeightsError {
    #[error("{0}")]
    Model(#[from] unfed_model::ModelError),
    #[error("{0}")]
    Mpc(#[from] unfed_mpc::MpcError),
    #[error("the model has {have} layers; {want} cannot run on shares")]
    Layers { have: usize, want: usize },
}

/// A model's plan of shard 0 on shares with its first `k` layers.
pub use unfed_shard::mpc_plan as plan;
/// The shapes of shard 0 on shares for a model, as a plan has it.
pub use unfed_shard::mpc_spec as spec;

/// The embedding and the layers of `plan` from `ck` (a whole model or a shard that starts at
/// layer 0); a layer whose gate activations could exceed the plan's bound is refused.
pub fn load(
    ck: &Checkpoint,
    cfg: &ModelConfig,
    plan: MpcPlan,
) -> Result<ShardWeights, MpcWeightsError> {
    let k = plan.layers;
    if k == 0 || k > cfg.n_layer {
        return Err(MpcWeightsError::Layers {
            have: cfg.n_layer,
            want: k,
        });
    }
    let spec = spec(cfg, plan);
    let get = |name: &str| -> Result<Vec<f32>, MpcWeightsError> { Ok(ck.dequantized(name)?.1) };
    let embedding = Embedding::encode(&get("token_embd.weight")?, cfg.vocab, cfg.hidden)?;
    let mut layers = Vec::with_capacity(k);
    for i in 0..k {
        let p = |n: &str| format!("blk.{i}.{n}");
        let w = |n: &str| get(&p(&format!("{n}.weight")));
        let bias = if cfg.arch.qkv_bias() {
            Some(
                [
                    get(&p("attn_q.bias"))?,
                    get(&p("attn_k.bias"))?,
                    get(&p("attn_v.bias"))?,
                ]
                .concat(),
            )
        } else {
            None
        };
        let (attn_norm, q, kk, v, o) = (
            w("attn_norm")?,
            w("attn_q")?,
            w("attn_k")?,
            w("attn_v")?,
            w("attn_output")?,
        );
        let (ffn_norm, gate, up, down) =
            (w("ffn_norm")?, w("ffn_gate")?, w("ffn_up")?, w("ffn_down")?);
        let raw = RawLayer {
            attn_norm: &attn_norm,
            q: &q,
            k: &kk,
            v: &v,
            qkv_bias: bias.as_deref(),
            o: &o,
            ffn_norm: &ffn_norm,
            gate: &gate,
            up: &up,
            down: &down,
        };
        layers.push(LayerWeights::new(&spec.layer, &raw)?);
    }
    Ok(ShardWeights { embedding, layers })
}
