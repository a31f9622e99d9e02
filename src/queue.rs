//! `CompletionQueue`: a bounded, lock-free, multi-producer multi-consumer queue that hands
//! completions from the ring thread to any thread.
//!
//! Built on `crossbeam_queue::ArrayQueue`. Push and pop never lock; a consumer that wants
//! to *block* spins briefly, then registers as a waiter (see `waiters`), and a producer
//! takes the wake-up lock only when a waiter exists — so a busy queue costs no syscall
//! and no lock per item.
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

use crate::sync::{AtomicUsize, Mutex, Ordering};
use crate::waiters::{deadline_after, Waiters};

type Inner<T> = crate::sync::ArrayQueue<T>;

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
    /// Consumers blocked (or about to block) in a waiting pop.
    waiters: Waiters,
    /// Producers blocked in a waiting push (queue full).
    space: Waiters,
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
            waiters: Waiters::new(),
            space: Waiters::new(),
        }
    }

    /// Add an item; when the queue is full, the item is handed back.
    pub fn push(&self, item: T) -> Result<(), T> {
        self.items.push(item)?;
        self.waiters.notify();
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
                    self.waiters.notify();
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
            // (which orders the list), and `notify`'s SeqCst fence orders it against a
            // consumer's registration (see `Waiters`).
            self.overflowed.store(o.len(), Ordering::Relaxed);
        }
        self.waiters.notify();
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
        self.waiters.notify();
    }

    /// Add an item, waiting up to `timeout` for room; hands the item back on timeout.
    /// A `timeout` too large to add to the current instant (e.g. `Duration::MAX`) waits
    /// forever.
    pub fn push_timeout(&self, item: T, timeout: Duration) -> Result<(), T> {
        let mut item = Some(item);
        match self
            .space
            .wait_until(deadline_after(timeout), || self.push_from(&mut item))
        {
            Some(()) => {
                self.waiters.notify();
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
                self.space.notify();
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
            self.space.notify();
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
    pub fn pop_timeout(&self, timeout: Duration) -> Option<T> {
        self.waiters
            .wait_until(deadline_after(timeout), || self.pop())
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

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn capacity_is_normalised_not_a_panic() {
        assert_eq!(CompletionQueue::<u8>::new(0).capacity(), 1);
        assert_eq!(
            CompletionQueue::<u8>::new(usize::MAX).capacity(),
            CompletionQueue::<u8>::MAX_CAPACITY
        );
    }

    #[test]
    fn full_queue_hands_item_back() {
        let q = CompletionQueue::new(1);
        q.push(1).unwrap();
        assert_eq!(q.push(2), Err(2));
        assert_eq!(q.pop(), Some(1));
    }

    #[test]
    fn many_producers_many_consumers_every_item_once() {
        let q = Arc::new(CompletionQueue::new(64));
        const PER: u64 = 20_000;
        let producers: Vec<_> = (0..2u64)
            .map(|p| {
                let q = q.clone();
                std::thread::spawn(move || {
                    for i in 0..PER {
                        let mut v = p * PER + i;
                        while let Err(back) = q.push(v) {
                            v = back;
                            std::thread::yield_now();
                        }
                    }
                })
            })
            .collect();
        let consumers: Vec<_> = (0..2)
            .map(|_| {
                let q = q.clone();
                std::thread::spawn(move || {
                    let mut got = Vec::new();
                    let mut batch = Vec::new();
                    loop {
                        batch.clear();
                        if q.pop_batch_timeout(&mut batch, 32, Duration::from_millis(200)) == 0 {
                            return got;
                        }
                        got.extend_from_slice(&batch);
                    }
                })
            })
            .collect();
        for p in producers {
            p.join().unwrap();
        }
        let mut all: Vec<u64> = consumers
            .into_iter()
            .flat_map(|c| c.join().unwrap())
            .collect();
        all.sort_unstable();
        assert_eq!(all, (0..2 * PER).collect::<Vec<_>>());
    }

    #[test]
    fn blocked_producer_is_woken_by_a_pop() {
        let q = Arc::new(CompletionQueue::new(1));
        q.push(1u32).unwrap();
        assert_eq!(q.push_timeout(2, Duration::from_millis(5)), Err(2));
        let q2 = q.clone();
        let t = std::thread::spawn(move || q2.push_wait(3));
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(q.pop(), Some(1));
        t.join().unwrap();
        assert_eq!(q.pop_timeout(Duration::from_secs(5)), Some(3));
    }

    #[test]
    fn blocked_consumer_is_woken() {
        let q = Arc::new(CompletionQueue::new(4));
        let q2 = q.clone();
        let t = std::thread::spawn(move || q2.pop_wait());
        std::thread::sleep(Duration::from_millis(20));
        q.push(7u32).unwrap();
        assert_eq!(t.join().unwrap(), 7);
    }
}

#[cfg(all(test, loom))]
mod loom_tests {
    use super::*;
    use crate::sync::Arc;

    /// A producer's push can never be missed by a consumer about to block.
    #[test]
    fn no_lost_wakeup() {
        loom::model(|| {
            let q = Arc::new(CompletionQueue::new(2));
            let q2 = q.clone();
            let t = loom::thread::spawn(move || q2.push(5u32).unwrap());
            assert_eq!(q.pop_wait(), 5);
            t.join().unwrap();
        });
    }

    /// A completion that overflows a full queue (the ring's path) reaches a consumer
    /// blocked in `pop_wait`, after the item queued before it.
    #[test]
    fn overflow_wakes_a_waiting_consumer_in_order() {
        loom::model(|| {
            let q = Arc::new(CompletionQueue::new(1));
            q.push(1u32).unwrap();
            let q2 = q.clone();
            let t = loom::thread::spawn(move || q2.push_overflow(2));
            assert_eq!(q.pop_wait(), 1);
            assert_eq!(q.pop_wait(), 2);
            t.join().unwrap();
        });
    }
}
