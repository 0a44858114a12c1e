//! The registry core without networking: manifest checks, field checks, health, readiness,
//! nonce pruning, growth caps, pruning of silent nodes and orphaned manifests, the discovery
//! cap, reload from the database, and the error-to-status mapping.

mod common;

use common::{T0, TestNode, core, manifest_other, manifest3, sha256};
use tonic::Code;
use unfed_db::RegistryDb;
use unfed_identity::canonical::Payload;
use unfed_registry::{ManualClock, Readiness, RegistryError, to_status};

fn reg(
    core: &mut unfed_registry::RegistryCore,
    req: &unfed_proto::registry::SignedPayload,
) -> Result<unfed_registry::Registered, RegistryError> {
    core.register(&req.payload, &req.signature, &req.manifest_json)
}

#[test]
fn a_model_in_more_shards_than_a_circuit_reaches_is_refused() {
    let clock = ManualClock::new(T0);
    let mut core = core(RegistryDb::open_in_memory().unwrap(), &clock);
    let mut node = TestNode::new(8010);
    let wide = common::split_manifest(unfed_onion::MAX_HOPS, "wide", 3);
    let payload = node.register_payload("wide", 0, &wide, T0);
    let err = reg(&mut core, &node.sign(&payload, &wide)).unwrap_err();
    assert!(
        err.to_string().contains("a circuit reaches at most 7"),
        "{err}"
    );
    let seven = common::split_manifest(unfed_onion::MAX_HOPS - 1, "seven", 4);
    let payload = node.register_payload("seven", 0, &seven, T0);
    reg(&mut core, &node.sign(&payload, &seven)).unwrap();
}

#[test]
fn manifest_must_match_the_signed_hash_model_and_shard() {
    let clock = ManualClock::new(T0);
    let mut core = core(RegistryDb::open_in_memory().unwrap(), &clock);
    let mut node = TestNode::new(8001);

    // The manifest text differs from the one whose hash was signed.
    let p = node.register_payload("tiny", 0, manifest3(), T0);
    let err = reg(&mut core, &node.sign(&p, manifest_other())).unwrap_err();
    assert!(matches!(err, RegistryError::BadManifest(_)), "{err}");
    assert_eq!(to_status(&err).code(), Code::InvalidArgument);

    // No manifest at all.
    let err = reg(&mut core, &node.sign(&p, "")).unwrap_err();
    assert!(err.to_string().contains("no manifest_json"), "{err}");

    // The hash matches but the manifest is another model's.
    let p = node.register_payload("tiny", 0, manifest_other(), T0);
    let err = reg(&mut core, &node.sign(&p, manifest_other())).unwrap_err();
    assert!(err.to_string().contains("\"other\""), "{err}");

    // The hash matches but the text is not a manifest.
    let junk = "{\"format\": \"something-else\"}";
    let p = node.register_payload("tiny", 0, junk, T0);
    let err = reg(&mut core, &node.sign(&p, junk)).unwrap_err();
    assert!(err.to_string().contains("something-else"), "{err}");

    // A shard the manifest does not have.
    let p = node.register_payload("tiny", 3, manifest3(), T0);
    let err = reg(&mut core, &node.sign(&p, manifest3())).unwrap_err();
    assert!(
        matches!(
            err,
            RegistryError::InvalidField {
                field: "shard_index",
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("3 shards"), "{err}");

    assert!(
        core.list_models().unwrap().is_empty(),
        "nothing was recorded"
    );
    assert_eq!(
        core.db().nonce_count().unwrap(),
        0,
        "refusals consume no nonce"
    );
}

#[test]
fn payload_fields_are_checked() {
    let clock = ManualClock::new(T0);
    let mut core = core(RegistryDb::open_in_memory().unwrap(), &clock);
    let mut node = TestNode::new(8002);
    type Edit = fn(&mut unfed_identity::canonical::Register);
    let cases: &[(&str, Edit)] = &[
        ("address", |r| r.address = "no-port".into()),
        ("address", |r| r.address = "host:0".into()),
        ("address", |r| r.address = "ho st:80".into()),
        ("address", |r| r.address = "[::1:80".into()),
        // Plaintext off loopback: nobody would dial it.
        ("address", |r| r.address = "203.0.113.7:50051".into()),
        ("address", |r| r.address = "http://127.0.0.1:50051".into()),
        ("model_id", |r| r.model_id = "bad id!".into()),
        ("onion_key", |r| r.onion_key = vec![1; 31]),
        // A node without an onion key cannot be part of a circuit.
        ("onion_key", |r| r.onion_key.clear()),
    ];
    for (field, edit) in cases {
        let Payload::Register(mut r) = node.register_payload("tiny", 0, manifest3(), T0) else {
            unreachable!()
        };
        edit(&mut r);
        let err = reg(&mut core, &node.sign(&Payload::Register(r), manifest3())).unwrap_err();
        match &err {
            RegistryError::InvalidField { field: f, .. } => assert_eq!(f, field, "{err}"),
            other => panic!("expected an invalid {field}, got {other}"),
        }
        assert_eq!(to_status(&err).code(), Code::InvalidArgument);
    }
    // Loopback in plaintext, and DNS names and IPv6 addresses with TLS, are fine.
    for address in [
        "[::1]:50051",
        "https://node-1.example.org:443",
        "https://[2001:db8::1]:443",
    ] {
        let Payload::Register(mut r) = node.register_payload("tiny", 0, manifest3(), T0) else {
            unreachable!()
        };
        r.address = address.into();
        reg(&mut core, &node.sign(&Payload::Register(r), manifest3())).unwrap();
    }
}

#[test]
fn wrong_payload_kinds_are_refused() {
    let clock = ManualClock::new(T0);
    let mut core = core(RegistryDb::open_in_memory().unwrap(), &clock);
    let mut node = TestNode::new(8003);
    let r = node.register(0, T0);
    let err = core.heartbeat(&r.payload, &r.signature).unwrap_err();
    assert!(
        err.to_string().contains("Heartbeat expects a heartbeat"),
        "{err}"
    );
    let err = core.unregister(&r.payload, &r.signature).unwrap_err();
    assert!(
        matches!(
            err,
            RegistryError::WrongKind {
                got: "register",
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn readiness_counts_only_healthy_nodes_per_shard() {
    let clock = ManualClock::new(T0);
    let mut core = core(RegistryDb::open_in_memory().unwrap(), &clock);
    let mut nodes: Vec<TestNode> = (0..4).map(|i| TestNode::new(8100 + i)).collect();
    // Shards 0 and 1 registered: INCOMPLETE (the missing one is the last).
    for (i, shard) in [0u32, 1].into_iter().enumerate() {
        let r = nodes[i].register(shard, T0);
        reg(&mut core, &r).unwrap();
    }
    let m = &core.list_models().unwrap()[0];
    assert_eq!(m.readiness, Readiness::Incomplete);
    assert_eq!(m.readiness.as_str(), "INCOMPLETE");
    // Two nodes on shard 2.
    for n in nodes.iter_mut().skip(2) {
        let r = n.register(2, T0);
        reg(&mut core, &r).unwrap();
    }
    let m = &core.list_models().unwrap()[0];
    assert_eq!(m.readiness, Readiness::Ready);
    let counts: Vec<u32> = m.shards.iter().map(|s| s.healthy_nodes).collect();
    assert_eq!(counts, vec![1, 1, 2]);

    // 3 s later (the health window) everyone is still healthy; 1 ms more and nobody is.
    clock.set_ms(T0 + 3000);
    assert_eq!(core.list_models().unwrap()[0].readiness, Readiness::Ready);
    clock.set_ms(T0 + 3001);
    let m = &core.list_models().unwrap()[0];
    assert_eq!(m.readiness, Readiness::Incomplete);
    assert!(m.shards.iter().all(|s| s.healthy_nodes == 0));
    assert!(core.discover("tiny").unwrap().nodes.is_empty());

    // One of the shard-2 nodes comes back: still INCOMPLETE until shards 0 and 1 do too.
    let hb = nodes[3].heartbeat(T0 + 3001);
    core.heartbeat(&hb.payload, &hb.signature).unwrap();
    let d = core.discover("tiny").unwrap();
    assert_eq!(d.nodes.len(), 1);
    assert_eq!(d.nodes[0].identity, nodes[3].key.address());
    for n in nodes.iter_mut().take(2) {
        let hb = n.heartbeat(T0 + 3001);
        core.heartbeat(&hb.payload, &hb.signature).unwrap();
    }
    let m = &core.list_models().unwrap()[0];
    assert_eq!(m.readiness, Readiness::Ready);
    let counts: Vec<u32> = m.shards.iter().map(|s| s.healthy_nodes).collect();
    assert_eq!(counts, vec![1, 1, 1]);
}

#[test]
fn models_are_listed_independently() {
    let clock = ManualClock::new(T0);
    let mut core = core(RegistryDb::open_in_memory().unwrap(), &clock);
    let mut a = TestNode::new(8201);
    let mut b = TestNode::new(8202);
    let p = a.register_payload("other", 0, manifest_other(), T0);
    reg(&mut core, &a.sign(&p, manifest_other())).unwrap();
    let p = a.register_payload("other", 1, manifest_other(), T0);
    reg(&mut core, &a.sign(&p, manifest_other())).unwrap();
    reg(&mut core, &b.register(0, T0)).unwrap();
    let models = core.list_models().unwrap();
    let view: Vec<(&str, Readiness, usize)> = models
        .iter()
        .map(|m| (m.model_id.as_str(), m.readiness, m.shards.len()))
        .collect();
    // One identity, one address: the second registration moved it to shard 1.
    assert_eq!(
        view,
        vec![
            ("other", Readiness::Incomplete, 2),
            ("tiny", Readiness::Incomplete, 3)
        ]
    );
    assert_eq!(core.manifest_json("other").unwrap(), manifest_other());
    assert_eq!(
        sha256(&core.manifest_json("tiny").unwrap()),
        sha256(manifest3())
    );
}

#[test]
fn old_nonces_are_pruned_but_never_replayable() {
    let clock = ManualClock::new(T0);
    let mut core = core(RegistryDb::open_in_memory().unwrap(), &clock);
    let mut node = TestNode::new(8301);
    let first = node.register(0, T0);
    reg(&mut core, &first).unwrap();
    assert_eq!(core.db().nonce_count().unwrap(), 1);
    // 61 s later the first nonce is pruned by the next request (a registration: the silent
    // node's row itself was pruned after 30 s)...
    clock.set_ms(T0 + 61_000);
    assert!(reg(&mut core, &node.register(0, T0 + 61_000)).unwrap().new);
    assert_eq!(core.db().nonce_count().unwrap(), 1);
    // ...and replaying it fails on its timestamp instead.
    let err = reg(&mut core, &first).unwrap_err();
    assert!(matches!(err, RegistryError::StaleTimestamp { .. }), "{err}");
}

#[test]
fn a_reopened_core_knows_its_models() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r.db");
    let clock = ManualClock::new(T0);
    let mut node = TestNode::new(8401);
    {
        let mut c = core(RegistryDb::open(&path).unwrap(), &clock);
        reg(&mut c, &node.register(1, T0)).unwrap();
    }
    let c = core(RegistryDb::open(&path).unwrap(), &clock);
    let m = &c.list_models().unwrap()[0];
    assert_eq!(m.model_id, "tiny");
    let counts: Vec<u32> = m.shards.iter().map(|s| s.healthy_nodes).collect();
    assert_eq!(counts, vec![0, 1, 0]);
}

#[test]
fn status_mapping_hides_storage_details() {
    let storage = RegistryError::Storage(unfed_db::DbError::Corrupt {
        table: "nodes",
        problem: "secret detail at /var/lib/unfed/registry.db".into(),
    });
    let s = to_status(&storage);
    assert_eq!(s.code(), Code::Internal);
    assert!(!s.message().contains("/var/lib"), "{}", s.message());
    assert!(!s.message().contains("nodes"), "{}", s.message());
    let cases = [
        (
            RegistryError::BadSignature("x".into()),
            Code::Unauthenticated,
        ),
        (
            RegistryError::WrongSigner {
                signer: unfed_identity::Address([1; 20]),
                named: unfed_identity::Address([2; 20]),
            },
            Code::PermissionDenied,
        ),
        (
            RegistryError::Replay {
                identity: unfed_identity::Address([1; 20]),
                nonce: 5,
            },
            Code::AlreadyExists,
        ),
        (
            RegistryError::ManifestConflict {
                model_id: "m".into(),
                existing: "00".into(),
            },
            Code::FailedPrecondition,
        ),
        (RegistryError::UnknownModel("m".into()), Code::NotFound),
        (RegistryError::Unavailable, Code::Unavailable),
    ];
    for (err, code) in cases {
        assert_eq!(to_status(&err).code(), code, "{err}");
    }
}

/// A core with the test options and these caps.
fn capped_core(
    clock: &ManualClock,
    max_models: u32,
    max_nodes_per_identity: u32,
    max_nodes: u32,
) -> unfed_registry::RegistryCore {
    let options = unfed_registry::RegistryOptions {
        max_models,
        max_nodes_per_identity,
        max_nodes,
        ..common::options()
    };
    unfed_registry::RegistryCore::new(
        common::config(),
        options,
        RegistryDb::open_in_memory().unwrap(),
        std::sync::Arc::new(clock.clone()),
    )
    .unwrap()
}

#[test]
fn growth_caps_refuse_new_rows_with_resource_exhausted() {
    let clock = ManualClock::new(T0);
    let mut core = capped_core(&clock, 1, 2, 3);
    let mut a = TestNode::new(8501);
    let mut b = TestNode::new(8502);
    let mut c = TestNode::new(8503);

    reg(&mut core, &a.register(0, T0)).unwrap();
    a.address = "127.0.0.1:8511".into();
    reg(&mut core, &a.register(1, T0)).unwrap();
    // A third address of the same identity.
    a.address = "127.0.0.1:8521".into();
    let err = reg(&mut core, &a.register(2, T0)).unwrap_err();
    assert!(
        matches!(err, RegistryError::TooManyNodesForIdentity { max: 2, .. }),
        "{err}"
    );
    assert!(
        err.to_string().contains("maximum of 2 registered nodes"),
        "{err}"
    );
    assert_eq!(to_status(&err).code(), Code::ResourceExhausted);
    // Re-registering an address it has is a refresh, allowed at the cap.
    a.address = "127.0.0.1:8501".into();
    let refreshed = reg(&mut core, &a.register(2, T0)).unwrap();
    assert!(!refreshed.new);

    // A second model id is over max_models = 1.
    let p = b.register_payload("other", 0, manifest_other(), T0);
    let err = reg(&mut core, &b.sign(&p, manifest_other())).unwrap_err();
    assert!(
        matches!(err, RegistryError::TooManyModels { max: 1, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("\"other\""), "{err}");
    assert_eq!(to_status(&err).code(), Code::ResourceExhausted);
    assert_eq!(core.list_models().unwrap().len(), 1);

    // The third row fills the registry; a fourth from anyone is refused.
    reg(&mut core, &b.register(0, T0)).unwrap();
    let err = reg(&mut core, &c.register(0, T0)).unwrap_err();
    assert!(
        matches!(err, RegistryError::TooManyNodes { max: 3 }),
        "{err}"
    );
    assert!(err.to_string().contains("maximum of 3 nodes"), "{err}");
    assert_eq!(to_status(&err).code(), Code::ResourceExhausted);
    // Refreshes still work; refusals consumed no nonce (4 accepted registrations).
    assert!(!reg(&mut core, &b.register(1, T0)).unwrap().new);
    assert_eq!(core.db().nonce_count().unwrap(), 5);
    assert_eq!(core.db().node_count().unwrap(), 3);
}

#[test]
fn silent_nodes_and_orphaned_manifests_are_pruned() {
    // Test options: healthy for 3 s, so rows are pruned after 30 s.
    let clock = ManualClock::new(T0);
    let mut core = core(RegistryDb::open_in_memory().unwrap(), &clock);
    let mut a = TestNode::new(8601);
    let mut b = TestNode::new(8602);
    let mut c = TestNode::new(8603);
    reg(&mut core, &a.register(0, T0)).unwrap();
    let p = b.register_payload("other", 0, manifest_other(), T0);
    reg(&mut core, &b.sign(&p, manifest_other())).unwrap();
    // `other` loses its only node at T0 + 1 s.
    clock.set_ms(T0 + 1000);
    let u = b.unregister(T0 + 1000);
    core.unregister(&u.payload, &u.signature).unwrap();

    // Exactly 30 s after its last heartbeat, a is still registered (and pruning needs a write).
    clock.set_ms(T0 + 30_000);
    reg(&mut core, &c.register(1, T0 + 30_000)).unwrap();
    assert!(
        core.db()
            .node(&a.key.address(), &a.address)
            .unwrap()
            .is_some()
    );
    // 1 ms later the next write prunes it; its heartbeat then finds nothing.
    clock.set_ms(T0 + 30_001);
    let hb = a.heartbeat(T0 + 30_001);
    let err = core.heartbeat(&hb.payload, &hb.signature).unwrap_err();
    assert!(matches!(err, RegistryError::NotRegistered { .. }), "{err}");
    assert_eq!(core.db().node_count().unwrap(), 1);
    assert_eq!(core.list_models().unwrap().len(), 2);

    // `other` has had no node for 30 s at T0 + 31 s; 1 ms later it goes.
    clock.set_ms(T0 + 31_000);
    let hb = c.heartbeat(T0 + 31_000);
    core.heartbeat(&hb.payload, &hb.signature).unwrap();
    assert!(core.manifest_json("other").is_ok());
    clock.set_ms(T0 + 31_001);
    let hb = c.heartbeat(T0 + 31_001);
    core.heartbeat(&hb.payload, &hb.signature).unwrap();
    let err = core.manifest_json("other").unwrap_err();
    assert!(matches!(err, RegistryError::UnknownModel(_)), "{err}");
    assert!(core.discover("other").is_err());
    let models: Vec<String> = core
        .list_models()
        .unwrap()
        .into_iter()
        .map(|m| m.model_id)
        .collect();
    assert_eq!(models, vec!["tiny"]);
    // `tiny` still has c, so it stays; the pruned model id can be registered again.
    let p = b.register_payload("other", 1, manifest_other(), T0 + 31_001);
    assert!(reg(&mut core, &b.sign(&p, manifest_other())).unwrap().new);
    assert_eq!(core.list_models().unwrap().len(), 2);
}

#[test]
fn discovery_returns_at_most_64_per_shard_but_counts_all() {
    let clock = ManualClock::new(T0);
    let mut core = core(RegistryDb::open_in_memory().unwrap(), &clock);
    let n = unfed_registry::MAX_DISCOVERED_PER_SHARD + 2;
    let mut nodes: Vec<TestNode> = (0..n).map(|i| TestNode::new(9000 + i as u16)).collect();
    for (i, node) in nodes.iter_mut().enumerate() {
        // Later nodes heartbeat more recently.
        clock.set_ms(T0 + i as u64);
        reg(&mut core, &node.register(0, T0 + i as u64)).unwrap();
    }
    reg(&mut core, &TestNode::new(9500).register(1, T0 + n as u64)).unwrap();
    let d = core.discover("tiny").unwrap();
    let shard0: Vec<u64> = d
        .nodes
        .iter()
        .filter(|n| n.shard_index == 0)
        .map(|n| n.last_heartbeat_ms)
        .collect();
    assert_eq!(shard0.len(), unfed_registry::MAX_DISCOVERED_PER_SHARD);
    // The most recent ones, most recent first.
    assert_eq!(shard0[0], T0 + n as u64 - 1);
    assert_eq!(*shard0.last().unwrap(), T0 + 2);
    assert_eq!(d.nodes.iter().filter(|n| n.shard_index == 1).count(), 1);
    let counts: Vec<u32> = core.list_models().unwrap()[0]
        .shards
        .iter()
        .map(|s| s.healthy_nodes)
        .collect();
    assert_eq!(counts, vec![n as u32, 1, 0]);
}
