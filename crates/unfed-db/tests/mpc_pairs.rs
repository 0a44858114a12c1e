//! MPC roles in the registry database: stored and read back (across a reopen and a migration
//! from version 2), checked on read, and the healthy-mutual-pair queries.

use unfed_db::{
    DbError, ManifestRecord, NodeRecord, NonceRecord, PairRecord, REGISTRY_SCHEMA_VERSION,
    RegisterLimits, RegisterOutcome, RegistryDb,
};
use unfed_identity::{Address, MpcRole};

fn addr(byte: u8) -> Address {
    Address([byte; 20])
}

fn manifest() -> ManifestRecord {
    ManifestRecord {
        model_id: "tiny".into(),
        sha256: [3; 32],
        json: "{}".into(),
    }
}

fn node(identity: Address, address: &str, shard: u32, mpc: MpcRole, at: u64) -> NodeRecord {
    NodeRecord {
        identity,
        address: address.into(),
        model_id: "tiny".into(),
        shard_index: shard,
        onion_key: vec![identity.0[0]; 32],
        mpc,
        registered_at_ms: at,
        last_heartbeat_ms: at,
        active_sessions: 0,
    }
}

/// Registers `n` (under a fresh nonce) and checks that it was recorded.
fn put(db: &mut RegistryDb, n: &NodeRecord) {
    let next = db.nonce_count().unwrap() + 1;
    let nonce = NonceRecord {
        identity: n.identity,
        nonce: next,
        timestamp_ms: n.last_heartbeat_ms,
    };
    let out = db
        .register_node(&nonce, &manifest(), n, &RegisterLimits::UNLIMITED)
        .unwrap();
    assert!(matches!(out, RegisterOutcome::Registered { .. }), "{out:?}");
}

fn a_of(peer: Address) -> MpcRole {
    MpcRole::A { peer }
}

fn b_of(peer: Address) -> MpcRole {
    MpcRole::B { peer }
}

/// `(A identity, A address, B identity, B address)` of each listed pair.
fn view(pairs: &[PairRecord]) -> Vec<(u8, &str, u8, &str)> {
    pairs
        .iter()
        .map(|p| {
            (
                p.a.identity.0[0],
                p.a.address.as_str(),
                p.b.identity.0[0],
                p.b.address.as_str(),
            )
        })
        .collect()
}

#[test]
fn roles_are_stored_refreshed_and_kept_across_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r.db");
    {
        let mut db = RegistryDb::open(&path).unwrap();
        assert_eq!(db.schema_version().unwrap(), REGISTRY_SCHEMA_VERSION);
        put(&mut db, &node(addr(1), "h:1", 0, a_of(addr(2)), 1000));
        put(&mut db, &node(addr(2), "h:2", 0, b_of(addr(1)), 1000));
        put(&mut db, &node(addr(3), "h:3", 1, MpcRole::None, 1000));
        // A refresh replaces the role.
        put(&mut db, &node(addr(4), "h:4", 0, a_of(addr(5)), 1000));
        put(&mut db, &node(addr(4), "h:4", 0, b_of(addr(6)), 1001));
    }
    let db = RegistryDb::open(&path).unwrap();
    let role = |id: u8, address: &str| db.node(&addr(id), address).unwrap().unwrap().mpc;
    assert_eq!(role(1, "h:1"), a_of(addr(2)));
    assert_eq!(role(2, "h:2"), b_of(addr(1)));
    assert_eq!(role(3, "h:3"), MpcRole::None);
    assert_eq!(role(4, "h:4"), b_of(addr(6)));
    let listed: Vec<MpcRole> = db
        .nodes_for_model("tiny", 0, 64)
        .unwrap()
        .into_iter()
        .map(|n| n.mpc)
        .collect();
    assert_eq!(listed.len(), 4);
    assert!(listed.contains(&a_of(addr(2))) && listed.contains(&MpcRole::None));
}

#[test]
fn pairs_are_mutual_healthy_and_on_the_same_shard() {
    let mut db = RegistryDb::open_in_memory().unwrap();
    // 1 <-> 2: a mutual pair.
    put(&mut db, &node(addr(1), "a:1", 0, a_of(addr(2)), 1000));
    put(&mut db, &node(addr(2), "b:2", 0, b_of(addr(1)), 1000));
    // 3 names 4, but 4 names 5: not mutual.
    put(&mut db, &node(addr(3), "a:3", 0, a_of(addr(4)), 1000));
    put(&mut db, &node(addr(4), "b:4", 0, b_of(addr(5)), 1000));
    // 6 names 7, which is not registered.
    put(&mut db, &node(addr(6), "a:6", 0, a_of(addr(7)), 1000));
    // 8 and 9 both say they are party A of each other.
    put(&mut db, &node(addr(8), "a:8", 0, a_of(addr(9)), 1000));
    put(&mut db, &node(addr(9), "a:9", 0, a_of(addr(8)), 1000));
    // 10 <-> 11 on shard 1 (the query asks for shard 0).
    put(&mut db, &node(addr(10), "a:10", 1, a_of(addr(11)), 1000));
    put(&mut db, &node(addr(11), "b:11", 1, b_of(addr(10)), 1000));
    // 12 <-> 13, but 13 is silent since 500.
    put(&mut db, &node(addr(12), "a:12", 0, a_of(addr(13)), 1000));
    put(&mut db, &node(addr(13), "b:13", 0, b_of(addr(12)), 500));

    let pairs = db.mpc_pairs("tiny", 0, 900, 64).unwrap();
    assert_eq!(view(&pairs), vec![(1, "a:1", 2, "b:2")]);
    assert_eq!(pairs[0].a.mpc, a_of(addr(2)));
    assert_eq!(pairs[0].b.onion_key, vec![2; 32]);
    assert_eq!(db.mpc_pair_count("tiny", 0, 900).unwrap(), 1);
    // Counting everyone (since 0), 12 <-> 13 is a pair too.
    assert_eq!(db.mpc_pair_count("tiny", 0, 0).unwrap(), 2);
    assert_eq!(db.mpc_pair_count("tiny", 1, 0).unwrap(), 1);
    assert_eq!(db.mpc_pair_count("other", 0, 0).unwrap(), 0);
    // A silent A is not listed either.
    assert!(db.mpc_pairs("tiny", 0, 1001, 64).unwrap().is_empty());
}

#[test]
fn one_entry_per_party_a_row_with_its_freshest_b_most_recent_first() {
    let mut db = RegistryDb::open_in_memory().unwrap();
    // B (identity 2) serves two addresses naming A; the fresher one is chosen.
    put(&mut db, &node(addr(1), "a:1", 0, a_of(addr(2)), 1000));
    put(&mut db, &node(addr(2), "b:old", 0, b_of(addr(1)), 1000));
    put(&mut db, &node(addr(2), "b:new", 0, b_of(addr(1)), 1500));
    // A second pair whose A heartbeats more recently.
    put(&mut db, &node(addr(3), "a:3", 0, a_of(addr(4)), 2000));
    put(&mut db, &node(addr(4), "b:4", 0, b_of(addr(3)), 1000));
    let pairs = db.mpc_pairs("tiny", 0, 0, 64).unwrap();
    assert_eq!(
        view(&pairs),
        vec![(3, "a:3", 4, "b:4"), (1, "a:1", 2, "b:new")]
    );
    assert_eq!(db.mpc_pair_count("tiny", 0, 0).unwrap(), 2);
    // The limit keeps the most recent.
    let pairs = db.mpc_pairs("tiny", 0, 0, 1).unwrap();
    assert_eq!(view(&pairs), vec![(3, "a:3", 4, "b:4")]);
}

#[test]
fn version_2_files_are_migrated_with_plain_nodes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v2.db");
    {
        let mut db = RegistryDb::open(&path).unwrap();
        put(&mut db, &node(addr(1), "h:1", 0, MpcRole::None, 1000));
    }
    // Take the file back to version 2: drop the guards (version 4), the role columns (3) and
    // their version rows.
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute_batch(
        "DROP TABLE guards;
         ALTER TABLE nodes DROP COLUMN mpc_peer;
         ALTER TABLE nodes DROP COLUMN mpc_role;
         DELETE FROM schema_version WHERE version >= 3;",
    )
    .unwrap();
    drop(conn);
    let mut db = RegistryDb::open(&path).unwrap();
    assert_eq!(db.schema_version().unwrap(), REGISTRY_SCHEMA_VERSION);
    assert_eq!(
        db.node(&addr(1), "h:1").unwrap().unwrap().mpc,
        MpcRole::None
    );
    put(&mut db, &node(addr(1), "h:1", 0, a_of(addr(2)), 2000));
    assert_eq!(
        db.node(&addr(1), "h:1").unwrap().unwrap().mpc,
        a_of(addr(2))
    );
}

#[test]
fn inconsistent_role_columns_are_refused_by_the_schema_and_on_read() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r.db");
    {
        let mut db = RegistryDb::open(&path).unwrap();
        put(&mut db, &node(addr(1), "h:1", 0, a_of(addr(2)), 1000));
    }
    let conn = rusqlite::Connection::open(&path).unwrap();
    for bad in [
        "UPDATE nodes SET mpc_role = 3",
        "UPDATE nodes SET mpc_peer = NULL",
        "UPDATE nodes SET mpc_role = 0",
    ] {
        let err = conn.execute_batch(bad).unwrap_err();
        assert!(err.to_string().contains("CHECK"), "{bad}: {err}");
    }
    // A peer that is not an address gets past the schema, but not past the read.
    conn.execute_batch("UPDATE nodes SET mpc_peer = 'nobody'")
        .unwrap();
    drop(conn);
    let db = RegistryDb::open(&path).unwrap();
    let err = db.node(&addr(1), "h:1").unwrap_err();
    assert!(
        matches!(err, DbError::Corrupt { table: "nodes", .. }),
        "{err}"
    );
    assert!(err.to_string().contains("nobody"), "{err}");
}
