//! `Waiters`: the blocking slow path shared by the buffer pool (waiting for a free slot)
//! and the completion queue (waiting for an item).
//!
//! The fast paths stay lock-free: a producer (a slot returned, an item pushed) pays one
//! fence and one relaxed load, and takes the lock only when a consumer is actually
//! asleep. A consumer spins briefly (a producer mid-burst refills within microseconds,
//! far sooner than a futex round trip), then registers as a waiter and sleeps.

use std::time::{Duration, Instant};

use crate::sync::{AtomicUsize, Condvar, Mutex, Ordering};

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
        std::sync::atomic::fence(Ordering::SeqCst);
        if self.count.load(Ordering::Relaxed) > 0 {
            let _g = self.lock.lock().unwrap_or_else(|e| e.into_inner());
            self.cv.notify_all();
        }
    }

    /// Run `take` until it yields something or `deadline` passes (never, if `None`).
    pub(crate) fn wait_until<T>(
        &self,
        deadline: Option<Instant>,
        mut take: impl FnMut() -> Option<T>,
    ) -> Option<T> {
        // Spin, then yield, before sleeping. (Skipped under loom, where it would only
        // multiply the states to explore.)
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
        if let Some(v) = take() {
            return Some(v);
        }
        let mut g = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        // Relaxed increment + SeqCst fence: see `notify`.
        self.count.fetch_add(1, Ordering::Relaxed);
        std::sync::atomic::fence(Ordering::SeqCst);
        let got = loop {
            if let Some(v) = take() {
                break Some(v);
            }
            match deadline {
                None => g = self.cv.wait(g).unwrap_or_else(|e| e.into_inner()),
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        break None;
                    }
                    g = self
                        .cv
                        .wait_timeout(g, d - now)
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                }
            }
        };
        // Relaxed: the count only gates notifications; a stale non-zero value costs one
        // spurious notify.
        self.count.fetch_sub(1, Ordering::Relaxed);
        drop(g);
        got
    }
}
