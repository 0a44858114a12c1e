//! A whole network in one test process on 127.0.0.1 port 0: a registry, compute nodes for a
//! tiny generated model split in 3 shards, and the client — checked against the single-process
//! engine, including a node killed in the middle of a generation.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use unfed_client::Client;
use unfed_engine::{Event, GenerateRequest, Pipeline, generate};
use unfed_model::testing::{TinySpec, write_tiny_gguf};
use unfed_model::{Checkpoint, SamplingParams, ShardModel, TextTokenizer};
use unfed_proto::node::HealthRequest;
use unfed_proto::node::node_client::NodeClient;

const PROMPT: &[u32] = &[72, 101, 108, 108, 111, 44, 32, 119];
const MAX_TOKENS: usize = 24;

struct Net {
    _dir: tempfile::TempDir,
    model: PathBuf,
    registry: String,
    /// Each node runs on a runtime of its own, so that dropping it kills the node abruptly.
    nodes: Arc<Mutex<HashMap<String, (u32, tokio::runtime::Runtime)>>>,
    registry_rt: Option<tokio::runtime::Runtime>,
}

fn start(replicas: &[usize]) -> Net {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("tiny.gguf");
    write_tiny_gguf(
        &model,
        &TinySpec {
            n_layer: 6,
            ..TinySpec::default()
        },
    )
    .unwrap();
    let shards = dir.path().join("shards");
    let opts = unfed_shard::SplitOptions {
        num_shards: replicas.len(),
        model_id: Some("tiny".into()),
        force: false,
    };
    unfed_shard::split(&model, &shards, &opts).unwrap();

    let (registry_rt, registry) = start_registry("127.0.0.1:0", &dir.path().join("registry.db"));

    let nodes = Arc::new(Mutex::new(HashMap::new()));
    for (shard, &n) in replicas.iter().enumerate() {
        for _ in 0..n {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .unwrap();
            let listener = rt
                .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
                .unwrap();
            let address = listener.local_addr().unwrap().to_string();
            let config = unfed_node::NodeConfig {
                shards_dir: shards.clone(),
                shard_index: shard as u32,
                advertise: address.clone(),
                registry: Some(registry.clone()),
                key: unfed_identity::NodeKey::generate(),
                limits: unfed_node::SessionLimits::default(),
            };
            rt.spawn(async move {
                unfed_node::run(config, listener, std::future::pending())
                    .await
                    .unwrap()
            });
            nodes.lock().unwrap().insert(address, (shard as u32, rt));
        }
    }
    Net {
        _dir: dir,
        model,
        registry,
        nodes,
        registry_rt: Some(registry_rt),
    }
}

/// A registry on its own runtime, listening on `addr`, over the database at `db`.
fn start_registry(addr: &str, db: &Path) -> (tokio::runtime::Runtime, String) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    // A registry that just died may hold its port a moment longer.
    let listener = (0..100)
        .find_map(|_| {
            rt.block_on(tokio::net::TcpListener::bind(addr))
                .inspect_err(|_| std::thread::sleep(Duration::from_millis(50)))
                .ok()
        })
        .expect("the registry's address never became free");
    let registry = listener.local_addr().unwrap().to_string();
    let config = unfed_registry::ClusterConfig::from_json(include_str!(
        "../../../configs/cluster.example.json"
    ))
    .unwrap();
    let options = unfed_registry::RegistryOptions {
        heartbeat_interval: Duration::from_millis(200),
        ..Default::default()
    };
    let db = unfed_db::RegistryDb::open(db).unwrap();
    let core = unfed_registry::RegistryCore::new(
        config,
        options,
        db,
        Arc::new(unfed_registry::SystemClock),
    )
    .unwrap();
    rt.spawn(unfed_registry::serve(
        listener,
        core,
        std::future::pending(),
    ));
    (rt, registry)
}

/// What the single-process engine generates for the prompt.
fn reference(model: &Path) -> Vec<u32> {
    let ck = Checkpoint::open(model).unwrap();
    let tok = TextTokenizer::from_metadata(ck.metadata()).unwrap();
    let pipeline = Pipeline::new(vec![ShardModel::load(&ck).unwrap()]).unwrap();
    let req = GenerateRequest {
        prompt_ids: PROMPT.to_vec(),
        max_tokens: MAX_TOKENS,
        sampling: SamplingParams::greedy(),
        ignore_eos: false,
    };
    let mut ids = Vec::new();
    generate(&pipeline, &tok, &req, &mut |e| {
        if let Event::Token { id, .. } = e {
            ids.push(id);
        }
        true
    })
    .unwrap();
    ids
}

/// A greedy generation of the test prompt through the network.
async fn greedy(client: &mut Client, model: &unfed_client::RemoteModel) -> Vec<u32> {
    client
        .generate(
            model,
            PROMPT,
            MAX_TOKENS,
            &SamplingParams::greedy(),
            &mut |_| true,
        )
        .await
        .unwrap()
}

async fn wait_ready(client: &mut Client) {
    for _ in 0..200 {
        let models = client.list_models().await.unwrap();
        if models
            .iter()
            .any(|m| m.model_id == "tiny" && m.status == "READY")
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the model never became READY");
}

/// Runs the client side on a runtime of its own; the network is built and torn down outside it.
fn client_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn a_network_generates_what_the_engine_generates() {
    let net = start(&[1, 1, 1]);
    let expected = reference(&net.model);
    client_runtime().block_on(network_generates(&net, expected));
}

async fn network_generates(net: &Net, expected: Vec<u32>) {
    assert!(expected.len() > 4);
    let mut client = Client::connect(&net.registry).await.unwrap();
    wait_ready(&mut client).await;
    let models = client.list_models().await.unwrap();
    assert_eq!(models[0].shards.len(), 3);
    let model = client.model("tiny").await.unwrap();
    let got = greedy(&mut client, &model).await;
    assert_eq!(got, expected);
    // Several sessions at once.
    let mut handles = Vec::new();
    for _ in 0..3 {
        let registry = net.registry.clone();
        handles.push(tokio::spawn(async move {
            let mut c = Client::connect(&registry).await.unwrap();
            let m = c.model("tiny").await.unwrap();
            greedy(&mut c, &m).await
        }));
    }
    for h in handles {
        assert_eq!(h.await.unwrap(), expected);
    }
}

#[test]
fn a_generation_through_a_guard_relay_generates_the_same() {
    let net = start(&[1, 1, 1]);
    let expected = reference(&net.model);
    let rt = client_runtime();
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let guard = listener.local_addr().unwrap().to_string();
    let config = unfed_node::guard::GuardConfig {
        registry: Some(net.registry.clone()),
        max_sessions: 4,
        idle_timeout: Duration::from_secs(30),
    };
    rt.spawn(unfed_node::guard::serve(
        config,
        listener,
        std::future::pending(),
    ));
    rt.block_on(async {
        let mut client = Client::connect(&net.registry).await.unwrap();
        wait_ready(&mut client).await;
        let model = client.model("tiny").await.unwrap();
        client.use_guard(&guard).await.unwrap();
        assert_eq!(greedy(&mut client, &model).await, expected);
        // A guard relays only to a node the registry lists for shard 0.
        use unfed_proto::node::guard_client::GuardClient;
        use unfed_proto::node::{OnionKeyRequest, Open, SessionRequest, session_request};
        let mut g = GuardClient::new(unfed_proto::connect(&guard).await.unwrap());
        let key = g
            .onion_key(OnionKeyRequest {})
            .await
            .unwrap()
            .into_inner()
            .onion_key;
        let key = unfed_onion::OnionPublicKey::from_bytes(key.try_into().unwrap()).unwrap();
        let shard1 = client.candidates("tiny").await.unwrap()[1][0].clone();
        let route = unfed_client::Route { hops: vec![shard1] };
        let circuit =
            unfed_client::ClientCircuit::build(&route, Some(key), &SamplingParams::greedy())
                .unwrap();
        let open = SessionRequest {
            kind: Some(session_request::Kind::Open(Open {
                model_id: "tiny".into(),
                shard_index: 0,
                onion: circuit.header(),
            })),
        };
        let mut replies = g
            .session(tokio_stream::iter(vec![open]))
            .await
            .unwrap()
            .into_inner();
        let err = replies.message().await.unwrap_err();
        assert!(
            err.message()
                .contains("not a node the registry lists for shard 0"),
            "{err:?}"
        );
        // A client told of a guard that is not there says so.
        let err = client.use_guard("127.0.0.1:9").await.unwrap_err();
        assert!(err.to_string().contains("cannot reach"), "{err}");
    });
}

#[test]
fn killing_a_node_mid_generation_resumes_on_its_replica() {
    let net = start(&[1, 2, 1]);
    let expected = reference(&net.model);
    client_runtime().block_on(failover(&net, expected));
}

async fn failover(net: &Net, expected: Vec<u32>) {
    let mut client = Client::connect(&net.registry).await.unwrap();
    wait_ready(&mut client).await;
    let model = client.model("tiny").await.unwrap();

    // A watcher kills whichever shard-1 replica holds the session once 5 tokens have arrived.
    let seen = Arc::new(AtomicUsize::new(0));
    let killed: Arc<Mutex<Option<String>>> = Arc::new(Mutex::new(None));
    let replicas: Vec<String> = net
        .nodes
        .lock()
        .unwrap()
        .iter()
        .filter(|(_, (s, _))| *s == 1)
        .map(|(a, _)| a.clone())
        .collect();
    let watcher = {
        let (seen, killed, nodes) = (seen.clone(), killed.clone(), net.nodes.clone());
        tokio::spawn(async move {
            while seen.load(Ordering::SeqCst) < 5 {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            for addr in replicas {
                let mut c = NodeClient::connect(format!("http://{addr}")).await.unwrap();
                if c.health(HealthRequest {})
                    .await
                    .unwrap()
                    .into_inner()
                    .active_sessions
                    > 0
                {
                    let (_, rt) = nodes.lock().unwrap().remove(&addr).unwrap();
                    rt.shutdown_background();
                    *killed.lock().unwrap() = Some(addr);
                    return;
                }
            }
        })
    };
    let mut on_token = |_: u32| {
        if seen.fetch_add(1, Ordering::SeqCst) + 1 == 5 {
            // Hold the generation here until the watcher has killed the node.
            for _ in 0..200 {
                if killed.lock().unwrap().is_some() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        true
    };
    let got = client
        .generate(
            &model,
            PROMPT,
            MAX_TOKENS,
            &SamplingParams::greedy(),
            &mut on_token,
        )
        .await
        .unwrap();
    watcher.await.unwrap();
    assert!(
        killed.lock().unwrap().is_some(),
        "the watcher found no replica holding the session"
    );
    assert_eq!(
        got, expected,
        "the resumed generation differs from an undisturbed one"
    );
}

#[test]
fn malformed_and_oversized_messages_get_clear_errors_and_the_node_keeps_serving() {
    use tokio_stream::wrappers::ReceiverStream;
    use unfed_client::{ClientCircuit, Route};
    use unfed_proto::node::{Hidden, Open, SessionRequest, Tokens, session_request, step};

    let net = start(&[1, 1, 1]);
    let expected = reference(&net.model);
    client_runtime().block_on(async {
        let mut client = Client::connect(&net.registry).await.unwrap();
        wait_ready(&mut client).await;
        let candidates = client.candidates("tiny").await.unwrap();
        let (hop1, hop2) = (candidates[1][0].clone(), candidates[2][0].clone());
        // Sends a sequence of messages to shard 1 on a fresh session stream; returns the first
        // error.
        let session = |msgs: Vec<SessionRequest>| {
            let addr = hop1.address.clone();
            async move {
                let mut c = NodeClient::connect(format!("http://{addr}"))
                    .await
                    .unwrap()
                    .max_encoding_message_size(usize::MAX)
                    .max_decoding_message_size(usize::MAX);
                let (tx, rx) = tokio::sync::mpsc::channel(8);
                for m in msgs {
                    tx.send(m).await.unwrap();
                }
                drop(tx);
                let mut replies = match c.session(ReceiverStream::new(rx)).await {
                    Ok(r) => r.into_inner(),
                    Err(s) => return s,
                };
                loop {
                    match replies.message().await {
                        Ok(Some(_)) => continue,
                        Ok(None) => panic!("the node accepted a bad session"),
                        Err(s) => return s,
                    }
                }
            }
        };
        let open = |shard: u32, onion: Vec<u8>| SessionRequest {
            kind: Some(session_request::Kind::Open(Open {
                model_id: "tiny".into(),
                shard_index: shard,
                onion,
            })),
        };
        let frame = |f: Vec<u8>| SessionRequest {
            kind: Some(session_request::Kind::Frame(f)),
        };
        // A circuit that starts at shard 1 (as shard 0 would build it for us).
        let circuit = |hops: Vec<unfed_client::Candidate>| {
            ClientCircuit::build(&Route { hops }, None, &SamplingParams::greedy()).unwrap()
        };
        let sub_route = vec![hop1.clone(), hop2.clone()];

        let s = session(vec![frame(vec![1, 2, 3])]).await;
        assert!(s.message().contains("starts with an Open"), "{s:?}");
        let s = session(vec![open(0, circuit(sub_route.clone()).header())]).await;
        assert!(s.message().contains("serves shard 1"), "{s:?}");
        let s = session(vec![open(1, vec![7; 100])]).await;
        assert!(s.message().contains("circuit setup refused"), "{s:?}");
        let mut tampered = circuit(sub_route.clone()).header();
        tampered[700] ^= 1;
        let s = session(vec![open(1, tampered)]).await;
        assert!(s.message().contains("circuit setup refused"), "{s:?}");
        // A header built for someone else's key does not open here.
        let s = session(vec![open(1, circuit(vec![hop2.clone()]).header())]).await;
        assert!(s.message().contains("circuit setup refused"), "{s:?}");
        // A circuit whose header says shard 1 is the last hop.
        let s = session(vec![open(1, circuit(vec![hop1.clone()]).header())]).await;
        assert!(s.message().contains("needs a next hop"), "{s:?}");
        // A relay connects only to a node the registry lists for the next shard.
        let mut stranger = hop2.clone();
        stranger.address = "127.0.0.1:9".into();
        let s = session(vec![open(
            1,
            circuit(vec![hop1.clone(), stranger]).header(),
        )])
        .await;
        assert!(
            s.message().contains("not a node the registry lists"),
            "{s:?}"
        );
        // Replaying a setup header is refused, even after its first use ended.
        let once = circuit(sub_route.clone()).header();
        let s = session(vec![open(1, once.clone()), frame(vec![0; 40])]).await;
        assert!(s.message().contains("step frame refused"), "{s:?}");
        let s = session(vec![open(1, once)]).await;
        assert!(s.message().contains("replay"), "{s:?}");

        let hidden = |rows: u32, cols: u32, bytes: usize| {
            step::Input::Hidden(Hidden {
                rows,
                cols,
                data: vec![0; bytes],
            })
        };
        let bad_step = |input: step::Input| {
            let mut c = circuit(sub_route.clone());
            let header = c.header();
            let f = c.frame(input, vec![]).unwrap();
            vec![open(1, header), frame(f)]
        };
        let s = session(bad_step(hidden(2, 7, 56))).await;
        assert!(s.message().contains("expected n x 64"), "{s:?}");
        let s = session(bad_step(hidden(2, 64, 12))).await;
        assert!(s.message().contains("do not hold"), "{s:?}");
        let s = session(bad_step(step::Input::Tokens(Tokens { ids: vec![1] }))).await;
        assert!(s.message().contains("takes hidden states"), "{s:?}");
        let s = session(vec![
            open(1, circuit(sub_route.clone()).header()),
            frame(vec![0; unfed_proto::MAX_NODE_MESSAGE + 1]),
        ])
        .await;
        assert_eq!(s.code(), tonic::Code::OutOfRange, "{s:?}");

        // Still serving.
        let model = client.model("tiny").await.unwrap();
        let got = greedy(&mut client, &model).await;
        assert_eq!(got, expected);
    });
}

#[test]
fn nodes_register_again_with_a_registry_that_lost_its_database() {
    let mut net = start(&[1, 1, 1]);
    let rt = client_runtime();
    rt.block_on(async {
        let mut client = Client::connect(&net.registry).await.unwrap();
        wait_ready(&mut client).await;
    });
    // The registry dies and comes back on the same address with an empty database.
    net.registry_rt.take().unwrap().shutdown_background();
    let fresh = net._dir.path().join("fresh.db");
    let (registry_rt, _) = start_registry(&net.registry, &fresh);
    net.registry_rt = Some(registry_rt);
    rt.block_on(async {
        let mut client = Client::connect(&net.registry).await.unwrap();
        wait_ready(&mut client).await;
    });
}
