//! The compute thread pool: a fixed set of workers that split a job's chunks between them and
//! the caller.
//!
//! Between the many small jobs of one forward pass, workers spin briefly so that the next job
//! starts without a wake-up; once the pass is over they sleep on a condition variable. That is
//! what lets several engine processes share a few cores (a loopback network runs one process
//! per shard, and only one of them computes at a time) without their idle workers burning the
//! cores the busy one needs.

use std::cell::{Cell, UnsafeCell};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
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
            epoch: AtomicUsize::new(0),
            job: UnsafeCell::new(None),
            active: AtomicUsize::new(0),
            sleeping: AtomicUsize::new(0),
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
        let _one_at_a_time = self.caller.lock().unwrap_or_else(|e| e.into_inner());
        let s = &*self.shared;
        let job = Job {
            // SAFETY: the reference is only used until every worker has left this job, which
            // `run` waits for before returning (see `active`).
            f: unsafe { std::mem::transmute::<&(dyn Fn(usize) + Sync), JobFn>(f) },
            chunks,
            next: AtomicUsize::new(0),
        };
        // SAFETY: no worker reads the slot now: all left the previous job (`active` was 0).
        unsafe { *s.job.get() = Some(job) };
        s.active.store(self.workers.len(), Ordering::SeqCst);
        s.epoch.fetch_add(1, Ordering::SeqCst);
        if s.sleeping.load(Ordering::SeqCst) > 0 {
            let _g = s.lock.lock().unwrap_or_else(|e| e.into_inner());
            s.wake.notify_all();
        }
        // SAFETY: written above; workers only read it.
        let job = unsafe { (*s.job.get()).as_ref().expect("job just set") };
        // Workers may still hold `f` if the caller's share panics: wait for them either way.
        let mine = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| work_on(job)));
        IN_JOB.set(false);
        let mut spins = 0u32;
        while s.active.load(Ordering::Acquire) != 0 {
            spins += 1;
            if spins < 1 << 16 {
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
        if let Err(panic) = mine {
            std::panic::resume_unwind(panic);
        }
        if s.panicked.swap(false, Ordering::SeqCst) {
            panic!("a compute worker panicked");
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        let s = &*self.shared;
        s.stop.store(true, Ordering::SeqCst);
        s.epoch.fetch_add(1, Ordering::SeqCst);
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

struct Job {
    f: JobFn,
    chunks: usize,
    next: AtomicUsize,
}

struct Shared {
    epoch: AtomicUsize,
    job: UnsafeCell<Option<Job>>,
    /// Workers that have not yet left the current job.
    active: AtomicUsize,
    sleeping: AtomicUsize,
    stop: AtomicBool,
    panicked: AtomicBool,
    lock: Mutex<()>,
    wake: Condvar,
}

// SAFETY: `job` is written only by the caller holding `Pool::caller` while no worker is inside
// a job, and read by workers only between an epoch change and their decrement of `active`.
unsafe impl Sync for Shared {}

fn work_on(job: &Job) {
    IN_JOB.set(true);
    loop {
        let i = job.next.fetch_add(1, Ordering::Relaxed);
        if i >= job.chunks {
            break;
        }
        (job.f)(i);
    }
    IN_JOB.set(false);
}

fn worker(s: &Shared) {
    let mut seen = 0usize;
    loop {
        let started = Instant::now();
        let mut polls = 0u32;
        let epoch = loop {
            let e = s.epoch.load(Ordering::Acquire);
            if e != seen {
                break e;
            }
            polls += 1;
            if polls.is_multiple_of(64) && started.elapsed() > SPIN {
                // Announce the sleep before the last look at the epoch: a caller that bumps it
                // afterwards sees `sleeping` and notifies under the lock.
                let mut g = s.lock.lock().unwrap_or_else(|e| e.into_inner());
                s.sleeping.fetch_add(1, Ordering::SeqCst);
                while s.epoch.load(Ordering::SeqCst) == seen {
                    g = s.wake.wait(g).unwrap_or_else(|e| e.into_inner());
                }
                s.sleeping.fetch_sub(1, Ordering::SeqCst);
                break s.epoch.load(Ordering::Acquire);
            }
            std::hint::spin_loop();
        };
        seen = epoch;
        if s.stop.load(Ordering::SeqCst) {
            return;
        }
        // SAFETY: the caller set the job before bumping the epoch and keeps it until `active`
        // drops to zero, which happens only after this worker's decrement below.
        let job = unsafe { (*s.job.get()).as_ref() };
        if let Some(job) = job {
            // A panicking chunk must not leave the caller waiting forever; the caller re-raises.
            if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| work_on(job))).is_err() {
                IN_JOB.set(false);
                s.panicked.store(true, Ordering::SeqCst);
            }
        }
        s.active.fetch_sub(1, Ordering::Release);
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
                hits[i].fetch_add(1, Ordering::Relaxed);
            });
            assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1));
        }
    }

    #[test]
    fn workers_wake_after_sleeping() {
        let pool = Pool::new(2);
        let total = AtomicUsize::new(0);
        for _ in 0..3 {
            std::thread::sleep(SPIN * 20);
            pool.run(64, &|i| {
                total.fetch_add(i, Ordering::Relaxed);
            });
        }
        assert_eq!(total.load(Ordering::Relaxed), 3 * (63 * 64 / 2));
    }

    #[test]
    fn nested_runs_do_not_deadlock() {
        let pool = Pool::new(2);
        let total = AtomicUsize::new(0);
        pool.run(4, &|_| {
            pool.run(4, &|_| {
                total.fetch_add(1, Ordering::Relaxed);
            })
        });
        assert_eq!(total.load(Ordering::Relaxed), 16);
    }
}
