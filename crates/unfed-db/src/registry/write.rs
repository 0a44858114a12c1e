//! The registry's writes: a node's registration, heartbeats and unregistrations (of nodes and
//! guards), each one transaction that also consumes the request's nonce (with the growth caps
//! checked inside it), and pruning of old nonces, stale nodes and guards, and orphaned
//! manifests. A guard's registration is in `guards.rs`.

use rusqlite::{OptionalExtension, Transaction, params};
use unfed_identity::Address;

use super::{
    ManifestRecord, NodeRecord, NonceRecord, Pruned, RegisterLimits, RegisterOutcome, RegistryDb,
    RegistryLimit, UpdateOutcome,
};
use crate::DbError;
use crate::sql::{address_text, bits_u64, mpc_role_columns, ordered_u64, read_hash};

impl RegistryDb {
    /// Records a registration in one transaction: consumes `nonce`, records `manifest` if the
    /// model has none (refusing a different one), and inserts or refreshes `node` (a refresh
    /// keeps the first `registered_at_ms` and replaces everything else, the MPC role included).
    /// A guard registered under the same `(identity, address)` is removed: the address now
    /// serves a node. A new model id or a new `(identity, address)` row beyond `limits` is
    /// refused; a refresh of an existing row is not. A refused registration changes nothing.
    pub fn register_node(
        &mut self,
        nonce: &NonceRecord,
        manifest: &ManifestRecord,
        node: &NodeRecord,
        limits: &RegisterLimits,
    ) -> Result<RegisterOutcome, DbError> {
        const DOING: &str = "recording a registration";
        let tx = self.conn.transaction().map_err(DbError::sql(DOING))?;
        if !insert_nonce(&tx, nonce)? {
            return Ok(RegisterOutcome::Replay);
        }
        let now = ordered_u64("registration time", node.registered_at_ms)?;
        let existing: Option<Vec<u8>> = tx
            .query_row(
                "SELECT sha256 FROM manifests WHERE model_id = ?1",
                params![manifest.model_id],
                |r| r.get(0),
            )
            .optional()
            .map_err(DbError::sql(DOING))?;
        let new_model = match existing {
            Some(sha) => {
                let existing_sha256 = read_hash("manifests", sha)?;
                if existing_sha256 != manifest.sha256 {
                    return Ok(RegisterOutcome::ManifestConflict { existing_sha256 });
                }
                false
            }
            None => true,
        };
        if new_model && count(&tx, "SELECT COUNT(*) FROM manifests", [])? >= limits.max_models {
            return Ok(limit(RegistryLimit::Models, limits.max_models));
        }
        let identity = address_text(&node.identity);
        let previous_model: Option<String> = tx
            .query_row(
                "SELECT model_id FROM nodes WHERE identity = ?1 AND address = ?2",
                params![identity, node.address],
                |r| r.get(0),
            )
            .optional()
            .map_err(DbError::sql(DOING))?;
        let known = previous_model.is_some();
        if !known && let Some(refused) = over_caps(&tx, "nodes", &identity, limits)? {
            return Ok(refused);
        }
        if new_model {
            tx.execute(
                "INSERT INTO manifests (model_id, sha256, json, added_at_ms, last_used_ms)
                 VALUES (?1, ?2, ?3, ?4, ?4)",
                params![
                    manifest.model_id,
                    manifest.sha256.as_slice(),
                    manifest.json,
                    now,
                ],
            )
            .map_err(DbError::sql(DOING))?;
        }
        let (mpc_role, mpc_peer) = mpc_role_columns(&node.mpc);
        tx.execute(
            "INSERT INTO nodes (identity, address, model_id, shard_index, onion_key,
                                registered_at_ms, last_heartbeat_ms, active_sessions,
                                mpc_role, mpc_peer)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)
             ON CONFLICT (identity, address) DO UPDATE SET
                 model_id = excluded.model_id,
                 shard_index = excluded.shard_index,
                 onion_key = excluded.onion_key,
                 last_heartbeat_ms = excluded.last_heartbeat_ms,
                 active_sessions = excluded.active_sessions,
                 mpc_role = excluded.mpc_role,
                 mpc_peer = excluded.mpc_peer",
            params![
                identity,
                node.address,
                node.model_id,
                node.shard_index,
                node.onion_key,
                now,
                ordered_u64("heartbeat time", node.last_heartbeat_ms)?,
                node.active_sessions,
                mpc_role,
                mpc_peer,
            ],
        )
        .map_err(DbError::sql(DOING))?;
        tx.execute(
            "DELETE FROM guards WHERE identity = ?1 AND address = ?2",
            params![identity, node.address],
        )
        .map_err(DbError::sql(DOING))?;
        // The model gained a node; a model this row moved away from may have lost its last.
        touch_manifest(&tx, &node.model_id, now)?;
        if let Some(prev) = previous_model.filter(|m| *m != node.model_id) {
            touch_manifest(&tx, &prev, now)?;
        }
        tx.commit().map_err(DbError::sql(DOING))?;
        Ok(RegisterOutcome::Registered { new: !known })
    }

    /// Records a heartbeat of the node or guard `(identity, address)` in one transaction with
    /// its nonce.
    pub fn heartbeat(
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
        let (identity, at) = (
            address_text(identity),
            ordered_u64("heartbeat time", heartbeat_ms)?,
        );
        let mut changed = 0;
        for table in ["nodes", "guards"] {
            changed += tx
                .execute(
                    &format!(
                        "UPDATE {table} SET last_heartbeat_ms = ?3, active_sessions = ?4
                         WHERE identity = ?1 AND address = ?2"
                    ),
                    params![identity, address, at, active_sessions],
                )
                .map_err(DbError::sql(DOING))?;
        }
        if changed == 0 {
            // Dropping the transaction rolls the nonce back.
            return Ok(UpdateOutcome::NotRegistered);
        }
        tx.commit().map_err(DbError::sql(DOING))?;
        Ok(UpdateOutcome::Done)
    }

    /// Removes the node or guard `(identity, address)` in one transaction with its nonce. A
    /// node's manifest stays.
    pub fn unregister(
        &mut self,
        nonce: &NonceRecord,
        identity: &Address,
        address: &str,
        now_ms: u64,
    ) -> Result<UpdateOutcome, DbError> {
        const DOING: &str = "removing a node or guard";
        let tx = self.conn.transaction().map_err(DbError::sql(DOING))?;
        if !insert_nonce(&tx, nonce)? {
            return Ok(UpdateOutcome::Replay);
        }
        let guards = tx
            .execute(
                "DELETE FROM guards WHERE identity = ?1 AND address = ?2",
                params![address_text(identity), address],
            )
            .map_err(DbError::sql(DOING))?;
        if guards > 0 {
            tx.commit().map_err(DbError::sql(DOING))?;
            return Ok(UpdateOutcome::Done);
        }
        let removed: Option<String> = tx
            .query_row(
                "DELETE FROM nodes WHERE identity = ?1 AND address = ?2 RETURNING model_id",
                params![address_text(identity), address],
                |r| r.get(0),
            )
            .optional()
            .map_err(DbError::sql(DOING))?;
        let Some(model_id) = removed else {
            return Ok(UpdateOutcome::NotRegistered);
        };
        touch_manifest(&tx, &model_id, ordered_u64("unregistration time", now_ms)?)?;
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

    /// In one transaction: removes node and guard rows whose last heartbeat is before
    /// `before_ms`, then manifests that have no node row and whose model last gained or lost a
    /// node row before `before_ms` (the removal of a stale row counts as a loss at `now_ms`, so a manifest
    /// outlives its last node by the same delay). Returns what was removed.
    pub fn prune_stale(&mut self, before_ms: u64, now_ms: u64) -> Result<Pruned, DbError> {
        const DOING: &str = "pruning stale nodes and manifests";
        let cutoff = i64::try_from(before_ms).unwrap_or(i64::MAX);
        let now = ordered_u64("prune time", now_ms)?;
        let tx = self.conn.transaction().map_err(DbError::sql(DOING))?;
        tx.execute(
            "UPDATE manifests SET last_used_ms = MAX(last_used_ms, ?2)
             WHERE model_id IN (SELECT model_id FROM nodes WHERE last_heartbeat_ms < ?1)",
            params![cutoff, now],
        )
        .map_err(DbError::sql(DOING))?;
        let nodes = tx
            .execute(
                "DELETE FROM nodes WHERE last_heartbeat_ms < ?1",
                params![cutoff],
            )
            .map_err(DbError::sql(DOING))?;
        let guards = tx
            .execute(
                "DELETE FROM guards WHERE last_heartbeat_ms < ?1",
                params![cutoff],
            )
            .map_err(DbError::sql(DOING))?;
        let mut manifests = {
            let mut stmt = tx
                .prepare_cached(
                    "DELETE FROM manifests
                     WHERE last_used_ms < ?1
                       AND NOT EXISTS (SELECT 1 FROM nodes WHERE nodes.model_id = manifests.model_id)
                     RETURNING model_id",
                )
                .map_err(DbError::sql(DOING))?;
            let rows = stmt
                .query_map(params![cutoff], |r| r.get::<_, String>(0))
                .map_err(DbError::sql(DOING))?;
            rows.collect::<rusqlite::Result<Vec<_>>>()
                .map_err(DbError::sql(DOING))?
        };
        tx.commit().map_err(DbError::sql(DOING))?;
        manifests.sort();
        Ok(Pruned {
            nodes,
            guards,
            manifests,
        })
    }
}

/// Whether a new row of `identity` in `table` (`nodes` or `guards`) would pass a cap of
/// `limits`: the refusal if so.
pub(super) fn over_caps(
    tx: &Transaction<'_>,
    table: &str,
    identity: &str,
    limits: &RegisterLimits,
) -> Result<Option<RegisterOutcome>, DbError> {
    let mine = count(
        tx,
        &format!("SELECT COUNT(*) FROM {table} WHERE identity = ?1"),
        params![identity],
    )?;
    if mine >= limits.max_nodes_per_identity {
        return Ok(Some(limit(
            RegistryLimit::NodesPerIdentity,
            limits.max_nodes_per_identity,
        )));
    }
    if count(tx, &format!("SELECT COUNT(*) FROM {table}"), [])? >= limits.max_nodes {
        return Ok(Some(limit(RegistryLimit::Nodes, limits.max_nodes)));
    }
    Ok(None)
}

fn limit(limit: RegistryLimit, max: u32) -> RegisterOutcome {
    // Dropping the transaction rolls the nonce back.
    RegisterOutcome::LimitReached { limit, max }
}

/// `SELECT COUNT(*) ...` as a u32 (saturating), for comparing with a cap.
fn count(tx: &Transaction<'_>, sql: &str, p: impl rusqlite::Params) -> Result<u32, DbError> {
    let n: i64 = tx
        .query_row(sql, p, |r| r.get(0))
        .map_err(DbError::sql("counting rows against a cap"))?;
    Ok(u32::try_from(n).unwrap_or(u32::MAX))
}

/// Records that a node row of `model_id` was added, moved away or removed at `at_ms`.
pub(super) fn touch_manifest(
    tx: &Transaction<'_>,
    model_id: &str,
    at_ms: i64,
) -> Result<(), DbError> {
    tx.execute(
        "UPDATE manifests SET last_used_ms = MAX(last_used_ms, ?2) WHERE model_id = ?1",
        params![model_id, at_ms],
    )
    .map_err(DbError::sql("recording a manifest's use"))?;
    Ok(())
}

/// Records a nonce; false when this identity already used it.
pub(super) fn insert_nonce(tx: &Transaction<'_>, n: &NonceRecord) -> Result<bool, DbError> {
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
