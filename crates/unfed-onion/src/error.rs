//! Typed errors: one enum per stage (keys, circuit build, header peel, session messages, replies).
//!
//! Messages say what was wrong and never include key material, plaintext or header bytes.

use thiserror::Error;

use crate::session::Direction;

/// A public key that must not be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum KeyError {
    /// Not the canonical encoding of a point on Curve25519 (on the twist, u ≥ p, or bit 255 set).
    #[error("onion public key is not a canonical Curve25519 point")]
    NotOnCurve,
    /// A point of small order, or one with a small-order component: every shared secret with it
    /// would be predictable, or the client and the hop would derive different ones.
    #[error("onion public key is not in the prime-order subgroup")]
    NotPrimeOrder,
}

/// Why the client could not build a circuit header.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum BuildError {
    /// A route needs at least one hop.
    #[error("a circuit needs at least one hop")]
    EmptyRoute,
    /// More hops than the fixed header has room for.
    #[error("route has {hops} hops, at most {max} fit in the header")]
    TooManyHops {
        /// Hops asked for.
        hops: usize,
        /// [`crate::MAX_HOPS`].
        max: usize,
    },
    /// A next-hop field longer than [`crate::MAX_NEXT_HOP_LEN`].
    #[error("hop {hop}: next-hop field is {len} bytes, at most {max} allowed")]
    NextHopTooLong {
        /// Position of the hop in the route (0 = first).
        hop: usize,
        /// Length given.
        len: usize,
        /// [`crate::MAX_NEXT_HOP_LEN`].
        max: usize,
    },
    /// A hop before the last has an empty next-hop field, which would make it act as the last.
    #[error("hop {hop}: next-hop field is empty but the route continues after it")]
    MissingNextHop {
        /// Position of the hop in the route.
        hop: usize,
    },
    /// The last hop has a next-hop field; it must be empty so the hop knows it is the last.
    #[error("last hop (hop {hop}) must have an empty next-hop field")]
    LastHopHasNextHop {
        /// Position of the last hop.
        hop: usize,
    },
    /// The shared secret with this hop's key is all zeros (a small-order key slipped through).
    #[error("hop {hop}: onion public key gives a degenerate shared secret")]
    DegenerateKey {
        /// Position of the hop in the route.
        hop: usize,
    },
}

/// Why a hop rejected a circuit setup header.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PeelError {
    /// The header is not exactly [`crate::HEADER_LEN`] bytes.
    #[error("onion header must be exactly {expected} bytes, got {got}")]
    Length {
        /// Bytes received.
        got: usize,
        /// [`crate::HEADER_LEN`].
        expected: usize,
    },
    /// The group element is of small order: the shared secret would be all zeros.
    #[error("onion header carries a small-order group element")]
    DegenerateElement,
    /// The header MAC does not verify: the header was modified, or it is not for this hop's key.
    #[error("onion header MAC does not verify (tampered, or built for another key)")]
    Mac,
    /// The MAC verified but this hop's routing block is malformed (the builder broke the format).
    #[error("onion routing block is malformed: {0}")]
    MalformedBlock(&'static str),
    /// This header (its shared secret) was already processed under the current onion key.
    #[error("replayed onion header: this replay tag was already seen under the current onion key")]
    Replayed,
    /// The replay cache is full; the hop must rotate its onion key before accepting more setups.
    #[error("replay cache is full ({capacity} tags): rotate the onion key")]
    ReplayCacheFull {
        /// Capacity of the cache.
        capacity: usize,
    },
}

/// Why a per-session message was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SessionError {
    /// Shorter than the frame header plus tag.
    #[error("session frame is {len} bytes, shorter than the {min}-byte minimum")]
    FrameTooShort {
        /// Bytes received.
        len: usize,
        /// [`crate::FRAME_OVERHEAD`].
        min: usize,
    },
    /// Longer than [`crate::MAX_MESSAGE_LEN`] plus overhead (or the plaintext to seal is).
    #[error("session message of {len} bytes exceeds the {max}-byte limit")]
    TooLong {
        /// Length of the frame or plaintext.
        len: usize,
        /// The limit it was checked against.
        max: usize,
    },
    /// The direction byte is neither forward nor backward.
    #[error("session frame has unknown direction byte {0:#04x}")]
    UnknownDirection(u8),
    /// A frame for the other direction (for example one of our own frames reflected back).
    #[error("session frame travels {got:?}, this receiver accepts only {expected:?}")]
    WrongDirection {
        /// Direction this receiver accepts.
        expected: Direction,
        /// Direction the frame says.
        got: Direction,
    },
    /// The frame does not authenticate: modified, or from another session, key or direction.
    #[error("session frame {counter} does not authenticate (tampered, or not from this session)")]
    Authentication {
        /// Counter the frame claims.
        counter: u64,
    },
    /// An authentic frame that was already accepted (a replay or a duplicate).
    #[error("session frame {counter} replayed: already accepted, next expected is {expected}")]
    Replayed {
        /// Counter of the frame.
        counter: u64,
        /// Counter the receiver expects next.
        expected: u64,
    },
    /// An authentic frame from later in the stream: an earlier one was dropped or reordered.
    #[error(
        "session frame {counter} out of order: expected {expected} first (dropped or reordered)"
    )]
    OutOfOrder {
        /// Counter of the frame.
        counter: u64,
        /// Counter the receiver expects next.
        expected: u64,
    },
    /// The sender has used every counter value; the session must be replaced.
    #[error("session counter exhausted: build a new circuit")]
    CounterExhausted,
}

/// Why a return-path reply was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ReplyError {
    /// The cell length is outside [`crate::MIN_REPLY_CELL_LEN`]..=[`crate::MAX_REPLY_CELL_LEN`].
    #[error("reply cell is {len} bytes, allowed {min}..={max}")]
    CellLength {
        /// Length given.
        len: usize,
        /// Smallest allowed cell.
        min: usize,
        /// Largest allowed cell.
        max: usize,
    },
    /// The plaintext does not fit in the requested cell.
    #[error("reply of {len} bytes does not fit a {cell_len}-byte cell (needs {needed})")]
    TooLong {
        /// Plaintext length.
        len: usize,
        /// Cell length asked for.
        cell_len: usize,
        /// Cell length it would need.
        needed: usize,
    },
    /// No hop's layer authenticates: the cell was modified at some layer, replayed, reordered,
    /// or belongs to another circuit.
    #[error(
        "reply cell rejected: no hop of the circuit authenticates it (tampered, replayed or reordered)"
    )]
    Unauthenticated,
    /// The cell authenticated but its inner length field is inconsistent (a broken origin hop).
    #[error("reply cell from hop {hop} is malformed: {what}")]
    Malformed {
        /// Hop that sealed it.
        hop: usize,
        /// What is wrong.
        what: &'static str,
    },
    /// The client unwrapper needs between 1 and [`crate::MAX_HOPS`] hops.
    #[error("reply unwrapper needs 1..={max} hops, got {hops}")]
    HopCount {
        /// Hops given.
        hops: usize,
        /// [`crate::MAX_HOPS`].
        max: usize,
    },
    /// Every counter value is used; the circuit must be replaced.
    #[error("reply counter exhausted: build a new circuit")]
    CounterExhausted,
}
