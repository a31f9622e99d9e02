//! Shim over the synchronization primitives, so the lock-free parts can be model-checked
//! with loom (`RUSTFLAGS="--cfg loom" cargo test --lib --release loom`).

// Every primitive is re-exported whether or not a module uses it in this configuration.
#![allow(unused_imports)]

#[cfg(loom)]
pub(crate) use loom::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize};
#[cfg(loom)]
pub(crate) use loom::sync::{Arc, Condvar, Mutex, MutexGuard};

#[cfg(not(loom))]
pub(crate) use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize};
#[cfg(not(loom))]
pub(crate) use std::sync::{Arc, Condvar, Mutex, MutexGuard};

pub(crate) use std::sync::atomic::Ordering;

/// A memory fence that loom sees (a `std` fence is invisible to it). `site` names the
/// fence, so that a loom mutation test can remove exactly this one and show that a model
/// then fails (see `mutation`); outside loom it is ignored.
#[inline(always)]
pub(crate) fn fence(order: Ordering, site: &'static str) {
    #[cfg(loom)]
    {
        if mutation::removed(site) {
            return;
        }
        loom::sync::atomic::fence(order);
    }
    #[cfg(not(loom))]
    {
        let _ = site;
        std::sync::atomic::fence(order);
    }
}

/// Loom mutation testing: run a model with one named fence removed, to prove a loom test
/// depends on it (a fence whose removal no test notices is either useless or untested).
#[cfg(loom)]
pub(crate) mod mutation {
    use std::cell::Cell;

    std::thread_local! {
        /// The fence removed on this thread, if any. Loom runs a model's threads on the
        /// thread that calls `loom::model`, so this reaches them all and no other test.
        static REMOVED: Cell<Option<&'static str>> = const { Cell::new(None) };
    }

    pub(crate) fn removed(site: &'static str) -> bool {
        REMOVED.with(|r| r.get() == Some(site))
    }

    /// Run `f` with the fence named `site` removed.
    pub(crate) fn without_fence<R>(site: &'static str, f: impl FnOnce() -> R) -> R {
        struct Restore;
        impl Drop for Restore {
            fn drop(&mut self) {
                REMOVED.with(|r| r.set(None));
            }
        }
        REMOVED.with(|r| r.set(Some(site)));
        let _restore = Restore;
        f()
    }
}

/// The bounded lock-free queue behind the pool's free list and the completion queue.
///
/// Outside loom it is `crossbeam_queue::ArrayQueue`. Loom cannot see inside crossbeam, so
/// under loom a mutex-protected deque with the same contract stands in: what loom checks
/// is the code *around* the queue (refcounts, the waiters handshake).
#[cfg(not(loom))]
pub(crate) type ArrayQueue<T> = crossbeam_queue::ArrayQueue<T>;

/// Loom stand-in for `crossbeam_queue::ArrayQueue` (see the non-loom alias).
#[cfg(loom)]
#[derive(Debug)]
pub(crate) struct ArrayQueue<T>(Mutex<std::collections::VecDeque<T>>, usize);

#[cfg(loom)]
impl<T> ArrayQueue<T> {
    pub(crate) fn new(cap: usize) -> Self {
        ArrayQueue(
            Mutex::new(std::collections::VecDeque::with_capacity(cap)),
            cap,
        )
    }
    pub(crate) fn push(&self, v: T) -> Result<(), T> {
        let mut q = self.0.lock().unwrap();
        if q.len() == self.1 {
            return Err(v);
        }
        q.push_back(v);
        Ok(())
    }
    pub(crate) fn pop(&self) -> Option<T> {
        self.0.lock().unwrap().pop_front()
    }
    pub(crate) fn len(&self) -> usize {
        self.0.lock().unwrap().len()
    }
}

/// Thread parking for the pool's blocking waiters. Loom has no timed park: under loom a
/// timed park waits until unparked (the models use no timeouts).
#[cfg(loom)]
pub(crate) use loom::thread::{current, park, Thread};
#[cfg(not(loom))]
pub(crate) use std::thread::{current, park, Thread};

/// Park the current thread for at most `d` (see above for loom).
pub(crate) fn park_timeout(d: std::time::Duration) {
    #[cfg(loom)]
    {
        let _ = d;
        loom::thread::park();
    }
    #[cfg(not(loom))]
    std::thread::park_timeout(d);
}
