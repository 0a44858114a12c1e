//! The cluster config: the shipped example parses, and every rule gives a clear error.

mod common;

use unfed_registry::{ClusterConfig, ConfigError, RegistryOptions};

fn base() -> serde_json::Value {
    serde_json::json!({
        "name": "Test Pool",
        "price_per_1k_input_tokens": 1,
        "price_per_1k_output_tokens": 2,
        "min_stake": "1000",
        "slash_fraction": 0.25,
        "challenge_window_s": 60,
        "daemon_quorum": 2
    })
}

fn with(key: &str, value: serde_json::Value) -> String {
    let mut v = base();
    v[key] = value;
    v.to_string()
}

fn err(text: &str) -> String {
    ClusterConfig::from_json(text).unwrap_err().to_string()
}

#[test]
fn the_example_config_parses() {
    let c = ClusterConfig::load(&common::example_config_path()).unwrap();
    assert_eq!(c.name, "Local UNFED Pool");
    assert_eq!(c.daemon_quorum, 1);
    assert!(!c.on_chain());
}

#[test]
fn chain_settings_parse_together() {
    let mut v = base();
    v["chain_rpc_url"] = "http://127.0.0.1:8545".into();
    v["escrow_contract_address"] = "0x5FbDB2315678afecb367f032d93F642f64180aa3".into();
    v["staking_token_address"] = "0xe7f1725e7734ce288f8367e1bb143e90bb3f0512".into();
    let c = ClusterConfig::from_json(&v.to_string()).unwrap();
    assert!(c.on_chain());

    v["staking_token_address"] = serde_json::Value::Null;
    let e = err(&v.to_string());
    assert!(e.contains("go together"), "{e}");
}

#[test]
fn invalid_configs_give_clear_errors() {
    let cases: Vec<(String, &str)> = vec![
        ("not json".into(), "not JSON"),
        (with("name", "".into()), "`name` must be 1 to 128"),
        (with("name", "a\u{7}b".into()), "control characters"),
        (
            with("min_stake", "12.5".into()),
            "`min_stake` must be a decimal string",
        ),
        (with("min_stake", serde_json::json!(1000)), "invalid type"),
        (with("min_stake", "007".into()), "leading zeros"),
        (with("min_stake", "9".repeat(79).into()), "uint256"),
        (
            with("slash_fraction", serde_json::json!(1.5)),
            "`slash_fraction` must be between 0 and 1",
        ),
        (
            with("slash_fraction", serde_json::json!(-0.1)),
            "between 0 and 1",
        ),
        (
            with("challenge_window_s", serde_json::json!(0)),
            "`challenge_window_s` must be at least 1",
        ),
        (
            with("daemon_quorum", serde_json::json!(0)),
            "`daemon_quorum` must be at least 1",
        ),
        (
            with("price_per_1k_input_tokens", serde_json::json!(-1)),
            "invalid value",
        ),
        (
            with("daemon_required_count", serde_json::json!(1)),
            "unknown field `daemon_required_count`",
        ),
        (
            with("chain_rpc_url", "localhost:8545".into()),
            "`chain_rpc_url` must be an http",
        ),
        (
            with("escrow_contract_address", "0x123".into()),
            "`escrow_contract_address` is not a contract address",
        ),
        (
            with(
                "staking_token_address",
                "0x5FbDB2315678afecb367f032d93F642f64180AA3".into(),
            ),
            "checksum",
        ),
        (
            with("operator_private_key", "0x0123".into()),
            "`operator_private_key` holds a secret key",
        ),
    ];
    for (text, expected) in cases {
        let e = err(&text);
        assert!(
            e.contains(expected),
            "{text}\n  gave: {e}\n  expected: {expected}"
        );
        assert!(
            !e.contains("0x0123"),
            "a secret value must not be echoed: {e}"
        );
    }
    let mut missing = base();
    missing.as_object_mut().unwrap().remove("min_stake");
    let e = err(&missing.to_string());
    assert!(e.contains("missing field `min_stake`"), "{e}");
    // The largest uint256 is fine.
    let max = "115792089237316195423570985008687907853269984665640564039457584007913129639935";
    ClusterConfig::from_json(&with("min_stake", max.into())).unwrap();
}

#[test]
fn load_errors_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("absent.json");
    let e = ClusterConfig::load(&missing).unwrap_err();
    assert!(matches!(e, ConfigError::Read { .. }));
    assert!(e.to_string().contains("absent.json"), "{e}");

    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, with("daemon_quorum", serde_json::json!(0))).unwrap();
    let e = ClusterConfig::load(&bad).unwrap_err().to_string();
    assert!(e.contains("bad.json") && e.contains("daemon_quorum"), "{e}");

    let big = dir.path().join("big.json");
    std::fs::write(&big, " ".repeat(100 << 10)).unwrap();
    let e = ClusterConfig::load(&big).unwrap_err();
    assert!(matches!(e, ConfigError::TooLarge { .. }), "{e}");
}

#[test]
fn registry_options_defaults_and_checks() {
    let o = RegistryOptions::default();
    assert_eq!(o.heartbeat_interval_ms(), 5000);
    assert_eq!(o.health_window_ms(), 15_000);
    assert_eq!(o.clock_skew_ms(), 60_000);
    assert_eq!(
        (o.max_models, o.max_nodes_per_identity, o.max_nodes),
        (64, 16, 4096)
    );
    assert_eq!(o.stale_after_ms(), 150_000);
    o.validate().unwrap();
    let no_nodes = RegistryOptions { max_nodes: 0, ..o };
    assert!(
        no_nodes
            .validate()
            .unwrap_err()
            .to_string()
            .contains("max_nodes")
    );
    let zero = RegistryOptions {
        healthy_intervals: 0,
        ..o
    };
    assert!(
        zero.validate()
            .unwrap_err()
            .to_string()
            .contains("healthy_intervals")
    );
}
