//! The forward thread: owns the shard and every session's KV cache, takes jobs from a bounded
//! queue, and answers each on a oneshot channel. Sessions are bounded in number and evicted when
//! idle, so a client that vanishes cannot pin memory.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use candle_core::{Device, Tensor};
use tokio::sync::{mpsc, oneshot};
use unfed_model::{Input, KvCache, LogitsMode, Sampler, SamplingParams, ShardModel};

/// Jobs waiting for the forward thread (callers wait when it is full: backpressure).
const QUEUE_DEPTH: usize = 32;

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
    /// Party A's output for shard 1, masked by party B's pad.
    Masked(unfed_proto::node::Masked),
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

enum Job {
    Open {
        id: u64,
        output: Option<HeadOutput>,
        reply: oneshot::Sender<Result<(), String>>,
    },
    Step {
        id: u64,
        input: StepInput,
        history: Vec<u32>,
        defer: bool,
        reply: oneshot::Sender<Result<StepOutput, String>>,
    },
    Close {
        id: u64,
    },
    Count {
        reply: oneshot::Sender<usize>,
    },
}

struct Session {
    cache: KvCache,
    /// None on a shard without the head.
    head: Option<Head>,
    /// Tokens the sampler has picked or been told about (for the repetition penalty).
    history: Vec<u32>,
    /// Whether a step has returned output (not deferred) yet.
    answered: bool,
    /// A resumed session's earlier picks, given with a deferred step of its replay.
    pending_history: Vec<u32>,
    last_used: Instant,
}

/// A handle to the forward thread; cloning shares the thread.
#[derive(Clone)]
pub struct Forward {
    jobs: mpsc::Sender<Job>,
}

impl Forward {
    /// Moves the shard onto its own thread. The thread ends when every handle is dropped.
    pub fn start(
        model: ShardModel,
        limits: SessionLimits,
    ) -> std::io::Result<(Self, std::thread::JoinHandle<()>)> {
        let (jobs, rx) = mpsc::channel(QUEUE_DEPTH);
        let thread = std::thread::Builder::new()
            .name("unfed-forward".into())
            .spawn(move || run(model, limits, rx))?;
        Ok((Self { jobs }, thread))
    }

    /// Opens session `id`; at the last shard `output` says what it returns (None: greedy
    /// tokens).
    pub async fn open(&self, id: u64, output: Option<HeadOutput>) -> Result<(), String> {
        let (reply, rx) = oneshot::channel();
        self.send(Job::Open { id, output, reply }).await?;
        rx.await.map_err(|_| stopped())?
    }

    /// One step of session `id`. `history`: a resumed session's earlier picks (last shard);
    /// `defer`: more of the prompt follows, so the last shard returns nothing yet.
    pub async fn step(
        &self,
        id: u64,
        input: StepInput,
        history: Vec<u32>,
        defer: bool,
    ) -> Result<StepOutput, String> {
        let (reply, rx) = oneshot::channel();
        self.send(Job::Step {
            id,
            input,
            history,
            defer,
            reply,
        })
        .await?;
        rx.await.map_err(|_| stopped())?
    }

    pub async fn close(&self, id: u64) {
        let _ = self.jobs.send(Job::Close { id }).await;
    }

    pub async fn active_sessions(&self) -> usize {
        let (reply, rx) = oneshot::channel();
        if self.jobs.send(Job::Count { reply }).await.is_err() {
            return 0;
        }
        rx.await.unwrap_or(0)
    }

    async fn send(&self, job: Job) -> Result<(), String> {
        self.jobs.send(job).await.map_err(|_| stopped())
    }
}

fn stopped() -> String {
    "the node is shutting down".into()
}

fn run(model: ShardModel, limits: SessionLimits, mut jobs: mpsc::Receiver<Job>) {
    let mut sessions: HashMap<u64, Session> = HashMap::new();
    let cfg = model.config();
    // f32 keys and values of every layer of this shard, per position.
    let kv_bytes_per_position = model.role().layers.len() * 2 * cfg.n_kv_head * cfg.head_dim * 4;
    let max_total_positions = limits.max_kv_bytes / kv_bytes_per_position.max(1);
    while let Some(job) = jobs.blocking_recv() {
        let now = Instant::now();
        sessions.retain(|_, s| now.duration_since(s.last_used) < limits.idle_timeout);
        match job {
            Job::Open { id, output, reply } => {
                let result = if sessions.contains_key(&id) {
                    Err("session id already in use".to_string())
                } else if sessions.len() >= limits.max_sessions {
                    Err(format!("busy: {} sessions open", sessions.len()))
                } else {
                    let head = match (model.role().head, output) {
                        (true, Some(HeadOutput::Sample(p))) => {
                            Some(Head::Sample(Box::new(Sampler::new(p))))
                        }
                        (true, Some(HeadOutput::Logits)) => Some(Head::Logits),
                        (true, None) => Some(Head::Sample(Box::new(Sampler::new(
                            SamplingParams::greedy(),
                        )))),
                        (false, _) => None,
                    };
                    sessions.insert(
                        id,
                        Session {
                            cache: model.new_cache(),
                            head,
                            history: Vec::new(),
                            answered: false,
                            pending_history: Vec::new(),
                            last_used: now,
                        },
                    );
                    Ok(())
                };
                let _ = reply.send(result);
            }
            Job::Step {
                id,
                input,
                history,
                defer,
                reply,
            } => {
                let held: usize = sessions.values().map(|s| s.cache.positions()).sum();
                let new = match &input {
                    StepInput::Tokens(ids) => ids.len(),
                    StepInput::Hidden { rows, .. } => *rows,
                };
                let result = match sessions.get_mut(&id) {
                    None => Err("no such session (closed or idle too long)".to_string()),
                    Some(_) if new == 0 => Err("empty step".to_string()),
                    Some(s) if s.cache.positions() + new > limits.max_positions => Err(format!(
                        "the session would exceed {} positions",
                        limits.max_positions
                    )),
                    // Only a resumed session's replay names earlier picks, before the session
                    // has returned anything, and never more of them than the positions so far.
                    Some(s) if !history.is_empty() && (s.answered || history.len() > s.cache.positions() + new) => {
                        Err("history is only accepted before a session's first output, and no longer than it".to_string())
                    }
                    Some(_) if held + new > max_total_positions => {
                        Err("busy: the node's KV-cache memory is full; try again later".to_string())
                    }
                    Some(s) => {
                        s.last_used = now;
                        let r = step(&model, s, input, history, defer);
                        if r.is_err() {
                            // A failed step may have left the cache half-extended.
                            sessions.remove(&id);
                        }
                        r
                    }
                };
                let _ = reply.send(result);
                if jobs.is_empty() {
                    // The rest of the route computes next, maybe on these very cores.
                    unfed_kernels::pool::global().rest();
                }
            }
            Job::Close { id } => {
                sessions.remove(&id);
            }
            Job::Count { reply } => {
                let _ = reply.send(sessions.len());
            }
        }
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
