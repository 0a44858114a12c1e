//! Party B's service: reached only by its party A (`--peer`), never by clients. Each stream
//! is one client session: the client's one-hop onion header gives B the session's keys, then
//! every step's frame (sealed by the client, forwarded unread by A) holds B's dealt material
//! and the seed of the pad B takes off its output share before sending it to A. A frame of no
//! positions holds the layers of the next one-position step, sent ahead. The rounds of each
//! session's steps run on a raw stream A opens to B's port with the ticket B gave it.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::{Semaphore, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use unfed_mpc::Role;
use unfed_mpc::shard::{ShardState, pad};
use unfed_onion::Direction;
use unfed_proto::circuit as wire;
use unfed_proto::node::pair_server::Pair;
use unfed_proto::node::{PairFrame, pair_frame};

use super::bridge::{self, Inbound, RoundLink};
use super::{MAX_STEP_POSITIONS, Party, StepJob};
use crate::onion_keys::OnionKeys;
use crate::tickets::Tickets;

/// How long A may take to open a session it started.
const OPEN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(15);

/// Party B's state, shared by its sessions.
pub struct PartyB {
    pub model_id: String,
    pub party: Arc<Party>,
    /// B's onion key: clients seal B's frames to it (published, signed, at registration).
    pub onion: OnionKeys,
    pub permits: Arc<Semaphore>,
    max_sessions: usize,
    pub idle_timeout: std::time::Duration,
    next_session: AtomicU64,
    /// Sessions waiting for A's raw stream of rounds, by the ticket B gave A.
    waiting: Arc<Tickets>,
}

impl PartyB {
    pub fn new(
        model_id: String,
        party: Arc<Party>,
        max_sessions: usize,
        idle_timeout: std::time::Duration,
    ) -> Self {
        Self {
            model_id,
            party,
            onion: OnionKeys::generate(),
            permits: Arc::new(Semaphore::new(max_sessions)),
            max_sessions,
            idle_timeout,
            next_session: AtomicU64::new(1),
            waiting: Arc::default(),
        }
    }

    /// The raw stream of rounds of a new session: a ticket sent to A on `tx`, and the stream
    /// A opens with it.
    async fn rounds(
        &self,
        tx: &mpsc::Sender<Result<PairFrame, Status>>,
    ) -> Result<RoundLink, Status> {
        let issued = self.waiting.issue();
        let frame = PairFrame {
            kind: Some(pair_frame::Kind::Ticket(issued.ticket.to_vec().into())),
        };
        let opened = match tx.send(Ok(frame)).await {
            Ok(()) => issued.wait(OPEN_TIMEOUT).await,
            Err(_) => None,
        };
        opened
            .map(|stream| RoundLink::new(stream, Role::B))
            .ok_or_else(|| {
                Status::deadline_exceeded(
                    "party A did not open the session's stream of rounds in time",
                )
            })
    }

    /// Sessions open now.
    pub fn active_sessions(&self) -> usize {
        self.max_sessions - self.permits.available_permits()
    }
}

/// The tonic service of party B.
#[derive(Clone)]
pub struct PairService(pub Arc<PartyB>);

type FrameStream =
    std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<PairFrame, Status>> + Send>>;

#[tonic::async_trait]
impl Pair for PairService {
    type SessionStream = FrameStream;

    async fn session(
        &self,
        request: Request<Streaming<PairFrame>>,
    ) -> Result<Response<FrameStream>, Status> {
        let b = self.0.clone();
        let permit = b
            .permits
            .clone()
            .try_acquire_owned()
            .map_err(|_| Status::resource_exhausted("busy: every session slot is taken"))?;
        let (tx, rx) = mpsc::channel(4);
        let inbound = bridge::read_frames(request.into_inner());
        let id = b.next_session.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(async move {
            let _permit = permit;
            if let Err(status) = run_session(&b, id, inbound, &tx).await {
                let _ = tx.send(Err(status)).await;
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

async fn run_session(
    b: &PartyB,
    id: u64,
    mut inbound: Inbound,
    tx: &mpsc::Sender<Result<PairFrame, Status>>,
) -> Result<(), Status> {
    let open = match tokio::time::timeout(OPEN_TIMEOUT, inbound.recv()).await {
        Ok(Some(Ok(PairFrame {
            kind: Some(pair_frame::Kind::Open(open)),
        }))) => open,
        Ok(Some(Err(s))) => return Err(s),
        Err(_) => return Err(Status::deadline_exceeded("no open message in time")),
        _ => {
            return Err(Status::invalid_argument(
                "a pair session starts with an open message",
            ));
        }
    };
    if open.model_id != b.model_id {
        return Err(Status::failed_precondition(format!(
            "this party serves {}, not {}",
            b.model_id, open.model_id
        )));
    }
    let peeled = b.onion.peel(&open.onion)?;
    if !peeled.is_last() || peeled.payload.0.iter().any(|&x| x != 0) {
        return Err(Status::invalid_argument(
            "party B's onion layer names no next hop and carries no payload",
        ));
    }
    let mut frames = peeled.keys.receiver(Direction::Forward);
    let mut link = Some(b.rounds(tx).await?);
    let party = b.party.clone();
    let mut state = ShardState::default();
    let mut ahead = super::Ahead::default();
    let mut step = 0u32;
    loop {
        let step_in = match tokio::time::timeout(b.idle_timeout, inbound.recv()).await {
            Err(_) => return Err(Status::deadline_exceeded("the session was idle too long")),
            Ok(None) => return Ok(()),
            Ok(Some(Err(s))) => return Err(s),
            Ok(Some(Ok(PairFrame {
                kind: Some(pair_frame::Kind::Step(step)),
            }))) => step,
            Ok(Some(Ok(_))) => return Err(Status::invalid_argument("expected a step")),
        };
        // The common words came from A, the sealed frame from the client: it opens only with
        // the common words the client dealt.
        let (input_common, layers_common) = (&step_in.input_common, &step_in.layers_common);
        let bound = wire::b_frame_bound(input_common, layers_common);
        let plain = frames
            .open_bound(&step_in.sealed, &bound)
            .map_err(|e| Status::invalid_argument(format!("a step for party B refused: {e}")))?;
        let frame = wire::decode_b_frame(&plain).map_err(Status::invalid_argument)?;
        let positions = frame.positions as usize;
        if positions == 0 {
            ahead.keep((frame.layers, layers_common))?;
            continue;
        }
        if positions > MAX_STEP_POSITIONS || state.positions() + positions > party.max_positions {
            return Err(Status::invalid_argument(format!(
                "an MPC step adds 1 to {MAX_STEP_POSITIONS} positions, within the session's {}",
                party.max_positions
            )));
        }
        let material = ahead.material(
            positions,
            (frame.input, input_common),
            (frame.layers, layers_common),
        )?;
        let job = StepJob {
            party: party.clone(),
            session: id,
            step,
            positions,
            material,
            pad: Some(pad(&frame.pad, positions * party.spec.layer.hidden)),
            state: std::mem::take(&mut state),
        };
        debug_assert_eq!(party.role, Role::B);
        state = bridge::run_step(job, &mut link).await?.1;
        step += 1;
    }
}

/// How to run party B.
pub struct PairConfig {
    pub shards_dir: std::path::PathBuf,
    /// Where B is reached by A: `https://host:port` with TLS, `host:port` on loopback without.
    pub advertise: String,
    /// Party A's address (streams are accepted only from its host) and identity.
    pub peer: String,
    pub peer_identity: unfed_identity::Address,
    pub registry: Option<String>,
    pub tls: Option<unfed_proto::tls::ServerTls>,
    pub dialer: unfed_proto::Dialer,
    pub view: Option<super::ViewFile>,
    pub key: unfed_identity::NodeKey,
    pub limits: crate::SessionLimits,
}

/// Loads shard 0 as party B, registers (naming A as its peer), and serves A until `shutdown`.
pub async fn run_b(
    config: PairConfig,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), crate::NodeError> {
    use crate::NodeError;
    let local = listener
        .local_addr()
        .map_err(|e| NodeError::Serve(e.to_string()))?;
    unfed_proto::tls::check_exposure(local, Some(&config.advertise), config.tls.is_some())?;
    let dir = config.shards_dir.clone();
    let (view, max_positions) = (config.view.clone(), config.limits.max_positions);
    let (manifest, party) = tokio::task::spawn_blocking(move || -> Result<_, NodeError> {
        let manifest = unfed_shard::read_manifest(&dir).map_err(Box::new)?;
        let party = super::load_party(&dir, &manifest, Role::B, view, max_positions)?;
        Ok((manifest, party))
    })
    .await
    .map_err(|e| NodeError::Serve(e.to_string()))??;
    let b = Arc::new(PartyB::new(
        manifest.model_id.clone(),
        Arc::new(party),
        config.limits.max_sessions,
        config.limits.idle_timeout,
    ));
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let signal = tokio::spawn(async move {
        shutdown.await;
        let _ = stop.send(true);
    });
    let heartbeats = match &config.registry {
        None => None,
        Some(registry) => {
            use sha2::Digest;
            let manifest_json = manifest.to_json();
            let announcement = crate::Announcement {
                advertise: config.advertise.clone(),
                onion_key: b.onion.public_key().to_bytes(),
                serves: crate::Serves::Shard(crate::ShardAnnouncement {
                    model_id: manifest.model_id.clone(),
                    shard_index: 0,
                    manifest_sha256: sha2::Sha256::digest(manifest_json.as_bytes()).into(),
                    manifest_json,
                    mpc: unfed_identity::MpcRole::B {
                        peer: config.peer_identity,
                    },
                }),
            };
            let reg =
                crate::Registration::register(&config.dialer, registry, config.key, &announcement)
                    .await
                    .map_err(NodeError::Registry)?;
            let (keys, load) = (b.clone(), b.clone());
            Some(crate::keep_registered(
                reg,
                announcement,
                move || keys.onion.public_key().to_bytes(),
                move || load.active_sessions() as u32,
                stopped.clone(),
            ))
        }
    };
    let max_streams = (2 * config.limits.max_sessions).min(u32::MAX as usize) as u32;
    // One port for both: A's gRPC connection and its sessions' raw streams of rounds.
    // Connections from another host than A's (when A's address is an IP address) are closed
    // as they come.
    let peer_ip: Option<IpAddr> = unfed_proto::tls::check_dialable(&config.peer)
        .ok()
        .and_then(|t| t.server_name().parse().ok());
    let (incoming, raw) =
        unfed_proto::raw::split(listener, config.tls.as_ref(), bridge::PEER_TIMEOUT, peer_ip)?;
    let attach = crate::tickets::attach_all(b.waiting.clone(), raw);
    let server = tonic::transport::Server::builder()
        .max_concurrent_streams(Some(max_streams))
        .initial_stream_window_size(Some(unfed_proto::NODE_STREAM_WINDOW))
        .initial_connection_window_size(Some(unfed_proto::NODE_CONNECTION_WINDOW))
        .add_service(
            unfed_proto::node::pair_server::PairServer::new(PairService(b))
                .max_decoding_message_size(unfed_proto::MAX_NODE_MESSAGE)
                .max_encoding_message_size(unfed_proto::MAX_NODE_MESSAGE),
        )
        .serve_with_incoming_shutdown(incoming, crate::until_stopped(stopped.clone()));
    let served = crate::drain(server, stopped).await;
    signal.abort();
    attach.abort();
    if let Some(h) = heartbeats {
        let _ = h.await;
    }
    served
}
