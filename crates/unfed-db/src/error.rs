//! Typed database errors, each saying what the database was doing when it failed.

use std::path::PathBuf;

/// A database failure. Messages name the operation and, for open errors, the file; they are for
/// operators and logs, not for network peers (services map them to a generic message).
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// The file could not be opened or configured.
    #[error("cannot open database {}: {source}", .path.display())]
    Open {
        /// The database file.
        path: PathBuf,
        /// What SQLite reported.
        source: rusqlite::Error,
    },

    /// The file was written by a newer build whose schema this build does not know.
    #[error(
        "database {} has schema version {found}, newer than the {supported} this build knows: \
         upgrade this program or use another file",
        .path.display()
    )]
    SchemaTooNew {
        /// The database file.
        path: PathBuf,
        /// The version recorded in the file.
        found: u32,
        /// The newest version this build can migrate to.
        supported: u32,
    },

    /// A migration failed; the file is left at the previous version.
    #[error("cannot migrate database {} to schema version {version}: {source}", .path.display())]
    Migration {
        /// The database file.
        path: PathBuf,
        /// The version being applied.
        version: u32,
        /// What SQLite reported.
        source: rusqlite::Error,
    },

    /// A query failed.
    #[error("database error while {doing}: {source}")]
    Sql {
        /// The operation (`recording a heartbeat`).
        doing: &'static str,
        /// What SQLite reported.
        source: rusqlite::Error,
    },

    /// A stored row does not hold what this build wrote (edited by hand, or corrupted).
    #[error("corrupt row in table {table}: {problem}")]
    Corrupt {
        /// The table.
        table: &'static str,
        /// What is wrong with it.
        problem: String,
    },

    /// A value is too large for an SQLite INTEGER (signed 64 bits).
    #[error("{what} {value} is too large to store (at most {})", i64::MAX)]
    OutOfRange {
        /// Which value.
        what: &'static str,
        /// The value.
        value: u64,
    },
}

impl DbError {
    /// Wraps a query error with the operation it interrupted.
    pub(crate) fn sql(doing: &'static str) -> impl FnOnce(rusqlite::Error) -> Self {
        move |source| Self::Sql { doing, source }
    }
}
