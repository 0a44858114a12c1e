//! The gRPC face of a node: one bidirectional stream per session, set up by an onion header;
//! a node that is not the last shard opens its own stream to the next hop its header names and
//! relays the reply cells back, adding its layer.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::{Semaphore, mpsc};
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status, Streaming};
use unfed_onion::OnionPublicKey;
use unfed_proto::circuit as wire;
use unfed_proto::convert;
use unfed_proto::node::node_server::Node;
use unfed_proto::node::{
    HealthReply, HealthRequest, Open, Opened, SessionReply, SessionRequest, Step, TokenizerReply,
    TokenizerRequest, session_reply, session_request, step,
};

use crate::circuit::{HopCircuit, Place};
use crate::forward::{Forward, HeadOutput, SessionLimits, StepInput, StepOutput};
use crate::onion_keys::OnionKeys;
use crate::relay::{
    Downstream, NextHops, OPEN_TIMEOUT, ReplyStream, refused, relay_lost, send_up, spawn_session,
};
use crate::setup_limit::SetupLimit;
use crate::views::{Seen, ViewLog, saw, saw_peer};

/// What computes this node's layers.
pub enum Compute {
    /// The shard in the clear, on the forward thread.
    Plain(Forward),
    /// Shard 0 on shares, as party A of an MPC pair.
    PartyA(Arc<crate::pair::PartyA>),
}

/// What the service knows about the shard it serves.
pub struct NodeState {
    pub model_id: String,
    pub shard_index: u32,
    /// Shards in the model's manifest: a route has exactly one hop per shard.
    pub num_shards: u32,
    pub hidden: usize,
    /// The model's vocabulary (the length of its logits).
    pub vocab: usize,
    pub embedding: bool,
    pub head: bool,
    pub tokenizer_json: String,
    pub limits: SessionLimits,
    pub compute: Compute,
    /// This node's onion key and the replay tags of every circuit set up with it.
    onion: OnionKeys,
    /// Which next hops this node may relay to.
    next_hops: NextHops,
    next_session: AtomicU64,
    /// One permit per session a node serves at once, taken before anything is read.
    permits: Arc<Semaphore>,
    /// Where what this node sees is recorded, if anywhere.
    views: Option<ViewLog>,
    /// Circuit setups per peer address.
    setups: SetupLimit,
}

impl NodeState {
    pub fn new(
        model_id: String,
        shard_index: u32,
        num_shards: u32,
        hidden: usize,
        tokenizer_json: String,
        limits: SessionLimits,
        compute: Compute,
    ) -> Self {
        let permits = Arc::new(Semaphore::new(limits.max_sessions));
        Self {
            model_id,
            shard_index,
            num_shards,
            hidden,
            vocab: 0,
            embedding: shard_index == 0,
            head: shard_index + 1 == num_shards,
            tokenizer_json,
            limits,
            compute,
            onion: OnionKeys::generate(),
            next_hops: NextHops::new(None, unfed_proto::Dialer::default()),
            next_session: AtomicU64::new(1),
            permits,
            views: None,
            setups: SetupLimit::default(),
        }
    }

    /// Relay only to nodes that `registry` lists for the following shard, reaching the
    /// registry and next hops through `dialer`.
    pub fn with_network(mut self, registry: Option<String>, dialer: unfed_proto::Dialer) -> Self {
        self.next_hops = NextHops::new(registry, dialer);
        self
    }

    /// The model's vocabulary (the length of the last shard's logits replies).
    pub fn with_vocab(mut self, vocab: usize) -> Self {
        self.vocab = vocab;
        self
    }

    /// Record what this node sees in `views`.
    pub fn with_views(mut self, views: Option<ViewLog>) -> Self {
        self.views = views;
        self
    }

    /// The public onion key clients build circuits with (registered, signed, with the node).
    pub fn onion_public_key(&self) -> OnionPublicKey {
        self.onion.public_key()
    }

    /// Sessions open now (counted without waiting for the forward thread).
    pub fn active_sessions(&self) -> usize {
        self.limits.max_sessions - self.permits.available_permits()
    }
}

/// The tonic service.
#[derive(Clone)]
pub struct NodeService {
    state: Arc<NodeState>,
}

impl NodeService {
    pub fn new(state: Arc<NodeState>) -> Self {
        Self { state }
    }
}

#[tonic::async_trait]
impl Node for NodeService {
    type SessionStream = ReplyStream;

    async fn session(
        &self,
        request: Request<Streaming<SessionRequest>>,
    ) -> Result<Response<ReplyStream>, Status> {
        let state = self.state.clone();
        let id = state.next_session.fetch_add(1, Ordering::Relaxed);
        spawn_session(
            &self.state.setups,
            &self.state.views,
            &self.state.permits,
            request,
            move |inbound, tx| async move {
                let result = run_session(&state, id, inbound, &tx).await;
                if let Compute::Plain(forward) = &state.compute {
                    forward.close(id).await;
                }
                result
            },
        )
    }

    async fn health(&self, r: Request<HealthRequest>) -> Result<Response<HealthReply>, Status> {
        saw_peer(&self.state.views, &r);
        Ok(Response::new(HealthReply {
            model_id: self.state.model_id.clone(),
            shard_index: self.state.shard_index,
            active_sessions: self.state.active_sessions() as u32,
            max_sessions: self.state.limits.max_sessions as u32,
        }))
    }

    async fn tokenizer(
        &self,
        r: Request<TokenizerRequest>,
    ) -> Result<Response<TokenizerReply>, Status> {
        saw_peer(&self.state.views, &r);
        Ok(Response::new(TokenizerReply {
            tokenizer_json: self.state.tokenizer_json.clone(),
        }))
    }
}

async fn run_session(
    state: &NodeState,
    id: u64,
    mut inbound: Streaming<SessionRequest>,
    tx: &mpsc::Sender<Result<SessionReply, Status>>,
) -> Result<(), Status> {
    // A peer that holds a slot must say what it wants soon.
    let first = tokio::time::timeout(OPEN_TIMEOUT, inbound.message())
        .await
        .map_err(|_| Status::deadline_exceeded("no Open message in time"))?;
    let open = match first? {
        Some(SessionRequest {
            kind: Some(session_request::Kind::Open(open)),
        }) => open,
        _ => {
            return Err(Status::invalid_argument(
                "a session starts with an Open message",
            ));
        }
    };
    if open.model_id != state.model_id || open.shard_index != state.shard_index {
        return Err(Status::failed_precondition(format!(
            "this node serves shard {} of {}, not shard {} of {}",
            state.shard_index, state.model_id, open.shard_index, open.model_id
        )));
    }
    let peeled = state.onion.peel(&open.onion)?;
    let (mut circuit, place) = HopCircuit::setup(&peeled, state.head).map_err(refused)?;
    // The logits slice a client-sampling session asked for.
    let mut top_k = None;
    let (output, next) = match place {
        Place::Last {
            output: wire::Output::Sample(p),
        } => (Some(HeadOutput::Sample(p)), None),
        Place::Last {
            output: wire::Output::Logits { top_k: k },
        } => {
            top_k = Some(k);
            (Some(HeadOutput::Logits), None)
        }
        Place::Relay { next_hop, header } => (None, Some((next_hop, header))),
    };
    let mut pair = match &state.compute {
        Compute::Plain(forward) => {
            forward
                .open(id, output)
                .await
                .map_err(Status::resource_exhausted)?;
            None
        }
        Compute::PartyA(a) if next.is_some() => {
            Some(crate::pair::party_a::PairSession::new(a.clone(), id))
        }
        Compute::PartyA(_) => {
            return Err(Status::invalid_argument("party A is never the last shard"));
        }
    };
    let mut downstream = match next {
        None => None,
        Some((address, header)) => {
            state
                .next_hops
                .check(&state.model_id, &address, state.shard_index + 1)
                .await?;
            let onward = Open {
                model_id: open.model_id.clone(),
                shard_index: state.shard_index + 1,
                onion: header,
            };
            Some(Downstream::open(&state.next_hops.dialer, &address, onward).await?)
        }
    };
    send_up(
        tx,
        session_reply::Kind::Opened(Opened {}),
        state.limits.idle_timeout,
    )
    .await?;

    // An MPC pair's: the layers of the next step that came ahead, and a frame that came in
    // while a step ran.
    let mut ahead = crate::pair::Ahead::default();
    let mut held = None;
    loop {
        let step = match held.take() {
            Some(step) => step,
            None => {
                let read = tokio::time::timeout(state.limits.idle_timeout, inbound.next());
                let Ok(msg) = read.await else {
                    return Err(Status::deadline_exceeded("the session was idle too long"));
                };
                let Some(frame) = step_frame(state, msg)? else {
                    break;
                };
                circuit.open_link(&frame).map_err(refused)?
            }
        };
        let step = match (step, pair.as_ref()) {
            (
                Step {
                    input: Some(step::Input::Ahead(layers)),
                    ..
                },
                Some(pair),
            ) => {
                let to_b = pair.to_b().ok_or_else(|| {
                    Status::invalid_argument("the layers of a step came ahead of the first step")
                })?;
                crate::pair::party_a::take_ahead(&to_b, &mut ahead, layers).await?;
                continue;
            }
            (
                Step {
                    input: Some(step::Input::Ahead(_)),
                    ..
                },
                None,
            ) => return Err(not_party_a()),
            (step, _) => step,
        };
        let (input, onward) = circuit.open_layer(step).map_err(refused)?;
        if !onward.history.is_empty() {
            saw(&state.views, || Seen::History(onward.history.clone()));
        }
        if onward.defer && !state.head {
            return Err(Status::invalid_argument(
                "only the last shard defers its output",
            ));
        }
        let out = match (input, pair.as_mut()) {
            (Some(step::Input::Mpc(m)), Some(pair)) => {
                let material = ahead.material(m.positions as usize, &m.input, &m.layers)?;
                let to_b = pair.to_b();
                let stepping = pair.step(&state.model_id, m, material);
                tokio::pin!(stepping);
                // While the pair runs, the next step's layers may come ahead: take them in now
                // (B holds its part until the step ends); any other frame waits for the step.
                let masked = loop {
                    tokio::select! {
                        biased;
                        done = &mut stepping => break done?,
                        msg = inbound.next(), if held.is_none() => {
                            let Some(frame) = step_frame(state, msg)? else {
                                break stepping.await?;
                            };
                            match (circuit.open_link(&frame).map_err(refused)?, &to_b) {
                                (Step { input: Some(step::Input::Ahead(layers)), .. }, Some(to_b)) => {
                                    crate::pair::party_a::take_ahead(to_b, &mut ahead, layers).await?;
                                }
                                (step, _) => held = Some(step),
                            }
                        }
                    }
                };
                StepOutput::Masked(masked)
            }
            (Some(step::Input::Mpc(_)), None) => return Err(not_party_a()),
            (_, Some(_)) => return Err(Status::invalid_argument("party A takes MPC input")),
            (input, None) => {
                let input = plain_input(state, input, &onward.pad)?;
                let Compute::Plain(forward) = &state.compute else {
                    return Err(Status::internal("a plain step on a pair"));
                };
                forward
                    .step(id, input, onward.history, onward.defer)
                    .await
                    .map_err(|e| {
                        if e.starts_with("busy") {
                            Status::resource_exhausted(e)
                        } else {
                            Status::invalid_argument(e)
                        }
                    })?
            }
        };
        let cell = match (out, downstream.as_mut()) {
            (StepOutput::Token(t), None) => {
                saw(&state.views, || Seen::Sampled(t));
                circuit.seal_token(t).map_err(refused)?
            }
            (StepOutput::Logits(logits), None) => {
                let plain = wire::encode_logits(&logits, top_k.unwrap_or(0));
                circuit.seal_reply(&plain).map_err(refused)?
            }
            (StepOutput::Deferred, None) => {
                // The filler is exactly as long as the session's replies always are.
                let len = match top_k {
                    Some(k) => wire::logits_reply_len(k, state.vocab),
                    None => wire::TOKEN_REPLY_LEN,
                };
                circuit.seal_reply(&vec![0; len]).map_err(refused)?
            }
            (StepOutput::Hidden { rows, cols, values }, Some(down)) => {
                let hidden = step::Input::Hidden(convert::hidden(rows, cols, &values));
                relay(state, &mut circuit, down, hidden, onward.onward).await?
            }
            (StepOutput::Masked(masked), Some(down)) => {
                let input = step::Input::Masked(masked);
                relay(state, &mut circuit, down, input, onward.onward).await?
            }
            _ => {
                return Err(Status::internal(
                    "shard output does not fit its place in the route",
                ));
            }
        };
        send_up(
            tx,
            session_reply::Kind::Cell(cell),
            state.limits.idle_timeout,
        )
        .await?;
    }
    Ok(())
}

fn not_party_a() -> Status {
    Status::invalid_argument("this node is not party A of an MPC pair")
}

/// A step frame from the upstream stream (recorded as seen), or None when the stream ended.
fn step_frame(
    state: &NodeState,
    msg: Option<Result<SessionRequest, Status>>,
) -> Result<Option<unfed_proto::Bytes>, Status> {
    let Some(msg) = msg else { return Ok(None) };
    match msg?.kind {
        Some(session_request::Kind::Frame(frame)) => {
            saw(&state.views, || Seen::Frame(frame.to_vec()));
            Ok(Some(frame))
        }
        _ => Err(Status::invalid_argument("expected a step frame")),
    }
}

/// Sends this hop's output on to the next hop and returns its reply cell with our layer added.
async fn relay(
    state: &NodeState,
    circuit: &mut HopCircuit,
    down: &mut Downstream,
    input: step::Input,
    onward: Vec<u8>,
) -> Result<Vec<u8>, Status> {
    let frame = circuit.seal_next_input(input, onward).map_err(refused)?;
    let cell = down.step(frame).await?;
    saw(&state.views, || Seen::Cell(cell.clone()));
    circuit.relay_reply(&cell).map_err(|_| relay_lost())
}

/// A plain shard's input: token ids at shard 0, hidden states after it — given in the clear,
/// or (right after an MPC pair) masked by the pad whose seed the client put in `pad`.
fn plain_input(
    state: &NodeState,
    input: Option<step::Input>,
    pad: &[u8],
) -> Result<StepInput, Status> {
    if !pad.is_empty() && !matches!(input, Some(step::Input::Masked(_))) {
        return Err(Status::invalid_argument(
            "a pad comes only with masked input",
        ));
    }
    match (input, state.embedding) {
        (Some(step::Input::Tokens(t)), true) => {
            saw(&state.views, || Seen::Tokens(t.ids.clone()));
            Ok(StepInput::Tokens(t.ids))
        }
        (Some(step::Input::Hidden(h)), false) => {
            let values = convert::hidden_values(&h, state.hidden)
                .map_err(|e| Status::invalid_argument(e.0))?;
            saw(&state.views, || Seen::Hidden(values.clone()));
            Ok(StepInput::Hidden {
                rows: h.rows as usize,
                cols: h.cols as usize,
                values,
            })
        }
        (Some(step::Input::Masked(m)), false) if state.shard_index == 1 => {
            let pad: &[u8; wire::PAD_SEED_LEN] = pad.try_into().map_err(|_| {
                Status::invalid_argument("masked input needs the pad's 16-byte seed")
            })?;
            let (rows, cols) = (m.rows as usize, m.cols as usize);
            let words = unfed_mpc::ring::from_bytes(&m.data)
                .filter(|w| {
                    rows > 0 && cols == state.hidden && Some(w.len()) == rows.checked_mul(cols)
                })
                .ok_or_else(|| {
                    Status::invalid_argument(format!(
                        "masked input of {rows} x {cols} in {} bytes, expected n x {}",
                        m.data.len(),
                        state.hidden
                    ))
                })?;
            let sum = unfed_mpc::ring::add(&words, &unfed_mpc::shard::pad(pad, words.len()));
            let values: Vec<f32> = unfed_mpc::ring::decode_all(&sum)
                .into_iter()
                .map(|v| v as f32)
                .collect();
            saw(&state.views, || Seen::Hidden(values.clone()));
            Ok(StepInput::Hidden { rows, cols, values })
        }
        (Some(step::Input::Masked(_)), _) => Err(Status::invalid_argument(
            "only shard 1 takes the masked output of an MPC pair",
        )),
        (Some(step::Input::Mpc(_)), _) => Err(not_party_a()),
        (Some(_), true) => Err(Status::invalid_argument("shard 0 takes token ids")),
        (Some(_), false) => Err(Status::invalid_argument("this shard takes hidden states")),
        (None, _) => Err(Status::invalid_argument("a Step needs an input")),
    }
}
