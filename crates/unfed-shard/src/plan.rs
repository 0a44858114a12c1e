//! Which layers and tensors go to which shard: the even partition of layers and the tensor
//! names each shard needs (shared by the splitter and the verifier).

use std::ops::Range;

use unfed_model::Arch;

use crate::ShardError;

/// Tensor-name suffixes every layer `blk.{l}.` must have.
const LAYER_TENSORS: &[&str] = &[
    "attn_norm.weight",
    "attn_q.weight",
    "attn_k.weight",
    "attn_v.weight",
    "attn_output.weight",
    "ffn_norm.weight",
    "ffn_gate.weight",
    "ffn_up.weight",
    "ffn_down.weight",
];
/// Extra per-layer tensors of architectures with query/key/value biases.
const QKV_BIAS_TENSORS: &[&str] = &["attn_q.bias", "attn_k.bias", "attn_v.bias"];

pub(crate) const EMBEDDING: &str = "token_embd.weight";
pub(crate) const OUTPUT_NORM: &str = "output_norm.weight";
pub(crate) const OUTPUT: &str = "output.weight";

/// Splits `n_layer` layers into `num_shards` contiguous ranges whose sizes differ by at most
/// one (the earlier shards take the extra layers).
pub fn partition_layers(
    n_layer: usize,
    num_shards: usize,
) -> Result<Vec<Range<usize>>, ShardError> {
    if num_shards == 0 || num_shards > n_layer {
        return Err(ShardError::ShardCount {
            requested: num_shards,
            n_layer,
        });
    }
    let (base, extra) = (n_layer / num_shards, n_layer % num_shards);
    let mut start = 0;
    Ok((0..num_shards)
        .map(|i| {
            let len = base + usize::from(i < extra);
            let r = start..start + len;
            start += len;
            r
        })
        .collect())
}

/// Shard 0 with exactly `k` layers (run on shares), the other layers partitioned evenly over
/// the remaining `num_shards - 1` shards.
pub fn partition_with_mpc(
    n_layer: usize,
    num_shards: usize,
    k: usize,
) -> Result<Vec<Range<usize>>, ShardError> {
    if k == 0 || k >= n_layer || num_shards < 2 {
        return Err(ShardError::InvalidOptions(format!(
            "shard 0 on an MPC pair takes 1 to {} of the model's {n_layer} layers and at least \
             one more shard ({k} layers in {num_shards} shards asked for)",
            n_layer.saturating_sub(1)
        )));
    }
    let mut ranges = Vec::with_capacity(num_shards);
    ranges.push(0..k);
    ranges.extend(
        partition_layers(n_layer - k, num_shards - 1)?
            .into_iter()
            .map(|r| r.start + k..r.end + k),
    );
    Ok(ranges)
}

/// The part of a model a shard holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Part {
    pub layers: Range<usize>,
    pub embedding: bool,
    pub head: bool,
}

/// The layer a `blk.{l}.…` tensor belongs to.
pub(crate) fn layer_of(name: &str) -> Option<usize> {
    let rest = name.strip_prefix("blk.")?;
    let (num, tail) = rest.split_once('.')?;
    if tail.is_empty() || num.is_empty() || !num.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    num.parse().ok()
}

/// Whether `name` belongs in a shard holding `part` of a model (tied: the head is the embedding).
pub(crate) fn belongs(name: &str, part: &Part, tied: bool) -> bool {
    match name {
        EMBEDDING => part.embedding || (tied && part.head),
        OUTPUT_NORM | OUTPUT => part.head,
        _ => layer_of(name).is_some_and(|l| part.layers.contains(&l)),
    }
}

/// Tensors a shard holding `part` cannot run without.
pub(crate) fn required(arch: Arch, part: &Part, tied: bool) -> Vec<String> {
    let mut names = Vec::new();
    if part.embedding {
        names.push(EMBEDDING.to_string());
    }
    for l in part.layers.clone() {
        let extra = if arch.qkv_bias() {
            QKV_BIAS_TENSORS
        } else {
            &[]
        };
        for s in LAYER_TENSORS.iter().chain(extra) {
            names.push(format!("blk.{l}.{s}"));
        }
    }
    if part.head {
        names.push(OUTPUT_NORM.to_string());
        let head = if tied { EMBEDDING } else { OUTPUT };
        if !names.iter().any(|n| n == head) {
            names.push(head.to_string());
        }
    }
    names
}

/// Tensors that belong to no part of a model of `n_layer` layers.
pub(crate) fn unplaced(names: &[String], n_layer: usize) -> Vec<String> {
    names
        .iter()
        .filter(|n| {
            !matches!(n.as_str(), EMBEDDING | OUTPUT_NORM | OUTPUT)
                && layer_of(n).is_none_or(|l| l >= n_layer)
        })
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_are_even_contiguous_and_complete() {
        for n_layer in 1..40 {
            for n in 1..=n_layer {
                let p = partition_layers(n_layer, n).unwrap();
                assert_eq!(p.len(), n);
                assert_eq!(p[0].start, 0);
                assert_eq!(p[n - 1].end, n_layer);
                for w in p.windows(2) {
                    assert_eq!(w[0].end, w[1].start);
                }
                let lens: Vec<usize> = p.iter().map(|r| r.len()).collect();
                assert!(lens.iter().max().unwrap() - lens.iter().min().unwrap() <= 1);
                assert!(lens.iter().all(|&l| l > 0));
            }
            assert!(partition_layers(n_layer, 0).is_err());
            assert!(partition_layers(n_layer, n_layer + 1).is_err());
        }
        assert_eq!(
            partition_layers(30, 3).unwrap(),
            vec![0..10, 10..20, 20..30]
        );
        assert_eq!(partition_layers(4, 3).unwrap(), vec![0..2, 2..3, 3..4]);
    }

    #[test]
    fn layer_names() {
        assert_eq!(layer_of("blk.12.ffn_up.weight"), Some(12));
        assert_eq!(layer_of("blk.x.ffn_up.weight"), None);
        assert_eq!(layer_of("blk.+1.ffn_up.weight"), None);
        assert_eq!(layer_of("blk.3."), None);
        assert_eq!(layer_of("token_embd.weight"), None);
    }

    #[test]
    fn tied_head_takes_the_embedding() {
        let last = Part {
            layers: 2..4,
            embedding: false,
            head: true,
        };
        let req = required(Arch::Qwen2, &last, true);
        assert!(req.contains(&"token_embd.weight".to_string()));
        assert!(req.contains(&"blk.3.attn_k.bias".to_string()));
        assert!(!req.contains(&"output.weight".to_string()));
        assert!(belongs("token_embd.weight", &last, true));
        assert!(!belongs("token_embd.weight", &last, false));
        assert!(!belongs("blk.1.attn_q.weight", &last, true));
        let names = vec!["rope_freqs.weight".to_string(), "blk.9.x".to_string()];
        assert_eq!(unplaced(&names, 4), names);
    }
}
