//! Checks on what nodes send: `host:port` addresses, model ids, onion keys, MPC roles and
//! manifests.

use sha2::{Digest, Sha256};
use unfed_identity::{Address, MpcRole};
use unfed_shard::Manifest;

use crate::RegistryError;

/// Longest manifest accepted with a registration: it must also fit, with framing, in the
/// `GetManifest` reply under [`unfed_proto::MAX_REGISTRY_MESSAGE`].
pub const MAX_MANIFEST_JSON: usize = unfed_proto::MAX_REGISTRY_MESSAGE - 4096;
/// Longest model id (the same rule as `unfed model split --model-id`).
pub const MAX_MODEL_ID_CHARS: usize = 128;
/// Length of an X25519 public key.
pub const ONION_KEY_LEN: usize = 32;

/// A model's shard layout, as the registry needs it for status and discovery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelShards {
    /// SHA-256 of the manifest text.
    pub sha256: [u8; 32],
    /// One `(layer_start, layer_end)` per shard, in shard order (end exclusive).
    pub layers: Vec<(u32, u32)>,
    /// Shard 0 runs as a two-party MPC pair (the manifest has an `mpc` plan): it is served by
    /// pairs of a party A and a party B node, never by a plain node.
    pub mpc: bool,
}

impl ModelShards {
    /// Number of shards.
    pub fn num_shards(&self) -> u32 {
        u32::try_from(self.layers.len()).unwrap_or(u32::MAX)
    }
}

fn field(field: &'static str, problem: impl Into<String>) -> RegistryError {
    RegistryError::InvalidField {
        field,
        problem: problem.into(),
    }
}

/// `https://host:port`, or `host:port` on loopback (a plaintext address off loopback is refused:
/// clients and relays would not dial it).
pub fn check_address(address: &str) -> Result<(), RegistryError> {
    unfed_proto::tls::check_dialable(address)
        .map(drop)
        .map_err(|e| field("address", e.to_string()))
}

/// 1 to 128 characters of `A-Z a-z 0-9 . _ - / :`.
pub fn check_model_id(model_id: &str) -> Result<(), RegistryError> {
    let ok = !model_id.is_empty()
        && model_id.len() <= MAX_MODEL_ID_CHARS
        && model_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-/:".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(field(
            "model_id",
            format!("must be 1 to {MAX_MODEL_ID_CHARS} characters of A-Z a-z 0-9 . _ - / :"),
        ))
    }
}

/// A 32-byte X25519 public key: clients build circuits with it, so a node cannot serve without.
pub fn check_onion_key(key: &[u8]) -> Result<(), RegistryError> {
    if key.len() == ONION_KEY_LEN {
        Ok(())
    } else {
        Err(field(
            "onion_key",
            format!("must be {ONION_KEY_LEN} bytes, not {}", key.len()),
        ))
    }
}

/// A node's signed MPC role must fit the model: shard 0 of a model whose manifest has an `mpc`
/// plan is served only by parties A and B (never by a plain node), every other shard and every
/// shard of another model only by plain nodes, and a party's peer is another identity.
pub fn check_mpc_role(
    identity: Address,
    mpc: MpcRole,
    model_id: &str,
    shard_index: u32,
    shards: &ModelShards,
) -> Result<(), RegistryError> {
    let refuse = |problem: String| RegistryError::MpcRole {
        model_id: model_id.to_owned(),
        problem,
    };
    match (mpc, shards.mpc, shard_index) {
        (MpcRole::None, true, 0) => Err(refuse(
            "its manifest runs shard 0 as a two-party MPC pair, so a shard-0 node registers as \
             party A or party B, naming the other party's identity; a plain node cannot serve it"
                .into(),
        )),
        (MpcRole::None, _, _) => Ok(()),
        (role, false, _) => Err(refuse(format!(
            "its manifest has no mpc plan, so its nodes register without an MPC role (this one \
             says {role})"
        ))),
        (role, true, shard) if shard != 0 => Err(refuse(format!(
            "only shard 0 runs as an MPC pair; a node of shard {shard} registers without an MPC \
             role (this one says {role})"
        ))),
        (role, true, _) => match role.peer() {
            Some(peer) if peer == identity => Err(refuse(format!(
                "{role}: a party's peer is the other party's identity, not its own"
            ))),
            _ => Ok(()),
        },
    }
}

/// SHA-256 of a manifest's text, after checking its size against [`MAX_MANIFEST_JSON`].
pub fn manifest_digest(json: &str) -> Result<[u8; 32], RegistryError> {
    if json.is_empty() {
        return Err(RegistryError::BadManifest(
            "no manifest_json sent: a registration carries the model's manifest.json".into(),
        ));
    }
    if json.len() > MAX_MANIFEST_JSON {
        return Err(RegistryError::BadManifest(format!(
            "{} bytes, more than the limit of {MAX_MANIFEST_JSON}",
            json.len()
        )));
    }
    Ok(Sha256::digest(json.as_bytes()).into())
}

/// Parses a manifest and checks the layout the registry relies on: shards numbered 0, 1, ... in
/// order, each with a non-empty layer range, contiguous, within the model's layer count.
pub fn parse_manifest(json: &str, sha256: [u8; 32]) -> Result<(Manifest, ModelShards), String> {
    let manifest = Manifest::from_json(json)?;
    if manifest.shards.is_empty() {
        return Err("it lists no shards".into());
    }
    // One circuit hop per shard, and a guard may come in front.
    let max = unfed_onion::MAX_HOPS - 1;
    if manifest.shards.len() > max {
        return Err(format!(
            "it has {} shards; a circuit reaches at most {max}",
            manifest.shards.len()
        ));
    }
    let mut layers = Vec::with_capacity(manifest.shards.len());
    let mut next_layer = 0usize;
    for (i, s) in manifest.shards.iter().enumerate() {
        if s.index != i {
            return Err(format!("shard at position {i} has index {}", s.index));
        }
        if s.layer_start != next_layer || s.layer_end <= s.layer_start {
            return Err(format!(
                "shard {i} covers layers {}..{}; expected a non-empty range starting at {next_layer}",
                s.layer_start, s.layer_end
            ));
        }
        next_layer = s.layer_end;
        let start = u32::try_from(s.layer_start).map_err(|_| "layer index too large")?;
        let end = u32::try_from(s.layer_end).map_err(|_| "layer index too large")?;
        layers.push((start, end));
    }
    if next_layer != manifest.config.n_layer {
        return Err(format!(
            "shards cover {next_layer} layers but the model has {}",
            manifest.config.n_layer
        ));
    }
    u32::try_from(layers.len()).map_err(|_| "too many shards")?;
    if let Some(plan) = manifest.mpc {
        let shard0 = &manifest.shards[0];
        if manifest.shards.len() < 2 || plan.layers != shard0.layer_end - shard0.layer_start {
            return Err(format!(
                "its mpc plan puts {} layers on shares, but shard 0 holds {} of {} shards; the \
                 plan is shard 0's whole range and at least one more shard follows it",
                plan.layers,
                shard0.layer_end - shard0.layer_start,
                manifest.shards.len()
            ));
        }
    }
    let mpc = manifest.mpc.is_some();
    Ok((
        manifest,
        ModelShards {
            sha256,
            layers,
            mpc,
        },
    ))
}
