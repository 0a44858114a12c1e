//! The link between the two parties: one call per round, each side sends its vector and
//! receives the other's. [`MemLink`] joins two parties in one process (tests, benchmarks);
//! the node bridges the same trait onto its stream to the peer.

use std::sync::mpsc::{Receiver, SyncSender, sync_channel};

use crate::MpcError;

/// A full-duplex exchange of ring vectors with the other party.
pub trait Link {
    /// Sends `mine` and returns what the other party sent in the same round.
    fn exchange(&mut self, mine: &[u64]) -> Result<Vec<u64>, MpcError>;
}

/// One end of an in-process link.
pub struct MemLink {
    send: SyncSender<Vec<u64>>,
    recv: Receiver<Vec<u64>>,
}

/// Two connected ends.
pub fn mem_pair() -> (MemLink, MemLink) {
    let (to_b, from_a) = sync_channel(1);
    let (to_a, from_b) = sync_channel(1);
    (MemLink { send: to_b, recv: from_b }, MemLink { send: to_a, recv: from_a })
}

impl Link for MemLink {
    fn exchange(&mut self, mine: &[u64]) -> Result<Vec<u64>, MpcError> {
        self.send.send(mine.to_vec()).map_err(|_| MpcError::Link("the other party hung up".into()))?;
        self.recv.recv().map_err(|_| MpcError::Link("the other party hung up".into()))
    }
}
