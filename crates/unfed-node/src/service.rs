//! The gRPC face of a node: one bidirectional stream per session; a node that is not the last
//! shard opens its own stream to the next hop and relays the replies back.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::{Semaphore, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};
use unfed_proto::convert;
use unfed_proto::node::node_server::Node;
use unfed_proto::node::{
    HealthReply, HealthRequest, Hidden, Open, Opened, SessionReply, SessionRequest, Step, Token,
    TokenizerReply, TokenizerRequest, session_reply, session_request, step,
};

use crate::forward::{Forward, SessionLimits, StepInput, StepOutput};

/// Messages buffered per direction of a session stream.
const STREAM_BUFFER: usize = 4;
/// How long the next hop may take to open its part of a route.
const OPEN_TIMEOUT: Duration = Duration::from_secs(15);
/// How long the rest of the route may take for one step (a long prompt's prefill included).
const STEP_TIMEOUT: Duration = Duration::from_secs(120);

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
    next_session: AtomicU64,
    /// One permit per session a node serves at once, taken before anything is read.
    permits: Arc<Semaphore>,
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
            next_session: AtomicU64::new(1),
            permits,
        }
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

type ReplyStream = Pin<Box<dyn Stream<Item = Result<SessionReply, Status>> + Send>>;

#[tonic::async_trait]
impl Node for NodeService {
    type SessionStream = ReplyStream;

    async fn session(
        &self,
        request: Request<Streaming<SessionRequest>>,
    ) -> Result<Response<ReplyStream>, Status> {
        let permit = self
            .state
            .permits
            .clone()
            .try_acquire_owned()
            .map_err(|_| Status::resource_exhausted("busy: every session slot is taken"))?;
        let inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        let state = self.state.clone();
        let id = state.next_session.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(async move {
            let _permit = permit;
            let result = run_session(&state, id, inbound, &tx).await;
            state.forward.close(id).await;
            if let Err(status) = result {
                let _ = tx.send(Err(status)).await;
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn health(&self, _: Request<HealthRequest>) -> Result<Response<HealthReply>, Status> {
        Ok(Response::new(HealthReply {
            model_id: self.state.model_id.clone(),
            shard_index: self.state.shard_index,
            active_sessions: self.state.active_sessions() as u32,
            max_sessions: self.state.limits.max_sessions as u32,
        }))
    }

    async fn tokenizer(
        &self,
        _: Request<TokenizerRequest>,
    ) -> Result<Response<TokenizerReply>, Status> {
        Ok(Response::new(TokenizerReply {
            tokenizer_json: self.state.tokenizer_json.clone(),
        }))
    }
}

/// The downstream half of a relay: our stream to the next hop.
struct Downstream {
    send: mpsc::Sender<SessionRequest>,
    replies: Streaming<SessionReply>,
}

impl Downstream {
    async fn open(open: &Open) -> Result<Self, Status> {
        let hop = &open.next[0];
        let mut client = unfed_proto::connect_node(&hop.address)
            .await
            .map_err(Status::unavailable)?;
        let (send, rx) = mpsc::channel(STREAM_BUFFER);
        let next = Open {
            model_id: open.model_id.clone(),
            shard_index: hop.shard_index,
            next: open.next[1..].to_vec(),
            sampling: open.sampling,
        };
        send.send(request(session_request::Kind::Open(next)))
            .await
            .map_err(|_| relay_lost())?;
        let mut replies = client.session(ReceiverStream::new(rx)).await?.into_inner();
        match within(OPEN_TIMEOUT, replies.message()).await?? {
            Some(SessionReply {
                kind: Some(session_reply::Kind::Opened(_)),
            }) => Ok(Self { send, replies }),
            _ => Err(Status::unavailable("the next hop did not open the session")),
        }
    }

    async fn step(&mut self, step: Step) -> Result<u32, Status> {
        self.send
            .send(request(session_request::Kind::Step(step)))
            .await
            .map_err(|_| relay_lost())?;
        match within(STEP_TIMEOUT, self.replies.message()).await?? {
            Some(SessionReply {
                kind: Some(session_reply::Kind::Token(t)),
            }) => Ok(t.id),
            _ => Err(relay_lost()),
        }
    }
}

/// Waits for `f` at most `limit`; a hop that takes longer counts as gone.
async fn within<T>(limit: Duration, f: impl std::future::Future<Output = T>) -> Result<T, Status> {
    tokio::time::timeout(limit, f)
        .await
        .map_err(|_| Status::deadline_exceeded("the next hop did not answer in time"))
}

fn relay_lost() -> Status {
    Status::unavailable("the next hop closed the session")
}

fn request(kind: session_request::Kind) -> SessionRequest {
    SessionRequest { kind: Some(kind) }
}

fn reply(kind: session_reply::Kind) -> Result<SessionReply, Status> {
    Ok(SessionReply { kind: Some(kind) })
}

async fn run_session(
    state: &NodeState,
    id: u64,
    mut inbound: Streaming<SessionRequest>,
    tx: &mpsc::Sender<Result<SessionReply, Status>>,
) -> Result<(), Status> {
    let open = match inbound.message().await? {
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
    // The rest of the route is exactly the following shards, in order: a client cannot make a
    // node open more (or looping) connections than the model has shards.
    let expected: Vec<u32> = (state.shard_index + 1..state.num_shards).collect();
    let given: Vec<u32> = open.next.iter().map(|h| h.shard_index).collect();
    if given != expected {
        return Err(Status::invalid_argument(if state.head {
            "the last shard has no next hop".to_string()
        } else if open.next.is_empty() {
            "this shard needs a next hop".to_string()
        } else {
            format!("the next hops must be shards {expected:?}, not {given:?}")
        }));
    }
    let sampling = match &open.sampling {
        Some(s) => Some(convert::sampling_params(s).map_err(Status::invalid_argument)?),
        None => None,
    };
    state
        .forward
        .open(id, sampling)
        .await
        .map_err(Status::resource_exhausted)?;
    let mut downstream = if state.head {
        None
    } else {
        Some(Downstream::open(&open).await?)
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
        let step = match msg?.kind {
            Some(session_request::Kind::Step(step)) => step,
            _ => return Err(Status::invalid_argument("expected a Step")),
        };
        let input = match (step.input, state.embedding) {
            (Some(step::Input::Tokens(t)), true) => StepInput::Tokens(t.ids),
            (Some(step::Input::Hidden(h)), false) => {
                let values = convert::hidden_values(&h, state.hidden)
                    .map_err(|e| Status::invalid_argument(e.0))?;
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
            .step(id, input, step.history.clone())
            .await
            .map_err(|e| {
                if e.starts_with("busy") {
                    Status::resource_exhausted(e)
                } else {
                    Status::invalid_argument(e)
                }
            })?;
        let token = match (out, downstream.as_mut()) {
            (StepOutput::Token(t), None) => t,
            (StepOutput::Hidden { rows, cols, values }, Some(down)) => {
                let hidden: Hidden = convert::hidden(rows, cols, &values);
                down.step(Step {
                    history: step.history,
                    input: Some(step::Input::Hidden(hidden)),
                })
                .await?
            }
            _ => {
                return Err(Status::internal(
                    "shard output does not fit its place in the route",
                ));
            }
        };
        send_up(
            tx,
            session_reply::Kind::Token(Token { id: token }),
            state.limits.idle_timeout,
        )
        .await?;
    }
    Ok(())
}

/// Sends a reply upstream, giving up on a reader that stops reading.
async fn send_up(
    tx: &mpsc::Sender<Result<SessionReply, Status>>,
    kind: session_reply::Kind,
    limit: Duration,
) -> Result<(), Status> {
    match tokio::time::timeout(limit, tx.send(reply(kind))).await {
        Ok(Ok(())) => Ok(()),
        _ => Err(Status::cancelled("the client stopped reading")),
    }
}
