//! A contiguous range of a model's layers — possibly with the token embedding in front and the
//! final norm and output head behind — run with a per-session KV cache.
//!
//! The whole model is simply the shard that covers every layer and has both ends, so the
//! single-process and the sharded paths execute the very same code, layer for layer; that is
//! why composing shards gives bit-identical logits.

use std::ops::Range;

use candle_core::quantized::{QMatMul, QTensor};
use candle_core::{Device, Module, Tensor};
use unfed_gguf::Value;

use unfed_kernels::QMatrix;

use crate::checkpoint::Checkpoint;
use crate::config::ModelConfig;
use crate::cpu::{self, CpuCache, CpuLayer, RopeRows, Scratch};
use crate::layers::{self, DecoderLayer, LayerCache, RmsNorm};
use crate::rope::RopeTables;
use crate::{ModelError, Result};

/// Metadata keys a shard file carries to say which part of the model it is.
pub mod keys {
    pub const INDEX: &str = "unfed.shard.index";
    pub const COUNT: &str = "unfed.shard.count";
    pub const LAYER_START: &str = "unfed.shard.layer_start";
    pub const LAYER_END: &str = "unfed.shard.layer_end";
    pub const HAS_EMBEDDING: &str = "unfed.shard.has_embedding";
    pub const HAS_HEAD: &str = "unfed.shard.has_head";
}

/// Which part of the model a shard runs.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ShardRole {
    /// Global layer indices, end exclusive.
    pub layers: Range<usize>,
    /// Takes token ids and looks up their embeddings.
    pub embedding: bool,
    /// Applies the final norm and the output head, producing logits.
    pub head: bool,
}

impl ShardRole {
    pub fn whole(cfg: &ModelConfig) -> Self {
        Self {
            layers: 0..cfg.n_layer,
            embedding: true,
            head: true,
        }
    }

    /// The role recorded in a shard file's metadata, or the whole model if none is recorded.
    pub fn from_checkpoint(ck: &Checkpoint, cfg: &ModelConfig) -> Result<Self> {
        let int = |k: &str| ck.get(k).and_then(Value::as_u64).map(|v| v as usize);
        let flag = |k: &str| ck.get(k).and_then(Value::as_bool);
        match (int(keys::LAYER_START), int(keys::LAYER_END)) {
            (None, None) => Ok(Self::whole(cfg)),
            (Some(s), Some(e)) if s < e && e <= cfg.n_layer => Ok(Self {
                layers: s..e,
                embedding: flag(keys::HAS_EMBEDDING).unwrap_or(s == 0),
                head: flag(keys::HAS_HEAD).unwrap_or(e == cfg.n_layer),
            }),
            (s, e) => Err(ModelError::Config(format!(
                "shard layer range {s:?}..{e:?} is not within the model's {} layers",
                cfg.n_layer
            ))),
        }
    }
}

/// What a shard is fed.
pub enum Input<'a> {
    /// Token ids (only for a shard with the embedding).
    Tokens(&'a [u32]),
    /// Hidden states from the previous shard, `[positions, hidden]` f32.
    Hidden(&'a Tensor),
}

/// Which positions to produce logits for (shards with the head only).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogitsMode {
    /// Only the last position: what generation needs.
    Last,
    /// Every position of the input.
    All,
}

/// Per-session state of one shard: each layer's keys and values and the number of positions seen.
#[derive(Debug, Clone)]
pub struct KvCache {
    /// The shard's global layer range, so a cache is never used with another shard.
    range: Range<usize>,
    layers: LayerCaches,
    positions: usize,
    scratch: Scratch,
}

#[derive(Debug, Clone)]
enum LayerCaches {
    Kernels(Vec<CpuCache>),
    Candle(Vec<LayerCache>),
}

impl KvCache {
    /// Positions already processed.
    pub fn positions(&self) -> usize {
        self.positions
    }
}

/// A loaded shard, ready to run.
pub struct ShardModel {
    config: ModelConfig,
    role: ShardRole,
    embedding: Option<Weights<QTensor>>,
    layers: Layers,
    norm: Option<RmsNorm>,
    head: Option<Weights<QMatMul>>,
    device: Device,
    compute: Compute,
}

/// A matrix for the CPU kernels, or for candle where they lack its type.
enum Weights<C> {
    Kernels(QMatrix),
    Candle(C),
}

/// The layers on the CPU kernels when every matrix has a kernel, else all on candle.
enum Layers {
    Kernels(Vec<CpuLayer>),
    Candle(Vec<DecoderLayer>),
}

/// How a shard computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compute {
    /// The `unfed-kernels` CPU kernels, for every layer whose matrices they cover (all layers or
    /// none); candle for the rest.
    Kernels,
    /// candle's tensor operations throughout, in memory (any weight type).
    Candle,
    /// candle's tensor operations on the first visible NVIDIA GPU (`CUDA_VISIBLE_DEVICES` picks
    /// it), weights quantized as in the file; needs a build with the `cuda` feature.
    Cuda,
    /// candle with every matrix dequantized to f32: exact products, slow; the reference the
    /// quantized paths are measured against.
    Reference,
}

impl Compute {
    /// [`Compute::Kernels`], unless `UNFED_ENGINE` names another path: `candle`, `cuda`, or
    /// `reference` for the exact reference (to compare).
    pub fn from_env() -> Compute {
        let named = std::env::var("UNFED_ENGINE").ok();
        Compute::ALL
            .into_iter()
            .find(|c| named.as_deref() == Some(c.name()))
            .unwrap_or(Compute::Kernels)
    }

    /// Every path, in the order `--engine` lists them.
    pub const ALL: [Compute; 4] = [
        Compute::Kernels,
        Compute::Candle,
        Compute::Cuda,
        Compute::Reference,
    ];

    /// Its name in `UNFED_ENGINE`.
    pub fn name(self) -> &'static str {
        match self {
            Compute::Kernels => "kernels",
            Compute::Candle => "candle",
            Compute::Cuda => "cuda",
            Compute::Reference => "reference",
        }
    }
}

impl ShardModel {
    /// Loads the part of the model the checkpoint says it holds (the whole model for an
    /// ordinary model file).
    pub fn load(ck: &Checkpoint) -> Result<Self> {
        let cfg = ck.config()?;
        let role = ShardRole::from_checkpoint(ck, &cfg)?;
        Self::load_role(ck, role)
    }

    /// Loads a chosen part of a checkpoint (which must contain the needed tensors).
    pub fn load_role(ck: &Checkpoint, role: ShardRole) -> Result<Self> {
        Self::load_role_with(ck, role, Compute::from_env())
    }

    /// [`Self::load_role`] on a chosen compute path.
    pub fn load_role_with(ck: &Checkpoint, role: ShardRole, compute: Compute) -> Result<Self> {
        let config = ck.config()?;
        if role.layers.start >= role.layers.end || role.layers.end > config.n_layer {
            return Err(ModelError::Config(format!(
                "layer range {:?} is not within the model's {} layers",
                role.layers, config.n_layer
            )));
        }
        let kernels = compute == Compute::Kernels;
        let device = match compute {
            Compute::Cuda => cuda_device()?,
            _ => Device::Cpu,
        };
        let on = layers::Placement {
            exact: compute == Compute::Reference,
            device: &device,
        };
        let embedding = if role.embedding {
            let name = "token_embd.weight";
            let shape = (config.vocab, config.hidden);
            Some(match kernel_matrix(ck, name, shape, kernels)? {
                Some(m) => Weights::Kernels(m),
                _ => {
                    let t = layers::qtensor(ck, name, &device)?;
                    check_shape(name, t.shape().dims(), &[shape.0, shape.1])?;
                    Weights::Candle(t)
                }
            })
        } else {
            None
        };
        let on_kernels = if kernels {
            role.layers
                .clone()
                .map(|i| CpuLayer::load(ck, &config, i))
                .collect::<Result<Option<Vec<_>>>>()?
        } else {
            None
        };
        let compute = match (compute, &on_kernels) {
            (Compute::Kernels, None) => Compute::Candle,
            (c, _) => c,
        };
        let layers = match on_kernels {
            Some(l) => Layers::Kernels(l),
            None => Layers::Candle(
                role.layers
                    .clone()
                    .map(|i| DecoderLayer::load(ck, &config, i, on))
                    .collect::<Result<Vec<_>>>()?,
            ),
        };
        let (norm, head) = if role.head {
            let name = if ck.tensor_info("output.weight").is_some() {
                "output.weight"
            } else {
                "token_embd.weight"
            };
            let shape = (config.vocab, config.hidden);
            let head = match kernel_matrix(ck, name, shape, kernels)? {
                Some(m) => Weights::Kernels(m),
                _ => Weights::Candle(layers::matrix(ck, name, shape, on)?),
            };
            (
                Some(RmsNorm::load(ck, "output_norm.weight", &config, &device)?),
                Some(head),
            )
        } else {
            (None, None)
        };
        Ok(Self {
            config,
            role,
            embedding,
            layers,
            norm,
            head,
            device,
            compute,
        })
    }

    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    pub fn role(&self) -> &ShardRole {
        &self.role
    }

    /// The path the layers run on.
    pub fn compute(&self) -> Compute {
        self.compute
    }

    /// A fresh, empty cache for one session.
    pub fn new_cache(&self) -> KvCache {
        let n = self.role.layers.len();
        KvCache {
            range: self.role.layers.clone(),
            layers: match self.layers {
                Layers::Kernels(_) => LayerCaches::Kernels(vec![CpuCache::default(); n]),
                Layers::Candle(_) => LayerCaches::Candle(vec![LayerCache::default(); n]),
            },
            positions: 0,
            scratch: Scratch::default(),
        }
    }

    /// Runs the shard on new positions, extending the session's cache. Returns hidden states
    /// `[positions, hidden]`, or logits `[1 or positions, vocab]` if this shard has the head,
    /// in memory whatever the device the shard runs on.
    pub fn forward(
        &self,
        input: Input<'_>,
        cache: &mut KvCache,
        mode: LogitsMode,
    ) -> Result<Tensor> {
        if cache.range != self.role.layers {
            return Err(ModelError::Input(
                "the cache belongs to a different shard".into(),
            ));
        }
        let x = match (input, &self.embedding) {
            (Input::Tokens(ids), Some(emb)) => {
                if ids.is_empty() {
                    return Err(ModelError::Input("no tokens".into()));
                }
                if let Some(bad) = ids.iter().find(|&&id| id as usize >= self.config.vocab) {
                    return Err(ModelError::Input(format!(
                        "token id {bad} is outside the vocabulary of {}",
                        self.config.vocab
                    )));
                }
                match emb {
                    Weights::Kernels(m) => {
                        let hidden = self.config.hidden;
                        let mut rows = vec![0f32; ids.len() * hidden];
                        for (&id, row) in ids.iter().zip(rows.chunks_exact_mut(hidden)) {
                            m.dequantize_row(id as usize, row)
                                .map_err(|e| ModelError::Input(format!("embedding lookup: {e}")))?;
                        }
                        Tensor::from_vec(rows, (ids.len(), hidden), &self.device)?
                    }
                    Weights::Candle(t) => t.embedding(&Tensor::new(ids, &self.device)?)?,
                }
            }
            (Input::Hidden(h), None) => {
                let (t, d) = h
                    .dims2()
                    .map_err(|_| ModelError::Input("hidden states must be 2-D".into()))?;
                if t == 0 || d != self.config.hidden {
                    return Err(ModelError::Input(format!(
                        "hidden states of shape [{t}, {d}], expected [n > 0, {}]",
                        self.config.hidden
                    )));
                }
                h.to_device(&self.device)?
            }
            (Input::Tokens(_), None) => {
                return Err(ModelError::Input(
                    "this shard takes hidden states, not tokens".into(),
                ));
            }
            (Input::Hidden(_), Some(_)) => {
                return Err(ModelError::Input(
                    "this shard takes tokens, not hidden states".into(),
                ));
            }
        };
        let t = x.dim(0)?;
        let past = cache.positions;
        if past + t > self.config.context_length {
            return Err(ModelError::Input(format!(
                "{} positions exceed the context length of {}",
                past + t,
                self.config.context_length
            )));
        }
        let x = match (&self.layers, &mut cache.layers) {
            (Layers::Kernels(layers), LayerCaches::Kernels(caches)) => {
                let mut v = x.flatten_all()?.to_vec1::<f32>()?;
                let rope = RopeRows::new(self.config.rope_theta, self.config.head_dim, past, t);
                for (layer, lc) in layers.iter().zip(caches.iter_mut()) {
                    layer.forward(&mut v, t, &rope, lc, &mut cache.scratch);
                }
                Tensor::from_vec(v, (t, self.config.hidden), &self.device)?
            }
            (Layers::Candle(layers), LayerCaches::Candle(caches)) => {
                let rope = RopeTables::new(
                    self.config.rope_theta,
                    self.config.head_dim,
                    past,
                    t,
                    &self.device,
                )?;
                let mask = if t > 1 {
                    Some(layers::causal_mask(t, past, &self.device)?)
                } else {
                    None
                };
                let mut x = x.unsqueeze(0)?;
                for (layer, lc) in layers.iter().zip(caches.iter_mut()) {
                    x = layer.forward(&x, &rope, mask.as_ref(), lc)?;
                }
                x.squeeze(0)?
            }
            _ => {
                return Err(ModelError::Input(
                    "the cache was made for another compute path".into(),
                ));
            }
        };
        cache.positions += t;
        match (&self.norm, &self.head) {
            (Some(norm), Some(head)) => {
                let x = match mode {
                    LogitsMode::Last => x.narrow(0, t - 1, 1)?,
                    LogitsMode::All => x,
                };
                let x = norm.forward(&x)?;
                Ok(match head {
                    Weights::Kernels(m) => {
                        let rows = x.dim(0)?;
                        let mut logits = vec![0f32; rows * m.rows()];
                        m.matmul(&x.flatten_all()?.to_vec1::<f32>()?, rows, &mut logits)
                            .map_err(|e| ModelError::Input(format!("output head: {e}")))?;
                        Tensor::from_vec(logits, (rows, m.rows()), &self.device)?
                    }
                    Weights::Candle(q) => q.forward(&x)?.to_device(&Device::Cpu)?,
                })
            }
            _ => Ok(x.to_device(&Device::Cpu)?),
        }
    }
}

/// The process's one CUDA device (GPU 0 of those visible), shared by all its shards so that
/// their tensors live in one context.
fn cuda_device() -> Result<Device> {
    static DEVICE: std::sync::OnceLock<std::result::Result<Device, String>> =
        std::sync::OnceLock::new();
    if !cfg!(feature = "cuda") {
        return Err(ModelError::Device(
            "this build has no CUDA support (the `cuda` engine needs a build with `--features cuda`)"
                .into(),
        ));
    }
    DEVICE
        .get_or_init(|| {
            Device::new_cuda(0).map_err(|e| match e {
                candle_core::Error::WithBacktrace { inner, .. } => inner.to_string(),
                e => e.to_string(),
            })
        })
        .clone()
        .map_err(|e| ModelError::Device(format!("no CUDA device: {e}")))
}

/// The matrix for the kernels when they run and cover its type.
fn kernel_matrix(
    ck: &Checkpoint,
    name: &str,
    shape: (usize, usize),
    kernels: bool,
) -> Result<Option<QMatrix>> {
    if kernels {
        cpu::load_matrix(ck, name, shape)
    } else {
        Ok(None)
    }
}

fn check_shape(name: &str, got: &[usize], want: &[usize]) -> Result<()> {
    if got != want {
        return Err(ModelError::Tensor {
            name: name.into(),
            problem: format!("shape {got:?}, expected {want:?}"),
        });
    }
    Ok(())
}
