//! `BufferPool::get_async`: the fast path (a free slot at the first poll) allocates
//! nothing; the slow path (register, hand-off, wake, claim) allocates nothing either once
//! the wait queue has reached its size (the contract allows one allocation per wait).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

use crate::common::{self, alloc::counted};

/// A waker whose clones share one allocation (made before counting starts).
struct Nop;

impl Wake for Nop {
    fn wake(self: Arc<Self>) {}
}

fn poll_once(f: &mut iocomplete::GetBuf, waker: &Waker) -> Poll<iocomplete::PoolBuf> {
    Pin::new(f).poll(&mut Context::from_waker(waker))
}

#[test]
fn get_async_fast_path_does_not_allocate() {
    let waker = Waker::from(Arc::new(Nop));
    for slots in [4usize, 64] {
        let pool = common::pool(slots, 4096);
        let round = || {
            let mut f = pool.get_async();
            let Poll::Ready(mut b) = poll_once(&mut f, &waker) else {
                panic!("{slots} slots: pending with free slots")
            };
            b.header_mut();
            drop(b);
        };
        for _ in 0..100 {
            round();
        }
        let ((), n) = counted(|| {
            for _ in 0..10_000 {
                round();
            }
        });
        assert_eq!(
            n, 0,
            "{slots} slots: {n} allocations in 10000 fast-path gets"
        );
        assert_eq!(pool.stats().free, slots);
    }
}

#[test]
fn get_async_wait_and_hand_off_do_not_allocate_in_steady_state() {
    let waker = Waker::from(Arc::new(Nop));
    for slots in [1usize, 32] {
        let pool = common::pool(slots, 4096);
        let mut held: Vec<_> = (0..slots).map(|_| pool.try_get().unwrap()).collect();
        let mut round = || {
            let mut f = pool.get_async();
            assert!(poll_once(&mut f, &waker).is_pending());
            drop(held.pop()); // handed to `f`
            let Poll::Ready(b) = poll_once(&mut f, &waker) else {
                panic!("{slots} slots: served but pending")
            };
            held.push(b);
        };
        for _ in 0..100 {
            round();
        }
        let ((), n) = counted(|| {
            for _ in 0..1000 {
                round();
            }
        });
        assert_eq!(n, 0, "{slots} slots: {n} allocations in 1000 waits");
        drop(held);
        assert_eq!(pool.stats().free, slots);
    }
}
