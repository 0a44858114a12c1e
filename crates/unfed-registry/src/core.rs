//! [`RegistryCore`]: the registry's logic over its database and a clock, free of networking.
//! Writes (register a node or a guard relay, heartbeat, unregister) authenticate a canonical
//! payload, bound its timestamp, refuse a reused nonce and check the manifest (and that a
//! node's MPC role fits it); queries live in `status.rs`.

use std::collections::BTreeMap;
use std::sync::Arc;

use unfed_db::{
    GuardRecord, ManifestRecord, NodeRecord, NonceRecord, RegisterOutcome, RegistryDb,
    RegistryLimit, UpdateOutcome,
};
use unfed_identity::canonical::{Payload, open_signed};

use crate::validate::{
    ModelShards, check_address, check_model_id, check_mpc_role, check_onion_key, manifest_digest,
    parse_manifest,
};
use crate::{Clock, ClusterConfig, ConfigError, RegistryError, RegistryOptions};

/// What a successful registration returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Registered {
    /// How often the node must heartbeat, in milliseconds.
    pub heartbeat_interval_ms: u64,
    /// First registration of this `(identity, address)` (false for a refresh).
    pub new: bool,
}

/// The registry: cluster policy, options, database, clock, and the shard layout of every known
/// model (loaded from the database at open, so a restart keeps it).
pub struct RegistryCore {
    pub(crate) config: ClusterConfig,
    pub(crate) options: RegistryOptions,
    pub(crate) db: RegistryDb,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) models: BTreeMap<String, ModelShards>,
}

impl std::fmt::Debug for RegistryCore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryCore")
            .field("cluster", &self.config.name)
            .field("options", &self.options)
            .field("db", &self.db)
            .field("models", &self.models.len())
            .finish_non_exhaustive()
    }
}

/// Why a registry could not start.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The config or the options are invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The database or a stored manifest is unusable.
    #[error(transparent)]
    Registry(#[from] RegistryError),
}

impl RegistryCore {
    /// A registry over `db`, after validating `config` and `options` and loading the stored
    /// manifests.
    pub fn new(
        config: ClusterConfig,
        options: RegistryOptions,
        db: RegistryDb,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, OpenError> {
        config.validate()?;
        options.validate()?;
        let mut models = BTreeMap::new();
        for m in db.manifests().map_err(RegistryError::from)? {
            let (_, shards) = parse_manifest(&m.json, m.sha256).map_err(|problem| {
                RegistryError::CorruptManifest {
                    model_id: m.model_id.clone(),
                    problem,
                }
            })?;
            models.insert(m.model_id, shards);
        }
        Ok(Self {
            config,
            options,
            db,
            clock,
            models,
        })
    }

    /// The cluster's policy.
    pub fn cluster(&self) -> &ClusterConfig {
        &self.config
    }

    /// The runtime options.
    pub fn options(&self) -> &RegistryOptions {
        &self.options
    }

    /// The database (read-only access, for inspection and tests).
    pub fn db(&self) -> &RegistryDb {
        &self.db
    }

    /// Admits a node: `payload` must be a canonical `Register` signed by its identity, and
    /// `manifest_json` the manifest whose SHA-256 it signs.
    pub fn register(
        &mut self,
        payload: &[u8],
        signature: &[u8],
        manifest_json: &str,
    ) -> Result<Registered, RegistryError> {
        let now = self.clock.now_ms();
        let r = match self.open(payload, signature, now)? {
            Payload::Register(r) => r,
            other => return Err(wrong_kind("Register", "register", &other)),
        };
        check_address(&r.address)?;
        check_model_id(&r.model_id)?;
        check_onion_key(&r.onion_key)?;
        let digest = manifest_digest(manifest_json)?;
        if digest != r.manifest_sha256 {
            return Err(RegistryError::BadManifest(format!(
                "its SHA-256 is {} but the signed payload says {}",
                hex::encode(digest),
                hex::encode(r.manifest_sha256)
            )));
        }
        let shards = match self.models.get(&r.model_id) {
            Some(known) if known.sha256 != digest => {
                return Err(RegistryError::ManifestConflict {
                    model_id: r.model_id,
                    existing: hex::encode(known.sha256),
                });
            }
            Some(known) => known.clone(),
            None => {
                let (manifest, shards) =
                    parse_manifest(manifest_json, digest).map_err(RegistryError::BadManifest)?;
                if manifest.model_id != r.model_id {
                    return Err(RegistryError::BadManifest(format!(
                        "it is the manifest of model {:?}, but the payload registers {:?}",
                        manifest.model_id, r.model_id
                    )));
                }
                shards
            }
        };
        if r.shard_index >= shards.num_shards() {
            return Err(RegistryError::InvalidField {
                field: "shard_index",
                problem: format!(
                    "model {} has {} shards (0 to {}); there is no shard {}",
                    r.model_id,
                    shards.num_shards(),
                    shards.num_shards() - 1,
                    r.shard_index
                ),
            });
        }
        check_mpc_role(r.identity, r.mpc, &r.model_id, r.shard_index, &shards)?;
        let nonce = NonceRecord {
            identity: r.identity,
            nonce: r.nonce,
            timestamp_ms: r.timestamp_ms,
        };
        let manifest = ManifestRecord {
            model_id: r.model_id.clone(),
            sha256: digest,
            json: manifest_json.to_owned(),
        };
        let node = NodeRecord {
            identity: r.identity,
            address: r.address,
            model_id: r.model_id.clone(),
            shard_index: r.shard_index,
            onion_key: r.onion_key,
            mpc: r.mpc,
            registered_at_ms: now,
            last_heartbeat_ms: now,
            active_sessions: 0,
        };
        let limits = self.options.register_limits();
        let outcome = self.db.register_node(&nonce, &manifest, &node, &limits)?;
        let new = registered(outcome, &nonce, Some(&r.model_id))?;
        self.models.entry(r.model_id).or_insert(shards);
        Ok(Registered {
            heartbeat_interval_ms: self.options.heartbeat_interval_ms(),
            new,
        })
    }

    /// Admits a guard relay: `payload` must be a canonical `RegisterGuard` signed by its
    /// identity. It then heartbeats and unregisters like a node.
    pub fn register_guard(
        &mut self,
        payload: &[u8],
        signature: &[u8],
    ) -> Result<Registered, RegistryError> {
        let now = self.clock.now_ms();
        let g = match self.open(payload, signature, now)? {
            Payload::RegisterGuard(g) => g,
            other => return Err(wrong_kind("RegisterGuard", "register guard", &other)),
        };
        check_address(&g.address)?;
        check_onion_key(&g.onion_key)?;
        let nonce = NonceRecord {
            identity: g.identity,
            nonce: g.nonce,
            timestamp_ms: g.timestamp_ms,
        };
        let guard = GuardRecord {
            identity: g.identity,
            address: g.address,
            onion_key: g.onion_key,
            registered_at_ms: now,
            last_heartbeat_ms: now,
            active_sessions: 0,
        };
        let limits = self.options.register_limits();
        let outcome = self.db.register_guard(&nonce, &guard, &limits)?;
        Ok(Registered {
            heartbeat_interval_ms: self.options.heartbeat_interval_ms(),
            new: registered(outcome, &nonce, None)?,
        })
    }

    /// Records a heartbeat of the signer's own node or guard at the address the payload names.
    pub fn heartbeat(&mut self, payload: &[u8], signature: &[u8]) -> Result<(), RegistryError> {
        let now = self.clock.now_ms();
        let h = match self.open(payload, signature, now)? {
            Payload::Heartbeat(h) => h,
            other => return Err(wrong_kind("Heartbeat", "heartbeat", &other)),
        };
        let nonce = NonceRecord {
            identity: h.identity,
            nonce: h.nonce,
            timestamp_ms: h.timestamp_ms,
        };
        let outcome = self
            .db
            .heartbeat(&nonce, &h.identity, &h.address, now, h.active_sessions)?;
        update_result(outcome, nonce, h.address)
    }

    /// Removes the signer's own node or guard at the address the payload names.
    pub fn unregister(&mut self, payload: &[u8], signature: &[u8]) -> Result<(), RegistryError> {
        let now = self.clock.now_ms();
        let u = match self.open(payload, signature, now)? {
            Payload::Unregister(u) => u,
            other => return Err(wrong_kind("Unregister", "unregister", &other)),
        };
        let nonce = NonceRecord {
            identity: u.identity,
            nonce: u.nonce,
            timestamp_ms: u.timestamp_ms,
        };
        let outcome = self.db.unregister(&nonce, &u.identity, &u.address, now)?;
        update_result(outcome, nonce, u.address)
    }

    /// Authenticates a payload, bounds its timestamp, and forgets nonces too old to matter,
    /// nodes silent for [`RegistryOptions::stale_after_ms`] and manifests left without nodes
    /// for as long.
    fn open(
        &mut self,
        payload: &[u8],
        signature: &[u8],
        now: u64,
    ) -> Result<Payload, RegistryError> {
        let p = open_signed(payload, signature).map_err(RegistryError::from_open)?;
        let skew = self.options.clock_skew_ms();
        if p.timestamp_ms().abs_diff(now) > skew {
            return Err(RegistryError::StaleTimestamp {
                timestamp_ms: p.timestamp_ms(),
                now_ms: now,
                skew_ms: skew,
            });
        }
        // Anything signed before `now - skew` is refused above, so its nonce can go.
        self.db.prune_nonces(now.saturating_sub(skew))?;
        let pruned = self
            .db
            .prune_stale(now.saturating_sub(self.options.stale_after_ms()), now)?;
        for model_id in &pruned.manifests {
            self.models.remove(model_id);
        }
        Ok(p)
    }
}

/// Whether a registration recorded a new row, or why it was refused (`model_id`: the model a
/// node registers for; None for a guard).
fn registered(
    outcome: RegisterOutcome,
    nonce: &NonceRecord,
    model_id: Option<&str>,
) -> Result<bool, RegistryError> {
    match outcome {
        RegisterOutcome::Registered { new } => Ok(new),
        RegisterOutcome::Replay => Err(RegistryError::Replay {
            identity: nonce.identity,
            nonce: nonce.nonce,
        }),
        RegisterOutcome::ManifestConflict { existing_sha256 } => {
            Err(RegistryError::ManifestConflict {
                model_id: model_id.unwrap_or_default().to_owned(),
                existing: hex::encode(existing_sha256),
            })
        }
        RegisterOutcome::LimitReached { limit, max } => Err(match limit {
            RegistryLimit::Models => RegistryError::TooManyModels {
                model_id: model_id.unwrap_or_default().to_owned(),
                max,
            },
            RegistryLimit::NodesPerIdentity => RegistryError::TooManyNodesForIdentity {
                identity: nonce.identity,
                max,
            },
            RegistryLimit::Nodes => RegistryError::TooManyNodes { max },
        }),
    }
}

fn update_result(
    outcome: UpdateOutcome,
    nonce: NonceRecord,
    address: String,
) -> Result<(), RegistryError> {
    match outcome {
        UpdateOutcome::Done => Ok(()),
        UpdateOutcome::Replay => Err(RegistryError::Replay {
            identity: nonce.identity,
            nonce: nonce.nonce,
        }),
        UpdateOutcome::NotRegistered => Err(RegistryError::NotRegistered {
            identity: nonce.identity,
            address,
        }),
    }
}

fn wrong_kind(call: &'static str, expected: &'static str, got: &Payload) -> RegistryError {
    RegistryError::WrongKind {
        call,
        expected,
        got: match got {
            Payload::Register(_) => "register",
            Payload::Heartbeat(_) => "heartbeat",
            Payload::Unregister(_) => "unregister",
            Payload::RegisterGuard(_) => "register guard",
        },
    }
}
