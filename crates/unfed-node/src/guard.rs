//! The guard relay (`unfed guard`): an optional first hop in front of a circuit's entry node.
//! The client connects to the guard, so the entry node (which sees token ids in output mode
//! `off`) never learns the client's address; the guard learns the client's address and the
//! entry node's, and nothing else: the frames it forwards are sealed on the entry node's link.
//! With an identity key it registers at the registry (signed, with its onion key) and
//! heartbeats there, so clients can find it.

use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::{Semaphore, mpsc};
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status, Streaming};
use unfed_proto::node::guard_server::{Guard, GuardServer};
use unfed_proto::node::{
    GuardTokenizerRequest, OnionKeyReply, OnionKeyRequest, Open, Opened, SessionReply,
    SessionRequest, TokenizerReply, TokenizerRequest, session_reply, session_request,
};

use crate::circuit::{HopCircuit, Place};
use crate::onion_keys::OnionKeys;
use crate::relay::{
    Downstream, NextHops, OPEN_TIMEOUT, ReplyStream, refused, relay_lost, send_up, spawn_session,
};
use crate::setup_limit::SetupLimit;
use crate::views::{Seen, ViewLog, saw, saw_peer};

/// How a guard runs.
pub struct GuardConfig {
    /// The registry that lists the entry nodes a guard may connect to (None: any; tests only).
    pub registry: Option<String>,
    /// Sessions relayed at once.
    pub max_sessions: usize,
    /// A client silent this long loses its session.
    pub idle_timeout: std::time::Duration,
    /// This guard's certificate (None: plaintext, loopback only).
    pub tls: Option<unfed_proto::tls::ServerTls>,
    /// How the registry and entry nodes are reached.
    pub dialer: unfed_proto::Dialer,
    /// Where to record what this guard sees (an audit aid; None: nothing is recorded).
    pub views: Option<ViewLog>,
    /// Register at `registry` with this identity and advertised address, so that clients can
    /// find the guard there (None: clients learn of it some other way).
    pub announce: Option<GuardAnnouncement>,
}

/// How a guard presents itself at the registry.
pub struct GuardAnnouncement {
    /// The identity that signs its registration and heartbeats.
    pub key: unfed_identity::NodeKey,
    /// The address clients dial: `https://host:port` with TLS, `host:port` on loopback.
    pub advertise: String,
}

/// Serves the guard on `listener` until `shutdown` (registered at the registry meanwhile, when
/// `config.announce` says how).
pub async fn serve(
    config: GuardConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), String> {
    let local = listener.local_addr().map_err(|e| e.to_string())?;
    let advertised = config.announce.as_ref().map(|a| a.advertise.as_str());
    unfed_proto::tls::check_exposure(local, advertised, config.tls.is_some())
        .map_err(|e| e.to_string())?;
    let max_sessions = config.max_sessions;
    let state = Arc::new(GuardState {
        onion: OnionKeys::generate(),
        next_hops: NextHops::new(config.registry.clone(), config.dialer.clone()),
        permits: Arc::new(Semaphore::new(max_sessions)),
        idle_timeout: config.idle_timeout,
        views: config.views,
        setups: SetupLimit::default(),
    });
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let signal = tokio::spawn(async move {
        shutdown.await;
        let _ = stop.send(true);
    });
    let heartbeats = match (config.announce, &config.registry) {
        (Some(a), Some(registry)) => {
            let announcement = crate::Announcement {
                advertise: a.advertise,
                onion_key: state.onion.public_key().to_bytes(),
                serves: crate::Serves::Guard,
            };
            let reg = crate::Registration::register(&config.dialer, registry, a.key, &announcement)
                .await?;
            let (keys, load) = (state.clone(), state.clone());
            Some(crate::keep_registered(
                reg,
                announcement,
                move || keys.onion.public_key().to_bytes(),
                move || (max_sessions - load.permits.available_permits()) as u32,
                stopped.clone(),
            ))
        }
        (Some(_), None) => return Err("a guard can only register with a registry".into()),
        (None, _) => None,
    };
    let server = unfed_proto::tls::server(config.tls.as_ref())
        .map_err(|e| e.to_string())?
        .max_concurrent_streams(Some((2 * max_sessions).min(u32::MAX as usize) as u32))
        .add_service(
            GuardServer::new(GuardService { state })
                .max_decoding_message_size(unfed_proto::MAX_NODE_MESSAGE)
                .max_encoding_message_size(unfed_proto::MAX_NODE_MESSAGE),
        )
        .serve_with_incoming_shutdown(
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
            crate::until_stopped(stopped.clone()),
        );
    let served = crate::drain(server, stopped).await;
    signal.abort();
    if let Some(h) = heartbeats {
        let _ = h.await;
    }
    served.map_err(|e| e.to_string())
}

struct GuardState {
    onion: OnionKeys,
    next_hops: NextHops,
    permits: Arc<Semaphore>,
    idle_timeout: std::time::Duration,
    views: Option<ViewLog>,
    setups: SetupLimit,
}

#[derive(Clone)]
struct GuardService {
    state: Arc<GuardState>,
}

#[tonic::async_trait]
impl Guard for GuardService {
    type SessionStream = ReplyStream;

    async fn session(
        &self,
        request: Request<Streaming<SessionRequest>>,
    ) -> Result<Response<ReplyStream>, Status> {
        let state = self.state.clone();
        spawn_session(
            &self.state.setups,
            &self.state.views,
            &self.state.permits,
            request,
            move |inbound, tx| async move { relay(&state, inbound, &tx).await },
        )
    }

    async fn onion_key(
        &self,
        request: Request<OnionKeyRequest>,
    ) -> Result<Response<OnionKeyReply>, Status> {
        saw_peer(&self.state.views, &request);
        let key = self.state.onion.public_key();
        Ok(Response::new(OnionKeyReply {
            onion_key: key.to_bytes().to_vec(),
        }))
    }

    async fn tokenizer(
        &self,
        request: Request<GuardTokenizerRequest>,
    ) -> Result<Response<TokenizerReply>, Status> {
        saw_peer(&self.state.views, &request);
        let model_id = request.into_inner().model_id;
        if model_id.is_empty() || model_id.len() > 128 {
            return Err(Status::invalid_argument("a model id is 1 to 128 bytes"));
        }
        let state = &self.state;
        let entry = state.next_hops.any(&model_id, 0).await?;
        let fetch = async {
            state
                .next_hops
                .dialer
                .connect_node(&entry)
                .await
                .map_err(|_| relay_lost())?
                .tokenizer(TokenizerRequest {})
                .await
                .map_err(|_| relay_lost())
        };
        tokio::time::timeout(OPEN_TIMEOUT, fetch)
            .await
            .map_err(|_| relay_lost())?
    }
}

async fn relay(
    state: &GuardState,
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
        }) if open.shard_index == 0 => open,
        _ => {
            return Err(Status::invalid_argument(
                "a guarded session starts with an Open for shard 0",
            ));
        }
    };
    let peeled = state.onion.peel(&open.onion)?;
    let (mut circuit, place) = HopCircuit::setup(&peeled, false).map_err(refused)?;
    let Place::Relay { next_hop, header } = place else {
        unreachable!("setup as a relay gives a relay's place")
    };
    state.next_hops.check(&open.model_id, &next_hop, 0).await?;
    let entry = Open {
        model_id: open.model_id,
        shard_index: 0,
        onion: header,
        raw: false,
    };
    let mut down = Downstream::open(&state.next_hops.dialer, &next_hop, entry).await?;
    send_up(
        tx,
        session_reply::Kind::Opened(Opened::default()),
        state.idle_timeout,
    )
    .await?;
    // Frames go on as they come and cells back as they come: not every frame has a reply
    // (the layers an MPC pair gets ahead of a step have none), and the next may come before
    // the last one's.
    loop {
        tokio::select! {
            msg = tokio::time::timeout(state.idle_timeout, inbound.next()) => {
                let Ok(msg) = msg else {
                    return Err(Status::deadline_exceeded("the session was idle too long"));
                };
                let Some(msg) = msg else { break };
                let frame = match msg?.kind {
                    Some(session_request::Kind::Frame(frame)) => frame,
                    _ => return Err(Status::invalid_argument("expected a step frame")),
                };
                saw(&state.views, || Seen::Frame(frame.to_vec()));
                down.send(circuit.open_guarded(&frame).map_err(refused)?).await?;
            }
            cell = down.next_cell() => {
                let cell = cell?;
                saw(&state.views, || Seen::Cell(cell.clone()));
                let cell = circuit.relay_reply(&cell).map_err(|_| relay_lost())?;
                send_up(tx, session_reply::Kind::Cell(cell), state.idle_timeout).await?;
            }
        }
    }
    Ok(())
}
