//! Party A's side: the pair's half of a shard-0 hop. A keeps one connection to B; each client
//! session opens one stream on it and a raw stream of rounds beside it, and each step A
//! forwards B's sealed frame, runs its share of the computation, then returns the output
//! masked by B's pad.

use std::sync::Arc;

use tokio::sync::{Mutex, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;
use tonic::transport::Channel;
use unfed_mpc::ring;
use unfed_mpc::shard::{ShardState, StepMaterial};
use unfed_proto::MAX_NODE_MESSAGE;
use unfed_proto::node::pair_client::PairClient;
use unfed_proto::node::{Masked, MpcAhead, MpcInput, PairFrame, PairOpen, PairStep, pair_frame};

use super::bridge::{self, Inbound, PEER_TIMEOUT, RoundLink};
use super::{Ahead, MAX_STEP_POSITIONS, Party, StepJob};

/// How long A waits for B's reason after a step failed.
const WHY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

/// Party A of a pair: its computation and its link to B.
pub struct PartyA {
    pub party: Arc<Party>,
    /// Where B serves.
    pub peer: String,
    dialer: unfed_proto::Dialer,
    /// The one connection to B (HTTP/2: every session's stream rides on it), made on first use
    /// and again after it breaks.
    channel: Mutex<Option<Channel>>,
}

impl PartyA {
    pub fn new(party: Arc<Party>, peer: String, dialer: unfed_proto::Dialer) -> Self {
        Self {
            party,
            peer,
            dialer,
            channel: Mutex::new(None),
        }
    }

    async fn client(&self) -> Result<PairClient<Channel>, Status> {
        let mut slot = self.channel.lock().await;
        let channel = match &*slot {
            Some(c) => c.clone(),
            None => {
                let c = self
                    .dialer
                    .connect(&self.peer)
                    .await
                    .map_err(|e| Status::unavailable(format!("party B: {e}")))?;
                *slot = Some(c.clone());
                c
            }
        };
        Ok(PairClient::new(channel)
            .max_decoding_message_size(MAX_NODE_MESSAGE)
            .max_encoding_message_size(MAX_NODE_MESSAGE))
    }

    async fn forget_channel(&self) {
        *self.channel.lock().await = None;
    }
}

/// Takes in the layers of a session's next step that came ahead: A's kept in `ahead`, B's
/// sealed frame and the common words forwarded to B (which holds them for after the step it
/// may be running).
pub(crate) async fn take_ahead(
    to_b: &mpsc::Sender<PairFrame>,
    ahead: &mut Ahead,
    layers: MpcAhead,
) -> Result<(), Status> {
    ahead.keep((&layers.layers, &layers.layers_common))?;
    let step = PairStep {
        sealed: layers.for_b,
        input_common: Default::default(),
        layers_common: layers.layers_common,
    };
    send_to_b(to_b, step).await
}

/// B's part of a step, on the session's stream to B.
async fn send_to_b(to_b: &mpsc::Sender<PairFrame>, step: PairStep) -> Result<(), Status> {
    let frame = PairFrame {
        kind: Some(pair_frame::Kind::Step(step)),
    };
    tokio::time::timeout(PEER_TIMEOUT, to_b.send(frame))
        .await
        .map_err(|_| Status::deadline_exceeded("party B stopped reading"))?
        .map_err(|_| Status::unavailable("party B closed the stream"))
}

/// One client session at party A.
pub struct PairSession {
    a: Arc<PartyA>,
    id: u64,
    steps: u32,
    stream: Option<(mpsc::Sender<PairFrame>, Inbound)>,
    rounds: Option<RoundLink>,
    state: ShardState,
}

impl PairSession {
    pub fn new(a: Arc<PartyA>, id: u64) -> Self {
        Self {
            a,
            id,
            steps: 0,
            stream: None,
            rounds: None,
            state: ShardState::default(),
        }
    }

    /// The stream to B, once the session's first step opened it.
    pub fn to_b(&self) -> Option<mpsc::Sender<PairFrame>> {
        self.stream.as_ref().map(|(send, _)| send.clone())
    }

    /// One step: A's share computed with B on A's `material` (taken from `input`, or from the
    /// layers that came ahead), returned as the output masked by B's pad.
    pub async fn step(
        &mut self,
        model_id: &str,
        input: MpcInput,
        material: StepMaterial,
    ) -> Result<Masked, Status> {
        let positions = input.positions as usize;
        let party = self.a.party.clone();
        if positions == 0 || positions > MAX_STEP_POSITIONS {
            return Err(Status::invalid_argument(format!(
                "an MPC step adds 1 to {MAX_STEP_POSITIONS} positions, not {positions}"
            )));
        }
        if self.state.positions() + positions > party.max_positions {
            return Err(Status::invalid_argument(format!(
                "the session would exceed {} positions",
                party.max_positions
            )));
        }
        match (&self.stream, input.b_onion.is_empty()) {
            (None, true) => {
                return Err(Status::invalid_argument(
                    "the first MPC step carries party B's onion header",
                ));
            }
            (None, false) => {
                let (stream, rounds) = self.open(model_id, input.b_onion).await?;
                (self.stream, self.rounds) = (Some(stream), Some(rounds));
            }
            (Some(_), false) => {
                return Err(Status::invalid_argument(
                    "only a session's first MPC step carries B's onion header",
                ));
            }
            (Some(_), true) => {}
        }
        let (send, inbound) = self.stream.as_mut().expect("opened above");
        let step = PairStep {
            sealed: input.for_b,
            input_common: input.input_common,
            layers_common: input.layers_common,
        };
        send_to_b(send, step).await?;
        let job = StepJob {
            party: party.clone(),
            session: self.id,
            step: self.steps,
            positions,
            material,
            pad: None,
            state: std::mem::take(&mut self.state),
        };
        let (out, state) = match bridge::run_step(job, &mut self.rounds).await {
            Ok(done) => done,
            // B's own words on why, when it said any.
            Err(status) => match tokio::time::timeout(WHY_TIMEOUT, inbound.recv()).await {
                Ok(Some(Err(b))) => {
                    return Err(Status::aborted(format!("party B: {}", b.message())));
                }
                _ => return Err(status),
            },
        };
        self.state = state;
        self.steps += 1;
        let out = out.ok_or_else(|| Status::internal("party A's step returned no output"))?;
        Ok(Masked {
            rows: positions as u32,
            cols: party.spec.layer.hidden as u32,
            data: ring::to_bytes(&out),
        })
    }

    async fn open(
        &self,
        model_id: &str,
        onion: unfed_proto::Bytes,
    ) -> Result<((mpsc::Sender<PairFrame>, Inbound), RoundLink), Status> {
        let (send, rx) = mpsc::channel(4);
        let open = PairFrame {
            kind: Some(pair_frame::Kind::Open(PairOpen {
                model_id: model_id.into(),
                onion: onion.to_vec(),
            })),
        };
        send.send(open)
            .await
            .map_err(|_| Status::internal("stream"))?;
        let mut client = self.a.client().await?;
        let reply = tokio::time::timeout(PEER_TIMEOUT, client.session(ReceiverStream::new(rx)))
            .await
            .map_err(|_| Status::deadline_exceeded("party B did not answer"))?;
        let stream = match reply {
            Ok(r) => r.into_inner(),
            Err(s) => {
                self.a.forget_channel().await;
                return Err(Status::unavailable(format!("party B: {}", s.message())));
            }
        };
        let mut inbound = bridge::read_frames(stream);
        let ticket = match tokio::time::timeout(PEER_TIMEOUT, inbound.recv()).await {
            Ok(Some(Ok(PairFrame {
                kind: Some(pair_frame::Kind::Ticket(t)),
            }))) => t[..]
                .try_into()
                .map_err(|_| Status::internal("party B's ticket is not 32 bytes")),
            Ok(Some(Err(s))) => Err(Status::unavailable(format!("party B: {}", s.message()))),
            Err(_) => Err(Status::deadline_exceeded("party B sent no ticket")),
            _ => Err(Status::internal("party B's stream starts with its ticket")),
        }?;
        let rounds = self
            .a
            .dialer
            .connect_raw(&self.a.peer, &ticket, PEER_TIMEOUT)
            .await
            .map_err(|e| Status::unavailable(format!("party B: {e}")))?;
        Ok(((send, inbound), RoundLink::new(rounds, unfed_mpc::Role::A)))
    }
}
