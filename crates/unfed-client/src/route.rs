//! Choosing a route: one node per shard, healthy and fastest by a measured round trip, with the
//! other replicas kept as fallbacks.

use std::time::{Duration, Instant};

use unfed_onion::OnionPublicKey;
use unfed_proto::node::HealthRequest;
use unfed_proto::registry::NodeInfo;

use crate::{ClientError, Result};

/// How long a health probe may take before the node counts as unreachable.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// A node that serves a shard, with its measured round trip.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub address: String,
    pub shard_index: u32,
    /// The node's onion key from its signed registration.
    pub onion_key: OnionPublicKey,
    pub rtt: Duration,
}

/// One node per shard, in order.
#[derive(Debug, Clone)]
pub struct Route {
    pub hops: Vec<Candidate>,
}

/// Probes every discovered node (all at once) and groups the ones that answer for the right
/// shard with a free session slot by shard, fastest first.
pub async fn rank(model_id: &str, num_shards: u32, nodes: &[NodeInfo]) -> Vec<Vec<Candidate>> {
    let probes = nodes
        .iter()
        .filter(|n| n.shard_index < num_shards)
        .filter_map(|n| {
            // A node without a valid onion key cannot be part of a circuit.
            let key = <[u8; 32]>::try_from(n.onion_key.as_slice()).ok()?;
            Some((n, OnionPublicKey::from_bytes(key).ok()?))
        })
        .map(|(n, onion_key)| async move {
            let rtt = probe(&n.address, model_id, n.shard_index).await?;
            Some(Candidate {
                address: n.address.clone(),
                shard_index: n.shard_index,
                onion_key,
                rtt,
            })
        });
    let mut by_shard: Vec<Vec<Candidate>> = vec![Vec::new(); num_shards as usize];
    for c in futures::future::join_all(probes)
        .await
        .into_iter()
        .flatten()
    {
        by_shard[c.shard_index as usize].push(c);
    }
    for slot in &mut by_shard {
        slot.sort_by_key(|c| c.rtt);
    }
    by_shard
}

/// The fastest candidate of every shard that is not excluded.
pub fn pick_route(
    model: &str,
    candidates: &[Vec<Candidate>],
    excluded: &[String],
) -> Result<Route> {
    let hops = candidates
        .iter()
        .enumerate()
        .map(|(shard, slot)| {
            slot.iter()
                .find(|c| !excluded.contains(&c.address))
                .cloned()
                .ok_or(ClientError::NoRoute {
                    model: model.into(),
                    shard: shard as u32,
                })
        })
        .collect::<Result<Vec<_>>>()?;
    if hops.is_empty() {
        return Err(ClientError::NoRoute {
            model: model.into(),
            shard: 0,
        });
    }
    Ok(Route { hops })
}

/// Whether a node answers a health probe.
pub async fn alive(address: &str) -> bool {
    let attempt = async {
        let mut c = crate::node(address).await.ok()?;
        c.health(HealthRequest {}).await.ok()
    };
    tokio::time::timeout(PROBE_TIMEOUT, attempt)
        .await
        .ok()
        .flatten()
        .is_some()
}

/// The round trip of a health probe, if the node answers in time, serves `shard` of
/// `model_id` and has a free session slot.
async fn probe(address: &str, model_id: &str, shard: u32) -> Option<Duration> {
    let start = Instant::now();
    let attempt = async {
        let mut c = crate::node(address).await.ok()?;
        c.health(HealthRequest {}).await.ok()
    };
    let h = tokio::time::timeout(PROBE_TIMEOUT, attempt)
        .await
        .ok()
        .flatten()?
        .into_inner();
    let fits =
        h.model_id == model_id && h.shard_index == shard && h.active_sessions < h.max_sessions;
    fits.then(|| start.elapsed())
}
