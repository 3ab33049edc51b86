//! The helper threads a large commit or frame shares its work with.
//!
//! They are started once, on first use, and park while idle: a parked thread wakes in tens
//! of microseconds, where a thread spawned for the work can start milliseconds late on a busy
//! or virtualised machine (measured in docs/benchmarks.md). The pool is atoma's own, so Bevy's
//! task pools and the tokio runtime never wait behind it, nor it behind them.

use std::any::Any;
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::sync::OnceLock;

use bevy_tasks::{TaskPool, TaskPoolBuilder};

/// How many threads a commit's index updates (and a large frame's reducer) may use.
pub(crate) fn parallelism() -> usize {
    static N: OnceLock<usize> = OnceLock::new();
    *N.get_or_init(|| std::thread::available_parallelism().map_or(1, usize::from))
}

/// The pool: one thread fewer than the machine has (the calling thread works too); none on a
/// single core, or when its threads cannot start.
fn pool() -> Option<&'static TaskPool> {
    static POOL: OnceLock<Option<TaskPool>> = OnceLock::new();
    POOL.get_or_init(|| {
        let helpers = parallelism().saturating_sub(1);
        // The builder panics when a thread cannot be spawned; the work then runs here.
        (helpers > 0)
            .then(|| {
                catch_unwind(|| TaskPoolBuilder::new().num_threads(helpers).thread_name("atoma-helper".into()).build())
                    .ok()
            })
            .flatten()
    })
    .as_ref()
}

/// Runs `task` on `n` helper threads while this thread runs `here`, and returns `here`'s
/// result once every copy of `task` has finished. A copy no helper has taken by then runs on
/// this thread, so `task` must cope with running after `here` (or not at all in parallel):
/// each use takes its work from shared state. Without helpers everything runs here, `here`
/// first. A panic anywhere is raised again here, after all the work has stopped.
pub(crate) fn fork<R>(n: usize, task: impl Fn() + Sync, here: impl FnOnce() -> R) -> R {
    let Some(pool) = pool().filter(|_| n > 0) else {
        let r = here();
        (0..n).for_each(|_| task());
        return r;
    };
    let task = &task;
    let mut out = None;
    // Nothing may unwind out of the scope while a helper still borrows from this frame, so
    // panics are caught on both sides and raised once the scope has joined everything.
    let panics: Vec<Option<Box<dyn Any + Send>>> = pool.scope(|s| {
        for _ in 0..n {
            s.spawn(async move { catch_unwind(AssertUnwindSafe(task)).err() });
        }
        out = Some(catch_unwind(AssertUnwindSafe(here)));
    });
    if let Some(panic) = panics.into_iter().flatten().next() {
        resume_unwind(panic);
    }
    match out {
        Some(Ok(r)) => r,
        Some(Err(panic)) => resume_unwind(panic),
        None => unreachable!("the scope runs its closure"),
    }
}

/// Runs `a` on a helper thread while this thread runs `b`, when `parallel` and a helper is
/// there; otherwise one after the other on this thread. A panic in `a` is raised again here,
/// as it would have been had `a` run here.
pub(crate) fn beside<A: Send, B>(parallel: bool, a: impl FnOnce() -> A + Send, b: impl FnOnce() -> B) -> (A, B) {
    if !parallel {
        let rb = b();
        return (a(), rb);
    }
    // `a` is taken once, by a helper or, if none took it, by this thread.
    let slot = std::sync::Mutex::new((Some(a), None));
    let rb = fork(
        1,
        || {
            let mut s = slot.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(a) = s.0.take() {
                s.1 = Some(a());
            }
        },
        b,
    );
    match slot.into_inner().unwrap_or_else(|p| p.into_inner()).1 {
        Some(ra) => (ra, rb),
        None => unreachable!("`fork` runs the task before it returns"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn fork_runs_every_copy_and_returns_here() {
        let ran = AtomicUsize::new(0);
        let r = fork(
            3,
            || {
                ran.fetch_add(1, Ordering::SeqCst);
            },
            || 7,
        );
        assert_eq!((r, ran.load(Ordering::SeqCst)), (7, 3));
    }

    #[test]
    fn a_panic_on_a_helper_is_raised_here_after_the_work_stops() {
        let done = AtomicUsize::new(0);
        let caught = catch_unwind(AssertUnwindSafe(|| {
            fork(1, || panic!("in a helper"), || done.fetch_add(1, Ordering::SeqCst))
        }));
        assert!(caught.is_err());
        assert_eq!(done.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn beside_returns_both_results_either_way() {
        for parallel in [false, true] {
            let (a, b) = beside(parallel, || String::from("a"), || 2);
            assert_eq!((a.as_str(), b), ("a", 2));
        }
    }
}
