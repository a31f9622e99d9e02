//! `Waiters`: the slow path of the buffer pool (gets waiting for a free slot, blocking or
//! async), served oldest first by direct hand-off. Also the wait helpers [`spin`] (the
//! pool's blocking gets and the completion queue) and [`sleep_until`] (the queue's
//! sleepers), and the handshakes of threads that sleep where no `Waiters` queue can wake
//! them: [`SleepFlag`] (the reader's driver, woken only when it announced its sleep) and
//! [`AwakeFlag`] (a ring's driver loop, woken unless it announced it is spinning).
//!
//! The fast paths stay lock-free: a producer (a slot returned to the shared list) pays one
//! fence and one relaxed load, and takes the lock only when a consumer is actually
//! registered. A consumer registers with a way to wake it (a task's [`Waker`] or a parked
//! thread), re-checks, and is then *served*: the producer stores the item in the waiter's
//! entry and wakes it, so a woken waiter never has to race anyone for what it was given.

use std::collections::VecDeque;
use std::task::Waker;
use std::time::{Duration, Instant};

use crate::sync::{fence, AtomicBool, AtomicUsize, Condvar, Mutex, MutexGuard, Ordering, Thread};

/// The instant `timeout` from now, or `None` ("never") when that is past what `Instant`
/// can represent (e.g. `Duration::MAX`): a huge timeout waits forever, never panics.
pub(crate) fn deadline_after(timeout: Duration) -> Option<Instant> {
    Instant::now().checked_add(timeout)
}

/// How to wake a registered waiter.
#[derive(Debug)]
pub(crate) enum Wakeup {
    /// An async task, through the `Waker` of its latest poll.
    Task(Waker),
    /// A thread parked in a blocking wait.
    Thread(Thread),
}

impl Wakeup {
    /// Wake the waiter. Call it outside the queue's lock: a waker may run arbitrary code
    /// (an executor that polls inline would come straight back for the lock).
    pub(crate) fn wake(self) {
        match self {
            Wakeup::Task(w) => w.wake(),
            Wakeup::Thread(t) => t.unpark(),
        }
    }
}

/// One registered waiter.
#[derive(Debug)]
enum Entry<T> {
    /// In the queue, not served yet.
    Waiting(Wakeup),
    /// Served (out of the queue): the item waits for its owner to claim it.
    Served(T),
}

#[derive(Debug)]
struct Queue<T> {
    /// Every registered waiter, by key. A key stays valid until its owner removes the entry
    /// (`poll` that claims an item, or `cancel`), so no other waiter can reuse it.
    entries: slab::Slab<Entry<T>>,
    /// Keys of the `Waiting` entries, oldest first.
    order: VecDeque<usize>,
}

/// Consumers waiting for items a lock-free structure hands out (the pool: free slots),
/// served in registration order.
///
/// The handshake (no lost wake-up): a producer publishes an item (pushes it onto the
/// structure), then [`must_serve`](Self::must_serve) (a SeqCst fence, then a load of
/// `waiting`) and, if true, serves the queue from the structure. A consumer
/// [`register`](Self::register)s (a store of `waiting`, then a SeqCst fence), then serves
/// the queue from the structure itself. Either the producer's load sees the registration,
/// or the consumer's re-check after its fence sees the item (the two fences are ordered in
/// the single total order of SeqCst operations, and whichever comes second sees the
/// other side's store); either way the item reaches the queue's oldest waiter.
#[derive(Debug)]
pub(crate) struct Waiters<T> {
    /// Waiters in the queue, not yet served (`order.len()`). Written only under the lock;
    /// read without it as the producers' gate.
    waiting: AtomicUsize,
    queue: Mutex<Queue<T>>,
}

impl<T> Waiters<T> {
    pub(crate) fn new() -> Waiters<T> {
        Waiters {
            waiting: AtomicUsize::new(0),
            queue: Mutex::new(Queue {
                entries: slab::Slab::new(),
                order: VecDeque::new(),
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Queue<T>> {
        // A poisoned lock only means a waker panicked elsewhere; the queue is consistent
        // (no code under the lock panics).
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether a waiter is queued now. A Relaxed load with no fence: a hint for a
    /// producer choosing where to put something, never a substitute for
    /// [`must_serve`](Self::must_serve)'s handshake (or a fence pair of the caller's own).
    #[inline]
    pub(crate) fn has_waiters(&self) -> bool {
        self.waiting.load(Ordering::Relaxed) > 0
    }

    /// Waiters queued now (a snapshot, for tests).
    #[cfg(all(test, not(loom)))]
    pub(crate) fn waiting(&self) -> usize {
        // Relaxed: a snapshot.
        self.waiting.load(Ordering::Relaxed)
    }

    /// The producer's half of the handshake, after publishing an item: whether a waiter
    /// is queued and the caller must [`serve`](Self::serve) it.
    #[inline]
    pub(crate) fn must_serve(&self) -> bool {
        // SeqCst fence pairs with the one in `register`: either this load sees the
        // registration, or the waiter's re-check after registering sees the item we
        // just published. Relaxed load: the fence orders it.
        fence(Ordering::SeqCst, "waiters.publish");
        self.has_waiters()
    }

    /// Queue a waiter, to be woken through `wake`; returns its key. The caller must then
    /// re-check the structure ([`serve`](Self::serve) the queue from it), as the
    /// handshake requires, and later claim its item with [`poll`](Self::poll) or give up
    /// with [`cancel`](Self::cancel).
    pub(crate) fn register(&self, wake: Wakeup) -> usize {
        let mut q = self.lock();
        let key = q.entries.insert(Entry::Waiting(wake));
        q.order.push_back(key);
        // Relaxed store (under the lock, which orders it against every other write of
        // `waiting`) + SeqCst fence below: see `must_serve`.
        self.waiting.store(q.order.len(), Ordering::Relaxed);
        drop(q);
        fence(Ordering::SeqCst, "waiters.register");
        key
    }

    /// Serve the oldest waiter with what `take` yields (called under the lock, only if a
    /// waiter is queued). Returns its wake-up, for the caller to
    /// [`wake`](Wakeup::wake) once this returns; `None` when nobody waits or `take`
    /// yields nothing.
    ///
    /// The item travels in the waiter's entry under the lock, so whatever the server did
    /// before (to the slot's bytes) happens-before the waiter's claim.
    pub(crate) fn serve(&self, take: impl FnOnce() -> Option<T>) -> Option<Wakeup> {
        let mut guard = self.lock();
        let q = &mut *guard;
        let &key = q.order.front()?;
        let entry = q.entries.get_mut(key)?;
        let item = take()?;
        q.order.pop_front();
        // Relaxed: under the lock (see `register`). A waiter taken off the books needs no
        // producer's attention any more.
        self.waiting.store(q.order.len(), Ordering::Relaxed);
        match std::mem::replace(entry, Entry::Served(item)) {
            Entry::Waiting(wake) => Some(wake),
            // Unreachable: only `Waiting` entries are in `order`.
            Entry::Served(_) => None,
        }
    }

    /// The owner of `key`: its item, if it has been served (the entry is then gone and the
    /// key void); otherwise `None`, and `waker`, if given, replaces the one registered
    /// (the latest poll's waker is the one to wake).
    pub(crate) fn poll(&self, key: usize, waker: Option<&Waker>) -> Option<T> {
        let mut q = self.lock();
        match q.entries.get_mut(key)? {
            Entry::Served(_) => match q.entries.try_remove(key) {
                Some(Entry::Served(item)) => Some(item),
                _ => None,
            },
            Entry::Waiting(Wakeup::Task(w)) => {
                if let Some(new) = waker {
                    if !w.will_wake(new) {
                        *w = new.clone();
                    }
                }
                None
            }
            Entry::Waiting(Wakeup::Thread(_)) => None,
        }
    }

    /// The owner of `key` gives up: the entry is removed (its wake-up dropped unused).
    /// Returns the item if the waiter had been served already, for the caller to pass on.
    pub(crate) fn cancel(&self, key: usize) -> Option<T> {
        let mut q = self.lock();
        match q.entries.try_remove(key)? {
            Entry::Served(item) => Some(item),
            Entry::Waiting(_) => {
                if let Some(i) = q.order.iter().position(|&k| k == key) {
                    q.order.remove(i);
                }
                // Relaxed: under the lock (see `register`).
                self.waiting.store(q.order.len(), Ordering::Relaxed);
                None
            }
        }
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

/// The Dekker handshake of a thread that sleeps somewhere no [`Waiters`] queue can wake it
/// (in `io_uring_enter`, woken through the ring's eventfd) with the threads that hand it
/// work through lock-free queues.
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

/// The inverse handshake: a thread that is usually asleep as far as its wakers know (a
/// ring blocked in `io_uring_enter`, woken through its eventfd), but marks itself awake
/// while it spins — then wakers may skip the wake-up, because it looks at its queues again
/// before it sleeps.
///
/// The spinner [`set`](AwakeFlag::set)s the flag while it spins, and
/// [`end`](AwakeFlag::end)s it before its last look at its queues and the sleep; a waker
/// publishes its work and then asks [`needs_wake`](AwakeFlag::needs_wake). Either the
/// spinner's look after `end` sees the work, or the waker sees the flag down and wakes it:
/// never neither. (Default: down — a thread that never spins is always woken.)
#[derive(Debug, Default)]
pub(crate) struct AwakeFlag {
    awake: AtomicBool,
}

impl AwakeFlag {
    /// The spinner is spinning: wakers from now on may skip the wake-up. No fence: a
    /// waker that sees it is seen by the spinner's next look, which follows an `end`.
    pub(crate) fn set(&self) {
        // Relaxed: needs no order (see above).
        self.awake.store(true, Ordering::Relaxed);
    }

    /// The spinner is about to look at its queues before it sleeps (or blocks anywhere):
    /// wakers from now on wake it. Returns whether the flag was up — then a waker may
    /// have skipped its wake-up, and the caller must look before it sleeps.
    pub(crate) fn end(&self) -> bool {
        // Relaxed load: only the spinner's own thread raises the flag.
        if !self.awake.load(Ordering::Relaxed) {
            return false;
        }
        // Relaxed store + SeqCst fence: the fence pairs with the one in `needs_wake`
        // (either that load sees this store, or this thread's look after the fence sees
        // the waker's work; as in `SleepFlag`).
        self.awake.store(false, Ordering::Relaxed);
        fence(Ordering::SeqCst, "awake_flag.end");
        true
    }

    /// A waker, after publishing its work: whether it must wake the spinner.
    pub(crate) fn needs_wake(&self) -> bool {
        // SeqCst fence: the other half of `end`'s. If the load then reads `true`, it reads
        // a store made before the spinner's next `end`, so this fence precedes that one in
        // the single total order of SeqCst operations, and the spinner's look after it
        // sees the work (C++20 [atomics.fences]/7). Relaxed load: ordered by the fence.
        fence(Ordering::SeqCst, "awake_flag.needs_wake");
        !self.awake.load(Ordering::Relaxed)
    }
}

#[cfg(all(test, loom))]
mod loom_tests;
