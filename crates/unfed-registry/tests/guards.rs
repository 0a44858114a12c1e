//! Guard relays at the registry: signed admission (refused unsigned, wrongly signed, replayed,
//! of the wrong kind or with bad fields), listing by health, heartbeats and unregistration
//! only by the guard's own identity, persistence across a restart, and the same over gRPC.

mod common;

use common::{Served, T0, TestNode, core};
use tonic::Code;
use unfed_db::RegistryDb;
use unfed_identity::canonical::{Payload, RegisterGuard};
use unfed_proto::registry::ListGuardsRequest;
use unfed_registry::{ManualClock, RegistryCore, RegistryError, to_status};

fn admit(core: &mut RegistryCore, guard: &mut TestNode, ts: u64) -> Result<(), RegistryError> {
    let req = guard.register_guard(ts);
    core.register_guard(&req.payload, &req.signature)
        .map(|_| ())
}

fn listed(core: &RegistryCore) -> Vec<String> {
    core.guards()
        .unwrap()
        .into_iter()
        .map(|g| g.address)
        .collect()
}

#[test]
fn a_signed_guard_is_listed_while_it_heartbeats() {
    let clock = ManualClock::new(T0);
    let mut core = core(RegistryDb::open_in_memory().unwrap(), &clock);
    let mut guard = TestNode::new(5040);
    admit(&mut core, &mut guard, T0).unwrap();
    let g = &core.guards().unwrap()[0];
    assert_eq!(
        (g.identity, g.address.as_str(), g.onion_key.clone()),
        (guard.key.address(), "127.0.0.1:5040", guard.onion_key())
    );
    // Heartbeats keep it listed past the health window (3 s); silence drops it.
    for s in 1..=4 {
        clock.advance_ms(1000);
        let hb = guard.heartbeat(T0 + s * 1000);
        core.heartbeat(&hb.payload, &hb.signature).unwrap();
    }
    assert_eq!(listed(&core), ["127.0.0.1:5040"]);
    clock.advance_ms(3001);
    assert!(listed(&core).is_empty());
    // A guard is not a model's node: nothing becomes READY or listed for a model.
    assert!(core.list_models().unwrap().is_empty());
}

#[test]
fn bad_guard_registrations_are_refused_and_change_nothing() {
    let clock = ManualClock::new(T0);
    let mut core = core(RegistryDb::open_in_memory().unwrap(), &clock);
    let mut guard = TestNode::new(5041);
    let mallory = TestNode::new(6666);

    // Signed by someone else.
    let mut req = guard.register_guard(T0);
    req.signature = mallory.key.sign(&req.payload).to_vec();
    let err = core
        .register_guard(&req.payload, &req.signature)
        .unwrap_err();
    assert_eq!(to_status(&err).code(), Code::PermissionDenied, "{err}");
    // Unsigned.
    let err = core.register_guard(&req.payload, &[]).unwrap_err();
    assert_eq!(to_status(&err).code(), Code::Unauthenticated, "{err}");
    // A node's registration sent as a guard's, and a guard's sent as a node's.
    let node = guard.register(0, T0);
    let err = core
        .register_guard(&node.payload, &node.signature)
        .unwrap_err();
    assert!(matches!(err, RegistryError::WrongKind { .. }), "{err}");
    let req = guard.register_guard(T0);
    let err = core.register(&req.payload, &req.signature, "").unwrap_err();
    assert!(matches!(err, RegistryError::WrongKind { .. }), "{err}");
    // A timestamp outside the skew window.
    let err = admit(&mut core, &mut guard, T0 + 3_600_000).unwrap_err();
    assert_eq!(to_status(&err).code(), Code::FailedPrecondition, "{err}");
    // Bad fields: no port, a short onion key.
    for (address, onion_key) in [("127.0.0.1", vec![1; 32]), ("127.0.0.1:5041", vec![1; 31])] {
        let p = Payload::RegisterGuard(RegisterGuard {
            identity: guard.key.address(),
            address: address.into(),
            onion_key,
            timestamp_ms: T0,
            nonce: guard.nonce(),
        });
        let req = guard.sign(&p, "");
        let err = core
            .register_guard(&req.payload, &req.signature)
            .unwrap_err();
        assert_eq!(to_status(&err).code(), Code::InvalidArgument, "{err}");
    }
    assert!(listed(&core).is_empty());

    // A replayed registration is refused.
    let req = guard.register_guard(T0);
    core.register_guard(&req.payload, &req.signature).unwrap();
    let err = core
        .register_guard(&req.payload, &req.signature)
        .unwrap_err();
    assert!(matches!(err, RegistryError::Replay { .. }), "{err}");
}

#[test]
fn only_the_guard_itself_can_heartbeat_or_unregister_it() {
    let clock = ManualClock::new(T0);
    let mut core = core(RegistryDb::open_in_memory().unwrap(), &clock);
    let mut guard = TestNode::new(5042);
    admit(&mut core, &mut guard, T0).unwrap();
    let mut mallory = TestNode::new(6666);
    mallory.address = guard.address.clone();
    let u = mallory.unregister(T0);
    let err = core.unregister(&u.payload, &u.signature).unwrap_err();
    assert_eq!(to_status(&err).code(), Code::NotFound, "{err}");
    let hb = mallory.heartbeat(T0);
    let err = core.heartbeat(&hb.payload, &hb.signature).unwrap_err();
    assert_eq!(to_status(&err).code(), Code::NotFound, "{err}");
    assert_eq!(listed(&core), ["127.0.0.1:5042"]);
    let u = guard.unregister(T0);
    core.unregister(&u.payload, &u.signature).unwrap();
    assert!(listed(&core).is_empty());
}

#[tokio::test]
async fn guards_over_grpc_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("r.db");
    let clock = ManualClock::new(T0);
    let mut guard = TestNode::new(5043);
    let served = Served::start(&db, &clock).await;
    let mut c = served.client().await;
    let reply = c
        .register_guard(guard.register_guard(T0))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reply.heartbeat_interval_ms, 1000);
    // A manifest has no place in a guard's registration.
    let mut req = guard.register_guard(T0);
    req.manifest_json = "{}".into();
    let refused = c.register_guard(req).await.unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument);
    // Garbage gets a clear error and the service keeps serving.
    let mut req = guard.register_guard(T0);
    req.payload.truncate(20);
    let refused = c.register_guard(req).await.unwrap_err();
    assert_eq!(
        refused.code(),
        Code::InvalidArgument,
        "{}",
        refused.message()
    );
    drop(c);
    served.stop().await;

    let served = Served::start(&db, &clock).await;
    let mut c = served.client().await;
    let guards = c
        .list_guards(ListGuardsRequest {})
        .await
        .unwrap()
        .into_inner()
        .guards;
    assert_eq!(guards.len(), 1);
    let g = &guards[0];
    assert_eq!(g.identity, guard.key.address().to_string());
    assert_eq!(g.address, "127.0.0.1:5043");
    assert_eq!(g.onion_key, guard.onion_key());
    assert_eq!(g.last_heartbeat_ms, T0);
    c.heartbeat(guard.heartbeat(T0 + 10)).await.unwrap();
    c.unregister(guard.unregister(T0 + 20)).await.unwrap();
    let guards = c.list_guards(ListGuardsRequest {}).await.unwrap();
    assert!(guards.into_inner().guards.is_empty());
    drop(c);
    served.stop().await;
}
