//! The user's client: discovers a model through a registry, picks one node per shard (see
//! `route`), builds an onion circuit along the route, and generates — resuming on replicas
//! (replaying the token history) when a node dies mid-generation. It connects to nothing but
//! the registry and its first hop (the guard, or else the entry node).

mod circuit;
pub mod guards;
pub mod pair;
mod route;

use std::time::Duration;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;
use tonic::transport::Channel;
use unfed_model::{ChatTemplate, Sampler, SamplingParams, TextTokenizer};
use unfed_onion::OnionPublicKey;
use unfed_proto::Dialer;
use unfed_proto::circuit as wire;
use unfed_proto::node::guard_client::GuardClient;
use unfed_proto::node::{
    GuardTokenizerRequest, OnionKeyRequest, Open, SessionReply, SessionRequest, TokenizerRequest,
    session_reply, session_request,
};
use unfed_proto::registry::registry_client::RegistryClient;
use unfed_proto::registry::{
    DiscoverRequest, GetManifestRequest, ListGuardsRequest, ListModelsRequest, ModelStatus,
};
use unfed_shard::Manifest;

pub use circuit::{ClientCircuit, Extras};
pub use guards::{GuardChoiceError, GuardState, ListedGuard};
pub use route::{Candidate, Route, pick_route};

/// How long a route may take to open.
const OPEN_TIMEOUT: Duration = Duration::from_secs(30);
/// How long one step may take along the whole route (a long prompt's prefill included).
const STEP_TIMEOUT: Duration = Duration::from_secs(180);

/// Times the client resumes a generation on other nodes before giving up.
const MAX_RESUMES: usize = 3;

/// What can go wrong for a client.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("registry {addr}: {message}")]
    Registry { addr: String, message: String },
    #[error("model {0}: {1}")]
    Model(String, String),
    #[error("no healthy node serves shard {shard} of {model}")]
    NoRoute { model: String, shard: u32 },
    #[error("generation failed after {attempts} attempts: {last}")]
    Generation { attempts: usize, last: String },
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("guard {addr}: {message}")]
    Guard { addr: String, message: String },
    #[error(transparent)]
    GuardChoice(#[from] GuardChoiceError),
}

pub type Result<T> = std::result::Result<T, ClientError>;

/// Who samples each token (the output privacy mode, docs/protocol.md "Circuits").
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum OutputMode {
    /// `off`: the last shard samples and returns the token.
    #[default]
    Off,
    /// `decode_client_sample`: the last shard returns the `top_k` largest logits (0: all of
    /// them) and the client samples, so no node learns which token was picked from them.
    ClientSample { top_k: u32 },
}

/// A connection to a registry.
pub struct Client {
    addr: String,
    dialer: Dialer,
    registry: RegistryClient<Channel>,
    ignore_eos: bool,
    output: OutputMode,
    /// A guard relay every circuit starts at.
    guard: Option<GuardHop>,
}

/// The guard relay in front of every circuit.
struct GuardHop {
    address: String,
    onion_key: OnionPublicKey,
    /// Its identity, when it came from the registry: no hop of a route may share it.
    identity: Option<String>,
}

/// A model as the client needs it: manifest, tokenizer, and where its shards are served.
pub struct RemoteModel {
    pub manifest: Manifest,
    pub tokenizer: TextTokenizer,
    /// The model's chat template, if it has one.
    pub chat: Option<ChatTemplate>,
}

impl Client {
    /// A client of the registry at `addr`, trusting the web PKI for `https://` addresses.
    pub async fn connect(addr: &str) -> Result<Self> {
        Self::connect_with(addr, Dialer::default()).await
    }

    /// A client of the registry at `addr` that opens every connection through `dialer`.
    pub async fn connect_with(addr: &str, dialer: Dialer) -> Result<Self> {
        let registry =
            dialer
                .connect_registry(addr)
                .await
                .map_err(|message| ClientError::Registry {
                    addr: addr.into(),
                    message,
                })?;
        Ok(Self {
            addr: addr.into(),
            dialer,
            registry,
            ignore_eos: false,
            output: OutputMode::Off,
            guard: None,
        })
    }

    /// Starts every circuit at the guard relay at `address`, so that the entry node never sees
    /// this client's address. The guard's onion key is taken from the guard itself: a guard
    /// that lies about it learns nothing more than an observer of the connection does (every
    /// frame it forwards is sealed on the entry node's link).
    pub async fn use_guard(&mut self, address: &str) -> Result<()> {
        let bad = |message: String| ClientError::Guard {
            addr: address.into(),
            message,
        };
        let channel = self.dialer.connect(address).await.map_err(bad)?;
        let key = GuardClient::new(channel)
            .onion_key(OnionKeyRequest {})
            .await
            .map_err(|s| bad(s.message().to_string()))?
            .into_inner()
            .onion_key;
        let key = <[u8; 32]>::try_from(key.as_slice())
            .ok()
            .and_then(|k| OnionPublicKey::from_bytes(k).ok())
            .ok_or_else(|| bad("its onion key is not a valid X25519 key".into()))?;
        self.guard = Some(GuardHop {
            address: address.into(),
            onion_key: key,
            identity: None,
        });
        Ok(())
    }

    /// The healthy guard relays the registry lists (see [`GuardState::choose`] for picking one).
    pub async fn listed_guards(&mut self) -> Result<Vec<ListedGuard>> {
        let r = self
            .registry
            .list_guards(ListGuardsRequest {})
            .await
            .map_err(|s| self.registry_error(s))?;
        Ok(guards::parse_listed(&r.into_inner().guards))
    }

    /// Starts every circuit at `guard`, with the onion key of its signed registration; no
    /// node run by the guard's identity is put on a route behind it.
    pub fn use_listed_guard(&mut self, guard: &ListedGuard) {
        self.guard = Some(GuardHop {
            address: guard.address.clone(),
            onion_key: guard.onion_key,
            identity: Some(guard.identity.clone()),
        });
    }

    /// Who samples each token from now on.
    pub fn set_output_mode(&mut self, mode: OutputMode) {
        self.output = mode;
    }

    /// Keep generating through end-of-generation tokens (benchmarks want a fixed count).
    pub fn set_ignore_eos(&mut self, ignore: bool) {
        self.ignore_eos = ignore;
    }

    fn registry_error(&self, s: tonic::Status) -> ClientError {
        ClientError::Registry {
            addr: self.addr.clone(),
            message: s.message().to_string(),
        }
    }

    /// Models the registry knows, with READY / INCOMPLETE and shard coverage.
    pub async fn list_models(&mut self) -> Result<Vec<ModelStatus>> {
        let r = self
            .registry
            .list_models(ListModelsRequest {})
            .await
            .map_err(|s| self.registry_error(s))?;
        Ok(r.into_inner().models)
    }

    /// The healthy nodes of each shard, fastest first.
    pub async fn candidates(&mut self, model_id: &str) -> Result<Vec<Vec<Candidate>>> {
        let r = self
            .registry
            .discover(DiscoverRequest {
                model_id: model_id.into(),
            })
            .await
            .map_err(|s| self.registry_error(s))?
            .into_inner();
        let mut nodes = r.nodes;
        // The guard's operator already sees this client's address: none of its nodes may
        // see what the route carries too.
        if let Some(id) = self.guard.as_ref().and_then(|g| g.identity.as_ref()) {
            nodes
                .retain(|n| n.identity != *id && n.pair.as_ref().is_none_or(|b| b.identity != *id));
        }
        let probe_entry = self.guard.is_none();
        Ok(route::rank(&self.dialer, model_id, r.num_shards, &nodes, probe_entry).await)
    }

    /// The manifest (from the registry) and the tokenizer (from a shard-0 node, through the
    /// guard if there is one; checked against the manifest's SHA-256).
    pub async fn model(&mut self, model_id: &str) -> Result<RemoteModel> {
        let json = self
            .registry
            .get_manifest(GetManifestRequest {
                model_id: model_id.into(),
            })
            .await
            .map_err(|s| self.registry_error(s))?
            .into_inner()
            .manifest_json;
        let manifest =
            Manifest::from_json(&json).map_err(|e| ClientError::Model(model_id.into(), e))?;
        let (source, tokenizer_json) = self.tokenizer(model_id).await?;
        let sha = hex_sha256(tokenizer_json.as_bytes());
        if sha != manifest.tokenizer.sha256 {
            return Err(ClientError::Tokenizer(format!(
                "the tokenizer served by {source} does not match the manifest"
            )));
        }
        let mut meta = vec![(
            unfed_model::checkpoint::HF_TOKENIZER_KEY.to_string(),
            unfed_gguf::Value::String(tokenizer_json),
        )];
        if let Some(t) = &manifest.chat_template {
            meta.push((
                "tokenizer.chat_template".into(),
                unfed_gguf::Value::String(t.clone()),
            ));
        }
        if let Some(&eos) = manifest.end_of_generation.first() {
            meta.push((
                "tokenizer.ggml.eos_token_id".into(),
                unfed_gguf::Value::U32(eos),
            ));
        }
        let bad = |e: unfed_model::ModelError| ClientError::Tokenizer(e.to_string());
        let tokenizer = TextTokenizer::from_metadata(&meta).map_err(bad)?;
        let chat = ChatTemplate::from_metadata(&meta, &tokenizer).map_err(bad)?;
        Ok(RemoteModel {
            manifest,
            tokenizer,
            chat,
        })
    }

    /// The model's tokenizer.json and who served it: the guard, or the first entry node.
    async fn tokenizer(&mut self, model_id: &str) -> Result<(String, String)> {
        let failed = |s: tonic::Status| ClientError::Tokenizer(s.message().to_string());
        if let Some(GuardHop { address: guard, .. }) = &self.guard {
            let channel = self
                .dialer
                .connect(guard)
                .await
                .map_err(ClientError::Tokenizer)?;
            let reply = GuardClient::new(channel)
                .max_decoding_message_size(unfed_proto::MAX_NODE_MESSAGE)
                .tokenizer(GuardTokenizerRequest {
                    model_id: model_id.into(),
                })
                .await
                .map_err(failed)?;
            return Ok((format!("guard {guard}"), reply.into_inner().tokenizer_json));
        }
        let candidates = self.candidates(model_id).await?;
        let first =
            candidates
                .first()
                .and_then(|c| c.first())
                .ok_or_else(|| ClientError::NoRoute {
                    model: model_id.into(),
                    shard: 0,
                })?;
        let reply = self
            .dialer
            .connect_node(&first.address)
            .await
            .map_err(ClientError::Tokenizer)?
            .tokenizer(TokenizerRequest {})
            .await
            .map_err(failed)?;
        Ok((first.address.clone(), reply.into_inner().tokenizer_json))
    }

    /// Generates up to `max_tokens` after `prompt_ids`, calling `on_token` for each new token
    /// (returning false stops). A broken route is rebuilt from the remaining healthy nodes and
    /// the session replayed, so greedy output is the same as without the failure.
    pub async fn generate(
        &mut self,
        model: &RemoteModel,
        prompt_ids: &[u32],
        max_tokens: usize,
        sampling: &SamplingParams,
        on_token: &mut (dyn FnMut(u32) -> bool + Send),
    ) -> Result<Vec<u32>> {
        let model_id = model.manifest.model_id.clone();
        let mut generated: Vec<u32> = Vec::new();
        // The hops of every route that broke: the next route prefers the others.
        let mut failed: Vec<String> = Vec::new();
        let mut last_error = String::new();
        for attempt in 0..=MAX_RESUMES {
            let candidates = self.candidates(&model_id).await?;
            let route = pick_route(&model_id, &candidates, &failed)?;
            let end: &[u32] = if self.ignore_eos {
                &[]
            } else {
                &model.manifest.end_of_generation
            };
            let request = Request {
                model_id: &model_id,
                prompt: prompt_ids,
                max_tokens,
                sampling,
                end,
                output: self.output,
                vocab: model.manifest.config.vocab,
                mpc: model.manifest.mpc_spec(),
            };
            match run_route(
                &self.dialer,
                &route,
                self.guard.as_ref(),
                &request,
                &mut generated,
                on_token,
            )
            .await
            {
                Ok(()) => return Ok(generated),
                Err(e) => {
                    last_error = e;
                    // The client cannot tell which hop broke without contacting each (which
                    // would tell every hop its address): it moves every shard that has another
                    // replica to it. The whole session is replayed on the new route anyway.
                    failed.extend(route.hops.iter().map(|h| h.address.clone()));
                    if attempt < MAX_RESUMES {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
        }
        Err(ClientError::Generation {
            attempts: MAX_RESUMES + 1,
            last: last_error,
        })
    }
}

/// One generation's parameters.
struct Request<'a> {
    model_id: &'a str,
    prompt: &'a [u32],
    max_tokens: usize,
    sampling: &'a SamplingParams,
    end: &'a [u32],
    output: OutputMode,
    /// The model's vocabulary (the length of its logits).
    vocab: usize,
    /// Shard 0 runs on an MPC pair of these shapes: the client deals for it.
    mpc: Option<unfed_mpc::shard::ShardSpec>,
}

/// Runs (or resumes) a generation along one route. `generated` holds the tokens produced so far
/// and grows as tokens arrive, so a failure part-way loses nothing.
async fn run_route(
    dialer: &Dialer,
    route: &Route,
    guard: Option<&GuardHop>,
    req: &Request<'_>,
    generated: &mut Vec<u32>,
    on_token: &mut (dyn FnMut(u32) -> bool + Send),
) -> std::result::Result<(), String> {
    let Request {
        model_id,
        prompt,
        max_tokens,
        sampling,
        end,
        ..
    } = *req;
    // In `decode_client_sample` the sampler is here, resumed past the picks made before.
    let (output, mut local) = match req.output {
        OutputMode::Off => (wire::Output::Sample(sampling.clone()), None),
        OutputMode::ClientSample { top_k } => {
            let mut sampler = Sampler::new(sampling.clone());
            sampler.skip(generated.len());
            (wire::Output::Logits { top_k }, Some((sampler, top_k)))
        }
    };
    let mut circuit = circuit::ClientCircuit::build(route, guard.map(|g| g.onion_key), &output)?;
    let mut dealer = match &req.mpc {
        None => None,
        Some(spec) => {
            let b = route.hops[0]
                .pair
                .ok_or("the model requires an MPC pair for shard 0, and the route has none")?;
            Some(pair::PairDealer::new(spec.clone(), b)?)
        }
    };
    // Straight to a plain first hop, the frames and cells go on a raw stream (fewer thread
    // wake-ups per token); through a guard, or to party A, on the gRPC stream.
    let use_raw = guard.is_none() && dealer.is_none();
    let (send, rx) = mpsc::channel(4);
    let open = Open {
        model_id: model_id.into(),
        shard_index: 0,
        onion: circuit.header(),
        raw: use_raw,
    };
    send.send(SessionRequest {
        kind: Some(session_request::Kind::Open(open)),
    })
    .await
    .map_err(|_| "stream closed".to_string())?;
    let requests = ReceiverStream::new(rx);
    let opened = match guard {
        None => {
            dialer
                .connect_node(&route.hops[0].address)
                .await?
                .session(requests)
                .await
        }
        Some(GuardHop { address, .. }) => {
            let channel = dialer.connect(address).await?;
            GuardClient::new(channel)
                .max_decoding_message_size(unfed_proto::MAX_NODE_MESSAGE)
                .max_encoding_message_size(unfed_proto::MAX_NODE_MESSAGE)
                .session(requests)
                .await
        }
    };
    let mut replies: Streaming<SessionReply> =
        opened.map_err(|s| s.message().to_string())?.into_inner();
    let opened = match next_reply(&mut replies, OPEN_TIMEOUT).await? {
        Some(SessionReply {
            kind: Some(session_reply::Kind::Opened(opened)),
        }) => opened,
        _ => return Err("the route did not open".into()),
    };
    let mut raw = None;
    if use_raw {
        let ticket: unfed_proto::raw::Ticket = opened
            .ticket
            .as_slice()
            .try_into()
            .map_err(|_| "the first hop gave no ticket for a raw stream".to_string())?;
        raw = Some(
            dialer
                .connect_raw_async(&route.hops[0].address, &ticket)
                .await?,
        );
    }
    // First step: the prompt plus anything generated before a failure (replayed).
    let mut ids: Vec<u32> = prompt.iter().chain(generated.iter()).copied().collect();
    // The last shard's sampler needs the picks made before; a client sampler has them.
    let mut history = match local {
        None => generated.clone(),
        Some(_) => Vec::new(),
    };
    while generated.len() < max_tokens {
        let (now, history) = (std::mem::take(&mut ids), std::mem::take(&mut history));
        let cell = match dealer.take() {
            None => {
                let frame = circuit.step(now, history)?;
                match &mut raw {
                    Some(stream) => raw_step(stream, &mut replies, frame).await?,
                    None => step(&send, &mut replies, frame).await?,
                }
            }
            Some(d) => {
                // Another decode step may follow: deal its layers while this one runs.
                let ahead = generated.len() + 1 < max_tokens;
                let (d, cell) =
                    pair_step(d, &mut circuit, &send, &mut replies, now, history, ahead).await?;
                dealer = Some(d);
                cell
            }
        };
        let token = match &mut local {
            None => circuit.token(&cell)?,
            Some((sampler, top_k)) => {
                let mut logits = circuit.logits(&cell, *top_k, req.vocab)?;
                sampler.sample(&mut logits, generated)
            }
        };
        if end.contains(&token) {
            return Ok(());
        }
        generated.push(token);
        if !on_token(token) {
            return Ok(());
        }
        ids = vec![token];
    }
    Ok(())
}

/// Sends one step's frame and returns its reply cell.
async fn step(
    send: &mpsc::Sender<SessionRequest>,
    replies: &mut Streaming<SessionReply>,
    frame: Vec<u8>,
) -> std::result::Result<Vec<u8>, String> {
    send_frame(send, frame).await?;
    reply_cell(replies).await
}

/// [`step`] on the first hop's raw stream; when it breaks, the reason is the first hop's error
/// on the gRPC stream, if it gives one within a second.
async fn raw_step(
    stream: &mut unfed_proto::raw::AsyncRawStream,
    replies: &mut Streaming<SessionReply>,
    frame: Vec<u8>,
) -> std::result::Result<Vec<u8>, String> {
    let exchange = async {
        stream.send_message(&frame).await?;
        stream.read_message(unfed_proto::MAX_NODE_MESSAGE).await
    };
    match tokio::time::timeout(STEP_TIMEOUT, exchange).await {
        Ok(Ok(Some(cell))) => Ok(cell),
        Err(_) => Err(format!("the route did not answer within {STEP_TIMEOUT:?}")),
        Ok(_) => Err(
            match tokio::time::timeout(Duration::from_secs(1), replies.message()).await {
                Ok(Err(status)) => status.message().to_string(),
                _ => "the route closed the session".into(),
            },
        ),
    }
}

async fn send_frame(
    send: &mpsc::Sender<SessionRequest>,
    frame: Vec<u8>,
) -> std::result::Result<(), String> {
    send.send(SessionRequest {
        kind: Some(session_request::Kind::Frame(frame.into())),
    })
    .await
    .map_err(|_| "stream closed".to_string())
}

async fn reply_cell(replies: &mut Streaming<SessionReply>) -> std::result::Result<Vec<u8>, String> {
    match next_reply(replies, STEP_TIMEOUT).await? {
        Some(SessionReply {
            kind: Some(session_reply::Kind::Cell(cell)),
        }) => Ok(cell),
        _ => Err("the route closed the session".into()),
    }
}

/// One step through an MPC pair: `ids` dealt (off the async workers) in as many frames as
/// their material needs, all but the last deferred at the last shard; the last one's cell.
/// With `ahead`, the layers of the next (one-token) step are dealt and sent to the pair while
/// the last frame runs.
async fn pair_step(
    mut dealer: pair::PairDealer,
    circuit: &mut ClientCircuit,
    send: &mpsc::Sender<SessionRequest>,
    replies: &mut Streaming<SessionReply>,
    mut ids: Vec<u32>,
    history: Vec<u32>,
    ahead: bool,
) -> std::result::Result<(pair::PairDealer, Vec<u8>), String> {
    let mut history = Some(history);
    loop {
        let (back, dealt, rest) = off_workers(move || {
            let dealt = dealer.deal(&ids);
            if let Ok(d) = &dealt {
                ids.drain(..d.positions);
            }
            (dealer, dealt, ids)
        })
        .await?;
        (dealer, ids) = (back, rest);
        let dealt = dealt?;
        let extras = Extras {
            history: history.take().unwrap_or_default(),
            pad: Some(dealt.pad),
            defer: !ids.is_empty(),
        };
        let frame = circuit.frame_with(unfed_proto::node::step::Input::Mpc(dealt.input), extras)?;
        send_frame(send, frame).await?;
        if !ids.is_empty() {
            circuit.filler(&reply_cell(replies).await?)?;
            continue;
        }
        if !ahead {
            return Ok((dealer, reply_cell(replies).await?));
        }
        let send_ahead = async {
            let (dealer, dealt) = off_workers(move || {
                let dealt = dealer.deal_ahead();
                (dealer, dealt)
            })
            .await?;
            send_frame(send, circuit.frame_ahead(dealt?)?).await?;
            Ok::<_, String>(dealer)
        };
        let (cell, dealer) = tokio::join!(reply_cell(replies), send_ahead);
        return Ok((dealer?, cell?));
    }
}

/// Runs `f` on a blocking thread (dealing is milliseconds of CPU).
async fn off_workers<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> std::result::Result<T, String> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| format!("dealing: {e}"))
}

/// The next reply on a session stream, or why there is none (errors, and a route that stays
/// silent past `limit`, count as a broken route).
async fn next_reply(
    replies: &mut Streaming<SessionReply>,
    limit: Duration,
) -> std::result::Result<Option<SessionReply>, String> {
    match tokio::time::timeout(limit, replies.message()).await {
        Ok(r) => r.map_err(|s| s.message().to_string()),
        Err(_) => Err(format!("the route did not answer within {limit:?}")),
    }
}

fn hex_sha256(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}
