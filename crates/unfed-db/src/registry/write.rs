//! The registry's writes: registration, heartbeat and unregistration, each one transaction that
//! also consumes the request's nonce, and nonce pruning.

use rusqlite::{OptionalExtension, Transaction, params};
use unfed_identity::Address;

use super::{ManifestRecord, NodeRecord, NonceRecord, RegisterOutcome, RegistryDb, UpdateOutcome};
use crate::DbError;
use crate::sql::{address_text, bits_u64, ordered_u64, read_hash};

impl RegistryDb {
    /// Records a registration in one transaction: consumes `nonce`, records `manifest` if the
    /// model has none (refusing a different one), and inserts or refreshes `node` (a refresh
    /// keeps the first `registered_at_ms`). A refused registration changes nothing.
    pub fn register_node(
        &mut self,
        nonce: &NonceRecord,
        manifest: &ManifestRecord,
        node: &NodeRecord,
    ) -> Result<RegisterOutcome, DbError> {
        const DOING: &str = "recording a registration";
        let tx = self.conn.transaction().map_err(DbError::sql(DOING))?;
        if !insert_nonce(&tx, nonce)? {
            return Ok(RegisterOutcome::Replay);
        }
        let existing: Option<Vec<u8>> = tx
            .query_row(
                "SELECT sha256 FROM manifests WHERE model_id = ?1",
                params![manifest.model_id],
                |r| r.get(0),
            )
            .optional()
            .map_err(DbError::sql(DOING))?;
        match existing {
            Some(sha) => {
                let existing_sha256 = read_hash("manifests", sha)?;
                if existing_sha256 != manifest.sha256 {
                    return Ok(RegisterOutcome::ManifestConflict { existing_sha256 });
                }
            }
            None => {
                tx.execute(
                    "INSERT INTO manifests (model_id, sha256, json, added_at_ms)
                     VALUES (?1, ?2, ?3, ?4)",
                    params![
                        manifest.model_id,
                        manifest.sha256.as_slice(),
                        manifest.json,
                        ordered_u64("registration time", node.registered_at_ms)?,
                    ],
                )
                .map_err(DbError::sql(DOING))?;
            }
        }
        let identity = address_text(&node.identity);
        let known: bool = tx
            .query_row(
                "SELECT EXISTS (SELECT 1 FROM nodes WHERE identity = ?1 AND address = ?2)",
                params![identity, node.address],
                |r| r.get(0),
            )
            .map_err(DbError::sql(DOING))?;
        tx.execute(
            "INSERT INTO nodes (identity, address, model_id, shard_index, onion_key,
                                registered_at_ms, last_heartbeat_ms, active_sessions)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
             ON CONFLICT (identity, address) DO UPDATE SET
                 model_id = excluded.model_id,
                 shard_index = excluded.shard_index,
                 onion_key = excluded.onion_key,
                 last_heartbeat_ms = excluded.last_heartbeat_ms,
                 active_sessions = excluded.active_sessions",
            params![
                identity,
                node.address,
                node.model_id,
                node.shard_index,
                node.onion_key,
                ordered_u64("registration time", node.registered_at_ms)?,
                ordered_u64("heartbeat time", node.last_heartbeat_ms)?,
                node.active_sessions,
            ],
        )
        .map_err(DbError::sql(DOING))?;
        tx.commit().map_err(DbError::sql(DOING))?;
        Ok(RegisterOutcome::Registered { new: !known })
    }

    /// Records a heartbeat of the node `(identity, address)` in one transaction with its nonce.
    pub fn heartbeat_node(
        &mut self,
        nonce: &NonceRecord,
        identity: &Address,
        address: &str,
        heartbeat_ms: u64,
        active_sessions: u32,
    ) -> Result<UpdateOutcome, DbError> {
        const DOING: &str = "recording a heartbeat";
        let tx = self.conn.transaction().map_err(DbError::sql(DOING))?;
        if !insert_nonce(&tx, nonce)? {
            return Ok(UpdateOutcome::Replay);
        }
        let changed = tx
            .execute(
                "UPDATE nodes SET last_heartbeat_ms = ?3, active_sessions = ?4
                 WHERE identity = ?1 AND address = ?2",
                params![
                    address_text(identity),
                    address,
                    ordered_u64("heartbeat time", heartbeat_ms)?,
                    active_sessions,
                ],
            )
            .map_err(DbError::sql(DOING))?;
        if changed == 0 {
            // Dropping the transaction rolls the nonce back.
            return Ok(UpdateOutcome::NotRegistered);
        }
        tx.commit().map_err(DbError::sql(DOING))?;
        Ok(UpdateOutcome::Done)
    }

    /// Removes the node `(identity, address)` in one transaction with its nonce. The model's
    /// manifest stays.
    pub fn unregister_node(
        &mut self,
        nonce: &NonceRecord,
        identity: &Address,
        address: &str,
    ) -> Result<UpdateOutcome, DbError> {
        const DOING: &str = "removing a node";
        let tx = self.conn.transaction().map_err(DbError::sql(DOING))?;
        if !insert_nonce(&tx, nonce)? {
            return Ok(UpdateOutcome::Replay);
        }
        let removed = tx
            .execute(
                "DELETE FROM nodes WHERE identity = ?1 AND address = ?2",
                params![address_text(identity), address],
            )
            .map_err(DbError::sql(DOING))?;
        if removed == 0 {
            return Ok(UpdateOutcome::NotRegistered);
        }
        tx.commit().map_err(DbError::sql(DOING))?;
        Ok(UpdateOutcome::Done)
    }

    /// Forgets nonces whose request timestamp is before `before_ms`; returns how many. Callers
    /// pass the oldest timestamp they still accept, so a forgotten nonce cannot be replayed.
    pub fn prune_nonces(&mut self, before_ms: u64) -> Result<usize, DbError> {
        // Timestamps beyond i64::MAX cannot be stored, so every stored nonce is older.
        let cutoff = i64::try_from(before_ms).unwrap_or(i64::MAX);
        self.conn
            .execute(
                "DELETE FROM seen_nonces WHERE timestamp_ms < ?1",
                params![cutoff],
            )
            .map_err(DbError::sql("pruning old nonces"))
    }
}

/// Records a nonce; false when this identity already used it.
fn insert_nonce(tx: &Transaction<'_>, n: &NonceRecord) -> Result<bool, DbError> {
    let inserted = tx
        .execute(
            "INSERT INTO seen_nonces (identity, nonce, timestamp_ms) VALUES (?1, ?2, ?3)
             ON CONFLICT (identity, nonce) DO NOTHING",
            params![
                address_text(&n.identity),
                bits_u64(n.nonce),
                ordered_u64("request timestamp", n.timestamp_ms)?,
            ],
        )
        .map_err(DbError::sql("recording a nonce"))?;
    Ok(inserted == 1)
}
