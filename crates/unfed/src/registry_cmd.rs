//! `unfed registry`: the cluster coordinator, serving until Ctrl-C or SIGTERM.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use unfed_registry::{ClusterConfig, RegistryCore, RegistryOptions, SystemClock};

#[derive(Args)]
pub struct RegistryArgs {
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    #[arg(long, default_value_t = 50050)]
    port: u16,
    /// The cluster's policy: name, prices, staking rules (see configs/cluster.example.json).
    #[arg(long)]
    cluster_config: PathBuf,
    /// SQLite database that keeps registrations across restarts.
    #[arg(long, default_value = "registry.db")]
    db: PathBuf,
    /// How often nodes must heartbeat, in milliseconds.
    #[arg(long, default_value_t = 5000)]
    heartbeat_interval_ms: u64,
    #[command(flatten)]
    tls: crate::tls_args::ServeTlsArgs,
}

pub fn run(args: RegistryArgs) -> Result<ExitCode> {
    let config = ClusterConfig::load(&args.cluster_config)?;
    let options = RegistryOptions {
        heartbeat_interval: Duration::from_millis(args.heartbeat_interval_ms),
        ..RegistryOptions::default()
    };
    let db = unfed_db::RegistryDb::open(&args.db)
        .with_context(|| format!("opening {}", args.db.display()))?;
    let core = RegistryCore::new(config, options, db, Arc::new(SystemClock))?;
    let tls = args.tls.server()?;
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async move {
        let listener = crate::net_cmd::listen(&args.host, args.port).await?;
        eprintln!("registry listening on {}", listener.local_addr()?);
        unfed_registry::serve(
            listener,
            tls.as_ref(),
            core,
            crate::net_cmd::shutdown_signal(),
        )
        .await?;
        eprintln!("registry stopped");
        Ok(ExitCode::SUCCESS)
    })
}
