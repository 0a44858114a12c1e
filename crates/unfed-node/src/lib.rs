//! A compute node: serves one shard of a split model. At start it checks its shard against the
//! manifest (bytes and verification vector), then serves per-session streams (each session's
//! steps on a thread of its own), registers with a registry and keeps heartbeating until shut
//! down.

pub mod circuit;
mod forward;
pub mod guard;
mod hop;
pub mod mpc_weights;
mod onion_keys;
pub mod pair;
mod registration;
mod relay;
mod service;
mod setup_limit;
mod tickets;
pub mod views;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;
use unfed_identity::{MpcRole, NodeKey};
use unfed_mpc::Role;
use unfed_proto::MAX_NODE_MESSAGE;
use unfed_proto::node::node_server::NodeServer;

pub use forward::{Forward, HeadOutput, Session, SessionLimits, StepInput, StepOutput};
pub use registration::{Announcement, HeartbeatError, Registration, Serves, ShardAnnouncement};
pub use service::{Compute, NodeService, NodeState};

/// What `run` loaded.
enum Loaded {
    Plain(Box<unfed_shard::VerifiedShard>),
    PartyA(pair::Party, String),
}

/// How long a call to the registry may take.
const REGISTRY_TIMEOUT: Duration = Duration::from_secs(5);
/// How long open sessions may keep a stopping node alive.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// What can stop a node.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(transparent)]
    Shard(#[from] Box<unfed_shard::ShardError>),
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("registry: {0}")]
    Registry(String),
    #[error("serving: {0}")]
    Serve(String),
    #[error(transparent)]
    Tls(#[from] unfed_proto::tls::TlsError),
    #[error("MPC pair: {0}")]
    Pair(String),
}

/// How to run a node.
pub struct NodeConfig {
    pub shards_dir: PathBuf,
    pub shard_index: u32,
    /// The address other nodes and clients use to reach this node: `https://host:port` when
    /// it serves TLS, `host:port` (loopback only) when not.
    pub advertise: String,
    /// The registry's address; None runs unregistered (tests, private pipelines).
    pub registry: Option<String>,
    /// This node's certificate (None: plaintext, loopback only).
    pub tls: Option<unfed_proto::tls::ServerTls>,
    /// How the registry and next hops are reached.
    pub dialer: unfed_proto::Dialer,
    /// Where to record what this node sees (an audit aid; None: nothing is recorded).
    pub views: Option<views::ViewLog>,
    pub key: NodeKey,
    pub limits: SessionLimits,
    /// Serve shard 0 as party A of an MPC pair with this party B (the manifest must ask for
    /// a pair; `unfed mpc --role a`).
    pub pair: Option<pair::PairPeer>,
}

/// Loads the shard (blocking work, off the async workers), then serves until `shutdown`.
pub async fn run(
    config: NodeConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), NodeError> {
    let local = listener
        .local_addr()
        .map_err(|e| NodeError::Serve(e.to_string()))?;
    unfed_proto::tls::check_exposure(local, Some(&config.advertise), config.tls.is_some())?;
    let dir = config.shards_dir.clone();
    let index = config.shard_index as usize;
    let pair = config.pair.clone();
    let max_positions = config.limits.max_positions;
    let (manifest, manifest_json, compute, tokenizer_json) =
        tokio::task::spawn_blocking(move || -> Result<_, NodeError> {
            let manifest = unfed_shard::read_manifest(&dir).map_err(Box::new)?;
            let manifest_json = manifest.to_json();
            pair::check_role(&manifest, index, pair.is_some())?;
            let compute = match pair {
                Some(p) => {
                    let party = pair::load_party(&dir, &manifest, Role::A, p.view, max_positions)?;
                    Loaded::PartyA(party, p.address)
                }
                None => Loaded::Plain(Box::new(
                    unfed_shard::load_verified_shard(&dir, &manifest, index).map_err(Box::new)?,
                )),
            };
            let tokenizer_json = read_tokenizer(&dir, &manifest)?;
            Ok((manifest, manifest_json, compute, tokenizer_json))
        })
        .await
        .map_err(|e| NodeError::Serve(e.to_string()))??;
    let max_streams = (2 * config.limits.max_sessions).min(u32::MAX as usize) as u32;
    let (hidden, compute) = match compute {
        Loaded::Plain(shard) => {
            let hidden = shard.model.config().hidden;
            let forward = forward::Forward::new(shard.model, config.limits.clone());
            (hidden, Compute::Plain(forward))
        }
        Loaded::PartyA(party, peer) => {
            let hidden = party.spec.layer.hidden;
            let a = pair::PartyA::new(Arc::new(party), peer, config.dialer.clone());
            (hidden, Compute::PartyA(Arc::new(a)))
        }
    };
    // The largest step a session may send: its whole position budget of hidden states, or for
    // party A a step's dealt material.
    let max_message = match compute {
        Compute::Plain(_) => config.limits.max_positions * hidden * 4 + (1 << 20),
        Compute::PartyA(_) => MAX_NODE_MESSAGE,
    }
    .min(MAX_NODE_MESSAGE);
    let state = Arc::new(
        NodeState::new(
            manifest.model_id.clone(),
            config.shard_index,
            manifest.shards.len() as u32,
            hidden,
            tokenizer_json,
            config.limits.clone(),
            compute,
        )
        .with_network(config.registry.clone(), config.dialer.clone())
        .with_views(config.views.clone())
        .with_vocab(manifest.config.vocab)
        .with_max_frame(max_message),
    );

    let registration = match &config.registry {
        Some(registry) => {
            let announcement = Announcement {
                advertise: config.advertise.clone(),
                onion_key: state.onion_public_key().to_bytes(),
                serves: Serves::Shard(ShardAnnouncement {
                    model_id: manifest.model_id.clone(),
                    shard_index: config.shard_index,
                    manifest_sha256: Sha256::digest(manifest_json.as_bytes()).into(),
                    manifest_json,
                    mpc: match &config.pair {
                        Some(p) => MpcRole::A { peer: p.identity },
                        None => MpcRole::None,
                    },
                }),
            };
            let reg = Registration::register(&config.dialer, registry, config.key, &announcement)
                .await
                .map_err(NodeError::Registry)?;
            Some((reg, announcement))
        }
        None => None,
    };
    // Shutdown stops the heartbeats (and unregisters) at once, then drains the server.
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let signal = tokio::spawn(async move {
        shutdown.await;
        let _ = stop.send(true);
    });
    let heartbeats = registration.map(|(reg, announcement)| {
        let (keys, load) = (state.clone(), state.clone());
        keep_registered(
            reg,
            announcement,
            move || keys.onion_public_key().to_bytes(),
            move || load.active_sessions() as u32,
            stopped.clone(),
        )
    });

    // One port for both: gRPC, and the raw streams previous hops send a session's frames on
    // (reads time out when a session is idle too long). Sockets have Nagle's algorithm off.
    let (incoming, raw) = unfed_proto::raw::split(
        listener,
        config.tls.as_ref(),
        config.limits.idle_timeout,
        None,
    )?;
    let attach = tickets::attach_all(state.tickets.clone(), raw);
    let server = tonic::transport::Server::builder()
        .max_concurrent_streams(Some(max_streams))
        .initial_stream_window_size(Some(unfed_proto::NODE_STREAM_WINDOW))
        .initial_connection_window_size(Some(unfed_proto::NODE_CONNECTION_WINDOW))
        .add_service(
            NodeServer::new(NodeService::new(state))
                .max_decoding_message_size(max_message)
                .max_encoding_message_size(MAX_NODE_MESSAGE),
        )
        .serve_with_incoming_shutdown(incoming, until_stopped(stopped.clone()));
    let served = drain(server, stopped).await;
    signal.abort();
    attach.abort();
    if let Some(h) = heartbeats {
        let _ = h.await;
    }
    served
}

/// Keeps a registration alive until `stopped`: a heartbeat every interval (registering again
/// if the registry forgot the node), a rotated onion key announced before the next heartbeat,
/// and a signed goodbye at the end.
pub(crate) fn keep_registered(
    mut reg: Registration,
    mut announcement: Announcement,
    onion_key: impl Fn() -> [u8; 32] + Send + 'static,
    active_sessions: impl Fn() -> u32 + Send + 'static,
    mut stopped: tokio::sync::watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(reg.heartbeat_interval) => {
                    // A rotated onion key is registered (signed) before the next heartbeat.
                    let key = onion_key();
                    if key != announcement.onion_key {
                        let old = std::mem::replace(&mut announcement.onion_key, key);
                        let sent = tokio::time::timeout(REGISTRY_TIMEOUT, reg.announce(&announcement)).await;
                        if !matches!(sent, Ok(Ok(()))) {
                            announcement.onion_key = old; // tried again next time
                        }
                    }
                    // A missed heartbeat is retried at the next interval; the registry marks
                    // the node unhealthy only after several.
                    let beat = reg.heartbeat(active_sessions());
                    if let Ok(Err(HeartbeatError::Forgotten)) = tokio::time::timeout(REGISTRY_TIMEOUT, beat).await {
                        let _ = tokio::time::timeout(REGISTRY_TIMEOUT, reg.announce(&announcement)).await;
                    }
                }
                _ = stopped.wait_for(|s| *s).map(|_| ()) => break,
            }
        }
        let _ = tokio::time::timeout(REGISTRY_TIMEOUT, reg.unregister()).await;
    })
}

/// Runs `server` (which stops accepting once `stopped`); open sessions get a short grace period
/// once shutdown begins, not forever.
pub(crate) async fn drain(
    server: impl Future<Output = Result<(), tonic::transport::Error>>,
    stopped: tokio::sync::watch::Receiver<bool>,
) -> Result<(), NodeError> {
    let drain_deadline = async {
        until_stopped(stopped).await;
        tokio::time::sleep(DRAIN_TIMEOUT).await;
    };
    tokio::select! {
        r = server => r.map_err(|e| NodeError::Serve(e.to_string())),
        _ = drain_deadline => Ok(()),
    }
}

pub(crate) async fn until_stopped(mut rx: tokio::sync::watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

fn read_tokenizer(
    dir: &std::path::Path,
    manifest: &unfed_shard::Manifest,
) -> Result<String, NodeError> {
    let path = unfed_shard::shard_file_path(dir, &manifest.tokenizer.file).map_err(Box::new)?;
    let text = std::fs::read_to_string(&path)
        .map_err(|e| NodeError::Tokenizer(format!("{}: {e}", path.display())))?;
    if hex::encode(Sha256::digest(text.as_bytes())) != manifest.tokenizer.sha256 {
        return Err(NodeError::Tokenizer(format!(
            "{} does not match the manifest's SHA-256",
            path.display()
        )));
    }
    Ok(text)
}
