//! The waiting gets of a pool (`get_async`, blocking `get`) against returns on another
//! thread: no lost wake-up, and a slot handed to a waiter is never lost when the waiter
//! gives up. (Under loom a pool has no magazines: their half of the handshake is modelled
//! in `magazine::loom_tests`.)

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use super::BufferPool;

/// A pool of one 4096-byte slot (not pre-faulted).
fn one_slot_pool() -> BufferPool {
    BufferPool::builder()
        .slots(1)
        .slot_len(4096)
        .populate(false)
        .build()
        .unwrap()
}

/// Drive `f` on this (loom) thread, parking until woken. A lost wake-up leaves the thread
/// parked forever, which loom reports as a deadlock.
fn block_on<F: Future>(f: F) -> F::Output {
    struct Unpark(crate::sync::Thread);
    impl std::task::Wake for Unpark {
        fn wake(self: std::sync::Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(std::sync::Arc::new(Unpark(crate::sync::current())));
    let mut f = std::pin::pin!(f);
    loop {
        if let Poll::Ready(v) = f.as_mut().poll(&mut Context::from_waker(&waker)) {
            return v;
        }
        crate::sync::park();
    }
}

/// Poll once with a waker that does nothing (a registration only).
fn poll_noop(f: &mut super::GetBuf) -> Poll<super::PoolBuf> {
    Pin::new(f).poll(&mut Context::from_waker(Waker::noop()))
}

/// A slot returned on one thread while a future waits for it on another: the future
/// resolves (`block_on` turns a lost wake-up into a deadlock loom reports),
/// and the slot is free once more at the end.
#[test]
fn get_async_never_misses_a_returned_slot() {
    loom::model(|| {
        let pool = one_slot_pool();
        let b = pool.try_get().unwrap();
        let t = loom::thread::spawn(move || drop(b));
        let got = block_on(pool.get_async());
        drop(got);
        t.join().unwrap();
        assert_eq!(pool.stats().free, 1);
        assert!(!pool.inner.waiters.has_waiters());
    });
}

/// The same for a blocking `get` (a parked thread).
#[test]
fn blocking_get_never_misses_a_returned_slot() {
    loom::model(|| {
        let pool = one_slot_pool();
        let b = pool.try_get().unwrap();
        let t = loom::thread::spawn(move || drop(b));
        drop(pool.get());
        t.join().unwrap();
        assert_eq!(pool.stats().free, 1);
    });
}

/// Two futures wait; the slot comes back while the first is dropped. Whether the drop
/// comes before the hand-off (the first leaves the line) or after (the slot it was handed
/// goes on to the second), the second resolves and the slot ends up free.
#[test]
fn handed_off_slot_is_never_lost_on_cancel() {
    loom::model(|| {
        let pool = one_slot_pool();
        let b = pool.try_get().unwrap();
        let mut first = pool.get_async();
        let mut second = pool.get_async();
        assert!(poll_noop(&mut first).is_pending());
        assert!(poll_noop(&mut second).is_pending());
        let t = loom::thread::spawn(move || drop(b));
        drop(first);
        let got = block_on(second);
        t.join().unwrap();
        drop(got);
        assert_eq!(pool.stats().free, 1);
        assert!(!pool.inner.waiters.has_waiters());
    });
}

/// One future, dropped while the slot comes back: the slot is free at the end whichever
/// came first, and the line is empty.
#[test]
fn cancel_racing_the_return_leaves_the_slot_free() {
    loom::model(|| {
        let pool = one_slot_pool();
        let b = pool.try_get().unwrap();
        let mut f = pool.get_async();
        assert!(poll_noop(&mut f).is_pending());
        let t = loom::thread::spawn(move || drop(b));
        drop(f);
        t.join().unwrap();
        assert_eq!(pool.stats().free, 1);
        assert!(!pool.inner.waiters.has_waiters());
        drop(pool.try_get().unwrap());
    });
}
