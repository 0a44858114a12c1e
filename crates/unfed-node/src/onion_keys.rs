//! A hop's onion keys: the current one, which clients learn from the registry, and the one
//! before it for a grace period. Each key keeps the replay tag of every circuit set up with it;
//! when three quarters of the current key's cache is used, the hop rotates to a fresh key (and
//! registers it), so a flood of setups can never fill the cache and shut the hop out.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use tonic::Status;
use unfed_onion::{OnionPublicKey, OnionSecretKey, PeelError, Peeled, ReplayCache};

/// Circuit setups one onion key accepts (each leaves a 32-byte replay tag).
pub const REPLAY_CAPACITY: usize = ReplayCache::DEFAULT_CAPACITY;
/// How long the previous key still opens circuits after a rotation: clients that discovered
/// the hop before it may still build with it.
pub const GRACE: Duration = Duration::from_secs(600);

/// The keys and their replay caches.
pub struct OnionKeys {
    inner: Mutex<Keys>,
    capacity: usize,
}

struct Keys {
    current: Generation,
    previous: Option<(Generation, Instant)>,
}

struct Generation {
    key: OnionSecretKey,
    public: OnionPublicKey,
    replay: ReplayCache,
}

impl Generation {
    fn fresh(capacity: usize) -> Self {
        let key = OnionSecretKey::generate(&mut rand::rng());
        Self {
            public: key.public_key(),
            key,
            replay: ReplayCache::new(capacity),
        }
    }
}

impl OnionKeys {
    /// A fresh key per start: circuits set up before a restart cannot be replayed against it,
    /// so the replay caches need no persistence.
    pub fn generate() -> Self {
        Self::with_capacity(REPLAY_CAPACITY)
    }

    /// Keys whose caches hold `capacity` tags each (tests use small ones).
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            inner: Mutex::new(Keys {
                current: Generation::fresh(capacity),
                previous: None,
            }),
            capacity,
        }
    }

    /// The key clients should build circuits with now.
    pub fn public_key(&self) -> OnionPublicKey {
        self.lock().current.public
    }

    /// Peels this hop's layer of a circuit header with the current key or, within the grace
    /// period, the previous one, refusing replays. The X25519 work runs outside the lock.
    pub fn peel(&self, header: &[u8]) -> Result<Peeled, Status> {
        let refused =
            |e: PeelError| Status::invalid_argument(format!("circuit setup refused: {e}"));
        let (current, previous) = {
            let k = self.lock();
            let previous = k
                .previous
                .as_ref()
                .filter(|(_, since)| since.elapsed() < GRACE)
                .map(|(g, _)| (g.key.clone(), g.public));
            ((k.current.key.clone(), k.current.public), previous)
        };
        let (peeled, public) = match unfed_onion::peel(&current.0, header) {
            Ok(p) => (p, current.1),
            Err(PeelError::Mac) if previous.is_some() => {
                let (key, public) = previous.expect("checked");
                (unfed_onion::peel(&key, header).map_err(refused)?, public)
            }
            Err(e) => return Err(refused(e)),
        };
        let mut k = self.lock();
        let generation = if k.current.public == public {
            &mut k.current
        } else {
            match &mut k.previous {
                Some((g, _)) if g.public == public => g,
                // Rotated twice while we peeled: that key's grace is over.
                _ => return Err(refused(PeelError::Mac)),
            }
        };
        generation
            .replay
            .check_and_insert(&peeled.replay_tag)
            .map_err(refused)?;
        if k.current.replay.needs_rotation() {
            let old = std::mem::replace(&mut k.current, Generation::fresh(self.capacity));
            k.previous = Some((old, Instant::now()));
        }
        Ok(peeled)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Keys> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use unfed_onion::{HopPayload, RouteHop};

    fn header_for(key: OnionPublicKey) -> Vec<u8> {
        let hop = RouteHop {
            public_key: key,
            next_hop: Vec::new(),
            payload: HopPayload::default(),
        };
        unfed_onion::build(&mut rand::rng(), &[hop])
            .unwrap()
            .header
            .to_vec()
    }

    #[test]
    fn a_flood_of_setups_rotates_the_key_instead_of_shutting_the_hop_out() {
        let keys = OnionKeys::with_capacity(8);
        let first = keys.public_key();
        let early = header_for(first);
        keys.peel(&early).unwrap();
        // Built before the rotation, used after it: still accepted in the grace period.
        let late = header_for(first);
        for _ in 0..5 {
            keys.peel(&header_for(first)).unwrap();
        }
        let second = keys.public_key();
        assert_ne!(first, second, "six of eight tags used: rotated");
        keys.peel(&late).unwrap();
        let e = keys.peel(&early).unwrap_err();
        assert!(e.message().contains("replayed"), "{e:?}");
        // Far more setups than one cache holds all succeed.
        for _ in 0..40 {
            keys.peel(&header_for(keys.public_key())).unwrap();
        }
    }

    #[test]
    fn a_header_for_another_key_is_refused() {
        let keys = OnionKeys::with_capacity(8);
        let other = OnionSecretKey::generate(&mut rand::rng()).public_key();
        let e = keys.peel(&header_for(other)).unwrap_err();
        assert!(e.message().contains("MAC"), "{e:?}");
    }
}
