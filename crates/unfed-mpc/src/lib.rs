//! Two-party computation on secret shares for UNFED's shard 0 (pure, no I/O).
//!
//! Values live in Z_2^64 as fixed point ([`ring`]: [`ring::FRAC`] fractional bits), split into
//! two additive shares, one per party. The client deals every piece of correlated randomness
//! ([`Ctx::dealer`]), so neither party can unmask the other; the parties ([`Ctx::party`])
//! compute over a [`Link`] with one exchange per round. The building blocks — Beaver
//! products, truncation, comparison by distributed comparison functions ([`dcf`]) — are in
//! [`ctx`]; the non-linear functions of a Llama/Qwen2 layer in [`func`]. Design, costs and
//! error bounds: `docs/mpc.md`.

pub mod ctx;
pub mod dcf;
pub mod dpf;
pub mod embedding;
pub mod func;
pub mod layer;
pub mod link;
pub mod prg;
pub mod ring;
pub mod shard;
#[cfg(target_arch = "x86_64")]
mod vaes;

pub use ctx::{Ctx, LutTable, Material, Stats};
pub use link::{Link, MemLink, mem_pair};

/// Which of the two parties.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    A,
    B,
}

/// What can go wrong in a two-party computation.
#[derive(Debug, thiserror::Error)]
pub enum MpcError {
    #[error("link to the other party: {0}")]
    Link(String),
    #[error("the other party sent {got} ring elements where {expected} were due")]
    PeerLength { expected: usize, got: usize },
    #[error("the dealt material ran out: {needed} more words needed, {left} left")]
    MaterialExhausted { needed: usize, left: usize },
    #[error("the dealt material does not match the computation: {left} words left over")]
    MaterialLeftOver { left: usize },
    #[error("weights: {0}")]
    Weights(String),
}
