//! Onion circuits for UNFED: the circuit setup header, replay protection, per-session message
//! protection and the encrypted return path. Pure functions and small state machines: no I/O,
//! no clock, no global randomness (every random choice comes from an injected RNG).
//!
//! - [`keys`]: [`OnionSecretKey`] / [`OnionPublicKey`] (X25519).
//! - [`header`]: [`build`] a fixed-size ([`HEADER_LEN`] bytes) Sphinx-style header for a route
//!   of up to [`MAX_HOPS`] hops; [`peel`] one layer at a hop, which learns only its next hop, its
//!   [`HopPayload`] and its [`SessionKeys`].
//! - [`replay`]: [`ReplayTag`], [`ReplayCache`] (bounded, never forgets while the key is in
//!   use) and [`OnionHop`] (peel + replay check).
//! - [`session`]: [`SessionSender`] / [`SessionReceiver`], AES-256-GCM frames with a
//!   64-bit counter per direction, accepted strictly in order.
//! - [`reply`]: [`ReplyWrapper`] (a hop seals or relays a fixed-length reply cell) and
//!   [`ReplyUnwrapper`] (the client strips every layer).
//!
//! The byte-level format, the key derivation labels, the threat model and the known-answer
//! vectors are specified in `docs/onion.md`.
//!
//! ```
//! use rand_core::{CryptoRng, RngCore};
//! use unfed_onion::{Direction, HopPayload, OnionHop, OnionSecretKey, ReplyUnwrapper, RouteHop, build};
//!
//! # struct Counter(u64);
//! # impl RngCore for Counter {
//! #     fn next_u32(&mut self) -> u32 { self.next_u64() as u32 }
//! #     fn next_u64(&mut self) -> u64 { self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407); self.0 }
//! #     fn fill_bytes(&mut self, dst: &mut [u8]) { for b in dst { *b = (self.next_u64() >> 56) as u8 } }
//! # }
//! # impl CryptoRng for Counter {}
//! # let mut rng = Counter(7); // use a real CSPRNG (rand's OsRng / ThreadRng) in production
//! let mut hop_a = OnionHop::new(OnionSecretKey::generate(&mut rng), 1024);
//! let mut hop_b = OnionHop::new(OnionSecretKey::generate(&mut rng), 1024);
//! let route = [
//!     RouteHop { public_key: hop_a.public_key(), next_hop: b"127.0.0.1:50062".to_vec(), payload: HopPayload::default() },
//!     RouteHop { public_key: hop_b.public_key(), next_hop: Vec::new(), payload: HopPayload::default() },
//! ];
//! let circuit = build(&mut rng, &route)?;
//!
//! let at_a = hop_a.process(circuit.header.as_bytes())?;
//! assert_eq!(at_a.next_hop(), b"127.0.0.1:50062");
//! let unfed_onion::Role::Relay { header, .. } = &at_a.role else { unreachable!() };
//! let at_b = hop_b.process(header.as_bytes())?;
//! assert!(at_b.is_last());
//! assert_eq!(at_b.keys, circuit.hop_keys[1]);
//!
//! // The last hop answers; hop A adds its layer; the client strips both.
//! let cell = at_b.keys.reply_wrapper().seal(b"token 42", 64)?;
//! let cell = at_a.keys.reply_wrapper().relay(&cell)?;
//! let mut client = ReplyUnwrapper::new(&circuit.hop_keys)?;
//! assert_eq!(client.unwrap_from_last(&cell)?, b"token 42");
//!
//! // Per-token messages between the client and one hop.
//! let frame = circuit.hop_keys[0].sender(Direction::Forward).seal(b"options")?;
//! assert_eq!(at_a.keys.receiver(Direction::Forward).open(&frame)?, b"options");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod error;
pub mod header;
pub mod kdf;
pub mod keys;
pub mod replay;
pub mod reply;
pub mod session;

pub use error::{BuildError, KeyError, PeelError, ReplyError, SessionError};
pub use header::{
    ALPHA_LEN, BETA_LEN, BuiltCircuit, HEADER_LEN, HOP_BLOCK_LEN, HOP_PAYLOAD_LEN, HopPayload,
    MAC_LEN, MAX_HOPS, MAX_NEXT_HOP_LEN, OnionHeader, Peeled, Role, RouteHop, build, peel,
};
pub use keys::{KEY_BYTES, OnionPublicKey, OnionSecretKey};
pub use replay::{OnionHop, REPLAY_TAG_LEN, ReplayCache, ReplayTag};
pub use reply::{
    MAX_REPLY_CELL_LEN, MIN_REPLY_CELL_LEN, REPLY_OVERHEAD, Reply, ReplyUnwrapper, ReplyWrapper,
    reply_cell_len,
};
pub use session::{
    Direction, FRAME_OVERHEAD, MAX_MESSAGE_LEN, SESSION_ID_LEN, SESSION_KEY_LEN, SessionId,
    SessionKeys, SessionReceiver, SessionSender,
};
