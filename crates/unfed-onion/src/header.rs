//! The fixed-size Sphinx-style circuit setup header: building it for a route and peeling one
//! layer at a hop.
//!
//! Layout: `alpha (32) || beta (MAX_HOPS × HOP_BLOCK_LEN) || gamma (32)`. Each hop derives its
//! keys from `X25519(its key, alpha)`, checks `gamma = HMAC(mac key, alpha || beta)`, decrypts
//! `beta || 0^HOP_BLOCK_LEN` with its ChaCha20 stream, reads its block from the front and
//! passes on the shifted rest with the blinded `alpha`. The builder precomputes the filler that
//! the hops' shifting appends, so every hop's MAC verifies and every header has the same length.

use std::fmt;

use chacha20::ChaCha20;
use chacha20::cipher::{KeyIvInit, StreamCipher};
use curve25519_dalek::montgomery::MontgomeryPoint;
use curve25519_dalek::scalar::Scalar;
use rand_core::{CryptoRng, RngCore};
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::error::{BuildError, PeelError};
use crate::kdf::{self, HopSecrets};
use crate::keys::{OnionPublicKey, OnionSecretKey};
use crate::replay::ReplayTag;
use crate::session::SessionKeys;

/// Most hops a circuit can have.
pub const MAX_HOPS: usize = 8;
/// Longest next-hop routing field (for example `"127.0.0.1:50061"` or `"host.example:443"`).
pub const MAX_NEXT_HOP_LEN: usize = 64;
/// Bytes of the opaque per-hop payload (options, link keys: the client decides).
pub const HOP_PAYLOAD_LEN: usize = 64;
/// Bytes of the header's group element.
pub const ALPHA_LEN: usize = 32;
/// Bytes of a header MAC (HMAC-SHA256, not truncated).
pub const MAC_LEN: usize = 32;
/// Bytes of one hop's routing block: next-hop length (1), next hop (64), payload (64), next MAC (32).
pub const HOP_BLOCK_LEN: usize = 1 + MAX_NEXT_HOP_LEN + HOP_PAYLOAD_LEN + MAC_LEN;
/// Bytes of the encrypted routing information.
pub const BETA_LEN: usize = MAX_HOPS * HOP_BLOCK_LEN;
/// Bytes of every setup header, whatever the route length and the hop's position.
pub const HEADER_LEN: usize = ALPHA_LEN + BETA_LEN + MAC_LEN;

const STREAM_LEN: usize = BETA_LEN + HOP_BLOCK_LEN;
const PAYLOAD_OFFSET: usize = 1 + MAX_NEXT_HOP_LEN;
const NEXT_MAC_OFFSET: usize = PAYLOAD_OFFSET + HOP_PAYLOAD_LEN;

/// The opaque per-hop payload. May hold keys, so it is zeroized on drop and never printed.
#[derive(Clone, PartialEq, Eq, Zeroize, ZeroizeOnDrop)]
pub struct HopPayload(pub [u8; HOP_PAYLOAD_LEN]);

impl HopPayload {
    /// The bytes.
    pub fn as_bytes(&self) -> &[u8; HOP_PAYLOAD_LEN] {
        &self.0
    }
}

impl Default for HopPayload {
    fn default() -> Self {
        Self([0; HOP_PAYLOAD_LEN])
    }
}

impl fmt::Debug for HopPayload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("HopPayload(..)")
    }
}

/// One hop of a route as the client describes it.
#[derive(Debug, Clone)]
pub struct RouteHop {
    /// The hop's onion public key.
    pub public_key: OnionPublicKey,
    /// Where this hop forwards to (the next hop's address); empty for the last hop only.
    pub next_hop: Vec<u8>,
    /// What only this hop reads.
    pub payload: HopPayload,
}

/// A setup header: exactly [`HEADER_LEN`] bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct OnionHeader(Box<[u8; HEADER_LEN]>);

impl OnionHeader {
    /// Wrap received bytes, checking only the length.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, PeelError> {
        let array: [u8; HEADER_LEN] = bytes.try_into().map_err(|_| PeelError::Length {
            got: bytes.len(),
            expected: HEADER_LEN,
        })?;
        Ok(Self(Box::new(array)))
    }

    /// The bytes to send.
    pub fn as_bytes(&self) -> &[u8; HEADER_LEN] {
        &self.0
    }

    /// The bytes to send, owned.
    pub fn to_vec(&self) -> Vec<u8> {
        self.0.to_vec()
    }
}

impl fmt::Debug for OnionHeader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "OnionHeader({HEADER_LEN} bytes)")
    }
}

/// What the client keeps after building: the header for the first hop and every hop's keys.
#[derive(Debug)]
pub struct BuiltCircuit {
    /// Send this to the first hop.
    pub header: OnionHeader,
    /// The keys each hop will derive, in route order.
    pub hop_keys: Vec<SessionKeys>,
    /// The replay tag each hop will compute, in route order.
    pub replay_tags: Vec<ReplayTag>,
}

/// What a hop learns from its layer.
pub struct Peeled {
    /// The payload the client put in this hop's block.
    pub payload: HopPayload,
    /// This hop's session keys.
    pub keys: SessionKeys,
    /// The tag to check against the replay cache (see [`crate::OnionHop`]).
    pub replay_tag: ReplayTag,
    /// Whether to forward, and what.
    pub role: Role,
}

impl Peeled {
    /// The next-hop field: empty exactly when this hop is the last.
    pub fn next_hop(&self) -> &[u8] {
        match &self.role {
            Role::Relay { next_hop, .. } => next_hop,
            Role::Last => &[],
        }
    }

    /// Whether the next-hop field was empty.
    pub fn is_last(&self) -> bool {
        matches!(self.role, Role::Last)
    }
}

impl fmt::Debug for Peeled {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Peeled")
            .field("role", &self.role)
            .field("keys", &self.keys)
            .field("replay_tag", &self.replay_tag)
            .finish_non_exhaustive()
    }
}

/// A hop's place as its block states it.
#[derive(Debug)]
pub enum Role {
    /// Forward `header` to `next_hop`.
    Relay {
        /// The routing field (1..=[`MAX_NEXT_HOP_LEN`] bytes).
        next_hop: Vec<u8>,
        /// The header for the next hop, also [`HEADER_LEN`] bytes.
        header: OnionHeader,
    },
    /// The next-hop field was empty: nothing to forward.
    Last,
}

/// Build the setup header for `route` (1..=[`MAX_HOPS`] hops, in order).
///
/// Draws from `rng`: 64 bytes for the ephemeral scalar (again if it reduces to zero), then
/// `(MAX_HOPS - route.len()) × HOP_BLOCK_LEN` bytes of padding.
pub fn build<R: RngCore + CryptoRng + ?Sized>(
    rng: &mut R,
    route: &[RouteHop],
) -> Result<BuiltCircuit, BuildError> {
    check_route(route)?;
    let hops = route.len();

    let mut x = Zeroizing::new(Scalar::ZERO);
    while *x == Scalar::ZERO {
        let mut wide = Zeroizing::new([0u8; 64]);
        rng.fill_bytes(wide.as_mut());
        *x = Scalar::from_bytes_mod_order_wide(&wide);
    }

    let mut alphas = Vec::with_capacity(hops);
    let mut secrets: Vec<HopSecrets> = Vec::with_capacity(hops);
    for (index, hop) in route.iter().enumerate() {
        let alpha = MontgomeryPoint::mul_base(&x).to_bytes();
        let shared = Zeroizing::new(scalar_mul(&hop.public_key.point(), &x).to_bytes());
        if *shared == [0u8; 32] {
            return Err(BuildError::DegenerateKey { hop: index });
        }
        let hop_secrets = kdf::derive(&shared, &alpha, hop.public_key.as_bytes());
        *x *= &*hop_secrets.blinding;
        if *x == Scalar::ZERO {
            return Err(BuildError::DegenerateKey { hop: index });
        }
        alphas.push(alpha);
        secrets.push(hop_secrets);
    }
    let streams: Vec<Zeroizing<Vec<u8>>> =
        secrets.iter().map(|s| keystream(&s.stream_key)).collect();

    // Filler: the bytes hops 0..hops-2 append by shifting, as the last hop will see them.
    let mut filler: Vec<u8> = Vec::with_capacity(BETA_LEN);
    for (i, stream) in streams.iter().enumerate().take(hops - 1) {
        filler.extend_from_slice(&[0u8; HOP_BLOCK_LEN]);
        xor(
            &mut filler,
            &stream[(MAX_HOPS - i) * HOP_BLOCK_LEN..STREAM_LEN],
        );
    }

    // The last hop's beta: its block, random padding, encrypted; then the filler.
    let last = hops - 1;
    let front = (MAX_HOPS - hops + 1) * HOP_BLOCK_LEN;
    let mut beta = vec![0u8; BETA_LEN];
    write_block(&mut beta[..HOP_BLOCK_LEN], &route[last], &[0u8; MAC_LEN]);
    rng.fill_bytes(&mut beta[HOP_BLOCK_LEN..front]);
    xor(&mut beta[..front], &streams[last][..front]);
    beta[front..].copy_from_slice(&filler);
    let mut gamma = kdf::hmac(&secrets[last].mac_key, &[&alphas[last], &beta]);

    for i in (0..last).rev() {
        let mut wrapped = vec![0u8; BETA_LEN];
        write_block(&mut wrapped[..HOP_BLOCK_LEN], &route[i], &gamma);
        wrapped[HOP_BLOCK_LEN..].copy_from_slice(&beta[..BETA_LEN - HOP_BLOCK_LEN]);
        xor(&mut wrapped, &streams[i][..BETA_LEN]);
        beta = wrapped;
        gamma = kdf::hmac(&secrets[i].mac_key, &[&alphas[i], &beta]);
    }

    let mut header = Box::new([0u8; HEADER_LEN]);
    header[..ALPHA_LEN].copy_from_slice(&alphas[0]);
    header[ALPHA_LEN..ALPHA_LEN + BETA_LEN].copy_from_slice(&beta);
    header[ALPHA_LEN + BETA_LEN..].copy_from_slice(&gamma);
    let replay_tags = secrets.iter().map(|s| s.replay_tag).collect();
    let hop_keys = secrets.into_iter().map(|s| s.session).collect();
    Ok(BuiltCircuit {
        header: OnionHeader(header),
        hop_keys,
        replay_tags,
    })
}

/// Peel this hop's layer off `header` with its onion key. Pure: the replay check is the
/// caller's, with [`Peeled::replay_tag`] (or use [`crate::OnionHop::process`]).
///
/// Any input is safe: wrong length, a small-order element, a bad MAC or a malformed block is
/// an error, never a panic.
pub fn peel(key: &OnionSecretKey, header: &[u8]) -> Result<Peeled, PeelError> {
    if header.len() != HEADER_LEN {
        return Err(PeelError::Length {
            got: header.len(),
            expected: HEADER_LEN,
        });
    }
    let (alpha_bytes, rest) = header.split_at(ALPHA_LEN);
    let (beta, gamma) = rest.split_at(BETA_LEN);
    let mut alpha = [0u8; ALPHA_LEN];
    alpha.copy_from_slice(alpha_bytes);

    let shared = key.diffie_hellman(&alpha);
    if *shared == [0u8; 32] {
        return Err(PeelError::DegenerateElement);
    }
    let secrets = kdf::derive(&shared, &alpha, key.public_key().as_bytes());
    if !kdf::hmac_verify(&secrets.mac_key, &[&alpha, beta], gamma) {
        return Err(PeelError::Mac);
    }

    let mut plain = Zeroizing::new(vec![0u8; STREAM_LEN]);
    plain[..BETA_LEN].copy_from_slice(beta);
    ChaCha20::new(secrets.stream_key.as_ref().into(), &[0u8; 12].into())
        .apply_keystream(&mut plain);

    let next_len = usize::from(plain[0]);
    if next_len > MAX_NEXT_HOP_LEN {
        return Err(PeelError::MalformedBlock("next-hop length exceeds 64"));
    }
    if plain[1 + next_len..PAYLOAD_OFFSET].iter().any(|&b| b != 0) {
        return Err(PeelError::MalformedBlock(
            "next-hop field padding is not zero",
        ));
    }
    let mut payload = HopPayload::default();
    payload
        .0
        .copy_from_slice(&plain[PAYLOAD_OFFSET..NEXT_MAC_OFFSET]);

    let role = if next_len == 0 {
        Role::Last
    } else {
        let next_alpha = scalar_mul(&MontgomeryPoint(alpha), &secrets.blinding).to_bytes();
        let mut next = Box::new([0u8; HEADER_LEN]);
        next[..ALPHA_LEN].copy_from_slice(&next_alpha);
        next[ALPHA_LEN..ALPHA_LEN + BETA_LEN].copy_from_slice(&plain[HOP_BLOCK_LEN..]);
        next[ALPHA_LEN + BETA_LEN..].copy_from_slice(&plain[NEXT_MAC_OFFSET..HOP_BLOCK_LEN]);
        Role::Relay {
            next_hop: plain[1..1 + next_len].to_vec(),
            header: OnionHeader(next),
        }
    };
    Ok(Peeled {
        payload,
        keys: secrets.session,
        replay_tag: secrets.replay_tag,
        role,
    })
}

fn check_route(route: &[RouteHop]) -> Result<(), BuildError> {
    if route.is_empty() {
        return Err(BuildError::EmptyRoute);
    }
    if route.len() > MAX_HOPS {
        return Err(BuildError::TooManyHops {
            hops: route.len(),
            max: MAX_HOPS,
        });
    }
    let last = route.len() - 1;
    for (hop, entry) in route.iter().enumerate() {
        let len = entry.next_hop.len();
        if len > MAX_NEXT_HOP_LEN {
            return Err(BuildError::NextHopTooLong {
                hop,
                len,
                max: MAX_NEXT_HOP_LEN,
            });
        }
        if hop < last && len == 0 {
            return Err(BuildError::MissingNextHop { hop });
        }
        if hop == last && len != 0 {
            return Err(BuildError::LastHopHasNextHop { hop });
        }
    }
    Ok(())
}

/// `next_len (1) || next hop, zero-padded (64) || payload (64) || next MAC (32)`.
fn write_block(block: &mut [u8], hop: &RouteHop, next_mac: &[u8; MAC_LEN]) {
    block.fill(0);
    // check_route bounded the length by MAX_NEXT_HOP_LEN (64), so it fits a byte.
    block[0] = hop.next_hop.len() as u8;
    block[1..1 + hop.next_hop.len()].copy_from_slice(&hop.next_hop);
    block[PAYLOAD_OFFSET..NEXT_MAC_OFFSET].copy_from_slice(&hop.payload.0);
    block[NEXT_MAC_OFFSET..HOP_BLOCK_LEN].copy_from_slice(next_mac);
}

/// Unclamped scalar multiplication (by reference, so a secret scalar is not copied out of its
/// zeroizing box).
fn scalar_mul(point: &MontgomeryPoint, scalar: &Scalar) -> MontgomeryPoint {
    point * scalar
}

/// The first [`STREAM_LEN`] bytes of ChaCha20(key, nonce 0, block counter 0).
fn keystream(key: &[u8; 32]) -> Zeroizing<Vec<u8>> {
    let mut stream = Zeroizing::new(vec![0u8; STREAM_LEN]);
    ChaCha20::new(key.into(), &[0u8; 12].into()).apply_keystream(&mut stream);
    stream
}

fn xor(target: &mut [u8], stream: &[u8]) {
    for (t, s) in target.iter_mut().zip(stream) {
        *t ^= s;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn longest_zero_run(bytes: &[u8]) -> usize {
        let (mut best, mut run) = (0, 0);
        for &b in bytes {
            run = if b == 0 { run + 1 } else { 0 };
            best = best.max(run);
        }
        best
    }

    struct Seq(u64);

    impl RngCore for Seq {
        fn next_u32(&mut self) -> u32 {
            self.next_u64() as u32
        }
        fn next_u64(&mut self) -> u64 {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            self.0 ^ (self.0 >> 29)
        }
        fn fill_bytes(&mut self, dst: &mut [u8]) {
            for b in dst {
                *b = (self.next_u64() >> 56) as u8;
            }
        }
    }

    impl CryptoRng for Seq {}

    /// The last hop decrypts the whole of beta; what follows its block must look random
    /// (padding drawn from the RNG, filler from other hops' streams), or the number of zero
    /// blocks would tell it the route length.
    #[test]
    fn the_last_hop_sees_no_trace_of_the_route_length() {
        for hops in 1..=MAX_HOPS {
            let mut rng = Seq(hops as u64);
            let keys: Vec<OnionSecretKey> = (0..hops)
                .map(|_| OnionSecretKey::generate(&mut rng))
                .collect();
            let route: Vec<RouteHop> = keys
                .iter()
                .enumerate()
                .map(|(i, key)| RouteHop {
                    public_key: key.public_key(),
                    next_hop: if i + 1 == hops {
                        Vec::new()
                    } else {
                        b"n:1".to_vec()
                    },
                    payload: HopPayload::default(),
                })
                .collect();
            let mut header = build(&mut rng, &route).unwrap().header;
            for key in &keys[..hops - 1] {
                match peel(key, header.as_bytes()).unwrap().role {
                    Role::Relay { header: next, .. } => header = next,
                    Role::Last => panic!("relay expected"),
                }
            }
            let last = &keys[hops - 1];
            let alpha: [u8; 32] = header.as_bytes()[..32].try_into().unwrap();
            let secrets = kdf::derive(
                &last.diffie_hellman(&alpha),
                &alpha,
                last.public_key().as_bytes(),
            );
            let mut plain = header.as_bytes()[ALPHA_LEN..ALPHA_LEN + BETA_LEN].to_vec();
            xor(&mut plain, &keystream(&secrets.stream_key));
            assert_eq!(plain[0], 0, "route {hops}: empty next hop");
            let tail = &plain[HOP_BLOCK_LEN..];
            assert!(
                longest_zero_run(tail) < 8,
                "route {hops}: zero run in the last hop's view"
            );
        }
    }
}
