//! The gRPC face of the registry: [`RegistryService`] implements the generated `Registry`
//! trait by sending each call to the core's thread, [`to_status`] is the one mapping from
//! [`RegistryError`] to `tonic::Status`, and [`serve`] runs it all on a listener.

use std::future::Future;

use tokio::net::TcpListener;
use tonic::{Request, Response, Status};
use unfed_proto::MAX_REGISTRY_MESSAGE;
use unfed_proto::registry::registry_server::{Registry, RegistryServer};
use unfed_proto::registry::{
    ClusterInfoReply, ClusterInfoRequest, DiscoverReply, DiscoverRequest, GetManifestReply,
    GetManifestRequest, GuardInfo, HeartbeatReply, ListGuardsReply, ListGuardsRequest,
    ListModelsReply, ListModelsRequest, ModelStatus, NodeInfo, PairInfo, RegisterReply,
    ShardStatus, SignedPayload, UnregisterReply,
};

use crate::worker::{CoreHandle, CoreThread};
use crate::{RegistryCore, RegistryError};

/// Most concurrent requests served on one connection.
pub const MAX_CONCURRENT_PER_CONNECTION: usize = 64;

/// The one mapping from a registry error to the status a peer sees. Storage failures become a
/// generic `Internal` message: SQL errors and file paths never leave the process.
pub fn to_status(err: &RegistryError) -> Status {
    use RegistryError as E;
    match err {
        E::MalformedPayload(_)
        | E::WrongKind { .. }
        | E::InvalidField { .. }
        | E::MpcRole { .. }
        | E::BadManifest(_) => Status::invalid_argument(err.to_string()),
        E::BadSignature(_) => Status::unauthenticated(err.to_string()),
        E::WrongSigner { .. } => Status::permission_denied(err.to_string()),
        E::Replay { .. } => Status::already_exists(err.to_string()),
        E::StaleTimestamp { .. } | E::ManifestConflict { .. } => {
            Status::failed_precondition(err.to_string())
        }
        E::NotRegistered { .. } | E::UnknownModel(_) => Status::not_found(err.to_string()),
        E::TooManyModels { .. } | E::TooManyNodesForIdentity { .. } | E::TooManyNodes { .. } => {
            Status::resource_exhausted(err.to_string())
        }
        E::Storage(_) | E::CorruptManifest { .. } => {
            Status::internal("internal registry error; the request was not applied")
        }
        E::Unavailable => Status::unavailable(err.to_string()),
    }
}

/// The registry's gRPC service; every call runs on the core's thread.
#[derive(Debug, Clone)]
pub struct RegistryService {
    core: CoreHandle,
}

impl RegistryService {
    /// A service over the core behind `core`.
    pub fn new(core: CoreHandle) -> Self {
        Self { core }
    }

    /// The tonic server for this service, with both message limits set to
    /// [`MAX_REGISTRY_MESSAGE`].
    pub fn into_server(self) -> RegistryServer<Self> {
        RegistryServer::new(self)
            .max_decoding_message_size(MAX_REGISTRY_MESSAGE)
            .max_encoding_message_size(MAX_REGISTRY_MESSAGE)
    }

    async fn call<R, F>(&self, f: F) -> Result<Response<R>, Status>
    where
        F: FnOnce(&mut RegistryCore) -> Result<R, RegistryError> + Send + 'static,
        R: Send + 'static,
    {
        self.core
            .call(f)
            .await
            .map(Response::new)
            .map_err(|e| to_status(&e))
    }
}

#[tonic::async_trait]
impl Registry for RegistryService {
    async fn register(
        &self,
        request: Request<SignedPayload>,
    ) -> Result<Response<RegisterReply>, Status> {
        let p = request.into_inner();
        self.call(move |core| {
            let r = core.register(&p.payload, &p.signature, &p.manifest_json)?;
            Ok(RegisterReply {
                heartbeat_interval_ms: r.heartbeat_interval_ms,
            })
        })
        .await
    }

    async fn heartbeat(
        &self,
        request: Request<SignedPayload>,
    ) -> Result<Response<HeartbeatReply>, Status> {
        let p = request.into_inner();
        if !p.manifest_json.is_empty() {
            return Err(Status::invalid_argument(
                "heartbeats carry no manifest_json; leave it empty",
            ));
        }
        self.call(move |core| {
            core.heartbeat(&p.payload, &p.signature)
                .map(|()| HeartbeatReply {})
        })
        .await
    }

    async fn unregister(
        &self,
        request: Request<SignedPayload>,
    ) -> Result<Response<UnregisterReply>, Status> {
        let p = request.into_inner();
        if !p.manifest_json.is_empty() {
            return Err(Status::invalid_argument(
                "unregistrations carry no manifest_json; leave it empty",
            ));
        }
        self.call(move |core| {
            core.unregister(&p.payload, &p.signature)
                .map(|()| UnregisterReply {})
        })
        .await
    }

    async fn register_guard(
        &self,
        request: Request<SignedPayload>,
    ) -> Result<Response<RegisterReply>, Status> {
        let p = request.into_inner();
        if !p.manifest_json.is_empty() {
            return Err(Status::invalid_argument(
                "guard registrations carry no manifest_json; leave it empty",
            ));
        }
        self.call(move |core| {
            let r = core.register_guard(&p.payload, &p.signature)?;
            Ok(RegisterReply {
                heartbeat_interval_ms: r.heartbeat_interval_ms,
            })
        })
        .await
    }

    async fn list_guards(
        &self,
        _request: Request<ListGuardsRequest>,
    ) -> Result<Response<ListGuardsReply>, Status> {
        self.call(|core| {
            let guards = core
                .guards()?
                .into_iter()
                .map(|g| GuardInfo {
                    identity: g.identity.to_string(),
                    address: g.address,
                    onion_key: g.onion_key,
                    last_heartbeat_ms: g.last_heartbeat_ms,
                })
                .collect();
            Ok(ListGuardsReply { guards })
        })
        .await
    }

    async fn list_models(
        &self,
        _request: Request<ListModelsRequest>,
    ) -> Result<Response<ListModelsReply>, Status> {
        self.call(|core| {
            let models = core
                .list_models()?
                .into_iter()
                .map(|m| ModelStatus {
                    model_id: m.model_id,
                    status: m.readiness.as_str().to_owned(),
                    shards: m
                        .shards
                        .into_iter()
                        .map(|s| ShardStatus {
                            shard_index: s.shard_index,
                            layer_start: s.layer_start,
                            layer_end: s.layer_end,
                            healthy_nodes: s.healthy_nodes,
                        })
                        .collect(),
                })
                .collect();
            Ok(ListModelsReply { models })
        })
        .await
    }

    async fn discover(
        &self,
        request: Request<DiscoverRequest>,
    ) -> Result<Response<DiscoverReply>, Status> {
        let model_id = request.into_inner().model_id;
        self.call(move |core| {
            let d = core.discover(&model_id)?;
            Ok(DiscoverReply {
                model_id: d.model_id,
                num_shards: d.num_shards,
                nodes: d
                    .nodes
                    .into_iter()
                    .map(|n| NodeInfo {
                        identity: n.identity.to_string(),
                        address: n.address,
                        shard_index: n.shard_index,
                        last_heartbeat_ms: n.last_heartbeat_ms,
                        onion_key: n.onion_key,
                        pair: n.pair.map(|b| PairInfo {
                            identity: b.identity.to_string(),
                            address: b.address,
                            onion_key: b.onion_key,
                        }),
                    })
                    .collect(),
            })
        })
        .await
    }

    async fn get_manifest(
        &self,
        request: Request<GetManifestRequest>,
    ) -> Result<Response<GetManifestReply>, Status> {
        let model_id = request.into_inner().model_id;
        self.call(move |core| {
            Ok(GetManifestReply {
                manifest_json: core.manifest_json(&model_id)?,
            })
        })
        .await
    }

    async fn cluster_info(
        &self,
        _request: Request<ClusterInfoRequest>,
    ) -> Result<Response<ClusterInfoReply>, Status> {
        self.call(|core| {
            let c = core.cluster();
            Ok(ClusterInfoReply {
                name: c.name.clone(),
                price_per_1k_input_tokens: c.price_per_1k_input_tokens,
                price_per_1k_output_tokens: c.price_per_1k_output_tokens,
                min_stake: c.min_stake.clone(),
                slash_fraction: c.slash_fraction,
                challenge_window_s: c.challenge_window_s,
                daemon_quorum: c.daemon_quorum,
            })
        })
        .await
    }
}

/// Why [`serve`] stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The database thread could not be started.
    #[error("cannot start the registry's database thread: {0}")]
    Spawn(#[source] std::io::Error),
    /// The gRPC server failed.
    #[error("registry gRPC server failed: {0}")]
    Transport(#[source] tonic::transport::Error),
    /// It would listen off loopback without TLS, or its certificate is unusable.
    #[error(transparent)]
    Tls(#[from] unfed_proto::tls::TlsError),
}

/// Serves the registry on `listener` (with TLS when `tls` is given; off loopback it must be)
/// until `shutdown` completes, then lets in-flight requests finish, stops the database thread
/// and closes the database.
pub async fn serve<F>(
    listener: TcpListener,
    tls: Option<&unfed_proto::tls::ServerTls>,
    core: RegistryCore,
    shutdown: F,
) -> Result<(), ServeError>
where
    F: Future<Output = ()> + Send,
{
    let local = listener.local_addr().map_err(ServeError::Spawn)?;
    unfed_proto::tls::check_exposure(local, None, tls.is_some())?;
    let server = unfed_proto::tls::server(tls)?;
    let thread = CoreThread::spawn(core).map_err(ServeError::Spawn)?;
    let result = server
        .concurrency_limit_per_connection(MAX_CONCURRENT_PER_CONNECTION)
        .tcp_nodelay(true)
        .add_service(RegistryService::new(thread.handle()).into_server())
        .serve_with_incoming_shutdown(
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
            shutdown,
        )
        .await;
    // Dropping the core (returned by the thread) closes the database.
    drop(thread.shutdown().await);
    result.map_err(ServeError::Transport)
}
