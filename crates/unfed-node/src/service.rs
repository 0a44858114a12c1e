//! The gRPC face of a node: one bidirectional stream per session, set up by an onion header;
//! a node that is not the last shard opens its own stream to the next hop its header names and
//! relays the reply cells back, adding its layer. A plain shard's steps then run on the
//! session's thread (`hop.rs`); party A's here, beside the frames sent ahead of a step.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::{Semaphore, mpsc};
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status, Streaming};
use unfed_onion::OnionPublicKey;
use unfed_proto::circuit as wire;
use unfed_proto::node::node_server::Node;
use unfed_proto::node::{
    HealthReply, HealthRequest, Open, Opened, SessionReply, SessionRequest, Step, TokenizerReply,
    TokenizerRequest, session_reply, session_request, step,
};

use crate::circuit::{HopCircuit, Place};
use crate::forward::{Forward, HeadOutput, SessionLimits};
use crate::hop::Hop;
use crate::onion_keys::OnionKeys;
use crate::relay::{
    Downstream, NextHops, OPEN_TIMEOUT, ReplyStream, refused, relay_lost, send_up, spawn_session,
};
use crate::setup_limit::SetupLimit;
use crate::tickets::Tickets;
use crate::views::{Seen, ViewLog, saw, saw_peer};

/// What computes this node's layers.
pub enum Compute {
    /// The shard in the clear, shared by the sessions' threads.
    Plain(Arc<Forward>),
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
    pub(crate) next_hops: NextHops,
    /// Sessions waiting for their previous hop's raw stream.
    pub(crate) tickets: Arc<Tickets>,
    /// The longest step frame a session may send.
    pub(crate) max_frame: usize,
    next_session: AtomicU64,
    /// One permit per session a node serves at once, taken before anything is read.
    permits: Arc<Semaphore>,
    /// Where what this node sees is recorded, if anywhere.
    pub(crate) views: Option<ViewLog>,
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
            tickets: Arc::default(),
            max_frame: unfed_proto::MAX_NODE_MESSAGE,
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

    /// Refuse step frames longer than `max` bytes.
    pub fn with_max_frame(mut self, max: usize) -> Self {
        self.max_frame = max;
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
            move |inbound, tx| async move { run_session(&state, id, inbound, &tx).await },
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
    state: &Arc<NodeState>,
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
    let (a, (address, header)) = match (&state.compute, next) {
        (Compute::Plain(forward), next) => {
            let session = forward.open(output).map_err(Status::resource_exhausted)?;
            let hop = Hop {
                session,
                circuit,
                top_k,
            };
            return crate::hop::serve(state, hop, &open, next, inbound, tx).await;
        }
        (Compute::PartyA(_), _) if open.raw => {
            return Err(Status::invalid_argument(
                "party A takes its frames on the gRPC stream",
            ));
        }
        (Compute::PartyA(a), Some(next)) => (a.clone(), next),
        (Compute::PartyA(_), None) => {
            return Err(Status::invalid_argument("party A is never the last shard"));
        }
    };
    let mut pair = crate::pair::party_a::PairSession::new(a, id);
    let onward = onward(state, &open, &address, header).await?;
    let mut downstream = Downstream::open(&state.next_hops.dialer, &address, onward).await?;
    send_up(
        tx,
        session_reply::Kind::Opened(Opened::default()),
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
        if let Step {
            input: Some(step::Input::Ahead(layers)),
            ..
        } = step
        {
            let to_b = pair.to_b().ok_or_else(|| {
                Status::invalid_argument("the layers of a step came ahead of the first step")
            })?;
            crate::pair::party_a::take_ahead(&to_b, &mut ahead, layers).await?;
            continue;
        }
        let (input, onward) = circuit.open_layer(step).map_err(refused)?;
        if !onward.history.is_empty() {
            saw(&state.views, || Seen::History(onward.history.clone()));
        }
        if onward.defer {
            return Err(Status::invalid_argument(
                "only the last shard defers its output",
            ));
        }
        let Some(step::Input::Mpc(m)) = input else {
            return Err(Status::invalid_argument("party A takes MPC input"));
        };
        let material = ahead.material(
            m.positions as usize,
            (&m.input, &m.input_common),
            (&m.layers, &m.layers_common),
        )?;
        let to_b = pair.to_b();
        let stepping = pair.step(&state.model_id, m, material);
        tokio::pin!(stepping);
        // While the pair runs, the next step's layers may come ahead: take them in now (B holds
        // its part until the step ends); any other frame waits for the step.
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
        let frame = circuit
            .seal_next_input(step::Input::Masked(masked), onward.onward)
            .map_err(refused)?;
        let cell = downstream.step(frame).await?;
        saw(&state.views, || Seen::Cell(cell.clone()));
        let cell = circuit.relay_reply(&cell).map_err(|_| relay_lost())?;
        send_up(
            tx,
            session_reply::Kind::Cell(cell),
            state.limits.idle_timeout,
        )
        .await?;
    }
    Ok(())
}

/// The `Open` for the next hop at `address` (with the rest of the circuit's `header`), once the
/// registry lists it for the next shard.
pub(crate) async fn onward(
    state: &NodeState,
    open: &Open,
    address: &str,
    header: Vec<u8>,
) -> Result<Open, Status> {
    state
        .next_hops
        .check(&state.model_id, address, state.shard_index + 1)
        .await?;
    Ok(Open {
        model_id: open.model_id.clone(),
        shard_index: state.shard_index + 1,
        onion: header,
        raw: false,
    })
}

/// A step frame from the upstream stream (recorded as seen), or None when the stream ended.
pub(crate) fn step_frame(
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
