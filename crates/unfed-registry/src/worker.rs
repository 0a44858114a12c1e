//! The thread that owns the [`RegistryCore`] (and so the SQLite connection): async handlers send
//! it jobs over a bounded channel and await the answer, so no blocking database call ever runs
//! on a tokio worker.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::thread::JoinHandle;

use tokio::sync::{mpsc, oneshot};

use crate::{RegistryCore, RegistryError};

/// Jobs waiting for the database thread; senders wait when it is full.
pub const QUEUE_CAPACITY: usize = 256;

type Job = Box<dyn FnOnce(&mut RegistryCore) + Send>;

enum Msg {
    Job(Job),
    Stop,
}

/// A cheap, clonable way to run work on the core's thread.
#[derive(Clone, Debug)]
pub struct CoreHandle {
    tx: mpsc::Sender<Msg>,
}

impl std::fmt::Debug for Msg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Msg::Job(_) => "Job",
            Msg::Stop => "Stop",
        })
    }
}

impl CoreHandle {
    /// Runs `f` on the core's thread and returns its result. Fails with
    /// [`RegistryError::Unavailable`] once the thread has stopped (or if `f` panicked).
    pub async fn call<R, F>(&self, f: F) -> Result<R, RegistryError>
    where
        F: FnOnce(&mut RegistryCore) -> Result<R, RegistryError> + Send + 'static,
        R: Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move |core| {
            // The caller may have gone away; its answer is then simply dropped.
            let _ = tx.send(f(core));
        });
        self.tx
            .send(Msg::Job(job))
            .await
            .map_err(|_| RegistryError::Unavailable)?;
        rx.await.map_err(|_| RegistryError::Unavailable)?
    }
}

/// Owns the core's thread; [`CoreThread::shutdown`] stops and joins it.
#[derive(Debug)]
pub struct CoreThread {
    handle: CoreHandle,
    thread: Option<JoinHandle<RegistryCore>>,
}

impl CoreThread {
    /// Moves `core` onto a new thread named `registry-db`.
    pub fn spawn(mut core: RegistryCore) -> std::io::Result<Self> {
        let (tx, mut rx) = mpsc::channel::<Msg>(QUEUE_CAPACITY);
        let thread = std::thread::Builder::new()
            .name("registry-db".into())
            .spawn(move || {
                while let Some(Msg::Job(job)) = rx.blocking_recv() {
                    // A panicking job loses its own answer (its caller sees Unavailable) but
                    // the thread keeps serving: every write is one transaction, so the
                    // database is consistent.
                    let _ = catch_unwind(AssertUnwindSafe(|| job(&mut core)));
                }
                core
            })?;
        Ok(Self {
            handle: CoreHandle { tx },
            thread: Some(thread),
        })
    }

    /// A handle for sending work to the thread.
    pub fn handle(&self) -> CoreHandle {
        self.handle.clone()
    }

    /// Lets queued jobs finish, stops the thread and returns the core (closing nothing: drop it
    /// to close the database). `None` if the thread could not be joined.
    pub async fn shutdown(mut self) -> Option<RegistryCore> {
        // If the thread is already gone the send fails, and the join below reports it.
        let _ = self.handle.tx.send(Msg::Stop).await;
        let thread = self.thread.take()?;
        tokio::task::spawn_blocking(move || thread.join().ok())
            .await
            .ok()
            .flatten()
    }
}

impl Drop for CoreThread {
    fn drop(&mut self) {
        if self.thread.is_some() {
            // Not shut down explicitly: ask the thread to stop without blocking; it ends after
            // the jobs already queued.
            let _ = self.handle.tx.try_send(Msg::Stop);
        }
    }
}
