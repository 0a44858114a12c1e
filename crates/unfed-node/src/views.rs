//! An audit aid: when asked, a node or guard records what it saw — who connected to it, and
//! every value it received or learned — so that a test or an auditor can check what each party
//! of a circuit learns. Off unless a `ViewLog` is given; never written to a log.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

/// One thing a node or guard saw.
#[derive(Debug, Clone, PartialEq)]
pub enum Seen {
    /// A stream or call from this peer address.
    Peer(SocketAddr),
    /// A link frame from the previous hop, as received (sealed).
    Frame(Vec<u8>),
    /// Token ids of a step's input, once its frame was opened.
    Tokens(Vec<u32>),
    /// Hidden states of a step's input, once its frame was opened.
    Hidden(Vec<f32>),
    /// The sampler's look-back history of a resumed session.
    History(Vec<u32>),
    /// A token this node sampled.
    Sampled(u32),
    /// A reply cell from the next hop, as received (sealed).
    Cell(Vec<u8>),
}

impl Seen {
    /// Whether this is content of the generation (tokens or hidden states), not an address or
    /// sealed bytes.
    pub fn is_content(&self) -> bool {
        matches!(
            self,
            Seen::Tokens(_) | Seen::Hidden(_) | Seen::History(_) | Seen::Sampled(_)
        )
    }
}

/// A shared record of what one party saw.
#[derive(Debug, Clone, Default)]
pub struct ViewLog(Arc<Mutex<Vec<Seen>>>);

impl ViewLog {
    pub fn record(&self, seen: Seen) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).push(seen);
    }

    /// Everything recorded so far, in order.
    pub fn entries(&self) -> Vec<Seen> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// Records what `seen` makes, only when there is a log.
pub(crate) fn saw(log: &Option<ViewLog>, seen: impl FnOnce() -> Seen) {
    if let Some(log) = log {
        log.record(seen());
    }
}

/// Records the peer of a request, when there is a log and the peer is known.
pub(crate) fn saw_peer<T>(log: &Option<ViewLog>, request: &tonic::Request<T>) {
    if let (Some(log), Some(peer)) = (log, request.remote_addr()) {
        log.record(Seen::Peer(peer));
    }
}
