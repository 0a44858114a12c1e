//! Text ↔ token ids, built from a checkpoint's own metadata: the GGUF vocabulary, merges and
//! token types (byte-level BPE with the pre-tokenizer llama.cpp names in `tokenizer.ggml.pre`),
//! or a Hugging Face `tokenizer.json` carried in the metadata.

use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::BPE;
use tokenizers::normalizers::unicode::NFC;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, PreTokenizerWrapper, SplitDelimiterBehavior, Tokenizer};
use unfed_gguf::Value;

use crate::checkpoint::HF_TOKENIZER_KEY;
use crate::{ModelError, Result};

/// Qwen2's pre-tokenizer split (from its `tokenizer.json`; llama.cpp's `qwen2` pre type).
const QWEN2_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Control-token texts that end a generation in chat models (llama.cpp's end-of-generation set).
const END_OF_GENERATION: &[&str] = &[
    "<|im_end|>",
    "<|endoftext|>",
    "<|eot_id|>",
    "<|end|>",
    "<end_of_turn>",
    "</s>",
];

/// A tokenizer plus the facts about special tokens that generation needs.
pub struct TextTokenizer {
    inner: Tokenizer,
    end_of_generation: Vec<u32>,
    bos: Option<u32>,
    add_bos: bool,
    kind: String,
}

impl TextTokenizer {
    /// Builds the tokenizer a checkpoint describes.
    pub fn from_metadata(meta: &[(String, Value)]) -> Result<Self> {
        let get = |k: &str| meta.iter().find(|(key, _)| key == k).map(|(_, v)| v);
        let id = |k: &str| get(k).and_then(Value::as_u64).map(|v| v as u32);
        let (inner, kind) = match get(HF_TOKENIZER_KEY).and_then(Value::as_str) {
            Some(json) => (
                json.parse::<Tokenizer>()
                    .map_err(|e| ModelError::Tokenizer(format!("tokenizer.json: {e}")))?,
                "Hugging Face tokenizer.json".to_string(),
            ),
            None => from_gguf(&get)?,
        };
        let mut end_of_generation: Vec<u32> = [
            "tokenizer.ggml.eos_token_id",
            "tokenizer.ggml.eot_token_id",
            "tokenizer.ggml.eom_token_id",
        ]
        .iter()
        .filter_map(|k| id(k))
        .collect();
        for text in END_OF_GENERATION {
            if let Some(t) = inner.token_to_id(text) {
                end_of_generation.push(t);
            }
        }
        end_of_generation.sort_unstable();
        end_of_generation.dedup();
        Ok(Self {
            inner,
            end_of_generation,
            bos: id("tokenizer.ggml.bos_token_id"),
            add_bos: get("tokenizer.ggml.add_bos_token")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            kind,
        })
    }

    /// Token ids for `text`. Special-token markup in the text (`<|im_start|>` …) becomes the
    /// special token, as chat templates require; a BOS token is prepended if the model asks for one.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode(text, false)
            .map_err(|e| ModelError::Tokenizer(e.to_string()))?;
        let mut ids = enc.get_ids().to_vec();
        if let (true, Some(bos)) = (self.add_bos, self.bos)
            && ids.first() != Some(&bos)
        {
            ids.insert(0, bos);
        }
        Ok(ids)
    }

    /// Text of `ids`, special tokens included.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner
            .decode(ids, false)
            .map_err(|e| ModelError::Tokenizer(e.to_string()))
    }

    /// Tokens that end a generation.
    pub fn end_of_generation(&self) -> &[u32] {
        &self.end_of_generation
    }

    /// The text of one token (special tokens by their markup), if the id exists.
    pub fn token_text(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// The beginning-of-sequence token, if the model has one.
    pub fn bos(&self) -> Option<u32> {
        self.bos
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// A short description (`byte-level BPE, pre-tokenizer qwen2`).
    pub fn kind(&self) -> &str {
        &self.kind
    }

    /// The tokenizer as a Hugging Face `tokenizer.json` document.
    pub fn to_json(&self) -> Result<String> {
        self.inner
            .to_string(false)
            .map_err(|e| ModelError::Tokenizer(e.to_string()))
    }
}

fn from_gguf<'a>(get: &dyn Fn(&str) -> Option<&'a Value>) -> Result<(Tokenizer, String)> {
    let err = |m: String| ModelError::Tokenizer(m);
    let model = get("tokenizer.ggml.model")
        .and_then(Value::as_str)
        .ok_or_else(|| err("no tokenizer in the checkpoint".into()))?;
    if model != "gpt2" {
        return Err(err(format!(
            "tokenizer model `{model}` is not supported (byte-level BPE `gpt2` is)"
        )));
    }
    let strings = |k: &str| -> Result<Vec<&str>> {
        get(k)
            .and_then(Value::as_array)
            .ok_or_else(|| err(format!("{k} is missing")))?
            .iter()
            .map(|v| {
                v.as_str()
                    .ok_or_else(|| err(format!("{k} holds a non-string")))
            })
            .collect()
    };
    let tokens = strings("tokenizer.ggml.tokens")?;
    let merges = strings("tokenizer.ggml.merges")?;
    let types: Vec<i64> = match get("tokenizer.ggml.token_type").and_then(Value::as_array) {
        Some(a) => a.iter().map(|v| v.as_i64().unwrap_or(1)).collect(),
        None => vec![1; tokens.len()],
    };
    let vocab: tokenizers::models::bpe::Vocab = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.to_string(), i as u32))
        .collect();
    let merges = merges
        .iter()
        .map(|m| {
            m.split_once(' ')
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .ok_or_else(|| err(format!("merge `{m}` is not two tokens")))
        })
        .collect::<Result<Vec<_>>>()?;
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .build()
        .map_err(|e| err(format!("BPE: {e}")))?;
    let pre = get("tokenizer.ggml.pre")
        .and_then(Value::as_str)
        .unwrap_or("default");
    let byte_level =
        |use_regex| PreTokenizerWrapper::ByteLevel(ByteLevel::new(false, false, use_regex));
    let pre_tokenizer = match pre {
        "qwen2" => {
            let split = Split::new(
                SplitPattern::Regex(QWEN2_PATTERN.into()),
                SplitDelimiterBehavior::Isolated,
                false,
            )
            .map_err(|e| err(format!("pre-tokenizer: {e}")))?;
            Sequence::new(vec![PreTokenizerWrapper::Split(split), byte_level(false)])
        }
        "smollm" => Sequence::new(vec![
            PreTokenizerWrapper::Digits(Digits::new(true)),
            byte_level(true),
        ]),
        "gpt2" | "default" => Sequence::new(vec![byte_level(true)]),
        other => {
            return Err(err(format!(
                "pre-tokenizer `{other}` is not supported (qwen2, smollm, gpt2 are)"
            )));
        }
    };
    let mut tok = Tokenizer::new(bpe);
    tok.with_pre_tokenizer(Some(pre_tokenizer));
    tok.with_decoder(Some(ByteLevelDecoder::default()));
    if pre == "qwen2" {
        tok.with_normalizer(Some(NFC));
    }
    // Control (3) and user-defined (4) tokens are matched whole in the text, before BPE.
    let added = |ty: i64| -> Vec<AddedToken> {
        tokens
            .iter()
            .zip(&types)
            .filter(|(_, t)| **t == ty)
            .map(|(text, _)| AddedToken::from(text.to_string(), ty == 3))
            .collect()
    };
    tok.add_special_tokens(&added(3));
    tok.add_tokens(&added(4));
    Ok((
        tok,
        format!(
            "byte-level BPE, pre-tokenizer {pre}, {} tokens",
            tokens.len()
        ),
    ))
}
