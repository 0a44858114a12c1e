//! One hop's side of an onion circuit, with no I/O: what the hop's setup layer tells it, opening
//! each step's frames, sealing what goes on to the next hop, and sealing or relaying the reply
//! cells. Protocol: docs/protocol.md, "Circuits".

use unfed_onion::{
    Direction, Peeled, ReplyWrapper, Role, SessionKeys, SessionReceiver, SessionSender,
};
use unfed_proto::circuit as wire;
use unfed_proto::node::{Hidden, Onward, Step, step};

/// Why a circuit's setup or one of its messages was refused.
#[derive(Debug, thiserror::Error)]
pub enum CircuitError {
    #[error("this shard needs a next hop")]
    NeedsNextHop,
    #[error("the last shard has no next hop")]
    LastHasNoNextHop,
    #[error("the next hop is not text")]
    BadNextHop,
    #[error("hop payload: {0}")]
    Payload(String),
    #[error("step frame refused: {0}")]
    Frame(unfed_onion::SessionError),
    #[error("onward frame refused: {0}")]
    Onward(unfed_onion::SessionError),
    #[error("{0}")]
    Decode(String),
    #[error("a relay's onward frame holds the next hop's frame and nothing else")]
    RelayLayer,
    #[error("the last shard's onward frame holds no frame for a next hop")]
    LastLayer,
    #[error("sealing: {0}")]
    Seal(String),
}

/// Where the setup layer puts this hop.
pub enum Place {
    /// Forward to `next_hop` with `header` (the rest of the circuit).
    Relay { next_hop: String, header: Vec<u8> },
    /// The last shard: what the client asked it to return.
    Last { output: wire::Output },
}

/// The keys one hop holds for the life of a session.
pub struct HopCircuit {
    /// Frames from the previous hop (or the client).
    link_in: SessionReceiver,
    /// The client's frames for this hop, nested in each step.
    onward_in: SessionReceiver,
    /// Frames to the next hop; None at the last shard.
    link_out: Option<SessionSender>,
    reply: ReplyWrapper,
    /// The length of this session's reply cells, set by the first.
    cell_len: Option<usize>,
}

impl HopCircuit {
    /// What a peeled setup layer gives this hop. `head`: this node serves the last shard; the
    /// layer must agree, so a route has exactly one hop per shard.
    pub fn setup(peeled: &Peeled, head: bool) -> Result<(Self, Place), CircuitError> {
        let payload = &peeled.payload.0;
        let (incoming, outgoing, place) = match (&peeled.role, head) {
            (Role::Last, true) => {
                let (incoming, output) =
                    wire::parse_last_payload(payload).map_err(CircuitError::Payload)?;
                (incoming, None, Place::Last { output })
            }
            (Role::Relay { next_hop, header }, false) => {
                let next_hop = std::str::from_utf8(next_hop)
                    .map_err(|_| CircuitError::BadNextHop)?
                    .to_string();
                let (incoming, outgoing) = wire::parse_relay_payload(payload);
                let header = header.to_vec();
                (incoming, Some(outgoing), Place::Relay { next_hop, header })
            }
            (Role::Last, false) => return Err(CircuitError::NeedsNextHop),
            (Role::Relay { .. }, true) => return Err(CircuitError::LastHasNoNextHop),
        };
        let circuit = Self {
            link_in: SessionKeys::for_link(&incoming).receiver(Direction::Forward),
            onward_in: peeled.keys.receiver(Direction::Forward),
            link_out: outgoing.map(|o| SessionKeys::for_link(&o).sender(Direction::Forward)),
            reply: peeled.keys.reply_wrapper(),
            cell_len: None,
        };
        Ok((circuit, place))
    }

    /// Opens a step's link frame and this hop's own layer inside it: the step's input and what
    /// this hop's layer holds.
    pub fn open_step(
        &mut self,
        frame: &[u8],
    ) -> Result<(Option<step::Input>, Onward), CircuitError> {
        let step = self.open_link(frame)?;
        self.open_layer(step)
    }

    /// Opens a step's link frame only (a frame for the entry node alone, like the layers an MPC
    /// pair gets ahead, has no layer inside).
    pub fn open_link(&mut self, frame: &[u8]) -> Result<Step, CircuitError> {
        let plain = self.link_in.open(frame).map_err(CircuitError::Frame)?;
        wire::decode_step(plain.into()).map_err(CircuitError::Decode)
    }

    /// Opens this hop's own layer inside an opened link frame.
    pub fn open_layer(
        &mut self,
        step: Step,
    ) -> Result<(Option<step::Input>, Onward), CircuitError> {
        let plain = self
            .onward_in
            .open(&step.onward)
            .map_err(CircuitError::Onward)?;
        let onward = wire::decode_onward(&plain).map_err(CircuitError::Decode)?;
        let relay = self.link_out.is_some();
        if relay && (!onward.history.is_empty() || onward.onward.is_empty()) {
            return Err(CircuitError::RelayLayer);
        }
        if !relay && !onward.onward.is_empty() {
            return Err(CircuitError::LastLayer);
        }
        Ok((step.input, onward))
    }

    /// A guard's step: the frame for the entry node, inside the client's link frame. The guard
    /// cannot open it (it is sealed on the entry node's link), only unwrap and forward it.
    pub fn open_guarded(&mut self, frame: &[u8]) -> Result<Vec<u8>, CircuitError> {
        self.link_in.open(frame).map_err(CircuitError::Frame)
    }

    /// The link frame to the next hop: this hop's hidden states and the next hop's layer.
    pub fn seal_next(&mut self, hidden: Hidden, onward: Vec<u8>) -> Result<Vec<u8>, CircuitError> {
        self.seal_next_input(step::Input::Hidden(hidden), onward)
    }

    /// The link frame to the next hop: this hop's output (hidden states, or a pair's masked
    /// output) and the next hop's layer.
    pub fn seal_next_input(
        &mut self,
        input: step::Input,
        onward: Vec<u8>,
    ) -> Result<Vec<u8>, CircuitError> {
        let link = self
            .link_out
            .as_mut()
            .ok_or(CircuitError::LastHasNoNextHop)?;
        let next = Step {
            input: Some(input),
            onward,
        };
        link.seal(&wire::encode_step(&next))
            .map_err(|e| CircuitError::Seal(e.to_string()))
    }

    /// The reply cell for a token this (last) hop picked.
    pub fn seal_token(&mut self, token: u32) -> Result<Vec<u8>, CircuitError> {
        self.seal_reply(&token.to_le_bytes())
    }

    /// A reply cell holding `plaintext` (a token, or logits), exactly as long as its mode's
    /// replies always are.
    pub fn seal_reply(&mut self, plaintext: &[u8]) -> Result<Vec<u8>, CircuitError> {
        self.reply
            .seal(plaintext, unfed_onion::reply_cell_len(plaintext.len()))
            .map_err(|e| CircuitError::Seal(e.to_string()))
    }

    /// A reply cell from the next hop with this hop's layer added. A relay does not know the
    /// output mode, so it takes the first cell's length as the session's and refuses any other.
    pub fn relay_reply(&mut self, cell: &[u8]) -> Result<Vec<u8>, CircuitError> {
        let len = *self.cell_len.get_or_insert(cell.len());
        if cell.len() != len {
            return Err(CircuitError::Decode(format!(
                "a reply cell of {} bytes, not {len}",
                cell.len()
            )));
        }
        self.reply
            .relay(cell)
            .map_err(|e| CircuitError::Seal(e.to_string()))
    }
}
