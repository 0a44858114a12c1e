//! `unfed node`, `unfed guard` and `unfed client`: a compute node serving one shard, a guard
//! relay, and the user's client.

use std::io::{BufRead, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use unfed_client::{Client, RemoteModel};
use unfed_engine::TextStream;
use unfed_model::ChatMessage;

use crate::generate::SamplingArgs;

#[derive(Args)]
pub struct NodeArgs {
    #[arg(long)]
    shard_index: u32,
    /// A split directory (`unfed model split`); only this node's shard file and the manifest
    /// and tokenizer are needed.
    #[arg(long)]
    shards_dir: PathBuf,
    /// The registry's address (`host:port` on loopback, else `https://host:port`).
    #[arg(long)]
    registry: String,
    /// Address to listen on (off loopback only with TLS).
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    #[arg(long, default_value_t = 0)]
    port: u16,
    /// The address clients and other nodes use: `https://host:port` with TLS, `host:port` on
    /// loopback without (default: the bound address).
    #[arg(long)]
    advertise: Option<String>,
    #[command(flatten)]
    tls: crate::tls_args::ServeTlsArgs,
    /// The node's identity key file (created with mode 0600 if missing).
    #[arg(long)]
    key: Option<PathBuf>,
    #[arg(long, default_value_t = 16)]
    max_sessions: usize,
    /// Seconds an idle session keeps its KV cache.
    #[arg(long, default_value_t = 300)]
    idle_timeout: u64,
    /// Positions (prompt + reply) one session may reach.
    #[arg(long, default_value_t = 4096)]
    max_positions: usize,
    /// Memory all sessions' KV caches together may use, in MiB.
    #[arg(long, default_value_t = 1024)]
    max_kv_mib: usize,
}

/// The node key at `path` (default `~/.unfed/node.key`), created with mode 0600 if missing.
pub fn node_key(path: Option<PathBuf>) -> Result<unfed_identity::NodeKey> {
    let key_path = match path {
        Some(k) => k,
        None => std::env::var_os("HOME")
            .map(|h| PathBuf::from(h).join(".unfed/node.key"))
            .context("no --key and no HOME to keep a key in")?,
    };
    if let Some(parent) = key_path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    Ok(unfed_identity::NodeKey::load_or_create(&key_path)?)
}

pub fn node(args: NodeArgs) -> Result<ExitCode> {
    let key = node_key(args.key)?;
    let tls = args.tls.server()?;
    let dialer = args.tls.dial.dialer()?;
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async move {
        let listener = listen(&args.host, args.port).await?;
        let bound: SocketAddr = listener.local_addr()?;
        let advertise = args
            .advertise
            .unwrap_or_else(|| advertised(bound, tls.is_some()));
        eprintln!(
            "node {} for shard {} listening on {bound}",
            key.address(),
            args.shard_index
        );
        let config = unfed_node::NodeConfig {
            shards_dir: args.shards_dir,
            shard_index: args.shard_index,
            advertise,
            registry: Some(args.registry),
            tls,
            dialer,
            views: None,
            key,
            limits: unfed_node::SessionLimits {
                max_sessions: args.max_sessions,
                idle_timeout: Duration::from_secs(args.idle_timeout),
                max_positions: args.max_positions,
                max_kv_bytes: args.max_kv_mib << 20,
            },
            pair: None,
        };
        unfed_node::run(config, listener, shutdown_signal()).await?;
        eprintln!("node stopped");
        Ok(ExitCode::SUCCESS)
    })
}

/// The address a service bound to `bound` advertises by default: `https://host:port` with
/// TLS, `host:port` without.
fn advertised(bound: SocketAddr, tls: bool) -> String {
    match tls {
        true => format!("{}{bound}", unfed_proto::tls::TLS_SCHEME),
        false => bound.to_string(),
    }
}

/// A listener on `host:port`, or why there is none.
pub async fn listen(host: &str, port: u16) -> Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind((host, port))
        .await
        .with_context(|| format!("cannot listen on {host}:{port}"))
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

#[derive(Args)]
pub struct GuardArgs {
    /// The registry's address (the guard relays only to shard-0 nodes it lists).
    #[arg(long)]
    registry: String,
    /// Address to listen on (off loopback only with TLS).
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    #[arg(long, default_value_t = 50040)]
    port: u16,
    /// Sessions relayed at once.
    #[arg(long, default_value_t = 64)]
    max_sessions: usize,
    /// Seconds a silent client keeps its session.
    #[arg(long, default_value_t = 300)]
    idle_timeout: u64,
    /// The address clients dial, as registered: `https://host:port` with TLS, `host:port` on
    /// loopback without (default: the bound address).
    #[arg(long)]
    advertise: Option<String>,
    /// The identity key that signs the guard's registration (created with mode 0600 if
    /// missing; default `~/.unfed/node.key`). No node of this identity is put behind it.
    #[arg(long)]
    key: Option<PathBuf>,
    #[command(flatten)]
    tls: crate::tls_args::ServeTlsArgs,
}

pub fn guard(args: GuardArgs) -> Result<ExitCode> {
    let key = node_key(args.key)?;
    let tls = args.tls.server()?;
    let dialer = args.tls.dial.dialer()?;
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async move {
        let listener = listen(&args.host, args.port).await?;
        let bound = listener.local_addr()?;
        let advertise = args
            .advertise
            .unwrap_or_else(|| advertised(bound, tls.is_some()));
        eprintln!("guard {} listening on {advertise}", key.address());
        let config = unfed_node::guard::GuardConfig {
            registry: Some(args.registry),
            max_sessions: args.max_sessions,
            idle_timeout: Duration::from_secs(args.idle_timeout),
            tls,
            dialer,
            views: None,
            announce: Some(unfed_node::guard::GuardAnnouncement { key, advertise }),
        };
        unfed_node::guard::serve(config, listener, shutdown_signal())
            .await
            .map_err(anyhow::Error::msg)?;
        eprintln!("guard stopped");
        Ok(ExitCode::SUCCESS)
    })
}

#[derive(Args)]
pub struct ClientArgs {
    /// The registry's address (`host:port` on loopback, else `https://host:port`).
    #[arg(long, default_value = "127.0.0.1:50050")]
    registry: String,
    #[command(flatten)]
    tls: crate::tls_args::DialArgs,
    /// List the registry's models with READY / INCOMPLETE and shard coverage.
    #[arg(long)]
    list_models: bool,
    /// Start every circuit at a guard relay (`unfed guard`), so that no node of the route
    /// sees this client's address: `auto` keeps using one the registry lists (chosen once and
    /// remembered in `--guard-state`, as Tor keeps its guards), or the guard's address.
    #[arg(long)]
    guard: Option<String>,
    /// Where `--guard auto` remembers its guards (default `~/.unfed/guards.json`).
    #[arg(long)]
    guard_state: Option<PathBuf>,
    /// Model id (default: the only READY model).
    #[arg(long)]
    model: Option<String>,
    /// One message; the reply is streamed to stdout.
    #[arg(long)]
    prompt: Option<String>,
    #[arg(long)]
    system: Option<String>,
    #[arg(long, default_value_t = 256)]
    max_tokens: usize,
    #[command(flatten)]
    sampling: SamplingArgs,
    /// Who samples: `off` (the last shard) or `decode_client_sample` (this client, from the
    /// logits the last shard returns sealed to it).
    #[arg(long, value_enum, default_value = "off")]
    output_mode: OutputModeArg,
    /// With decode_client_sample: how many of the largest logits come back (0: all).
    #[arg(long, default_value_t = 256)]
    logits_top_k: u32,
    #[command(subcommand)]
    mode: Option<ClientMode>,
}

/// `--guard auto`: the first kept guard the registry lists, or a newly sampled one (kept).
async fn choose_guard(client: &mut Client, state: Option<PathBuf>) -> Result<()> {
    let path = match state {
        Some(p) => p,
        None => std::env::var_os("HOME")
            .map(|h| PathBuf::from(h).join(".unfed/guards.json"))
            .context("no --guard-state and no HOME to keep the guard state in")?,
    };
    let listed = client.listed_guards().await?;
    let mut state = unfed_client::GuardState::load(&path)?;
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let (guard, changed) = state.choose(&listed, now_ms, &path)?;
    if changed {
        state.save(&path)?;
    }
    eprintln!("guard {} at {}", guard.identity, guard.address);
    client.use_listed_guard(guard);
    Ok(())
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum OutputModeArg {
    Off,
    #[value(name = "decode_client_sample")]
    DecodeClientSample,
}

#[derive(Subcommand)]
pub enum ClientMode {
    /// An interactive conversation on stdin/stdout.
    Chat,
}

pub fn client(args: ClientArgs) -> Result<ExitCode> {
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(client_main(args))
}

async fn client_main(args: ClientArgs) -> Result<ExitCode> {
    let mut client = Client::connect_with(&args.registry, args.tls.dialer()?).await?;
    match args.guard.as_deref() {
        None => {}
        Some("auto") => choose_guard(&mut client, args.guard_state).await?,
        Some(address) => client.use_guard(address).await?,
    }
    if let OutputModeArg::DecodeClientSample = args.output_mode {
        client.set_output_mode(unfed_client::OutputMode::ClientSample {
            top_k: args.logits_top_k,
        });
    }
    let models = client.list_models().await?;
    if args.list_models {
        println!("{:<24} {:<11} shards (healthy nodes)", "model", "status");
        for m in &models {
            let shards: Vec<String> = m
                .shards
                .iter()
                .map(|s| {
                    format!(
                        "{}[{}..{}]:{}",
                        s.shard_index, s.layer_start, s.layer_end, s.healthy_nodes
                    )
                })
                .collect();
            println!("{:<24} {:<11} {}", m.model_id, m.status, shards.join(" "));
        }
        return Ok(ExitCode::SUCCESS);
    }
    let model_id = match args.model.clone() {
        Some(m) => m,
        None => {
            let ready: Vec<_> = models.iter().filter(|m| m.status == "READY").collect();
            match ready[..] {
                [one] => one.model_id.clone(),
                [] => bail!("no model is READY on {}", args.registry),
                _ => bail!("several models are READY; choose one with --model"),
            }
        }
    };
    let sampling = args.sampling.params()?;
    let model = client.model(&model_id).await?;
    let mut conversation: Vec<ChatMessage> = args
        .system
        .iter()
        .map(|s| ChatMessage::new("system", s))
        .collect();
    match (&args.mode, &args.prompt) {
        (Some(ClientMode::Chat), _) => {
            let stdin = std::io::stdin();
            eprint!("> ");
            for line in stdin.lock().lines() {
                let line = line?;
                if line.trim().is_empty() {
                    eprint!("> ");
                    continue;
                }
                conversation.push(ChatMessage::new("user", &line));
                let reply = turn(
                    &mut client,
                    &model,
                    &conversation,
                    args.max_tokens,
                    &sampling,
                )
                .await?;
                conversation.push(ChatMessage::new("assistant", &reply));
                eprint!("> ");
            }
        }
        (None, Some(prompt)) => {
            conversation.push(ChatMessage::new("user", prompt));
            turn(
                &mut client,
                &model,
                &conversation,
                args.max_tokens,
                &sampling,
            )
            .await?;
        }
        (None, None) => bail!("give --prompt TEXT, `chat`, or --list-models"),
    }
    Ok(ExitCode::SUCCESS)
}

/// One reply, streamed to stdout; returns its text.
async fn turn(
    client: &mut Client,
    model: &RemoteModel,
    conversation: &[ChatMessage],
    max_tokens: usize,
    sampling: &unfed_model::SamplingParams,
) -> Result<String> {
    let chat = model
        .chat
        .as_ref()
        .context("the model has no chat template")?;
    let prompt = model.tokenizer.encode(&chat.render(conversation, true)?)?;
    let mut stream = TextStream::new();
    let mut text = String::new();
    let tokenizer = &model.tokenizer;
    let mut on_token = |id: u32| {
        if let Ok(Some(piece)) = stream.push(tokenizer, id) {
            print!("{piece}");
            let _ = std::io::stdout().flush();
            text.push_str(&piece);
        }
        true
    };
    client
        .generate(model, &prompt, max_tokens, sampling, &mut on_token)
        .await?;
    if let Ok(Some(rest)) = stream.finish(tokenizer) {
        print!("{rest}");
        text.push_str(&rest);
    }
    println!();
    Ok(text)
}
