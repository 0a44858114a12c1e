//! The link between the two parties: one call per round, each side sends its vector and
//! receives the other's. [`MemLink`] joins two parties in one process (tests, benchmarks);
//! the node bridges the same trait onto its stream to the peer.

use std::sync::mpsc::{Receiver, SyncSender, TryRecvError, sync_channel};

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
    (
        MemLink {
            send: to_b,
            recv: from_b,
        },
        MemLink {
            send: to_a,
            recv: from_a,
        },
    )
}

/// How long a [`MemLink`] polls for the other party's message before it sleeps: the two
/// parties finish a round at nearly the same time, and waking a sleeping thread costs more
/// than most rounds.
const SPIN: std::time::Duration = std::time::Duration::from_micros(50);

impl Link for MemLink {
    fn exchange(&mut self, mine: &[u64]) -> Result<Vec<u64>, MpcError> {
        let hung_up = || MpcError::Link("the other party hung up".into());
        self.send.send(mine.to_vec()).map_err(|_| hung_up())?;
        let start = std::time::Instant::now();
        while start.elapsed() < SPIN {
            match self.recv.try_recv() {
                Ok(theirs) => return Ok(theirs),
                Err(TryRecvError::Empty) => std::hint::spin_loop(),
                Err(TryRecvError::Disconnected) => return Err(hung_up()),
            }
        }
        self.recv.recv().map_err(|_| hung_up())
    }
}

/// A link that keeps everything the other party sent, in order (when `keep`): the audit aid
/// behind a party's recorded view.
pub struct RecordingLink<'l> {
    inner: &'l mut dyn Link,
    keep: bool,
    /// Every ring element received, round after round.
    pub received: Vec<u64>,
    /// Where each round's elements start in `received`.
    pub rounds: Vec<usize>,
}

impl<'l> RecordingLink<'l> {
    pub fn new(inner: &'l mut dyn Link, keep: bool) -> Self {
        Self {
            inner,
            keep,
            received: Vec::new(),
            rounds: Vec::new(),
        }
    }
}

impl Link for RecordingLink<'_> {
    fn exchange(&mut self, mine: &[u64]) -> Result<Vec<u64>, MpcError> {
        let theirs = self.inner.exchange(mine)?;
        if self.keep {
            self.rounds.push(self.received.len());
            self.received.extend_from_slice(&theirs);
        }
        Ok(theirs)
    }
}
