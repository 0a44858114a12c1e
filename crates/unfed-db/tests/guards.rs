//! Guard relays in the registry database: registration with replay refusal and caps,
//! heartbeats and unregistration through the nodes' calls, listing by health, pruning,
//! persistence, and an address that moves between serving a node and a guard.

use unfed_db::{
    GuardRecord, ManifestRecord, NodeRecord, NonceRecord, RegisterLimits, RegisterOutcome,
    RegistryDb, RegistryLimit, UpdateOutcome,
};
use unfed_identity::{Address, MpcRole};

const UNL: RegisterLimits = RegisterLimits::UNLIMITED;

fn addr(byte: u8) -> Address {
    Address([byte; 20])
}

fn guard(identity: Address, address: &str, at: u64) -> GuardRecord {
    GuardRecord {
        identity,
        address: address.into(),
        onion_key: vec![9; 32],
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

fn addresses(guards: &[GuardRecord]) -> Vec<&str> {
    guards.iter().map(|g| g.address.as_str()).collect()
}

#[test]
fn register_refresh_heartbeat_unregister_and_replays() {
    let mut db = RegistryDb::open_in_memory().unwrap();
    let a = addr(1);
    let out = db
        .register_guard(&nonce(a, 1, 1000), &guard(a, "g:1", 1000), &UNL)
        .unwrap();
    assert_eq!(out, RegisterOutcome::Registered { new: true });
    // The same nonce again is a replay and changes nothing.
    let mut rotated = guard(a, "g:1", 2000);
    rotated.onion_key = vec![10; 32];
    assert_eq!(
        db.register_guard(&nonce(a, 1, 2000), &rotated, &UNL)
            .unwrap(),
        RegisterOutcome::Replay
    );
    assert_eq!(db.guard(&a, "g:1").unwrap().unwrap().onion_key, vec![9; 32]);
    // A refresh (a rotated onion key) keeps the first registration time.
    assert_eq!(
        db.register_guard(&nonce(a, 2, 2000), &rotated, &UNL)
            .unwrap(),
        RegisterOutcome::Registered { new: false }
    );
    let g = db.guard(&a, "g:1").unwrap().unwrap();
    assert_eq!(
        (g.onion_key, g.registered_at_ms, g.last_heartbeat_ms),
        (vec![10; 32], 1000, 2000)
    );

    assert_eq!(
        db.heartbeat(&nonce(a, 3, 3000), &a, "g:1", 3000, 5)
            .unwrap(),
        UpdateOutcome::Done
    );
    let g = db.guard(&a, "g:1").unwrap().unwrap();
    assert_eq!((g.last_heartbeat_ms, g.active_sessions), (3000, 5));
    // Someone else's identity cannot heartbeat or remove the guard.
    let b = addr(2);
    assert_eq!(
        db.heartbeat(&nonce(b, 1, 3000), &b, "g:1", 3000, 0)
            .unwrap(),
        UpdateOutcome::NotRegistered
    );
    assert_eq!(
        db.unregister(&nonce(b, 2, 3000), &b, "g:1", 3000).unwrap(),
        UpdateOutcome::NotRegistered
    );
    assert_eq!(
        db.unregister(&nonce(a, 3, 4000), &a, "g:1", 4000).unwrap(),
        UpdateOutcome::Replay
    );
    assert_eq!(
        db.unregister(&nonce(a, 4, 4000), &a, "g:1", 4000).unwrap(),
        UpdateOutcome::Done
    );
    assert!(db.guard(&a, "g:1").unwrap().is_none());
    assert_eq!(
        db.heartbeat(&nonce(a, 5, 5000), &a, "g:1", 5000, 0)
            .unwrap(),
        UpdateOutcome::NotRegistered
    );
}

#[test]
fn listing_is_by_health_and_capped_and_pruning_removes_silent_guards() {
    let mut db = RegistryDb::open_in_memory().unwrap();
    for (i, at) in [(1u8, 1000), (2, 3000), (3, 2000)] {
        let id = addr(i);
        db.register_guard(&nonce(id, 1, at), &guard(id, &format!("g:{i}"), at), &UNL)
            .unwrap();
    }
    assert_eq!(addresses(&db.guards(0, 10).unwrap()), ["g:2", "g:3", "g:1"]);
    assert_eq!(addresses(&db.guards(1500, 10).unwrap()), ["g:2", "g:3"]);
    assert_eq!(addresses(&db.guards(0, 1).unwrap()), ["g:2"]);
    let pruned = db.prune_stale(2500, 4000).unwrap();
    assert_eq!((pruned.nodes, pruned.guards), (0, 2));
    assert_eq!(addresses(&db.guards(0, 10).unwrap()), ["g:2"]);
}

#[test]
fn caps_refuse_new_guards_but_not_refreshes() {
    let mut db = RegistryDb::open_in_memory().unwrap();
    let caps = RegisterLimits {
        max_models: 1,
        max_nodes_per_identity: 1,
        max_nodes: 2,
    };
    let (a, b, c) = (addr(1), addr(2), addr(3));
    db.register_guard(&nonce(a, 1, 10), &guard(a, "g:1", 10), &caps)
        .unwrap();
    assert_eq!(
        db.register_guard(&nonce(a, 2, 10), &guard(a, "g:2", 10), &caps)
            .unwrap(),
        RegisterOutcome::LimitReached {
            limit: RegistryLimit::NodesPerIdentity,
            max: 1
        }
    );
    // The refused request did not consume its nonce.
    assert!(!db.nonce_seen(&a, 2).unwrap());
    db.register_guard(&nonce(b, 1, 10), &guard(b, "g:b", 10), &caps)
        .unwrap();
    assert_eq!(
        db.register_guard(&nonce(c, 1, 10), &guard(c, "g:c", 10), &caps)
            .unwrap(),
        RegisterOutcome::LimitReached {
            limit: RegistryLimit::Nodes,
            max: 2
        }
    );
    assert_eq!(
        db.register_guard(&nonce(a, 3, 20), &guard(a, "g:1", 20), &caps)
            .unwrap(),
        RegisterOutcome::Registered { new: false }
    );
}

#[test]
fn an_address_serves_a_node_or_a_guard_and_guards_survive_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("registry.db");
    let a = addr(1);
    {
        let mut db = RegistryDb::open(&path).unwrap();
        let manifest = ManifestRecord {
            model_id: "tiny".into(),
            sha256: [1; 32],
            json: "{}".into(),
        };
        let node = NodeRecord {
            identity: a,
            address: "h:1".into(),
            model_id: "tiny".into(),
            shard_index: 0,
            onion_key: vec![7; 32],
            mpc: MpcRole::None,
            registered_at_ms: 100,
            last_heartbeat_ms: 100,
            active_sessions: 0,
        };
        db.register_node(&nonce(a, 1, 100), &manifest, &node, &UNL)
            .unwrap();
        // The address now serves a guard: the node row goes.
        db.register_guard(&nonce(a, 2, 200), &guard(a, "h:1", 200), &UNL)
            .unwrap();
        assert!(db.node(&a, "h:1").unwrap().is_none());
        assert_eq!(db.node_count().unwrap(), 0);
        // And back: the guard row goes.
        db.register_node(&nonce(a, 3, 300), &manifest, &node, &UNL)
            .unwrap();
        assert!(db.guard(&a, "h:1").unwrap().is_none());
        db.register_guard(&nonce(a, 4, 400), &guard(a, "g:1", 400), &UNL)
            .unwrap();
    }
    let mut db = RegistryDb::open(&path).unwrap();
    assert_eq!(addresses(&db.guards(0, 10).unwrap()), ["g:1"]);
    assert!(db.node(&a, "h:1").unwrap().is_some());
    // Nonces survive too.
    assert_eq!(
        db.register_guard(&nonce(a, 4, 500), &guard(a, "g:1", 500), &UNL)
            .unwrap(),
        RegisterOutcome::Replay
    );
}
