//! The registry's database: admitted nodes, guard relays, the shard manifest of each model, and
//! the nonces already seen per identity (so that a signed request cannot be replayed, even across a
//! restart).
//!
//! Writes that belong together (recording the nonce, checking the manifest, storing the node)
//! run in one transaction: a refused request changes nothing, not even the nonce table.

mod guards;
mod read;
mod write;

use std::path::{Path, PathBuf};

use rusqlite::Connection;
use unfed_identity::{Address, MpcRole};

use crate::DbError;
use crate::migrate::{Migration, migrate};
use crate::sql::open_connection;

/// The schema version this build writes.
pub const REGISTRY_SCHEMA_VERSION: u32 = 4;

const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        sql: "
CREATE TABLE nodes (
    identity          TEXT    NOT NULL,
    address           TEXT    NOT NULL,
    model_id          TEXT    NOT NULL,
    shard_index       INTEGER NOT NULL,
    onion_key         BLOB    NOT NULL,
    registered_at_ms  INTEGER NOT NULL,
    last_heartbeat_ms INTEGER NOT NULL,
    active_sessions   INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (identity, address)
) WITHOUT ROWID;
CREATE INDEX nodes_by_model ON nodes (model_id, shard_index, last_heartbeat_ms);

CREATE TABLE manifests (
    model_id    TEXT    PRIMARY KEY NOT NULL,
    sha256      BLOB    NOT NULL CHECK (length(sha256) = 32),
    json        TEXT    NOT NULL,
    added_at_ms INTEGER NOT NULL
);

CREATE TABLE seen_nonces (
    identity     TEXT    NOT NULL,
    nonce        INTEGER NOT NULL,
    timestamp_ms INTEGER NOT NULL,
    PRIMARY KEY (identity, nonce)
) WITHOUT ROWID;
CREATE INDEX seen_nonces_by_time ON seen_nonces (timestamp_ms);
",
    },
    // Bounded growth: `last_used_ms` is when a node row of the model was last added, moved away
    // or removed, so a manifest left without nodes can be pruned once it has been orphaned long
    // enough; stale nodes are found by heartbeat time.
    Migration {
        version: 2,
        sql: "
ALTER TABLE manifests ADD COLUMN last_used_ms INTEGER NOT NULL DEFAULT 0;
UPDATE manifests SET last_used_ms = MAX(
    added_at_ms,
    COALESCE((SELECT MAX(n.last_heartbeat_ms) FROM nodes n
              WHERE n.model_id = manifests.model_id), 0));
CREATE INDEX nodes_by_heartbeat ON nodes (last_heartbeat_ms);
",
    },
    // MPC pairs for shard 0: each node's signed role (0 plain, 1 party A, 2 party B) and, for a
    // party, the other party's identity. Rows from before are plain nodes.
    Migration {
        version: 3,
        sql: "
ALTER TABLE nodes ADD COLUMN mpc_role INTEGER NOT NULL DEFAULT 0
    CHECK (mpc_role IN (0, 1, 2));
ALTER TABLE nodes ADD COLUMN mpc_peer TEXT
    CHECK ((mpc_role = 0) = (mpc_peer IS NULL));
",
    },
    // Guard relays (`unfed guard`), keyed like nodes; an `(identity, address)` is a node or a
    // guard, never both.
    Migration {
        version: 4,
        sql: "
CREATE TABLE guards (
    identity          TEXT    NOT NULL,
    address           TEXT    NOT NULL,
    onion_key         BLOB    NOT NULL,
    registered_at_ms  INTEGER NOT NULL,
    last_heartbeat_ms INTEGER NOT NULL,
    active_sessions   INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (identity, address)
) WITHOUT ROWID;
CREATE INDEX guards_by_heartbeat ON guards (last_heartbeat_ms);
",
    },
];

/// An admitted node, keyed by `(identity, address)`: one identity may serve several addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeRecord {
    /// The node's staking identity (Ethereum address) that signed its registration.
    pub identity: Address,
    /// `host:port` where the node serves.
    pub address: String,
    /// The model it serves a shard of.
    pub model_id: String,
    /// The shard it serves.
    pub shard_index: u32,
    /// The node's public onion (X25519) key, as registered.
    pub onion_key: Vec<u8>,
    /// Its signed part in shard 0's MPC pair (party A or B and its peer), or none.
    pub mpc: MpcRole,
    /// Registry time of the first registration of this `(identity, address)`, ms since the epoch.
    pub registered_at_ms: u64,
    /// Registry time of the last registration or heartbeat, ms since the epoch.
    pub last_heartbeat_ms: u64,
    /// Sessions the node reported in its last heartbeat.
    pub active_sessions: u32,
}

/// An admitted guard relay, keyed by `(identity, address)` like a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuardRecord {
    /// The identity (Ethereum address) that signed its registration.
    pub identity: Address,
    /// `host:port` where the guard serves.
    pub address: String,
    /// The guard's public onion (X25519) key, as registered.
    pub onion_key: Vec<u8>,
    /// Registry time of the first registration of this `(identity, address)`, ms since the epoch.
    pub registered_at_ms: u64,
    /// Registry time of the last registration or heartbeat, ms since the epoch.
    pub last_heartbeat_ms: u64,
    /// Sessions the guard reported in its last heartbeat.
    pub active_sessions: u32,
}

/// A healthy mutual MPC pair: party `a` names `b` as its peer and `b` names `a`, both serving
/// shard 0 of the same model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PairRecord {
    /// Party A (the entry node clients connect to).
    pub a: NodeRecord,
    /// Party B (reached only through A).
    pub b: NodeRecord,
}

/// A model's shard manifest, exactly as its first node published it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestRecord {
    /// The model.
    pub model_id: String,
    /// SHA-256 of `json`'s bytes.
    pub sha256: [u8; 32],
    /// The manifest text (`manifest.json`).
    pub json: String,
}

/// A nonce used by a signed request, with the request's own timestamp.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NonceRecord {
    /// The signer.
    pub identity: Address,
    /// The request's nonce.
    pub nonce: u64,
    /// The request's signed timestamp, ms since the epoch (used for pruning).
    pub timestamp_ms: u64,
}

/// Caps checked by [`RegistryDb::register_node`] and [`RegistryDb::register_guard`] in their
/// transactions, so that state cannot grow without bound. Refreshing an existing
/// `(identity, address)` row is never refused by the node caps. Guards are capped apart from
/// nodes, by the same two node caps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegisterLimits {
    /// Most manifests (model ids) held; a new model id beyond it is refused.
    pub max_models: u32,
    /// Most node rows one identity may hold.
    pub max_nodes_per_identity: u32,
    /// Most node rows in all.
    pub max_nodes: u32,
}

impl RegisterLimits {
    /// No caps (for tests and tools).
    pub const UNLIMITED: Self = Self {
        max_models: u32::MAX,
        max_nodes_per_identity: u32::MAX,
        max_nodes: u32::MAX,
    };
}

/// Which cap of [`RegisterLimits`] refused a registration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegistryLimit {
    /// [`RegisterLimits::max_models`].
    Models,
    /// [`RegisterLimits::max_nodes_per_identity`].
    NodesPerIdentity,
    /// [`RegisterLimits::max_nodes`].
    Nodes,
}

/// What [`RegistryDb::prune_stale`] removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pruned {
    /// Node rows removed.
    pub nodes: usize,
    /// Guard rows removed.
    pub guards: usize,
    /// Model ids whose manifest was removed, by model id.
    pub manifests: Vec<String>,
}

/// What [`RegistryDb::register_node`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegisterOutcome {
    /// The node is recorded; `new` when `(identity, address)` was not registered before.
    Registered {
        /// First registration of this `(identity, address)`.
        new: bool,
    },
    /// The nonce was already used by this identity; nothing changed.
    Replay,
    /// The model already has a different manifest; nothing changed.
    ManifestConflict {
        /// SHA-256 of the manifest already recorded.
        existing_sha256: [u8; 32],
    },
    /// A cap of [`RegisterLimits`] is reached; nothing changed.
    LimitReached {
        /// Which cap.
        limit: RegistryLimit,
        /// Its value.
        max: u32,
    },
}

/// What a heartbeat or an unregistration (of a node or a guard) did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpdateOutcome {
    /// Applied.
    Done,
    /// The nonce was already used by this identity; nothing changed.
    Replay,
    /// No node or guard is registered under this `(identity, address)`; nothing changed.
    NotRegistered,
}

/// The registry's SQLite database. Not `Sync`: one owner (a dedicated thread) uses it.
pub struct RegistryDb {
    conn: Connection,
    path: PathBuf,
}

impl std::fmt::Debug for RegistryDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryDb")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl RegistryDb {
    /// Opens the database at `path`, creating the file if it is missing (its directory must
    /// exist), and migrates it to [`REGISTRY_SCHEMA_VERSION`]. `:memory:` opens a private
    /// in-memory database.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, DbError> {
        let path = path.as_ref().to_path_buf();
        let mut conn = open_connection(&path)?;
        migrate(&mut conn, &path, MIGRATIONS)?;
        Ok(Self { conn, path })
    }

    /// A private in-memory database (for tests).
    pub fn open_in_memory() -> Result<Self, DbError> {
        Self::open(":memory:")
    }

    /// The file this database lives in (`:memory:` for an in-memory one).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The schema version recorded in the file.
    pub fn schema_version(&self) -> Result<u32, DbError> {
        self.conn
            .query_row(
                "SELECT COALESCE(MAX(version), 0) FROM schema_version",
                [],
                |r| r.get(0),
            )
            .map_err(DbError::sql("reading the schema version"))
    }
}
