//! The generation loop: prefill the prompt, then sample and feed one token at a time until an
//! end-of-generation token, the token budget, or the context limit.

use std::time::{Duration, Instant};

use unfed_model::{Sampler, SamplingParams, TextTokenizer};

use crate::pipeline::Pipeline;
use crate::text_stream::TextStream;
use crate::{EngineError, Result};

/// One generation to run.
#[derive(Debug, Clone)]
pub struct GenerateRequest {
    pub prompt_ids: Vec<u32>,
    pub max_tokens: usize,
    pub sampling: SamplingParams,
    /// Generate exactly `max_tokens`, ignoring end-of-generation tokens (benchmarks).
    pub ignore_eos: bool,
}

/// Why a generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    EndOfGeneration,
    MaxTokens,
    ContextFull,
}

/// Counts and timings of one generation.
#[derive(Debug, Clone, PartialEq)]
pub struct Stats {
    pub prompt_tokens: usize,
    pub generated_tokens: usize,
    pub prefill: Duration,
    /// Forward steps after the prefill (one per generated token that was fed back).
    pub decode_steps: usize,
    /// Time from the end of the prefill to the end of the generation.
    pub decode: Duration,
    pub stop: StopReason,
}

impl Stats {
    pub fn prefill_tokens_per_s(&self) -> f64 {
        self.prompt_tokens as f64 / self.prefill.as_secs_f64()
    }

    /// Decode steps per second.
    pub fn decode_tokens_per_s(&self) -> f64 {
        self.decode_steps as f64 / self.decode.as_secs_f64()
    }
}

/// What a generation reports as it goes.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A generated token and the text that became complete with it (may be empty).
    Token {
        id: u32,
        text: String,
    },
    /// Text held back at the end (an incomplete character).
    Flush(String),
    Done(Stats),
    Error(String),
}

/// Runs a generation, calling `emit` for every token and once at the end with the stats.
/// `emit` returning false stops early (the receiver went away).
pub fn generate(
    pipeline: &Pipeline,
    tokenizer: &TextTokenizer,
    req: &GenerateRequest,
    emit: &mut dyn FnMut(Event) -> bool,
) -> Result<Stats> {
    req.sampling.validate().map_err(EngineError::Request)?;
    if req.prompt_ids.is_empty() {
        return Err(EngineError::Request("the prompt is empty".into()));
    }
    let context = pipeline.config().context_length;
    if req.prompt_ids.len() >= context {
        return Err(EngineError::Request(format!(
            "the prompt has {} tokens; the model's context is {context}",
            req.prompt_ids.len()
        )));
    }
    let mut session = pipeline.new_session();
    let mut sampler = Sampler::new(req.sampling.clone());
    let mut stream = TextStream::new();
    let t0 = Instant::now();
    let mut logits = pipeline.step(&mut session, &req.prompt_ids)?;
    let prefill = t0.elapsed();
    let t1 = Instant::now();
    let mut generated = 0;
    let mut decode_steps = 0;
    let stop = loop {
        if generated == req.max_tokens {
            break StopReason::MaxTokens;
        }
        let id = sampler.sample(&mut logits, session.tokens());
        if !req.ignore_eos && tokenizer.end_of_generation().contains(&id) {
            break StopReason::EndOfGeneration;
        }
        generated += 1;
        let text = stream.push(tokenizer, id)?.unwrap_or_default();
        if !emit(Event::Token { id, text }) {
            break StopReason::MaxTokens;
        }
        if session.tokens().len() + 1 >= context {
            break StopReason::ContextFull;
        }
        if generated < req.max_tokens {
            logits = pipeline.step(&mut session, &[id])?;
            decode_steps += 1;
        }
    };
    if let Some(rest) = stream.finish(tokenizer)? {
        emit(Event::Flush(rest));
    }
    let stats = Stats {
        prompt_tokens: req.prompt_ids.len(),
        generated_tokens: generated,
        prefill,
        decode_steps,
        decode: t1.elapsed(),
        stop,
    };
    emit(Event::Done(stats.clone()));
    Ok(stats)
}
