//! The forward pass of a node's shard, shared by its sessions. Each session's steps run on that
//! session's own thread (never a runtime worker), which reads its frames, computes and passes
//! the result on with no hand-off between threads; passes take one lock, so they run one at a
//! time and never fight over the compute pool. Sessions are bounded in number, positions and KV
//! memory; each holds its own KV cache.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use candle_core::{Device, Tensor};
use unfed_model::{Input, KvCache, LogitsMode, Sampler, SamplingParams, ShardModel};

/// Limits on the sessions one node holds.
#[derive(Debug, Clone)]
pub struct SessionLimits {
    pub max_sessions: usize,
    pub idle_timeout: Duration,
    /// Positions (prompt + generated) one session may reach.
    pub max_positions: usize,
    /// Bytes of keys and values all sessions together may hold.
    pub max_kv_bytes: usize,
}

impl Default for SessionLimits {
    fn default() -> Self {
        Self {
            max_sessions: 16,
            idle_timeout: Duration::from_secs(300),
            max_positions: 4096,
            max_kv_bytes: 1 << 30,
        }
    }
}

/// What one step gives back.
#[derive(Debug)]
pub enum StepOutput {
    /// Hidden states for the next shard, `rows × cols`.
    Hidden {
        rows: usize,
        cols: usize,
        values: Vec<f32>,
    },
    /// The token the last shard picked.
    Token(u32),
    /// The last position's logits, for a client that samples itself.
    Logits(Vec<f32>),
    /// The last shard ran a step of a prompt sent in several steps: nothing to return yet.
    Deferred,
}

/// What the last shard does with its logits, per session.
#[derive(Debug, Clone)]
pub enum HeadOutput {
    /// Sample a token with these parameters.
    Sample(SamplingParams),
    /// Return the logits.
    Logits,
}

/// A session's head state.
enum Head {
    Sample(Box<Sampler>),
    Logits,
}

/// A step's input.
pub enum StepInput {
    Tokens(Vec<u32>),
    Hidden {
        rows: usize,
        cols: usize,
        values: Vec<f32>,
    },
}

/// The shard, shared by the threads of its sessions.
pub struct Forward {
    model: ShardModel,
    limits: SessionLimits,
    /// Held for each forward pass.
    compute: Mutex<()>,
    /// Sessions waiting for `compute`: the last pass to finish sends the pool's workers to rest.
    waiting: AtomicUsize,
    sessions: AtomicUsize,
    /// Positions all sessions together hold, and the most they may.
    held: AtomicUsize,
    max_total_positions: usize,
}

/// One session: its KV cache and, at the last shard, its sampler. Dropping it frees both.
pub struct Session {
    forward: Arc<Forward>,
    cache: KvCache,
    /// None on a shard without the head.
    head: Option<Head>,
    /// Tokens the sampler has picked or been told about (for the repetition penalty).
    history: Vec<u32>,
    /// Whether a step has returned output (not deferred) yet.
    answered: bool,
    /// A resumed session's earlier picks, given with a deferred step of its replay.
    pending_history: Vec<u32>,
    /// Positions this session counts in `Forward::held`.
    reserved: usize,
    /// A forward pass failed and may have left the cache half-extended.
    failed: bool,
}

impl Forward {
    pub fn new(model: ShardModel, limits: SessionLimits) -> Arc<Self> {
        let cfg = model.config();
        // f32 keys and values of every layer of this shard, per position.
        let kv_bytes_per_position =
            model.role().layers.len() * 2 * cfg.n_kv_head * cfg.head_dim * 4;
        let max_total_positions = limits.max_kv_bytes / kv_bytes_per_position.max(1);
        Arc::new(Self {
            model,
            limits,
            compute: Mutex::new(()),
            waiting: AtomicUsize::new(0),
            sessions: AtomicUsize::new(0),
            held: AtomicUsize::new(0),
            max_total_positions,
        })
    }

    /// A new session; at the last shard `output` says what it returns (None: greedy tokens).
    pub fn open(self: &Arc<Self>, output: Option<HeadOutput>) -> Result<Session, String> {
        let open = self.sessions.fetch_add(1, Ordering::AcqRel);
        if open >= self.limits.max_sessions {
            self.sessions.fetch_sub(1, Ordering::AcqRel);
            return Err(format!("busy: {open} sessions open"));
        }
        let head = match (self.model.role().head, output) {
            (true, Some(HeadOutput::Sample(p))) => Some(Head::Sample(Box::new(Sampler::new(p)))),
            (true, Some(HeadOutput::Logits)) => Some(Head::Logits),
            (true, None) => Some(Head::Sample(Box::new(Sampler::new(
                SamplingParams::greedy(),
            )))),
            (false, _) => None,
        };
        Ok(Session {
            forward: self.clone(),
            cache: self.model.new_cache(),
            head,
            history: Vec::new(),
            answered: false,
            pending_history: Vec::new(),
            reserved: 0,
            failed: false,
        })
    }

    /// Sessions open now.
    pub fn active_sessions(&self) -> usize {
        self.sessions.load(Ordering::Acquire)
    }
}

impl Session {
    /// One step, computed on the calling thread (blocking; never call it on a runtime
    /// worker). `history`: a resumed session's earlier picks (last shard); `defer`: more of the
    /// prompt follows, so the last shard returns nothing yet. A refused step leaves the
    /// session as it was; after a failed one the session takes no more.
    pub fn step(
        &mut self,
        input: StepInput,
        history: Vec<u32>,
        defer: bool,
    ) -> Result<StepOutput, String> {
        let f = self.forward.clone();
        let new = match &input {
            StepInput::Tokens(ids) => ids.len(),
            StepInput::Hidden { rows, .. } => *rows,
        };
        if self.failed {
            return Err("the session's last step failed".into());
        }
        if new == 0 {
            return Err("empty step".into());
        }
        if self.cache.positions() + new > f.limits.max_positions {
            return Err(format!(
                "the session would exceed {} positions",
                f.limits.max_positions
            ));
        }
        // Only a resumed session's replay names earlier picks, before the session has returned
        // anything, and never more of them than the positions so far.
        if !history.is_empty() && (self.answered || history.len() > self.cache.positions() + new) {
            return Err(
                "history is only accepted before a session's first output, and no longer than it"
                    .into(),
            );
        }
        if f.held.fetch_add(new, Ordering::AcqRel) + new > f.max_total_positions {
            f.held.fetch_sub(new, Ordering::AcqRel);
            return Err("busy: the node's KV-cache memory is full; try again later".into());
        }
        self.reserved += new;
        f.waiting.fetch_add(1, Ordering::AcqRel);
        let lock = f.compute.lock().unwrap_or_else(|p| p.into_inner());
        f.waiting.fetch_sub(1, Ordering::AcqRel);
        let out = step(&f.model, self, input, history, defer);
        drop(lock);
        if f.waiting.load(Ordering::Acquire) == 0 {
            // The rest of the route computes next, maybe on these very cores.
            unfed_kernels::pool::global().rest();
        }
        self.failed = out.is_err();
        out
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.forward.held.fetch_sub(self.reserved, Ordering::AcqRel);
        self.forward.sessions.fetch_sub(1, Ordering::AcqRel);
    }
}

fn step(
    model: &ShardModel,
    s: &mut Session,
    input: StepInput,
    history: Vec<u32>,
    defer: bool,
) -> Result<StepOutput, String> {
    let cfg = model.config();
    let out = match input {
        StepInput::Tokens(ids) => {
            model.forward(Input::Tokens(&ids), &mut s.cache, LogitsMode::Last)
        }
        StepInput::Hidden { rows, cols, values } => {
            let h =
                Tensor::from_vec(values, (rows, cols), &Device::Cpu).map_err(|e| e.to_string())?;
            model.forward(Input::Hidden(&h), &mut s.cache, LogitsMode::Last)
        }
    }
    .map_err(|e| e.to_string())?;
    if !history.is_empty() {
        s.pending_history = history;
    }
    if defer && s.head.is_some() {
        return Ok(StepOutput::Deferred);
    }
    s.answered = true;
    match &mut s.head {
        None => {
            let values: Vec<f32> = out
                .flatten_all()
                .and_then(|t| t.to_vec1())
                .map_err(|e| e.to_string())?;
            let rows = values.len() / cfg.hidden;
            Ok(StepOutput::Hidden {
                rows,
                cols: cfg.hidden,
                values,
            })
        }
        Some(Head::Logits) => Ok(StepOutput::Logits(
            out.flatten_all()
                .and_then(|t| t.to_vec1())
                .map_err(|e| e.to_string())?,
        )),
        Some(Head::Sample(sampler)) => {
            let history = std::mem::take(&mut s.pending_history);
            if !history.is_empty() {
                // A resumed session: the picks made before, for the penalty and the random state.
                sampler.skip(history.len());
                s.history = history;
            }
            let mut logits: Vec<f32> = out
                .flatten_all()
                .and_then(|t| t.to_vec1())
                .map_err(|e| e.to_string())?;
            let token = sampler.sample(&mut logits, &s.history);
            s.history.push(token);
            Ok(StepOutput::Token(token))
        }
    }
}
