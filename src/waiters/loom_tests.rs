use super::*;
use crate::sync::mutation::without_fence;
use crate::sync::{Arc, AtomicBool};

/// The consumer's take of the one item, if it is there.
fn take(item: &AtomicBool) -> Option<u32> {
    // Acquire: pairs with the producer's Release store (the item's publication).
    item.compare_exchange(true, false, Ordering::Acquire, Ordering::Relaxed)
        .is_ok()
        .then_some(7)
}

/// Serve the queue from `item`, waking whoever is served (outside the lock).
fn serve_from(w: &Waiters<u32>, item: &AtomicBool) {
    while let Some(wake) = w.serve(|| take(item)) {
        wake.wake();
    }
}

/// The handshake alone, over the weakest publication a lock-free structure gives
/// (`crossbeam`'s `ArrayQueue` publishes a slot with a Release store and takes it with an
/// Acquire read-modify-write): a producer publishes one item and serves the queue if it
/// must; a consumer tries, registers, serves the queue itself (the re-check), then parks
/// until served. It must get the item: a lost wake-up leaves it parked forever, which
/// loom reports as a deadlock.
fn handshake() {
    loom::model(|| {
        let w = Arc::new(Waiters::<u32>::new());
        let item = Arc::new(AtomicBool::new(false));
        let (w2, item2) = (w.clone(), item.clone());
        let t = loom::thread::spawn(move || {
            item2.store(true, Ordering::Release);
            if w2.must_serve() {
                serve_from(&w2, &item2);
            }
        });
        let got = match take(&item) {
            Some(v) => v,
            None => {
                let key = w.register(Wakeup::Thread(crate::sync::current()));
                serve_from(&w, &item);
                loop {
                    if let Some(v) = w.poll(key, None) {
                        break v;
                    }
                    crate::sync::park();
                }
            }
        };
        assert_eq!(got, 7);
        assert!(!w.has_waiters());
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
fn without_the_publish_fence_a_wakeup_is_lost() {
    without_fence("waiters.publish", handshake);
}

/// Mutation: the same without the consumer's fence after it registers.
#[test]
#[should_panic(expected = "deadlock")]
fn without_the_register_fence_a_wakeup_is_lost() {
    without_fence("waiters.register", handshake);
}

/// A waiter served and cancelled at the same time: the item is either claimed by the
/// cancel (for the caller to pass on) or never handed out; never lost, never both.
#[test]
fn cancel_racing_a_serve_loses_nothing() {
    loom::model(|| {
        let w = Arc::new(Waiters::<u32>::new());
        let key = w.register(Wakeup::Thread(crate::sync::current()));
        let w2 = w.clone();
        let t = loom::thread::spawn(move || {
            let mut item = Some(9);
            if let Some(wake) = w2.serve(|| item.take()) {
                wake.wake();
            }
            item
        });
        let back = w.cancel(key);
        let unserved = t.join().unwrap();
        assert!(
            back.is_some() != unserved.is_some(),
            "item lost or duplicated: cancel got {back:?}, server kept {unserved:?}"
        );
        assert!(!w.has_waiters());
    });
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

/// The spinner/waker handshake of `AwakeFlag`: the waker publishes, then asks whether to
/// wake; the spinner, awake, ends its spin and looks. Either the look sees the work or the
/// waker wakes it ("lost" means both missed).
fn awake_flag_handshake() {
    loom::model(|| {
        let flag = Arc::new(AwakeFlag::default());
        let work = Arc::new(AtomicBool::new(false));
        flag.set();
        let (f2, w2) = (flag.clone(), work.clone());
        let t = loom::thread::spawn(move || {
            w2.store(true, Ordering::Release);
            f2.needs_wake()
        });
        assert!(flag.end(), "the flag was up");
        let saw_work = work.load(Ordering::Acquire);
        let woken = t.join().unwrap();
        assert!(saw_work || woken, "wake-up lost");
    });
}

#[test]
fn awake_flag_never_loses_a_wakeup() {
    awake_flag_handshake();
}

#[test]
#[should_panic(expected = "wake-up lost")]
fn without_the_end_fence_a_wakeup_is_lost() {
    without_fence("awake_flag.end", awake_flag_handshake);
}

#[test]
#[should_panic(expected = "wake-up lost")]
fn without_the_needs_wake_fence_a_wakeup_is_lost() {
    without_fence("awake_flag.needs_wake", awake_flag_handshake);
}
