//! The cluster configuration (`--cluster-config cluster.json`: name, prices, staking rules,
//! optional chain settings) and the registry's runtime options (heartbeat timing, clock skew,
//! growth caps).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use unfed_identity::Address;

/// Cluster config files larger than this are refused unread.
pub const MAX_CONFIG_BYTES: u64 = 64 << 10;
/// Longest cluster name, in characters.
pub const MAX_CLUSTER_NAME_CHARS: usize = 128;
/// The largest uint256, the bound of an ERC-20 amount such as `min_stake`.
const UINT256_MAX: &str =
    "115792089237316195423570985008687907853269984665640564039457584007913129639935";
/// Keys that hold secrets; refused with a pointed message rather than "unknown field".
const SECRET_KEYS: &[&str] = &["operator_private_key", "private_key", "stake_private_key"];

/// A cluster's public policy, loaded by the registry at startup. Unknown keys are refused.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// The cluster's display name (1 to 128 characters, no control characters).
    pub name: String,
    /// Price per 1000 input tokens, in the staking token's smallest unit.
    pub price_per_1k_input_tokens: u64,
    /// Price per 1000 output tokens, in the staking token's smallest unit.
    pub price_per_1k_output_tokens: u64,
    /// Minimum stake for admission, a decimal string of token base units (up to uint256).
    pub min_stake: String,
    /// Fraction of a node's stake slashed on a confirmed fraud proof, in `0..=1`.
    pub slash_fraction: f64,
    /// Seconds during which a settlement can be challenged (at least 1).
    pub challenge_window_s: u64,
    /// Daemons that must agree before settlement (at least 1).
    pub daemon_quorum: u32,
    /// JSON-RPC endpoint of the chain holding the escrow (`http(s)://` or `ws(s)://`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chain_rpc_url: Option<String>,
    /// The escrow contract (`0x` + 40 hex digits).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub escrow_contract_address: Option<String>,
    /// The ERC-20 staking token (`0x` + 40 hex digits).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub staking_token_address: Option<String>,
}

/// Why a cluster config was refused. Messages name the field and the rule it breaks.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read cluster config {}: {source}", .path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// What the OS reported.
        source: std::io::Error,
    },
    /// The file is larger than [`MAX_CONFIG_BYTES`].
    #[error("cluster config {} is larger than {MAX_CONFIG_BYTES} bytes", .path.display())]
    TooLarge {
        /// The file.
        path: PathBuf,
    },
    /// A problem inside the file.
    #[error("cluster config {}: {source}", .path.display())]
    InFile {
        /// The file.
        path: PathBuf,
        /// The problem.
        source: Box<ConfigError>,
    },
    /// Not JSON, a missing field, an unknown field or a value of the wrong type.
    #[error("{0}")]
    Parse(String),
    /// A field that would hold a secret key.
    #[error(
        "`{0}` holds a secret key: the cluster config is public policy and takes no keys; \
         remove the field"
    )]
    SecretField(String),
    /// A field whose value breaks a rule.
    #[error("`{field}` {problem}")]
    Invalid {
        /// The field.
        field: &'static str,
        /// The rule it breaks.
        problem: String,
    },
}

fn invalid(field: &'static str, problem: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field,
        problem: problem.into(),
    }
}

impl ClusterConfig {
    /// Reads and validates a cluster config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let file = std::fs::File::open(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let mut text = String::new();
        file.take(MAX_CONFIG_BYTES + 1)
            .read_to_string(&mut text)
            .map_err(|source| ConfigError::Read {
                path: path.to_path_buf(),
                source,
            })?;
        if text.len() as u64 > MAX_CONFIG_BYTES {
            return Err(ConfigError::TooLarge {
                path: path.to_path_buf(),
            });
        }
        Self::from_json(&text).map_err(|e| ConfigError::InFile {
            path: path.to_path_buf(),
            source: Box::new(e),
        })
    }

    /// Parses and validates a cluster config.
    pub fn from_json(text: &str) -> Result<Self, ConfigError> {
        let raw: serde_json::Value =
            serde_json::from_str(text).map_err(|e| ConfigError::Parse(format!("not JSON: {e}")))?;
        if let Some(key) = raw
            .as_object()
            .and_then(|obj| obj.keys().find(|k| SECRET_KEYS.contains(&k.as_str())))
        {
            return Err(ConfigError::SecretField(key.clone()));
        }
        let config: Self =
            serde_json::from_value(raw).map_err(|e| ConfigError::Parse(e.to_string()))?;
        config.validate()?;
        Ok(config)
    }

    /// Checks every rule; the first broken one is the error.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let name_chars = self.name.chars().count();
        if self.name.trim().is_empty() || name_chars > MAX_CLUSTER_NAME_CHARS {
            return Err(invalid(
                "name",
                format!("must be 1 to {MAX_CLUSTER_NAME_CHARS} characters, not blank"),
            ));
        }
        if self.name.chars().any(char::is_control) {
            return Err(invalid("name", "must not contain control characters"));
        }
        check_token_amount("min_stake", &self.min_stake)?;
        if !self.slash_fraction.is_finite() || !(0.0..=1.0).contains(&self.slash_fraction) {
            return Err(invalid(
                "slash_fraction",
                format!("must be between 0 and 1, not {}", self.slash_fraction),
            ));
        }
        if self.challenge_window_s == 0 {
            return Err(invalid("challenge_window_s", "must be at least 1 second"));
        }
        if self.daemon_quorum == 0 {
            return Err(invalid("daemon_quorum", "must be at least 1"));
        }
        if let Some(url) = &self.chain_rpc_url {
            let scheme_ok = ["http://", "https://", "ws://", "wss://"]
                .iter()
                .any(|s| url.starts_with(s) && url.len() > s.len());
            if !scheme_ok || url.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(invalid(
                    "chain_rpc_url",
                    "must be an http://, https://, ws:// or wss:// URL",
                ));
            }
        }
        check_contract(
            "escrow_contract_address",
            self.escrow_contract_address.as_deref(),
        )?;
        check_contract(
            "staking_token_address",
            self.staking_token_address.as_deref(),
        )?;
        let chain = [
            self.chain_rpc_url.is_some(),
            self.escrow_contract_address.is_some(),
            self.staking_token_address.is_some(),
        ];
        if chain.iter().any(|&b| b) && !chain.iter().all(|&b| b) {
            return Err(invalid(
                "chain_rpc_url",
                "on-chain settings go together: give chain_rpc_url, escrow_contract_address \
                 and staking_token_address, or none of them",
            ));
        }
        Ok(())
    }

    /// Whether the on-chain settings are present.
    pub fn on_chain(&self) -> bool {
        self.chain_rpc_url.is_some()
    }
}

/// A decimal string of base units that fits in a uint256.
fn check_token_amount(field: &'static str, value: &str) -> Result<(), ConfigError> {
    let digits_only = !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit());
    if !digits_only {
        return Err(invalid(
            field,
            format!(
                "must be a decimal string of token base units, like \"1000000000000000000\", not {value:?}"
            ),
        ));
    }
    if value.len() > 1 && value.starts_with('0') {
        return Err(invalid(field, "must not have leading zeros"));
    }
    let too_big = value.len() > UINT256_MAX.len()
        || (value.len() == UINT256_MAX.len() && value > UINT256_MAX);
    if too_big {
        return Err(invalid(field, "is larger than a uint256 can hold"));
    }
    Ok(())
}

/// An optional contract address: `0x` + 40 hex digits (EIP-55 checked when mixed case).
fn check_contract(field: &'static str, value: Option<&str>) -> Result<(), ConfigError> {
    match value {
        None => Ok(()),
        Some(v) => match v.parse::<Address>() {
            Ok(a) if a == Address::ZERO => Err(invalid(field, "must not be the zero address")),
            Ok(_) => Ok(()),
            Err(e) => Err(invalid(field, format!("is not a contract address: {e}"))),
        },
    }
}

/// The registry's runtime options (command line, not the cluster file).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegistryOptions {
    /// How often nodes are told to heartbeat.
    pub heartbeat_interval: Duration,
    /// A node is healthy while its last heartbeat is at most this many intervals old.
    pub healthy_intervals: u32,
    /// Signed timestamps may differ from the registry's clock by at most this much.
    pub clock_skew: Duration,
    /// Most model ids (manifests) held; registering a new one beyond it is refused.
    pub max_models: u32,
    /// Most node rows (addresses) one identity may hold.
    pub max_nodes_per_identity: u32,
    /// Most node rows in all.
    pub max_nodes: u32,
}

/// Node rows and orphaned manifests are pruned after this many health windows.
pub const STALE_HEALTH_WINDOWS: u64 = 10;

impl Default for RegistryOptions {
    fn default() -> Self {
        Self {
            heartbeat_interval: Duration::from_secs(5),
            healthy_intervals: 3,
            clock_skew: Duration::from_secs(60),
            max_models: 64,
            max_nodes_per_identity: 16,
            max_nodes: 4096,
        }
    }
}

impl RegistryOptions {
    /// The heartbeat interval in milliseconds (saturating).
    pub fn heartbeat_interval_ms(&self) -> u64 {
        duration_ms(self.heartbeat_interval)
    }

    /// How old a heartbeat may be for its node to count as healthy, in milliseconds.
    pub fn health_window_ms(&self) -> u64 {
        self.heartbeat_interval_ms()
            .saturating_mul(u64::from(self.healthy_intervals))
    }

    /// How long a node may go without a heartbeat before its row is pruned, and a manifest
    /// without node rows before it is pruned: [`STALE_HEALTH_WINDOWS`] health windows.
    pub fn stale_after_ms(&self) -> u64 {
        self.health_window_ms().saturating_mul(STALE_HEALTH_WINDOWS)
    }

    /// The growth caps, as the database checks them.
    pub fn register_limits(&self) -> unfed_db::RegisterLimits {
        unfed_db::RegisterLimits {
            max_models: self.max_models,
            max_nodes_per_identity: self.max_nodes_per_identity,
            max_nodes: self.max_nodes,
        }
    }

    /// The clock skew window in milliseconds (saturating).
    pub fn clock_skew_ms(&self) -> u64 {
        duration_ms(self.clock_skew)
    }

    /// Checks that the options make sense (non-zero interval, intervals, skew and caps).
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.heartbeat_interval_ms() == 0 {
            return Err(invalid("heartbeat_interval", "must be at least 1 ms"));
        }
        if self.healthy_intervals == 0 {
            return Err(invalid("healthy_intervals", "must be at least 1"));
        }
        if self.clock_skew_ms() == 0 {
            return Err(invalid("clock_skew", "must be at least 1 ms"));
        }
        for (field, value) in [
            ("max_models", self.max_models),
            ("max_nodes_per_identity", self.max_nodes_per_identity),
            ("max_nodes", self.max_nodes),
        ] {
            if value == 0 {
                return Err(invalid(field, "must be at least 1"));
            }
        }
        Ok(())
    }
}

fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
