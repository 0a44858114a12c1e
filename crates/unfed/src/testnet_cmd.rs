//! `unfed testnet up | down`: the whole local network in one command — fetch and split the model,
//! start a registry and the compute nodes as child processes on loopback, wait until the model
//! is READY — and stop exactly what was started. Every service serves TLS with a certificate
//! from a CA made for this testnet (its key is never written to disk), unless `--no-tls`.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};

use crate::resolve;

/// candle's setting for how long idle compute threads spin before they sleep.
const SPIN_LIMIT_ENV: &str = "CANDLE_BARRIER_POOL_SPIN_LIMIT";

/// Where `up` records what it started, for `down`.
const STATE_FILE: &str = "testnet.json";

#[derive(Subcommand)]
pub enum TestnetCommand {
    /// Start a registry and compute nodes on 127.0.0.1.
    Up(UpArgs),
    /// Stop what `up` started.
    Down {
        #[arg(long, default_value = "testnet")]
        dir: PathBuf,
    },
}

#[derive(Args)]
pub struct UpArgs {
    #[arg(long, default_value = "smollm2-135m")]
    model: String,
    #[arg(long, default_value_t = 3)]
    shards: usize,
    /// Nodes per shard.
    #[arg(long, default_value_t = 1)]
    replicas: usize,
    /// Working directory: shards, keys, databases, logs.
    #[arg(long, default_value = "testnet")]
    dir: PathBuf,
    #[arg(long, default_value_t = 50050)]
    registry_port: u16,
    /// Once READY, also ask this through the network and print the reply.
    #[arg(long)]
    prompt: Option<String>,
    #[arg(long, default_value_t = 128)]
    max_tokens: usize,
    #[arg(long)]
    store: Option<PathBuf>,
    /// Also start a guard relay on this port, and ask the prompt through it.
    #[arg(long)]
    guard_port: Option<u16>,
    /// Plaintext gRPC on loopback instead of TLS.
    #[arg(long)]
    no_tls: bool,
    /// Shard 0 on a two-party MPC pair (`unfed mpc`): party B, then party A, per replica.
    #[arg(long)]
    mpc: bool,
    /// With `--mpc`: decoder layers the pair runs on shares.
    #[arg(long, default_value_t = 1)]
    mpc_layers: usize,
}

/// A port on 127.0.0.1 that is free now.
fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Days a testnet's certificates are valid.
const CERT_DAYS: i64 = 30;

/// The testnet's certificates: the CA every process trusts, and one certificate per service.
struct Certs {
    dir: PathBuf,
    ca: unfed_proto::tls::TestnetCa,
}

impl Certs {
    /// A fresh CA, its certificate written to `dir/ca.pem`.
    fn create(dir: PathBuf) -> Result<Self> {
        std::fs::create_dir_all(&dir)?;
        let ca = unfed_proto::tls::TestnetCa::generate("unfed testnet CA", CERT_DAYS)?;
        std::fs::write(dir.join("ca.pem"), ca.cert_pem())?;
        Ok(Self { dir, ca })
    }

    fn ca_file(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// Issues `name`'s certificate for loopback and returns the flags that serve it.
    fn flags(&self, name: &str) -> Result<Vec<String>> {
        let (cert, key) = self.ca.issue(&["127.0.0.1", "localhost"], CERT_DAYS)?;
        let (cert_file, key_file) = (
            self.dir.join(format!("{name}.crt")),
            self.dir.join(format!("{name}.key")),
        );
        std::fs::write(&cert_file, cert)?;
        write_private(&key_file, key.as_bytes())?;
        Ok(vec![
            "--tls-cert".into(),
            path(&cert_file)?.into(),
            "--tls-key".into(),
            path(&key_file)?.into(),
            "--tls-ca".into(),
            path(&self.ca_file())?.into(),
        ])
    }
}

/// Writes a file only its owner can read.
fn write_private(file: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(file)?.write_all(bytes)?;
    Ok(())
}

#[derive(serde::Serialize, serde::Deserialize)]
struct State {
    registry: String,
    /// The registry first, then the nodes.
    processes: Vec<Started>,
}

/// A started child: its pid and its start time, so that a reused pid is never signalled.
#[derive(Clone, Copy, serde::Serialize, serde::Deserialize)]
struct Started {
    pid: u32,
    start_ticks: u64,
}

impl Started {
    fn of(pid: u32) -> Self {
        Self {
            pid,
            start_ticks: start_ticks(pid).unwrap_or(0),
        }
    }

    /// Whether the process is still the one we started (and not a zombie).
    fn running(&self) -> bool {
        self.start_ticks != 0 && start_ticks(self.pid) == Some(self.start_ticks)
    }

    fn signal(&self, sig: &str) {
        if self.running() {
            let _ = Command::new("kill")
                .args([sig, &self.pid.to_string()])
                .status();
        }
    }
}

/// Field 22 of /proc/PID/stat: when the process started, in clock ticks since boot; None for a
/// process that is gone or a zombie.
fn start_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces; the fields after it are plain.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    if fields.first() == Some(&"Z") {
        return None;
    }
    fields.get(19)?.parse().ok()
}

pub fn run(cmd: TestnetCommand) -> Result<ExitCode> {
    match cmd {
        TestnetCommand::Up(args) => up(args),
        TestnetCommand::Down { dir } => down(&dir),
    }
}

fn up(args: UpArgs) -> Result<ExitCode> {
    let dir = &args.dir;
    if dir.join(STATE_FILE).exists() {
        bail!(
            "a testnet already runs from {} (stop it with `unfed testnet down --dir {}`)",
            dir.display(),
            dir.display()
        );
    }
    for sub in ["logs", "keys"] {
        std::fs::create_dir_all(dir.join(sub))?;
    }
    let source = resolve::model_path(&args.model, args.store.as_deref())?;
    let shards_dir = dir.join("shards");
    let model_id = unfed_store::find(&args.model)
        .map(|s| s.name.to_string())
        .unwrap_or_else(|_| args.model.clone());
    let current = unfed_shard::read_manifest(&shards_dir).ok();
    let mpc_layers = args.mpc.then_some(args.mpc_layers);
    if current.is_none_or(|m| {
        m.model_id != model_id
            || m.shards.len() != args.shards
            || m.mpc.map(|p| p.layers) != mpc_layers
    }) {
        eprintln!("splitting {} into {} shards", args.model, args.shards);
        let opts = unfed_shard::SplitOptions {
            num_shards: args.shards,
            model_id: Some(model_id.clone()),
            force: true,
            mpc_layers,
        };
        unfed_shard::split(&source, &shards_dir, &opts)?;
        // The registry's database holds the manifest of the split it served before and would
        // refuse every node of the new one: a new split starts the registry afresh.
        for suffix in ["", "-wal", "-shm"] {
            let file = dir.join(format!("registry.db{suffix}"));
            if file.exists() {
                std::fs::remove_file(&file)
                    .with_context(|| format!("removing {}", file.display()))?;
            }
        }
    }
    let cluster = dir.join("cluster.json");
    if !cluster.exists() {
        std::fs::write(
            &cluster,
            include_str!("../../../configs/cluster.example.json"),
        )?;
    }
    let exe = std::env::current_exe()?;
    let certs = (!args.no_tls)
        .then(|| Certs::create(dir.join("tls")))
        .transpose()?;
    let scheme = if certs.is_some() {
        unfed_proto::tls::TLS_SCHEME
    } else {
        ""
    };
    let tls_flags = |name: &str| -> Result<Vec<String>> {
        certs.as_ref().map_or(Ok(Vec::new()), |c| c.flags(name))
    };
    let dial_flags: Vec<String> = match &certs {
        Some(c) => vec!["--tls-ca".into(), path(&c.ca_file())?.into()],
        None => Vec::new(),
    };
    let dialer = match &certs {
        Some(c) => unfed_proto::Dialer::trusting(c.ca.cert_pem().as_bytes(), "the testnet CA")?,
        None => unfed_proto::Dialer::default(),
    };
    let registry_port = format!("127.0.0.1:{}", args.registry_port);
    // Waiting for the port below would find another testnet's registry there.
    std::net::TcpListener::bind(&registry_port).with_context(|| {
        format!(
            "cannot use {registry_port} for the registry (another testnet? `unfed testnet down \
             --dir DIR` stops one; `--registry-port` picks another port)"
        )
    })?;
    let registry = format!("{scheme}{registry_port}");
    let mut state = State {
        registry: registry.clone(),
        processes: Vec::new(),
    };
    // The log name of each started process, in the order of `state.processes`.
    let mut started = vec!["registry".to_string()];
    let reg = spawn(
        &exe,
        dir,
        "registry",
        &[
            "registry",
            "--port",
            &args.registry_port.to_string(),
            "--cluster-config",
            path(&cluster)?,
            "--db",
            path(&dir.join("registry.db"))?,
            "--heartbeat-interval-ms",
            "1000",
        ],
        &tls_flags("registry")?,
    )?;
    state.processes.push(Started::of(reg));
    save(dir, &state)?;
    wait_for_port(&registry_port, Duration::from_secs(15)).with_context(|| {
        format!(
            "the registry did not start; see {}",
            dir.join("logs/registry.log").display()
        )
    })?;
    let plain_from = usize::from(args.mpc);
    if args.mpc {
        for replica in 0..args.replicas {
            let names = [format!("mpc-a-{replica}"), format!("mpc-b-{replica}")];
            let keys = names
                .clone()
                .map(|n| dir.join("keys").join(format!("{n}.key")));
            let id = |k: &Path| -> Result<String> {
                Ok(unfed_identity::NodeKey::load_or_create(k)?
                    .address()
                    .to_string())
            };
            let (id_a, id_b) = (id(&keys[0])?, id(&keys[1])?);
            let ports = [free_port()?, free_port()?];
            let address = |i: usize| format!("127.0.0.1:{}", ports[i]);
            // B first: A connects to it.
            for (i, role) in [(1, "b"), (0, "a")] {
                let (peer, peer_id) = match i {
                    0 => (format!("{scheme}{}", address(1)), &id_b),
                    _ => (format!("{scheme}{}", address(0)), &id_a),
                };
                let pid = spawn(
                    &exe,
                    dir,
                    &names[i],
                    &[
                        "mpc",
                        "--role",
                        role,
                        "--peer",
                        &peer,
                        "--peer-identity",
                        peer_id,
                        "--shards-dir",
                        path(&shards_dir)?,
                        "--registry",
                        &registry,
                        "--port",
                        &ports[i].to_string(),
                        "--key",
                        path(&keys[i])?,
                    ],
                    &tls_flags(&names[i])?,
                )?;
                state.processes.push(Started::of(pid));
                started.push(names[i].clone());
                save(dir, &state)?;
                if i == 1 {
                    wait_for_port(&address(1), Duration::from_secs(60)).with_context(|| {
                        format!(
                            "party B did not start; see {}",
                            dir.join(format!("logs/{}.log", names[1])).display()
                        )
                    })?;
                }
            }
        }
    }
    for shard in plain_from..args.shards {
        for replica in 0..args.replicas {
            let name = format!("node-{shard}-{replica}");
            let key = dir.join("keys").join(format!("{name}.key"));
            let pid = spawn(
                &exe,
                dir,
                &name,
                &[
                    "node",
                    "--shard-index",
                    &shard.to_string(),
                    "--shards-dir",
                    path(&shards_dir)?,
                    "--registry",
                    &registry,
                    "--port",
                    "0",
                    "--key",
                    path(&key)?,
                ],
                &tls_flags(&name)?,
            )?;
            state.processes.push(Started::of(pid));
            started.push(name);
            save(dir, &state)?;
        }
    }
    let guard = args.guard_port.is_some();
    if let Some(port) = args.guard_port {
        let key = dir.join("keys").join("guard.key");
        let pid = spawn(
            &exe,
            dir,
            "guard",
            &[
                "guard",
                "--registry",
                &registry,
                "--port",
                &port.to_string(),
                "--key",
                path(&key)?,
            ],
            &tls_flags("guard")?,
        )?;
        state.processes.push(Started::of(pid));
        started.push("guard".into());
        save(dir, &state)?;
        let address = format!("127.0.0.1:{port}");
        wait_for_port(&address, Duration::from_secs(15)).with_context(|| {
            format!(
                "the guard did not start; see {}",
                dir.join("logs/guard.log").display()
            )
        })?;
    }
    let runtime = tokio::runtime::Runtime::new()?;
    runtime
        .block_on(wait_ready(
            &dialer,
            &registry,
            &model_id,
            guard,
            (dir, &state.processes, &started),
            Duration::from_secs(180),
        ))
        .with_context(|| {
            format!(
                "the model did not become READY (or the guard was not listed); logs are in {} \
                 (`unfed testnet down --dir {}` stops what started)",
                dir.join("logs").display(),
                dir.display()
            )
        })?;
    eprintln!(
        "testnet READY: {model_id} in {} shards x {} replicas, registry {registry}",
        args.shards, args.replicas
    );
    let mut flags = format!("--registry {registry}");
    if let Some(c) = &certs {
        flags += &format!(" --tls-ca {}", c.ca_file().display());
    }
    // The client finds the guard at the registry and keeps it in the testnet's directory.
    let guard_state = dir.join("guards.json");
    let via = match guard {
        true => format!(" --guard auto --guard-state {}", guard_state.display()),
        false => String::new(),
    };
    eprintln!("  ask:   unfed client {flags}{via} --prompt \"Hello!\"");
    eprintln!("  chat:  unfed client {flags}{via} chat");
    eprintln!("  stop:  unfed testnet down --dir {}", dir.display());
    if let Some(prompt) = args.prompt {
        let mut client = Command::new(&exe);
        client.args([
            "client",
            "--registry",
            &registry,
            "--prompt",
            &prompt,
            "--max-tokens",
            &args.max_tokens.to_string(),
        ]);
        client.args(&dial_flags);
        if guard {
            client.args(["--guard", "auto", "--guard-state", path(&guard_state)?]);
        }
        let status = client.status()?;
        if !status.success() {
            bail!("the client failed");
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn path(p: &Path) -> Result<&str> {
    p.to_str()
        .with_context(|| format!("{} is not valid UTF-8", p.display()))
}

/// Starts a child in its own process group (so a terminal's Ctrl-C does not reach it), output
/// to `logs/NAME.log`.
fn spawn(exe: &Path, dir: &Path, name: &str, args: &[&str], tls: &[String]) -> Result<u32> {
    let log = std::fs::File::create(dir.join("logs").join(format!("{name}.log")))?;
    let mut cmd = Command::new(exe);
    cmd.args(args)
        .args(tls)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    // Every node of a testnet shares this machine's cores: compute threads that spin-wait long
    // after their work steal the next node's CPU (docs/benchmarks.md), so keep the spin short.
    if std::env::var_os(SPIN_LIMIT_ENV).is_none() {
        cmd.env(SPIN_LIMIT_ENV, "1000");
    }
    #[cfg(unix)]
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let child = cmd.spawn().with_context(|| format!("starting {name}"))?;
    Ok(child.id())
}

/// The pids of the processes the testnet in `dir` started (the registry, then the nodes).
pub(crate) fn started_pids(dir: &Path) -> Result<Vec<u32>> {
    let state: State = serde_json::from_str(&std::fs::read_to_string(dir.join(STATE_FILE))?)?;
    Ok(state.processes.iter().map(|p| p.pid).collect())
}

fn save(dir: &Path, state: &State) -> Result<()> {
    std::fs::write(dir.join(STATE_FILE), serde_json::to_string_pretty(state)?)?;
    Ok(())
}

fn wait_for_port(addr: &str, limit: Duration) -> Result<()> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if std::net::TcpStream::connect(addr).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("nothing listens on {addr} after {limit:?}")
}

/// Waits until the registry says `model_id` is READY and, with `guard`, lists a guard relay;
/// fails at once when one of the started processes (logged under `dir/logs/NAME.log`) exits.
async fn wait_ready(
    dialer: &unfed_proto::Dialer,
    registry: &str,
    model_id: &str,
    guard: bool,
    (dir, processes, names): (&Path, &[Started], &[String]),
    limit: Duration,
) -> Result<()> {
    let start = Instant::now();
    loop {
        if let Some(i) = processes.iter().position(|p| !p.running()) {
            let log = dir.join("logs").join(format!("{}.log", names[i]));
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let last = text.lines().rev().find(|l| !l.trim().is_empty());
            bail!(
                "{} exited: {}",
                names[i],
                last.unwrap_or("(its log is empty)")
            );
        }
        if let Ok(mut c) = unfed_client::Client::connect_with(registry, dialer.clone()).await
            && let Ok(models) = c.list_models().await
            && models
                .iter()
                .any(|m| m.model_id == model_id && m.status == "READY")
            && (!guard || c.listed_guards().await.is_ok_and(|g| !g.is_empty()))
        {
            return Ok(());
        }
        if start.elapsed() > limit {
            bail!("not READY after {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// TERM, a grace period, then KILL for whatever is still running.
fn stop(processes: &[Started]) {
    processes.iter().for_each(|p| p.signal("-TERM"));
    let start = Instant::now();
    while processes.iter().any(Started::running) && start.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(100));
    }
    processes.iter().for_each(|p| p.signal("-KILL"));
}

fn down(dir: &Path) -> Result<ExitCode> {
    let file = dir.join(STATE_FILE);
    let state: State = serde_json::from_str(
        &std::fs::read_to_string(&file)
            .with_context(|| format!("no testnet runs from {}", dir.display()))?,
    )?;
    let (registry, nodes) = state
        .processes
        .split_first()
        .context("the state file lists no processes")?;
    // Nodes first, so that they unregister while the registry still runs; the registry last.
    stop(nodes);
    stop(std::slice::from_ref(registry));
    std::fs::remove_file(&file)?;
    eprintln!("stopped {} processes", state.processes.len());
    Ok(ExitCode::SUCCESS)
}
