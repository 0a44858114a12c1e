//! Choosing a guard relay from the registry's list and keeping it, as Tor does: a client that
//! picked a fresh guard for every generation would sooner or later pick one run by whoever
//! watches it, so it keeps a short ordered list of primary guards (in a state file, for
//! [`PRIMARY_GUARDS`] at most, each for [`GUARD_LIFETIME_MS`]) and uses the first one the
//! registry lists as healthy. Only when none of them is listed and the list has room does it
//! sample another; a full list of absent guards is an error rather than a reason to spread
//! over more relays.

use std::path::Path;

use rand::seq::IndexedRandom;
use serde::{Deserialize, Serialize};
use unfed_onion::OnionPublicKey;
use unfed_proto::registry::GuardInfo;

/// Guards a client keeps at once.
pub const PRIMARY_GUARDS: usize = 3;
/// How long a guard is kept after it was chosen: 60 days, in milliseconds.
pub const GUARD_LIFETIME_MS: u64 = 60 * 24 * 3600 * 1000;
/// Largest guard state file read.
const MAX_STATE_BYTES: u64 = 64 << 10;

/// A healthy guard as the registry lists it, with a valid onion key.
#[derive(Debug, Clone, PartialEq)]
pub struct ListedGuard {
    /// Its identity (`0x…`, lower case), as signed in its registration.
    pub identity: String,
    /// Where it serves.
    pub address: String,
    /// Its onion key, as signed in its registration.
    pub onion_key: OnionPublicKey,
}

/// The guards of the registry's list whose identity and onion key are well formed.
pub fn parse_listed(guards: &[GuardInfo]) -> Vec<ListedGuard> {
    guards
        .iter()
        .filter(|g| is_identity(&g.identity))
        .filter_map(|g| {
            let key = <[u8; 32]>::try_from(g.onion_key.as_slice()).ok()?;
            Some(ListedGuard {
                identity: g.identity.clone(),
                address: g.address.clone(),
                onion_key: OnionPublicKey::from_bytes(key).ok()?,
            })
        })
        .collect()
}

/// One kept guard.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeptGuard {
    /// Its identity, `0x…`.
    pub identity: String,
    /// When it was chosen, ms since the Unix epoch.
    pub chosen_at_ms: u64,
}

/// The primary guards, first preferred.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GuardState {
    pub guards: Vec<KeptGuard>,
}

/// Why no guard could be chosen.
#[derive(Debug, thiserror::Error)]
pub enum GuardChoiceError {
    #[error("the registry lists no healthy guard relay")]
    NoneListed,
    #[error(
        "none of this client's {PRIMARY_GUARDS} guards is listed as healthy; wait for one to \
         return, or remove {0} to choose new ones"
    )]
    AllAbsent(String),
    #[error("guard state {path}: {message}")]
    State { path: String, message: String },
}

impl GuardState {
    /// The state in `path`; an empty state if the file does not exist.
    pub fn load(path: &Path) -> Result<Self, GuardChoiceError> {
        let bad = |message: String| GuardChoiceError::State {
            path: path.display().to_string(),
            message,
        };
        let text = match std::fs::metadata(path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(e) => return Err(bad(e.to_string())),
            Ok(m) if m.len() > MAX_STATE_BYTES => {
                return Err(bad(format!("larger than {MAX_STATE_BYTES} bytes")));
            }
            Ok(_) => std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?,
        };
        let state: Self = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
        if state.guards.len() > PRIMARY_GUARDS
            || !state.guards.iter().all(|g| is_identity(&g.identity))
        {
            return Err(bad(format!(
                "expected at most {PRIMARY_GUARDS} guards, each with a 0x-prefixed identity"
            )));
        }
        Ok(state)
    }

    /// Writes the state to `path` (through a temporary file, so a crash leaves the old one).
    pub fn save(&self, path: &Path) -> Result<(), GuardChoiceError> {
        let bad = |e: std::io::Error| GuardChoiceError::State {
            path: path.display().to_string(),
            message: e.to_string(),
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(bad)?;
        }
        let tmp = path.with_extension("tmp");
        let text = serde_json::to_string_pretty(self).expect("the state serializes");
        std::fs::write(&tmp, text).map_err(bad)?;
        std::fs::rename(&tmp, path).map_err(bad)
    }

    /// The guard to use now among `listed`: the first kept guard that is listed; else, with
    /// room in the list, one sampled uniformly from the listed guards not kept (and kept from
    /// now on). Guards kept longer than [`GUARD_LIFETIME_MS`] are dropped first. Returns the
    /// guard and whether the state changed (and should be saved); `path` names the state in
    /// the error for a full list of absent guards.
    pub fn choose<'a>(
        &mut self,
        listed: &'a [ListedGuard],
        now_ms: u64,
        path: &Path,
    ) -> Result<(&'a ListedGuard, bool), GuardChoiceError> {
        let before = self.guards.len();
        self.guards
            .retain(|g| now_ms.saturating_sub(g.chosen_at_ms) < GUARD_LIFETIME_MS);
        let expired = self.guards.len() != before;
        let found = self
            .guards
            .iter()
            .find_map(|kept| listed.iter().find(|g| g.identity == kept.identity));
        if let Some(g) = found {
            return Ok((g, expired));
        }
        if listed.is_empty() {
            return Err(GuardChoiceError::NoneListed);
        }
        if self.guards.len() >= PRIMARY_GUARDS {
            return Err(GuardChoiceError::AllAbsent(path.display().to_string()));
        }
        let fresh: Vec<&ListedGuard> = listed
            .iter()
            .filter(|g| !self.guards.iter().any(|k| k.identity == g.identity))
            .collect();
        let g = *fresh
            .choose(&mut rand::rng())
            .expect("no listed guard is kept, so some are fresh");
        self.guards.push(KeptGuard {
            identity: g.identity.clone(),
            chosen_at_ms: now_ms,
        });
        Ok((g, true))
    }
}

/// `0x` and 40 lower-case hex digits.
fn is_identity(s: &str) -> bool {
    s.len() == 42
        && s.starts_with("0x")
        && s[2..]
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guard(i: u8) -> ListedGuard {
        ListedGuard {
            identity: format!("0x{}", hex::encode([i; 20])),
            address: format!("127.0.0.1:{}", 5000 + u16::from(i)),
            onion_key: unfed_onion::OnionSecretKey::generate(&mut rand::rng()).public_key(),
        }
    }

    const NOW: u64 = 1_800_000_000_000;

    #[test]
    fn a_kept_guard_is_used_again_and_a_returning_primary_is_preferred() {
        let path = Path::new("guard.json");
        let all = [guard(1), guard(2), guard(3)];
        let mut state = GuardState::default();
        let (first, changed) = state.choose(&all, NOW, path).unwrap();
        assert!(changed);
        let first = first.clone();
        // The same guard for every later generation, whatever else is listed.
        for _ in 0..20 {
            let (g, changed) = state.choose(&all, NOW + 1000, path).unwrap();
            assert_eq!((g, changed), (&first, false));
        }
        // It goes away: a second one is sampled and kept behind it...
        let others: Vec<ListedGuard> = all.iter().filter(|g| **g != first).cloned().collect();
        let (second, changed) = state.choose(&others, NOW + 2000, path).unwrap();
        assert!(changed && *second != first);
        assert_eq!(state.guards.len(), 2);
        // ...and it is preferred again once it is back.
        let (g, changed) = state.choose(&all, NOW + 3000, path).unwrap();
        assert_eq!((g, changed), (&first, false));
    }

    #[test]
    fn the_list_does_not_grow_past_its_cap_and_old_guards_expire() {
        let path = Path::new("/state/guard.json");
        let mut state = GuardState::default();
        for i in 1..=3 {
            let one = [guard(i)];
            let (g, _) = state.choose(&one, NOW, path).unwrap();
            assert_eq!(g.identity, one[0].identity);
        }
        // Three kept guards, all absent: refused, not a fourth.
        let err = state.choose(&[guard(4)], NOW, path).unwrap_err();
        assert!(err.to_string().contains("/state/guard.json"), "{err}");
        assert_eq!(state.guards.len(), 3);
        assert!(matches!(
            state.choose(&[], NOW, path),
            Err(GuardChoiceError::NoneListed)
        ));
        // Past their lifetime they go, and a new one is chosen.
        let later = NOW + GUARD_LIFETIME_MS;
        let fourth = [guard(4)];
        let (g, changed) = state.choose(&fourth, later, path).unwrap();
        assert_eq!((g, changed), (&fourth[0], true));
        assert_eq!(state.guards.len(), 1);
    }

    #[test]
    fn sampling_is_spread_over_the_listed_guards() {
        let all: Vec<ListedGuard> = (1..=4).map(guard).collect();
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..200 {
            let mut state = GuardState::default();
            let (g, _) = state.choose(&all, NOW, Path::new("g")).unwrap();
            seen.insert(g.identity.clone());
        }
        assert_eq!(seen.len(), 4);
    }

    #[test]
    fn state_files_round_trip_and_bad_ones_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/guard.json");
        assert_eq!(GuardState::load(&path).unwrap(), GuardState::default());
        let mut state = GuardState::default();
        state.choose(&[guard(7)], NOW, &path).unwrap();
        state.save(&path).unwrap();
        assert_eq!(GuardState::load(&path).unwrap(), state);
        for bad in [
            "not json",
            r#"{"guards": [], "extra": 1}"#,
            r#"{"guards": [{"identity": "nope", "chosen_at_ms": 1}]}"#,
        ] {
            std::fs::write(&path, bad).unwrap();
            let err = GuardState::load(&path).unwrap_err();
            assert!(err.to_string().contains("guard.json"), "{err}");
        }
    }

    #[test]
    fn listed_guards_with_bad_keys_or_identities_are_dropped() {
        let good = guard(1);
        let info = |identity: &str, key: Vec<u8>| GuardInfo {
            identity: identity.into(),
            address: "127.0.0.1:1".into(),
            onion_key: key,
            last_heartbeat_ms: 0,
        };
        let listed = parse_listed(&[
            info(&good.identity, good.onion_key.to_bytes().to_vec()),
            info(&good.identity, vec![1; 31]),
            info("0xABC", good.onion_key.to_bytes().to_vec()),
        ]);
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].identity, good.identity);
    }
}
