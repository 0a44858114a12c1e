//! The test network: a registry, compute nodes for a tiny generated model split in shards, each
//! on a runtime of its own on 127.0.0.1 port 0, with or without TLS (certificates from a CA made
//! for the test), and the single-process engine's answer to compare with.
#![allow(dead_code)] // each test file uses part of it

pub mod pair;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use unfed_client::Client;
use unfed_engine::{Event, GenerateRequest, Pipeline, generate};
use unfed_model::testing::{TinySpec, write_tiny_gguf};
use unfed_model::{Checkpoint, SamplingParams, ShardModel, TextTokenizer};
use unfed_node::views::ViewLog;
use unfed_proto::Dialer;
use unfed_proto::tls::{ServerTls, TestnetCa};

pub const PROMPT: &[u32] = &[72, 101, 108, 108, 111, 44, 32, 119];
pub const MAX_TOKENS: usize = 24;

pub struct Net {
    pub _dir: tempfile::TempDir,
    pub model: PathBuf,
    /// The registry's address (`https://` with TLS).
    pub registry: String,
    /// Each node runs on a runtime of its own, so that dropping it kills the node abruptly.
    pub nodes: Arc<Mutex<HashMap<String, (u32, tokio::runtime::Runtime)>>>,
    pub registry_rt: Option<tokio::runtime::Runtime>,
    /// How to reach the network (trusting the test CA when it has TLS).
    pub dialer: Dialer,
    /// The CA that issued the network's certificates.
    pub ca: Option<Arc<TestnetCa>>,
    /// What each node saw: its address, shard and record.
    pub views: Vec<(String, u32, ViewLog)>,
    /// Each node's identity key (hex), in the order of `views`.
    pub keys: Vec<String>,
}

impl Net {
    /// A client of the network's registry.
    pub async fn client(&self) -> Client {
        Client::connect_with(&self.registry, self.dialer.clone())
            .await
            .unwrap()
    }

    /// A certificate for `ip` from the network's CA (None without TLS).
    pub fn cert(&self, ip: &str) -> Option<ServerTls> {
        self.ca.as_ref().map(|ca| cert_for(ca, ip))
    }

    /// `host:port` as the network's services advertise it.
    pub fn address(&self, host_port: &str) -> String {
        advertised(self.ca.is_some(), host_port)
    }
}

fn advertised(tls: bool, host_port: &str) -> String {
    if tls {
        format!("{}{host_port}", unfed_proto::tls::TLS_SCHEME)
    } else {
        host_port.to_string()
    }
}

fn cert_for(ca: &TestnetCa, ip: &str) -> ServerTls {
    let (cert, key) = ca.issue(&[ip], 1).unwrap();
    ServerTls::from_pem(cert.as_bytes(), key.as_bytes()).unwrap()
}

/// A plaintext network with `replicas[i]` nodes for shard i.
pub fn start(replicas: &[usize]) -> Net {
    start_with(replicas, false)
}

/// A network with `replicas[i]` nodes for shard i, every service on TLS when `tls`. Each node
/// has a loopback address of its own (127.0.0.11, .12, ...), listens and connects from it, and
/// records what it sees.
pub fn start_with(replicas: &[usize], tls: bool) -> Net {
    let ca = tls.then(|| Arc::new(TestnetCa::generate("test CA", 1).unwrap()));
    let dialer = match &ca {
        Some(ca) => Dialer::trusting(ca.cert_pem().as_bytes(), "the test CA").unwrap(),
        None => Dialer::default(),
    };
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
        mpc_layers: None,
    };
    unfed_shard::split(&model, &shards, &opts).unwrap();

    let (registry_rt, registry) = start_registry(
        "127.0.0.1:0",
        &dir.path().join("registry.db"),
        ca.as_deref().map(|ca| cert_for(ca, "127.0.0.1")),
    );

    let nodes = Arc::new(Mutex::new(HashMap::new()));
    let (mut views, mut keys) = (Vec::new(), Vec::new());
    for (shard, &n) in replicas.iter().enumerate() {
        for _ in 0..n {
            let ip = format!("127.0.0.{}", 11 + views.len());
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .unwrap();
            let listener = rt
                .block_on(tokio::net::TcpListener::bind((ip.as_str(), 0)))
                .unwrap();
            let address = advertised(tls, &listener.local_addr().unwrap().to_string());
            let log = ViewLog::default();
            views.push((address.clone(), shard as u32, log.clone()));
            keys.push(hex::encode(rand::random::<[u8; 32]>()));
            let config = unfed_node::NodeConfig {
                shards_dir: shards.clone(),
                shard_index: shard as u32,
                advertise: address.clone(),
                registry: Some(registry.clone()),
                tls: ca.as_deref().map(|ca| cert_for(ca, &ip)),
                dialer: dialer.clone().from_ip(ip.parse().unwrap()),
                views: Some(log),
                key: unfed_identity::NodeKey::from_hex(&keys[keys.len() - 1]).unwrap(),
                limits: unfed_node::SessionLimits::default(),
                pair: None,
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
        dialer,
        ca,
        views,
        keys,
    }
}

/// A registry on its own runtime, listening on `addr` (`host:port`), over the database at `db`;
/// returns its address as clients use it.
pub fn start_registry(
    addr: &str,
    db: &Path,
    tls: Option<ServerTls>,
) -> (tokio::runtime::Runtime, String) {
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
    let registry = advertised(tls.is_some(), &listener.local_addr().unwrap().to_string());
    let config = unfed_registry::ClusterConfig::from_json(include_str!(
        "../../../../configs/cluster.example.json"
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
    rt.spawn(async move {
        unfed_registry::serve(listener, tls.as_ref(), core, std::future::pending()).await
    });
    (rt, registry)
}

/// What the single-process engine generates for the prompt.
pub fn reference(model: &Path) -> Vec<u32> {
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
pub async fn greedy(client: &mut Client, model: &unfed_client::RemoteModel) -> Vec<u32> {
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

pub async fn wait_ready(client: &mut Client) {
    wait_ready_for(client, "tiny", 200).await
}

/// Waits until `id` is READY, polling every 50 ms at most `polls` times.
pub async fn wait_ready_for(client: &mut Client, id: &str, polls: usize) {
    for _ in 0..polls {
        let models = client.list_models().await.unwrap();
        if models
            .iter()
            .any(|m| m.model_id == id && m.status == "READY")
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the model never became READY");
}

/// Runs the client side on a runtime of its own; the network is built and torn down outside it.
pub fn client_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}
