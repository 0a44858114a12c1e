//! A node's (or guard relay's) relationship with its registry: a signed registration, signed
//! heartbeats at the interval the registry asks for, and a signed goodbye on shutdown.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tonic::transport::Channel;
use unfed_identity::canonical::{Heartbeat, Payload, Register, RegisterGuard, Unregister};
use unfed_identity::{MpcRole, NodeKey};
use unfed_proto::registry::SignedPayload;
use unfed_proto::registry::registry_client::RegistryClient;

/// What a node or guard tells the registry about itself.
pub struct Announcement {
    pub advertise: String,
    /// The public onion key (X25519), signed with the rest.
    pub onion_key: [u8; 32],
    /// A shard of a model, or guard relaying.
    pub serves: Serves,
}

/// What an announced service does.
pub enum Serves {
    /// One shard of a model.
    Shard(ShardAnnouncement),
    /// Guard relaying (`unfed guard`): circuits from clients to entry nodes.
    Guard,
}

/// The shard a node serves.
pub struct ShardAnnouncement {
    pub model_id: String,
    pub shard_index: u32,
    pub manifest_json: String,
    pub manifest_sha256: [u8; 32],
    /// Its part in shard 0's two-party MPC pair, signed with the rest: [`MpcRole::None`] for a
    /// plain node; party A or B (naming the other party's identity) on shard 0 of a model whose
    /// manifest has an `mpc` plan, where the registry refuses a plain node.
    pub mpc: MpcRole,
}

/// Why a heartbeat failed.
#[derive(Debug)]
pub enum HeartbeatError {
    /// The registry no longer knows the node (its database was reset): register again.
    Forgotten,
    Other(String),
}

/// A registered node's link to its registry.
pub struct Registration {
    client: RegistryClient<Channel>,
    key: NodeKey,
    advertise: String,
    pub heartbeat_interval: Duration,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn signed(key: &NodeKey, payload: &Payload, manifest_json: String) -> SignedPayload {
    let payload = payload.encode();
    let signature = key.sign(&payload).to_vec();
    SignedPayload {
        payload,
        signature,
        manifest_json,
    }
}

impl Registration {
    /// Registers with the registry at `registry`, reached through `dialer`.
    pub async fn register(
        dialer: &unfed_proto::Dialer,
        registry: &str,
        key: NodeKey,
        a: &Announcement,
    ) -> Result<Self, String> {
        let client = dialer.connect_registry(registry).await?;
        let mut reg = Self {
            client,
            key,
            advertise: a.advertise.clone(),
            heartbeat_interval: Duration::from_secs(5),
        };
        reg.announce(a).await?;
        Ok(reg)
    }

    /// Sends a signed registration (again, if the registry has forgotten the node).
    pub async fn announce(&mut self, a: &Announcement) -> Result<(), String> {
        let (identity, timestamp_ms, nonce) = (self.key.address(), now_ms(), rand::random());
        let reply = match &a.serves {
            Serves::Shard(s) => {
                let payload = Payload::Register(Register {
                    identity,
                    address: a.advertise.clone(),
                    model_id: s.model_id.clone(),
                    shard_index: s.shard_index,
                    manifest_sha256: s.manifest_sha256,
                    onion_key: a.onion_key.to_vec(),
                    mpc: s.mpc,
                    timestamp_ms,
                    nonce,
                });
                let request = signed(&self.key, &payload, s.manifest_json.clone());
                self.client.register(request).await
            }
            Serves::Guard => {
                let payload = Payload::RegisterGuard(RegisterGuard {
                    identity,
                    address: a.advertise.clone(),
                    onion_key: a.onion_key.to_vec(),
                    timestamp_ms,
                    nonce,
                });
                let request = signed(&self.key, &payload, String::new());
                self.client.register_guard(request).await
            }
        };
        let reply = reply
            .map_err(|s| format!("the registry refused the registration: {}", s.message()))?
            .into_inner();
        self.heartbeat_interval =
            Duration::from_millis(reply.heartbeat_interval_ms.clamp(100, 60_000));
        Ok(())
    }

    /// One signed heartbeat.
    pub async fn heartbeat(&mut self, active_sessions: u32) -> Result<(), HeartbeatError> {
        let payload = Payload::Heartbeat(Heartbeat {
            identity: self.key.address(),
            address: self.advertise.clone(),
            active_sessions,
            timestamp_ms: now_ms(),
            nonce: rand::random(),
        });
        self.client
            .heartbeat(signed(&self.key, &payload, String::new()))
            .await
            .map(|_| ())
            .map_err(|s| match s.code() {
                tonic::Code::NotFound => HeartbeatError::Forgotten,
                _ => HeartbeatError::Other(s.message().to_string()),
            })
    }

    /// Signs off.
    pub async fn unregister(mut self) -> Result<(), String> {
        let payload = Payload::Unregister(Unregister {
            identity: self.key.address(),
            address: self.advertise.clone(),
            timestamp_ms: now_ms(),
            nonce: rand::random(),
        });
        self.client
            .unregister(signed(&self.key, &payload, String::new()))
            .await
            .map(|_| ())
            .map_err(|s| format!("unregister refused: {}", s.message()))
    }
}
