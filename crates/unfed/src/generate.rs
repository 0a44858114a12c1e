//! `unfed generate`: one reply in this process, streamed to stdout as it is produced.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::Args;
use unfed_engine::{Engine, Event, GenerateRequest};
use unfed_model::{ChatMessage, SamplingParams};

use crate::resolve;

#[derive(Args)]
pub struct GenerateArgs {
    /// A catalog model name (fetched if missing), a GGUF file, or a safetensors directory.
    #[arg(long, conflicts_with = "shards", required_unless_present = "shards")]
    model: Option<String>,
    /// A split directory (`unfed model split`): all its shards run in sequence in this process.
    #[arg(long)]
    shards: Option<PathBuf>,
    /// The user's message.
    #[arg(long)]
    prompt: String,
    /// A system message (default: the chat template's own).
    #[arg(long)]
    system: Option<String>,
    /// Feed the prompt as raw text, without the chat template.
    #[arg(long)]
    raw: bool,
    #[arg(long, default_value_t = 256)]
    max_tokens: usize,
    #[command(flatten)]
    sampling: SamplingArgs,
    /// Model store directory (default: $UNFED_MODEL_DIR or the user's cache).
    #[arg(long)]
    store: Option<PathBuf>,
}

/// Sampling flags shared by every command that generates.
#[derive(Args, Clone)]
pub struct SamplingArgs {
    /// 0 means greedy.
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    /// Keep the k most likely tokens (0: all).
    #[arg(long, default_value_t = 0)]
    top_k: usize,
    /// Nucleus sampling threshold (1: off).
    #[arg(long, default_value_t = 1.0)]
    top_p: f32,
    /// Penalty for recently generated tokens (1: off).
    #[arg(long, default_value_t = 1.0)]
    repeat_penalty: f32,
    /// Tokens the repetition penalty looks back over.
    #[arg(long, default_value_t = 64)]
    repeat_last_n: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

impl SamplingArgs {
    pub fn params(&self) -> Result<SamplingParams> {
        let p = SamplingParams {
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            repeat_penalty: self.repeat_penalty,
            repeat_last_n: self.repeat_last_n,
            seed: self.seed,
        };
        p.validate().map_err(anyhow::Error::msg)?;
        Ok(p)
    }
}

pub fn run(args: GenerateArgs) -> Result<std::process::ExitCode> {
    let sampling = args.sampling.params()?;
    let loaded = match (&args.model, &args.shards) {
        (Some(m), None) => resolve::load_model(&resolve::model_path(m, args.store.as_deref())?)?,
        (None, Some(dir)) => resolve::load_shards(dir)?,
        _ => bail!("give either --model or --shards"),
    };
    let text = if args.raw {
        args.prompt.clone()
    } else {
        let Some(chat) = &loaded.chat else {
            bail!("the model has no chat template; use --raw to feed the prompt as plain text")
        };
        let mut messages = Vec::new();
        if let Some(system) = &args.system {
            messages.push(ChatMessage::new("system", system));
        }
        messages.push(ChatMessage::new("user", &args.prompt));
        chat.render(&messages, true)?
    };
    let prompt_ids = loaded.tokenizer.encode(&text)?;
    eprintln!("{}: {} prompt tokens", loaded.description, prompt_ids.len());
    let engine = Engine::start(loaded.pipeline, loaded.tokenizer)?;
    let events = engine.submit(GenerateRequest {
        prompt_ids,
        max_tokens: args.max_tokens,
        sampling,
        ignore_eos: false,
    })?;
    let mut out = std::io::stdout().lock();
    for event in events {
        match event {
            Event::Token { text, .. } | Event::Flush(text) => {
                out.write_all(text.as_bytes())?;
                out.flush()?;
            }
            Event::Done(s) => {
                writeln!(out)?;
                eprintln!(
                    "{} tokens; prefill {:.1} tok/s, decode {:.1} tok/s; stopped by {:?}",
                    s.generated_tokens,
                    s.prefill_tokens_per_s(),
                    s.decode_tokens_per_s(),
                    s.stop
                );
            }
            Event::Error(e) => bail!("generation failed: {e}"),
        }
    }
    Ok(std::process::ExitCode::SUCCESS)
}
