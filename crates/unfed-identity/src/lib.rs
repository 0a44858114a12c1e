//! Node identities for UNFED: secp256k1 keys whose Ethereum address is the node's staking
//! identity, EIP-191 (`personal_sign`) signatures, and the canonical byte encoding of what a
//! node signs for the registry.
//!
//! - [`Address`]: a 20-byte Ethereum address (`0x` + 40 lowercase hex when displayed; EIP-55
//!   checksums are checked when parsing mixed-case input).
//! - [`NodeKey`]: a node's secret key, zeroized on drop, never printed; [`NodeKey::sign`] makes
//!   the same 65-byte signatures as any Ethereum wallet's `personal_sign`.
//! - [`recover`]: the signer of a signature, rejecting malformed and malleable (high-s) input.
//! - [`canonical`]: the registry payloads (`Register`, `Heartbeat`, `Unregister`), their one
//!   byte encoding, and [`canonical::open_signed`], which decodes and authenticates in one step.
//! - [`MpcRole`]: what a `Register` says about the node's part in shard 0's two-party MPC pair
//!   (none, party A or party B, each naming its peer's identity).
//!
//! The byte layouts and test vectors are specified in `docs/protocol.md`, section "Canonical
//! payloads and signatures".
//!
//! ```
//! use unfed_identity::NodeKey;
//! use unfed_identity::canonical::{Heartbeat, Payload, open_signed, sign_payload};
//!
//! let key = NodeKey::generate();
//! let payload = Payload::Heartbeat(Heartbeat {
//!     identity: key.address(),
//!     address: "127.0.0.1:7001".into(),
//!     active_sessions: 0,
//!     timestamp_ms: 1_700_000_000_000,
//!     nonce: 1,
//! });
//! let (bytes, signature) = sign_payload(&key, &payload)?;
//! assert_eq!(open_signed(&bytes, &signature)?, payload);
//! # Ok::<(), unfed_identity::IdentityError>(())
//! ```

mod address;
pub mod canonical;
mod error;
mod key;

pub use address::Address;
pub use canonical::MpcRole;
pub use error::IdentityError;
pub use key::{NodeKey, SIGNATURE_LEN, recover};

use sha3::{Digest, Keccak256};

/// Keccak-256 (the Ethereum hash, not NIST SHA3-256) of `bytes`.
pub fn keccak256(bytes: &[u8]) -> [u8; 32] {
    Keccak256::digest(bytes).into()
}

/// The EIP-191 version `0x45` ("personal message") hash that `personal_sign` signs:
/// `keccak256("\x19Ethereum Signed Message:\n" + decimal len(payload) + payload)`.
pub fn eip191_hash(payload: &[u8]) -> [u8; 32] {
    let mut hasher = Keccak256::new();
    hasher.update(b"\x19Ethereum Signed Message:\n");
    hasher.update(payload.len().to_string().as_bytes());
    hasher.update(payload);
    hasher.finalize().into()
}
