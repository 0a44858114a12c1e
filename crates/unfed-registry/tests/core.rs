//! The registry core without networking: manifest checks, field checks, health, readiness,
//! nonce pruning, reload from the database, and the error-to-status mapping.

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
        ("model_id", |r| r.model_id = "bad id!".into()),
        ("onion_key", |r| r.onion_key = vec![1; 31]),
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
    // Bracketed IPv6 and DNS names are fine; so is an empty onion key.
    for address in ["[::1]:50051", "node-1.example.org:443"] {
        let Payload::Register(mut r) = node.register_payload("tiny", 0, manifest3(), T0) else {
            unreachable!()
        };
        r.address = address.into();
        r.onion_key.clear();
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
    // 61 s later the first nonce is pruned by the next request...
    clock.set_ms(T0 + 61_000);
    let hb = node.heartbeat(T0 + 61_000);
    core.heartbeat(&hb.payload, &hb.signature).unwrap();
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
