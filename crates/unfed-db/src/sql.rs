//! Conversions between Rust values and SQLite storage classes, and opening a configured
//! connection (WAL, busy timeout).

use std::path::Path;
use std::time::Duration;

use rusqlite::Connection;
use unfed_identity::{Address, MpcRole};

use crate::DbError;

/// How long a writer waits for another connection's lock before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Opens (creating if missing) `path`, or an in-memory database for `:memory:`, in WAL mode.
pub(crate) fn open_connection(path: &Path) -> Result<Connection, DbError> {
    let open_err = |source| DbError::Open {
        path: path.to_path_buf(),
        source,
    };
    let conn = Connection::open(path).map_err(open_err)?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(open_err)?;
    // In-memory databases answer `memory`; files switch to (and stay in) `wal`.
    let _mode: String = conn
        .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
        .map_err(open_err)?;
    conn.execute_batch("PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON;")
        .map_err(open_err)?;
    Ok(conn)
}

/// A u64 that must keep its order in SQL comparisons (timestamps): stored as is, if it fits.
pub(crate) fn ordered_u64(what: &'static str, value: u64) -> Result<i64, DbError> {
    i64::try_from(value).map_err(|_| DbError::OutOfRange { what, value })
}

/// Reads back a value stored with [`ordered_u64`].
pub(crate) fn read_ordered_u64(table: &'static str, what: &str, v: i64) -> Result<u64, DbError> {
    u64::try_from(v).map_err(|_| DbError::Corrupt {
        table,
        problem: format!("negative {what} {v}"),
    })
}

/// A u64 compared only for equality (nonces): its bits, reinterpreted as i64.
pub(crate) fn bits_u64(value: u64) -> i64 {
    i64::from_ne_bytes(value.to_ne_bytes())
}

/// Reads back a u32 column.
pub(crate) fn read_u32(table: &'static str, what: &str, v: i64) -> Result<u32, DbError> {
    u32::try_from(v).map_err(|_| DbError::Corrupt {
        table,
        problem: format!("{what} {v} is not a 32-bit unsigned value"),
    })
}

/// Identities are stored as their `0x…` lower-case text, readable with the sqlite3 shell.
pub(crate) fn address_text(a: &Address) -> String {
    a.to_string()
}

/// Reads back an identity stored with [`address_text`].
pub(crate) fn read_address(table: &'static str, text: &str) -> Result<Address, DbError> {
    text.parse().map_err(|_| DbError::Corrupt {
        table,
        problem: format!("identity `{text}` is not a 0x-prefixed 20-byte address"),
    })
}

/// Reads back a 32-byte hash.
pub(crate) fn read_hash(table: &'static str, bytes: Vec<u8>) -> Result<[u8; 32], DbError> {
    let len = bytes.len();
    bytes.try_into().map_err(|_| DbError::Corrupt {
        table,
        problem: format!("sha256 holds {len} bytes, not 32"),
    })
}

/// An MPC role as its `(mpc_role, mpc_peer)` columns: the role byte of the signed payload and,
/// for a party, the peer's identity as text.
pub(crate) fn mpc_role_columns(role: &MpcRole) -> (u8, Option<String>) {
    (role.tag(), role.peer().as_ref().map(address_text))
}

/// Reads back an MPC role stored with [`mpc_role_columns`].
pub(crate) fn read_mpc_role(
    table: &'static str,
    role: i64,
    peer: Option<&str>,
) -> Result<MpcRole, DbError> {
    let peer = peer.map(|p| read_address(table, p)).transpose()?;
    u8::try_from(role)
        .ok()
        .and_then(|tag| MpcRole::from_parts(tag, peer))
        .ok_or_else(|| DbError::Corrupt {
            table,
            problem: format!(
                "mpc_role {role} with {} mpc_peer is not a valid MPC role",
                if peer.is_some() { "an" } else { "no" }
            ),
        })
}
