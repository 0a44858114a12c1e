//! The forward pass on a thread of its own: requests go in through a bounded queue, events come
//! back through a bounded channel per request, and dropping the [`Engine`] joins the thread.

use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::JoinHandle;

use unfed_model::TextTokenizer;

use crate::generate::{Event, GenerateRequest, generate};
use crate::pipeline::Pipeline;
use crate::{EngineError, Result};

/// Requests waiting for the engine thread beyond the one it is running.
const QUEUE_DEPTH: usize = 8;
/// Events buffered per request before the engine waits for the reader.
const EVENT_BUFFER: usize = 64;

struct Job {
    request: GenerateRequest,
    events: SyncSender<Event>,
}

/// A pipeline running on its own thread.
pub struct Engine {
    jobs: Option<SyncSender<Job>>,
    thread: Option<JoinHandle<()>>,
}

impl Engine {
    /// Moves the pipeline onto a new thread and starts serving requests, one at a time.
    pub fn start(pipeline: Pipeline, tokenizer: Arc<TextTokenizer>) -> Result<Self> {
        let (jobs, queue) = sync_channel::<Job>(QUEUE_DEPTH);
        let thread = std::thread::Builder::new()
            .name("unfed-forward".into())
            .spawn(move || {
                for job in queue {
                    let events = job.events;
                    let mut emit = |e: Event| events.send(e).is_ok();
                    if let Err(e) = generate(&pipeline, &tokenizer, &job.request, &mut emit) {
                        let _ = events.send(Event::Error(e.to_string()));
                    }
                }
            })
            .map_err(|_| EngineError::Stopped)?;
        Ok(Self {
            jobs: Some(jobs),
            thread: Some(thread),
        })
    }

    /// Queues a generation (waiting if the queue is full); its events arrive on the receiver,
    /// ending with [`Event::Done`] or [`Event::Error`]. Dropping the receiver cancels it.
    pub fn submit(&self, request: GenerateRequest) -> Result<Receiver<Event>> {
        let (events, rx) = sync_channel(EVENT_BUFFER);
        self.jobs
            .as_ref()
            .ok_or(EngineError::Stopped)?
            .send(Job { request, events })
            .map_err(|_| EngineError::Stopped)?;
        Ok(rx)
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.jobs.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
