//! The return path: fixed-length reply cells, sealed by the hop that originates them and
//! re-encrypted by every hop on the way back, like Tor's backward cells.
//!
//! - Origin hop (usually the last): `cell = ChaCha20-Poly1305(backward key,
//!   nonce(0x03, n), AD = "unfed-onion v1 reply" || session id, len (4, BE) || plaintext ||
//!   zero padding)`, exactly the cell length it was asked for.
//! - Relay hop: `cell' = cell XOR ChaCha20(backward key, nonce(0x04, n))`: same length, and
//!   no byte in common with what it received.
//! - `n` is the hop's reply counter: one per cell it emits (sealed or relayed), implicit.
//! - The client, holding every hop's backward key and counter, strips layer 0, 1, …: at each
//!   hop it first tries that hop's AEAD; if it opens, that hop originated the cell.
//!
//! Every hop sees the same cell length, so the length tells no hop how far the origin is.
//! Relays do not authenticate; any change at any layer makes the origin's tag fail at the client.

use std::fmt;

use chacha20::ChaCha20;
use chacha20::cipher::{KeyIvInit, StreamCipher};
use chacha20poly1305::aead::AeadInPlace;
use chacha20poly1305::{ChaCha20Poly1305, Key, KeyInit, Tag};
use zeroize::Zeroizing;

use crate::error::ReplyError;
use crate::header::MAX_HOPS;
use crate::session::{SESSION_ID_LEN, SESSION_KEY_LEN, SessionKeys, TAG_LEN, nonce};

/// Bytes a reply cell adds to its plaintext: the length field and the tag.
pub const REPLY_OVERHEAD: usize = 4 + TAG_LEN;
/// Smallest reply cell (an empty reply).
pub const MIN_REPLY_CELL_LEN: usize = REPLY_OVERHEAD;
/// Largest reply cell: 16 MiB of plaintext plus overhead.
pub const MAX_REPLY_CELL_LEN: usize = (16 << 20) + REPLY_OVERHEAD;

const SEAL_DOMAIN: u8 = 0x03;
const RELAY_DOMAIN: u8 = 0x04;
const REPLY_AD_LABEL: &[u8] = b"unfed-onion v1 reply";

/// The smallest cell that holds `plaintext_len` bytes. Pad several replies to one size class
/// (for example the largest they can be) so that their lengths do not tell them apart.
pub fn reply_cell_len(plaintext_len: usize) -> usize {
    plaintext_len.saturating_add(REPLY_OVERHEAD)
}

/// A hop's side of the return path, made by [`SessionKeys::reply_wrapper`].
pub struct ReplyWrapper {
    layer: Layer,
    next: u64,
}

impl ReplyWrapper {
    pub(crate) fn new(keys: &SessionKeys) -> Self {
        Self {
            layer: Layer::new(keys),
            next: 0,
        }
    }

    /// Seal `plaintext` as a new reply cell of exactly `cell_len` bytes (this hop is the origin).
    pub fn seal(&mut self, plaintext: &[u8], cell_len: usize) -> Result<Vec<u8>, ReplyError> {
        check_cell_len(cell_len)?;
        let needed = reply_cell_len(plaintext.len());
        if needed > cell_len {
            return Err(ReplyError::TooLong {
                len: plaintext.len(),
                cell_len,
                needed,
            });
        }
        let counter = self.take_counter()?;
        let mut cell = vec![0u8; cell_len];
        // plaintext.len() ≤ cell_len - 20 ≤ 16 MiB, so it fits in 4 bytes.
        cell[..4].copy_from_slice(&(plaintext.len() as u32).to_be_bytes());
        cell[4..4 + plaintext.len()].copy_from_slice(plaintext);
        let body_len = cell_len - TAG_LEN;
        let tag = self
            .layer
            .aead
            .encrypt_in_place_detached(
                &nonce(SEAL_DOMAIN, counter),
                &self.layer.ad,
                &mut cell[..body_len],
            )
            .map_err(|_| ReplyError::CellLength {
                len: cell_len,
                min: MIN_REPLY_CELL_LEN,
                max: MAX_REPLY_CELL_LEN,
            })?;
        cell[body_len..].copy_from_slice(&tag);
        Ok(cell)
    }

    /// Add this hop's layer to a cell coming back from the next hop.
    pub fn relay(&mut self, cell: &[u8]) -> Result<Vec<u8>, ReplyError> {
        check_cell_len(cell.len())?;
        let counter = self.take_counter()?;
        let mut out = cell.to_vec();
        self.layer.relay_stream(counter, &mut out);
        Ok(out)
    }

    /// The counter the next cell (sealed or relayed) will use.
    pub fn next_counter(&self) -> u64 {
        self.next
    }

    fn take_counter(&mut self) -> Result<u64, ReplyError> {
        let counter = self.next;
        self.next = counter.checked_add(1).ok_or(ReplyError::CounterExhausted)?;
        Ok(counter)
    }
}

impl fmt::Debug for ReplyWrapper {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReplyWrapper")
            .field("next", &self.next)
            .finish_non_exhaustive()
    }
}

/// A reply the client opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// Position of the hop that sealed it (the last hop is `hop_count - 1`).
    pub origin: usize,
    /// The plaintext.
    pub plaintext: Vec<u8>,
}

/// The client's side of the return path: every hop's backward key and reply counter.
pub struct ReplyUnwrapper {
    hops: Vec<(Layer, u64)>,
}

impl ReplyUnwrapper {
    /// For a circuit whose hops derived `keys` (in route order, 1..=[`MAX_HOPS`]).
    pub fn new(keys: &[SessionKeys]) -> Result<Self, ReplyError> {
        if keys.is_empty() || keys.len() > MAX_HOPS {
            return Err(ReplyError::HopCount {
                hops: keys.len(),
                max: MAX_HOPS,
            });
        }
        Ok(Self {
            hops: keys.iter().map(|k| (Layer::new(k), 0)).collect(),
        })
    }

    /// Hops on the circuit.
    pub fn hop_count(&self) -> usize {
        self.hops.len()
    }

    /// Strip the layers of `cell` in route order and open it at the hop that sealed it.
    /// Counters advance only when the cell is accepted; on [`ReplyError::Unauthenticated`] the
    /// circuit should be torn down.
    pub fn unwrap(&mut self, cell: &[u8]) -> Result<Reply, ReplyError> {
        let reply = self.open(cell)?;
        self.commit(reply.origin)?;
        Ok(reply)
    }

    /// Like [`ReplyUnwrapper::unwrap`], but only a cell sealed by the last hop is accepted.
    pub fn unwrap_from_last(&mut self, cell: &[u8]) -> Result<Vec<u8>, ReplyError> {
        let reply = self.open(cell)?;
        if reply.origin != self.hops.len() - 1 {
            return Err(ReplyError::Unauthenticated);
        }
        self.commit(reply.origin)?;
        Ok(reply.plaintext)
    }

    fn open(&self, cell: &[u8]) -> Result<Reply, ReplyError> {
        check_cell_len(cell.len())?;
        let mut work = Zeroizing::new(cell.to_vec());
        let body_len = cell.len() - TAG_LEN;
        for (origin, (layer, counter)) in self.hops.iter().enumerate() {
            let (body, tag) = work.split_at_mut(body_len);
            let tag = *Tag::from_slice(tag);
            // On failure the AEAD leaves `body` untouched (it checks the tag before decrypting).
            let opened = layer
                .aead
                .decrypt_in_place_detached(&nonce(SEAL_DOMAIN, *counter), &layer.ad, body, &tag)
                .is_ok();
            if opened {
                let plaintext = parse_sealed(body, origin)?;
                return Ok(Reply { origin, plaintext });
            }
            layer.relay_stream(*counter, &mut work);
        }
        Err(ReplyError::Unauthenticated)
    }

    /// Hops 0..=origin each emitted one more cell.
    fn commit(&mut self, origin: usize) -> Result<(), ReplyError> {
        let hops = &mut self.hops[..=origin];
        if hops.iter().any(|(_, counter)| *counter == u64::MAX) {
            return Err(ReplyError::CounterExhausted);
        }
        for (_, counter) in hops {
            *counter += 1;
        }
        Ok(())
    }
}

impl fmt::Debug for ReplyUnwrapper {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReplyUnwrapper")
            .field("hops", &self.hops.len())
            .finish_non_exhaustive()
    }
}

struct Layer {
    key: Zeroizing<[u8; SESSION_KEY_LEN]>,
    aead: ChaCha20Poly1305,
    ad: Vec<u8>,
}

impl Layer {
    fn new(keys: &SessionKeys) -> Self {
        let key = Zeroizing::new(*keys.backward_key());
        let mut ad = Vec::with_capacity(REPLY_AD_LABEL.len() + SESSION_ID_LEN);
        ad.extend_from_slice(REPLY_AD_LABEL);
        ad.extend_from_slice(keys.session_id().as_bytes());
        Self {
            aead: ChaCha20Poly1305::new(Key::from_slice(key.as_ref())),
            key,
            ad,
        }
    }

    fn relay_stream(&self, counter: u64, cell: &mut [u8]) {
        let nonce = nonce(RELAY_DOMAIN, counter);
        ChaCha20::new(self.key.as_ref().into(), &nonce).apply_keystream(cell);
    }
}

fn check_cell_len(len: usize) -> Result<(), ReplyError> {
    if (MIN_REPLY_CELL_LEN..=MAX_REPLY_CELL_LEN).contains(&len) {
        Ok(())
    } else {
        Err(ReplyError::CellLength {
            len,
            min: MIN_REPLY_CELL_LEN,
            max: MAX_REPLY_CELL_LEN,
        })
    }
}

/// `len (4) || plaintext || zeros`, already decrypted.
fn parse_sealed(body: &[u8], hop: usize) -> Result<Vec<u8>, ReplyError> {
    let mut len_bytes = [0u8; 4];
    len_bytes.copy_from_slice(&body[..4]);
    let len = u32::from_be_bytes(len_bytes) as usize;
    let Some(end) = len.checked_add(4).filter(|&end| end <= body.len()) else {
        return Err(ReplyError::Malformed {
            hop,
            what: "length field exceeds the cell",
        });
    };
    if body[end..].iter().any(|&b| b != 0) {
        return Err(ReplyError::Malformed {
            hop,
            what: "padding is not zero",
        });
    }
    Ok(body[4..end].to_vec())
}
