//! Chat templates: the model's own Jinja template (from GGUF `tokenizer.chat_template` or
//! `tokenizer_config.json`) rendered with minijinja and Python-compatible string methods.

use minijinja::{Environment, Error, ErrorKind, context};
use unfed_gguf::Value;

use crate::tokenizer::TextTokenizer;
use crate::{ModelError, Result};

/// One turn of a conversation.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

impl ChatMessage {
    pub fn new(role: &str, content: &str) -> Self {
        Self {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// A compiled chat template plus the special-token texts it may refer to.
pub struct ChatTemplate {
    env: Environment<'static>,
    bos_token: String,
    eos_token: String,
}

impl ChatTemplate {
    /// The template a checkpoint carries, if any.
    pub fn from_metadata(
        meta: &[(String, Value)],
        tokenizer: &TextTokenizer,
    ) -> Result<Option<Self>> {
        let Some(source) = meta
            .iter()
            .find(|(k, _)| k == "tokenizer.chat_template")
            .and_then(|(_, v)| v.as_str())
        else {
            return Ok(None);
        };
        let token = |id: Option<u32>| id.and_then(|i| tokenizer.token_text(i)).unwrap_or_default();
        let eos = tokenizer.end_of_generation().first().copied();
        let eos_id = meta
            .iter()
            .find(|(k, _)| k == "tokenizer.ggml.eos_token_id")
            .and_then(|(_, v)| v.as_u64())
            .map(|v| v as u32)
            .or(eos);
        Self::new(source, &token(tokenizer.bos()), &token(eos_id)).map(Some)
    }

    /// Compiles a template source.
    pub fn new(source: &str, bos_token: &str, eos_token: &str) -> Result<Self> {
        let mut env = Environment::new();
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function(
            "raise_exception",
            |msg: String| -> std::result::Result<String, Error> {
                Err(Error::new(ErrorKind::InvalidOperation, msg))
            },
        );
        env.add_template_owned("chat", source.to_string())
            .map_err(|e| ModelError::ChatTemplate(e.to_string()))?;
        Ok(Self {
            env,
            bos_token: bos_token.into(),
            eos_token: eos_token.into(),
        })
    }

    /// Renders a conversation; with `add_generation_prompt` the text ends where the assistant's
    /// reply begins.
    pub fn render(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String> {
        let tmpl = self
            .env
            .get_template("chat")
            .map_err(|e| ModelError::ChatTemplate(e.to_string()))?;
        tmpl.render(context! {
            messages => messages,
            add_generation_prompt => add_generation_prompt,
            bos_token => self.bos_token,
            eos_token => self.eos_token,
        })
        .map_err(|e| ModelError::ChatTemplate(e.to_string()))
    }
}
