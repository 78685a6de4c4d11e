//! A session's worker threads: created with the session, parked between pushes, and handed
//! one job at a time. Running a job allocates nothing and creates no thread: the job is a
//! borrowed closure, published under a mutex and awaited on condition variables, after a
//! short poll ([`SPIN`]) that saves the wake-up when the next job or the last worker is near;
//! a thread waiting inside a job (the caller for the workers, [`Arrivals`]) also yields its
//! core for a while ([`YIELD`]) before it sleeps.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};

/// A job: called once per worker with the worker's index (`1..workers`; the caller runs 0).
type Job<'a> = &'a (dyn Fn(usize) + Sync);

/// A job whose lifetime was erased to cross into the worker threads.
#[derive(Clone, Copy)]
struct ErasedJob(*const (dyn Fn(usize) + Sync + 'static));

// SAFETY: the pointee is `Sync` (callable from any thread through a shared reference), and
// `Workers::run` keeps it alive until every worker has finished calling it.
unsafe impl Send for ErasedJob {}

struct State {
    /// Incremented for every job; a worker runs each generation once.
    generation: u64,
    job: Option<ErasedJob>,
    /// Workers that have not finished the current job.
    pending: usize,
    /// Whether a worker's call of the current job panicked.
    panicked: bool,
    shutdown: bool,
}

struct Shared {
    state: Mutex<State>,
    start: Condvar,
    done: Condvar,
    /// `state.generation`, for waiting without the lock (set under it).
    generation: AtomicU64,
    /// `state.pending`, for waiting without the lock (set under it).
    pending: AtomicUsize,
    /// Workers polling for the next job (not running one, not asleep).
    polling: AtomicUsize,
}

/// How long a worker waiting for the next job, and the caller waiting for the workers, poll
/// before sleeping on the condition variable. Waking a sleeping thread is slow on the virtual
/// machines measured: a C ping-pong of two threads pinned to two cores lost 96-214 µs per
/// round to the two wake-ups, 5-11 µs when both sides polled for up to 100 µs first. A push of
/// 256 tiles on 2 threads takes about 2 ms, so that was 5-10 % of it. Polling costs at most
/// this much of a core per round of a push (a push of many blocks runs several rounds).
pub(crate) const SPIN: Duration = Duration::from_micros(100);

/// Calls `ready` until it returns true or `limit` has passed (the caller then checks under
/// the lock either way).
fn spin_until(limit: Duration, ready: impl Fn() -> bool) {
    let start = Instant::now();
    while start.elapsed() < limit {
        for _ in 0..64 {
            if ready() {
                return;
            }
            std::hint::spin_loop();
        }
    }
}

/// How long a thread waiting inside a job (for the other threads of a split block, or for the
/// workers to finish) gives its core to other threads ([`std::thread::yield_now`]) after
/// polling for [`SPIN`], before it sleeps. Sleeping there is what hurts: the woken thread is
/// often placed on its waker's core, where it waits behind the waker while the other core
/// idles, and every later wait then outlasts the poll. Measured on a 2-core virtual machine,
/// strips of 1 tile split between 2 threads, the variants alternated in one process (the mean
/// push, median of 20-30 rounds, three runs): 169, 100 and 32 µs when sleeping after the poll,
/// 48, 39 and 31 µs with 2 ms of yielding first (one thread: 92-97 µs).
const YIELD: Duration = Duration::from_millis(2);

/// Polls `ready` for up to [`SPIN`], then yields the core between calls up to [`YIELD`]
/// (the caller then checks under the lock either way).
fn poll_then_yield(ready: impl Fn() -> bool) {
    spin_until(SPIN, &ready);
    let start = Instant::now();
    while !ready() && start.elapsed() < YIELD {
        std::thread::yield_now();
    }
}

/// A count of the threads of a job that have reached a point in it, for others to wait on:
/// [`Arrivals::wait_for`] polls for up to [`SPIN`], yields its core for up to [`YIELD`], then
/// sleeps until the count is reached, so a thread waiting on one that was descheduled gives
/// its core back. Allocation-free (it lives on the stack of the push that uses it).
pub(crate) struct Arrivals {
    count: AtomicUsize,
    /// Threads asleep in [`Arrivals::wait_for`]: an arrival takes the lock and wakes them
    /// only if there are any.
    sleepers: AtomicUsize,
    lock: Mutex<()>,
    reached: Condvar,
}

impl Arrivals {
    /// No arrivals yet.
    pub const fn new() -> Arrivals {
        Arrivals {
            count: AtomicUsize::new(0),
            sleepers: AtomicUsize::new(0),
            lock: Mutex::new(()),
            reached: Condvar::new(),
        }
    }

    /// Counts this thread in: everything it wrote before is visible to a thread whose
    /// [`Arrivals::wait_for`] has returned.
    pub fn arrive(&self) {
        // SeqCst here and in `wait_for` (the count after announcing a sleeper): either this
        // thread sees the sleeper and wakes it under the lock, or the sleeper sees this count.
        self.count.fetch_add(1, Ordering::SeqCst);
        if self.sleepers.load(Ordering::SeqCst) > 0 {
            drop(self.lock.lock().unwrap_or_else(|e| e.into_inner()));
            self.reached.notify_all();
        }
    }

    /// Returns once `threads` arrivals were counted.
    pub fn wait_for(&self, threads: usize) {
        poll_then_yield(|| self.count.load(Ordering::Acquire) >= threads);
        if self.count.load(Ordering::Acquire) >= threads {
            return;
        }
        let mut guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        self.sleepers.fetch_add(1, Ordering::SeqCst);
        while self.count.load(Ordering::SeqCst) < threads {
            guard = self.reached.wait(guard).unwrap_or_else(|e| e.into_inner());
        }
        self.sleepers.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A worker never panics while holding the lock (jobs run unlocked, inside
        // `catch_unwind`), so a poisoned lock still holds consistent state.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// `threads - 1` parked worker threads (the session's own thread is worker 0). A single
/// thread needs nothing: no allocation at all (sessions in a caller's buffer rely on it).
pub(crate) struct Workers {
    shared: Option<Arc<Shared>>,
    handles: Vec<JoinHandle<()>>,
}

impl Workers {
    /// Starts `threads - 1` workers (none for 1 thread).
    pub fn start(threads: usize) -> Result<Workers> {
        if threads <= 1 {
            return Ok(Workers {
                shared: None,
                handles: Vec::new(),
            });
        }
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                generation: 0,
                job: None,
                pending: 0,
                panicked: false,
                shutdown: false,
            }),
            start: Condvar::new(),
            done: Condvar::new(),
            generation: AtomicU64::new(0),
            pending: AtomicUsize::new(0),
            polling: AtomicUsize::new(0),
        });
        let mut workers = Workers {
            shared: Some(Arc::clone(&shared)),
            handles: Vec::with_capacity(threads - 1),
        };
        for index in 1..threads {
            let shared = Arc::clone(&shared);
            let handle = std::thread::Builder::new()
                .name(format!("msclam-worker-{index}"))
                .spawn(move || worker_loop(&shared, index))
                .map_err(|e| {
                    Error::invalid_argument(format!("cannot start worker thread {index}: {e}"))
                })?;
            workers.handles.push(handle);
        }
        // A first, empty job: whatever a thread sets up lazily on its first wait and wake-up
        // happens now, not in the first push.
        workers.run(&|_| {})?;
        Ok(workers)
    }

    /// Number of threads a job runs on, the caller's included.
    pub fn threads(&self) -> usize {
        self.handles.len() + 1
    }

    /// Whether every worker is polling for the next job right now (it finished its last one
    /// less than [`SPIN`] ago): a job started now reaches them without a wake-up. False with
    /// one thread.
    pub fn polling(&self) -> bool {
        self.shared.as_ref().is_some_and(|shared| {
            shared.polling.load(Ordering::Acquire) == self.handles.len() && !self.handles.is_empty()
        })
    }

    /// Calls `job(i)` for every worker `i` at once (`i = 0` on this thread) and returns when
    /// all calls have returned. Errors if a call panicked (after all have returned). `&mut`:
    /// one job at a time.
    pub fn run(&mut self, job: Job<'_>) -> Result<()> {
        let shared = match &self.shared {
            Some(shared) if !self.handles.is_empty() => shared,
            _ => {
                job(0);
                return Ok(());
            }
        };
        // SAFETY: only the lifetime is erased; this function does not return before `pending`
        // is back to 0, i.e. before every worker has finished with the job (a worker's panic
        // is caught and still counted), and it clears the job before returning.
        let erased: ErasedJob = ErasedJob(unsafe {
            std::mem::transmute::<Job<'_>, *const (dyn Fn(usize) + Sync + 'static)>(job)
        });
        {
            let mut state = shared.lock();
            state.generation += 1;
            state.job = Some(erased);
            state.pending = self.handles.len();
            state.panicked = false;
            shared.pending.store(state.pending, Ordering::Release);
            shared.generation.store(state.generation, Ordering::Release);
        }
        shared.start.notify_all();
        let mine = catch_unwind(AssertUnwindSafe(|| job(0)));
        poll_then_yield(|| shared.pending.load(Ordering::Acquire) == 0);
        let mut state = shared.lock();
        while state.pending > 0 {
            state = shared.done.wait(state).unwrap_or_else(|e| e.into_inner());
        }
        state.job = None;
        let panicked = state.panicked;
        drop(state);
        if let Err(payload) = mine {
            std::panic::resume_unwind(payload);
        }
        if panicked {
            return Err(Error::invalid_argument("a worker thread panicked"));
        }
        Ok(())
    }
}

fn worker_loop(shared: &Shared, index: usize) {
    let mut seen = 0u64;
    loop {
        shared.polling.fetch_add(1, Ordering::AcqRel);
        spin_until(SPIN, || shared.generation.load(Ordering::Acquire) != seen);
        shared.polling.fetch_sub(1, Ordering::AcqRel);
        let job = {
            let mut state = shared.lock();
            while state.generation == seen && !state.shutdown {
                state = shared.start.wait(state).unwrap_or_else(|e| e.into_inner());
            }
            if state.shutdown {
                return;
            }
            seen = state.generation;
            state.job
        };
        let ok = match job {
            // SAFETY: `Workers::run` keeps the job alive until this worker decrements
            // `pending` below.
            Some(ErasedJob(f)) => match catch_unwind(AssertUnwindSafe(|| unsafe { (*f)(index) })) {
                Ok(()) => true,
                Err(payload) => {
                    // Its destructor could panic again, outside any catch: leak it instead.
                    std::mem::forget(payload);
                    false
                }
            },
            None => true,
        };
        let mut state = shared.lock();
        state.panicked |= !ok;
        state.pending -= 1;
        shared.pending.store(state.pending, Ordering::Release);
        if state.pending == 0 {
            shared.done.notify_all();
        }
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        let Some(shared) = &self.shared else { return };
        shared.lock().shutdown = true;
        shared.start.notify_all();
        for handle in self.handles.drain(..) {
            let _ = handle.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn every_worker_runs_each_job_once() {
        let mut workers = Workers::start(3).unwrap();
        let calls: Vec<AtomicUsize> = (0..3).map(|_| AtomicUsize::new(0)).collect();
        for _ in 0..100 {
            workers
                .run(&|i| {
                    calls[i].fetch_add(1, Ordering::Relaxed);
                })
                .unwrap();
        }
        assert!(calls.iter().all(|c| c.load(Ordering::Relaxed) == 100));
    }

    #[test]
    fn arrivals_wake_a_waiter_that_went_to_sleep() {
        // The last arrival comes after the waiter's poll and yield (2.1 ms), so it sleeps.
        let arrivals = Arrivals::new();
        let written = AtomicUsize::new(0);
        std::thread::scope(|scope| {
            for t in 0..2 {
                let (arrivals, written) = (&arrivals, &written);
                scope.spawn(move || {
                    std::thread::sleep(Duration::from_millis(5 * t as u64));
                    written.fetch_add(1, Ordering::Relaxed);
                    arrivals.arrive();
                });
            }
            arrivals.wait_for(2);
            assert_eq!(written.load(Ordering::Relaxed), 2);
        });
        // Reached counts return at once.
        arrivals.wait_for(1);
    }

    #[test]
    fn a_panicking_worker_is_an_error_and_the_pool_survives() {
        let mut workers = Workers::start(2).unwrap();
        let err = workers
            .run(&|i| assert!(i != 1, "worker 1 fails"))
            .unwrap_err();
        assert!(err.to_string().contains("panicked"), "{err}");
        workers.run(&|_| {}).unwrap();
    }
}
