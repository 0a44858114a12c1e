//! The engine: shards composed into a pipeline, the generation loop (prefill, sample, decode,
//! stop), incremental detokenization, and an [`Engine`] that runs all of it on a thread of its
//! own and streams events through a bounded channel.

mod engine;
mod generate;
mod pipeline;
mod text_stream;

pub use engine::Engine;
pub use generate::{Event, GenerateRequest, Stats, StopReason, generate};
pub use pipeline::{Pipeline, Session};
pub use text_stream::TextStream;

/// The fixed benchmark prompt (about 107 tokens), shared with `scripts/bench_llamacpp.py` so
/// both engines process the same tokens.
pub const BENCH_PROMPT: &str = include_str!("bench_prompt.txt");

/// Threads the forward pass uses (`UNFED_THREADS`, else the CPUs available).
pub fn compute_threads() -> usize {
    unfed_kernels::pool::threads()
}

/// What can go wrong in the engine.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Model(#[from] unfed_model::ModelError),
    #[error("tensor computation failed: {0}")]
    Compute(#[from] candle_core::Error),
    #[error("the shards do not form a pipeline: {0}")]
    Pipeline(String),
    #[error("invalid request: {0}")]
    Request(String),
    #[error("the engine thread has stopped")]
    Stopped,
}

pub type Result<T> = std::result::Result<T, EngineError>;
