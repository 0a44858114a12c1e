//! Shared test fixtures: tiny split manifests, signing nodes, a manual clock, and a registry
//! served over real tonic on 127.0.0.1 port 0.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use sha2::{Digest, Sha256};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::Channel;
use unfed_db::RegistryDb;
use unfed_identity::canonical::{
    Heartbeat, Payload, Register, RegisterGuard, Unregister, sign_payload,
};
use unfed_identity::{MpcRole, NodeKey};
use unfed_proto::registry::SignedPayload;
use unfed_proto::registry::registry_client::RegistryClient;
use unfed_registry::{ClusterConfig, ManualClock, RegistryCore, RegistryOptions, serve};

/// Start of every test clock (2023-11-14).
pub const T0: u64 = 1_700_000_000_000;

/// The example cluster config shipped in the repository.
pub fn example_config_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/cluster.example.json")
}

pub fn config() -> ClusterConfig {
    ClusterConfig::load(&example_config_path()).expect("example config parses")
}

/// `manifest.json` of a tiny random model split into `num_shards`, model id `model_id`.
pub fn split_manifest(num_shards: usize, model_id: &str, seed: u64) -> String {
    split_manifest_with(num_shards, model_id, seed, None)
}

/// [`split_manifest`] with shard 0 on an MPC pair holding `mpc_layers` layers, if given.
pub fn split_manifest_with(
    num_shards: usize,
    model_id: &str,
    seed: u64,
    mpc_layers: Option<usize>,
) -> String {
    let dir = tempfile::tempdir().unwrap();
    let gguf = dir.path().join("tiny.gguf");
    let spec = unfed_model::testing::TinySpec {
        seed,
        n_layer: num_shards.max(4),
        ..Default::default()
    };
    unfed_model::testing::write_tiny_gguf(&gguf, &spec).unwrap();
    let out = dir.path().join("split");
    let opts = unfed_shard::SplitOptions {
        num_shards,
        model_id: Some(model_id.into()),
        force: false,
        mpc_layers,
    };
    unfed_shard::split(&gguf, &out, &opts).unwrap();
    std::fs::read_to_string(out.join(unfed_shard::MANIFEST_FILE)).unwrap()
}

/// The 3-shard manifest of model `tiny` (split once per test binary).
pub fn manifest3() -> &'static str {
    static M: OnceLock<String> = OnceLock::new();
    M.get_or_init(|| split_manifest(3, "tiny", 1))
}

/// A different (2-shard) manifest that also claims model `tiny`.
pub fn manifest2_conflicting() -> &'static str {
    static M: OnceLock<String> = OnceLock::new();
    M.get_or_init(|| split_manifest(2, "tiny", 1))
}

/// A 2-shard manifest of another model, `other`.
pub fn manifest_other() -> &'static str {
    static M: OnceLock<String> = OnceLock::new();
    M.get_or_init(|| split_manifest(2, "other", 2))
}

/// The 3-shard manifest of model `tiny-mpc`, whose shard 0 (one layer) runs as an MPC pair.
pub fn manifest_mpc() -> &'static str {
    static M: OnceLock<String> = OnceLock::new();
    M.get_or_init(|| split_manifest_with(3, "tiny-mpc", 5, Some(1)))
}

pub fn sha256(text: &str) -> [u8; 32] {
    Sha256::digest(text.as_bytes()).into()
}

/// A node: a key, an address, and a nonce counter.
pub struct TestNode {
    pub key: NodeKey,
    pub address: String,
    pub next_nonce: u64,
}

impl TestNode {
    pub fn new(port: u16) -> Self {
        Self {
            key: NodeKey::generate(),
            address: format!("127.0.0.1:{port}"),
            next_nonce: 1,
        }
    }

    pub fn nonce(&mut self) -> u64 {
        self.next_nonce += 1;
        self.next_nonce
    }

    pub fn register_payload(
        &mut self,
        model_id: &str,
        shard: u32,
        manifest: &str,
        ts: u64,
    ) -> Payload {
        self.register_payload_as(model_id, shard, manifest, MpcRole::None, ts)
    }

    /// A registration payload with MPC role `mpc`; the onion key is `[port byte; 32]`, so
    /// every test node has its own.
    pub fn register_payload_as(
        &mut self,
        model_id: &str,
        shard: u32,
        manifest: &str,
        mpc: MpcRole,
        ts: u64,
    ) -> Payload {
        Payload::Register(Register {
            identity: self.key.address(),
            address: self.address.clone(),
            model_id: model_id.into(),
            shard_index: shard,
            manifest_sha256: sha256(manifest),
            onion_key: self.onion_key(),
            mpc,
            timestamp_ms: ts,
            nonce: self.nonce(),
        })
    }

    /// The onion key this node registers.
    pub fn onion_key(&self) -> Vec<u8> {
        let port: u16 = self
            .address
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or(9);
        vec![port.to_be_bytes()[1]; 32]
    }

    /// A signed registration of shard `shard` of `tiny-mpc` ([`manifest_mpc`]) with role `mpc`.
    pub fn register_mpc(&mut self, shard: u32, mpc: MpcRole, ts: u64) -> SignedPayload {
        let p = self.register_payload_as("tiny-mpc", shard, manifest_mpc(), mpc, ts);
        self.sign(&p, manifest_mpc())
    }

    /// A signed shard-0 registration of `tiny-mpc` as party A of `b`.
    pub fn register_party_a(&mut self, b: &TestNode, ts: u64) -> SignedPayload {
        let peer = b.key.address();
        self.register_mpc(0, MpcRole::A { peer }, ts)
    }

    /// A signed shard-0 registration of `tiny-mpc` as party B of `a`.
    pub fn register_party_b(&mut self, a: &TestNode, ts: u64) -> SignedPayload {
        let peer = a.key.address();
        self.register_mpc(0, MpcRole::B { peer }, ts)
    }

    /// A signed registration of shard `shard` of `tiny` (3 shards) at time `ts`.
    pub fn register(&mut self, shard: u32, ts: u64) -> SignedPayload {
        let p = self.register_payload("tiny", shard, manifest3(), ts);
        self.sign(&p, manifest3())
    }

    /// A signed registration of this node's address as a guard relay at time `ts`.
    pub fn register_guard(&mut self, ts: u64) -> SignedPayload {
        let p = Payload::RegisterGuard(RegisterGuard {
            identity: self.key.address(),
            address: self.address.clone(),
            onion_key: self.onion_key(),
            timestamp_ms: ts,
            nonce: self.nonce(),
        });
        self.sign(&p, "")
    }

    pub fn heartbeat_payload(&mut self, ts: u64) -> Payload {
        Payload::Heartbeat(Heartbeat {
            identity: self.key.address(),
            address: self.address.clone(),
            active_sessions: 2,
            timestamp_ms: ts,
            nonce: self.nonce(),
        })
    }

    pub fn heartbeat(&mut self, ts: u64) -> SignedPayload {
        let p = self.heartbeat_payload(ts);
        self.sign(&p, "")
    }

    pub fn unregister_payload(&mut self, ts: u64) -> Payload {
        Payload::Unregister(Unregister {
            identity: self.key.address(),
            address: self.address.clone(),
            timestamp_ms: ts,
            nonce: self.nonce(),
        })
    }

    pub fn unregister(&mut self, ts: u64) -> SignedPayload {
        let p = self.unregister_payload(ts);
        self.sign(&p, "")
    }

    /// Signs with this node's key (which must be the payload's identity).
    pub fn sign(&self, p: &Payload, manifest: &str) -> SignedPayload {
        let (payload, signature) = sign_payload(&self.key, p).unwrap();
        SignedPayload {
            payload,
            signature: signature.to_vec(),
            manifest_json: manifest.into(),
        }
    }
}

/// Fast health checks for tests: 1 s heartbeats, healthy for 3 s, 60 s skew.
pub fn options() -> RegistryOptions {
    RegistryOptions {
        heartbeat_interval: std::time::Duration::from_secs(1),
        ..Default::default()
    }
}

/// A core over `db` with the example config, test options and `clock`.
pub fn core(db: RegistryDb, clock: &ManualClock) -> RegistryCore {
    RegistryCore::new(config(), options(), db, Arc::new(clock.clone())).unwrap()
}

/// A registry served on 127.0.0.1 port 0 until dropped or stopped.
pub struct Served {
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl Served {
    /// Serves a core over the database at `db_path` (created if missing).
    pub async fn start(db_path: &Path, clock: &ManualClock) -> Self {
        let core = core(RegistryDb::open(db_path).unwrap(), clock);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            serve(listener, None, core, async {
                let _ = stopped.await;
            })
            .await
            .unwrap();
        });
        Self {
            addr,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// A client with a sending limit larger than the server's receiving limit.
    pub async fn client(&self) -> RegistryClient<Channel> {
        RegistryClient::connect(format!("http://{}", self.addr))
            .await
            .unwrap()
            .max_encoding_message_size(64 << 20)
            .max_decoding_message_size(64 << 20)
    }

    /// Stops the server and waits until its database is closed.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.unwrap();
        }
    }
}
