//! Helper threads for fork-joins a few microseconds apart.
//!
//! The simulator splits each look-ahead window (a few hundred events, a
//! millisecond of work or less) between threads, up to ~500,000 windows per
//! virtual minute at a million nodes. A pool whose idle threads go to sleep
//! (rayon's) spends longer waking a thread than the window takes: measured
//! at 100k clients, two threads ran the windows no faster than one. The
//! crew's helpers instead wait for work by spinning (yielding after a while
//! without any), so a posted share starts within a fraction of a
//! microsecond. Made for a run that owns the machine's cores.

use std::any::Any;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

/// Spins before an idle helper sleeps (~1 ms): in a large run the next
/// window comes sooner, and a sleeping helper takes long to wake.
const SPINS_BEFORE_SLEEP: u32 = 1 << 14;
/// Spins between yields of a caller waiting for a helper (~10 µs).
const SPINS_BEFORE_YIELD: u32 = 1 << 8;

type Job = Box<dyn FnOnce() + Send + 'static>;

struct Slot {
    job: Mutex<Option<Job>>,
    /// Jobs posted to this helper, and jobs it finished.
    posted: AtomicU64,
    done: AtomicU64,
    /// The helper is (about to be) parked: a post must wake it.
    sleeping: AtomicBool,
    panic: Mutex<Option<Box<dyn Any + Send>>>,
}

struct Shared {
    slots: Vec<Slot>,
    stop: AtomicBool,
}

pub struct Crew {
    shared: Arc<Shared>,
    helpers: Vec<JoinHandle<()>>,
}

impl Crew {
    /// A crew of `threads` (the calling thread and `threads - 1` helpers).
    pub fn new(threads: usize) -> Crew {
        let helpers = threads.saturating_sub(1);
        let shared = Arc::new(Shared {
            slots: (0..helpers)
                .map(|_| Slot {
                    job: Mutex::new(None),
                    posted: AtomicU64::new(0),
                    done: AtomicU64::new(0),
                    sleeping: AtomicBool::new(false),
                    panic: Mutex::new(None),
                })
                .collect(),
            stop: AtomicBool::new(false),
        });
        let helpers = (0..helpers)
            .map(|i| {
                let shared = Arc::clone(&shared);
                std::thread::Builder::new()
                    .name(format!("sim-crew-{}", i + 1))
                    .spawn(move || helper(&shared, i))
                    .expect("the simulator's helper thread starts")
            })
            .collect();
        Crew { shared, helpers }
    }

    /// Threads, the caller's included.
    pub fn threads(&self) -> usize {
        self.shared.slots.len() + 1
    }

    /// Runs `work(item)` for every item at once: the first on the calling
    /// thread, the others on helpers (at most [`Crew::threads`] items).
    /// Returns when all are done; a panic in any is raised here.
    pub fn run<T: Send>(&self, items: Vec<T>, work: &(dyn Fn(T) + Sync)) {
        assert!(items.len() <= self.threads(), "more items than threads");
        let mut items = items.into_iter();
        let Some(first) = items.next() else {
            return;
        };
        // Every posted job is finished or dropped before this returns, even
        // when this thread's own work panics: the jobs borrow from the
        // caller's stack.
        struct Wait<'a> {
            shared: &'a Shared,
            posted: usize,
            /// Helpers whose job ran here: nothing to wait for.
            taken_back: u64,
        }
        impl Wait<'_> {
            /// A job its helper has not picked up yet runs here instead (a
            /// helper without a core of its own may be far from starting
            /// it: more threads than free cores); then waits for the rest.
            fn finish(mut self) {
                for (i, slot) in self.shared.slots[..self.posted].iter().enumerate() {
                    let job = slot.job.lock().expect("not poisoned").take();
                    if let Some(job) = job {
                        self.taken_back |= 1 << i;
                        if let Err(panic) = catch_unwind(AssertUnwindSafe(job)) {
                            *slot.panic.lock().expect("not poisoned") = Some(panic);
                        }
                    }
                }
                self.wait_for_helpers();
                self.posted = 0;
            }

            /// Waits until every helper that took its job is done with it
            /// (it may still be catching up with jobs it never saw: their
            /// turns only count up).
            fn wait_for_helpers(&self) {
                for (i, slot) in self.shared.slots[..self.posted].iter().enumerate() {
                    if self.taken_back & (1 << i) != 0 {
                        continue;
                    }
                    let target = slot.posted.load(Ordering::Relaxed);
                    let mut spins = 0u32;
                    while slot.done.load(Ordering::Acquire) < target {
                        spins += 1;
                        if spins.is_multiple_of(SPINS_BEFORE_YIELD) {
                            std::thread::yield_now();
                        } else {
                            std::hint::spin_loop();
                        }
                    }
                }
            }
        }
        impl Drop for Wait<'_> {
            fn drop(&mut self) {
                // Unwinding: jobs not started are dropped unrun.
                for (i, slot) in self.shared.slots[..self.posted].iter().enumerate() {
                    if let Ok(mut job) = slot.job.lock() {
                        if job.take().is_some() {
                            self.taken_back |= 1 << i;
                        }
                    }
                }
                self.wait_for_helpers();
            }
        }
        let mut wait = Wait {
            shared: &self.shared,
            posted: 0,
            taken_back: 0,
        };
        for ((slot, helper), item) in self.shared.slots.iter().zip(&self.helpers).zip(items) {
            let job: Box<dyn FnOnce() + Send + '_> = Box::new(move || work(item));
            // SAFETY: the job borrows `work` and what `item` borrows, which
            // live until this function returns; `wait` does not let it
            // return (nor unwind) before the helper has finished the job.
            let job: Job = unsafe { std::mem::transmute(job) };
            *slot.job.lock().expect("not poisoned") = Some(job);
            slot.posted.fetch_add(1, Ordering::SeqCst);
            if slot.sleeping.load(Ordering::SeqCst) {
                helper.thread().unpark();
            }
            wait.posted += 1;
        }
        work(first);
        wait.finish();
        for slot in &self.shared.slots {
            // (Taken out first: unwinding with the guard held would poison it.)
            let panic = slot.panic.lock().expect("not poisoned").take();
            if let Some(panic) = panic {
                resume_unwind(panic);
            }
        }
    }
}

fn helper(shared: &Shared, index: usize) {
    let slot = &shared.slots[index];
    let mut seen = 0;
    loop {
        let mut spins = 0u32;
        while slot.posted.load(Ordering::Acquire) == seen {
            if shared.stop.load(Ordering::Acquire) {
                return;
            }
            if spins < SPINS_BEFORE_SLEEP {
                spins += 1;
                std::hint::spin_loop();
                continue;
            }
            // Announce the sleep, then look once more: a post either sees
            // `sleeping` and unparks, or came before and is seen here.
            slot.sleeping.store(true, Ordering::SeqCst);
            if slot.posted.load(Ordering::SeqCst) == seen && !shared.stop.load(Ordering::SeqCst) {
                std::thread::park();
            }
            slot.sleeping.store(false, Ordering::SeqCst);
            spins = 0;
        }
        seen += 1;
        let job = slot.job.lock().expect("not poisoned").take();
        if let Some(job) = job {
            if let Err(panic) = catch_unwind(AssertUnwindSafe(job)) {
                *slot.panic.lock().expect("not poisoned") = Some(panic);
            }
        }
        slot.done.store(seen, Ordering::Release);
    }
}

impl Drop for Crew {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        for helper in self.helpers.drain(..) {
            helper.thread().unpark();
            let _ = helper.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    #[test]
    fn every_item_runs_once_and_borrows_are_returned() {
        let crew = Crew::new(3);
        let mut totals = vec![0u64; 3];
        for round in 0..1_000u64 {
            let items: Vec<(usize, &mut u64)> = totals.iter_mut().enumerate().collect();
            crew.run(items, &|(i, total)| *total += round * (i as u64 + 1));
        }
        let sum: u64 = (0..1_000).sum();
        assert_eq!(totals, vec![sum, 2 * sum, 3 * sum]);
    }

    #[test]
    fn a_panic_on_a_helper_reaches_the_caller_and_the_crew_goes_on() {
        let crew = Crew::new(2);
        let ran = AtomicUsize::new(0);
        let result = catch_unwind(AssertUnwindSafe(|| {
            crew.run(vec![0, 1], &|i| {
                ran.fetch_add(1, Ordering::SeqCst);
                assert!(i == 0, "the helper's item fails");
            })
        }));
        assert!(result.is_err());
        assert_eq!(ran.load(Ordering::SeqCst), 2);
        crew.run(vec![0, 1], &|_| {
            ran.fetch_add(1, Ordering::SeqCst);
        });
        assert_eq!(ran.load(Ordering::SeqCst), 4);
    }
}
