//! The compute thread pool: a fixed set of workers that split a job's chunks between them and
//! the caller.
//!
//! Between the many small jobs of one forward pass, workers spin briefly so that the next job
//! starts without a wake-up; once the pass is over they sleep on a condition variable (at once,
//! when the owner calls [`Pool::rest`]). That is what lets several engine processes share a few
//! cores (a loopback network runs one process per shard, and only one of them computes at a
//! time) without their idle workers burning the cores the busy one needs.
//!
//! A job ends when its last chunk is done, not when every worker has looked at it: a worker that
//! is asleep, or that the operating system has descheduled, never holds the caller up. Workers
//! claim chunks from one atomic word that holds the job's epoch beside the next chunk index, so
//! a worker that comes late to a finished job fails its claim and never touches the job.

use std::cell::{Cell, UnsafeCell};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long an idle worker keeps polling for the next job before it sleeps.
const SPIN: Duration = Duration::from_micros(100);

/// A pool of `threads() - 1` workers plus the calling thread.
pub struct Pool {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
    /// One job at a time.
    caller: Mutex<()>,
}

impl Pool {
    /// A pool that computes on `threads` threads in all (the caller included).
    pub fn new(threads: usize) -> Pool {
        let threads = threads.max(1);
        let shared = Arc::new(Shared {
            claim: AtomicU64::new(claim_word(0, CLOSED)),
            chunks: AtomicUsize::new(0),
            done: AtomicUsize::new(0),
            job: UnsafeCell::new(None),
            sleeping: AtomicUsize::new(0),
            resting: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            panicked: AtomicBool::new(false),
            lock: Mutex::new(()),
            wake: Condvar::new(),
        });
        let workers = (1..threads)
            .map(|i| {
                let s = shared.clone();
                std::thread::Builder::new()
                    .name(format!("unfed-compute-{i}"))
                    .spawn(move || worker(&s))
                    .expect("spawning a compute thread")
            })
            .collect();
        Pool {
            shared,
            workers,
            caller: Mutex::new(()),
        }
    }

    /// Threads that compute a job, the caller included.
    pub fn threads(&self) -> usize {
        self.workers.len() + 1
    }

    /// Runs `f(0) .. f(chunks - 1)`, each exactly once, spread over the pool; returns when all
    /// are done. Called from inside a job, it runs the chunks on the calling thread.
    pub fn run(&self, chunks: usize, f: &(dyn Fn(usize) + Sync)) {
        if chunks == 0 {
            return;
        }
        if self.workers.is_empty() || chunks == 1 || IN_JOB.get() {
            (0..chunks).for_each(f);
            return;
        }
        assert!(chunks < CLOSED as usize, "too many chunks for one job");
        let _one_at_a_time = self.caller.lock().unwrap_or_else(|e| e.into_inner());
        let s = &*self.shared;
        // SAFETY: the reference is only used by threads that claimed a chunk of this job, and
        // `run` returns only after every claimed chunk is done (see `done`).
        let f = unsafe { std::mem::transmute::<&(dyn Fn(usize) + Sync), JobFn>(f) };
        // SAFETY: the previous job is closed, so no thread can claim a chunk of it and read
        // the slot; the next claim of this job is possible only after the store below.
        unsafe { *s.job.get() = Some(f) };
        s.chunks.store(chunks, SeqCst);
        s.done.store(0, SeqCst);
        s.resting.store(false, SeqCst);
        let epoch = epoch_of(s.claim.load(SeqCst)).wrapping_add(1);
        s.claim.store(claim_word(epoch, 0), SeqCst);
        if s.sleeping.load(SeqCst) > 0 {
            let _g = s.lock.lock().unwrap_or_else(|e| e.into_inner());
            s.wake.notify_all();
        }
        // A panicking chunk still counts as done (see `work_on`), so nobody waits forever.
        work_on(s, epoch);
        let mut spins = 0u32;
        while s.done.load(SeqCst) != chunks {
            spins += 1;
            if spins < 1 << 12 {
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
        // Every chunk is claimed and done: close the job so that no late worker claims more.
        s.claim.store(claim_word(epoch, CLOSED), SeqCst);
        if s.panicked.swap(false, SeqCst) {
            panic!("a chunk of a compute job panicked");
        }
    }

    /// Sends idle workers to sleep now instead of after their spin: for a caller that knows no
    /// job follows soon (a node whose step is done waits for the network, and another process
    /// on the same cores may need them).
    pub fn rest(&self) {
        self.shared.resting.store(true, SeqCst);
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        let s = &*self.shared;
        s.stop.store(true, SeqCst);
        let epoch = epoch_of(s.claim.load(SeqCst)).wrapping_add(1);
        s.claim.store(claim_word(epoch, CLOSED), SeqCst);
        {
            let _g = s.lock.lock().unwrap_or_else(|e| e.into_inner());
            s.wake.notify_all();
        }
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

/// The process-wide pool, created on first use with [`threads`] threads.
pub fn global() -> &'static Pool {
    GLOBAL.get_or_init(|| Pool::new(threads()))
}

/// Threads the global pool uses: `UNFED_THREADS` when set and positive, else the CPUs
/// available to this process.
pub fn threads() -> usize {
    std::env::var("UNFED_THREADS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|&n| n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

static GLOBAL: OnceLock<Pool> = OnceLock::new();

thread_local! {
    static IN_JOB: Cell<bool> = const { Cell::new(false) };
}

type JobFn = &'static (dyn Fn(usize) + Sync);

/// The chunk index of a closed job (no chunk can be claimed).
const CLOSED: u32 = u32::MAX;

fn claim_word(epoch: u32, next: u32) -> u64 {
    (u64::from(epoch) << 32) | u64::from(next)
}

fn epoch_of(word: u64) -> u32 {
    (word >> 32) as u32
}

struct Shared {
    /// The current job's epoch (high half) and its next unclaimed chunk (low half).
    claim: AtomicU64,
    /// Chunks of the current job.
    chunks: AtomicUsize,
    /// Chunks of the current job that have finished.
    done: AtomicUsize,
    job: UnsafeCell<Option<JobFn>>,
    sleeping: AtomicUsize,
    resting: AtomicBool,
    stop: AtomicBool,
    panicked: AtomicBool,
    lock: Mutex<()>,
    wake: Condvar,
}

// SAFETY: `job` is written only by the caller holding `Pool::caller` while the previous job is
// closed, and read only by a thread that has claimed a chunk of the current job, before that
// chunk counts as done (the caller waits for that before it closes the job).
unsafe impl Sync for Shared {}

/// Claims and runs chunks of job `epoch` until none is left; returns at once for a job that is
/// over (a later epoch, or closed). A chunk that panics is recorded in `panicked` and counts as
/// done; the caller of `run` re-raises it.
fn work_on(s: &Shared, epoch: u32) {
    IN_JOB.set(true);
    let mut word = s.claim.load(SeqCst);
    loop {
        let next = word as u32;
        if epoch_of(word) != epoch || next == CLOSED || next as usize >= s.chunks.load(SeqCst) {
            break;
        }
        match s
            .claim
            .compare_exchange_weak(word, word + 1, SeqCst, SeqCst)
        {
            Ok(_) => {
                // SAFETY: we hold an unfinished chunk of this job, so the slot holds its `f`.
                let f = unsafe { (*s.job.get()).expect("a claimed job has its function") };
                let run = std::panic::AssertUnwindSafe(|| f(next as usize));
                if std::panic::catch_unwind(run).is_err() {
                    // Recorded before the chunk counts as done, so the caller sees it.
                    s.panicked.store(true, SeqCst);
                }
                s.done.fetch_add(1, SeqCst);
                word = s.claim.load(SeqCst);
            }
            Err(now) => word = now,
        }
    }
    IN_JOB.set(false);
}

fn worker(s: &Shared) {
    // The epoch `Pool::new` starts at: a worker that starts late still sees every later change
    // (the stop signal included).
    let mut seen = 0u32;
    loop {
        let started = Instant::now();
        let mut polls = 0u32;
        let epoch = loop {
            let e = epoch_of(s.claim.load(SeqCst));
            if e != seen {
                break e;
            }
            polls += 1;
            if polls.is_multiple_of(64) && (s.resting.load(SeqCst) || started.elapsed() > SPIN) {
                // Announce the sleep before the last look at the epoch: a caller that bumps it
                // afterwards sees `sleeping` and notifies under the lock.
                let mut g = s.lock.lock().unwrap_or_else(|e| e.into_inner());
                s.sleeping.fetch_add(1, SeqCst);
                while epoch_of(s.claim.load(SeqCst)) == seen {
                    g = s.wake.wait(g).unwrap_or_else(|e| e.into_inner());
                }
                s.sleeping.fetch_sub(1, SeqCst);
                break epoch_of(s.claim.load(SeqCst));
            }
            std::hint::spin_loop();
        };
        seen = epoch;
        if s.stop.load(SeqCst) {
            return;
        }
        work_on(s, epoch);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_chunk_runs_once() {
        let pool = Pool::new(3);
        for chunks in [0, 1, 2, 7, 100] {
            let hits: Vec<AtomicUsize> = (0..chunks).map(|_| AtomicUsize::new(0)).collect();
            pool.run(chunks, &|i| {
                hits[i].fetch_add(1, SeqCst);
            });
            assert!(hits.iter().all(|h| h.load(SeqCst) == 1));
        }
    }

    #[test]
    fn workers_wake_after_sleeping() {
        let pool = Pool::new(2);
        let total = AtomicUsize::new(0);
        for _ in 0..3 {
            std::thread::sleep(SPIN * 20);
            pool.run(64, &|i| {
                total.fetch_add(i, SeqCst);
            });
        }
        assert_eq!(total.load(SeqCst), 3 * (63 * 64 / 2));
    }

    #[test]
    fn nested_runs_do_not_deadlock() {
        let pool = Pool::new(2);
        let total = AtomicUsize::new(0);
        pool.run(4, &|_| {
            pool.run(4, &|_| {
                total.fetch_add(1, SeqCst);
            })
        });
        assert_eq!(total.load(SeqCst), 16);
    }

    #[test]
    fn many_jobs_of_every_size_run_each_chunk_once() {
        for threads in [2, 3, 4] {
            let pool = Pool::new(threads);
            for round in 0..2000usize {
                let chunks = (round * 7919) % 37;
                let hits: Vec<AtomicUsize> = (0..chunks).map(|_| AtomicUsize::new(0)).collect();
                pool.run(chunks, &|i| {
                    hits[i].fetch_add(1, SeqCst);
                });
                assert!(hits.iter().all(|h| h.load(SeqCst) == 1), "round {round}");
                if round % 500 == 0 {
                    pool.rest();
                    std::thread::sleep(SPIN * 2);
                }
            }
        }
    }

    #[test]
    fn a_panicking_chunk_reaches_the_caller_and_the_pool_goes_on() {
        let pool = Pool::new(3);
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            pool.run(16, &|i| assert!(i != 11, "chunk 11 fails"));
        }));
        assert!(r.is_err());
        let total = AtomicUsize::new(0);
        pool.run(16, &|i| {
            total.fetch_add(i, SeqCst);
        });
        assert_eq!(total.load(SeqCst), 120);
    }
}
