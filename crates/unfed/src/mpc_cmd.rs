//! `unfed mpc --role a|b`: one party of the two-party MPC pair that serves shard 0 of a model
//! whose manifest requires it. B serves only its A; A is the shard-0 node clients reach.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Args, ValueEnum};

use crate::net_cmd::{listen, node_key, shutdown_signal};

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PartyRole {
    A,
    B,
}

#[derive(Args)]
pub struct MpcArgs {
    #[arg(long, value_enum)]
    role: PartyRole,
    /// The other party's address: for A, where B serves; for B, A's (B accepts streams only
    /// from its host).
    #[arg(long)]
    peer: String,
    /// The other party's identity (0x… Ethereum address), named in this party's signed
    /// registration; the registry lists the pair only when both name each other.
    #[arg(long)]
    peer_identity: unfed_identity::Address,
    /// A split directory whose manifest asks for an MPC pair (`unfed model split --mpc-layers`).
    #[arg(long)]
    shards_dir: PathBuf,
    #[arg(long)]
    registry: String,
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    #[arg(long, default_value_t = 0)]
    port: u16,
    /// The address the other party (and, for A, clients) use (default: the bound address).
    #[arg(long)]
    advertise: Option<String>,
    #[command(flatten)]
    tls: crate::tls_args::ServeTlsArgs,
    /// This party's identity key file (created with mode 0600 if missing).
    #[arg(long)]
    key: Option<PathBuf>,
    #[arg(long, default_value_t = 16)]
    max_sessions: usize,
    /// Seconds an idle session keeps its shared caches.
    #[arg(long, default_value_t = 300)]
    idle_timeout: u64,
    /// Positions (prompt + reply) one session may reach.
    #[arg(long, default_value_t = 4096)]
    max_positions: usize,
    /// Write every ring element this party receives, labelled, to FILE (an audit aid; the
    /// format is in docs/mpc.md).
    #[arg(long, value_name = "FILE")]
    record_view: Option<PathBuf>,
}

pub fn run(args: MpcArgs) -> Result<ExitCode> {
    let key = node_key(args.key)?;
    let tls = args.tls.server()?;
    let dialer = args.tls.dial.dialer()?;
    let view = match &args.record_view {
        Some(path) => Some(
            unfed_node::pair::ViewFile::create(path)
                .with_context(|| format!("cannot create {}", path.display()))?,
        ),
        None => None,
    };
    let limits = unfed_node::SessionLimits {
        max_sessions: args.max_sessions,
        idle_timeout: Duration::from_secs(args.idle_timeout),
        max_positions: args.max_positions,
        ..Default::default()
    };
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async move {
        let listener = listen(&args.host, args.port).await?;
        let bound: SocketAddr = listener.local_addr()?;
        let advertise = args.advertise.unwrap_or_else(|| match tls {
            Some(_) => format!("{}{bound}", unfed_proto::tls::TLS_SCHEME),
            None => bound.to_string(),
        });
        let name = match args.role {
            PartyRole::A => "A",
            PartyRole::B => "B",
        };
        eprintln!(
            "MPC party {name} {} for shard 0 listening on {bound}, peer {}",
            key.address(),
            args.peer_identity
        );
        match args.role {
            PartyRole::A => {
                let config = unfed_node::NodeConfig {
                    shards_dir: args.shards_dir,
                    shard_index: 0,
                    advertise,
                    registry: Some(args.registry),
                    tls,
                    dialer,
                    views: None,
                    key,
                    limits,
                    pair: Some(unfed_node::pair::PairPeer {
                        address: args.peer,
                        identity: args.peer_identity,
                        view,
                    }),
                };
                unfed_node::run(config, listener, shutdown_signal()).await?;
            }
            PartyRole::B => {
                let config = unfed_node::pair::PairConfig {
                    shards_dir: args.shards_dir,
                    advertise,
                    peer: args.peer,
                    peer_identity: args.peer_identity,
                    registry: Some(args.registry),
                    tls,
                    dialer,
                    view,
                    key,
                    limits,
                };
                unfed_node::pair::run_b(config, listener, shutdown_signal()).await?;
            }
        }
        eprintln!("MPC party {name} stopped");
        Ok(ExitCode::SUCCESS)
    })
}
