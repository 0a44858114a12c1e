//! Choosing a route: one node per shard, healthy and fastest by a measured round trip, with the
//! other replicas kept as fallbacks.

use std::time::{Duration, Instant};

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
    pub rtt: Duration,
}

/// One node per shard, in order.
#[derive(Debug, Clone)]
pub struct Route {
    pub hops: Vec<Candidate>,
}

/// Probes every discovered node and groups the reachable ones by shard, fastest first.
pub async fn rank(num_shards: u32, nodes: &[NodeInfo]) -> Vec<Vec<Candidate>> {
    let mut by_shard: Vec<Vec<Candidate>> = vec![Vec::new(); num_shards as usize];
    for n in nodes {
        let Some(slot) = by_shard.get_mut(n.shard_index as usize) else {
            continue;
        };
        if let Some(rtt) = probe(&n.address).await {
            slot.push(Candidate {
                address: n.address.clone(),
                shard_index: n.shard_index,
                rtt,
            });
        }
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
    probe(address).await.is_some()
}

async fn probe(address: &str) -> Option<Duration> {
    let start = Instant::now();
    let attempt = async {
        let mut c = crate::node(address).await.ok()?;
        c.health(HealthRequest {}).await.ok()
    };
    tokio::time::timeout(PROBE_TIMEOUT, attempt)
        .await
        .ok()
        .flatten()
        .map(|_| start.elapsed())
}
