//! `CompletionQueue`: a bounded, lock-free, multi-producer multi-consumer queue that hands
//! completions from the ring thread to any thread.
//!
//! Built on `crossbeam_queue::ArrayQueue`. Push and pop never lock; a consumer that wants
//! to *block* spins briefly, then registers as a sleeper (`Sleepers`), and a
//! producer takes the wake-up lock only when a sleeper exists — so a busy queue costs no
//! syscall, no lock and no fence per item: checking for sleepers is one load, ordered by
//! the `SeqCst` compare-and-swap the push or pop itself made (the same handshake as
//! crossbeam's array channel, which `std::sync::mpsc::sync_channel` is).
//!
//! Consumers should prefer [`pop_batch`](CompletionQueue::pop_batch): draining many items
//! per wake-up is what makes cross-thread hand-off cheap.
//!
//! A ring never blocks on a full queue and never drops a completion: what finds the queue
//! full waits in an overflow list (a mutex-protected deque, the only path that allocates)
//! and is popped after the items queued before it. So a queue nobody drains for a while,
//! a ring dropped while its queue is full, or a handle submitting after its ring is gone
//! all still deliver every completion, exactly once.

use std::collections::VecDeque;
use std::fmt;
use std::time::Duration;

use crossbeam_utils::CachePadded;

use crate::sync::{fence, AtomicUsize, Condvar, Mutex, Ordering};
use crate::waiters::{deadline_after, sleep_until, spin};

#[cfg(not(loom))]
type Inner<T> = crate::sync::ArrayQueue<T>;
/// Under loom, a port of `ArrayQueue`'s algorithm with its orderings (see `model`), not
/// the crate-wide mutex stand-in: a mutex would order a producer's push against a
/// consumer's empty check by itself, and hide a broken wake-up handshake.
#[cfg(loom)]
type Inner<T> = model::ArrayQueue<T>;

/// A bounded lock-free MPMC queue of completions (or anything else).
///
/// ```
/// use iocomplete::CompletionQueue;
/// let q = CompletionQueue::new(4);
/// q.push(1).unwrap();
/// q.push(2).unwrap();
/// let mut out = Vec::new();
/// assert_eq!(q.pop_batch(&mut out, 16), 2);
/// assert_eq!(out, [1, 2]);
/// assert_eq!(q.pop_timeout(std::time::Duration::from_millis(1)), None);
/// ```
pub struct CompletionQueue<T> {
    items: Inner<T>,
    /// Items that found `items` full when their producer must not wait (a ring delivering
    /// completions): taken after `items` runs dry. Unbounded; empty in steady state.
    /// Boxed: inline, it shifted the hot fields' layout and cost push + pop 2.7 ns (11%,
    /// `cargo bench --bench queue`).
    overflow: Box<Mutex<VecDeque<T>>>,
    /// Length of `overflow`, read without its lock so that pops skip the lock when it is
    /// empty (the common case). Written only under the lock.
    overflowed: AtomicUsize,
    /// Consumers blocked (or about to block) in a waiting pop. Padded: every push reads
    /// its count, and a consumer registering writes it; alone on its line, that write
    /// does not evict the ring's read-mostly fields from the producer's cache.
    waiters: CachePadded<Sleepers>,
    /// Producers blocked in a waiting push (queue full). Padded, as `waiters`.
    space: CachePadded<Sleepers>,
}

impl<T> fmt::Debug for CompletionQueue<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CompletionQueue")
            .field("len", &self.len())
            .field("capacity", &self.capacity())
            .finish()
    }
}

impl<T> CompletionQueue<T> {
    /// The largest capacity [`new`](CompletionQueue::new) gives a queue.
    pub const MAX_CAPACITY: usize = 1 << 24;

    /// A queue holding at most `capacity` items, normalised to `1..=2^24` (the slots are
    /// allocated up front; a larger request would only exhaust memory).
    pub fn new(capacity: usize) -> Self {
        CompletionQueue {
            items: Inner::new(capacity.clamp(1, Self::MAX_CAPACITY)),
            overflow: Box::new(Mutex::new(VecDeque::new())),
            overflowed: AtomicUsize::new(0),
            waiters: CachePadded::new(Sleepers::new()),
            space: CachePadded::new(Sleepers::new()),
        }
    }

    /// Add an item; when the queue is full, the item is handed back.
    pub fn push(&self, item: T) -> Result<(), T> {
        self.items.push(item)?;
        self.waiters.notify_after_rmw("queue.push");
        Ok(())
    }

    /// Add an item even when the queue is full, never waiting: it then goes to the overflow
    /// list (allocating), behind every item already there, and is popped once `items`
    /// runs dry. Used by rings, which must neither block nor drop a completion.
    pub(crate) fn push_overflow(&self, item: T) {
        // An item overflowed before this one must be popped first: while the overflow list
        // is non-empty, new items join it (per-producer FIFO order is kept).
        // Relaxed: a hint; the lock below orders the list itself, and a stale zero only
        // lets this item into `items` ahead of overflowed ones from other producers.
        let item = if self.overflowed.load(Ordering::Relaxed) == 0 {
            match self.items.push(item) {
                Ok(()) => {
                    self.waiters.notify_after_rmw("queue.push");
                    return;
                }
                Err(back) => back,
            }
        } else {
            item
        };
        {
            let mut o = self.overflow.lock().unwrap_or_else(|e| e.into_inner());
            o.push_back(item);
            // Relaxed: written under the lock; readers that see it non-zero take the lock
            // (which orders the list), and `notify_fenced`'s SeqCst fence orders it
            // against a consumer's registration (see `Sleepers`).
            self.overflowed.store(o.len(), Ordering::Relaxed);
        }
        self.waiters.notify_fenced();
    }

    /// Take the oldest overflowed item, if any.
    fn pop_overflow(&self) -> Option<T> {
        // Relaxed: see `overflowed`; a stale zero is re-checked by waiting consumers after
        // they register (the fences in `Waiters`).
        if self.overflowed.load(Ordering::Relaxed) == 0 {
            return None;
        }
        let mut o = self.overflow.lock().unwrap_or_else(|e| e.into_inner());
        let v = o.pop_front();
        self.overflowed.store(o.len(), Ordering::Relaxed);
        v
    }

    /// Add an item, waiting as long as it takes for room.
    pub fn push_wait(&self, item: T) {
        let mut item = Some(item);
        while self
            .space
            .wait_until(None, || self.push_from(&mut item))
            .is_none()
        {}
        self.waiters.notify_after_rmw("queue.push");
    }

    /// Add an item, waiting up to `timeout` for room; hands the item back on timeout.
    /// A `timeout` too large to add to the current instant (e.g. `Duration::MAX`) waits
    /// forever.
    /// The timeout counts from the end of a brief spin (microseconds) that comes first.
    pub fn push_timeout(&self, item: T, timeout: Duration) -> Result<(), T> {
        let mut item = Some(item);
        match self
            .space
            .wait_until(Some(timeout), || self.push_from(&mut item))
        {
            Some(()) => {
                self.waiters.notify_after_rmw("queue.push");
                Ok(())
            }
            // A failed push puts the item back in `item`.
            None => Err(item.expect("a failed push hands the item back")),
        }
    }

    /// One push attempt for the waiting pushes: moves the item out of `item`, or leaves it
    /// there when the queue is full.
    fn push_from(&self, item: &mut Option<T>) -> Option<()> {
        match self.items.push(item.take()?) {
            Ok(()) => Some(()),
            Err(back) => {
                *item = Some(back);
                None
            }
        }
    }

    /// Take one item without waiting.
    pub fn pop(&self) -> Option<T> {
        match self.items.pop() {
            Some(v) => {
                self.space.notify_after_rmw("queue.pop");
                Some(v)
            }
            None => self.pop_overflow(),
        }
    }

    /// Take up to `max` items without waiting, appending them to `out`. Returns how many.
    pub fn pop_batch(&self, out: &mut impl Extend<T>, max: usize) -> usize {
        let mut n = 0;
        while n < max {
            match self.items.pop() {
                Some(v) => {
                    out.extend(std::iter::once(v));
                    n += 1;
                }
                None => break,
            }
        }
        if n > 0 {
            self.space.notify_after_rmw("queue.pop");
        }
        while n < max {
            match self.pop_overflow() {
                Some(v) => {
                    out.extend(std::iter::once(v));
                    n += 1;
                }
                None => break,
            }
        }
        n
    }

    /// Take one item, waiting up to `timeout` for one to arrive.
    /// A `timeout` too large to add to the current instant (e.g. `Duration::MAX`) waits
    /// forever.
    /// The timeout counts from the end of a brief spin (microseconds) that comes first.
    pub fn pop_timeout(&self, timeout: Duration) -> Option<T> {
        self.waiters.wait_until(Some(timeout), || self.pop())
    }

    /// Take one item, waiting as long as it takes.
    pub fn pop_wait(&self) -> T {
        loop {
            if let Some(v) = self.waiters.wait_until(None, || self.pop()) {
                return v;
            }
        }
    }

    /// Wait up to `timeout` for at least one item, then take up to `max`. Returns how many.
    pub fn pop_batch_timeout(
        &self,
        out: &mut impl Extend<T>,
        max: usize,
        timeout: Duration,
    ) -> usize {
        if max == 0 {
            return 0;
        }
        let n = self.pop_batch(out, max);
        if n > 0 {
            return n;
        }
        match self.pop_timeout(timeout) {
            Some(v) => {
                out.extend(std::iter::once(v));
                1 + self.pop_batch(out, max - 1)
            }
            None => 0,
        }
    }

    /// Items queued now, overflowed ones included (a snapshot).
    pub fn len(&self) -> usize {
        // Relaxed: a snapshot.
        self.items.len() + self.overflowed.load(Ordering::Relaxed)
    }

    /// True when nothing is queued (a snapshot).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Items the lock-free part holds; a ring's completions beyond it overflow (see the
    /// module docs), other producers' pushes fail or wait.
    pub fn capacity(&self) -> usize {
        self.items.capacity()
    }
}

/// The queue's own blocking slow path: threads waiting for an item (or for room), and the
/// wake-up that producers (or consumers) give them.
///
/// Unlike the pool's `Waiters`, a notifier pays no fence on the fast path, and each sleep
/// is signalled once: the first notifier to find sleepers takes them all off the books
/// (a new *generation*) and wakes them, outside the lock; later notifiers find none and
/// skip the lock and the syscall until someone registers again.
///
/// The handshake (no lost wake-up) needs no fence of its own on either side; it uses the
/// ones `crossbeam_queue::ArrayQueue` 0.3 (`push_or_else`, `pop`) already issues:
/// - a notifier has just moved the ring's tail (a push) or head (a pop) with a `SeqCst`
///   compare-and-swap, and then reads `count` with a `SeqCst` load;
/// - a sleeper, under the lock, adds itself to `count`, then re-checks the ring (`take`),
///   and `ArrayQueue` reports "empty" (or "full") only after a `SeqCst` fence followed by
///   a load of the tail (or head).
///
/// Either the notifier's load sees the registration, and it wakes the sleeper, or it does
/// not: then the load precedes the sleeper's fence in the single total order `S` of
/// `SeqCst` operations (C++20 [atomics.order]/4.2: the load is coherence-ordered before the
/// increment, which happens before the fence), hence so does the compare-and-swap
/// (sequenced before the load); by [atomics.order]/4.3 the sleeper's load of the tail (or
/// head) after its fence cannot read a value older than that compare-and-swap, so the
/// re-check finds the item (or the room). On x86-64 the notifier's `SeqCst` load is a
/// plain `mov` (the locked `cmpxchg` already drained the store buffer): a push or pop pays
/// one load of a line nobody writes in steady state — what crossbeam's array channel
/// (`std::sync::mpsc::sync_channel`) pays, where the previous `Waiters` paid an `mfence`
/// per push and per pop.
///
/// Under loom the ring is a port of `ArrayQueue`'s algorithm and orderings (`model`),
/// whose fences are named ("array_queue.empty" / "array_queue.full"); loom models
/// `SeqCst` loads and read-modify-writes as acquire/release only, so a named `SeqCst` fence
/// stands right after the notifier's compare-and-swap ("queue.push" / "queue.pop"). The
/// loom models below check the handshake, and the mutation tests show it fails without
/// each of those fences.
#[derive(Debug)]
struct Sleepers {
    /// Threads registered in the current generation and not yet woken. Written only
    /// under `gen`'s lock; read without it by notifiers.
    count: AtomicUsize,
    /// The generation: bumped by each wake-up, which unregisters everyone counted.
    gen: Mutex<u64>,
    cv: Condvar,
}

impl Sleepers {
    fn new() -> Sleepers {
        Sleepers {
            count: AtomicUsize::new(0),
            gen: Mutex::new(0),
            cv: Condvar::new(),
        }
    }

    /// Call right after a successful push (pop) on the ring, whose `SeqCst`
    /// compare-and-swap orders this load (see the type's docs). `site` names the fence
    /// that stands for that compare-and-swap under loom.
    #[inline]
    fn notify_after_rmw(&self, site: &'static str) {
        #[cfg(loom)]
        fence(Ordering::SeqCst, site);
        #[cfg(not(loom))]
        let _ = site;
        // SeqCst: the notifier's half of the handshake (see the type's docs).
        if self.count.load(Ordering::SeqCst) > 0 {
            self.wake();
        }
    }

    /// Call after making something available by a route without a `SeqCst`
    /// read-modify-write of its own (the overflow list, published under its mutex).
    fn notify_fenced(&self) {
        // SeqCst fence: pairs with "queue.register" as the compare-and-swap does in
        // `notify_after_rmw`, for a publication (a mutex release) that orders nothing by
        // itself against the later load of `count`.
        fence(Ordering::SeqCst, "queue.notify_fenced");
        // Relaxed: ordered by the fence.
        if self.count.load(Ordering::Relaxed) > 0 {
            self.wake();
        }
    }

    /// Wake every registered sleeper, once per generation.
    #[cold]
    fn wake(&self) {
        {
            let mut gen = self.gen.lock().unwrap_or_else(|e| e.into_inner());
            // Relaxed: `count` is written only under this lock.
            if self.count.load(Ordering::Relaxed) == 0 {
                return; // another notifier woke them
            }
            self.count.store(0, Ordering::Relaxed);
            *gen = gen.wrapping_add(1);
        }
        // Outside the lock, so a woken sleeper does not block on it again. No wake-up is
        // lost: a sleeper holds the lock from its registration until `wait` releases it
        // atomically, so having taken the lock above, every sleeper counted is waiting.
        self.cv.notify_all();
    }

    /// Run `take` until it yields something or `timeout` passes (never, if `None` or too
    /// large to add to the current instant). The clock is read only once the spinning is
    /// over: an empty poll that the spin satisfies pays no `Instant::now()`.
    fn wait_until<T>(
        &self,
        timeout: Option<Duration>,
        mut take: impl FnMut() -> Option<T>,
    ) -> Option<T> {
        if let Some(v) = spin(&mut take) {
            return Some(v);
        }
        let deadline = timeout.and_then(deadline_after);
        let gen = self.gen.lock().unwrap_or_else(|e| e.into_inner());
        // The generation this thread is counted in, if any.
        let mut counted: Option<u64> = None;
        let (gen, got) = sleep_until(&self.cv, gen, deadline, |gen| {
            if counted != Some(*gen) {
                // Not (or no longer) counted: register, then re-check with `take` (see the
                // type's docs). Relaxed increment: under the lock (for the other writers);
                // against notifiers it is ordered by the `SeqCst` fence `ArrayQueue`
                // issues before it reports "empty" or "full" to `take`.
                self.count.fetch_add(1, Ordering::Relaxed);
                counted = Some(*gen);
            }
            take()
        });
        if counted == Some(*gen) {
            // Still counted (no wake-up since registering): leave. Relaxed: under the lock.
            self.count.fetch_sub(1, Ordering::Relaxed);
        }
        got
    }
}

/// `crossbeam_queue::ArrayQueue` 0.3.14's algorithm, ported for loom with the same atomics
/// and orderings (stamps per slot, `SeqCst` compare-and-swap on head and tail, a `SeqCst`
/// fence before the full/empty checks), so that the queue's loom models see what the
/// real queue publishes and nothing more. The slot's value sits in a mutex instead of an
/// `UnsafeCell` (no unsafe code here); it is taken only by the thread the stamps hand the
/// slot to, so it adds no ordering the stamps do not already give.
#[cfg(loom)]
mod model {
    use crate::sync::{fence, AtomicUsize, Mutex, Ordering};

    #[derive(Debug)]
    struct Slot<T> {
        stamp: AtomicUsize,
        value: Mutex<Option<T>>,
    }

    #[derive(Debug)]
    pub(super) struct ArrayQueue<T> {
        head: AtomicUsize,
        tail: AtomicUsize,
        buffer: Box<[Slot<T>]>,
        cap: usize,
        one_lap: usize,
    }

    impl<T> ArrayQueue<T> {
        pub(super) fn new(cap: usize) -> Self {
            ArrayQueue {
                head: AtomicUsize::new(0),
                tail: AtomicUsize::new(0),
                buffer: (0..cap)
                    .map(|i| Slot {
                        stamp: AtomicUsize::new(i),
                        value: Mutex::new(None),
                    })
                    .collect(),
                cap,
                one_lap: (cap + 1).next_power_of_two(),
            }
        }

        fn next(&self, i: usize) -> usize {
            if (i & (self.one_lap - 1)) + 1 < self.cap {
                i + 1
            } else {
                (i & !(self.one_lap - 1)).wrapping_add(self.one_lap)
            }
        }

        pub(super) fn push(&self, value: T) -> Result<(), T> {
            let mut tail = self.tail.load(Ordering::Relaxed);
            loop {
                let slot = &self.buffer[tail & (self.one_lap - 1)];
                let stamp = slot.stamp.load(Ordering::Acquire);
                if tail == stamp {
                    match self.tail.compare_exchange(
                        tail,
                        self.next(tail),
                        Ordering::SeqCst,
                        Ordering::Relaxed,
                    ) {
                        Ok(_) => {
                            *slot.value.lock().unwrap() = Some(value);
                            slot.stamp.store(tail + 1, Ordering::Release);
                            return Ok(());
                        }
                        Err(t) => tail = t,
                    }
                } else if stamp.wrapping_add(self.one_lap) == tail + 1 {
                    fence(Ordering::SeqCst, "array_queue.full");
                    let head = self.head.load(Ordering::Relaxed);
                    if head.wrapping_add(self.one_lap) == tail {
                        return Err(value);
                    }
                    loom::thread::yield_now();
                    tail = self.tail.load(Ordering::Relaxed);
                } else {
                    loom::thread::yield_now();
                    tail = self.tail.load(Ordering::Relaxed);
                }
            }
        }

        pub(super) fn pop(&self) -> Option<T> {
            let mut head = self.head.load(Ordering::Relaxed);
            loop {
                let slot = &self.buffer[head & (self.one_lap - 1)];
                let stamp = slot.stamp.load(Ordering::Acquire);
                if head + 1 == stamp {
                    match self.head.compare_exchange(
                        head,
                        self.next(head),
                        Ordering::SeqCst,
                        Ordering::Relaxed,
                    ) {
                        Ok(_) => {
                            let v = slot.value.lock().unwrap().take();
                            slot.stamp
                                .store(head.wrapping_add(self.one_lap), Ordering::Release);
                            return v;
                        }
                        Err(h) => head = h,
                    }
                } else if stamp == head {
                    fence(Ordering::SeqCst, "array_queue.empty");
                    let tail = self.tail.load(Ordering::Relaxed);
                    if tail == head {
                        return None;
                    }
                    loom::thread::yield_now();
                    head = self.head.load(Ordering::Relaxed);
                } else {
                    loom::thread::yield_now();
                    head = self.head.load(Ordering::Relaxed);
                }
            }
        }

        pub(super) fn len(&self) -> usize {
            loop {
                let tail = self.tail.load(Ordering::SeqCst);
                let head = self.head.load(Ordering::SeqCst);
                if self.tail.load(Ordering::SeqCst) == tail {
                    let hix = head & (self.one_lap - 1);
                    let tix = tail & (self.one_lap - 1);
                    return if hix < tix {
                        tix - hix
                    } else if hix > tix {
                        self.cap - hix + tix
                    } else if tail == head {
                        0
                    } else {
                        self.cap
                    };
                }
            }
        }

        pub(super) fn capacity(&self) -> usize {
            self.cap
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests;

#[cfg(all(test, loom))]
mod loom_tests;
