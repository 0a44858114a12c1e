//! The registry (cluster coordinator): signed node admission, heartbeats, health, model status,
//! discovery, manifests and cluster policy, with its gRPC service.
//!
//! - [`RegistryCore`]: the logic, over a [`unfed_db::RegistryDb`] and an injectable [`Clock`];
//!   no networking. Shard 0 of a model whose manifest has an `mpc` plan is served by MPC pairs:
//!   nodes register as party A or B naming each other, and only healthy mutual pairs count for
//!   status and are discovered (as A, carrying B). Guard relays register too and are listed
//!   to clients choosing one. Every write is a canonical payload (`unfed_identity::canonical`) signed by
//!   the node's identity, with a timestamp inside the clock-skew window and a nonce never used
//!   before by that identity (persisted, so a restart does not reopen a replay window).
//! - [`CoreThread`] / [`CoreHandle`]: the dedicated thread that owns the core and its SQLite
//!   connection; async code talks to it over a bounded channel.
//! - [`RegistryService`], [`to_status`], [`serve`]: the tonic service, the one error-to-status
//!   mapping, and the server loop the `unfed registry` command runs.
//! - [`ClusterConfig`] (the `--cluster-config` file) and [`RegistryOptions`] (timing,
//!   growth caps).
//!
//! The protocol is specified in `docs/protocol.md`, section "Registry".

mod clock;
mod config;
mod core;
mod error;
mod service;
mod status;
mod validate;
mod worker;

pub use crate::core::{OpenError, Registered, RegistryCore};
pub use clock::{Clock, ManualClock, SystemClock};
pub use config::{
    ClusterConfig, ConfigError, MAX_CONFIG_BYTES, RegistryOptions, STALE_HEALTH_WINDOWS,
};
pub use error::RegistryError;
pub use service::{MAX_CONCURRENT_PER_CONNECTION, RegistryService, ServeError, serve, to_status};
pub use status::{
    DiscoveredNode, Discovery, MAX_DISCOVERED_PER_SHARD, MAX_LISTED_GUARDS, ModelStatus, PairPeer,
    Readiness, ShardCoverage,
};
pub use validate::{MAX_MANIFEST_JSON, MAX_MODEL_ID_CHARS, ModelShards, ONION_KEY_LEN};
pub use worker::{CoreHandle, CoreThread, QUEUE_CAPACITY};
