//! The model runtime: read a checkpoint (GGUF file, GGUF shard, or safetensors directory), run
//! any contiguous range of its transformer layers with a per-session KV cache, and turn text into
//! tokens and logits into tokens.
//!
//! Everything here is synchronous and free of I/O beyond reading model files: callers decide on
//! which thread the forward pass runs (the engine crate gives it a thread of its own).

pub mod chat;
pub mod checkpoint;
pub mod config;
mod cpu;
mod layers;
mod rope;
pub mod sampling;
pub mod shard;
pub mod testing;
pub mod tokenizer;

pub use chat::{ChatMessage, ChatTemplate};
pub use checkpoint::{Checkpoint, RawTensor};
pub use config::{Arch, ModelConfig};
pub use sampling::{Sampler, SamplingParams};
pub use shard::{Compute, Input, KvCache, LogitsMode, ShardModel, ShardRole};
pub use tokenizer::TextTokenizer;

/// What can go wrong loading or running a model.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("{path}: {source}")]
    Gguf {
        path: String,
        source: unfed_gguf::GgufError,
    },
    #[error("{path}: {problem}")]
    Checkpoint { path: String, problem: String },
    #[error("model config: {0}")]
    Config(String),
    #[error("tensor `{name}`: {problem}")]
    Tensor { name: String, problem: String },
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("chat template: {0}")]
    ChatTemplate(String),
    #[error("{0}")]
    Device(String),
    #[error("invalid input: {0}")]
    Input(String),
    #[error("tensor computation failed: {0}")]
    Compute(#[from] candle_core::Error),
    #[error("i/o error on {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

pub type Result<T> = std::result::Result<T, ModelError>;
