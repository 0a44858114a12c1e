//! MPC pairs for shard 0: roles that do not fit the manifest are refused, discovery lists only
//! healthy mutual pairs (each party A once, carrying its party B; B never alone), status counts
//! them, a silent party B makes the model INCOMPLETE again, and roles survive a restart (in
//! the core and over real gRPC).

mod common;

use common::{Served, T0, TestNode, core, manifest_mpc, manifest3};
use tonic::Code;
use unfed_db::RegistryDb;
use unfed_identity::MpcRole;
use unfed_proto::registry::{DiscoverRequest, ListModelsRequest, SignedPayload};
use unfed_registry::{
    DiscoveredNode, ManualClock, PairPeer, Readiness, RegistryCore, RegistryError, to_status,
};

fn reg(core: &mut RegistryCore, req: &SignedPayload) -> Result<(), RegistryError> {
    core.register(&req.payload, &req.signature, &req.manifest_json)
        .map(drop)
}

fn beat(core: &mut RegistryCore, node: &mut TestNode, ts: u64) {
    let hb = node.heartbeat(ts);
    core.heartbeat(&hb.payload, &hb.signature).unwrap();
}

/// Readiness and per-shard healthy counts of `tiny-mpc`.
fn status(core: &RegistryCore) -> (Readiness, Vec<u32>) {
    let models = core.list_models().unwrap();
    let m = models
        .iter()
        .find(|m| m.model_id == "tiny-mpc")
        .expect("tiny-mpc is registered");
    (
        m.readiness,
        m.shards.iter().map(|s| s.healthy_nodes).collect(),
    )
}

/// The shard-0 entries of `tiny-mpc`'s discovery.
fn shard0(core: &RegistryCore) -> Vec<DiscoveredNode> {
    let d = core.discover("tiny-mpc").unwrap();
    assert_eq!(d.num_shards, 3);
    d.nodes.into_iter().filter(|n| n.shard_index == 0).collect()
}

/// What discovery should say about `b` as the pair of an A entry.
fn peer_of(b: &TestNode) -> PairPeer {
    PairPeer {
        identity: b.key.address(),
        address: b.address.clone(),
        onion_key: b.onion_key(),
    }
}

/// Plain nodes on shards 1 and 2 of `tiny-mpc`.
fn plain_shards(core: &mut RegistryCore, ts: u64) -> Vec<TestNode> {
    let mut nodes = vec![TestNode::new(8901), TestNode::new(8902)];
    for (node, shard) in nodes.iter_mut().zip([1u32, 2]) {
        reg(core, &node.register_mpc(shard, MpcRole::None, ts)).unwrap();
    }
    nodes
}

fn expect_role_refused(err: RegistryError, needle: &str) {
    assert!(
        matches!(&err, RegistryError::MpcRole { model_id, .. } if !model_id.is_empty()),
        "{err}"
    );
    assert!(err.to_string().contains(needle), "{err}");
    assert_eq!(to_status(&err).code(), Code::InvalidArgument);
}

#[test]
fn a_plain_shard_0_node_is_refused_for_an_mpc_model() {
    let clock = ManualClock::new(T0);
    let mut core = core(RegistryDb::open_in_memory().unwrap(), &clock);
    let mut plain = TestNode::new(8801);
    let err = reg(&mut core, &plain.register_mpc(0, MpcRole::None, T0)).unwrap_err();
    expect_role_refused(err, "a plain node cannot serve it");
    assert!(core.list_models().unwrap().is_empty(), "nothing recorded");
    assert_eq!(core.db().nonce_count().unwrap(), 0, "no nonce consumed");
    // Plain nodes of the other shards are fine.
    plain_shards(&mut core, T0);
    assert_eq!(status(&core), (Readiness::Incomplete, vec![0, 1, 1]));
}

#[test]
fn roles_are_refused_where_they_do_not_fit() {
    let clock = ManualClock::new(T0);
    let mut core = core(RegistryDb::open_in_memory().unwrap(), &clock);
    let mut a = TestNode::new(8811);
    let b = TestNode::new(8812);
    let peer = b.key.address();

    // A model without an mpc plan takes no roles, on any shard.
    for (shard, role) in [(0, MpcRole::A { peer }), (1, MpcRole::B { peer })] {
        let p = a.register_payload_as("tiny", shard, manifest3(), role, T0);
        let err = reg(&mut core, &a.sign(&p, manifest3())).unwrap_err();
        expect_role_refused(err, "has no mpc plan");
    }
    // An MPC model takes roles on shard 0 only.
    for shard in [1u32, 2] {
        let err = reg(&mut core, &a.register_mpc(shard, MpcRole::B { peer }, T0)).unwrap_err();
        expect_role_refused(err, &format!("a node of shard {shard} registers without"));
    }
    // A party cannot be its own peer.
    let me = a.key.address();
    for role in [MpcRole::A { peer: me }, MpcRole::B { peer: me }] {
        let err = reg(&mut core, &a.register_mpc(0, role, T0)).unwrap_err();
        assert!(err.to_string().contains(&me.to_string()), "{err}");
        expect_role_refused(err, "not its own");
    }
    assert!(core.list_models().unwrap().is_empty(), "nothing recorded");
    assert_eq!(core.db().nonce_count().unwrap(), 0, "no nonce consumed");

    // The fitting roles are accepted.
    reg(&mut core, &a.register_party_a(&b, T0)).unwrap();
    let row = core.db().node(&me, &a.address).unwrap().unwrap();
    assert_eq!(row.mpc, MpcRole::A { peer });
}

#[test]
fn discovery_lists_a_pair_only_when_both_parties_name_each_other() {
    let clock = ManualClock::new(T0);
    let mut core = core(RegistryDb::open_in_memory().unwrap(), &clock);
    let mut a = TestNode::new(8821);
    let mut b = TestNode::new(8822);
    let mut stranger = TestNode::new(8823);
    plain_shards(&mut core, T0);

    // Only A: no pair.
    reg(&mut core, &a.register_party_a(&b, T0)).unwrap();
    assert!(shard0(&core).is_empty());
    assert_eq!(status(&core), (Readiness::Incomplete, vec![0, 1, 1]));

    // B registers, but as the peer of someone else: not mutual.
    reg(&mut core, &b.register_party_b(&stranger, T0)).unwrap();
    assert!(shard0(&core).is_empty());
    assert_eq!(status(&core), (Readiness::Incomplete, vec![0, 1, 1]));

    // B says it is party A of A too: both claim A, still no pair.
    reg(&mut core, &b.register_party_a(&a, T0)).unwrap();
    assert!(shard0(&core).is_empty());

    // B names A as party B: a mutual pair, listed once as A carrying B.
    clock.set_ms(T0 + 10);
    reg(&mut core, &b.register_party_b(&a, T0 + 10)).unwrap();
    let listed = shard0(&core);
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0].identity, a.key.address());
    assert_eq!(listed[0].address, a.address);
    assert_eq!(listed[0].onion_key, a.onion_key());
    assert_eq!(listed[0].last_heartbeat_ms, T0);
    assert_eq!(listed[0].pair, Some(peer_of(&b)));
    assert_eq!(status(&core), (Readiness::Ready, vec![1, 1, 1]));
    // B is never listed on its own, and plain shards carry no pair.
    let d = core.discover("tiny-mpc").unwrap();
    assert!(d.nodes.iter().all(|n| n.identity != b.key.address()));
    let others: Vec<(u32, bool)> = d
        .nodes
        .iter()
        .map(|n| (n.shard_index, n.pair.is_some()))
        .collect();
    assert_eq!(others, vec![(0, true), (1, false), (2, false)]);

    // A re-registers naming someone else: the pair is gone.
    reg(&mut core, &a.register_party_a(&stranger, T0 + 10)).unwrap();
    assert!(shard0(&core).is_empty());
    assert_eq!(status(&core), (Readiness::Incomplete, vec![0, 1, 1]));
    // And the stranger naming A back makes that pair instead.
    reg(&mut core, &stranger.register_party_b(&a, T0 + 10)).unwrap();
    assert_eq!(shard0(&core)[0].pair, Some(peer_of(&stranger)));
    assert_eq!(status(&core).1, vec![1, 1, 1]);
}

#[test]
fn only_b_or_only_a_leaves_the_model_incomplete_and_each_pair_is_listed_once() {
    let clock = ManualClock::new(T0);
    let mut core = core(RegistryDb::open_in_memory().unwrap(), &clock);
    let mut others = plain_shards(&mut core, T0);
    let mut a1 = TestNode::new(8831);
    let mut b1 = TestNode::new(8832);
    let mut a2 = TestNode::new(8833);
    let mut b2 = TestNode::new(8834);

    // Only B nodes.
    reg(&mut core, &b1.register_party_b(&a1, T0)).unwrap();
    reg(&mut core, &b2.register_party_b(&a2, T0)).unwrap();
    assert!(shard0(&core).is_empty());
    assert_eq!(status(&core), (Readiness::Incomplete, vec![0, 1, 1]));

    // Their A nodes arrive (a2 more recently): two pairs, most recent A first.
    reg(&mut core, &a1.register_party_a(&b1, T0)).unwrap();
    clock.set_ms(T0 + 5);
    reg(&mut core, &a2.register_party_a(&b2, T0 + 5)).unwrap();
    let listed: Vec<(_, _)> = shard0(&core)
        .into_iter()
        .map(|n| (n.identity, n.pair.map(|p| p.identity)))
        .collect();
    assert_eq!(
        listed,
        vec![
            (a2.key.address(), Some(b2.key.address())),
            (a1.key.address(), Some(b1.key.address())),
        ]
    );
    assert_eq!(status(&core), (Readiness::Ready, vec![2, 1, 1]));

    // Without the plain shards the pairs alone are not enough.
    for n in others.iter_mut() {
        let u = n.unregister(T0 + 5);
        core.unregister(&u.payload, &u.signature).unwrap();
    }
    assert_eq!(status(&core), (Readiness::Incomplete, vec![2, 0, 0]));
}

#[test]
fn a_silent_party_b_makes_the_model_incomplete_again() {
    let clock = ManualClock::new(T0);
    let mut core = core(RegistryDb::open_in_memory().unwrap(), &clock);
    let mut others = plain_shards(&mut core, T0);
    let mut a = TestNode::new(8841);
    let mut b = TestNode::new(8842);
    reg(&mut core, &a.register_party_a(&b, T0)).unwrap();
    reg(&mut core, &b.register_party_b(&a, T0)).unwrap();
    assert_eq!(status(&core), (Readiness::Ready, vec![1, 1, 1]));

    // Everyone but B keeps heartbeating; healthy for 3 s.
    for step in 1..=4u64 {
        let t = T0 + step * 1000;
        clock.set_ms(t);
        beat(&mut core, &mut a, t);
        for n in others.iter_mut() {
            beat(&mut core, n, t);
        }
    }
    assert_eq!(status(&core), (Readiness::Incomplete, vec![0, 1, 1]));
    assert!(
        shard0(&core).is_empty(),
        "A without a healthy B is not offered"
    );

    // B's heartbeat brings the pair back.
    beat(&mut core, &mut b, T0 + 4000);
    assert_eq!(status(&core), (Readiness::Ready, vec![1, 1, 1]));
    assert_eq!(shard0(&core)[0].pair, Some(peer_of(&b)));

    // A silent A does the same.
    clock.set_ms(T0 + 7001);
    beat(&mut core, &mut b, T0 + 7001);
    for n in others.iter_mut() {
        beat(&mut core, n, T0 + 7001);
    }
    assert_eq!(status(&core), (Readiness::Incomplete, vec![0, 1, 1]));
}

#[test]
fn a_reopened_core_keeps_the_roles() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r.db");
    let clock = ManualClock::new(T0);
    let mut a = TestNode::new(8851);
    let mut b = TestNode::new(8852);
    {
        let mut c = core(RegistryDb::open(&path).unwrap(), &clock);
        plain_shards(&mut c, T0);
        reg(&mut c, &a.register_party_a(&b, T0)).unwrap();
        reg(&mut c, &b.register_party_b(&a, T0)).unwrap();
    }
    clock.advance_ms(100);
    let mut c = core(RegistryDb::open(&path).unwrap(), &clock);
    assert_eq!(status(&c), (Readiness::Ready, vec![1, 1, 1]));
    assert_eq!(shard0(&c)[0].pair, Some(peer_of(&b)));
    // The reloaded manifest still refuses a plain shard-0 node.
    let mut plain = TestNode::new(8853);
    let err = reg(&mut c, &plain.register_mpc(0, MpcRole::None, T0 + 100)).unwrap_err();
    expect_role_refused(err, "two-party MPC pair");
}

#[test]
fn an_mpc_plan_that_is_not_shard_0s_range_is_refused() {
    let clock = ManualClock::new(T0);
    let mut core = core(RegistryDb::open_in_memory().unwrap(), &clock);
    let mut json: serde_json::Value = serde_json::from_str(manifest_mpc()).unwrap();
    json["mpc"]["layers"] = 2.into();
    let bad = serde_json::to_string_pretty(&json).unwrap();
    let mut a = TestNode::new(8861);
    let peer = TestNode::new(8862).key.address();
    let p = a.register_payload_as("tiny-mpc", 0, &bad, MpcRole::A { peer }, T0);
    let err = reg(&mut core, &a.sign(&p, &bad)).unwrap_err();
    assert!(matches!(err, RegistryError::BadManifest(_)), "{err}");
    assert!(err.to_string().contains("mpc plan puts 2 layers"), "{err}");
}

#[tokio::test]
async fn grpc_discovery_carries_the_pair_and_a_restart_keeps_it() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("r.db");
    let clock = ManualClock::new(T0);
    let mut a = TestNode::new(7301);
    let mut b = TestNode::new(7302);
    let mut s1 = TestNode::new(7303);
    let mut s2 = TestNode::new(7304);
    let discover = || DiscoverRequest {
        model_id: "tiny-mpc".into(),
    };

    let served = Served::start(&db, &clock).await;
    let mut c = served.client().await;
    // A plain shard-0 node is refused with INVALID_ARGUMENT.
    let s = c
        .register(s1.register_mpc(0, MpcRole::None, T0))
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::InvalidArgument, "{}", s.message());
    assert!(s.message().contains("MPC role refused"), "{}", s.message());

    c.register(s1.register_mpc(1, MpcRole::None, T0))
        .await
        .unwrap();
    c.register(s2.register_mpc(2, MpcRole::None, T0))
        .await
        .unwrap();
    c.register(a.register_party_a(&b, T0)).await.unwrap();
    let d = c.discover(discover()).await.unwrap().into_inner();
    assert!(
        d.nodes
            .iter()
            .all(|n| n.shard_index != 0 && n.pair.is_none())
    );
    c.register(b.register_party_b(&a, T0)).await.unwrap();
    drop(c);
    served.stop().await;

    clock.advance_ms(500);
    let served = Served::start(&db, &clock).await;
    let mut c = served.client().await;
    let d = c.discover(discover()).await.unwrap().into_inner();
    let shards: Vec<u32> = d.nodes.iter().map(|n| n.shard_index).collect();
    assert_eq!(shards, vec![0, 1, 2]);
    let entry = &d.nodes[0];
    assert_eq!(entry.identity, a.key.address().to_string());
    assert_eq!(entry.address, a.address);
    let pair = entry.pair.as_ref().expect("shard 0 carries its party B");
    assert_eq!(pair.identity, b.key.address().to_string());
    assert_eq!(pair.address, b.address);
    assert_eq!(pair.onion_key, b.onion_key());
    assert!(d.nodes[1..].iter().all(|n| n.pair.is_none()));
    let m = c
        .list_models(ListModelsRequest {})
        .await
        .unwrap()
        .into_inner();
    let counts: Vec<u32> = m.models[0].shards.iter().map(|s| s.healthy_nodes).collect();
    assert_eq!(
        (m.models[0].status.as_str(), counts),
        ("READY", vec![1, 1, 1])
    );
    drop(c);
    served.stop().await;
}
