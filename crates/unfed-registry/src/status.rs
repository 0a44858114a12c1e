//! The registry's queries: model status (READY when every shard has a healthy node), discovery
//! of healthy nodes, manifests. A node is healthy while its last heartbeat (or registration) is
//! at most `healthy_intervals` heartbeat intervals old. Nothing returned here is secret.

use unfed_identity::Address;

use crate::{RegistryCore, RegistryError};

/// At most this many nodes per shard are returned by discovery (most recent heartbeat first).
pub const MAX_DISCOVERED_PER_SHARD: usize = 64;

/// Whether a model can serve requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Readiness {
    /// Every shard has at least one healthy node.
    Ready,
    /// Some shard has no healthy node.
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
    /// Healthy nodes serving it.
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

/// A healthy node, as discovery shows it.
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
}

/// The healthy nodes of a model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Discovery {
    /// The model.
    pub model_id: String,
    /// Shards in its manifest.
    pub num_shards: u32,
    /// Healthy nodes by shard index, most recent heartbeat first within a shard.
    pub nodes: Vec<DiscoveredNode>,
}

impl RegistryCore {
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

    /// The healthy nodes of `model_id`, at most [`MAX_DISCOVERED_PER_SHARD`] per shard.
    pub fn discover(&self, model_id: &str) -> Result<Discovery, RegistryError> {
        let shards = self
            .models
            .get(model_id)
            .ok_or_else(|| RegistryError::UnknownModel(shorten(model_id)))?;
        let num_shards = shards.num_shards();
        let nodes = self
            .db
            .nodes_for_model(model_id, self.healthy_since_ms(), MAX_DISCOVERED_PER_SHARD)?
            .into_iter()
            // Rows always name a shard of their model's manifest; skip any that would not.
            .filter(|n| n.shard_index < num_shards)
            .map(|n| DiscoveredNode {
                identity: n.identity,
                address: n.address,
                shard_index: n.shard_index,
                last_heartbeat_ms: n.last_heartbeat_ms,
                onion_key: n.onion_key,
            })
            .collect();
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
