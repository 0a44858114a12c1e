//! The `unfed` binary end to end: model tools and generation on tiny generated models (fast)
//! and on the two real models (slow, `UNFED_SLOW=1`).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use unfed_model::config::Arch;
use unfed_model::testing::{TinySpec, write_tiny_gguf};

fn unfed(args: &[&str]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_unfed"))
        .args(args)
        .output()
        .expect("run unfed");
    eprintln!(
        "$ unfed {}\n{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn ok(args: &[&str]) -> String {
    let out = unfed(args);
    assert!(out.status.success(), "unfed {args:?} failed");
    String::from_utf8(out.stdout).unwrap()
}

fn fails(args: &[&str]) -> String {
    let out = unfed(args);
    assert!(!out.status.success(), "unfed {args:?} should fail");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn tiny(dir: &Path, arch: Arch) -> PathBuf {
    let path = dir.join(format!("tiny-{}.gguf", arch.name()));
    write_tiny_gguf(
        &path,
        &TinySpec {
            arch,
            tied: arch == Arch::Qwen2,
            ..TinySpec::default()
        },
    )
    .unwrap();
    path
}

/// A testnet started by `unfed testnet up ARGS --dir DIR`, stopped when dropped (a failing
/// test leaves no processes behind).
struct Testnet(PathBuf);

impl Testnet {
    fn up(dir: &Path, args: &[&str]) -> Self {
        ok(&[&["testnet", "up", "--dir", s(dir)], args].concat());
        Self(dir.to_path_buf())
    }
}

impl Drop for Testnet {
    fn drop(&mut self) {
        let out = unfed(&["testnet", "down", "--dir", s(&self.0)]);
        assert!(
            out.status.success() || std::thread::panicking(),
            "testnet down failed"
        );
    }
}

/// A loopback port nothing listens on now.
fn free_port() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port().to_string()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn inspect_reports_the_model_and_rejects_non_models() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny(dir.path(), Arch::Qwen2);
    let out = ok(&["model", "inspect", s(&model)]);
    for want in [
        "qwen2",
        "layers          4",
        "hidden size     64",
        "KV heads 2",
        "tied to the token embedding",
        "byte-level BPE",
        "chat template   present",
    ] {
        assert!(out.contains(want), "missing {want:?} in\n{out}");
    }
    let json: serde_json::Value =
        serde_json::from_str(&ok(&["model", "inspect", "--json", s(&model)])).unwrap();
    assert_eq!(json["config"]["n_layer"], 4);

    let text = dir.path().join("readme.txt");
    std::fs::write(&text, "hello").unwrap();
    assert!(fails(&["model", "inspect", s(&text)]).contains("not a GGUF file"));
    let bytes = std::fs::read(&model).unwrap();
    let cut = dir.path().join("cut.gguf");
    std::fs::write(&cut, &bytes[..bytes.len() / 3]).unwrap();
    assert!(fails(&["model", "inspect", s(&cut)]).contains("truncated or corrupt"));
    assert!(
        fails(&[
            "model",
            "split",
            s(&cut),
            "--output",
            s(&dir.path().join("o")),
            "--num-text-shards",
            "2"
        ])
        .contains("truncated or corrupt")
    );
    assert!(!dir.path().join("o/manifest.json").exists());
}

#[test]
fn split_verify_and_generate_agree_with_the_whole_model() {
    let dir = tempfile::tempdir().unwrap();
    for arch in [Arch::Llama, Arch::Qwen2] {
        let model = tiny(dir.path(), arch);
        let split = dir.path().join(format!("split-{}", arch.name()));
        ok(&[
            "model",
            "split",
            s(&model),
            "--output",
            s(&split),
            "--num-text-shards",
            "3",
        ]);
        ok(&["model", "verify", s(&split)]);
        let args = ["--prompt", "Hello there", "--max-tokens", "40", "--raw"];
        let whole = ok(&[&["generate", "--model", s(&model)][..], &args].concat());
        let sharded = ok(&[&["generate", "--shards", s(&split)][..], &args].concat());
        assert!(!whole.trim().is_empty());
        assert_eq!(whole, sharded, "{arch:?}");

        // A flipped byte is caught, and generation refuses the damaged split.
        let shard1 = split.join("shard-1.gguf");
        let mut bytes = std::fs::read(&shard1).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0x01;
        std::fs::write(&shard1, bytes).unwrap();
        assert!(!unfed(&["model", "verify", s(&split)]).status.success());
        fails(&[&["generate", "--shards", s(&split)][..], &args].concat());
    }
}

#[test]
fn bad_flags_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny(dir.path(), Arch::Llama);
    assert!(
        fails(&[
            "generate",
            "--model",
            s(&model),
            "--prompt",
            "x",
            "--top-p",
            "0"
        ])
        .contains("top-p")
    );
    assert!(
        fails(&["generate", "--model", "no-such-model", "--prompt", "x"]).contains("no-such-model")
    );
    assert!(
        fails(&[
            "model",
            "split",
            s(&model),
            "--output",
            s(&dir.path().join("o")),
            "--num-text-shards",
            "9"
        ])
        .contains("9")
    );
}

/// Real-model tests run one at a time: two engines on a 2-core machine slow each other down
/// many times over (the compute threads spin-wait for each other).
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Greedy replies of a real model, whole and in 3 shards.
fn real_model_replies(name: &str, prompt: &str) -> (String, String) {
    let _guard = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    ok(&["model", "fetch", name]);
    let split = dir.path().join("split");
    ok(&[
        "model",
        "split",
        name,
        "--output",
        s(&split),
        "--num-text-shards",
        "3",
    ]);
    ok(&["model", "verify", s(&split)]);
    let args = ["--prompt", prompt, "--max-tokens", "80"];
    let whole = ok(&[&["generate", "--model", name][..], &args].concat());
    let sharded = ok(&[&["generate", "--shards", s(&split)][..], &args].concat());
    (whole, sharded)
}

#[test]
#[cfg_attr(not(unfed_slow), ignore = "slow: real model weights; set UNFED_SLOW=1")]
fn smollm2_whole_and_sharded_greedy_replies_are_identical_and_coherent() {
    let (whole, sharded) = real_model_replies(
        "smollm2-135m",
        "What is the capital of France? Answer in one sentence.",
    );
    assert_eq!(whole, sharded);
    assert!(whole.contains("Paris"), "{whole}");
}

#[test]
#[cfg_attr(not(unfed_slow), ignore = "slow: real model weights; set UNFED_SLOW=1")]
fn qwen_whole_and_sharded_greedy_replies_are_identical_and_coherent() {
    let (whole, sharded) = real_model_replies(
        "qwen2.5-coder-0.5b",
        "Write a Python function that returns the square of a number.",
    );
    assert_eq!(whole, sharded);
    assert!(
        whole.contains("def ") && whole.contains("return"),
        "{whole}"
    );
}

#[test]
#[cfg_attr(not(unfed_slow), ignore = "slow: real model weights; set UNFED_SLOW=1")]
fn smollm2_testnet_reply_equals_the_single_process_one_and_on_an_mpc_pair_it_answers() {
    let _guard = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let tn = dir.path().join("testnet");
    let prompt = "What is the capital of France? Answer in one sentence.";
    let net = Testnet::up(&tn, &["--registry-port", &port, "--shards", "3"]);
    // A second testnet on the same registry port says so at once, starting nothing (it would
    // otherwise find the first one's registry listening there and wait on it).
    let other = dir.path().join("other");
    let again = unfed(&[
        "testnet",
        "up",
        "--dir",
        s(&other),
        "--registry-port",
        &port,
    ]);
    let err = String::from_utf8_lossy(&again.stderr);
    assert!(
        !again.status.success() && err.contains("cannot use"),
        "{err}"
    );
    assert!(!other.join("testnet.json").exists());
    // The testnet serves TLS with certificates from a CA it made; the client trusts that CA.
    let registry = format!("https://127.0.0.1:{port}");
    let ca = tn.join("tls/ca.pem");
    let listed = unfed(&[
        "client",
        "--registry",
        &registry,
        "--tls-ca",
        s(&ca),
        "--list-models",
    ]);
    let ask = || {
        unfed(&[
            "client",
            "--registry",
            &registry,
            "--tls-ca",
            s(&ca),
            "--prompt",
            prompt,
            "--max-tokens",
            "80",
        ])
    };
    let network = ask();
    drop(net);
    let listed = String::from_utf8(listed.stdout).unwrap();
    assert!(
        listed.contains("smollm2-135m") && listed.contains("READY"),
        "{listed}"
    );
    assert!(network.status.success());
    let local = ok(&[
        "generate",
        "--model",
        "smollm2-135m",
        "--prompt",
        prompt,
        "--max-tokens",
        "80",
    ]);
    assert_eq!(String::from_utf8(network.stdout).unwrap(), local);
    assert!(local.contains("Paris"));
    // The same directory then serves the model with shard 0 on an MPC pair, as the README's
    // second command does: a new split, and a registry started afresh (its database held the
    // plain split's manifest, and would refuse every node of the new one).
    let net = Testnet::up(&tn, &["--registry-port", &port, "--shards", "3", "--mpc"]);
    let private = ask();
    drop(net);
    assert!(
        private.status.success(),
        "{}",
        String::from_utf8_lossy(&private.stderr)
    );
    // Not compared token for token: the default kernels' 8-bit activations can turn the
    // pair's ~1e-3 error into a flipped near-tie (docs/mpc.md); the answer is the same.
    assert!(String::from_utf8(private.stdout).unwrap().contains("Paris"));
}

/// Whether `out` succeeded and printed `want` (stdout).
fn preflight(args: &[&str], pass: bool, want: &str) {
    let out = unfed(args);
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{stdout}");
    assert_eq!(out.status.success(), pass, "unfed {args:?}:\n{stdout}");
    assert!(
        stdout.contains(want),
        "unfed {args:?}: no {want:?} in\n{stdout}"
    );
}

#[test]
fn preflight_passes_a_tls_testnet_and_fails_unsafe_configurations() {
    let _guard = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let model = tiny(dir.path(), Arch::Llama);
    let (port, guard_port) = (free_port(), free_port());
    let tn = dir.path().join("testnet");
    let tls = tn.join("tls");
    let file = |name: &str| tls.join(name).to_str().unwrap().to_string();
    let (ca, cert, key) = (file("ca.pem"), file("node-0-0.crt"), file("node-0-0.key"));
    let identity = tn.join("keys/node-0-0.key");
    let net = Testnet::up(
        &tn,
        &[
            "--model",
            s(&model),
            "--shards",
            "2",
            "--registry-port",
            &port,
            "--guard-port",
            &guard_port,
        ],
    );
    let registry = format!("https://127.0.0.1:{port}");
    // The running network: registry, every node and the guard reachable and verified over TLS.
    let runtime = ["preflight", "runtime", "--registry", &registry];
    preflight(
        &[&runtime[..], &["--tls-ca", &ca]].concat(),
        true,
        "GO: all",
    );
    preflight(
        &[&runtime[..], &["--tls-ca", &ca]].concat(),
        true,
        "TLS verified",
    );
    preflight(
        &[&runtime[..], &["--tls-ca", &ca]].concat(),
        true,
        &format!("https://127.0.0.1:{guard_port}: TLS verified, onion key as registered"),
    );
    // Without the testnet's CA nothing verifies.
    preflight(&runtime, false, "UnknownIssuer");
    // A node with the testnet's certificate, as it would be exposed on loopback.
    let node = |advertise: &str| {
        vec![
            "preflight".to_string(),
            "node".into(),
            "--advertise".into(),
            advertise.into(),
            "--key".into(),
            s(&identity).into(),
            "--registry".into(),
            registry.clone(),
        ]
    };
    let with_tls = |mut args: Vec<String>| {
        args.extend(["--tls-cert", &cert, "--tls-key", &key, "--tls-ca", &ca].map(String::from));
        args
    };
    let run = |args: Vec<String>, pass: bool, want: &str| {
        preflight(
            &args.iter().map(String::as_str).collect::<Vec<_>>(),
            pass,
            want,
        )
    };
    run(with_tls(node("https://127.0.0.1:50051")), true, "GO: all");
    // The certificate does not name the advertised host.
    run(
        with_tls(node("https://node.example.org:50051")),
        false,
        "not valid for name",
    );
    drop(net);
    // A public address without TLS.
    run(node("203.0.113.42:50051"), false, "off loopback");
    // A TLS key others can read.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    run(
        with_tls(node("https://127.0.0.1:50051")),
        false,
        "others can read it",
    );
    // The dashboard: loopback is fine, every interface without TLS is not.
    preflight(&["preflight", "web"], true, "GO: all");
    preflight(
        &["preflight", "web", "--host", "0.0.0.0"],
        false,
        "without TLS",
    );
}
