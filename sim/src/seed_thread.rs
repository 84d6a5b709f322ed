//! The threads seeds run on: a large stack, kept from one seed to the next.
//!
//! A seed's futures are deep (more so in debug builds), so a seed never runs
//! on a small stack: a test thread has 2 MiB. A campaign's job threads are
//! seed threads themselves (`spawn_scoped`) and run their seeds in place;
//! any other caller hands its seeds to a seed thread of its own, kept for
//! its next seeds. Neither starts a thread per seed: that cost about a third
//! of a small seed's time (a new allocator heap warmed up page by page, then
//! torn down; two thread wake-ups, slow on a virtual machine).
//!
//! Keeping it is safe only while nothing a thread keeps between seeds changes
//! a seed's run (the standard library's per-thread hash keys advance with
//! every hash map a seed builds; dependencies keep thread-local caches). That
//! is tested, not assumed: a seed gives the same trace alone and after other
//! seeds (`tests/sim_campaign.rs`), and a campaign the same figures with one
//! job or two. A seed that panicked retires its thread: whatever the panic
//! left half-done stays with it.

use std::cell::{Cell, RefCell};
use std::sync::mpsc;

/// Stack of the thread a seed runs on.
pub const SEED_THREAD_STACK_BYTES: usize = 16 << 20;

/// Work for the thread; returns whether the thread may take more.
type Job = Box<dyn FnOnce() -> bool + Send>;

struct SeedThread {
    jobs: mpsc::Sender<Job>,
}

thread_local! {
    /// The seed thread this thread hands its seeds to.
    static SEED_THREAD: RefCell<Option<SeedThread>> = const { RefCell::new(None) };
    /// This thread is a seed thread and no seed has panicked on it.
    static RUNS_SEEDS: Cell<bool> = const { Cell::new(false) };
}

/// Spawns a seed thread in `scope`: `f` runs there, and so does every seed it runs.
pub fn spawn_scoped<'scope, T: Send + 'scope>(
    scope: &'scope std::thread::Scope<'scope, '_>,
    f: impl FnOnce() -> T + Send + 'scope,
) -> std::io::Result<std::thread::ScopedJoinHandle<'scope, T>> {
    #[allow(clippy::disallowed_methods)] // a campaign's job thread, outside any simulated node
    std::thread::Builder::new()
        .stack_size(SEED_THREAD_STACK_BYTES)
        .spawn_scoped(scope, move || {
            RUNS_SEEDS.set(true);
            f()
        })
}

impl SeedThread {
    fn spawn() -> Option<SeedThread> {
        let (jobs, queue) = mpsc::channel::<Job>();
        let mut builder = std::thread::Builder::new().stack_size(SEED_THREAD_STACK_BYTES);
        if let Some(name) = std::thread::current().name() {
            // The report's reproduction line names the test from its thread.
            builder = builder.name(name.to_string());
        }
        #[allow(clippy::disallowed_methods)] // seeds' own OS thread, outside any simulated node
        builder
            .spawn(move || {
                RUNS_SEEDS.set(true);
                while let Ok(job) = queue.recv() {
                    if !job() {
                        break;
                    }
                }
            })
            .ok()?;
        Some(SeedThread { jobs })
    }
}

/// Runs `job` on a seed thread (this one if it is one) and returns its
/// value; `job` also says whether the thread stays usable (false after a
/// panic: this thread's later seeds then go to a fresh seed thread). `None`
/// if the thread could not be started or died.
pub fn run<T: Send + 'static>(job: impl FnOnce() -> (T, bool) + Send + 'static) -> Option<T> {
    if RUNS_SEEDS.get() {
        let (value, keep) = job();
        RUNS_SEEDS.set(keep);
        return Some(value);
    }
    SEED_THREAD.with(|slot| {
        let mut slot = slot.borrow_mut();
        let thread = match slot.take() {
            Some(thread) => thread,
            None => SeedThread::spawn()?,
        };
        let (reply, value) = mpsc::sync_channel(1);
        let job: Job = Box::new(move || {
            let (value, keep) = job();
            let _ = reply.send((value, keep));
            keep
        });
        thread.jobs.send(job).ok()?;
        let (value, keep) = value.recv().ok()?;
        if keep {
            *slot = Some(thread);
        }
        Some(value)
    })
}

#[cfg(test)]
mod tests {
    use super::run;

    fn thread_id() -> (std::thread::ThreadId, bool) {
        (std::thread::current().id(), true)
    }

    #[test]
    fn seeds_of_one_caller_share_a_thread_that_is_not_the_caller() {
        let first = run(thread_id).expect("ran");
        let second = run(thread_id).expect("ran");
        assert_eq!(first, second);
        assert_ne!(first, std::thread::current().id());
    }

    #[test]
    fn a_job_that_gives_up_its_thread_gets_a_fresh_one_next_time() {
        let first = run(|| (std::thread::current().id(), false)).expect("ran");
        let second = run(thread_id).expect("ran");
        assert_ne!(first, second);
    }

    #[test]
    fn a_seed_thread_runs_its_seeds_in_place_until_one_gives_it_up() {
        std::thread::scope(|scope| {
            let job_thread = super::spawn_scoped(scope, || {
                let here = std::thread::current().id();
                assert_eq!(run(thread_id), Some(here));
                assert_eq!(run(|| (std::thread::current().id(), false)), Some(here));
                let after = run(thread_id).expect("ran");
                assert_ne!(after, here, "after a panic, seeds leave this thread");
                assert_eq!(run(thread_id), Some(after));
            });
            job_thread.expect("spawned").join().expect("joined");
        });
    }

    #[test]
    fn a_job_that_kills_its_thread_gives_none_and_the_next_job_runs() {
        let died = run(|| -> (u8, bool) { std::panic::resume_unwind(Box::new("boom")) });
        assert_eq!(died, None);
        assert_eq!(run(|| (7, true)), Some(7));
    }
}
