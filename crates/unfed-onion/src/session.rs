//! Per-session keys and the per-message channel: AES-256-GCM frames with an explicit
//! 64-bit counter per direction, accepted strictly in order.
//!
//! Frame: `direction (1) || counter (8, big-endian) || ciphertext || tag (16)`.
//! Nonce: `direction (1) || 00 00 00 || counter (8, big-endian)`.
//! Associated data: `"unfed-onion v1 message" || session id (16) || direction (1)`, and for a
//! frame that binds parts travelling beside it, their BLAKE3 digest (32) after that.

use std::fmt;

use chacha20poly1305::Nonce;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, UnboundKey};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use crate::error::SessionError;
use crate::reply::ReplyWrapper;

/// Bytes of a symmetric session key.
pub const SESSION_KEY_LEN: usize = 32;
/// Bytes of a per-hop session id.
pub const SESSION_ID_LEN: usize = 16;
/// Largest plaintext one session frame carries (64 MiB: a long prompt's hidden states).
pub const MAX_MESSAGE_LEN: usize = 64 << 20;
/// Bytes a frame adds to its plaintext: direction, counter and tag.
pub const FRAME_OVERHEAD: usize = 1 + 8 + TAG_LEN;

pub(crate) const TAG_LEN: usize = 16;
const MESSAGE_AD_LABEL: &[u8] = b"unfed-onion v1 message";

/// Which way a message travels on a circuit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Client to hop, under the hop's forward key (byte `0x01`).
    Forward,
    /// Hop to client, under the hop's backward key (byte `0x02`).
    Backward,
}

impl Direction {
    /// The byte that names this direction in frames and nonces.
    pub fn byte(self) -> u8 {
        match self {
            Direction::Forward => 0x01,
            Direction::Backward => 0x02,
        }
    }

    /// The direction a byte names, if any.
    pub fn from_byte(byte: u8) -> Option<Self> {
        match byte {
            0x01 => Some(Direction::Forward),
            0x02 => Some(Direction::Backward),
            _ => None,
        }
    }
}

/// A hop's per-session id (16 bytes from the hop's own key derivation, so every hop of a
/// circuit has a different one). Not secret from that hop; it names the session there.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct SessionId(pub [u8; SESSION_ID_LEN]);

impl SessionId {
    /// The 16 bytes.
    pub fn as_bytes(&self) -> &[u8; SESSION_ID_LEN] {
        &self.0
    }
}

impl fmt::Debug for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SessionId(")?;
        for byte in &self.0 {
            write!(f, "{byte:02x}")?;
        }
        write!(f, ")")
    }
}

/// The symmetric keys one hop shares with the client after circuit setup, derived by both from
/// that hop's X25519 shared secret. Zeroized on drop; `Debug` shows only the session id.
#[derive(Clone)]
pub struct SessionKeys {
    forward: Zeroizing<[u8; SESSION_KEY_LEN]>,
    backward: Zeroizing<[u8; SESSION_KEY_LEN]>,
    session_id: SessionId,
}

impl SessionKeys {
    pub(crate) fn new(
        forward: [u8; SESSION_KEY_LEN],
        backward: [u8; SESSION_KEY_LEN],
        session_id: [u8; SESSION_ID_LEN],
    ) -> Self {
        Self {
            forward: Zeroizing::new(forward),
            backward: Zeroizing::new(backward),
            session_id: SessionId(session_id),
        }
    }

    /// The keys of a link between two consecutive hops, from a random 32-byte secret the client
    /// chose and put in both hops' payloads: the upstream hop sends [`Direction::Forward`]
    /// frames that only the downstream hop (and the client) can open. Neither hop's circuit
    /// keys are involved, so the upstream hop learns nothing of the downstream hop's.
    pub fn for_link(secret: &[u8; 32]) -> Self {
        crate::kdf::derive_link(secret)
    }

    /// This hop's session id.
    pub fn session_id(&self) -> SessionId {
        self.session_id
    }

    /// The forward (client → hop) key. For known-answer tests; never log it.
    pub fn forward_key(&self) -> &[u8; SESSION_KEY_LEN] {
        &self.forward
    }

    /// The backward (hop → client) key. For known-answer tests; never log it.
    pub fn backward_key(&self) -> &[u8; SESSION_KEY_LEN] {
        &self.backward
    }

    /// A sender for `direction`: the client sends [`Direction::Forward`], the hop
    /// [`Direction::Backward`]. Counters start at 0; make one sender per direction per session.
    pub fn sender(&self, direction: Direction) -> SessionSender {
        SessionSender {
            channel: self.channel(direction),
            next: 0,
        }
    }

    /// A receiver for `direction`: the hop receives [`Direction::Forward`], the client
    /// [`Direction::Backward`].
    pub fn receiver(&self, direction: Direction) -> SessionReceiver {
        SessionReceiver {
            channel: self.channel(direction),
            expected: 0,
        }
    }

    /// The hop's side of the return path (see [`crate::reply`]).
    pub fn reply_wrapper(&self) -> ReplyWrapper {
        ReplyWrapper::new(self)
    }

    fn channel(&self, direction: Direction) -> Channel {
        let key = match direction {
            Direction::Forward => &self.forward,
            Direction::Backward => &self.backward,
        };
        let mut ad = Vec::with_capacity(MESSAGE_AD_LABEL.len() + SESSION_ID_LEN + 1);
        ad.extend_from_slice(MESSAGE_AD_LABEL);
        ad.extend_from_slice(&self.session_id.0);
        ad.push(direction.byte());
        Channel {
            aead: LessSafeKey::new(
                UnboundKey::new(&AES_256_GCM, key.as_ref()).expect("a 32-byte key"),
            ),
            direction,
            ad,
        }
    }
}

impl PartialEq for SessionKeys {
    /// Constant-time comparison of all three values.
    fn eq(&self, other: &Self) -> bool {
        let forward = self.forward[..].ct_eq(&other.forward[..]);
        let backward = self.backward[..].ct_eq(&other.backward[..]);
        let id = self.session_id.0.ct_eq(&other.session_id.0);
        (forward & backward & id).into()
    }
}

impl Eq for SessionKeys {}

impl fmt::Debug for SessionKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionKeys")
            .field("session_id", &self.session_id)
            .finish_non_exhaustive()
    }
}

/// Seals messages for one direction of one hop's session, counter 0, 1, 2, …
pub struct SessionSender {
    channel: Channel,
    next: u64,
}

impl SessionSender {
    /// Seal `plaintext` into a frame ([`FRAME_OVERHEAD`] bytes longer) and advance the counter.
    pub fn seal(&mut self, plaintext: &[u8]) -> Result<Vec<u8>, SessionError> {
        self.seal_bound(plaintext, &[])
    }

    /// [`Self::seal`], the frame also authenticating `bound`, bytes that travel beside it
    /// unencrypted: the associated data is the channel's followed by the BLAKE3 digest of, for
    /// each part, its length (u64, big-endian) and its bytes. With no parts it is the
    /// channel's alone, as `seal`'s.
    pub fn seal_bound(
        &mut self,
        plaintext: &[u8],
        bound: &[&[u8]],
    ) -> Result<Vec<u8>, SessionError> {
        self.seal_written(
            plaintext.len(),
            |frame| frame.extend_from_slice(plaintext),
            bound,
        )
    }

    /// [`Self::seal_bound`] of the plaintext `write` appends to the frame's buffer (a message
    /// encoded straight into it rather than copied in; `len`, its length, sizes the buffer).
    pub fn seal_written(
        &mut self,
        len: usize,
        write: impl FnOnce(&mut Vec<u8>),
        bound: &[&[u8]],
    ) -> Result<Vec<u8>, SessionError> {
        if self.next == u64::MAX {
            return Err(SessionError::CounterExhausted);
        }
        let counter = self.next;
        let mut frame = Vec::with_capacity(len + FRAME_OVERHEAD);
        frame.push(self.channel.direction.byte());
        frame.extend_from_slice(&counter.to_be_bytes());
        write(&mut frame);
        let len = frame.len() - 9;
        if len > MAX_MESSAGE_LEN {
            return Err(SessionError::TooLong {
                len,
                max: MAX_MESSAGE_LEN,
            });
        }
        let nonce = ring_nonce(self.channel.direction.byte(), counter);
        let tag = self
            .channel
            .aead
            .seal_in_place_separate_tag(nonce, self.channel.aad(bound), &mut frame[9..])
            .map_err(|_| SessionError::TooLong {
                len,
                max: MAX_MESSAGE_LEN,
            })?;
        frame.extend_from_slice(tag.as_ref());
        self.next += 1;
        Ok(frame)
    }

    /// The counter the next frame will carry.
    pub fn next_counter(&self) -> u64 {
        self.next
    }

    /// The direction this sender seals for.
    pub fn direction(&self) -> Direction {
        self.channel.direction
    }
}

impl fmt::Debug for SessionSender {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionSender")
            .field("direction", &self.channel.direction)
            .field("next", &self.next)
            .finish_non_exhaustive()
    }
}

/// Opens the frames of one direction of one hop's session, accepting only the next counter.
///
/// A refused frame leaves the receiver unchanged. Callers should tear the session down on any
/// error: on an ordered stream every error means an attack or a broken peer.
pub struct SessionReceiver {
    channel: Channel,
    expected: u64,
}

impl SessionReceiver {
    /// Authenticate and decrypt `frame`. Checks, in order: length, direction byte, the AEAD tag
    /// (under the counter the frame claims), then that the counter is the next one.
    pub fn open(&mut self, frame: &[u8]) -> Result<Vec<u8>, SessionError> {
        self.open_bound(frame, &[])
    }

    /// [`Self::open`] for a frame sealed with [`SessionSender::seal_bound`]: it opens only
    /// with the same `bound` parts.
    pub fn open_bound(&mut self, frame: &[u8], bound: &[&[u8]]) -> Result<Vec<u8>, SessionError> {
        if frame.len() < FRAME_OVERHEAD {
            return Err(SessionError::FrameTooShort {
                len: frame.len(),
                min: FRAME_OVERHEAD,
            });
        }
        if frame.len() > MAX_MESSAGE_LEN + FRAME_OVERHEAD {
            return Err(SessionError::TooLong {
                len: frame.len(),
                max: MAX_MESSAGE_LEN + FRAME_OVERHEAD,
            });
        }
        let got = Direction::from_byte(frame[0]).ok_or(SessionError::UnknownDirection(frame[0]))?;
        if got != self.channel.direction {
            return Err(SessionError::WrongDirection {
                expected: self.channel.direction,
                got,
            });
        }
        let mut counter_bytes = [0u8; 8];
        counter_bytes.copy_from_slice(&frame[1..9]);
        let counter = u64::from_be_bytes(counter_bytes);
        // Ciphertext and tag, opened in place: the plaintext is what precedes the tag.
        let mut plaintext = frame[9..].to_vec();
        self.channel
            .aead
            .open_in_place(
                ring_nonce(frame[0], counter),
                self.channel.aad(bound),
                &mut plaintext,
            )
            .map_err(|_| SessionError::Authentication { counter })?;
        plaintext.truncate(plaintext.len() - TAG_LEN);
        if counter < self.expected {
            return Err(SessionError::Replayed {
                counter,
                expected: self.expected,
            });
        }
        if counter > self.expected {
            return Err(SessionError::OutOfOrder {
                counter,
                expected: self.expected,
            });
        }
        self.expected = self
            .expected
            .checked_add(1)
            .ok_or(SessionError::CounterExhausted)?;
        Ok(plaintext)
    }

    /// The counter this receiver accepts next.
    pub fn expected_counter(&self) -> u64 {
        self.expected
    }

    /// The direction this receiver accepts.
    pub fn direction(&self) -> Direction {
        self.channel.direction
    }
}

impl fmt::Debug for SessionReceiver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionReceiver")
            .field("direction", &self.channel.direction)
            .field("expected", &self.expected)
            .finish_non_exhaustive()
    }
}

/// AES-256-GCM through ring: on CPUs with AES and carry-less multiply instructions its
/// assembly seals the megabyte frames of an MPC step at three to four times
/// ChaCha20-Poly1305's speed (docs/onion.md); the nonces are the counters, as before.
struct Channel {
    aead: LessSafeKey,
    direction: Direction,
    ad: Vec<u8>,
}

impl Channel {
    /// The associated data of a frame that authenticates `bound` (see
    /// [`SessionSender::seal_bound`]). A digest rather than the parts themselves: the parts
    /// are megabytes (an MPC step's common words), and BLAKE3 reads them at twice GHASH's
    /// speed on associated data, with no copy into one buffer.
    fn aad(&self, bound: &[&[u8]]) -> Aad<std::borrow::Cow<'_, [u8]>> {
        if bound.is_empty() {
            return Aad::from(std::borrow::Cow::Borrowed(&self.ad[..]));
        }
        let mut digest = blake3::Hasher::new();
        for part in bound {
            digest.update(&(part.len() as u64).to_be_bytes());
            digest.update(part);
        }
        let mut ad = Vec::with_capacity(self.ad.len() + blake3::OUT_LEN);
        ad.extend_from_slice(&self.ad);
        ad.extend_from_slice(digest.finalize().as_bytes());
        Aad::from(std::borrow::Cow::Owned(ad))
    }
}

/// `domain (1) || 00 00 00 || counter (8, big-endian)`.
pub(crate) fn nonce(domain: u8, counter: u64) -> Nonce {
    Nonce::from(nonce_bytes(domain, counter))
}

fn ring_nonce(domain: u8, counter: u64) -> ring::aead::Nonce {
    ring::aead::Nonce::assume_unique_for_key(nonce_bytes(domain, counter))
}

fn nonce_bytes(domain: u8, counter: u64) -> [u8; 12] {
    let mut bytes = [0u8; 12];
    bytes[0] = domain;
    bytes[4..].copy_from_slice(&counter.to_be_bytes());
    bytes
}
