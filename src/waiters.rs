//! `Waiters`: the blocking slow path of the buffer pool (waiting for a free slot); its wait
//! shape ([`spin`], then [`sleep_until`]) is shared with the completion queue's sleepers.
//!
//! The fast paths stay lock-free: a producer (a slot returned) pays one fence and one
//! relaxed load, and takes the lock only when a consumer is actually asleep. A consumer
//! spins briefly (a producer mid-burst refills within microseconds, far sooner than a
//! futex round trip), then registers as a waiter and sleeps.

use std::time::{Duration, Instant};

use crate::sync::{fence, AtomicBool, AtomicUsize, Condvar, Mutex, MutexGuard, Ordering};

/// The instant `timeout` from now, or `None` ("never") when that is past what `Instant`
/// can represent (e.g. `Duration::MAX`): a huge timeout waits forever, never panics.
pub(crate) fn deadline_after(timeout: Duration) -> Option<Instant> {
    Instant::now().checked_add(timeout)
}

/// Sleepers waiting for some lock-free structure to become non-empty.
#[derive(Debug)]
pub(crate) struct Waiters {
    /// Consumers registered (asleep or about to sleep). Producers notify only when it is
    /// non-zero.
    count: AtomicUsize,
    lock: Mutex<()>,
    cv: Condvar,
}

impl Waiters {
    pub(crate) fn new() -> Waiters {
        Waiters {
            count: AtomicUsize::new(0),
            lock: Mutex::new(()),
            cv: Condvar::new(),
        }
    }

    /// Call after making something available (pushing an item, returning a slot).
    pub(crate) fn notify(&self) {
        // SeqCst fence pairs with the one in `wait_until`: either this load sees the
        // consumer's registration (and we notify under the lock), or the consumer's
        // re-check after registering sees what we just made available. No lost wake-up.
        fence(Ordering::SeqCst, "waiters.notify");
        if self.count.load(Ordering::Relaxed) > 0 {
            let _g = self.lock.lock().unwrap_or_else(|e| e.into_inner());
            self.cv.notify_all();
        }
    }

    /// Whether a consumer is registered (asleep or about to sleep) now. A Relaxed load with
    /// no fence: a hint for a producer choosing where to put something, never a substitute
    /// for [`notify`](Self::notify)'s handshake.
    pub(crate) fn has_waiters(&self) -> bool {
        self.count.load(Ordering::Relaxed) > 0
    }

    /// Run `take` until it yields something or `deadline` passes (never, if `None`).
    pub(crate) fn wait_until<T>(
        &self,
        deadline: Option<Instant>,
        mut take: impl FnMut() -> Option<T>,
    ) -> Option<T> {
        if let Some(v) = spin(&mut take) {
            return Some(v);
        }
        // Under loom, where `spin` does nothing, one try stands for it.
        #[cfg(loom)]
        if let Some(v) = take() {
            return Some(v);
        }
        let g = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        // Relaxed increment + SeqCst fence: see `notify`.
        self.count.fetch_add(1, Ordering::Relaxed);
        fence(Ordering::SeqCst, "waiters.wait_until");
        let (g, got) = sleep_until(&self.cv, g, deadline, |_| take());
        // Relaxed: the count only gates notifications; a stale non-zero value costs one
        // spurious notify.
        self.count.fetch_sub(1, Ordering::Relaxed);
        drop(g);
        got
    }
}

/// Spin, then yield, running `take` until it yields something or the backoff is done: a
/// producer mid-burst refills within microseconds, far sooner than a futex round trip.
/// (Skipped under loom, where it would only multiply the states to explore.)
pub(crate) fn spin<T>(take: &mut impl FnMut() -> Option<T>) -> Option<T> {
    #[cfg(not(loom))]
    {
        let backoff = crossbeam_utils::Backoff::new();
        while !backoff.is_completed() {
            if let Some(v) = take() {
                return Some(v);
            }
            backoff.snooze();
        }
    }
    #[cfg(loom)]
    let _ = take;
    None
}

/// Holding `guard`'s lock, run `step` (given the guarded value) until it yields something,
/// sleeping on `cv` between tries, or until `deadline` passes (never, if `None`). Returns
/// the lock, still held, with what `step` yielded.
pub(crate) fn sleep_until<'a, G, T>(
    cv: &Condvar,
    mut guard: MutexGuard<'a, G>,
    deadline: Option<Instant>,
    mut step: impl FnMut(&G) -> Option<T>,
) -> (MutexGuard<'a, G>, Option<T>) {
    loop {
        if let Some(v) = step(&guard) {
            return (guard, Some(v));
        }
        guard = match deadline {
            None => cv.wait(guard).unwrap_or_else(|e| e.into_inner()),
            Some(d) => {
                let now = Instant::now();
                if now >= d {
                    return (guard, None);
                }
                cv.wait_timeout(guard, d - now)
                    .unwrap_or_else(|e| e.into_inner())
                    .0
            }
        };
    }
}

/// The Dekker handshake of a thread that sleeps somewhere the [`Waiters`] condvar cannot
/// reach (in `io_uring_enter`, woken through the ring's eventfd) with the threads that
/// hand it work through lock-free queues.
///
/// The sleeper [`announce`](SleepFlag::announce)s, re-checks its queues, sleeps if they
/// are empty and [`clear`](SleepFlag::clear)s on waking; a waker publishes its work and
/// then asks [`must_wake`](SleepFlag::must_wake). Either the sleeper's re-check sees the
/// work, or the waker sees the announcement and wakes it: never neither.
#[derive(Debug, Default)]
pub(crate) struct SleepFlag {
    /// The sleeper is blocked, or about to block, and has not been woken since.
    sleeping: AtomicBool,
}

impl SleepFlag {
    /// The sleeper, before its last check for work. Relaxed store + SeqCst fence: the
    /// fence pairs with the one in `must_wake` (as in `Waiters`).
    pub(crate) fn announce(&self) {
        self.sleeping.store(true, Ordering::Relaxed);
        fence(Ordering::SeqCst, "sleep_flag.announce");
    }

    /// The sleeper, after waking (or deciding not to sleep). Relaxed: a stale `true` only
    /// costs a waker one spurious wake-up.
    pub(crate) fn clear(&self) {
        self.sleeping.store(false, Ordering::Relaxed);
    }

    /// A waker, after publishing its work: whether it must wake the sleeper. One waker per
    /// announcement gets `true` (the swap), so a burst of wakers signals once.
    pub(crate) fn must_wake(&self) -> bool {
        // SeqCst fence: the other half of `announce`'s. Relaxed load and swap: the fences
        // order them; the work itself travels through its own queue.
        fence(Ordering::SeqCst, "sleep_flag.must_wake");
        self.sleeping.load(Ordering::Relaxed) && self.sleeping.swap(false, Ordering::Relaxed)
    }
}

#[cfg(all(test, loom))]
mod loom_tests;
