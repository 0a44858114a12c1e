//! A limit on circuit setups per peer address. Each setup costs a hop two X25519 operations and
//! a replay-cache entry before it knows anything about the peer, so one address may start only
//! so many: a token bucket per IP, refilled at a steady rate, checked before the onion layer is
//! peeled. A guard relaying for many clients is one peer to its entry node, so the budget is
//! generous; a flood from one address is refused with `RESOURCE_EXHAUSTED` and costs nothing.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Instant;

/// Setups one address may start at once.
pub const BURST: f64 = 64.0;
/// Setups per second one address regains.
pub const PER_SECOND: f64 = 32.0;
/// Addresses remembered at once; past it, the ones whose bucket is full again are forgotten.
const MAX_PEERS: usize = 8192;

/// Token buckets per peer address.
#[derive(Default)]
pub struct SetupLimit {
    buckets: Mutex<HashMap<IpAddr, (f64, Instant)>>,
}

impl SetupLimit {
    /// Whether `peer` may start a setup at `now` (taking one token if so).
    pub fn allow(&self, peer: IpAddr, now: Instant) -> bool {
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if buckets.len() >= MAX_PEERS && !buckets.contains_key(&peer) {
            buckets.retain(|_, b| refilled(*b, now) < BURST);
            if buckets.len() >= MAX_PEERS {
                // Every remembered address is busy: forget them all rather than refuse a
                // newcomer (an attacker with many addresses must not lock others out).
                buckets.clear();
            }
        }
        let bucket = buckets.entry(peer).or_insert((BURST, now));
        let tokens = refilled(*bucket, now);
        if tokens < 1.0 {
            *bucket = (tokens, now);
            return false;
        }
        *bucket = (tokens - 1.0, now);
        true
    }
}

fn refilled((tokens, at): (f64, Instant), now: Instant) -> f64 {
    let elapsed = now.saturating_duration_since(at).as_secs_f64();
    (tokens + elapsed * PER_SECOND).min(BURST)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_burst_then_the_steady_rate_and_other_peers_are_unaffected() {
        let limit = SetupLimit::default();
        let (a, b): (IpAddr, IpAddr) = ("192.0.2.1".parse().unwrap(), "192.0.2.2".parse().unwrap());
        let t0 = Instant::now();
        let allowed = (0..100).filter(|_| limit.allow(a, t0)).count();
        assert_eq!(allowed, BURST as usize);
        assert!(limit.allow(b, t0), "another address has its own budget");
        // A second later the address has regained PER_SECOND setups, no more.
        let t1 = t0 + Duration::from_secs(1);
        let allowed = (0..100).filter(|_| limit.allow(a, t1)).count();
        assert_eq!(allowed, PER_SECOND as usize);
    }

    #[test]
    fn many_addresses_never_lock_a_newcomer_out() {
        let limit = SetupLimit::default();
        let t0 = Instant::now();
        for i in 0..(MAX_PEERS as u32 + 10) {
            let ip = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            for _ in 0..BURST as usize {
                limit.allow(ip, t0);
            }
        }
        assert!(limit.allow("198.51.100.7".parse().unwrap(), t0));
        assert!(limit.buckets.lock().unwrap().len() <= MAX_PEERS);
    }
}
