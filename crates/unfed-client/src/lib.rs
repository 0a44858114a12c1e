//! The user's client: discovers a model through a registry, picks one node per shard (see
//! `route`), builds an onion circuit along the route, and generates — resuming on replicas
//! (replaying the token history) when a node dies mid-generation. It connects to nothing but
//! the registry and its first hop (the guard, or else the entry node).

mod circuit;
pub mod guards;
pub mod pair;
mod route;
mod session;

use std::time::Duration;

use tonic::transport::Channel;
use unfed_model::{ChatTemplate, SamplingParams, TextTokenizer};
use unfed_onion::OnionPublicKey;
use unfed_proto::Dialer;
use unfed_proto::node::guard_client::GuardClient;
use unfed_proto::node::{GuardTokenizerRequest, OnionKeyRequest, TokenizerRequest};
use unfed_proto::registry::registry_client::RegistryClient;
use unfed_proto::registry::{
    DiscoverRequest, GetManifestRequest, ListGuardsRequest, ListModelsRequest, ModelStatus,
};
use unfed_shard::Manifest;

pub use circuit::{ClientCircuit, Extras};
pub use guards::{GuardChoiceError, GuardState, ListedGuard};
pub use route::{Candidate, Route, pick_route};
use session::{Request, run_route};

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

fn hex_sha256(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}
