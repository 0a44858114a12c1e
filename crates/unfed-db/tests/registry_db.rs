//! The registry database: migrations, atomic writes, replay refusal, persistence, pruning.

use unfed_db::{
    DbError, ManifestRecord, NodeRecord, NonceRecord, Pruned, REGISTRY_SCHEMA_VERSION,
    RegisterLimits, RegisterOutcome, RegistryDb, RegistryLimit, UpdateOutcome,
};

const UNL: RegisterLimits = RegisterLimits::UNLIMITED;
use unfed_identity::{Address, MpcRole};

fn addr(byte: u8) -> Address {
    Address([byte; 20])
}

fn manifest(model: &str, json: &str) -> ManifestRecord {
    let mut sha256 = [0u8; 32];
    sha256[..json.len().min(32)].copy_from_slice(&json.as_bytes()[..json.len().min(32)]);
    ManifestRecord {
        model_id: model.into(),
        sha256,
        json: json.into(),
    }
}

fn node(identity: Address, address: &str, shard: u32, at: u64) -> NodeRecord {
    NodeRecord {
        identity,
        address: address.into(),
        model_id: "tiny".into(),
        shard_index: shard,
        onion_key: vec![7; 32],
        mpc: MpcRole::None,
        registered_at_ms: at,
        last_heartbeat_ms: at,
        active_sessions: 0,
    }
}

fn nonce(identity: Address, nonce: u64, timestamp_ms: u64) -> NonceRecord {
    NonceRecord {
        identity,
        nonce,
        timestamp_ms,
    }
}

#[test]
fn register_heartbeat_unregister_and_replays() {
    let mut db = RegistryDb::open_in_memory().unwrap();
    assert_eq!(db.schema_version().unwrap(), REGISTRY_SCHEMA_VERSION);
    let (a, m) = (addr(1), manifest("tiny", "{\"m\":1}"));
    let out = db
        .register_node(&nonce(a, 1, 1000), &m, &node(a, "h:1", 0, 1000), &UNL)
        .unwrap();
    assert_eq!(out, RegisterOutcome::Registered { new: true });
    // Same nonce again: replay, nothing changes.
    let out = db
        .register_node(&nonce(a, 1, 1000), &m, &node(a, "h:1", 1, 2000), &UNL)
        .unwrap();
    assert_eq!(out, RegisterOutcome::Replay);
    assert_eq!(db.node(&a, "h:1").unwrap().unwrap().shard_index, 0);
    // A refresh keeps the first registration time.
    let out = db
        .register_node(&nonce(a, 2, 2000), &m, &node(a, "h:1", 1, 2000), &UNL)
        .unwrap();
    assert_eq!(out, RegisterOutcome::Registered { new: false });
    let n = db.node(&a, "h:1").unwrap().unwrap();
    assert_eq!(
        (n.shard_index, n.registered_at_ms, n.last_heartbeat_ms),
        (1, 1000, 2000)
    );

    assert_eq!(
        db.heartbeat(&nonce(a, 3, 3000), &a, "h:1", 3000, 4)
            .unwrap(),
        UpdateOutcome::Done
    );
    assert_eq!(
        db.heartbeat(&nonce(a, 3, 3000), &a, "h:1", 3500, 4)
            .unwrap(),
        UpdateOutcome::Replay
    );
    let n = db.node(&a, "h:1").unwrap().unwrap();
    assert_eq!((n.last_heartbeat_ms, n.active_sessions), (3000, 4));

    // Unknown node: refused, and the nonce is not consumed.
    let b = addr(2);
    assert_eq!(
        db.heartbeat(&nonce(b, 9, 3000), &b, "h:1", 3000, 0)
            .unwrap(),
        UpdateOutcome::NotRegistered
    );
    assert!(!db.nonce_seen(&b, 9).unwrap());
    assert_eq!(
        db.unregister(&nonce(b, 9, 3000), &b, "h:1", 3000).unwrap(),
        UpdateOutcome::NotRegistered
    );
    assert!(db.node(&a, "h:1").unwrap().is_some());

    assert_eq!(
        db.unregister(&nonce(a, 4, 4000), &a, "h:1", 4000).unwrap(),
        UpdateOutcome::Done
    );
    assert!(db.node(&a, "h:1").unwrap().is_none());
    // The manifest stays.
    assert_eq!(db.manifest("tiny").unwrap(), Some(m));
}

#[test]
fn conflicting_manifest_changes_nothing() {
    let mut db = RegistryDb::open_in_memory().unwrap();
    let (a, b) = (addr(1), addr(2));
    let m1 = manifest("tiny", "{\"first\":1}");
    let m2 = manifest("tiny", "{\"second\":2}");
    db.register_node(&nonce(a, 1, 10), &m1, &node(a, "h:1", 0, 10), &UNL)
        .unwrap();
    let out = db
        .register_node(&nonce(b, 1, 10), &m2, &node(b, "h:2", 0, 10), &UNL)
        .unwrap();
    assert_eq!(
        out,
        RegisterOutcome::ManifestConflict {
            existing_sha256: m1.sha256
        }
    );
    assert!(db.node(&b, "h:2").unwrap().is_none());
    assert!(
        !db.nonce_seen(&b, 1).unwrap(),
        "a refused request keeps its nonce unused"
    );
    assert_eq!(db.manifests().unwrap(), vec![m1]);
}

#[test]
fn nodes_for_model_filters_by_heartbeat_and_orders_by_shard() {
    let mut db = RegistryDb::open_in_memory().unwrap();
    let m = manifest("tiny", "{}");
    for (i, (shard, at)) in [(2u32, 100u64), (0, 300), (0, 200), (1, 50)]
        .into_iter()
        .enumerate()
    {
        let id = addr(i as u8 + 1);
        db.register_node(&nonce(id, 1, at), &m, &node(id, "h:1", shard, at), &UNL)
            .unwrap();
    }
    let all = db.nodes_for_model("tiny", 0, 64).unwrap();
    let keys: Vec<(u32, u64)> = all
        .iter()
        .map(|n| (n.shard_index, n.last_heartbeat_ms))
        .collect();
    assert_eq!(keys, vec![(0, 300), (0, 200), (1, 50), (2, 100)]);
    let recent = db.nodes_for_model("tiny", 100, 64).unwrap();
    assert_eq!(recent.len(), 3);
    assert!(db.nodes_for_model("other", 0, 64).unwrap().is_empty());
    assert_eq!(db.node_count().unwrap(), 4);
}

#[test]
fn nonces_extreme_values_and_pruning() {
    let mut db = RegistryDb::open_in_memory().unwrap();
    let a = addr(1);
    let m = manifest("tiny", "{}");
    for (i, n) in [0u64, u64::MAX, 1 << 63].into_iter().enumerate() {
        let at = 1000 + i as u64;
        let out = db
            .register_node(&nonce(a, n, at), &m, &node(a, "h:1", 0, at), &UNL)
            .unwrap();
        assert_eq!(out, RegisterOutcome::Registered { new: i == 0 });
        assert!(db.nonce_seen(&a, n).unwrap());
    }
    assert_eq!(db.nonce_count().unwrap(), 3);
    assert_eq!(db.prune_nonces(1001).unwrap(), 1);
    assert!(!db.nonce_seen(&a, 0).unwrap());
    assert!(db.nonce_seen(&a, u64::MAX).unwrap());
    assert_eq!(db.prune_nonces(u64::MAX).unwrap(), 2);
    // A timestamp SQLite cannot hold is an error, not a silent wrap.
    let err = db
        .register_node(&nonce(a, 5, u64::MAX), &m, &node(a, "h:1", 0, 1), &UNL)
        .unwrap_err();
    assert!(matches!(err, DbError::OutOfRange { .. }), "{err}");
}

#[test]
fn file_database_persists_and_migrations_are_idempotent() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("registry.db");
    let a = addr(1);
    let m = manifest("tiny", "{\"x\":1}");
    {
        let mut db = RegistryDb::open(&path).unwrap();
        db.register_node(&nonce(a, 42, 10), &m, &node(a, "h:1", 2, 10), &UNL)
            .unwrap();
    }
    for _ in 0..2 {
        let mut db = RegistryDb::open(&path).unwrap();
        assert_eq!(db.schema_version().unwrap(), REGISTRY_SCHEMA_VERSION);
        assert_eq!(db.node(&a, "h:1").unwrap().unwrap().shard_index, 2);
        assert_eq!(db.manifest("tiny").unwrap(), Some(m.clone()));
        assert_eq!(
            db.register_node(&nonce(a, 42, 10), &m, &node(a, "h:1", 2, 10), &UNL)
                .unwrap(),
            RegisterOutcome::Replay
        );
    }
}

#[test]
fn open_errors_are_clear() {
    let dir = tempfile::tempdir().unwrap();
    let missing_dir = dir.path().join("no-such-dir").join("r.db");
    let err = RegistryDb::open(&missing_dir).unwrap_err();
    assert!(matches!(err, DbError::Open { .. }), "{err}");
    assert!(err.to_string().contains("no-such-dir"), "{err}");

    let not_db = dir.path().join("garbage.db");
    std::fs::write(&not_db, vec![0x42u8; 8192]).unwrap();
    let err = RegistryDb::open(&not_db).unwrap_err();
    assert!(err.to_string().contains("garbage.db"), "{err}");
}

#[test]
fn newer_schema_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r.db");
    drop(RegistryDb::open(&path).unwrap());
    // Pretend a newer build migrated the file.
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute(
        "INSERT INTO schema_version (version, applied_at_ms) VALUES (?1, 0)",
        [REGISTRY_SCHEMA_VERSION + 1],
    )
    .unwrap();
    drop(conn);
    let err = RegistryDb::open(&path).unwrap_err();
    assert!(
        matches!(err, DbError::SchemaTooNew { found, .. } if found == REGISTRY_SCHEMA_VERSION + 1),
        "{err}"
    );
    assert!(err.to_string().contains("upgrade"), "{err}");
}

fn node_of(model: &str, identity: Address, address: &str, at: u64) -> NodeRecord {
    NodeRecord {
        model_id: model.into(),
        ..node(identity, address, 0, at)
    }
}

#[test]
fn caps_refuse_new_rows_but_not_refreshes() {
    let mut db = RegistryDb::open_in_memory().unwrap();
    let limits = RegisterLimits {
        max_models: 2,
        max_nodes_per_identity: 2,
        max_nodes: 3,
    };
    let (a, b, c) = (addr(1), addr(2), addr(3));
    let (m1, m2, m3) = (
        manifest("m1", "{\"m\":1}"),
        manifest("m2", "{\"m\":2}"),
        manifest("m3", "{\"m\":3}"),
    );
    let ok = |new| RegisterOutcome::Registered { new };
    let reg = |db: &mut RegistryDb, id, n, m: &ManifestRecord, address, at| {
        db.register_node(
            &nonce(id, n, at),
            m,
            &node_of(&m.model_id, id, address, at),
            &limits,
        )
        .unwrap()
    };
    assert_eq!(reg(&mut db, a, 1, &m1, "h:1", 10), ok(true));
    assert_eq!(reg(&mut db, a, 2, &m1, "h:2", 10), ok(true));
    // A third address of `a`: over the per-identity cap, and nothing is consumed.
    assert_eq!(
        reg(&mut db, a, 3, &m1, "h:3", 10),
        RegisterOutcome::LimitReached {
            limit: RegistryLimit::NodesPerIdentity,
            max: 2
        }
    );
    assert!(!db.nonce_seen(&a, 3).unwrap());
    assert!(db.node(&a, "h:3").unwrap().is_none());
    // Refreshing an address `a` already has is fine, even at the cap.
    assert_eq!(reg(&mut db, a, 4, &m1, "h:1", 20), ok(false));

    // The second model is accepted, the third is not (and leaves no trace).
    assert_eq!(reg(&mut db, b, 1, &m2, "h:1", 30), ok(true));
    assert_eq!(
        reg(&mut db, c, 1, &m3, "h:1", 30),
        RegisterOutcome::LimitReached {
            limit: RegistryLimit::Models,
            max: 2
        }
    );
    assert!(db.manifest("m3").unwrap().is_none());
    assert!(!db.nonce_seen(&c, 1).unwrap());
    // Moving an existing row to a new model id is a new model too.
    assert_eq!(
        reg(&mut db, b, 2, &m3, "h:1", 30),
        RegisterOutcome::LimitReached {
            limit: RegistryLimit::Models,
            max: 2
        }
    );
    assert_eq!(db.node(&b, "h:1").unwrap().unwrap().model_id, "m2");

    // Three rows: the global cap refuses a new one, from any identity.
    assert_eq!(db.node_count().unwrap(), 3);
    assert_eq!(
        reg(&mut db, c, 2, &m1, "h:1", 40),
        RegisterOutcome::LimitReached {
            limit: RegistryLimit::Nodes,
            max: 3
        }
    );
    assert!(!db.nonce_seen(&c, 2).unwrap());
    assert_eq!(db.node_count().unwrap(), 3);
    // ...but refreshes (also to another known model) still go through.
    assert_eq!(reg(&mut db, b, 3, &m1, "h:1", 50), ok(false));
    assert_eq!(reg(&mut db, a, 5, &m2, "h:2", 50), ok(false));
    // Once a row leaves there is room again.
    assert_eq!(
        db.unregister(&nonce(a, 6, 60), &a, "h:2", 60).unwrap(),
        UpdateOutcome::Done
    );
    assert_eq!(reg(&mut db, c, 3, &m1, "h:1", 70), ok(true));
}

#[test]
fn nodes_for_model_caps_each_shard_in_sql() {
    let mut db = RegistryDb::open_in_memory().unwrap();
    let m = manifest("tiny", "{}");
    let rows = [
        (0u32, 100u64),
        (0, 300),
        (0, 200),
        (1, 50),
        (1, 60),
        (2, 10),
    ];
    for (i, (shard, at)) in rows.into_iter().enumerate() {
        let id = addr(i as u8 + 1);
        db.register_node(&nonce(id, 1, at), &m, &node(id, "h:1", shard, at), &UNL)
            .unwrap();
    }
    let keys = |per_shard, since| -> Vec<(u32, u64)> {
        db.nodes_for_model("tiny", since, per_shard)
            .unwrap()
            .iter()
            .map(|n| (n.shard_index, n.last_heartbeat_ms))
            .collect()
    };
    assert_eq!(
        keys(2, 0),
        vec![(0, 300), (0, 200), (1, 60), (1, 50), (2, 10)]
    );
    assert_eq!(keys(1, 0), vec![(0, 300), (1, 60), (2, 10)]);
    // The cap applies after the heartbeat filter.
    assert_eq!(keys(1, 55), vec![(0, 300), (1, 60)]);
    assert!(keys(0, 0).is_empty());
    assert_eq!(keys(usize::MAX, 0).len(), 6);
    // Counts are exact, whatever the discovery cap.
    assert_eq!(
        db.node_counts_for_model("tiny", 0).unwrap(),
        vec![(0, 3), (1, 2), (2, 1)]
    );
    assert_eq!(db.node_counts_for_model("tiny", 150).unwrap(), vec![(0, 2)]);
}

#[test]
fn prune_stale_removes_silent_nodes_then_orphaned_manifests() {
    let mut db = RegistryDb::open_in_memory().unwrap();
    let (a, b, c, d) = (addr(1), addr(2), addr(3), addr(4));
    let (tiny, other, third) = (
        manifest("tiny", "{\"t\":1}"),
        manifest("other", "{\"o\":1}"),
        manifest("third", "{\"3\":1}"),
    );
    let reg = |db: &mut RegistryDb, id, n, m: &ManifestRecord, at| {
        let out = db
            .register_node(
                &nonce(id, n, at),
                m,
                &node_of(&m.model_id, id, "h:1", at),
                &UNL,
            )
            .unwrap();
        assert!(matches!(out, RegisterOutcome::Registered { .. }), "{out:?}");
    };
    reg(&mut db, a, 1, &tiny, 1000);
    reg(&mut db, b, 1, &tiny, 5000);
    reg(&mut db, c, 1, &other, 1000);
    reg(&mut db, d, 1, &third, 1000);
    // `other` loses its only node at 2000; `third` at 4000, when d moves to `tiny`.
    db.unregister(&nonce(c, 2, 2000), &c, "h:1", 2000).unwrap();
    reg(&mut db, d, 2, &tiny, 4000);

    let pruned = |nodes, manifests: &[&str]| Pruned {
        nodes,
        guards: 0,
        manifests: manifests.iter().map(|m| m.to_string()).collect(),
    };
    // a is silent since 1000; `other` has been orphaned since 2000.
    assert_eq!(db.prune_stale(2500, 6000).unwrap(), pruned(1, &["other"]));
    assert!(db.node(&a, "h:1").unwrap().is_none());
    assert!(db.manifest("other").unwrap().is_none());
    assert!(db.manifest("third").unwrap().is_some());
    // d (last heard at 4000) goes, and `third` (orphaned at 4000) with it.
    assert_eq!(db.prune_stale(4500, 7000).unwrap(), pruned(1, &["third"]));
    // b goes; `tiny` lost its last node at this prune (8000), so it stays for now.
    assert_eq!(db.prune_stale(5500, 8000).unwrap(), pruned(1, &[]));
    assert_eq!(db.node_count().unwrap(), 0);
    assert_eq!(db.prune_stale(8000, 9000).unwrap(), pruned(0, &[]));
    assert!(db.manifest("tiny").unwrap().is_some());
    assert_eq!(db.prune_stale(8001, 9000).unwrap(), pruned(0, &["tiny"]));
    assert!(db.manifests().unwrap().is_empty());
    // A pruned model id can be registered again, with any manifest.
    reg(&mut db, a, 2, &manifest("tiny", "{\"new\":1}"), 9000);
}

#[test]
fn version_1_files_are_migrated() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v1.db");
    let conn = rusqlite::Connection::open(&path).unwrap();
    // The schema of version 1, with one node and two manifests (one orphaned).
    conn.execute_batch(
        "CREATE TABLE schema_version (version INTEGER PRIMARY KEY NOT NULL,
                                      applied_at_ms INTEGER NOT NULL);
         INSERT INTO schema_version VALUES (1, 0);
         CREATE TABLE nodes (identity TEXT NOT NULL, address TEXT NOT NULL,
             model_id TEXT NOT NULL, shard_index INTEGER NOT NULL, onion_key BLOB NOT NULL,
             registered_at_ms INTEGER NOT NULL, last_heartbeat_ms INTEGER NOT NULL,
             active_sessions INTEGER NOT NULL DEFAULT 0,
             PRIMARY KEY (identity, address)) WITHOUT ROWID;
         CREATE INDEX nodes_by_model ON nodes (model_id, shard_index, last_heartbeat_ms);
         CREATE TABLE manifests (model_id TEXT PRIMARY KEY NOT NULL,
             sha256 BLOB NOT NULL CHECK (length(sha256) = 32), json TEXT NOT NULL,
             added_at_ms INTEGER NOT NULL);
         CREATE TABLE seen_nonces (identity TEXT NOT NULL, nonce INTEGER NOT NULL,
             timestamp_ms INTEGER NOT NULL, PRIMARY KEY (identity, nonce)) WITHOUT ROWID;
         CREATE INDEX seen_nonces_by_time ON seen_nonces (timestamp_ms);
         INSERT INTO manifests VALUES ('tiny', zeroblob(32), '{}', 100);
         INSERT INTO manifests VALUES ('old', zeroblob(32), '{}', 100);
         INSERT INTO nodes VALUES ('0x0101010101010101010101010101010101010101', 'h:1',
             'tiny', 0, x'', 100, 5000, 0);",
    )
    .unwrap();
    drop(conn);
    let mut db = RegistryDb::open(&path).unwrap();
    assert_eq!(db.schema_version().unwrap(), REGISTRY_SCHEMA_VERSION);
    let n = db.node(&addr(1), "h:1").unwrap().unwrap();
    assert_eq!(n.last_heartbeat_ms, 5000);
    // Rows from before MPC roles existed (version 3) are plain nodes.
    assert_eq!(n.mpc, MpcRole::None);
    // `tiny` counts as used at its node's last heartbeat (5000), `old` at its addition (100).
    assert_eq!(
        db.prune_stale(200, 200).unwrap(),
        Pruned {
            nodes: 0,
            guards: 0,
            manifests: vec!["old".into()]
        }
    );
    assert!(db.manifest("tiny").unwrap().is_some());
}
