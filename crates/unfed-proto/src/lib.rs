//! The wire protocol: generated protobuf messages and gRPC clients and servers, plus the size
//! limits every service applies. Specified in `docs/protocol.md`.

/// Registry service (admission, heartbeats, discovery, manifests, cluster info).
pub mod registry {
    tonic::include_proto!("unfed.registry.v1");
}

/// Compute-node service (per-session bidirectional streams between consecutive hops).
pub mod node {
    tonic::include_proto!("unfed.node.v1");
}

/// Largest message a registry accepts or sends (manifests are the largest: a few hundred KB).
pub const MAX_REGISTRY_MESSAGE: usize = 4 << 20;
/// Largest message on a node stream: a prompt's hidden states (positions × hidden × 4 bytes).
pub const MAX_NODE_MESSAGE: usize = 64 << 20;

/// Conversions between wire messages and the runtime's types.
pub mod convert {
    use crate::node::{Hidden, Sampling};

    /// What can be wrong with a hidden-state message.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct BadHidden(pub String);

    /// Packs `rows × cols` f32 values, little-endian.
    pub fn hidden(rows: usize, cols: usize, values: &[f32]) -> Hidden {
        Hidden {
            rows: rows as u32,
            cols: cols as u32,
            data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        }
    }

    /// Unpacks hidden states, checking the shape against the bytes and the expected width.
    pub fn hidden_values(h: &Hidden, expected_cols: usize) -> Result<Vec<f32>, BadHidden> {
        let (rows, cols) = (h.rows as usize, h.cols as usize);
        if rows == 0 || cols != expected_cols {
            return Err(BadHidden(format!(
                "hidden states of {rows} x {cols}, expected n x {expected_cols}"
            )));
        }
        if rows.checked_mul(cols).and_then(|n| n.checked_mul(4)) != Some(h.data.len()) {
            return Err(BadHidden(format!(
                "{} bytes do not hold {rows} x {cols} f32 values",
                h.data.len()
            )));
        }
        Ok(h.data
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect())
    }

    /// Sampling parameters as sent on the wire.
    pub fn sampling(p: &unfed_model::SamplingParams) -> Sampling {
        Sampling {
            temperature: p.temperature,
            top_k: p.top_k as u32,
            top_p: p.top_p,
            repeat_penalty: p.repeat_penalty,
            repeat_last_n: p.repeat_last_n as u32,
            seed: p.seed,
        }
    }

    /// The longest look-back a peer may ask the repetition penalty for.
    pub const MAX_REPEAT_LAST_N: usize = 4096;

    /// Sampling parameters from the wire, validated.
    pub fn sampling_params(s: &Sampling) -> Result<unfed_model::SamplingParams, String> {
        let p = unfed_model::SamplingParams {
            temperature: s.temperature,
            top_k: s.top_k as usize,
            top_p: s.top_p,
            repeat_penalty: s.repeat_penalty,
            repeat_last_n: s.repeat_last_n as usize,
            seed: s.seed,
        };
        p.validate()?;
        if p.repeat_last_n > MAX_REPEAT_LAST_N {
            return Err(format!("repeat_last_n is at most {MAX_REPEAT_LAST_N}"));
        }
        Ok(p)
    }
}

/// How long opening a connection to a node may take.
pub const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// A client for the node at `address` (host:port), with the message limits and a bounded
/// connection time. The error names the address only.
pub async fn connect_node(
    address: &str,
) -> Result<node::node_client::NodeClient<tonic::transport::Channel>, String> {
    let unreachable = || format!("cannot reach node {address}");
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{address}"))
        .map_err(|_| format!("`{address}` is not a host:port address"))?
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true)
        .connect()
        .await
        .map_err(|_| unreachable())?;
    Ok(node::node_client::NodeClient::new(channel)
        .max_decoding_message_size(MAX_NODE_MESSAGE)
        .max_encoding_message_size(MAX_NODE_MESSAGE))
}
