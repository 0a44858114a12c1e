//! GGUF files (llama.cpp's model format): a reader that checks every count, length and offset
//! against the file before trusting it, and a writer that produces files llama.cpp reads.
//!
//! Nothing here knows about models: metadata is a list of typed key/value pairs and tensors are
//! named byte ranges with a GGML type and a shape. Shapes are in GGUF order (`dims[0]` is the
//! innermost, contiguous dimension), as llama.cpp writes them.

mod read;
mod types;
mod value;
mod write;

pub use read::{GgufFile, MappedGguf, TensorInfo};
pub use types::GgmlType;
pub use value::Value;
pub use write::{OutTensor, write_gguf};

/// The four bytes every GGUF file starts with.
pub const MAGIC: [u8; 4] = *b"GGUF";
/// Default alignment of the tensor data section when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;

/// What can go wrong reading or writing a GGUF file.
#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    #[error("not a GGUF file (the first bytes are not \"GGUF\")")]
    NotGguf,
    #[error("unsupported GGUF version {0} (versions 2 and 3 are supported)")]
    Version(u32),
    #[error("the file is truncated or corrupt: {0}")]
    Corrupt(String),
    #[error("tensor `{name}` has GGML type {ty}, which this build does not support")]
    UnsupportedType { name: String, ty: u32 },
    #[error("metadata key `{key}`: {problem}")]
    Metadata { key: String, problem: String },
    #[error("no tensor named `{0}`")]
    MissingTensor(String),
}

pub type Result<T> = std::result::Result<T, GgufError>;
