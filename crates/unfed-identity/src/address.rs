//! [`Address`]: a 20-byte Ethereum address, with `0x` hex display and EIP-55 checksum parsing.

use std::fmt;
use std::str::FromStr;

use crate::{IdentityError, keccak256};

/// A 20-byte Ethereum address. Display: "0x" + 40 lowercase hex. FromStr: "0x" + 40 hex digits,
/// any case; if mixed case, the EIP-55 checksum must be valid.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct Address(pub [u8; 20]);

impl Address {
    /// The all-zero address.
    pub const ZERO: Address = Address([0; 20]);

    /// The address of an uncompressed SEC1 public key (65 bytes, starting with `0x04`):
    /// the last 20 bytes of `keccak256(key[1..])`. `None` for any other input.
    pub fn from_uncompressed_public_key(key: &[u8]) -> Option<Address> {
        if key.len() != 65 || key[0] != 0x04 {
            return None;
        }
        let hash = keccak256(&key[1..]);
        let mut out = [0u8; 20];
        out.copy_from_slice(&hash[12..]);
        Some(Address(out))
    }

    /// The 20 raw bytes.
    pub fn as_bytes(&self) -> &[u8; 20] {
        &self.0
    }

    /// The EIP-55 mixed-case checksum form, e.g. `0x2C7536E3605D9C16a7a3D7b1898e529396a65c23`.
    pub fn to_checksum(&self) -> String {
        let lower = hex::encode(self.0);
        let hash = keccak256(lower.as_bytes());
        let mut out = String::with_capacity(42);
        out.push_str("0x");
        for (i, c) in lower.chars().enumerate() {
            let nibble = (hash[i / 2] >> (if i % 2 == 0 { 4 } else { 0 })) & 0x0f;
            if c.is_ascii_alphabetic() && nibble >= 8 {
                out.push(c.to_ascii_uppercase());
            } else {
                out.push(c);
            }
        }
        out
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "0x{}", hex::encode(self.0))
    }
}

impl FromStr for Address {
    type Err = IdentityError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |reason: &'static str| IdentityError::InvalidAddress {
            input: shorten(s),
            reason,
        };
        let digits = s
            .strip_prefix("0x")
            .ok_or_else(|| bad("it must start with \"0x\""))?;
        if digits.len() != 40 || !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad("it must be \"0x\" followed by exactly 40 hex digits"));
        }
        let mut out = [0u8; 20];
        hex::decode_to_slice(digits, &mut out)
            .map_err(|_| bad("it must be \"0x\" followed by exactly 40 hex digits"))?;
        let address = Address(out);
        let has_upper = digits.bytes().any(|b| b.is_ascii_uppercase());
        let has_lower = digits.bytes().any(|b| b.is_ascii_lowercase());
        if has_upper && has_lower && address.to_checksum()[2..] != *digits {
            return Err(IdentityError::BadChecksum {
                input: s.to_string(),
                expected: address.to_checksum(),
            });
        }
        Ok(address)
    }
}

/// At most 60 characters of untrusted input, for error messages.
fn shorten(s: &str) -> String {
    if s.chars().count() <= 60 {
        s.to_string()
    } else {
        let head: String = s.chars().take(60).collect();
        format!("{head}...")
    }
}
