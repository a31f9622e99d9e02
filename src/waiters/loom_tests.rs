use super::*;
use crate::sync::mutation::without_fence;
use crate::sync::{Arc, AtomicBool};

/// The handshake alone, over the weakest publication a lock-free structure gives
/// (`crossbeam`'s `ArrayQueue` publishes a slot with a Release store and takes it
/// with an Acquire load): a consumer about to sleep never misses the item. (The
/// consumer only loads: loom 0.7 mis-orders a consumer's `swap` against the producer's
/// store — the producer then reads back a value older than its own store.)
fn handshake() {
    loom::model(|| {
        let w = Arc::new(Waiters::new());
        let item = Arc::new(AtomicBool::new(false));
        let (w2, item2) = (w.clone(), item.clone());
        let t = loom::thread::spawn(move || {
            item2.store(true, Ordering::Release);
            w2.notify();
        });
        let got = w.wait_until(None, || item.load(Ordering::Acquire).then_some(()));
        assert_eq!(got, Some(()));
        t.join().unwrap();
    });
}

#[test]
fn no_lost_wakeup_over_release_acquire_publication() {
    handshake();
}

/// Mutation: without the producer's fence, loom finds the store-buffering
/// interleaving where the producer reads no waiter and the consumer no item: the
/// consumer sleeps forever.
#[test]
#[should_panic(expected = "deadlock")]
fn without_the_notify_fence_a_wakeup_is_lost() {
    without_fence("waiters.notify", handshake);
}

/// Mutation: the same without the consumer's fence after it registers.
#[test]
#[should_panic(expected = "deadlock")]
fn without_the_wait_fence_a_wakeup_is_lost() {
    without_fence("waiters.wait_until", handshake);
}

/// The sleeper/waker handshake: either the sleeper's re-check sees the work or the
/// waker sees the announcement (the sleep itself is not modelled: "lost" means both
/// missed).
fn sleep_flag_handshake() {
    loom::model(|| {
        let flag = Arc::new(SleepFlag::default());
        let work = Arc::new(AtomicBool::new(false));
        let (f2, w2) = (flag.clone(), work.clone());
        let t = loom::thread::spawn(move || {
            w2.store(true, Ordering::Release);
            f2.must_wake()
        });
        flag.announce();
        let saw_work = work.load(Ordering::Acquire);
        let woken = t.join().unwrap();
        assert!(saw_work || woken, "wake-up lost");
    });
}

#[test]
fn sleep_flag_never_loses_a_wakeup() {
    sleep_flag_handshake();
}

#[test]
#[should_panic(expected = "wake-up lost")]
fn without_the_announce_fence_a_wakeup_is_lost() {
    without_fence("sleep_flag.announce", sleep_flag_handshake);
}

#[test]
#[should_panic(expected = "wake-up lost")]
fn without_the_must_wake_fence_a_wakeup_is_lost() {
    without_fence("sleep_flag.must_wake", sleep_flag_handshake);
}
