//! X25519 onion keys: a hop's long-lived secret (zeroized, never printed) and its public key.

use std::fmt;

use curve25519_dalek::montgomery::MontgomeryPoint;
use rand_core::{CryptoRng, RngCore};
use subtle::ConstantTimeEq;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::error::KeyError;

/// Bytes of an X25519 secret or public key.
pub const KEY_BYTES: usize = 32;

/// A hop's onion secret key (X25519). Zeroized on drop; `Debug` prints no bytes.
///
/// The 32 bytes are the RFC 7748 scalar before clamping; every multiplication clamps them, so
/// any 32 bytes are a valid key.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct OnionSecretKey {
    bytes: [u8; KEY_BYTES],
    #[zeroize(skip)]
    public: OnionPublicKey,
}

impl OnionSecretKey {
    /// A fresh key from `rng` (32 bytes drawn with `fill_bytes`).
    pub fn generate<R: RngCore + CryptoRng + ?Sized>(rng: &mut R) -> Self {
        let mut bytes = Zeroizing::new([0u8; KEY_BYTES]);
        rng.fill_bytes(bytes.as_mut());
        Self::from_bytes(*bytes)
    }

    /// The key with these secret bytes (as stored by [`OnionSecretKey::to_bytes`]).
    pub fn from_bytes(bytes: [u8; KEY_BYTES]) -> Self {
        let public = OnionPublicKey(MontgomeryPoint::mul_base_clamped(bytes).to_bytes());
        Self { bytes, public }
    }

    /// The secret bytes, for storing the key. Keep them out of logs.
    pub fn to_bytes(&self) -> Zeroizing<[u8; KEY_BYTES]> {
        Zeroizing::new(self.bytes)
    }

    /// The matching public key.
    pub fn public_key(&self) -> OnionPublicKey {
        self.public
    }

    /// X25519(secret, point): the clamped scalar times `point`.
    pub(crate) fn diffie_hellman(&self, point: &[u8; KEY_BYTES]) -> Zeroizing<[u8; KEY_BYTES]> {
        Zeroizing::new(MontgomeryPoint(*point).mul_clamped(self.bytes).to_bytes())
    }
}

impl fmt::Debug for OnionSecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OnionSecretKey")
            .field("public", &self.public)
            .finish_non_exhaustive()
    }
}

impl PartialEq for OnionSecretKey {
    fn eq(&self, other: &Self) -> bool {
        self.bytes.ct_eq(&other.bytes).into()
    }
}

impl Eq for OnionSecretKey {}

/// A hop's onion public key: the canonical u-coordinate of a point in Curve25519's prime-order
/// subgroup (what the registry publishes for a node).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct OnionPublicKey([u8; KEY_BYTES]);

impl OnionPublicKey {
    /// Parse and check a published key: it must be canonical, on the curve (not its twist) and
    /// in the prime-order subgroup, so the client and the hop agree on every shared secret.
    pub fn from_bytes(bytes: [u8; KEY_BYTES]) -> Result<Self, KeyError> {
        let point = MontgomeryPoint(bytes);
        let edwards = point.to_edwards(0).ok_or(KeyError::NotOnCurve)?;
        if edwards.to_montgomery().to_bytes() != bytes {
            return Err(KeyError::NotOnCurve);
        }
        if edwards.is_small_order() || !edwards.is_torsion_free() {
            return Err(KeyError::NotPrimeOrder);
        }
        Ok(Self(bytes))
    }

    /// The 32-byte encoding.
    pub fn as_bytes(&self) -> &[u8; KEY_BYTES] {
        &self.0
    }

    /// The 32-byte encoding, by value.
    pub fn to_bytes(&self) -> [u8; KEY_BYTES] {
        self.0
    }

    pub(crate) fn point(&self) -> MontgomeryPoint {
        MontgomeryPoint(self.0)
    }
}

impl fmt::Debug for OnionPublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "OnionPublicKey(")?;
        for byte in &self.0 {
            write!(f, "{byte:02x}")?;
        }
        write!(f, ")")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_secret_bytes() {
        let key = OnionSecretKey::from_bytes([0xab; 32]);
        let shown = format!("{key:?}");
        assert!(!shown.contains(&"ab".repeat(8)), "{shown}");
        assert!(shown.contains("OnionSecretKey"));
    }

    #[test]
    fn public_keys_of_secrets_parse() {
        for seed in 0u8..16 {
            let key = OnionSecretKey::from_bytes([seed; 32]);
            let public = key.public_key();
            assert_eq!(OnionPublicKey::from_bytes(public.to_bytes()), Ok(public));
        }
    }

    #[test]
    fn rejects_small_order_and_noncanonical_points() {
        // u = 0 (order 2 / identity), u = 1 (order 4), an order-8 point, and u = p - 1, u = p.
        let mut order8 = [0u8; 32];
        let hex8 = "e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800";
        for (i, byte) in order8.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&hex8[2 * i..2 * i + 2], 16).unwrap();
        }
        let mut p_minus_1 = [0xffu8; 32];
        p_minus_1[0] = 0xec;
        p_minus_1[31] = 0x7f;
        let mut p = p_minus_1;
        p[0] = 0xed;
        let mut one = [0u8; 32];
        one[0] = 1;
        for bad in [[0u8; 32], one, order8, p_minus_1, p] {
            assert!(OnionPublicKey::from_bytes(bad).is_err(), "{bad:02x?}");
        }
        // A valid key with bit 255 set is a second encoding of the same point: refused.
        let mut high = OnionSecretKey::from_bytes([7; 32]).public_key().to_bytes();
        high[31] |= 0x80;
        assert_eq!(OnionPublicKey::from_bytes(high), Err(KeyError::NotOnCurve));
    }
}
