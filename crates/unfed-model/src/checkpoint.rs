//! Checkpoints: a GGUF file (whole model or one shard) or a Hugging Face safetensors directory,
//! both seen the same way — llama.cpp metadata keys and llama.cpp tensor names and layouts.
//!
//! A safetensors directory is translated on the fly: `config.json` becomes GGUF-style metadata,
//! `tokenizer.json` travels as the string key `tokenizer.huggingface.json`, tensor names are
//! mapped (`model.layers.3.self_attn.q_proj.weight` → `blk.3.attn_q.weight`), and Llama's query
//! and key rows are permuted exactly as llama.cpp's converter does, so that one forward pass (with
//! llama.cpp's RoPE conventions) serves both formats.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use unfed_gguf::{GgmlType, MappedGguf, Value};

use crate::config::{Arch, ModelConfig};
use crate::{ModelError, Result};

/// Metadata key under which a Hugging Face `tokenizer.json` travels inside GGUF metadata.
pub const HF_TOKENIZER_KEY: &str = "tokenizer.huggingface.json";

/// A tensor's bytes in GGUF layout.
#[derive(Debug, Clone)]
pub struct RawTensor<'a> {
    pub ty: GgmlType,
    /// GGUF order: `dims[0]` is the innermost dimension.
    pub dims: Vec<u64>,
    pub data: Cow<'a, [u8]>,
}

/// An opened model checkpoint.
pub struct Checkpoint {
    path: PathBuf,
    inner: Inner,
}

enum Inner {
    Gguf(MappedGguf),
    Safetensors(Safetensors),
}

struct Safetensors {
    metadata: Vec<(String, Value)>,
    /// GGUF name → (file index, HF tensor info, permutation heads for Llama q/k).
    tensors: BTreeMap<String, SafeEntry>,
    maps: Vec<(memmap2::Mmap, usize)>,
}

struct SafeEntry {
    file: usize,
    ty: GgmlType,
    shape: Vec<usize>,
    range: (usize, usize),
    permute_heads: Option<usize>,
}

impl Checkpoint {
    /// Opens a GGUF file, or a directory holding `config.json` and `*.safetensors`.
    pub fn open(path: &Path) -> Result<Self> {
        let inner = if path.is_dir() {
            Inner::Safetensors(Safetensors::open(path)?)
        } else {
            Inner::Gguf(MappedGguf::open(path).map_err(|source| ModelError::Gguf {
                path: path.display().to_string(),
                source,
            })?)
        };
        Ok(Self {
            path: path.to_path_buf(),
            inner,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `"gguf"` or `"safetensors"`.
    pub fn format(&self) -> &'static str {
        match self.inner {
            Inner::Gguf(_) => "gguf",
            Inner::Safetensors(_) => "safetensors",
        }
    }

    /// All metadata in GGUF form.
    pub fn metadata(&self) -> &[(String, Value)] {
        match &self.inner {
            Inner::Gguf(g) => &g.header.metadata,
            Inner::Safetensors(s) => &s.metadata,
        }
    }

    /// One metadata value.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata()
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v)
    }

    /// Tensor names (llama.cpp names), in storage order.
    pub fn tensor_names(&self) -> Vec<String> {
        match &self.inner {
            Inner::Gguf(g) => g.header.tensors.iter().map(|t| t.name.clone()).collect(),
            Inner::Safetensors(s) => s.tensors.keys().cloned().collect(),
        }
    }

    /// A tensor's type and GGUF-order shape, if present.
    pub fn tensor_info(&self, name: &str) -> Option<(GgmlType, Vec<u64>)> {
        match &self.inner {
            Inner::Gguf(g) => g.header.tensor(name).map(|t| (t.ty, t.dims.clone())),
            Inner::Safetensors(s) => s
                .tensors
                .get(name)
                .map(|e| (e.ty, e.shape.iter().rev().map(|&d| d as u64).collect())),
        }
    }

    /// A tensor's bytes in GGUF layout (borrowed from the file where no conversion is needed).
    pub fn tensor(&self, name: &str) -> Result<RawTensor<'_>> {
        match &self.inner {
            Inner::Gguf(g) => {
                let (t, data) = g.data_by_name(name).map_err(|source| ModelError::Gguf {
                    path: self.path.display().to_string(),
                    source,
                })?;
                Ok(RawTensor {
                    ty: t.ty,
                    dims: t.dims.clone(),
                    data: Cow::Borrowed(data),
                })
            }
            Inner::Safetensors(s) => s.tensor(name),
        }
    }

    /// A tensor's type, GGUF dims and bytes as a kernel operand: the mapped file's pages
    /// themselves for GGUF (no copy; they stay mapped while the result lives), a converted copy
    /// otherwise.
    pub fn tensor_bytes(&self, name: &str) -> Result<(GgmlType, Vec<u64>, unfed_kernels::Bytes)> {
        let raw = self.tensor(name)?;
        let bytes = match (&self.inner, raw.data) {
            (Inner::Gguf(g), Cow::Borrowed(_)) => {
                let t = g.header.tensor(name).expect("the tensor was just read");
                unfed_kernels::Bytes::shared(g.shared_map(), g.range(t))
                    .expect("a tensor's range lies inside its file")
            }
            (_, data) => unfed_kernels::Bytes::owned(data.into_owned()),
        };
        Ok((raw.ty, raw.dims, bytes))
    }

    /// The model configuration, checked for consistency with the tensors present.
    pub fn config(&self) -> Result<ModelConfig> {
        let vocab_hint = self
            .tensor_info("token_embd.weight")
            .or_else(|| self.tensor_info("output.weight"))
            .and_then(|(_, d)| d.get(1).map(|&v| v as usize))
            .or_else(|| {
                self.get("tokenizer.ggml.tokens")
                    .and_then(Value::as_array)
                    .map(<[Value]>::len)
            });
        ModelConfig::from_metadata(self.metadata(), vocab_hint)
    }
}

impl Safetensors {
    fn open(dir: &Path) -> Result<Self> {
        let read = |name: &str| -> Result<Option<String>> {
            let p = dir.join(name);
            match std::fs::read_to_string(&p) {
                Ok(s) => Ok(Some(s)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(source) => Err(ModelError::Io {
                    path: p.display().to_string(),
                    source,
                }),
            }
        };
        let bad = |problem: String| ModelError::Checkpoint {
            path: dir.display().to_string(),
            problem,
        };
        let config_text = read("config.json")?
            .ok_or_else(|| bad("no config.json: not a Hugging Face model directory".into()))?;
        let config: serde_json::Value = serde_json::from_str(&config_text)
            .map_err(|e| bad(format!("config.json is not valid JSON: {e}")))?;
        let mut metadata = hf_metadata(&config).map_err(&bad)?;
        let arch = Arch::from_name(metadata[0].1.as_str().unwrap_or_default())?;
        if let Some(tok) = read("tokenizer.json")? {
            metadata.push((HF_TOKENIZER_KEY.into(), Value::String(tok)));
        }
        if let Some(tc) = read("tokenizer_config.json")? {
            let tc: serde_json::Value = serde_json::from_str(&tc)
                .map_err(|e| bad(format!("tokenizer_config.json is not valid JSON: {e}")))?;
            if let Some(t) = tc.get("chat_template").and_then(|t| t.as_str()) {
                metadata.push(("tokenizer.chat_template".into(), Value::String(t.into())));
            }
        }
        let n_head = config["num_attention_heads"].as_u64().unwrap_or(0) as usize;
        let n_kv_head = config["num_key_value_heads"]
            .as_u64()
            .map_or(n_head, |v| v as usize);

        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(|source| ModelError::Io {
                path: dir.display().to_string(),
                source,
            })?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
            .collect();
        files.sort();
        if files.is_empty() {
            return Err(bad("no *.safetensors files".into()));
        }
        let mut maps = Vec::new();
        let mut tensors = BTreeMap::new();
        for (i, f) in files.iter().enumerate() {
            let file = File::open(f).map_err(|source| ModelError::Io {
                path: f.display().to_string(),
                source,
            })?;
            // SAFETY: read-only map; every slice taken is within offsets validated below.
            let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|source| ModelError::Io {
                path: f.display().to_string(),
                source,
            })?;
            let (n, meta) = safetensors::SafeTensors::read_metadata(&map)
                .map_err(|e| bad(format!("{}: {e:?}", f.display())))?;
            for (hf_name, info) in meta.tensors() {
                let Some(name) = gguf_name(&hf_name) else {
                    continue;
                };
                let ty = match info.dtype {
                    safetensors::Dtype::F32 => GgmlType::F32,
                    safetensors::Dtype::F16 => GgmlType::F16,
                    safetensors::Dtype::BF16 => GgmlType::BF16,
                    other => {
                        return Err(bad(format!(
                            "tensor {hf_name}: dtype {other:?} is not supported"
                        )));
                    }
                };
                let permute_heads = match (arch, name.rsplit('.').nth(1)) {
                    (Arch::Llama, Some("attn_q")) => Some(n_head),
                    (Arch::Llama, Some("attn_k")) => Some(n_kv_head),
                    _ => None,
                };
                let range = (8 + n + info.data_offsets.0, 8 + n + info.data_offsets.1);
                let entry = SafeEntry {
                    file: i,
                    ty,
                    shape: info.shape.clone(),
                    range,
                    permute_heads,
                };
                tensors.insert(name, entry);
            }
            maps.push((map, n));
        }
        Ok(Self {
            metadata,
            tensors,
            maps,
        })
    }

    fn tensor(&self, name: &str) -> Result<RawTensor<'_>> {
        let e = self.tensors.get(name).ok_or_else(|| ModelError::Tensor {
            name: name.into(),
            problem: "not in the checkpoint".into(),
        })?;
        let bytes = &self.maps[e.file].0[e.range.0..e.range.1];
        let dims = e.shape.iter().rev().map(|&d| d as u64).collect();
        let data = match e.permute_heads {
            None => Cow::Borrowed(bytes),
            Some(heads) => Cow::Owned(
                permute_rows_for_interleaved_rope(bytes, &e.shape, heads).map_err(|problem| {
                    ModelError::Tensor {
                        name: name.into(),
                        problem,
                    }
                })?,
            ),
        };
        Ok(RawTensor {
            ty: e.ty,
            dims,
            data,
        })
    }
}

/// Reorders the rows of a `[heads*head_dim, ...]` projection so that, within each head, row
/// `2i` is old row `i` and row `2i+1` is old row `i + head_dim/2` — llama.cpp's `permute`, which
/// turns NeoX-style ("rotate half") RoPE weights into adjacent-pair RoPE weights.
fn permute_rows_for_interleaved_rope(
    bytes: &[u8],
    shape: &[usize],
    heads: usize,
) -> std::result::Result<Vec<u8>, String> {
    let rows = shape[0];
    if heads == 0 || !rows.is_multiple_of(heads) || !(rows / heads).is_multiple_of(2) {
        return Err(format!(
            "{rows} rows cannot be split into {heads} heads of even size"
        ));
    }
    let row_bytes = bytes.len() / rows;
    let head_dim = rows / heads;
    let half = head_dim / 2;
    let mut out = vec![0u8; bytes.len()];
    for h in 0..heads {
        for i in 0..half {
            for j in 0..2 {
                let new = h * head_dim + 2 * i + j;
                let old = h * head_dim + j * half + i;
                out[new * row_bytes..(new + 1) * row_bytes]
                    .copy_from_slice(&bytes[old * row_bytes..(old + 1) * row_bytes]);
            }
        }
    }
    Ok(out)
}

/// Maps a Hugging Face Llama/Qwen2 tensor name to its llama.cpp name (None: not a model weight,
/// e.g. rotary caches that some exports include).
fn gguf_name(hf: &str) -> Option<String> {
    match hf {
        "model.embed_tokens.weight" => return Some("token_embd.weight".into()),
        "model.norm.weight" => return Some("output_norm.weight".into()),
        "lm_head.weight" => return Some("output.weight".into()),
        _ => {}
    }
    let rest = hf.strip_prefix("model.layers.")?;
    let (layer, rest) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let mapped = match rest {
        "input_layernorm.weight" => "attn_norm.weight",
        "post_attention_layernorm.weight" => "ffn_norm.weight",
        "self_attn.q_proj.weight" => "attn_q.weight",
        "self_attn.k_proj.weight" => "attn_k.weight",
        "self_attn.v_proj.weight" => "attn_v.weight",
        "self_attn.o_proj.weight" => "attn_output.weight",
        "self_attn.q_proj.bias" => "attn_q.bias",
        "self_attn.k_proj.bias" => "attn_k.bias",
        "self_attn.v_proj.bias" => "attn_v.bias",
        "mlp.gate_proj.weight" => "ffn_gate.weight",
        "mlp.up_proj.weight" => "ffn_up.weight",
        "mlp.down_proj.weight" => "ffn_down.weight",
        _ => return None,
    };
    Some(format!("blk.{layer}.{mapped}"))
}

/// Translates a Hugging Face `config.json` into llama.cpp metadata (architecture first).
fn hf_metadata(c: &serde_json::Value) -> std::result::Result<Vec<(String, Value)>, String> {
    let model_type = c["model_type"]
        .as_str()
        .ok_or("config.json has no model_type")?;
    let arch = match model_type {
        "llama" => "llama",
        "qwen2" => "qwen2",
        other => {
            return Err(format!(
                "model_type `{other}` is not supported (supported: llama, qwen2)"
            ));
        }
    };
    let rope = c
        .get("rope_parameters")
        .or_else(|| c.get("rope_scaling"))
        .filter(|r| !r.is_null());
    if let Some(kind) = rope
        .and_then(|r| r.get("rope_type").or_else(|| r.get("type")))
        .and_then(|t| t.as_str())
        && kind != "default"
    {
        return Err(format!("RoPE scaling `{kind}` is not supported"));
    }
    let theta = rope
        .and_then(|r| r.get("rope_theta"))
        .or_else(|| c.get("rope_theta"))
        .and_then(|t| t.as_f64())
        .unwrap_or(10_000.0);
    let u = |k: &str| -> std::result::Result<Value, String> {
        c[k].as_u64()
            .and_then(|v| u32::try_from(v).ok())
            .map(Value::U32)
            .ok_or_else(|| format!("config.json: `{k}` is missing or not an integer"))
    };
    let key = |k: &str| format!("{arch}.{k}");
    let mut m = vec![
        (
            "general.architecture".to_string(),
            Value::String(arch.into()),
        ),
        (
            "general.name".to_string(),
            Value::String(c["_name_or_path"].as_str().unwrap_or(model_type).into()),
        ),
        (key("block_count"), u("num_hidden_layers")?),
        (key("embedding_length"), u("hidden_size")?),
        (key("feed_forward_length"), u("intermediate_size")?),
        (key("attention.head_count"), u("num_attention_heads")?),
        (
            key("attention.head_count_kv"),
            u("num_key_value_heads").or_else(|_| u("num_attention_heads"))?,
        ),
        (
            key("context_length"),
            u("max_position_embeddings").unwrap_or(Value::U32(2048)),
        ),
        (key("vocab_size"), u("vocab_size")?),
        (key("rope.freq_base"), Value::F32(theta as f32)),
        (
            key("attention.layer_norm_rms_epsilon"),
            Value::F32(c["rms_norm_eps"].as_f64().unwrap_or(1e-5) as f32),
        ),
    ];
    if let Ok(hd) = u("head_dim") {
        m.push((key("attention.key_length"), hd.clone()));
        m.push((key("attention.value_length"), hd));
    }
    let first_id = |v: &serde_json::Value| v.as_u64().or_else(|| v.as_array()?.first()?.as_u64());
    if let Some(eos) = first_id(&c["eos_token_id"]) {
        m.push(("tokenizer.ggml.eos_token_id".into(), Value::U32(eos as u32)));
    }
    if let Some(bos) = first_id(&c["bos_token_id"]) {
        m.push(("tokenizer.ggml.bos_token_id".into(), Value::U32(bos as u32)));
    }
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permutation_interleaves_halves() {
        // 1 head of dim 4, rows of one byte: [a0 a1 b0 b1] -> [a0 b0 a1 b1]
        let out = permute_rows_for_interleaved_rope(&[0, 1, 2, 3], &[4, 1], 1).unwrap();
        assert_eq!(out, vec![0, 2, 1, 3]);
    }

    #[test]
    fn names_map() {
        assert_eq!(
            gguf_name("model.layers.12.mlp.down_proj.weight").unwrap(),
            "blk.12.ffn_down.weight"
        );
        assert_eq!(gguf_name("model.layers.x.mlp.down_proj.weight"), None);
        assert_eq!(gguf_name("model.rotary_emb.inv_freq"), None);
    }
}
