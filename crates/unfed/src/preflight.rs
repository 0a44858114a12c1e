//! `unfed preflight node | web | runtime`: go/no-go checks before a service is exposed. Each
//! check prints `GO` or `NO-GO` with what it found; any NO-GO makes the command fail. `node`
//! checks a node's planned exposure (address, TLS, certificate, key files, registry), `web` the
//! dashboard's bind address and certificate, `runtime` a running network through its registry.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Result;
use clap::{Args, Subcommand};
use unfed_proto::Dialer;
use unfed_proto::node::HealthRequest;
use unfed_proto::node::OnionKeyRequest;
use unfed_proto::node::guard_client::GuardClient;
use unfed_proto::registry::{
    ClusterInfoRequest, DiscoverRequest, GuardInfo, ListGuardsRequest, ListModelsRequest,
};
use unfed_proto::tls::{ServerTls, Target};

use crate::tls_args::{DialArgs, ServeTlsArgs};

#[derive(Subcommand)]
pub enum PreflightCommand {
    /// A compute node (or guard) about to be exposed: address, TLS, key files, registry.
    Node(NodeCheck),
    /// The dashboard's bind address and certificate (`unfed web`).
    Web(WebCheck),
    /// A running network, through its registry: every listed node and guard reachable and
    /// verified.
    Runtime(RuntimeCheck),
}

#[derive(Args)]
pub struct NodeCheck {
    /// The address the node will advertise (`https://host:port` off loopback).
    #[arg(long)]
    advertise: String,
    /// The address it will listen on.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// The node's identity key file.
    #[arg(long)]
    key: Option<PathBuf>,
    /// The registry it will register with (checked reachable when given).
    #[arg(long)]
    registry: Option<String>,
    #[command(flatten)]
    tls: ServeTlsArgs,
}

#[derive(Args)]
pub struct WebCheck {
    /// The address the dashboard will listen on.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    #[arg(long, default_value_t = 8080)]
    port: u16,
    #[command(flatten)]
    tls: ServeTlsArgs,
}

#[derive(Args)]
pub struct RuntimeCheck {
    /// The registry of the running network.
    #[arg(long, default_value = "127.0.0.1:50050")]
    registry: String,
    #[command(flatten)]
    dial: DialArgs,
}

/// One check's outcome: what it looked at and what it found.
struct Check {
    name: String,
    outcome: Result<String, String>,
}

/// The checks made so far.
#[derive(Default)]
struct Report(Vec<Check>);

impl Report {
    fn add(&mut self, name: impl Into<String>, outcome: Result<String, String>) -> bool {
        let ok = outcome.is_ok();
        self.0.push(Check {
            name: name.into(),
            outcome,
        });
        ok
    }

    /// Prints every check and the verdict; fails on any NO-GO.
    fn finish(self) -> ExitCode {
        let failed = self.0.iter().filter(|c| c.outcome.is_err()).count();
        for c in &self.0 {
            let (verdict, text) = match &c.outcome {
                Ok(t) => ("GO   ", t),
                Err(t) => ("NO-GO", t),
            };
            println!("{verdict}  {:<12} {text}", c.name);
        }
        if failed == 0 {
            println!("GO: all {} checks passed", self.0.len());
            ExitCode::SUCCESS
        } else {
            println!("NO-GO: {failed} of {} checks failed", self.0.len());
            ExitCode::FAILURE
        }
    }
}

pub fn run(cmd: PreflightCommand) -> Result<ExitCode> {
    let runtime = tokio::runtime::Runtime::new()?;
    let report = match cmd {
        PreflightCommand::Node(c) => runtime.block_on(node(c)),
        PreflightCommand::Web(c) => runtime.block_on(web(c)),
        PreflightCommand::Runtime(c) => runtime.block_on(network(c)),
    };
    Ok(report.finish())
}

async fn node(c: NodeCheck) -> Report {
    let mut r = Report::default();
    let port = Target::parse(&c.advertise).map_or(0, |t| t.port);
    let listen = exposure(&mut r, &c.host, port, Some(&c.advertise), &c.tls);
    if let (Some(tls), Ok(target)) = (listen, Target::parse(&c.advertise))
        && target.tls
    {
        handshake(&mut r, &tls, &c.tls.dial, &target).await;
    }
    if let Some(key) = &c.tls.tls_key {
        r.add("tls key", private_file(key, false));
    }
    let key = c
        .key
        .clone()
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".unfed/node.key")));
    match key {
        Some(k) => r.add("identity key", private_file(&k, true)),
        None => r.add("identity key", Err("no --key and no HOME".into())),
    };
    if let Some(registry) = &c.registry {
        match c.tls.dial.dialer() {
            Ok(dialer) => {
                registry_reachable(&mut r, &dialer, registry).await;
            }
            Err(e) => {
                r.add("registry", Err(e.to_string()));
            }
        }
    }
    r
}

async fn web(c: WebCheck) -> Report {
    let mut r = Report::default();
    let advertise = Target {
        host: c.host.clone(),
        port: c.port,
        tls: c.tls.tls_cert.is_some(),
    };
    if let Some(tls) = exposure(&mut r, &c.host, c.port, None, &c.tls)
        && advertise.tls
    {
        handshake(&mut r, &tls, &c.tls.dial, &advertise).await;
    }
    if let Some(key) = &c.tls.tls_key {
        r.add("tls key", private_file(key, false));
    }
    r
}

async fn network(c: RuntimeCheck) -> Report {
    let mut r = Report::default();
    let dialer = match c.dial.dialer() {
        Ok(d) => d,
        Err(e) => {
            r.add("trust", Err(e.to_string()));
            return r;
        }
    };
    let Some(mut registry) = registry_reachable(&mut r, &dialer, &c.registry).await else {
        return r;
    };
    let models = match registry.list_models(ListModelsRequest {}).await {
        Ok(m) => m.into_inner().models,
        Err(s) => {
            r.add(
                "models",
                Err(format!("the registry refused: {}", s.message())),
            );
            return r;
        }
    };
    let ready = models.iter().filter(|m| m.status == "READY").count();
    r.add(
        "models",
        if ready > 0 {
            Ok(format!("{ready} of {} models READY", models.len()))
        } else {
            Err(format!("no model is READY ({} listed)", models.len()))
        },
    );
    for m in &models {
        let nodes = match registry
            .discover(DiscoverRequest {
                model_id: m.model_id.clone(),
            })
            .await
        {
            Ok(d) => d.into_inner().nodes,
            Err(s) => {
                r.add(
                    &m.model_id,
                    Err(format!("discovery failed: {}", s.message())),
                );
                continue;
            }
        };
        for n in nodes {
            let name = format!("{} shard {}", m.model_id, n.shard_index);
            let outcome = node_serves(&dialer, &n.address, &m.model_id, n.shard_index).await;
            r.add(name, outcome.map(|t| format!("{}: {t}", n.address)));
        }
    }
    match registry.list_guards(ListGuardsRequest {}).await {
        Ok(g) => {
            for guard in g.into_inner().guards {
                let name = format!("guard {}", guard.identity);
                r.add(name, guard_serves(&dialer, &guard).await);
            }
        }
        Err(s) => {
            let refused = format!("the registry refused: {}", s.message());
            r.add("guards", Err(refused));
        }
    }
    r
}

/// A listed guard answers at its address with the onion key of its registration.
async fn guard_serves(dialer: &Dialer, guard: &GuardInfo) -> Result<String, String> {
    let channel = dialer.connect(&guard.address).await?;
    let key = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        GuardClient::new(channel).onion_key(OnionKeyRequest {}),
    )
    .await
    .map_err(|_| format!("{}: no answer within 5 s", guard.address))?
    .map_err(|s| format!("{}: {}", guard.address, s.message()))?
    .into_inner()
    .onion_key;
    if key != guard.onion_key {
        return Err(format!(
            "{} answers with another onion key than its registration's",
            guard.address
        ));
    }
    Ok(format!(
        "{}: {}, onion key as registered",
        guard.address,
        transport(&guard.address)
    ))
}

/// How an address is reached: verified TLS, or plaintext on loopback.
fn transport(address: &str) -> &'static str {
    if address.starts_with(unfed_proto::tls::TLS_SCHEME) {
        "TLS verified"
    } else {
        "plaintext, loopback"
    }
}

/// The listen and advertise checks; returns the certificate when it loads.
fn exposure(
    r: &mut Report,
    host: &str,
    port: u16,
    advertise: Option<&str>,
    tls: &ServeTlsArgs,
) -> Option<ServerTls> {
    let cert = match tls.server() {
        Ok(Some(cert)) => {
            r.add(
                "certificate",
                Ok("the chain and key parse and match".into()),
            );
            Some(cert)
        }
        Ok(None) => None,
        Err(e) => {
            r.add("certificate", Err(format!("{e:#}")));
            None
        }
    };
    let has_cert = tls.tls_cert.is_some();
    let listen = match socket(host, port) {
        Ok(a) => a,
        Err(e) => {
            r.add("listen", Err(e));
            return cert;
        }
    };
    let what = match advertise {
        Some(a) => format!("listen on {listen}, advertise {a}"),
        None => format!("listen on {listen}"),
    };
    let outcome = unfed_proto::tls::check_exposure(listen, advertise, has_cert)
        .map(|()| match has_cert {
            true => format!("{what} with TLS"),
            false => format!("{what}: loopback only, plaintext"),
        })
        .map_err(|e| e.to_string());
    r.add("exposure", outcome);
    cert
}

/// A real handshake with the certificate, as a client that trusts `dial`'s roots would do it.
async fn handshake(r: &mut Report, tls: &ServerTls, dial: &DialArgs, target: &Target) {
    let dialer = match dial.dialer() {
        Ok(d) => d,
        Err(e) => {
            r.add("handshake", Err(e.to_string()));
            return;
        }
    };
    let roots = match &dial.tls_ca {
        Some(ca) => format!("the CA in {}", ca.display()),
        None => "the web PKI".to_string(),
    };
    let outcome = unfed_proto::tls::probe(tls, &dialer, target)
        .await
        .map(|()| {
            format!(
                "a client trusting {roots} accepts it for {}",
                target.server_name()
            )
        });
    r.add("handshake", outcome);
}

/// A key file must be readable by its owner only; a missing one is fine when it will be created.
fn private_file(path: &Path, may_be_missing: bool) -> Result<String, String> {
    match std::fs::metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && may_be_missing => {
            Ok(format!("{} will be created (mode 0600)", path.display()))
        }
        Err(e) => Err(format!("{}: {e}", path.display())),
        Ok(meta) => {
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                let mode = meta.permissions().mode() & 0o777;
                if mode & 0o077 != 0 {
                    return Err(format!(
                        "{} has mode {mode:04o}: others can read it (chmod 600)",
                        path.display()
                    ));
                }
                Ok(format!("{} has mode {mode:04o}", path.display()))
            }
            #[cfg(not(unix))]
            {
                let _ = meta;
                Ok(format!("{} exists", path.display()))
            }
        }
    }
}

/// Reaches the registry and reads its cluster's rules; a cluster whose cheating costs nothing
/// is a NO-GO.
async fn registry_reachable(
    r: &mut Report,
    dialer: &Dialer,
    registry: &str,
) -> Option<unfed_proto::registry::registry_client::RegistryClient<tonic::transport::Channel>> {
    let mut client = match dialer.connect_registry(registry).await {
        Ok(c) => c,
        Err(e) => {
            r.add("registry", Err(e));
            return None;
        }
    };
    let info = match client.cluster_info(ClusterInfoRequest {}).await {
        Ok(i) => i.into_inner(),
        Err(s) => {
            r.add("registry", Err(format!("{registry}: {}", s.message())));
            return None;
        }
    };
    let transport = if registry.starts_with(unfed_proto::tls::TLS_SCHEME) {
        "TLS, certificate verified"
    } else {
        "plaintext on loopback"
    };
    r.add(
        "registry",
        Ok(format!(
            "{registry} answers ({transport}), cluster {:?}",
            info.name
        )),
    );
    let staking = if info.slash_fraction <= 0.0 {
        Err("slash_fraction is 0: cheating costs nothing".to_string())
    } else if info.min_stake.trim_start_matches('0').is_empty() {
        Err("min_stake is 0: anyone can join and cheat for free".to_string())
    } else {
        Ok(format!(
            "min_stake {}, slash_fraction {}, challenge window {} s",
            info.min_stake, info.slash_fraction, info.challenge_window_s
        ))
    };
    r.add("staking", staking);
    Some(client)
}

/// Whether the node at `address` answers over the dialer's rules and serves what the registry
/// says it does.
async fn node_serves(
    dialer: &Dialer,
    address: &str,
    model_id: &str,
    shard: u32,
) -> Result<String, String> {
    let mut client = dialer.connect_node(address).await?;
    let health = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        client.health(HealthRequest {}),
    )
    .await
    .map_err(|_| "no health answer within 5 s".to_string())?
    .map_err(|s| format!("health: {}", s.message()))?
    .into_inner();
    if health.model_id != model_id || health.shard_index != shard {
        return Err(format!(
            "serves {} shard {}, not what the registry lists",
            health.model_id, health.shard_index
        ));
    }
    Ok(format!(
        "{}, {}/{} sessions",
        transport(address),
        health.active_sessions,
        health.max_sessions
    ))
}

/// `host:port` as a socket address (a host name resolves).
fn socket(host: &str, port: u16) -> Result<std::net::SocketAddr, String> {
    use std::net::ToSocketAddrs;
    (host, port)
        .to_socket_addrs()
        .map_err(|e| format!("{host}:{port}: {e}"))?
        .next()
        .ok_or_else(|| format!("{host} resolves to nothing"))
}
