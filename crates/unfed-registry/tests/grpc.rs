//! The registry over real gRPC on 127.0.0.1: signed admission, refusals with the right status
//! codes, bad input that leaves the service serving, restart persistence, model readiness.

mod common;

use common::{Served, T0, TestNode, manifest2_conflicting, manifest3};
use tonic::Code;
use unfed_proto::MAX_REGISTRY_MESSAGE;
use unfed_proto::registry::{
    ClusterInfoRequest, DiscoverRequest, GetManifestRequest, ListModelsRequest, SignedPayload,
};
use unfed_registry::ManualClock;

fn code<T: std::fmt::Debug>(r: Result<T, tonic::Status>) -> (Code, String) {
    let s = r.expect_err("the registry should refuse this");
    (s.code(), s.message().to_owned())
}

#[tokio::test]
async fn signed_register_heartbeat_discover() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let served = Served::start(&dir.path().join("r.db"), &clock).await;
    let mut c = served.client().await;
    let mut node = TestNode::new(7001);

    let reply = c.register(node.register(1, T0)).await.unwrap().into_inner();
    assert_eq!(reply.heartbeat_interval_ms, 1000);
    clock.advance_ms(500);
    c.heartbeat(node.heartbeat(T0 + 500)).await.unwrap();

    let d = c
        .discover(DiscoverRequest {
            model_id: "tiny".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((d.model_id.as_str(), d.num_shards), ("tiny", 3));
    assert_eq!(d.nodes.len(), 1);
    let n = &d.nodes[0];
    assert_eq!(n.identity, node.key.address().to_string());
    assert_eq!(n.address, "127.0.0.1:7001");
    assert_eq!((n.shard_index, n.last_heartbeat_ms), (1, T0 + 500));

    let m = c
        .get_manifest(GetManifestRequest {
            model_id: "tiny".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(m.manifest_json, manifest3());

    let info = c
        .cluster_info(ClusterInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.name, "Local UNFED Pool");
    assert_eq!(info.min_stake, "100000000000000000000");
    assert_eq!(info.daemon_quorum, 1);

    let unknown = c
        .discover(DiscoverRequest {
            model_id: "nope".into(),
        })
        .await;
    assert_eq!(code(unknown).0, Code::NotFound);
    let unknown = c
        .get_manifest(GetManifestRequest {
            model_id: "nope".into(),
        })
        .await;
    assert_eq!(code(unknown).0, Code::NotFound);

    // Unregistering removes it from discovery.
    c.unregister(node.unregister(T0 + 600)).await.unwrap();
    let d = c
        .discover(DiscoverRequest {
            model_id: "tiny".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(d.nodes.is_empty());
    drop(c);
    served.stop().await;
}

#[tokio::test]
async fn unsigned_wrongly_signed_and_replayed_requests_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let served = Served::start(&dir.path().join("r.db"), &clock).await;
    let mut c = served.client().await;
    let mut node = TestNode::new(7002);
    let mallory = TestNode::new(6666);

    // Unsigned registration.
    let mut unsigned = node.register(0, T0);
    unsigned.signature.clear();
    let (c0, msg) = code(c.register(unsigned).await);
    assert_eq!(c0, Code::Unauthenticated, "{msg}");
    assert!(msg.contains("not signed"), "{msg}");

    // Garbled signature.
    let mut garbled = node.register(0, T0);
    garbled.signature[10] ^= 0xff;
    garbled.signature[64] = 99;
    assert_eq!(code(c.register(garbled).await).0, Code::Unauthenticated);

    // Signed by another key.
    let mut forged = node.register(0, T0);
    forged.signature = mallory.key.sign(&forged.payload).to_vec();
    let (c0, msg) = code(c.register(forged).await);
    assert_eq!(c0, Code::PermissionDenied, "{msg}");
    assert!(msg.contains(&mallory.key.address().to_string()), "{msg}");

    // Nothing got in.
    let models = c
        .list_models(ListModelsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(models.models.is_empty());

    // A good registration, then its replay.
    let good = node.register(0, T0);
    c.register(good.clone()).await.unwrap();
    let (c0, msg) = code(c.register(good).await);
    assert_eq!(c0, Code::AlreadyExists, "{msg}");
    assert!(msg.contains("nonce"), "{msg}");

    // Heartbeats: unsigned, signed by another key, replayed.
    let mut hb = node.heartbeat(T0);
    hb.signature.clear();
    assert_eq!(code(c.heartbeat(hb).await).0, Code::Unauthenticated);
    let mut hb = node.heartbeat(T0);
    hb.signature = mallory.key.sign(&hb.payload).to_vec();
    assert_eq!(code(c.heartbeat(hb).await).0, Code::PermissionDenied);
    let hb = node.heartbeat(T0);
    c.heartbeat(hb.clone()).await.unwrap();
    assert_eq!(code(c.heartbeat(hb).await).0, Code::AlreadyExists);

    // A heartbeat payload sent to Register is the wrong kind.
    let hb = node.heartbeat(T0);
    let (c0, msg) = code(c.register(hb).await);
    assert_eq!(c0, Code::InvalidArgument, "{msg}");

    // An unknown node's heartbeat.
    let mut stranger = TestNode::new(7999);
    let (c0, msg) = code(c.heartbeat(stranger.heartbeat(T0)).await);
    assert_eq!(c0, Code::NotFound);
    assert!(msg.contains("not registered"), "{msg}");
    drop(c);
    served.stop().await;
}

#[tokio::test]
async fn nobody_can_unregister_someone_elses_node() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let served = Served::start(&dir.path().join("r.db"), &clock).await;
    let mut c = served.client().await;
    let mut bob = TestNode::new(7003);
    let mut mallory = TestNode::new(6666);
    c.register(bob.register(0, T0)).await.unwrap();

    // Mallory signs an unregistration that names Bob.
    let p = bob.unregister_payload(T0);
    let mut req = bob.sign(&p, "");
    req.signature = mallory.key.sign(&req.payload).to_vec();
    assert_eq!(code(c.unregister(req).await).0, Code::PermissionDenied);

    // Mallory signs her own unregistration of Bob's address: not her node.
    mallory.address = bob.address.clone();
    let (c0, msg) = code(c.unregister(mallory.unregister(T0)).await);
    assert_eq!(c0, Code::NotFound, "{msg}");
    // ... nor can she heartbeat it.
    assert_eq!(
        code(c.heartbeat(mallory.heartbeat(T0)).await).0,
        Code::NotFound
    );

    let d = c
        .discover(DiscoverRequest {
            model_id: "tiny".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(d.nodes.len(), 1, "Bob's node is still there");
    drop(c);
    served.stop().await;
}

#[tokio::test]
async fn stale_and_future_timestamps_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let served = Served::start(&dir.path().join("r.db"), &clock).await;
    let mut c = served.client().await;
    let mut node = TestNode::new(7004);
    let (c0, msg) = code(c.register(node.register(0, T0 - 61_000)).await);
    assert_eq!(c0, Code::FailedPrecondition, "{msg}");
    assert!(msg.contains("behind") && msg.contains("clock"), "{msg}");
    let (c0, msg) = code(c.register(node.register(0, T0 + 61_000)).await);
    assert_eq!(c0, Code::FailedPrecondition, "{msg}");
    assert!(msg.contains("ahead"), "{msg}");
    // Inside the window is fine.
    c.register(node.register(0, T0 - 59_000)).await.unwrap();
    let (c0, _) = code(c.heartbeat(node.heartbeat(T0 - 120_000)).await);
    assert_eq!(c0, Code::FailedPrecondition);
    drop(c);
    served.stop().await;
}

#[tokio::test]
async fn malformed_and_oversized_requests_leave_the_service_serving() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let served = Served::start(&dir.path().join("r.db"), &clock).await;
    let mut c = served.client().await;
    let mut node = TestNode::new(7005);

    for payload in [
        Vec::new(),
        b"UNFED".to_vec(),
        vec![0xAB; 300],
        vec![0; 5000],
    ] {
        let req = SignedPayload {
            signature: node.key.sign(&payload).to_vec(),
            payload,
            manifest_json: String::new(),
        };
        let (c0, msg) = code(c.heartbeat(req.clone()).await);
        assert_eq!(c0, Code::InvalidArgument, "{msg}");
        assert!(msg.starts_with("malformed payload"), "{msg}");
        assert_eq!(code(c.register(req).await).0, Code::InvalidArgument);
    }
    // A truncated valid payload.
    let mut req = node.register(0, T0);
    req.payload.truncate(req.payload.len() - 3);
    let (c0, msg) = code(c.register(req).await);
    assert_eq!(c0, Code::InvalidArgument);
    assert!(msg.contains("truncated"), "{msg}");

    // Over the message limit: refused by the transport before any decoding.
    let mut huge = node.register(0, T0);
    huge.manifest_json = "x".repeat(MAX_REGISTRY_MESSAGE + 1);
    let (c0, msg) = code(c.register(huge).await);
    assert_eq!(c0, Code::OutOfRange, "{msg}");
    assert!(msg.contains("too large"), "{msg}");

    // Under the message limit but not a manifest (and not the signed hash).
    let mut junk = node.register(0, T0);
    junk.manifest_json = "{".repeat(1000);
    let (c0, msg) = code(c.register(junk).await);
    assert_eq!(c0, Code::InvalidArgument);
    assert!(msg.contains("SHA-256"), "{msg}");

    // Still serving, on the same connection.
    c.register(node.register(0, T0)).await.unwrap();
    c.heartbeat(node.heartbeat(T0)).await.unwrap();
    drop(c);
    served.stop().await;
}

#[tokio::test]
async fn restart_keeps_nodes_manifests_and_nonces() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("r.db");
    let clock = ManualClock::new(T0);
    let mut node = TestNode::new(7006);
    let reg = node.register(2, T0);
    let hb = node.heartbeat(T0 + 100);

    let served = Served::start(&db, &clock).await;
    let mut c = served.client().await;
    c.register(reg.clone()).await.unwrap();
    c.heartbeat(hb.clone()).await.unwrap();
    drop(c);
    served.stop().await;

    clock.advance_ms(1000);
    let served = Served::start(&db, &clock).await;
    let mut c = served.client().await;
    // The node, its shard and the manifest survived.
    let d = c
        .discover(DiscoverRequest {
            model_id: "tiny".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(d.nodes.len(), 1);
    assert_eq!(d.nodes[0].shard_index, 2);
    let m = c
        .get_manifest(GetManifestRequest {
            model_id: "tiny".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(m.manifest_json, manifest3());
    // The old nonces are still refused.
    assert_eq!(code(c.register(reg).await).0, Code::AlreadyExists);
    assert_eq!(code(c.heartbeat(hb).await).0, Code::AlreadyExists);
    // New requests work.
    c.heartbeat(node.heartbeat(T0 + 1000)).await.unwrap();
    drop(c);
    served.stop().await;
}

#[tokio::test]
async fn readiness_follows_healthy_shard_coverage() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let served = Served::start(&dir.path().join("r.db"), &clock).await;
    let mut c = served.client().await;
    let mut nodes: Vec<TestNode> = (0..3).map(|i| TestNode::new(7100 + i)).collect();

    let status = |reply: unfed_proto::registry::ListModelsReply| {
        assert_eq!(reply.models.len(), 1);
        let m = &reply.models[0];
        let counts: Vec<u32> = m.shards.iter().map(|s| s.healthy_nodes).collect();
        (m.status.clone(), counts)
    };

    c.register(nodes[0].register(0, T0)).await.unwrap();
    c.register(nodes[1].register(1, T0)).await.unwrap();
    let r = c
        .list_models(ListModelsRequest {})
        .await
        .unwrap()
        .into_inner();
    // Layer ranges come from the manifest: 4 layers in 3 shards, contiguous.
    let layers: Vec<(u32, u32)> = r.models[0]
        .shards
        .iter()
        .map(|s| (s.layer_start, s.layer_end))
        .collect();
    assert_eq!(layers.first().map(|l| l.0), Some(0));
    assert_eq!(layers.last().map(|l| l.1), Some(4));
    assert!(layers.windows(2).all(|w| w[0].1 == w[1].0));
    assert_eq!(status(r), ("INCOMPLETE".into(), vec![1, 1, 0]));

    c.register(nodes[2].register(2, T0)).await.unwrap();
    let r = c
        .list_models(ListModelsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status(r), ("READY".into(), vec![1, 1, 1]));

    // Shards 0 and 1 keep heartbeating; shard 2 goes silent. Healthy for 3 intervals (3 s).
    for step in 1..=4u64 {
        let t = T0 + step * 1000;
        clock.set_ms(t);
        for n in nodes.iter_mut().take(2) {
            c.heartbeat(n.heartbeat(t)).await.unwrap();
        }
    }
    let r = c
        .list_models(ListModelsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status(r), ("INCOMPLETE".into(), vec![1, 1, 0]));
    let d = c
        .discover(DiscoverRequest {
            model_id: "tiny".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let shards: Vec<u32> = d.nodes.iter().map(|n| n.shard_index).collect();
    assert_eq!(shards, vec![0, 1], "the silent node is not offered");

    // Its heartbeat is still accepted (it is registered, just unhealthy): READY again.
    let t = T0 + 4000;
    c.heartbeat(nodes[2].heartbeat(t)).await.unwrap();
    let r = c
        .list_models(ListModelsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status(r), ("READY".into(), vec![1, 1, 1]));
    drop(c);
    served.stop().await;
}

#[tokio::test]
async fn a_conflicting_manifest_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let served = Served::start(&dir.path().join("r.db"), &clock).await;
    let mut c = served.client().await;
    let mut a = TestNode::new(7201);
    let mut b = TestNode::new(7202);
    c.register(a.register(0, T0)).await.unwrap();

    let other = manifest2_conflicting();
    let p = b.register_payload("tiny", 0, other, T0);
    let (c0, msg) = code(c.register(b.sign(&p, other)).await);
    assert_eq!(c0, Code::FailedPrecondition, "{msg}");
    assert!(msg.contains("different manifest"), "{msg}");
    let m = c
        .get_manifest(GetManifestRequest {
            model_id: "tiny".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(m.manifest_json, manifest3(), "the first manifest stays");
    drop(c);
    served.stop().await;
}

#[tokio::test]
async fn shutdown_completes_while_a_client_stays_connected() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let served = Served::start(&dir.path().join("r.db"), &clock).await;
    let mut c = served.client().await;
    c.list_models(ListModelsRequest {}).await.unwrap();
    // The client keeps its connection open; stopping must not wait for it.
    tokio::time::timeout(std::time::Duration::from_secs(20), served.stop())
        .await
        .expect("the registry stops with an idle client connected");
    assert!(c.list_models(ListModelsRequest {}).await.is_err());
}
