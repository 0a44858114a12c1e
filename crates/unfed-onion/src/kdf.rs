//! Per-hop key derivation: HKDF-SHA256 from the X25519 shared secret, bound to the group element
//! and the hop's public key, expanded under one label per use.

use curve25519_dalek::scalar::Scalar;
use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use zeroize::Zeroizing;

use crate::replay::ReplayTag;
use crate::session::{SESSION_ID_LEN, SESSION_KEY_LEN, SessionKeys};

/// HKDF-Extract salt.
pub const SALT: &[u8] = b"unfed-onion v1";
/// HKDF-Expand info for the header stream-cipher key (32 bytes).
pub const INFO_HEADER_STREAM: &[u8] = b"unfed-onion v1 header-stream";
/// HKDF-Expand info for the header MAC key (32 bytes).
pub const INFO_HEADER_MAC: &[u8] = b"unfed-onion v1 header-mac";
/// HKDF-Expand info for the blinding factor (64 bytes, reduced mod the group order).
pub const INFO_BLINDING: &[u8] = b"unfed-onion v1 blinding";
/// HKDF-Expand info for the replay tag (32 bytes).
pub const INFO_REPLAY_TAG: &[u8] = b"unfed-onion v1 replay-tag";
/// HKDF-Expand info for the forward (client → hop) session key (32 bytes).
pub const INFO_FORWARD_KEY: &[u8] = b"unfed-onion v1 forward-key";
/// HKDF-Expand info for the backward (hop → client) session key (32 bytes).
pub const INFO_BACKWARD_KEY: &[u8] = b"unfed-onion v1 backward-key";
/// HKDF-Expand info for the per-hop session id (16 bytes).
pub const INFO_SESSION_ID: &[u8] = b"unfed-onion v1 session-id";

/// HKDF-Expand info for a link's forward key (32 bytes), from a link secret (see
/// [`SessionKeys::for_link`]).
pub const INFO_LINK_FORWARD_KEY: &[u8] = b"unfed-onion v1 link-forward-key";
/// HKDF-Expand info for a link's backward key (32 bytes).
pub const INFO_LINK_BACKWARD_KEY: &[u8] = b"unfed-onion v1 link-backward-key";
/// HKDF-Expand info for a link's session id (16 bytes).
pub const INFO_LINK_ID: &[u8] = b"unfed-onion v1 link-id";

/// Everything one hop and the client derive from their shared secret.
pub(crate) struct HopSecrets {
    pub stream_key: Zeroizing<[u8; 32]>,
    pub mac_key: Zeroizing<[u8; 32]>,
    pub blinding: Zeroizing<Scalar>,
    pub replay_tag: ReplayTag,
    pub session: SessionKeys,
}

/// PRK = HKDF-Extract(SALT, shared || alpha || hop public key); each output is
/// HKDF-Expand(PRK, label, length).
pub(crate) fn derive(shared: &[u8; 32], alpha: &[u8; 32], public: &[u8; 32]) -> HopSecrets {
    let mut ikm = Zeroizing::new([0u8; 96]);
    ikm[..32].copy_from_slice(shared);
    ikm[32..64].copy_from_slice(alpha);
    ikm[64..].copy_from_slice(public);
    let hk = Hkdf::<Sha256>::new(Some(SALT), ikm.as_ref());
    let blinding_wide = expand::<64>(&hk, INFO_BLINDING);
    HopSecrets {
        stream_key: expand(&hk, INFO_HEADER_STREAM),
        mac_key: expand(&hk, INFO_HEADER_MAC),
        blinding: Zeroizing::new(Scalar::from_bytes_mod_order_wide(&blinding_wide)),
        replay_tag: ReplayTag(*expand::<32>(&hk, INFO_REPLAY_TAG)),
        session: SessionKeys::new(
            *expand::<SESSION_KEY_LEN>(&hk, INFO_FORWARD_KEY),
            *expand::<SESSION_KEY_LEN>(&hk, INFO_BACKWARD_KEY),
            *expand::<SESSION_ID_LEN>(&hk, INFO_SESSION_ID),
        ),
    }
}

/// The keys of a link from a 32-byte link secret: PRK = HKDF-Extract(SALT, secret), then one
/// expansion per key under the `INFO_LINK_*` labels.
pub(crate) fn derive_link(secret: &[u8; 32]) -> SessionKeys {
    let hk = Hkdf::<Sha256>::new(Some(SALT), secret);
    SessionKeys::new(
        *expand::<SESSION_KEY_LEN>(&hk, INFO_LINK_FORWARD_KEY),
        *expand::<SESSION_KEY_LEN>(&hk, INFO_LINK_BACKWARD_KEY),
        *expand::<SESSION_ID_LEN>(&hk, INFO_LINK_ID),
    )
}

fn expand<const N: usize>(hk: &Hkdf<Sha256>, info: &[u8]) -> Zeroizing<[u8; N]> {
    let mut out = Zeroizing::new([0u8; N]);
    // HKDF-SHA256 can expand up to 8160 bytes; every N here is at most 64.
    hk.expand(info, out.as_mut())
        .expect("HKDF output lengths are fixed and below the limit");
    out
}

/// HMAC-SHA256 over the concatenation of `parts`.
pub(crate) fn hmac(key: &[u8; 32], parts: &[&[u8]]) -> [u8; 32] {
    let mut mac =
        <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes keys of any length");
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().into()
}

/// Constant-time check of an HMAC-SHA256 tag over `parts`.
pub(crate) fn hmac_verify(key: &[u8; 32], parts: &[&[u8]], tag: &[u8]) -> bool {
    let mut mac =
        <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes keys of any length");
    for part in parts {
        mac.update(part);
    }
    mac.verify_slice(tag).is_ok()
}
