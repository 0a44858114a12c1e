//! Choosing a route: one node per shard among those the registry lists as healthy. The client
//! measures the round trip only to nodes it would connect to itself (the entry nodes, when it
//! does not use a guard): probing a later hop would tell that node the client's address, which
//! the circuit exists to hide. Later hops are taken in random order, so that no two clients'
//! choices are linked by a shared ranking.

use std::time::{Duration, Instant};

use rand::seq::SliceRandom;
use unfed_onion::OnionPublicKey;
use unfed_proto::Dialer;
use unfed_proto::node::HealthRequest;
use unfed_proto::registry::NodeInfo;

use crate::{ClientError, Result};

/// How long a health probe may take before the node counts as unreachable.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// A node that serves a shard.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub address: String,
    pub shard_index: u32,
    /// The node's onion key from its signed registration.
    pub onion_key: OnionPublicKey,
    /// The measured round trip, for nodes the client probed.
    pub rtt: Option<Duration>,
    /// For party A of a shard-0 MPC pair: party B's onion key (from B's signed registration).
    pub pair: Option<OnionPublicKey>,
}

/// One node per shard, in order.
#[derive(Debug, Clone)]
pub struct Route {
    pub hops: Vec<Candidate>,
}

/// Groups the discovered nodes with a valid onion key by shard. Entry nodes are probed (all at
/// once) when `probe_entry`, and kept only if they answer for the right shard with a free
/// session slot, fastest first; every other slot is in random order.
pub async fn rank(
    dialer: &Dialer,
    model_id: &str,
    num_shards: u32,
    nodes: &[NodeInfo],
    probe_entry: bool,
) -> Vec<Vec<Candidate>> {
    let mut by_shard: Vec<Vec<Candidate>> = vec![Vec::new(); num_shards as usize];
    for n in nodes.iter().filter(|n| n.shard_index < num_shards) {
        // A node without a valid onion key cannot be part of a circuit.
        let Some(onion_key) = parse_onion_key(&n.onion_key) else {
            continue;
        };
        let pair = match &n.pair {
            None => None,
            Some(p) => match parse_onion_key(&p.onion_key) {
                Some(key) => Some(key),
                // A pair whose B has no valid key cannot serve.
                None => continue,
            },
        };
        by_shard[n.shard_index as usize].push(Candidate {
            address: n.address.clone(),
            shard_index: n.shard_index,
            onion_key,
            rtt: None,
            pair,
        });
    }
    for slot in &mut by_shard {
        slot.shuffle(&mut rand::rng());
    }
    if probe_entry && let Some(entry) = by_shard.first_mut() {
        let probes = entry.drain(..).map(|mut c| async move {
            c.rtt = Some(probe(dialer, &c.address, model_id, 0).await?);
            Some(c)
        });
        *entry = futures::future::join_all(probes)
            .await
            .into_iter()
            .flatten()
            .collect();
        entry.sort_by_key(|c| c.rtt);
    }
    by_shard
}

/// A registered onion key, if it is a valid X25519 key.
fn parse_onion_key(bytes: &[u8]) -> Option<OnionPublicKey> {
    <[u8; 32]>::try_from(bytes)
        .ok()
        .and_then(|k| OnionPublicKey::from_bytes(k).ok())
}

/// For every shard, the first candidate that failed least often (`failed` lists the addresses
/// of the hops of every route that broke, once per break).
pub fn pick_route(model: &str, candidates: &[Vec<Candidate>], failed: &[String]) -> Result<Route> {
    let failures = |c: &Candidate| failed.iter().filter(|a| **a == c.address).count();
    let hops = candidates
        .iter()
        .enumerate()
        .map(|(shard, slot)| {
            slot.iter()
                .min_by_key(|c| failures(c))
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

/// The round trip of a health probe, if the node answers in time, serves `shard` of
/// `model_id` and has a free session slot.
async fn probe(dialer: &Dialer, address: &str, model_id: &str, shard: u32) -> Option<Duration> {
    let start = Instant::now();
    let attempt = async {
        let mut c = dialer.connect_node(address).await.ok()?;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn candidate(address: &str) -> Candidate {
        Candidate {
            address: address.into(),
            shard_index: 0,
            onion_key: unfed_onion::OnionSecretKey::generate(&mut rand::rng()).public_key(),
            rtt: None,
            pair: None,
        }
    }

    #[test]
    fn a_broken_route_moves_to_the_replicas_that_failed_least() {
        let slots = vec![
            vec![candidate("a0"), candidate("a1")],
            vec![candidate("b0")],
        ];
        let addrs = |r: Route| r.hops.into_iter().map(|h| h.address).collect::<Vec<_>>();
        assert_eq!(addrs(pick_route("m", &slots, &[]).unwrap()), ["a0", "b0"]);
        // Both hops of the broken route failed once: a1 replaces a0, b0 has no replica.
        let failed = ["a0".to_string(), "b0".to_string()];
        assert_eq!(
            addrs(pick_route("m", &slots, &failed).unwrap()),
            ["a1", "b0"]
        );
        let failed = ["a0", "b0", "a1", "b0", "a1"].map(String::from);
        assert_eq!(
            addrs(pick_route("m", &slots, &failed).unwrap()),
            ["a0", "b0"]
        );
        assert!(matches!(
            pick_route("m", &[vec![candidate("a0")], vec![]], &[]),
            Err(ClientError::NoRoute { shard: 1, .. })
        ));
    }
}
