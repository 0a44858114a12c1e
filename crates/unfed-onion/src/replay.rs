//! Replay protection for circuit setup: replay tags, a bounded cache that never forgets a tag
//! while its onion key is in use, and [`OnionHop`], which peels and checks in one step.
//!
//! Rule: a cache belongs to one onion key. It never evicts. When it is full, setups under that
//! key are refused ([`PeelError::ReplayCacheFull`]) until the hop rotates to a new key with a new
//! cache; the old key and its cache are retired together. So a tag is never forgotten while a
//! packet carrying it could still be accepted. [`ReplayCache::needs_rotation`] turns true at
//! three quarters of capacity so a node rotates (and republishes its key) before refusing.

use std::collections::HashSet;
use std::fmt;

use crate::error::PeelError;
use crate::header::{Peeled, peel};
use crate::keys::{OnionPublicKey, OnionSecretKey};

/// Bytes of a replay tag.
pub const REPLAY_TAG_LEN: usize = 32;

/// A setup packet's replay tag: HKDF-Expand(PRK, "unfed-onion v1 replay-tag"), a one-way function
/// of the hop's shared secret, so two packets with the same group element under the same key
/// have the same tag however the rest of the header was changed.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct ReplayTag(pub [u8; REPLAY_TAG_LEN]);

impl fmt::Debug for ReplayTag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ReplayTag(")?;
        for byte in &self.0[..4] {
            write!(f, "{byte:02x}")?;
        }
        write!(f, "…)")
    }
}

/// A set of seen replay tags with a fixed capacity that refuses, rather than forgets, when full.
#[derive(Clone)]
pub struct ReplayCache {
    seen: HashSet<ReplayTag>,
    capacity: usize,
}

impl ReplayCache {
    /// A reasonable capacity for one onion key's lifetime: 262 144 setups (about 12 MiB).
    pub const DEFAULT_CAPACITY: usize = 1 << 18;

    /// An empty cache holding at most `capacity` tags (at least 1).
    pub fn new(capacity: usize) -> Self {
        Self {
            seen: HashSet::new(),
            capacity: capacity.max(1),
        }
    }

    /// Record `tag`. Errors: [`PeelError::Replayed`] if it was seen before,
    /// [`PeelError::ReplayCacheFull`] if there is no room (the tag is then not recorded).
    pub fn check_and_insert(&mut self, tag: &ReplayTag) -> Result<(), PeelError> {
        if self.seen.contains(tag) {
            return Err(PeelError::Replayed);
        }
        if self.seen.len() >= self.capacity {
            return Err(PeelError::ReplayCacheFull {
                capacity: self.capacity,
            });
        }
        self.seen.insert(*tag);
        Ok(())
    }

    /// Whether `tag` was recorded.
    pub fn contains(&self, tag: &ReplayTag) -> bool {
        self.seen.contains(tag)
    }

    /// Tags recorded.
    pub fn len(&self) -> usize {
        self.seen.len()
    }

    /// Whether no tag is recorded.
    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }

    /// The fixed capacity.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// True once three quarters of the capacity is used: time to rotate the onion key.
    pub fn needs_rotation(&self) -> bool {
        self.seen.len() >= self.capacity - self.capacity / 4
    }
}

impl fmt::Debug for ReplayCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReplayCache")
            .field("len", &self.seen.len())
            .field("capacity", &self.capacity)
            .finish()
    }
}

/// A hop's onion key with its replay cache: what a node keeps per onion key.
#[derive(Debug)]
pub struct OnionHop {
    key: OnionSecretKey,
    cache: ReplayCache,
}

impl OnionHop {
    /// A hop using `key`, with a fresh cache of `capacity` tags.
    pub fn new(key: OnionSecretKey, capacity: usize) -> Self {
        Self {
            key,
            cache: ReplayCache::new(capacity),
        }
    }

    /// Peel `header` (see [`peel`]) and refuse it if its replay tag was seen under this key.
    /// The tag is recorded only after the MAC verified, so garbage cannot fill the cache.
    pub fn process(&mut self, header: &[u8]) -> Result<Peeled, PeelError> {
        let peeled = peel(&self.key, header)?;
        self.cache.check_and_insert(&peeled.replay_tag)?;
        Ok(peeled)
    }

    /// The public key clients must build for.
    pub fn public_key(&self) -> OnionPublicKey {
        self.key.public_key()
    }

    /// The replay cache (to watch [`ReplayCache::needs_rotation`]).
    pub fn cache(&self) -> &ReplayCache {
        &self.cache
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_duplicates_and_refuses_rather_than_forgets_when_full() {
        let mut cache = ReplayCache::new(4);
        for i in 0..3u8 {
            cache.check_and_insert(&ReplayTag([i; 32])).unwrap();
        }
        assert!(cache.needs_rotation());
        assert_eq!(
            cache.check_and_insert(&ReplayTag([1; 32])),
            Err(PeelError::Replayed)
        );
        cache.check_and_insert(&ReplayTag([3; 32])).unwrap();
        assert_eq!(
            cache.check_and_insert(&ReplayTag([9; 32])),
            Err(PeelError::ReplayCacheFull { capacity: 4 })
        );
        // Nothing was forgotten to make room.
        for i in 0..4u8 {
            assert!(cache.contains(&ReplayTag([i; 32])));
            assert_eq!(
                cache.check_and_insert(&ReplayTag([i; 32])),
                Err(PeelError::Replayed)
            );
        }
        assert!(!cache.contains(&ReplayTag([9; 32])));
    }

    #[test]
    fn rotation_threshold() {
        let mut cache = ReplayCache::new(8);
        for i in 0..5u8 {
            cache.check_and_insert(&ReplayTag([i; 32])).unwrap();
            assert!(!cache.needs_rotation());
        }
        cache.check_and_insert(&ReplayTag([5; 32])).unwrap();
        assert!(cache.needs_rotation());
        assert_eq!(ReplayCache::new(0).capacity(), 1);
    }
}
