//! Tokenizers and chat templates of the two real models, checked against llama.cpp's
//! tokenization of the same GGUF files (fixtures made by `scripts/make_token_fixtures.py`).
//! Slow: needs the real weights (fetched into the model store). Run with `UNFED_SLOW=1`.

use std::path::PathBuf;

use unfed_model::{ChatMessage, ChatTemplate, Checkpoint, TextTokenizer};
use unfed_store::{FetchOptions, ModelStore, find};

fn fetch(name: &str) -> PathBuf {
    let store = ModelStore::open_default().expect("model store");
    store
        .fetch(find(name).unwrap(), &FetchOptions::default())
        .expect("fetch the model")
}

fn load(name: &str) -> (TextTokenizer, ChatTemplate) {
    let ck = Checkpoint::open(&fetch(name)).unwrap();
    let tok = TextTokenizer::from_metadata(ck.metadata()).unwrap();
    let chat = ChatTemplate::from_metadata(ck.metadata(), &tok)
        .unwrap()
        .expect("a chat template");
    (tok, chat)
}

/// Where we follow the model's Hugging Face tokenizer rather than llama.cpp: llama.cpp promotes
/// Qwen's ordinary vocabulary entry `</s>` to a control token ("control-looking token"), so it
/// matches `</s>` whole in text; Hugging Face (and we) tokenize it as plain text.
const HF_NOT_LLAMA_CPP: &[(&str, &str, &[u32])] =
    &[("qwen2.5-coder-0.5b", "a</s>b", &[64, 522, 82, 51407])];

fn check_tokens(name: &str) {
    let (tok, _) = load(name);
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join(format!("tests/fixtures/tokens-{name}.json"));
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut failures = Vec::new();
    let cases = v["cases"].as_array().unwrap();
    for case in cases {
        let text = case["text"].as_str().unwrap();
        let mut want: Vec<u32> = case["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect();
        if let Some((_, _, ids)) = HF_NOT_LLAMA_CPP
            .iter()
            .find(|(m, t, _)| *m == name && *t == text)
        {
            want = ids.to_vec();
        }
        let got = tok.encode(text).unwrap();
        if got != want {
            failures.push(format!("{text:?}: llama.cpp {want:?}, ours {got:?}"));
        }
        assert_eq!(tok.decode(&got).unwrap(), text, "round trip of {text:?}");
    }
    assert!(
        failures.is_empty(),
        "{name}: {} of {} cases differ:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[test]
#[cfg_attr(not(unfed_slow), ignore = "slow: real model weights; set UNFED_SLOW=1")]
fn smollm2_tokenizer_matches_llama_cpp() {
    check_tokens("smollm2-135m");
}

#[test]
#[cfg_attr(not(unfed_slow), ignore = "slow: real model weights; set UNFED_SLOW=1")]
fn qwen_tokenizer_matches_llama_cpp() {
    check_tokens("qwen2.5-coder-0.5b");
}

#[test]
#[cfg_attr(not(unfed_slow), ignore = "slow: real model weights; set UNFED_SLOW=1")]
fn chat_templates_render_chatml() {
    let hello = [ChatMessage::new("user", "Hello!")];
    let (_, smol) = load("smollm2-135m");
    assert_eq!(
        smol.render(&hello, true).unwrap(),
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n\
         <|im_start|>user\nHello!<|im_end|>\n<|im_start|>assistant\n"
    );
    let (_, qwen) = load("qwen2.5-coder-0.5b");
    assert_eq!(
        qwen.render(&hello, true).unwrap(),
        "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n\
         <|im_start|>user\nHello!<|im_end|>\n<|im_start|>assistant\n"
    );
    let convo = [
        ChatMessage::new("system", "Be brief."),
        ChatMessage::new("user", "Hi"),
        ChatMessage::new("assistant", "Hello."),
        ChatMessage::new("user", "Bye"),
    ];
    let expected = "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n\
                    <|im_start|>assistant\nHello.<|im_end|>\n<|im_start|>user\nBye<|im_end|>\n";
    assert_eq!(smol.render(&convo, false).unwrap(), expected);
    assert_eq!(qwen.render(&convo, false).unwrap(), expected);
}
