//! [`RegistryError`]: why the registry refused or failed a request. Messages are written for the
//! calling node or client; [`crate::to_status`] turns them into gRPC statuses and hides storage
//! details.

use unfed_db::DbError;
use unfed_identity::{Address, IdentityError};

/// A refused or failed registry request.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The payload bytes are not a canonical payload.
    #[error("malformed payload: {0}")]
    MalformedPayload(IdentityError),

    /// The signature is missing, malformed or unverifiable.
    #[error("bad signature: {0}")]
    BadSignature(String),

    /// A valid signature by someone other than the identity the payload names.
    #[error("payload names {named} but is signed by {signer}")]
    WrongSigner {
        /// Who signed.
        signer: Address,
        /// Who the payload says it is.
        named: Address,
    },

    /// A payload of another kind than the call expects (a heartbeat sent to Register).
    #[error("{call} expects a {expected} payload, got a {got} payload")]
    WrongKind {
        /// The RPC.
        call: &'static str,
        /// The payload kind it takes.
        expected: &'static str,
        /// The payload kind it got.
        got: &'static str,
    },

    /// A field of the payload or request breaks a rule.
    #[error("invalid {field}: {problem}")]
    InvalidField {
        /// The field.
        field: &'static str,
        /// The rule it breaks.
        problem: String,
    },

    /// A registration whose MPC role does not fit the model's manifest (a plain shard-0 node of
    /// a model whose shard 0 runs as an MPC pair, a role for a model or shard without one) or
    /// names the node itself as its peer.
    #[error("MPC role refused for model {model_id}: {problem}")]
    MpcRole {
        /// The model.
        model_id: String,
        /// What does not fit.
        problem: String,
    },

    /// The signed timestamp is outside the accepted window around the registry's clock.
    #[error(
        "signed timestamp {timestamp_ms} is {} ms {} the registry's clock ({now_ms}); \
         accepted skew is {skew_ms} ms: check the node's clock",
        .timestamp_ms.abs_diff(*.now_ms),
        if .timestamp_ms < .now_ms { "behind" } else { "ahead of" }
    )]
    StaleTimestamp {
        /// The payload's timestamp.
        timestamp_ms: u64,
        /// The registry's time.
        now_ms: u64,
        /// The accepted difference.
        skew_ms: u64,
    },

    /// The identity already used this nonce.
    #[error("nonce {nonce} was already used by {identity}: sign each request with a fresh nonce")]
    Replay {
        /// The signer.
        identity: Address,
        /// The reused nonce.
        nonce: u64,
    },

    /// The manifest sent with a registration is unusable (unparsable, too large, inconsistent).
    #[error("manifest refused: {0}")]
    BadManifest(String),

    /// The registry already holds a different manifest for the model.
    #[error(
        "model {model_id} is already registered with a different manifest (sha256 {existing}); \
         nodes of one model must serve the same split: use that split or another model id"
    )]
    ManifestConflict {
        /// The model.
        model_id: String,
        /// SHA-256 (hex) of the manifest the registry holds.
        existing: String,
    },

    /// Heartbeat or unregistration of a node that is not registered under the signer.
    #[error("not registered: no node of {identity} at {address}; register first")]
    NotRegistered {
        /// The signer.
        identity: Address,
        /// The address the payload names.
        address: String,
    },

    /// Registering a new model id would exceed `max_models`.
    #[error(
        "registry full: it already holds its maximum of {max} models, so model {model_id:?} \
         cannot be added (models already registered still accept nodes)"
    )]
    TooManyModels {
        /// The refused model.
        model_id: String,
        /// The cap.
        max: u32,
    },

    /// A new address of an identity that already has `max_nodes_per_identity` nodes.
    #[error(
        "{identity} already has its maximum of {max} registered nodes: unregister one, or \
         re-register an address it already has"
    )]
    TooManyNodesForIdentity {
        /// The signer.
        identity: Address,
        /// The cap.
        max: u32,
    },

    /// A new node row would exceed `max_nodes`.
    #[error(
        "registry full: it already holds its maximum of {max} nodes; try again once nodes \
         unregister or expire (registered nodes can still re-register)"
    )]
    TooManyNodes {
        /// The cap.
        max: u32,
    },

    /// The model has no manifest in this registry.
    #[error("unknown model {0:?}: no node has registered it")]
    UnknownModel(String),

    /// Storage failed; the details are for the operator's log only.
    #[error("registry storage failed: {0}")]
    Storage(#[from] DbError),

    /// A stored manifest no longer parses (the database was edited or corrupted).
    #[error("stored manifest of {model_id} is unusable: {problem}")]
    CorruptManifest {
        /// The model.
        model_id: String,
        /// What is wrong.
        problem: String,
    },

    /// The registry is shutting down, or its database thread stopped.
    #[error("registry unavailable (shutting down)")]
    Unavailable,
}

impl RegistryError {
    /// Sorts an error of [`unfed_identity::canonical::open_signed`] into malformed payload, bad
    /// signature or wrong signer.
    pub fn from_open(err: IdentityError) -> Self {
        match err {
            IdentityError::WrongSigner { signer, named } => Self::WrongSigner { signer, named },
            IdentityError::SignatureLength(0) => {
                Self::BadSignature("the request is not signed (empty signature)".into())
            }
            e @ (IdentityError::SignatureLength(_)
            | IdentityError::SignatureRecoveryByte(_)
            | IdentityError::SignatureHighS
            | IdentityError::SignatureInvalid(_)) => Self::BadSignature(e.to_string()),
            other => Self::MalformedPayload(other),
        }
    }
}
