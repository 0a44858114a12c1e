//! What a node and a guard share to relay a circuit: the stream to the next hop, the check that
//! the next hop is a registered node, time limits, and the mapping of errors to statuses.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Semaphore, mpsc};
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use unfed_proto::node::{
    Open, Opened, SessionReply, SessionRequest, session_reply, session_request,
};
use unfed_proto::raw::RawStream;

use crate::circuit::CircuitError;
use crate::setup_limit::SetupLimit;
use crate::views::{ViewLog, saw_peer};

/// Messages buffered per direction of a session stream.
const STREAM_BUFFER: usize = 4;
/// How long the next hop may take to open its part of a route.
pub(crate) const OPEN_TIMEOUT: Duration = Duration::from_secs(15);
/// How long the rest of the route may take for one step (a long prompt's prefill included).
const STEP_TIMEOUT: Duration = Duration::from_secs(120);
/// How often a relay may ask the registry again about a next hop it does not know.
const HOP_REFRESH: Duration = Duration::from_secs(2);
// A step frame must be able to carry the largest message a node stream takes.
const _: () = assert!(
    unfed_proto::MAX_NODE_MESSAGE <= unfed_onion::MAX_MESSAGE_LEN + unfed_onion::FRAME_OVERHEAD
);

/// Models whose nodes a relay remembers at once.
const MAX_MODELS: usize = 64;

/// The reply half of a session stream.
pub(crate) type ReplyStream = Pin<Box<dyn Stream<Item = Result<SessionReply, Status>> + Send>>;

/// Records the peer (when `views` is on), checks its setup budget and takes one of `permits`
/// before anything is read (or refuses the stream), then runs `session` on the inbound stream
/// on a task of its own; what it sends, and the error it ends with, stream back.
pub(crate) fn spawn_session<F, Fut>(
    limit: &SetupLimit,
    views: &Option<ViewLog>,
    permits: &Arc<Semaphore>,
    request: Request<Streaming<SessionRequest>>,
    session: F,
) -> Result<Response<ReplyStream>, Status>
where
    F: FnOnce(Streaming<SessionRequest>, mpsc::Sender<Result<SessionReply, Status>>) -> Fut,
    Fut: Future<Output = Result<(), Status>> + Send + 'static,
{
    saw_peer(views, &request);
    if let Some(peer) = request.remote_addr()
        && !limit.allow(peer.ip(), std::time::Instant::now())
    {
        return Err(Status::resource_exhausted(
            "too many circuit setups from this address; try again shortly",
        ));
    }
    let permit = permits
        .clone()
        .try_acquire_owned()
        .map_err(|_| Status::resource_exhausted("busy: every session slot is taken"))?;
    let (tx, rx) = mpsc::channel(STREAM_BUFFER);
    let run = session(request.into_inner(), tx.clone());
    tokio::spawn(async move {
        let _permit = permit;
        if let Err(status) = run.await {
            let _ = tx.send(Err(status)).await;
        }
    });
    Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
}

/// Which next hops a relay may connect to: the registry's discovery, cached per model.
pub(crate) struct NextHops {
    /// None: any (a node run without a registry, for tests and private pipelines).
    registry: Option<String>,
    /// How the registry and next hops are reached.
    pub dialer: unfed_proto::Dialer,
    known: tokio::sync::Mutex<HashMap<String, KnownHops>>,
}

impl NextHops {
    pub fn new(registry: Option<String>, dialer: unfed_proto::Dialer) -> Self {
        Self {
            registry,
            dialer,
            known: tokio::sync::Mutex::new(HashMap::new()),
        }
    }

    /// Whether a relay may connect to `address` for `shard` of `model_id`: with a registry,
    /// only a node it lists for that shard (asked again when the address is not in its last
    /// answer, at most every [`HOP_REFRESH`]), so a client cannot make a node connect to an
    /// address of its choosing.
    pub async fn check(&self, model_id: &str, address: &str, shard: u32) -> Result<(), Status> {
        if self.registry.is_none() {
            return Ok(());
        }
        match self
            .find(model_id, |a, s| a == address && s == shard)
            .await?
        {
            Some(_) => Ok(()),
            None => Err(not_listed(shard)),
        }
    }

    /// A node the registry lists for `shard` of `model_id`.
    pub async fn any(&self, model_id: &str, shard: u32) -> Result<String, Status> {
        if self.registry.is_none() {
            return Err(Status::failed_precondition("this relay has no registry"));
        }
        self.find(model_id, |_, s| s == shard)
            .await?
            .ok_or_else(|| {
                Status::unavailable(format!("the registry lists no node for shard {shard}"))
            })
    }

    /// The address of a node in the registry's last answer about `model_id` that `wanted`
    /// accepts, asking the registry again when there is none (at most every [`HOP_REFRESH`]).
    async fn find(
        &self,
        model_id: &str,
        wanted: impl Fn(&str, u32) -> bool,
    ) -> Result<Option<String>, Status> {
        let Some(registry) = &self.registry else {
            return Ok(None);
        };
        let pick = |hops: &[(String, u32)]| {
            hops.iter()
                .find(|(a, s)| wanted(a, *s))
                .map(|(a, _)| a.clone())
        };
        {
            // The lock is never held across a call: a slow registry delays only the setups
            // that need it, and at most one query per model runs per HOP_REFRESH.
            let mut models = self.known.lock().await;
            if models.len() >= MAX_MODELS && !models.contains_key(model_id) {
                models.clear();
            }
            let cache = models.entry(model_id.to_string()).or_default();
            if let Some(found) = pick(&cache.hops) {
                return Ok(Some(found));
            }
            if cache.asked.is_some_and(|t| t.elapsed() < HOP_REFRESH) {
                return Ok(None);
            }
            cache.asked = Some(std::time::Instant::now());
        }
        let mut client =
            self.dialer.connect_registry(registry).await.map_err(|_| {
                Status::unavailable("cannot reach the registry to check the next hop")
            })?;
        let reply = within(
            OPEN_TIMEOUT,
            client.discover(unfed_proto::registry::DiscoverRequest {
                model_id: model_id.to_string(),
            }),
        )
        .await?
        .map_err(|s| Status::unavailable(format!("registry: {}", s.message())))?
        .into_inner();
        let hops: Vec<(String, u32)> = reply
            .nodes
            .into_iter()
            .map(|n| (n.address, n.shard_index))
            .collect();
        let found = pick(&hops);
        let mut models = self.known.lock().await;
        models.entry(model_id.to_string()).or_default().hops = hops;
        Ok(found)
    }
}

fn not_listed(shard: u32) -> Status {
    Status::invalid_argument(format!(
        "the next hop is not a node the registry lists for shard {shard}"
    ))
}

/// The registry's last answer about this model's nodes.
#[derive(Default)]
struct KnownHops {
    asked: Option<std::time::Instant>,
    /// (address, shard) of every node it listed.
    hops: Vec<(String, u32)>,
}

/// The downstream half of a relay: our stream to the next hop.
pub(crate) struct Downstream {
    send: mpsc::Sender<SessionRequest>,
    replies: Streaming<SessionReply>,
}

impl Downstream {
    pub async fn open(
        dialer: &unfed_proto::Dialer,
        address: &str,
        open: Open,
    ) -> Result<Self, Status> {
        Ok(Self::open_with(dialer, address, open).await?.0)
    }

    /// Opens the next hop's part of the route with `open.raw` set, and the raw stream its
    /// ticket opens, on which the session's frames go and its cells come back (reads wait at
    /// most [`STEP_TIMEOUT`]). The gRPC stream must be kept for as long as the session.
    pub async fn open_raw(
        dialer: &unfed_proto::Dialer,
        address: &str,
        open: Open,
    ) -> Result<(Self, RawStream), Status> {
        let (down, opened) = Self::open_with(dialer, address, Open { raw: true, ..open }).await?;
        let ticket: unfed_proto::raw::Ticket = opened
            .ticket
            .as_slice()
            .try_into()
            .map_err(|_| Status::unavailable("the next hop gave no ticket for a raw stream"))?;
        let raw = dialer
            .connect_raw(address, &ticket, STEP_TIMEOUT)
            .await
            .map_err(|_| relay_lost())?;
        Ok((down, raw))
    }

    async fn open_with(
        dialer: &unfed_proto::Dialer,
        address: &str,
        open: Open,
    ) -> Result<(Self, Opened), Status> {
        let mut client = dialer
            .connect_node(address)
            .await
            .map_err(Status::unavailable)?;
        let (send, rx) = mpsc::channel(STREAM_BUFFER);
        send.send(request(session_request::Kind::Open(open)))
            .await
            .map_err(|_| relay_lost())?;
        // What the next hop says goes no further than this hop: a relay passes on no bytes it
        // received, errors included, so the client learns only that the route broke.
        let mut replies = within(OPEN_TIMEOUT, client.session(ReceiverStream::new(rx)))
            .await?
            .map_err(|_| relay_lost())?
            .into_inner();
        match within(OPEN_TIMEOUT, replies.message())
            .await?
            .map_err(|_| relay_lost())?
        {
            Some(SessionReply {
                kind: Some(session_reply::Kind::Opened(opened)),
            }) => Ok((Self { send, replies }, opened)),
            _ => Err(Status::unavailable("the next hop did not open the session")),
        }
    }

    /// Sends one link frame; returns the reply cell.
    pub async fn step(&mut self, frame: Vec<u8>) -> Result<Vec<u8>, Status> {
        self.send(frame).await?;
        within(STEP_TIMEOUT, self.next_cell()).await?
    }

    /// Sends one link frame.
    pub async fn send(&mut self, frame: Vec<u8>) -> Result<(), Status> {
        self.send
            .send(request(session_request::Kind::Frame(frame.into())))
            .await
            .map_err(|_| relay_lost())
    }

    /// The next reply cell (cancel-safe).
    pub async fn next_cell(&mut self) -> Result<Vec<u8>, Status> {
        match self.replies.message().await.map_err(|_| relay_lost())? {
            Some(SessionReply {
                kind: Some(session_reply::Kind::Cell(cell)),
            }) => Ok(cell),
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

/// A circuit error as the peer sees it: what was wrong with its input, or (sealing) ours.
pub(crate) fn refused(e: CircuitError) -> Status {
    match e {
        CircuitError::Seal(_) => Status::internal(e.to_string()),
        _ => Status::invalid_argument(e.to_string()),
    }
}

pub(crate) fn relay_lost() -> Status {
    Status::unavailable("the next hop closed the session")
}

fn request(kind: session_request::Kind) -> SessionRequest {
    SessionRequest { kind: Some(kind) }
}

fn reply(kind: session_reply::Kind) -> Result<SessionReply, Status> {
    Ok(SessionReply { kind: Some(kind) })
}

/// Sends a reply upstream, giving up on a reader that stops reading.
pub(crate) async fn send_up(
    tx: &mpsc::Sender<Result<SessionReply, Status>>,
    kind: session_reply::Kind,
    limit: Duration,
) -> Result<(), Status> {
    match tokio::time::timeout(limit, tx.send(reply(kind))).await {
        Ok(Ok(())) => Ok(()),
        _ => Err(Status::cancelled("the client stopped reading")),
    }
}
