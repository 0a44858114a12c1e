//! The registry's reads: nodes by key or by model, healthy mutual MPC pairs, manifests, nonces.

use rusqlite::{OptionalExtension, Row, params};
use unfed_identity::Address;

use super::{ManifestRecord, NodeRecord, PairRecord, RegistryDb};
use crate::DbError;
use crate::sql::{
    address_text, bits_u64, read_address, read_hash, read_mpc_role, read_ordered_u64, read_u32,
};

const NODE_COLUMNS: &str = "identity, address, model_id, shard_index, onion_key, \
                            registered_at_ms, last_heartbeat_ms, active_sessions, \
                            mpc_role, mpc_peer";

/// The columns of [`NODE_COLUMNS`] of table alias `t`, renamed `t_column`.
fn aliased_columns(t: &str) -> String {
    NODE_COLUMNS
        .split(',')
        .map(|c| format!("{t}.{c} AS {t}_{c}", c = c.trim()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The renamed columns of [`aliased_columns`].
fn alias_names(t: &str) -> String {
    NODE_COLUMNS
        .split(',')
        .map(|c| format!("{t}_{c}", c = c.trim()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Party B rows (`b`) that make a mutual pair with party A row `a`: same model and shard, role
/// B, and each naming the other's identity. Both healthy since `?since`.
const MUTUAL_B: &str = "b.identity = a.mpc_peer AND b.mpc_peer = a.identity AND b.mpc_role = 2
                        AND b.model_id = a.model_id AND b.shard_index = a.shard_index
                        AND b.last_heartbeat_ms >= :since";
/// Party A rows of `:model`'s shard `:shard`, healthy since `:since`.
const HEALTHY_A: &str = "a.model_id = :model AND a.shard_index = :shard AND a.mpc_role = 1
                         AND a.last_heartbeat_ms >= :since";

/// Raw columns of a `nodes` row, checked by [`RawNode::into_record`].
struct RawNode {
    identity: String,
    address: String,
    model_id: String,
    shard_index: i64,
    onion_key: Vec<u8>,
    registered_at_ms: i64,
    last_heartbeat_ms: i64,
    active_sessions: i64,
    mpc_role: i64,
    mpc_peer: Option<String>,
}

/// Columns in [`NODE_COLUMNS`].
const NODE_COLUMN_COUNT: usize = 10;

impl RawNode {
    fn from_row(r: &Row<'_>) -> rusqlite::Result<Self> {
        Self::from_row_at(r, 0)
    }

    /// The node whose [`NODE_COLUMNS`] start at column `at`.
    fn from_row_at(r: &Row<'_>, at: usize) -> rusqlite::Result<Self> {
        Ok(Self {
            identity: r.get(at)?,
            address: r.get(at + 1)?,
            model_id: r.get(at + 2)?,
            shard_index: r.get(at + 3)?,
            onion_key: r.get(at + 4)?,
            registered_at_ms: r.get(at + 5)?,
            last_heartbeat_ms: r.get(at + 6)?,
            active_sessions: r.get(at + 7)?,
            mpc_role: r.get(at + 8)?,
            mpc_peer: r.get(at + 9)?,
        })
    }

    fn into_record(self) -> Result<NodeRecord, DbError> {
        const T: &str = "nodes";
        Ok(NodeRecord {
            identity: read_address(T, &self.identity)?,
            address: self.address,
            model_id: self.model_id,
            shard_index: read_u32(T, "shard_index", self.shard_index)?,
            onion_key: self.onion_key,
            mpc: read_mpc_role(T, self.mpc_role, self.mpc_peer.as_deref())?,
            registered_at_ms: read_ordered_u64(T, "registered_at_ms", self.registered_at_ms)?,
            last_heartbeat_ms: read_ordered_u64(T, "last_heartbeat_ms", self.last_heartbeat_ms)?,
            active_sessions: read_u32(T, "active_sessions", self.active_sessions)?,
        })
    }
}

impl RegistryDb {
    /// The node registered under `(identity, address)`, if any.
    pub fn node(&self, identity: &Address, address: &str) -> Result<Option<NodeRecord>, DbError> {
        self.conn
            .query_row(
                &format!("SELECT {NODE_COLUMNS} FROM nodes WHERE identity = ?1 AND address = ?2"),
                params![address_text(identity), address],
                RawNode::from_row,
            )
            .optional()
            .map_err(DbError::sql("reading a node"))?
            .map(RawNode::into_record)
            .transpose()
    }

    /// Nodes of `model_id` whose last heartbeat is at or after `heartbeat_since_ms` (0: all),
    /// at most `per_shard` of each shard (the most recent ones; the cap is applied in SQL, so
    /// the other rows are never loaded), by shard index, most recent heartbeat first, then by
    /// identity and address.
    pub fn nodes_for_model(
        &self,
        model_id: &str,
        heartbeat_since_ms: u64,
        per_shard: usize,
    ) -> Result<Vec<NodeRecord>, DbError> {
        const DOING: &str = "listing a model's nodes";
        let since = i64::try_from(heartbeat_since_ms).unwrap_or(i64::MAX);
        let per_shard = i64::try_from(per_shard).unwrap_or(i64::MAX);
        let mut stmt = self
            .conn
            .prepare_cached(&format!(
                "SELECT {NODE_COLUMNS} FROM (
                     SELECT {NODE_COLUMNS}, ROW_NUMBER() OVER (
                         PARTITION BY shard_index
                         ORDER BY last_heartbeat_ms DESC, identity, address
                     ) AS rank
                     FROM nodes
                     WHERE model_id = ?1 AND last_heartbeat_ms >= ?2
                 )
                 WHERE rank <= ?3
                 ORDER BY shard_index, last_heartbeat_ms DESC, identity, address"
            ))
            .map_err(DbError::sql(DOING))?;
        let rows = stmt
            .query_map(params![model_id, since, per_shard], RawNode::from_row)
            .map_err(DbError::sql(DOING))?;
        let mut out = Vec::new();
        for row in rows {
            out.push(row.map_err(DbError::sql(DOING))?.into_record()?);
        }
        Ok(out)
    }

    /// How many nodes of `model_id` have a last heartbeat at or after `heartbeat_since_ms`, per
    /// shard index, by shard index (shards without such nodes are left out).
    pub fn node_counts_for_model(
        &self,
        model_id: &str,
        heartbeat_since_ms: u64,
    ) -> Result<Vec<(u32, u64)>, DbError> {
        const DOING: &str = "counting a model's nodes";
        let since = i64::try_from(heartbeat_since_ms).unwrap_or(i64::MAX);
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT shard_index, COUNT(*) FROM nodes
                 WHERE model_id = ?1 AND last_heartbeat_ms >= ?2
                 GROUP BY shard_index ORDER BY shard_index",
            )
            .map_err(DbError::sql(DOING))?;
        let rows = stmt
            .query_map(params![model_id, since], |r| {
                Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?))
            })
            .map_err(DbError::sql(DOING))?;
        let mut out = Vec::new();
        for row in rows {
            let (shard, n) = row.map_err(DbError::sql(DOING))?;
            out.push((
                read_u32("nodes", "shard_index", shard)?,
                read_ordered_u64("nodes", "count", n)?,
            ));
        }
        Ok(out)
    }

    /// The mutual MPC pairs of shard `shard_index` of `model_id` whose two parties both have a
    /// last heartbeat at or after `heartbeat_since_ms`: a party A row naming identity `B` as
    /// its peer, with a party B row of identity `B` for the same model and shard naming A's
    /// identity. One entry per A row, with the most recently heartbeating such B row (then by
    /// address); at most `limit` entries, most recent A heartbeat first, then by A's identity
    /// and address. B rows without such an A, and A rows without such a B, are left out.
    pub fn mpc_pairs(
        &self,
        model_id: &str,
        shard_index: u32,
        heartbeat_since_ms: u64,
        limit: usize,
    ) -> Result<Vec<PairRecord>, DbError> {
        const DOING: &str = "listing a model's MPC pairs";
        let since = i64::try_from(heartbeat_since_ms).unwrap_or(i64::MAX);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let mut stmt = self
            .conn
            .prepare_cached(&format!(
                "SELECT {a}, {b} FROM (
                     SELECT {a_cols}, {b_cols}, ROW_NUMBER() OVER (
                         PARTITION BY a.identity, a.address
                         ORDER BY b.last_heartbeat_ms DESC, b.address
                     ) AS pick
                     FROM nodes AS a JOIN nodes AS b ON {MUTUAL_B}
                     WHERE {HEALTHY_A}
                 )
                 WHERE pick = 1
                 ORDER BY a_last_heartbeat_ms DESC, a_identity, a_address
                 LIMIT :limit",
                a = alias_names("a"),
                b = alias_names("b"),
                a_cols = aliased_columns("a"),
                b_cols = aliased_columns("b"),
            ))
            .map_err(DbError::sql(DOING))?;
        let rows = stmt
            .query_map(
                rusqlite::named_params! {
                    ":model": model_id,
                    ":shard": shard_index,
                    ":since": since,
                    ":limit": limit,
                },
                |r| {
                    Ok((
                        RawNode::from_row_at(r, 0)?,
                        RawNode::from_row_at(r, NODE_COLUMN_COUNT)?,
                    ))
                },
            )
            .map_err(DbError::sql(DOING))?;
        let mut out = Vec::new();
        for row in rows {
            let (a, b) = row.map_err(DbError::sql(DOING))?;
            out.push(PairRecord {
                a: a.into_record()?,
                b: b.into_record()?,
            });
        }
        Ok(out)
    }

    /// How many entries [`RegistryDb::mpc_pairs`] would list without a limit: party A rows of
    /// shard `shard_index` of `model_id` with a mutual party B, both heartbeating at or after
    /// `heartbeat_since_ms`.
    pub fn mpc_pair_count(
        &self,
        model_id: &str,
        shard_index: u32,
        heartbeat_since_ms: u64,
    ) -> Result<u64, DbError> {
        const DOING: &str = "counting a model's MPC pairs";
        let since = i64::try_from(heartbeat_since_ms).unwrap_or(i64::MAX);
        let n: i64 = self
            .conn
            .prepare_cached(&format!(
                "SELECT COUNT(*) FROM nodes AS a
                 WHERE {HEALTHY_A}
                   AND EXISTS (SELECT 1 FROM nodes AS b WHERE {MUTUAL_B})"
            ))
            .map_err(DbError::sql(DOING))?
            .query_row(
                rusqlite::named_params! {
                    ":model": model_id,
                    ":shard": shard_index,
                    ":since": since,
                },
                |r| r.get(0),
            )
            .map_err(DbError::sql(DOING))?;
        read_ordered_u64("nodes", "count", n)
    }

    /// Number of registered nodes (healthy or not).
    pub fn node_count(&self) -> Result<u64, DbError> {
        let n: i64 = self
            .conn
            .query_row("SELECT COUNT(*) FROM nodes", [], |r| r.get(0))
            .map_err(DbError::sql("counting nodes"))?;
        read_ordered_u64("nodes", "count", n)
    }

    /// The manifest recorded for `model_id`, if any.
    pub fn manifest(&self, model_id: &str) -> Result<Option<ManifestRecord>, DbError> {
        let row: Option<(String, Vec<u8>, String)> = self
            .conn
            .query_row(
                "SELECT model_id, sha256, json FROM manifests WHERE model_id = ?1",
                params![model_id],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()
            .map_err(DbError::sql("reading a manifest"))?;
        row.map(|(model_id, sha, json)| {
            Ok(ManifestRecord {
                model_id,
                sha256: read_hash("manifests", sha)?,
                json,
            })
        })
        .transpose()
    }

    /// Every recorded manifest, by model id.
    pub fn manifests(&self) -> Result<Vec<ManifestRecord>, DbError> {
        const DOING: &str = "listing manifests";
        let mut stmt = self
            .conn
            .prepare("SELECT model_id, sha256, json FROM manifests ORDER BY model_id")
            .map_err(DbError::sql(DOING))?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, Vec<u8>>(1)?,
                    r.get::<_, String>(2)?,
                ))
            })
            .map_err(DbError::sql(DOING))?;
        let mut out = Vec::new();
        for row in rows {
            let (model_id, sha, json) = row.map_err(DbError::sql(DOING))?;
            out.push(ManifestRecord {
                model_id,
                sha256: read_hash("manifests", sha)?,
                json,
            });
        }
        Ok(out)
    }

    /// Whether `identity` already used `nonce` (and it has not been pruned).
    pub fn nonce_seen(&self, identity: &Address, nonce: u64) -> Result<bool, DbError> {
        self.conn
            .query_row(
                "SELECT EXISTS (SELECT 1 FROM seen_nonces WHERE identity = ?1 AND nonce = ?2)",
                params![address_text(identity), bits_u64(nonce)],
                |r| r.get(0),
            )
            .map_err(DbError::sql("looking up a nonce"))
    }

    /// Number of remembered nonces.
    pub fn nonce_count(&self) -> Result<u64, DbError> {
        let n: i64 = self
            .conn
            .query_row("SELECT COUNT(*) FROM seen_nonces", [], |r| r.get(0))
            .map_err(DbError::sql("counting nonces"))?;
        read_ordered_u64("seen_nonces", "count", n)
    }
}
