//! The schema version table and the migration runner shared by every database of this crate.

use std::path::Path;

use rusqlite::{Connection, TransactionBehavior, params};

use crate::DbError;

/// One schema step: the SQL that takes the schema from `version - 1` to `version`.
pub(crate) struct Migration {
    /// The version this step produces (1, 2, ... without gaps).
    pub version: u32,
    /// Statements run in one transaction.
    pub sql: &'static str,
}

const VERSION_TABLE: &str = "CREATE TABLE IF NOT EXISTS schema_version (
    version INTEGER PRIMARY KEY NOT NULL,
    applied_at_ms INTEGER NOT NULL
)";

/// Applies the migrations the database lacks, each in its own immediate transaction (so two
/// processes opening the same new file do not both apply it); returns the resulting version.
pub(crate) fn migrate(
    conn: &mut Connection,
    path: &Path,
    migrations: &[Migration],
) -> Result<u32, DbError> {
    let supported = migrations.last().map_or(0, |m| m.version);
    let open_err = |source| DbError::Open {
        path: path.to_path_buf(),
        source,
    };
    conn.execute_batch(VERSION_TABLE).map_err(open_err)?;
    let mut current = current_version(conn).map_err(open_err)?;
    if current > supported {
        return Err(DbError::SchemaTooNew {
            path: path.to_path_buf(),
            found: current,
            supported,
        });
    }
    let applied_at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
    for m in migrations {
        if m.version <= current {
            continue;
        }
        let fail = |source| DbError::Migration {
            path: path.to_path_buf(),
            version: m.version,
            source,
        };
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(fail)?;
        // Another process may have migrated between our read and our lock.
        let now_current = current_version(&tx).map_err(fail)?;
        if now_current >= m.version {
            current = now_current;
            continue;
        }
        tx.execute_batch(m.sql).map_err(fail)?;
        tx.execute(
            "INSERT INTO schema_version (version, applied_at_ms) VALUES (?1, ?2)",
            params![m.version, applied_at],
        )
        .map_err(fail)?;
        tx.commit().map_err(fail)?;
        current = m.version;
    }
    Ok(current)
}

/// The highest applied version (0 for a new file).
fn current_version(conn: &Connection) -> rusqlite::Result<u32> {
    conn.query_row(
        "SELECT COALESCE(MAX(version), 0) FROM schema_version",
        [],
        |r| r.get(0),
    )
}
