//! [`IdentityError`]: everything that can go wrong with keys, addresses, signatures and payloads.

use std::path::PathBuf;

use crate::Address;

/// Errors from this crate. Messages name the offending value or offset, never secret bytes.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// A string that is not `0x` + 40 hex digits.
    #[error("invalid address {input:?}: {reason}")]
    InvalidAddress { input: String, reason: &'static str },
    /// A mixed-case address whose EIP-55 checksum is wrong.
    #[error("address {input} has a bad EIP-55 checksum (expected {expected})")]
    BadChecksum { input: String, expected: String },
    /// A private key that is not 32 bytes of hex, or is zero or not below the curve order.
    #[error("invalid private key: {0}")]
    InvalidKey(&'static str),
    /// Reading, creating or syncing a key file failed.
    #[error("key file {}: {source}", path.display())]
    KeyFileIo {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// An existing key file that group or others may access.
    #[error(
        "key file {} has mode {mode:04o}: a node key must not be accessible by group or \
         others; run `chmod 600 {}`",
        path.display(),
        path.display()
    )]
    KeyFilePermissions { path: PathBuf, mode: u32 },
    /// A key file whose contents are not a private key.
    #[error("key file {}: {reason}", path.display())]
    KeyFileFormat { path: PathBuf, reason: String },
    /// A signature whose length is not 65.
    #[error("signature is not 65 bytes (got {0})")]
    SignatureLength(usize),
    /// A signature whose recovery byte is not 27, 28, 0 or 1.
    #[error("signature recovery byte v is {0}; expected 27 or 28 (or 0 or 1)")]
    SignatureRecoveryByte(u8),
    /// A signature with `s` in the upper half of the curve order (malleable form).
    #[error("signature has a high s value (non-canonical, malleable form)")]
    SignatureHighS,
    /// A signature from which no public key can be recovered.
    #[error("invalid signature: {0}")]
    SignatureInvalid(&'static str),
    /// A valid signature by someone other than the identity the payload names.
    #[error("signed by {signer} but the payload names {named}")]
    WrongSigner { signer: Address, named: Address },
    /// Signing a payload with a key that is not the payload's identity.
    #[error("key {key} cannot sign a payload that names {named}")]
    KeyMismatch { key: Address, named: Address },
    /// A payload longer than [`crate::canonical::MAX_PAYLOAD_LEN`].
    #[error("payload is {len} bytes, more than the limit of {max}")]
    PayloadTooLarge { len: usize, max: usize },
    /// A payload that ends before a field does.
    #[error("payload truncated at byte {offset}: {field} needs {needed} bytes, {available} left")]
    Truncated {
        offset: usize,
        field: &'static str,
        needed: usize,
        available: usize,
    },
    /// A payload that does not start with `UNFED`.
    #[error("payload does not start with the magic bytes \"UNFED\"")]
    BadMagic,
    /// A payload version this code does not speak.
    #[error("unsupported payload version {0} (this node speaks version 1)")]
    UnsupportedVersion(u8),
    /// A payload kind byte that is not 1, 2, 3 or 4.
    #[error(
        "unknown payload kind {0} (expected 1 register, 2 heartbeat, 3 unregister or 4 register a guard)"
    )]
    UnknownKind(u8),
    /// A variable-length field over its cap.
    #[error("field {field} is {len} bytes, more than its limit of {max}")]
    FieldTooLong {
        field: &'static str,
        len: usize,
        max: usize,
    },
    /// A string field that is not UTF-8.
    #[error("field {field} at byte {offset} is not valid UTF-8")]
    NotUtf8 { field: &'static str, offset: usize },
    /// A Register payload whose MPC role byte is not 0, 1 or 2.
    #[error(
        "field mpc_role at byte {offset} is {value}; expected 0 (no pair), 1 (party A) or 2 \
         (party B)"
    )]
    BadMpcRole { offset: usize, value: u8 },
    /// Bytes left over after the last field.
    #[error("payload has {0} trailing bytes after its last field")]
    TrailingBytes(usize),
}
