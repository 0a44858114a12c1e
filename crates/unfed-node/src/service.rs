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
    HealthReply, HealthRequest, Hidden, Open, Opened, SessionReply, SessionRequest, TokenizerReply,
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

/// What the service knows about the shard it serves.
pub struct NodeState {
    pub model_id: String,
    pub shard_index: u32,
    /// Shards in the model's manifest: a route has exactly one hop per shard.
    pub num_shards: u32,
    pub hidden: usize,
    pub embedding: bool,
    pub head: bool,
    pub tokenizer_json: String,
    pub limits: SessionLimits,
    pub forward: Forward,
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
        forward: Forward,
    ) -> Self {
        let permits = Arc::new(Semaphore::new(limits.max_sessions));
        Self {
            model_id,
            shard_index,
            num_shards,
            hidden,
            embedding: shard_index == 0,
            head: shard_index + 1 == num_shards,
            tokenizer_json,
            limits,
            forward,
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
                state.forward.close(id).await;
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
    state
        .forward
        .open(id, output)
        .await
        .map_err(Status::resource_exhausted)?;
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

    loop {
        let Ok(msg) = tokio::time::timeout(state.limits.idle_timeout, inbound.next()).await else {
            return Err(Status::deadline_exceeded("the session was idle too long"));
        };
        let Some(msg) = msg else { break };
        let frame = match msg?.kind {
            Some(session_request::Kind::Frame(frame)) => frame,
            _ => return Err(Status::invalid_argument("expected a step frame")),
        };
        saw(&state.views, || Seen::Frame(frame.clone()));
        let (input, onward) = circuit.open_step(&frame).map_err(refused)?;
        if !onward.history.is_empty() {
            saw(&state.views, || Seen::History(onward.history.clone()));
        }
        let input = match (input, state.embedding) {
            (Some(step::Input::Tokens(t)), true) => {
                saw(&state.views, || Seen::Tokens(t.ids.clone()));
                StepInput::Tokens(t.ids)
            }
            (Some(step::Input::Hidden(h)), false) => {
                let values = convert::hidden_values(&h, state.hidden)
                    .map_err(|e| Status::invalid_argument(e.0))?;
                saw(&state.views, || Seen::Hidden(values.clone()));
                StepInput::Hidden {
                    rows: h.rows as usize,
                    cols: h.cols as usize,
                    values,
                }
            }
            (Some(_), true) => return Err(Status::invalid_argument("shard 0 takes token ids")),
            (Some(_), false) => {
                return Err(Status::invalid_argument("this shard takes hidden states"));
            }
            (None, _) => return Err(Status::invalid_argument("a Step needs an input")),
        };
        let out = state
            .forward
            .step(id, input, onward.history)
            .await
            .map_err(|e| {
                if e.starts_with("busy") {
                    Status::resource_exhausted(e)
                } else {
                    Status::invalid_argument(e)
                }
            })?;
        let cell = match (out, downstream.as_mut()) {
            (StepOutput::Token(t), None) => {
                saw(&state.views, || Seen::Sampled(t));
                circuit.seal_token(t).map_err(refused)?
            }
            (StepOutput::Logits(logits), None) => {
                let plain = wire::encode_logits(&logits, top_k.unwrap_or(0));
                circuit.seal_reply(&plain).map_err(refused)?
            }
            (StepOutput::Hidden { rows, cols, values }, Some(down)) => {
                let hidden: Hidden = convert::hidden(rows, cols, &values);
                let frame = circuit.seal_next(hidden, onward.onward).map_err(refused)?;
                let cell = down.step(frame).await?;
                saw(&state.views, || Seen::Cell(cell.clone()));
                circuit.relay_reply(&cell).map_err(|_| relay_lost())?
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
