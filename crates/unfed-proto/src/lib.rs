//! The wire protocol: generated protobuf messages and gRPC clients and servers, plus the size
//! limits every service applies and transport security (`tls`). Specified in `docs/protocol.md`.

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
/// HTTP/2 flow-control windows of node connections (per stream, per connection): an MPC
/// step's material (megabytes) crosses in one window instead of waiting on a window update
/// every megabyte. A peer could make a node hold this much unread per connection; it can
/// already send a message of [`MAX_NODE_MESSAGE`], which is held whole.
pub const NODE_STREAM_WINDOW: u32 = 8 << 20;
pub const NODE_CONNECTION_WINDOW: u32 = 16 << 20;

/// Conversions between wire messages and the runtime's types.
pub mod convert {
    use crate::node::Hidden;

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

    /// The longest look-back a peer may ask the repetition penalty for.
    pub const MAX_REPEAT_LAST_N: usize = 4096;
}

/// What the client tells each hop inside its onion layer (the 64-byte hop payload of
/// `unfed-onion`), and the reply cell's plaintext. Layout in docs/protocol.md, "Circuits".
pub mod circuit {
    /// Bytes of a hop payload.
    pub const PAYLOAD_LEN: usize = 64;
    /// Bytes of a link secret.
    pub const LINK_SECRET_LEN: usize = 32;
    /// Output privacy mode `off`: the last shard samples and returns the token.
    pub const MODE_OFF: u8 = 0;
    /// Output privacy mode `decode_client_sample`: the last shard returns logits to the client,
    /// which samples.
    pub const MODE_CLIENT_SAMPLE: u8 = 1;
    /// Bytes of a token reply's plaintext (u32, little-endian).
    pub const TOKEN_REPLY_LEN: usize = 4;

    /// What the last shard sends back, as the client asked in its layer.
    #[derive(Debug, Clone, PartialEq)]
    pub enum Output {
        /// Mode `off`: sample with these parameters and return the token.
        Sample(unfed_model::SamplingParams),
        /// Mode `decode_client_sample`: return the `top_k` largest logits with their ids
        /// (0: every logit), and sample nothing.
        Logits { top_k: u32 },
    }

    /// Bytes of a logits reply's plaintext for a vocabulary of `vocab`: `k` (id u32, logit f32)
    /// pairs for a top-k slice, `vocab` f32 values for all.
    pub fn logits_reply_len(top_k: u32, vocab: usize) -> usize {
        match top_k as usize {
            k if k == 0 || k >= vocab => vocab * 4,
            k => k * 8,
        }
    }

    /// A logits reply's plaintext: every logit in id order, or the `top_k` largest (ties: lower
    /// id first) as (id, logit) pairs in descending order. NaNs never make the slice.
    pub fn encode_logits(logits: &[f32], top_k: u32) -> Vec<u8> {
        let k = top_k as usize;
        if k == 0 || k >= logits.len() {
            return logits.iter().flat_map(|v| v.to_le_bytes()).collect();
        }
        let key = |i: u32| {
            let v = logits[i as usize];
            if v.is_nan() { f32::NEG_INFINITY } else { v }
        };
        let mut idx: Vec<u32> = (0..logits.len() as u32).collect();
        idx.select_nth_unstable_by(k - 1, |&a, &b| key(b).total_cmp(&key(a)).then(a.cmp(&b)));
        idx.truncate(k);
        idx.sort_unstable_by(|&a, &b| key(b).total_cmp(&key(a)).then(a.cmp(&b)));
        idx.iter()
            .flat_map(|&i| {
                let mut pair = [0u8; 8];
                pair[..4].copy_from_slice(&i.to_le_bytes());
                pair[4..].copy_from_slice(&key(i).to_le_bytes());
                pair
            })
            .collect()
    }

    /// A logits reply as a full vector of `vocab` logits (those outside a top-k slice, and
    /// NaNs, are negative infinity, so no sampler picks them).
    pub fn decode_logits(bytes: &[u8], top_k: u32, vocab: usize) -> Result<Vec<f32>, String> {
        if bytes.len() != logits_reply_len(top_k, vocab) {
            return Err(format!("a logits reply of {} bytes", bytes.len()));
        }
        // A NaN from the peer would sort above every logit: it counts as never picked.
        let f32_of = |c: &[u8]| match f32::from_le_bytes([c[0], c[1], c[2], c[3]]) {
            v if v.is_nan() => f32::NEG_INFINITY,
            v => v,
        };
        if top_k == 0 || top_k as usize >= vocab {
            return Ok(bytes.chunks_exact(4).map(f32_of).collect());
        }
        let mut logits = vec![f32::NEG_INFINITY; vocab];
        for pair in bytes.chunks_exact(8) {
            let id = u32::from_le_bytes([pair[0], pair[1], pair[2], pair[3]]) as usize;
            let slot = logits
                .get_mut(id)
                .ok_or_else(|| format!("token id {id} is outside the vocabulary"))?;
            *slot = f32_of(&pair[4..]);
        }
        Ok(logits)
    }

    use crate::node::{Onward, Step};
    use prost::Message;

    /// Bytes of the seed of party B's output pad.
    pub const PAD_SEED_LEN: usize = 16;

    /// The plaintext of the client's frame for party B of an MPC pair: the step's positions
    /// (u32, little-endian), the seed of B's output pad, the length of B's input material
    /// (u32), B's input material, then B's layers material (empty when it came ahead). A frame
    /// of positions 0 carries only the layers of the next one-position step, sent ahead.
    pub fn encode_b_frame(
        positions: u32,
        pad: &[u8; PAD_SEED_LEN],
        input: &[u8],
        layers: &[u8],
    ) -> Vec<u8> {
        let mut out = Vec::with_capacity(8 + PAD_SEED_LEN + input.len() + layers.len());
        out.extend_from_slice(&positions.to_le_bytes());
        out.extend_from_slice(pad);
        out.extend_from_slice(&(input.len() as u32).to_le_bytes());
        out.extend_from_slice(input);
        out.extend_from_slice(layers);
        out
    }

    /// The parts a frame for party B authenticates beside it (the `bound` of
    /// `unfed_onion::SessionSender::seal_bound`): the common words of the input, then of the
    /// layers, as A forwards them.
    pub fn b_frame_bound<'a>(input_common: &'a [u8], layers_common: &'a [u8]) -> [&'a [u8]; 2] {
        [input_common, layers_common]
    }

    /// A frame for party B, parsed.
    pub fn decode_b_frame(bytes: &[u8]) -> Result<BFrame<'_>, String> {
        let short = "a frame for party B shorter than its header";
        let (positions, rest) = bytes.split_first_chunk::<4>().ok_or(short)?;
        let (pad, rest) = rest.split_first_chunk::<PAD_SEED_LEN>().ok_or(short)?;
        let (len, rest) = rest.split_first_chunk::<4>().ok_or(short)?;
        let len = u32::from_le_bytes(*len) as usize;
        if len > rest.len() {
            return Err("a frame for party B whose input material runs past its end".into());
        }
        let (input, layers) = rest.split_at(len);
        Ok(BFrame {
            positions: u32::from_le_bytes(*positions),
            pad: *pad,
            input,
            layers,
        })
    }

    /// What a frame for party B holds.
    pub struct BFrame<'a> {
        pub positions: u32,
        /// The seed of B's output pad.
        pub pad: [u8; PAD_SEED_LEN],
        /// B's own dealt material, input and layers (each a seed, then words).
        pub input: &'a [u8],
        pub layers: &'a [u8],
    }

    /// The plaintext of a link frame, appended to `buf`; [`step_len`] bytes.
    pub fn encode_step_into(step: &Step, buf: &mut Vec<u8>) {
        step.encode_raw(buf)
    }

    /// The length of a link frame's plaintext.
    pub fn step_len(step: &Step) -> usize {
        step.encoded_len()
    }

    /// The plaintext of a link frame.
    pub fn encode_step(step: &Step) -> Vec<u8> {
        step.encode_to_vec()
    }

    /// A link frame's plaintext, decoded (its `Bytes` fields slices of `bytes`, not copies).
    pub fn decode_step(bytes: crate::Bytes) -> Result<Step, String> {
        Step::decode(bytes).map_err(|e| format!("a step frame that is not a Step: {e}"))
    }

    /// The plaintext of an onward frame.
    pub fn encode_onward(onward: &Onward) -> Vec<u8> {
        onward.encode_to_vec()
    }

    /// An onward frame's plaintext, decoded.
    pub fn decode_onward(bytes: &[u8]) -> Result<Onward, String> {
        Onward::decode(bytes).map_err(|e| format!("an onward frame that is not an Onward: {e}"))
    }

    /// A relay's payload: the secrets of its incoming and outgoing links.
    pub fn relay_payload(
        incoming: &[u8; LINK_SECRET_LEN],
        outgoing: &[u8; LINK_SECRET_LEN],
    ) -> [u8; PAYLOAD_LEN] {
        let mut p = [0u8; PAYLOAD_LEN];
        p[..32].copy_from_slice(incoming);
        p[32..].copy_from_slice(outgoing);
        p
    }

    /// The last shard's payload: its incoming link's secret, the output mode and its
    /// parameters (sampling for `off`, the slice size for `decode_client_sample`).
    pub fn last_payload(incoming: &[u8; LINK_SECRET_LEN], output: &Output) -> [u8; PAYLOAD_LEN] {
        let mut p = [0u8; PAYLOAD_LEN];
        p[..32].copy_from_slice(incoming);
        let s = match output {
            Output::Logits { top_k } => {
                p[32] = MODE_CLIENT_SAMPLE;
                p[33..37].copy_from_slice(&top_k.to_le_bytes());
                return p;
            }
            Output::Sample(s) => s,
        };
        p[32] = MODE_OFF;
        p[33..37].copy_from_slice(&s.temperature.to_le_bytes());
        p[37..41].copy_from_slice(&(s.top_k.min(u32::MAX as usize) as u32).to_le_bytes());
        p[41..45].copy_from_slice(&s.top_p.to_le_bytes());
        p[45..49].copy_from_slice(&s.repeat_penalty.to_le_bytes());
        p[49..53].copy_from_slice(&(s.repeat_last_n.min(u32::MAX as usize) as u32).to_le_bytes());
        p[53..61].copy_from_slice(&s.seed.to_le_bytes());
        p
    }

    /// The link secrets of a relay's payload: (incoming, outgoing).
    pub fn parse_relay_payload(
        p: &[u8; PAYLOAD_LEN],
    ) -> ([u8; LINK_SECRET_LEN], [u8; LINK_SECRET_LEN]) {
        let mut incoming = [0u8; LINK_SECRET_LEN];
        let mut outgoing = [0u8; LINK_SECRET_LEN];
        incoming.copy_from_slice(&p[..32]);
        outgoing.copy_from_slice(&p[32..]);
        (incoming, outgoing)
    }

    /// The last shard's payload: incoming link secret and the validated output. A mode this
    /// version does not implement is refused, never served as another.
    pub fn parse_last_payload(
        p: &[u8; PAYLOAD_LEN],
    ) -> Result<([u8; LINK_SECRET_LEN], Output), String> {
        let mut incoming = [0u8; LINK_SECRET_LEN];
        incoming.copy_from_slice(&p[..32]);
        let unknown = |from: usize| {
            if p[from..].iter().any(|&b| b != 0) {
                Err("the hop payload has unknown fields".to_string())
            } else {
                Ok(())
            }
        };
        match p[32] {
            MODE_OFF => unknown(61)?,
            MODE_CLIENT_SAMPLE => {
                unknown(37)?;
                let top_k = u32::from_le_bytes([p[33], p[34], p[35], p[36]]);
                return Ok((incoming, Output::Logits { top_k }));
            }
            mode => {
                return Err(format!(
                    "output privacy mode {mode} is not supported by this node"
                ));
            }
        }
        let f32_at = |i: usize| f32::from_le_bytes([p[i], p[i + 1], p[i + 2], p[i + 3]]);
        let u32_at = |i: usize| u32::from_le_bytes([p[i], p[i + 1], p[i + 2], p[i + 3]]);
        let mut seed = [0u8; 8];
        seed.copy_from_slice(&p[53..61]);
        let s = unfed_model::SamplingParams {
            temperature: f32_at(33),
            top_k: u32_at(37) as usize,
            top_p: f32_at(41),
            repeat_penalty: f32_at(45),
            repeat_last_n: u32_at(49) as usize,
            seed: u64::from_le_bytes(seed),
        };
        s.validate()?;
        if s.repeat_last_n > crate::convert::MAX_REPEAT_LAST_N {
            return Err(format!(
                "repeat_last_n is at most {}",
                crate::convert::MAX_REPEAT_LAST_N
            ));
        }
        Ok((incoming, Output::Sample(s)))
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        fn sampling() -> unfed_model::SamplingParams {
            unfed_model::SamplingParams {
                temperature: 0.7,
                top_k: 40,
                top_p: 0.9,
                repeat_penalty: 1.1,
                repeat_last_n: 64,
                seed: 0x0123_4567_89ab_cdef,
            }
        }

        #[test]
        fn payloads_round_trip() {
            let (a, b) = ([1u8; 32], [2u8; 32]);
            assert_eq!(parse_relay_payload(&relay_payload(&a, &b)), (a, b));
            let off = Output::Sample(sampling());
            assert_eq!(
                parse_last_payload(&last_payload(&a, &off)).unwrap(),
                (a, off)
            );
            let logits = Output::Logits { top_k: 64 };
            assert_eq!(
                parse_last_payload(&last_payload(&a, &logits)).unwrap(),
                (a, logits)
            );
        }

        #[test]
        fn logits_replies_round_trip_as_slices_or_whole() {
            let logits = [0.5, 3.0, f32::NAN, -1.0, 3.0, 2.0];
            let all = decode_logits(&encode_logits(&logits, 0), 0, 6).unwrap();
            assert_eq!(all[..2], logits[..2]);
            assert_eq!(all[2], f32::NEG_INFINITY);
            let top = encode_logits(&logits, 3);
            assert_eq!(top.len(), logits_reply_len(3, 6));
            let ids: Vec<u32> = top
                .chunks_exact(8)
                .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            assert_eq!(ids, [1, 4, 5], "descending, ties to the lower id, no NaN");
            let back = decode_logits(&top, 3, 6).unwrap();
            let ninf = f32::NEG_INFINITY;
            assert_eq!(back, [ninf, 3.0, ninf, ninf, 3.0, 2.0]);
            assert!(decode_logits(&top[..8], 3, 6).is_err());
            let mut bad = top.clone();
            bad[..4].copy_from_slice(&9u32.to_le_bytes());
            assert!(decode_logits(&bad, 3, 6).is_err());
        }

        #[test]
        fn unknown_modes_fields_and_bad_sampling_are_refused() {
            let a = [1u8; 32];
            let mut p = last_payload(&a, &Output::Sample(sampling()));
            p[32] = 2;
            let e = parse_last_payload(&p).unwrap_err();
            assert!(e.contains("mode 2 is not supported"), "{e}");
            let mut p = last_payload(&a, &Output::Logits { top_k: 8 });
            p[40] = 1;
            assert!(parse_last_payload(&p).is_err());
            let mut p = last_payload(&a, &Output::Sample(sampling()));
            p[63] = 1;
            assert!(
                parse_last_payload(&p)
                    .unwrap_err()
                    .contains("unknown fields")
            );
            let mut bad = sampling();
            bad.top_p = 2.0;
            assert!(parse_last_payload(&last_payload(&a, &Output::Sample(bad.clone()))).is_err());
            bad = sampling();
            bad.repeat_last_n = crate::convert::MAX_REPEAT_LAST_N + 1;
            assert!(parse_last_payload(&last_payload(&a, &Output::Sample(bad.clone()))).is_err());
        }
    }
}

/// How long opening a TCP connection may take.
pub const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

pub mod raw;
pub mod tls;
/// The buffer type of the fields that carry an MPC step's megabytes (decoded without a copy).
pub use prost::bytes::Bytes;
pub use tls::Dialer;
