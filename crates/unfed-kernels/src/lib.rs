//! CPU compute kernels: matrix products of GGUF-quantized weights with activations quantized to
//! 8 bits, on the instruction set the CPU offers (chosen once at run time), spread over the
//! compute thread pool.
//!
//! The weights stay in their file layout — usually pages of the memory-mapped model file — so
//! loading a model copies nothing and a tied embedding/output matrix exists once. A long batch
//! (a prompt) unpacks a group of rows at a time into a small per-thread buffer, used for every
//! token and then overwritten.

mod act;
mod formats;
mod matrix;
pub mod pool;
mod portable;
pub mod testing;
#[cfg(target_arch = "x86_64")]
mod x86;
#[cfg(target_arch = "x86_64")]
mod x86_packed;
#[cfg(target_arch = "x86_64")]
mod x86_wide;

pub use act::{ActBlock, quantize_rows};
pub use formats::{QuantType, Unpacked32, dequantize_row, unpack32};
pub use matrix::{Bytes, MAX_MATS, QMatrix, matmul_many};

/// The instruction set the row kernels use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Isa {
    /// Plain Rust, any CPU.
    Portable,
    /// AVX2 + FMA.
    Avx2,
    /// AVX2 + FMA with AVX-512 VNNI integer dot products on 256-bit registers.
    Avx512Vnni,
}

impl Isa {
    /// The best this CPU supports, unless `UNFED_KERNELS` names a lower one
    /// (`portable`, `avx2`): for comparisons and tests.
    pub fn detect() -> Isa {
        static ISA: std::sync::OnceLock<Isa> = std::sync::OnceLock::new();
        *ISA.get_or_init(|| match std::env::var("UNFED_KERNELS").as_deref() {
            Ok("portable") => Isa::Portable,
            Ok("avx2") => Isa::Avx2.min(Isa::best()),
            _ => Isa::best(),
        })
    }

    /// Every instruction set this CPU can run, slowest first.
    pub fn available() -> Vec<Isa> {
        [Isa::Portable, Isa::Avx2, Isa::Avx512Vnni]
            .into_iter()
            .filter(|&i| i <= Isa::best())
            .collect()
    }

    /// The fastest instruction set this CPU can run.
    pub fn best() -> Isa {
        static BEST: std::sync::OnceLock<Isa> = std::sync::OnceLock::new();
        *BEST.get_or_init(|| {
            #[cfg(target_arch = "x86_64")]
            if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                if is_x86_feature_detected!("avx512vnni") && is_x86_feature_detected!("avx512vl") {
                    return Isa::Avx512Vnni;
                }
                return Isa::Avx2;
            }
            Isa::Portable
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Isa::Portable => "portable",
            Isa::Avx2 => "avx2",
            Isa::Avx512Vnni => "avx512-vnni",
        }
    }
}

/// What can be wrong with a kernel's operands.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error("{ty} weights: a row of {cols} values is not a whole number of {block}-value blocks")]
    Columns {
        ty: &'static str,
        cols: usize,
        block: usize,
    },
    #[error("{ty} weights of {rows}x{cols} take {want} bytes, got {got}")]
    Bytes {
        ty: &'static str,
        rows: usize,
        cols: usize,
        want: usize,
        got: usize,
    },
    #[error("input of {got} values is not {tokens} rows of {cols}")]
    Input {
        got: usize,
        tokens: usize,
        cols: usize,
    },
    #[error("output of {got} values, expected {want}")]
    Output { got: usize, want: usize },
    #[error("at most {max} matrices share one product, got {got}")]
    Matrices { got: usize, max: usize },
    #[error("row {row} is outside a matrix of {rows} rows")]
    Row { row: usize, rows: usize },
}
