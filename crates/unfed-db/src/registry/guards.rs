//! The registry's guard relays: a guard's registration (one transaction with its nonce and the
//! caps) and the healthy guards clients choose from. Heartbeats, unregistrations and pruning
//! of guards share the nodes' code in `write.rs`.

use rusqlite::{OptionalExtension, Row, params};
use unfed_identity::Address;

use super::write::{insert_nonce, over_caps, touch_manifest};
use super::{GuardRecord, NonceRecord, RegisterLimits, RegisterOutcome, RegistryDb};
use crate::DbError;
use crate::sql::{address_text, ordered_u64, read_address, read_ordered_u64, read_u32};

const GUARD_COLUMNS: &str =
    "identity, address, onion_key, registered_at_ms, last_heartbeat_ms, active_sessions";

impl RegistryDb {
    /// Records a guard's registration in one transaction: consumes `nonce` and inserts or
    /// refreshes `guard` (a refresh keeps the first `registered_at_ms`). A node registered under
    /// the same `(identity, address)` is removed: the address now serves a guard. A new row
    /// beyond `limits`' node caps (counted over guards) is refused; a refresh is not. A refused
    /// registration changes nothing.
    pub fn register_guard(
        &mut self,
        nonce: &NonceRecord,
        guard: &GuardRecord,
        limits: &RegisterLimits,
    ) -> Result<RegisterOutcome, DbError> {
        const DOING: &str = "recording a guard's registration";
        let tx = self.conn.transaction().map_err(DbError::sql(DOING))?;
        if !insert_nonce(&tx, nonce)? {
            return Ok(RegisterOutcome::Replay);
        }
        let identity = address_text(&guard.identity);
        let known = tx
            .query_row(
                "SELECT 1 FROM guards WHERE identity = ?1 AND address = ?2",
                params![identity, guard.address],
                |_| Ok(()),
            )
            .optional()
            .map_err(DbError::sql(DOING))?
            .is_some();
        if !known && let Some(refused) = over_caps(&tx, "guards", &identity, limits)? {
            return Ok(refused);
        }
        let now = ordered_u64("registration time", guard.registered_at_ms)?;
        tx.execute(
            "INSERT INTO guards (identity, address, onion_key, registered_at_ms,
                                 last_heartbeat_ms, active_sessions)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT (identity, address) DO UPDATE SET
                 onion_key = excluded.onion_key,
                 last_heartbeat_ms = excluded.last_heartbeat_ms,
                 active_sessions = excluded.active_sessions",
            params![
                identity,
                guard.address,
                guard.onion_key,
                now,
                ordered_u64("heartbeat time", guard.last_heartbeat_ms)?,
                guard.active_sessions,
            ],
        )
        .map_err(DbError::sql(DOING))?;
        let replaced: Option<String> = tx
            .query_row(
                "DELETE FROM nodes WHERE identity = ?1 AND address = ?2 RETURNING model_id",
                params![identity, guard.address],
                |r| r.get(0),
            )
            .optional()
            .map_err(DbError::sql(DOING))?;
        if let Some(model_id) = replaced {
            touch_manifest(&tx, &model_id, now)?;
        }
        tx.commit().map_err(DbError::sql(DOING))?;
        Ok(RegisterOutcome::Registered { new: !known })
    }

    /// Guards whose last heartbeat is at or after `heartbeat_since_ms` (0: all), at most
    /// `limit`, most recent heartbeat first, then by identity and address.
    pub fn guards(
        &self,
        heartbeat_since_ms: u64,
        limit: usize,
    ) -> Result<Vec<GuardRecord>, DbError> {
        const DOING: &str = "listing guards";
        let since = i64::try_from(heartbeat_since_ms).unwrap_or(i64::MAX);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let mut stmt = self
            .conn
            .prepare_cached(&format!(
                "SELECT {GUARD_COLUMNS} FROM guards WHERE last_heartbeat_ms >= ?1
                 ORDER BY last_heartbeat_ms DESC, identity, address LIMIT ?2"
            ))
            .map_err(DbError::sql(DOING))?;
        let rows = stmt
            .query_map(params![since, limit], RawGuard::from_row)
            .map_err(DbError::sql(DOING))?;
        let mut out = Vec::new();
        for row in rows {
            out.push(row.map_err(DbError::sql(DOING))?.into_record()?);
        }
        Ok(out)
    }

    /// The guard registered under `(identity, address)`, if any.
    pub fn guard(&self, identity: &Address, address: &str) -> Result<Option<GuardRecord>, DbError> {
        self.conn
            .query_row(
                &format!("SELECT {GUARD_COLUMNS} FROM guards WHERE identity = ?1 AND address = ?2"),
                params![address_text(identity), address],
                RawGuard::from_row,
            )
            .optional()
            .map_err(DbError::sql("reading a guard"))?
            .map(RawGuard::into_record)
            .transpose()
    }
}

/// Raw columns of a `guards` row ([`GUARD_COLUMNS`]), checked by [`RawGuard::into_record`].
struct RawGuard(String, String, Vec<u8>, i64, i64, i64);

impl RawGuard {
    fn from_row(r: &Row<'_>) -> rusqlite::Result<Self> {
        Ok(Self(
            r.get(0)?,
            r.get(1)?,
            r.get(2)?,
            r.get(3)?,
            r.get(4)?,
            r.get(5)?,
        ))
    }

    fn into_record(self) -> Result<GuardRecord, DbError> {
        const T: &str = "guards";
        let Self(identity, address, onion_key, registered, heartbeat, sessions) = self;
        Ok(GuardRecord {
            identity: read_address(T, &identity)?,
            address,
            onion_key,
            registered_at_ms: read_ordered_u64(T, "registered_at_ms", registered)?,
            last_heartbeat_ms: read_ordered_u64(T, "last_heartbeat_ms", heartbeat)?,
            active_sessions: read_u32(T, "active_sessions", sessions)?,
        })
    }
}
