//! The canonical registry payloads: what a node (or a guard relay) signs to register,
//! heartbeat and unregister.
//!
//! Layout (all integers big-endian; specified with test vectors in `docs/protocol.md`):
//! `"UNFED"` (5 bytes), version `1`, kind (`1` register, `2` heartbeat, `3` unregister, `4`
//! register a guard), then
//! the fields in declaration order. An [`Address`] is its 20 raw bytes, a `String` or `Vec<u8>`
//! a `u16` length and the bytes, `u32`/`u64` 4/8 bytes, `[u8; 32]` its 32 raw bytes, an
//! [`MpcRole`] one byte (`0` none, `1` party A, `2` party B) followed, for a party, by its
//! peer's 20-byte [`Address`]. Every value has exactly one encoding and [`Payload::decode`]
//! accepts only that encoding.

use crate::{Address, IdentityError, NodeKey, SIGNATURE_LEN, recover};

/// The first five bytes of every payload.
pub const MAGIC: &[u8; 5] = b"UNFED";
/// The payload format version this code writes and reads.
pub const VERSION: u8 = 1;
/// Kind byte of [`Payload::Register`].
pub const KIND_REGISTER: u8 = 1;
/// Kind byte of [`Payload::Heartbeat`].
pub const KIND_HEARTBEAT: u8 = 2;
/// Kind byte of [`Payload::Unregister`].
pub const KIND_UNREGISTER: u8 = 3;
/// Kind byte of [`Payload::RegisterGuard`].
pub const KIND_REGISTER_GUARD: u8 = 4;
/// Longest accepted encoded payload.
pub const MAX_PAYLOAD_LEN: usize = 1024;
/// Longest `address` (host:port) in bytes.
pub const MAX_ADDRESS_LEN: usize = 255;
/// Longest `model_id` in bytes.
pub const MAX_MODEL_ID_LEN: usize = 255;
/// Longest `onion_key` in bytes.
pub const MAX_ONION_KEY_LEN: usize = 64;
/// Role byte of [`MpcRole::None`].
pub const MPC_ROLE_NONE: u8 = 0;
/// Role byte of [`MpcRole::A`].
pub const MPC_ROLE_A: u8 = 1;
/// Role byte of [`MpcRole::B`].
pub const MPC_ROLE_B: u8 = 2;

/// What a node or a guard relay signs for the registry. Heartbeats and unregistrations name
/// an `(identity, address)` and serve both.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Payload {
    Register(Register),
    Heartbeat(Heartbeat),
    Unregister(Unregister),
    RegisterGuard(RegisterGuard),
}

/// A node announces that it serves one shard of a model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Register {
    /// The signer.
    pub identity: Address,
    /// `host:port` the node serves on (at most 255 bytes of UTF-8).
    pub address: String,
    /// At most 255 bytes of UTF-8.
    pub model_id: String,
    pub shard_index: u32,
    pub manifest_sha256: [u8; 32],
    /// X25519 public key (empty until onion routing lands); at most 64 bytes.
    pub onion_key: Vec<u8>,
    /// The node's part in a two-party MPC pair serving shard 0, if any.
    pub mpc: MpcRole,
    pub timestamp_ms: u64,
    pub nonce: u64,
}

/// A node's role for shard 0 of a model whose manifest says shard 0 runs as a two-party MPC
/// pair. Party A is the entry node clients connect to; party B is reached only through A. Each
/// names the other's identity, and the registry lists a pair only when both do.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum MpcRole {
    /// A plain node: not part of a pair.
    #[default]
    None,
    /// Party A of the pair whose party B has identity `peer`.
    A {
        /// Party B's identity.
        peer: Address,
    },
    /// Party B of the pair whose party A has identity `peer`.
    B {
        /// Party A's identity.
        peer: Address,
    },
}

impl MpcRole {
    /// The role byte: [`MPC_ROLE_NONE`], [`MPC_ROLE_A`] or [`MPC_ROLE_B`].
    pub fn tag(&self) -> u8 {
        match self {
            MpcRole::None => MPC_ROLE_NONE,
            MpcRole::A { .. } => MPC_ROLE_A,
            MpcRole::B { .. } => MPC_ROLE_B,
        }
    }

    /// The other party's identity (`None` for a plain node).
    pub fn peer(&self) -> Option<Address> {
        match self {
            MpcRole::None => None,
            MpcRole::A { peer } | MpcRole::B { peer } => Some(*peer),
        }
    }

    /// The role with `tag` and, for a party, `peer`; `None` for an unknown tag or a peer
    /// given to a plain node or missing for a party.
    pub fn from_parts(tag: u8, peer: Option<Address>) -> Option<Self> {
        match (tag, peer) {
            (MPC_ROLE_NONE, None) => Some(MpcRole::None),
            (MPC_ROLE_A, Some(peer)) => Some(MpcRole::A { peer }),
            (MPC_ROLE_B, Some(peer)) => Some(MpcRole::B { peer }),
            _ => None,
        }
    }
}

impl std::fmt::Display for MpcRole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MpcRole::None => f.write_str("no MPC role"),
            MpcRole::A { peer } => write!(f, "MPC party A with peer {peer}"),
            MpcRole::B { peer } => write!(f, "MPC party B with peer {peer}"),
        }
    }
}

/// A guard relay (`unfed guard`) announces that it relays circuits to entry nodes, so that
/// clients can find it through the registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegisterGuard {
    /// The signer.
    pub identity: Address,
    /// `host:port` the guard serves on (at most 255 bytes of UTF-8).
    pub address: String,
    /// The guard's X25519 public key; at most 64 bytes.
    pub onion_key: Vec<u8>,
    pub timestamp_ms: u64,
    pub nonce: u64,
}

/// A registered node (or guard) says it is still alive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Heartbeat {
    pub identity: Address,
    pub address: String,
    pub active_sessions: u32,
    pub timestamp_ms: u64,
    pub nonce: u64,
}

/// A node (or guard) leaves the registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unregister {
    pub identity: Address,
    pub address: String,
    pub timestamp_ms: u64,
    pub nonce: u64,
}

impl Payload {
    /// The canonical encoding.
    ///
    /// For a payload that passes [`Payload::validate`] (every field within its cap),
    /// `decode(encode(p)) == p`. A payload with an over-long field still encodes (the length
    /// prefix saturates at `u16::MAX`), but [`Payload::decode`] rejects the result, so it can
    /// never be read back as a different value; use [`Payload::try_encode`] to get the error
    /// up front.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Vec::with_capacity(128);
        w.extend_from_slice(MAGIC);
        w.push(VERSION);
        match self {
            Payload::Register(r) => {
                w.push(KIND_REGISTER);
                w.extend_from_slice(&r.identity.0);
                put_bytes(&mut w, r.address.as_bytes());
                put_bytes(&mut w, r.model_id.as_bytes());
                w.extend_from_slice(&r.shard_index.to_be_bytes());
                w.extend_from_slice(&r.manifest_sha256);
                put_bytes(&mut w, &r.onion_key);
                w.push(r.mpc.tag());
                if let Some(peer) = r.mpc.peer() {
                    w.extend_from_slice(&peer.0);
                }
                w.extend_from_slice(&r.timestamp_ms.to_be_bytes());
                w.extend_from_slice(&r.nonce.to_be_bytes());
            }
            Payload::Heartbeat(h) => {
                w.push(KIND_HEARTBEAT);
                w.extend_from_slice(&h.identity.0);
                put_bytes(&mut w, h.address.as_bytes());
                w.extend_from_slice(&h.active_sessions.to_be_bytes());
                w.extend_from_slice(&h.timestamp_ms.to_be_bytes());
                w.extend_from_slice(&h.nonce.to_be_bytes());
            }
            Payload::Unregister(u) => {
                w.push(KIND_UNREGISTER);
                w.extend_from_slice(&u.identity.0);
                put_bytes(&mut w, u.address.as_bytes());
                w.extend_from_slice(&u.timestamp_ms.to_be_bytes());
                w.extend_from_slice(&u.nonce.to_be_bytes());
            }
            Payload::RegisterGuard(g) => {
                w.push(KIND_REGISTER_GUARD);
                w.extend_from_slice(&g.identity.0);
                put_bytes(&mut w, g.address.as_bytes());
                put_bytes(&mut w, &g.onion_key);
                w.extend_from_slice(&g.timestamp_ms.to_be_bytes());
                w.extend_from_slice(&g.nonce.to_be_bytes());
            }
        }
        w
    }

    /// Checks every variable-length field against its cap.
    pub fn validate(&self) -> Result<(), IdentityError> {
        let check = |field: &'static str, len: usize, max: usize| {
            if len > max {
                Err(IdentityError::FieldTooLong { field, len, max })
            } else {
                Ok(())
            }
        };
        match self {
            Payload::Register(r) => {
                check("address", r.address.len(), MAX_ADDRESS_LEN)?;
                check("model_id", r.model_id.len(), MAX_MODEL_ID_LEN)?;
                check("onion_key", r.onion_key.len(), MAX_ONION_KEY_LEN)
            }
            Payload::Heartbeat(h) => check("address", h.address.len(), MAX_ADDRESS_LEN),
            Payload::Unregister(u) => check("address", u.address.len(), MAX_ADDRESS_LEN),
            Payload::RegisterGuard(g) => {
                check("address", g.address.len(), MAX_ADDRESS_LEN)?;
                check("onion_key", g.onion_key.len(), MAX_ONION_KEY_LEN)
            }
        }
    }

    /// [`Payload::validate`], then [`Payload::encode`].
    pub fn try_encode(&self) -> Result<Vec<u8>, IdentityError> {
        self.validate()?;
        Ok(self.encode())
    }

    /// Decodes a canonical payload. Strict: the magic, version and kind must match, every field
    /// must be complete and within its cap, strings must be UTF-8, nothing may follow the last
    /// field, and the whole payload is at most [`MAX_PAYLOAD_LEN`] bytes. Never panics.
    pub fn decode(bytes: &[u8]) -> Result<Self, IdentityError> {
        if bytes.len() > MAX_PAYLOAD_LEN {
            return Err(IdentityError::PayloadTooLarge {
                len: bytes.len(),
                max: MAX_PAYLOAD_LEN,
            });
        }
        let mut r = Reader { bytes, offset: 0 };
        if r.take("magic", MAGIC.len())? != MAGIC {
            return Err(IdentityError::BadMagic);
        }
        let version = r.u8("version")?;
        if version != VERSION {
            return Err(IdentityError::UnsupportedVersion(version));
        }
        let payload = match r.u8("kind")? {
            KIND_REGISTER => Payload::Register(Register {
                identity: r.address()?,
                address: r.string("address", MAX_ADDRESS_LEN)?,
                model_id: r.string("model_id", MAX_MODEL_ID_LEN)?,
                shard_index: r.u32("shard_index")?,
                manifest_sha256: r.array("manifest_sha256")?,
                onion_key: r.bytes("onion_key", MAX_ONION_KEY_LEN)?.to_vec(),
                mpc: r.mpc_role()?,
                timestamp_ms: r.u64("timestamp_ms")?,
                nonce: r.u64("nonce")?,
            }),
            KIND_HEARTBEAT => Payload::Heartbeat(Heartbeat {
                identity: r.address()?,
                address: r.string("address", MAX_ADDRESS_LEN)?,
                active_sessions: r.u32("active_sessions")?,
                timestamp_ms: r.u64("timestamp_ms")?,
                nonce: r.u64("nonce")?,
            }),
            KIND_UNREGISTER => Payload::Unregister(Unregister {
                identity: r.address()?,
                address: r.string("address", MAX_ADDRESS_LEN)?,
                timestamp_ms: r.u64("timestamp_ms")?,
                nonce: r.u64("nonce")?,
            }),
            KIND_REGISTER_GUARD => Payload::RegisterGuard(RegisterGuard {
                identity: r.address()?,
                address: r.string("address", MAX_ADDRESS_LEN)?,
                onion_key: r.bytes("onion_key", MAX_ONION_KEY_LEN)?.to_vec(),
                timestamp_ms: r.u64("timestamp_ms")?,
                nonce: r.u64("nonce")?,
            }),
            other => return Err(IdentityError::UnknownKind(other)),
        };
        let trailing = bytes.len() - r.offset;
        if trailing != 0 {
            return Err(IdentityError::TrailingBytes(trailing));
        }
        Ok(payload)
    }

    /// The identity (signer) the payload names.
    pub fn identity(&self) -> Address {
        match self {
            Payload::Register(r) => r.identity,
            Payload::Heartbeat(h) => h.identity,
            Payload::Unregister(u) => u.identity,
            Payload::RegisterGuard(g) => g.identity,
        }
    }

    /// The `host:port` the payload is about.
    pub fn address(&self) -> &str {
        match self {
            Payload::Register(r) => &r.address,
            Payload::Heartbeat(h) => &h.address,
            Payload::Unregister(u) => &u.address,
            Payload::RegisterGuard(g) => &g.address,
        }
    }

    /// Milliseconds since the Unix epoch when the node made the payload.
    pub fn timestamp_ms(&self) -> u64 {
        match self {
            Payload::Register(r) => r.timestamp_ms,
            Payload::Heartbeat(h) => h.timestamp_ms,
            Payload::Unregister(u) => u.timestamp_ms,
            Payload::RegisterGuard(g) => g.timestamp_ms,
        }
    }

    /// The node's nonce (for replay protection by the registry).
    pub fn nonce(&self) -> u64 {
        match self {
            Payload::Register(r) => r.nonce,
            Payload::Heartbeat(h) => h.nonce,
            Payload::Unregister(u) => u.nonce,
            Payload::RegisterGuard(g) => g.nonce,
        }
    }
}

/// Decodes a payload and checks that `signature` was made by the payload's own identity.
///
/// Fails if the payload does not decode, the signature is malformed, or the recovered signer
/// is not `payload.identity()` ("signed by 0x.. but the payload names 0x..").
pub fn open_signed(payload: &[u8], signature: &[u8]) -> Result<Payload, IdentityError> {
    let decoded = Payload::decode(payload)?;
    let signer = recover(payload, signature)?;
    let named = decoded.identity();
    if signer != named {
        return Err(IdentityError::WrongSigner { signer, named });
    }
    Ok(decoded)
}

/// Validates and encodes `payload` and signs the encoding with `key`, which must be the
/// payload's identity. Returns `(encoded payload, signature)`, ready for [`open_signed`].
pub fn sign_payload(
    key: &NodeKey,
    payload: &Payload,
) -> Result<(Vec<u8>, [u8; SIGNATURE_LEN]), IdentityError> {
    if key.address() != payload.identity() {
        return Err(IdentityError::KeyMismatch {
            key: key.address(),
            named: payload.identity(),
        });
    }
    let bytes = payload.try_encode()?;
    let signature = key.sign(&bytes);
    Ok((bytes, signature))
}

fn put_bytes(w: &mut Vec<u8>, bytes: &[u8]) {
    let len = u16::try_from(bytes.len()).unwrap_or(u16::MAX);
    w.extend_from_slice(&len.to_be_bytes());
    w.extend_from_slice(bytes);
}

/// A cursor over untrusted bytes; every read is bounds-checked.
struct Reader<'a> {
    bytes: &'a [u8],
    offset: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, field: &'static str, needed: usize) -> Result<&'a [u8], IdentityError> {
        let available = self.bytes.len() - self.offset;
        if needed > available {
            return Err(IdentityError::Truncated {
                offset: self.offset,
                field,
                needed,
                available,
            });
        }
        let out = &self.bytes[self.offset..self.offset + needed];
        self.offset += needed;
        Ok(out)
    }

    fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], IdentityError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(field, N)?);
        Ok(out)
    }

    fn u8(&mut self, field: &'static str) -> Result<u8, IdentityError> {
        Ok(self.array::<1>(field)?[0])
    }

    fn u32(&mut self, field: &'static str) -> Result<u32, IdentityError> {
        Ok(u32::from_be_bytes(self.array(field)?))
    }

    fn u64(&mut self, field: &'static str) -> Result<u64, IdentityError> {
        Ok(u64::from_be_bytes(self.array(field)?))
    }

    fn address(&mut self) -> Result<Address, IdentityError> {
        Ok(Address(self.array("identity")?))
    }

    /// A role byte, then (for a party) the peer's address.
    fn mpc_role(&mut self) -> Result<MpcRole, IdentityError> {
        let offset = self.offset;
        match self.u8("mpc_role")? {
            MPC_ROLE_NONE => Ok(MpcRole::None),
            MPC_ROLE_A => Ok(MpcRole::A {
                peer: Address(self.array("mpc_peer")?),
            }),
            MPC_ROLE_B => Ok(MpcRole::B {
                peer: Address(self.array("mpc_peer")?),
            }),
            value => Err(IdentityError::BadMpcRole { offset, value }),
        }
    }

    /// A `u16` big-endian length, checked against `max` before the bytes are read.
    fn bytes(&mut self, field: &'static str, max: usize) -> Result<&'a [u8], IdentityError> {
        let len = usize::from(u16::from_be_bytes(self.array(field)?));
        if len > max {
            return Err(IdentityError::FieldTooLong { field, len, max });
        }
        self.take(field, len)
    }

    fn string(&mut self, field: &'static str, max: usize) -> Result<String, IdentityError> {
        let start = self.offset + 2;
        let bytes = self.bytes(field, max)?;
        std::str::from_utf8(bytes)
            .map(str::to_owned)
            .map_err(|_| IdentityError::NotUtf8 {
                field,
                offset: start,
            })
    }
}
