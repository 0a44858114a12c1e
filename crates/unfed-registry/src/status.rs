//! The registry's queries: model status (READY when every shard has a healthy node), discovery
//! of healthy nodes, manifests. A node is healthy while its last heartbeat (or registration) is
//! at most `healthy_intervals` heartbeat intervals old. Shard 0 of a model whose manifest has an
//! `mpc` plan is served by healthy mutual pairs instead: a party A node whose named party B is
//! healthy on the same shard and names it back; discovery lists each such A once, with its B.
//! Guard relays are listed by the same health rule. Nothing returned here is secret.

use unfed_identity::Address;

use crate::{RegistryCore, RegistryError};

/// At most this many nodes per shard are returned by discovery (most recent heartbeat first).
pub const MAX_DISCOVERED_PER_SHARD: usize = 64;

/// At most this many guards are listed (most recent heartbeat first).
pub const MAX_LISTED_GUARDS: usize = 64;

/// The MPC shard: the one a manifest's `mpc` plan puts on shares.
const MPC_SHARD: u32 = 0;

/// Whether a model can serve requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Readiness {
    /// Every shard has at least one healthy node (for an MPC model's shard 0: a healthy
    /// mutual pair).
    Ready,
    /// Some shard has no healthy node (or pair).
    Incomplete,
}

impl Readiness {
    /// `"READY"` or `"INCOMPLETE"`, as on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ready => "READY",
            Self::Incomplete => "INCOMPLETE",
        }
    }
}

/// Coverage of one shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShardCoverage {
    /// The shard.
    pub shard_index: u32,
    /// First layer.
    pub layer_start: u32,
    /// One past the last layer.
    pub layer_end: u32,
    /// Healthy nodes serving it; for shard 0 of a model whose manifest has an `mpc` plan, the
    /// healthy mutual pairs.
    pub healthy_nodes: u32,
}

/// A model's status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelStatus {
    /// The model.
    pub model_id: String,
    /// READY or INCOMPLETE.
    pub readiness: Readiness,
    /// Every shard of its manifest, in order.
    pub shards: Vec<ShardCoverage>,
}

/// Party B of a discovered MPC pair: what party A and the client need to reach it through A.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PairPeer {
    /// B's identity.
    pub identity: Address,
    /// B's `host:port` (dialled by A only).
    pub address: String,
    /// B's X25519 onion key, as signed in its registration.
    pub onion_key: Vec<u8>,
}

/// A healthy node, as discovery shows it. On an MPC model's shard 0 it is party A of a healthy
/// mutual pair, and `pair` is its party B.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiscoveredNode {
    /// The node's identity.
    pub identity: Address,
    /// `host:port`.
    pub address: String,
    /// The shard it serves.
    pub shard_index: u32,
    /// Registry time of its last heartbeat, ms since the epoch.
    pub last_heartbeat_ms: u64,
    /// Its X25519 onion key, as signed in its registration.
    pub onion_key: Vec<u8>,
    /// Party B of its MPC pair: present exactly on the shard-0 entries of a model whose
    /// manifest has an `mpc` plan.
    pub pair: Option<PairPeer>,
}

/// The healthy nodes of a model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Discovery {
    /// The model.
    pub model_id: String,
    /// Shards in its manifest.
    pub num_shards: u32,
    /// Healthy nodes by shard index, most recent heartbeat first within a shard (for an MPC
    /// model's shard 0, the A node of each healthy mutual pair; B nodes are never listed alone).
    pub nodes: Vec<DiscoveredNode>,
}

impl RegistryCore {
    /// The healthy guard relays, at most [`MAX_LISTED_GUARDS`], most recent heartbeat first.
    pub fn guards(&self) -> Result<Vec<unfed_db::GuardRecord>, RegistryError> {
        Ok(self.db.guards(self.healthy_since_ms(), MAX_LISTED_GUARDS)?)
    }

    /// Oldest heartbeat time that still counts as healthy.
    fn healthy_since_ms(&self) -> u64 {
        self.clock
            .now_ms()
            .saturating_sub(self.options.health_window_ms())
    }

    /// Every known model with its readiness and per-shard healthy node counts, by model id.
    pub fn list_models(&self) -> Result<Vec<ModelStatus>, RegistryError> {
        let since = self.healthy_since_ms();
        let mut out = Vec::with_capacity(self.models.len());
        for (model_id, shards) in &self.models {
            let mut counts = vec![0u32; shards.layers.len()];
            for (shard, n) in self.db.node_counts_for_model(model_id, since)? {
                if let Some(c) = usize::try_from(shard).ok().and_then(|i| counts.get_mut(i)) {
                    *c = u32::try_from(n).unwrap_or(u32::MAX);
                }
            }
            if shards.mpc {
                // Party A and B rows are not servers on their own; only mutual pairs count.
                let pairs = self.db.mpc_pair_count(model_id, MPC_SHARD, since)?;
                if let Some(c) = counts.get_mut(MPC_SHARD as usize) {
                    *c = u32::try_from(pairs).unwrap_or(u32::MAX);
                }
            }
            let readiness = if counts.iter().all(|&c| c > 0) {
                Readiness::Ready
            } else {
                Readiness::Incomplete
            };
            let shards = shards
                .layers
                .iter()
                .zip(counts)
                .zip(0u32..)
                .map(
                    |(((layer_start, layer_end), healthy_nodes), shard_index)| ShardCoverage {
                        shard_index,
                        layer_start: *layer_start,
                        layer_end: *layer_end,
                        healthy_nodes,
                    },
                )
                .collect();
            out.push(ModelStatus {
                model_id: model_id.clone(),
                readiness,
                shards,
            });
        }
        Ok(out)
    }

    /// The healthy nodes of `model_id`, at most [`MAX_DISCOVERED_PER_SHARD`] per shard; for
    /// shard 0 of a model whose manifest has an `mpc` plan, the healthy mutual pairs (at most
    /// as many), each as its party A with [`DiscoveredNode::pair`] set to its party B.
    pub fn discover(&self, model_id: &str) -> Result<Discovery, RegistryError> {
        let shards = self
            .models
            .get(model_id)
            .ok_or_else(|| RegistryError::UnknownModel(shorten(model_id)))?;
        let num_shards = shards.num_shards();
        let since = self.healthy_since_ms();
        let mut nodes = Vec::new();
        if shards.mpc {
            let pairs = self
                .db
                .mpc_pairs(model_id, MPC_SHARD, since, MAX_DISCOVERED_PER_SHARD)?;
            nodes.extend(pairs.into_iter().map(|p| DiscoveredNode {
                identity: p.a.identity,
                address: p.a.address,
                shard_index: p.a.shard_index,
                last_heartbeat_ms: p.a.last_heartbeat_ms,
                onion_key: p.a.onion_key,
                pair: Some(PairPeer {
                    identity: p.b.identity,
                    address: p.b.address,
                    onion_key: p.b.onion_key,
                }),
            }));
        }
        let plain = self
            .db
            .nodes_for_model(model_id, since, MAX_DISCOVERED_PER_SHARD)?
            .into_iter()
            // Rows always name a shard of their model's manifest; skip any that would not.
            .filter(|n| n.shard_index < num_shards)
            // An MPC model's shard 0 is listed above, as pairs only.
            .filter(|n| !(shards.mpc && n.shard_index == MPC_SHARD))
            .map(|n| DiscoveredNode {
                identity: n.identity,
                address: n.address,
                shard_index: n.shard_index,
                last_heartbeat_ms: n.last_heartbeat_ms,
                onion_key: n.onion_key,
                pair: None,
            });
        nodes.extend(plain);
        Ok(Discovery {
            model_id: model_id.to_owned(),
            num_shards,
            nodes,
        })
    }

    /// The manifest text of `model_id`, exactly as its first node published it.
    pub fn manifest_json(&self, model_id: &str) -> Result<String, RegistryError> {
        if !self.models.contains_key(model_id) {
            return Err(RegistryError::UnknownModel(shorten(model_id)));
        }
        self.db
            .manifest(model_id)?
            .map(|m| m.json)
            .ok_or_else(|| RegistryError::UnknownModel(shorten(model_id)))
    }
}

/// At most 140 characters of a caller-supplied string, for messages.
fn shorten(s: &str) -> String {
    if s.chars().count() <= 140 {
        s.to_owned()
    } else {
        let mut head: String = s.chars().take(140).collect();
        head.push_str("...");
        head
    }
}
