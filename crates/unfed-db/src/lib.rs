//! SQLite persistence for UNFED services; the only crate in the workspace that knows SQL.
//!
//! Every database is one SQLite file in WAL mode with a `schema_version` table; opening a file
//! applies the migrations it lacks (idempotently, in one immediate transaction each) and refuses
//! a file written by a newer build. Callers see typed records and typed functions only.
//!
//! - [`RegistryDb`]: the registry's nodes (with their MPC roles), guard relays, shard manifests
//!   and seen nonces (replay protection).

mod error;
mod migrate;
mod registry;
mod sql;

pub use error::DbError;
pub use registry::{
    GuardRecord, ManifestRecord, NodeRecord, NonceRecord, PairRecord, Pruned,
    REGISTRY_SCHEMA_VERSION, RegisterLimits, RegisterOutcome, RegistryDb, RegistryLimit,
    UpdateOutcome,
};

/// Result of a database operation.
pub type Result<T, E = DbError> = std::result::Result<T, E>;
