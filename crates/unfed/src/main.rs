//! The `unfed` binary: one subcommand per role. Results go to stdout, diagnostics to stderr.

mod bench;
mod bench_kernels;
mod bench_mpc;
mod bench_onion;
mod generate;
mod model_cmd;
mod mpc_cmd;
mod net_cmd;
mod preflight;
mod registry_cmd;
mod resolve;
mod testnet_cmd;
mod tls_args;

use clap::builder::PossibleValuesParser;
use clap::{Parser, Subcommand};
use unfed_model::Compute;

#[derive(Parser)]
#[command(
    name = "unfed",
    version,
    about = "Decentralized, privacy-preserving LLM inference"
)]
struct Cli {
    /// Threads for the forward pass (default: the machine's physical cores).
    #[arg(long, global = true, env = "UNFED_THREADS")]
    threads: Option<usize>,
    /// How the forward pass computes: this project's CPU kernels (the default), candle's CPU
    /// operations, an NVIDIA GPU through candle (a build with `--features cuda`), or the exact
    /// reference (weights expanded to f32; slow).
    #[arg(long, global = true, env = "UNFED_ENGINE",
          value_parser = PossibleValuesParser::new(Compute::ALL.map(Compute::name)))]
    engine: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Obtain, inspect, split and verify models.
    #[command(subcommand)]
    Model(model_cmd::ModelCommand),
    /// Generate a reply in this process, from a whole model or from all shards of a split.
    Generate(generate::GenerateArgs),
    /// Measure prefill and decode speed (prints a table).
    Bench(bench::BenchArgs),
    /// Serve one shard of a split model as a compute node.
    Node(net_cmd::NodeArgs),
    /// Serve shard 0 of a model that requires it as one party of a two-party MPC pair.
    Mpc(mpc_cmd::MpcArgs),
    /// Use the network: list models, or generate through a route of nodes.
    Client(net_cmd::ClientArgs),
    /// Relay circuits in front of entry nodes, so that they never see clients' addresses.
    Guard(net_cmd::GuardArgs),
    /// Run the cluster coordinator (admission, discovery, health, manifests, pricing).
    Registry(registry_cmd::RegistryArgs),
    /// Go/no-go checks before exposing a node, the dashboard, or a running network.
    #[command(subcommand)]
    Preflight(preflight::PreflightCommand),
    /// The whole local network in one command.
    #[command(subcommand)]
    Testnet(testnet_cmd::TestnetCommand),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    if let Some(n) = cli.threads {
        // SAFETY: nothing else runs yet; the variables are read by the compute thread pools
        // (ours, and candle's for what runs on candle) when first used, which is later.
        unsafe {
            std::env::set_var("UNFED_THREADS", n.max(1).to_string());
            std::env::set_var("RAYON_NUM_THREADS", n.max(1).to_string());
        }
    }
    if let Some(engine) = cli.engine {
        // SAFETY: as above; `Compute::from_env` reads it when a model loads, and the nodes a
        // testnet starts inherit it.
        unsafe { std::env::set_var("UNFED_ENGINE", engine) };
    }
    let result = match cli.command {
        Command::Model(cmd) => model_cmd::run(cmd),
        Command::Generate(args) => generate::run(args),
        Command::Bench(args) => bench::run(args),
        Command::Node(args) => net_cmd::node(args),
        Command::Mpc(args) => mpc_cmd::run(args),
        Command::Client(args) => net_cmd::client(args),
        Command::Guard(args) => net_cmd::guard(args),
        Command::Registry(args) => registry_cmd::run(args),
        Command::Testnet(cmd) => testnet_cmd::run(cmd),
        Command::Preflight(cmd) => preflight::run(cmd),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", describe(&e));
            std::process::ExitCode::FAILURE
        }
    }
}

/// The error and its causes, each cause only once: library errors often quote their source in
/// their own message already.
fn describe(e: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in e.chain() {
        let part = cause.to_string();
        if !text.contains(&part) {
            if !text.is_empty() {
                text.push_str(": ");
            }
            text.push_str(&part);
        }
    }
    text
}
