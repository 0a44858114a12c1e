//! The registry database: migrations, atomic writes, replay refusal, persistence, pruning.

use unfed_db::{
    DbError, ManifestRecord, NodeRecord, NonceRecord, REGISTRY_SCHEMA_VERSION, RegisterOutcome,
    RegistryDb, UpdateOutcome,
};
use unfed_identity::Address;

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
        .register_node(&nonce(a, 1, 1000), &m, &node(a, "h:1", 0, 1000))
        .unwrap();
    assert_eq!(out, RegisterOutcome::Registered { new: true });
    // Same nonce again: replay, nothing changes.
    let out = db
        .register_node(&nonce(a, 1, 1000), &m, &node(a, "h:1", 1, 2000))
        .unwrap();
    assert_eq!(out, RegisterOutcome::Replay);
    assert_eq!(db.node(&a, "h:1").unwrap().unwrap().shard_index, 0);
    // A refresh keeps the first registration time.
    let out = db
        .register_node(&nonce(a, 2, 2000), &m, &node(a, "h:1", 1, 2000))
        .unwrap();
    assert_eq!(out, RegisterOutcome::Registered { new: false });
    let n = db.node(&a, "h:1").unwrap().unwrap();
    assert_eq!(
        (n.shard_index, n.registered_at_ms, n.last_heartbeat_ms),
        (1, 1000, 2000)
    );

    assert_eq!(
        db.heartbeat_node(&nonce(a, 3, 3000), &a, "h:1", 3000, 4)
            .unwrap(),
        UpdateOutcome::Done
    );
    assert_eq!(
        db.heartbeat_node(&nonce(a, 3, 3000), &a, "h:1", 3500, 4)
            .unwrap(),
        UpdateOutcome::Replay
    );
    let n = db.node(&a, "h:1").unwrap().unwrap();
    assert_eq!((n.last_heartbeat_ms, n.active_sessions), (3000, 4));

    // Unknown node: refused, and the nonce is not consumed.
    let b = addr(2);
    assert_eq!(
        db.heartbeat_node(&nonce(b, 9, 3000), &b, "h:1", 3000, 0)
            .unwrap(),
        UpdateOutcome::NotRegistered
    );
    assert!(!db.nonce_seen(&b, 9).unwrap());
    assert_eq!(
        db.unregister_node(&nonce(b, 9, 3000), &b, "h:1").unwrap(),
        UpdateOutcome::NotRegistered
    );
    assert!(db.node(&a, "h:1").unwrap().is_some());

    assert_eq!(
        db.unregister_node(&nonce(a, 4, 4000), &a, "h:1").unwrap(),
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
    db.register_node(&nonce(a, 1, 10), &m1, &node(a, "h:1", 0, 10))
        .unwrap();
    let out = db
        .register_node(&nonce(b, 1, 10), &m2, &node(b, "h:2", 0, 10))
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
        db.register_node(&nonce(id, 1, at), &m, &node(id, "h:1", shard, at))
            .unwrap();
    }
    let all = db.nodes_for_model("tiny", 0).unwrap();
    let keys: Vec<(u32, u64)> = all
        .iter()
        .map(|n| (n.shard_index, n.last_heartbeat_ms))
        .collect();
    assert_eq!(keys, vec![(0, 300), (0, 200), (1, 50), (2, 100)]);
    let recent = db.nodes_for_model("tiny", 100).unwrap();
    assert_eq!(recent.len(), 3);
    assert!(db.nodes_for_model("other", 0).unwrap().is_empty());
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
            .register_node(&nonce(a, n, at), &m, &node(a, "h:1", 0, at))
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
        .register_node(&nonce(a, 5, u64::MAX), &m, &node(a, "h:1", 0, 1))
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
        db.register_node(&nonce(a, 42, 10), &m, &node(a, "h:1", 2, 10))
            .unwrap();
    }
    for _ in 0..2 {
        let mut db = RegistryDb::open(&path).unwrap();
        assert_eq!(db.schema_version().unwrap(), REGISTRY_SCHEMA_VERSION);
        assert_eq!(db.node(&a, "h:1").unwrap().unwrap().shard_index, 2);
        assert_eq!(db.manifest("tiny").unwrap(), Some(m.clone()));
        assert_eq!(
            db.register_node(&nonce(a, 42, 10), &m, &node(a, "h:1", 2, 10))
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
