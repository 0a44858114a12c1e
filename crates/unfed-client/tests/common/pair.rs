//! Shard 0 as a real MPC pair on the network (shared by `pair.rs` and `pair_real.rs`): a
//! registry, party B, party A and two plain shards on loopback, shard 0 = embedding + K layers
//! on shares. The model is INCOMPLETE until the pair is registered; malformed streams to B are
//! refused (and raw streams with a ticket it never gave closed) and B keeps serving; the greedy tokens through the pair equal the plaintext path
//! (shard 0 exact, the rest as the nodes run them), with the last shard sampling and with the
//! client sampling; no node ever receives a token id; what each party recorded is there.

use std::time::Duration;

use candle_core::{Device, Tensor};
use unfed_model::{Checkpoint, Compute, Input, LogitsMode, SamplingParams, ShardModel, ShardRole};
use unfed_node::pair::{PairConfig, PairPeer, ViewFile, view};
use unfed_node::views::{Seen, ViewLog};
use unfed_proto::node::pair_client::PairClient;
use unfed_proto::node::{PairFrame, PairOpen, PairStep, pair_frame};

use super::{client_runtime, start_registry};

const K: usize = 1;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap()
}

/// Greedy tokens with shard 0 in plaintext on the exact reference path (what the pair
/// computes, up to its fixed-point error) and the other layers as the nodes run them.
fn plaintext(path: &std::path::Path, prompt: &[u32], n: usize) -> Vec<u32> {
    let ck = Checkpoint::open(path).unwrap();
    let cfg = ck.config().unwrap();
    let front = ShardRole {
        layers: 0..K,
        embedding: true,
        head: false,
    };
    let front = ShardModel::load_role_with(&ck, front, Compute::Reference).unwrap();
    let rest = ShardRole {
        layers: K..cfg.n_layer,
        embedding: false,
        head: true,
    };
    let rest = ShardModel::load_role(&ck, rest).unwrap();
    let (mut fc, mut rc) = (front.new_cache(), rest.new_cache());
    let mut next = prompt.to_vec();
    let mut out = Vec::new();
    for _ in 0..n {
        let h = front
            .forward(Input::Tokens(&next), &mut fc, LogitsMode::All)
            .unwrap();
        let h = Tensor::from_vec(
            h.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            (next.len(), cfg.hidden),
            &Device::Cpu,
        )
        .unwrap();
        let logits = rest
            .forward(Input::Hidden(&h), &mut rc, LogitsMode::Last)
            .unwrap();
        let logits = logits.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let t = (0..logits.len())
            .max_by(|&a, &b| logits[a].total_cmp(&logits[b]).then(b.cmp(&a)))
            .unwrap() as u32;
        out.push(t);
        next = vec![t];
    }
    out
}

/// Splits `model` with shard 0 on a pair, starts the network, generates `n` tokens three ways
/// and checks what every node and party saw.
pub fn through_the_pair(
    dir: &tempfile::TempDir,
    model: &std::path::Path,
    id: &str,
    prompt: &[u32],
    n: usize,
) {
    let shards = dir.path().join("shards");
    let opts = unfed_shard::SplitOptions {
        num_shards: 3,
        model_id: Some(id.into()),
        force: false,
        mpc_layers: Some(K),
    };
    unfed_shard::split(model, &shards, &opts).unwrap();
    let (_registry_rt, registry) = start_registry("127.0.0.1:0", &dir.path().join("r.db"), None);

    // A plain node cannot serve shard 0 of a model that requires the pair.
    let plain = node_config(
        &shards,
        0,
        "127.0.0.1:1",
        &registry,
        ViewLog::default(),
        None,
    );
    let e = runtime()
        .block_on(async {
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            unfed_node::run(plain, l, std::future::pending()).await
        })
        .unwrap_err()
        .to_string();
    assert!(e.contains("MPC pair"), "{e}");

    let mut logs = Vec::new();
    let mut runtimes = Vec::new();
    for shard in 1..3 {
        let (rt, listener, address) = bind("127.0.0.1");
        let log = ViewLog::default();
        logs.push(log.clone());
        let config = node_config(&shards, shard, &address, &registry, log, None);
        rt.spawn(async move { unfed_node::run(config, listener, std::future::pending()).await });
        runtimes.push(rt);
    }
    let (key_a, key_b) = (
        unfed_identity::NodeKey::generate(),
        unfed_identity::NodeKey::generate(),
    );
    let (id_a, id_b) = (key_a.address(), key_b.address());
    let (view_a, view_b) = (dir.path().join("a.view"), dir.path().join("b.view"));
    let (rt_b, listener_b, address_b) = bind("127.0.0.1");
    let (rt_a, listener_a, address_a) = bind("127.0.0.1");
    let config_b = PairConfig {
        shards_dir: shards.clone(),
        advertise: address_b.clone(),
        peer: address_a.clone(),
        peer_identity: id_a,
        registry: Some(registry.clone()),
        tls: None,
        dialer: unfed_proto::Dialer::default(),
        view: Some(ViewFile::create(&view_b).unwrap()),
        key: key_b,
        limits: unfed_node::SessionLimits::default(),
    };
    rt_b.spawn(async move {
        unfed_node::pair::run_b(config_b, listener_b, std::future::pending()).await
    });

    let crt = client_runtime();
    let mut client = crt
        .block_on(unfed_client::Client::connect(&registry))
        .unwrap();
    client.set_ignore_eos(true);
    // Shards 1 and 2 and party B alone: no pair yet.
    crt.block_on(async {
        let mut status = None;
        for _ in 0..1200 {
            let models = client.list_models().await.unwrap();
            status = models.into_iter().find(|m| m.model_id == id);
            if status.as_ref().is_some_and(|s| {
                s.shards
                    .iter()
                    .all(|c| c.shard_index == 0 || c.healthy_nodes > 0)
            }) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let status = status.expect("the model was never registered");
        assert_eq!(status.status, "INCOMPLETE", "{status:?}");
        // Malformed streams to B are refused with a clear error; B keeps serving.
        for (frame, want) in [
            (
                pair_frame::Kind::Step(PairStep::default()),
                "starts with an open",
            ),
            (
                pair_frame::Kind::Open(PairOpen {
                    model_id: id.into(),
                    onion: vec![7; 100],
                }),
                "refused",
            ),
        ] {
            let e = pair_error(&address_b, PairFrame { kind: Some(frame) }).await;
            assert!(e.contains(want), "{e}");
        }
        // A raw stream of rounds with a ticket B never gave is closed at once.
        let mut stray = unfed_proto::Dialer::default()
            .connect_raw(&address_b, &[9; 32], Duration::from_secs(5))
            .await
            .unwrap();
        let read = tokio::task::spawn_blocking(move || {
            std::io::Read::read(&mut stray, &mut [0u8; 8]).map_err(|e| e.kind())
        });
        assert!(matches!(
            read.await.unwrap(),
            Ok(0) | Err(std::io::ErrorKind::ConnectionReset)
        ));
    });

    let a_log = ViewLog::default();
    let pair = PairPeer {
        address: address_b.clone(),
        identity: id_b,
        view: Some(ViewFile::create(&view_a).unwrap()),
    };
    let mut config_a = node_config(&shards, 0, &address_a, &registry, a_log.clone(), Some(pair));
    config_a.key = key_a;
    rt_a.spawn(async move { unfed_node::run(config_a, listener_a, std::future::pending()).await });

    let tokens = crt.block_on(async {
        super::wait_ready_for(&mut client, id, 600).await;
        let remote = client.model(id).await.unwrap();
        assert!(remote.manifest.mpc.is_some());
        let greedy = SamplingParams::greedy();
        let out = client
            .generate(&remote, prompt, n, &greedy, &mut |_| true)
            .await
            .unwrap();
        // A second session on the same pair, the client sampling from the logits it gets
        // back (each sampled token reaches shard 0 only as shares).
        client.set_output_mode(unfed_client::OutputMode::ClientSample { top_k: 16 });
        let again = client
            .generate(&remote, prompt, 4, &greedy, &mut |_| true)
            .await
            .unwrap();
        assert_eq!(again, out[..4]);
        out
    });
    assert_eq!(tokens, plaintext(model, prompt, n));

    // No node received a token id: A got dealt shares, the others hidden states.
    for log in logs.iter().chain([&a_log]) {
        for seen in log.entries() {
            assert!(!matches!(seen, Seen::Tokens(_)), "a node saw token ids");
        }
    }
    assert!(
        a_log
            .entries()
            .iter()
            .all(|s| !matches!(s, Seen::Hidden(_)))
    );
    assert!(
        logs[0]
            .entries()
            .iter()
            .any(|s| matches!(s, Seen::Hidden(_)))
    );

    // Each party's record: what it was dealt and every round from the other, per step. Each
    // prompt went in at least two steps, the first deferred, then one step per generated token
    // but the last; A received a frame per step and, ahead of each of those decode steps, one
    // with its layers (n - 1 in the first session, 3 in the second).
    let frames = a_log
        .entries()
        .iter()
        .filter(|s| matches!(s, Seen::Frame(_)))
        .count();
    let steps = frames - (n - 1) - 3;
    assert!(steps > n + 4, "{steps} steps");
    for (path, labels) in [
        (&view_a, ["dealt", "peer", "output"]),
        (&view_b, ["dealt", "peer", "peer"]),
    ] {
        let records = view::read(path).unwrap();
        for label in labels {
            assert!(
                records.iter().any(|r| r.label == label),
                "{label} in {path:?}"
            );
        }
        let dealt = records.iter().filter(|r| r.label == "dealt").count();
        assert_eq!(dealt, steps, "{path:?}");
        // What the other party sent is masked: a token id or a value in the clear would be a
        // small ring element, a masked one is one with odds of 2^-40.
        let small = records
            .iter()
            .filter(|r| r.label != "dealt")
            .flat_map(|r| &r.words)
            .filter(|w| **w < 1 << 24)
            .count();
        assert_eq!(small, 0, "{path:?} holds small ring elements");
    }
    crt.block_on(b_refuses_common_words_a_altered(
        &mut client,
        id,
        &address_b,
    ));
    drop((rt_a, rt_b, runtimes));
}

/// Playing a party A that alters one of the common words it forwards (dealt once, to A, for
/// both parties): B refuses the step, since the client's sealed frame authenticates them.
async fn b_refuses_common_words_a_altered(client: &mut unfed_client::Client, id: &str, b: &str) {
    let b_key = client.candidates(id).await.unwrap()[0][0].pair.unwrap();
    let spec = client.model(id).await.unwrap().manifest.mpc_spec().unwrap();
    let mut dealer = unfed_client::pair::PairDealer::new(spec, b_key).unwrap();
    let step = dealer.deal(&[1]).unwrap().input;
    let channel = unfed_proto::Dialer::default().connect(b).await.unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel(2);
    let open = PairOpen {
        model_id: id.into(),
        onion: step.b_onion.to_vec(),
    };
    tx.send(PairFrame {
        kind: Some(pair_frame::Kind::Open(open)),
    })
    .await
    .unwrap();
    let mut replies = PairClient::new(channel)
        .max_encoding_message_size(unfed_proto::MAX_NODE_MESSAGE)
        .session(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let Some(pair_frame::Kind::Ticket(ticket)) = replies.message().await.unwrap().unwrap().kind
    else {
        panic!("party B answers an open stream with its ticket");
    };
    let _rounds = unfed_proto::Dialer::default()
        .connect_raw(b, ticket[..].try_into().unwrap(), Duration::from_secs(5))
        .await
        .unwrap();
    let mut layers_common = step.layers_common.to_vec();
    assert!(layers_common.len() > 8);
    layers_common[8] ^= 1;
    let altered = PairStep {
        sealed: step.for_b,
        input_common: step.input_common,
        layers_common: layers_common.into(),
    };
    tx.send(PairFrame {
        kind: Some(pair_frame::Kind::Step(altered)),
    })
    .await
    .unwrap();
    let e = replies.message().await.unwrap_err();
    assert!(e.message().contains("a step for party B refused"), "{e}");
}

/// Opens a stream to party B at `address`, sends `frame`, and returns the error B ends it with.
async fn pair_error(address: &str, frame: PairFrame) -> String {
    let channel = unfed_proto::Dialer::default()
        .connect(address)
        .await
        .unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tx.send(frame).await.unwrap();
    let mut replies = PairClient::new(channel)
        .session(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    match replies.message().await {
        Err(s) => s.message().to_string(),
        Ok(m) => panic!("party B answered a malformed stream with {m:?}"),
    }
}

fn bind(ip: &str) -> (tokio::runtime::Runtime, tokio::net::TcpListener, String) {
    let rt = runtime();
    let listener = rt.block_on(tokio::net::TcpListener::bind((ip, 0))).unwrap();
    let address = listener.local_addr().unwrap().to_string();
    (rt, listener, address)
}

fn node_config(
    shards: &std::path::Path,
    shard: u32,
    address: &str,
    registry: &str,
    log: ViewLog,
    pair: Option<PairPeer>,
) -> unfed_node::NodeConfig {
    unfed_node::NodeConfig {
        shards_dir: shards.to_path_buf(),
        shard_index: shard,
        advertise: address.into(),
        registry: Some(registry.into()),
        tls: None,
        dialer: unfed_proto::Dialer::default(),
        views: Some(log),
        key: unfed_identity::NodeKey::generate(),
        limits: unfed_node::SessionLimits::default(),
        pair,
    }
}
