use super::*;
use crate::sync::mutation::without_fence;
use crate::sync::Arc;

/// A producer's push can never be missed by a consumer about to block.
fn push_wakes_consumer() {
    loom::model(|| {
        let q = Arc::new(CompletionQueue::new(2));
        let q2 = q.clone();
        let t = loom::thread::spawn(move || q2.push(5u32).unwrap());
        assert_eq!(q.pop_wait(), 5);
        t.join().unwrap();
    });
}

#[test]
fn no_lost_wakeup() {
    push_wakes_consumer();
}

/// Mutation: without the ordering point after the push (the compare-and-swap's, a
/// fence under loom), the producer can read "no sleeper" while the sleeper reads "no
/// item": it sleeps forever.
#[test]
#[should_panic(expected = "deadlock")]
fn without_the_push_ordering_a_wakeup_is_lost() {
    without_fence("queue.push", push_wakes_consumer);
}

/// Mutation: the same without the fence `ArrayQueue` issues before it reports
/// "empty" (the sleeper's half of the handshake).
#[test]
#[should_panic(expected = "deadlock")]
fn without_the_empty_check_fence_a_wakeup_is_lost() {
    without_fence("array_queue.empty", push_wakes_consumer);
}

/// A producer waiting for room is woken by the pop that makes it.
fn pop_wakes_producer() {
    loom::model(|| {
        let q = Arc::new(CompletionQueue::new(1));
        q.push(1u32).unwrap();
        let q2 = q.clone();
        let t = loom::thread::spawn(move || q2.pop());
        q.push_wait(2);
        assert_eq!(t.join().unwrap(), Some(1));
        assert_eq!(q.pop(), Some(2));
    });
}

#[test]
fn no_lost_wakeup_for_room() {
    pop_wakes_producer();
}

/// Mutation: without the ordering point after the pop, the waiting producer's
/// wake-up can be lost.
#[test]
#[should_panic(expected = "deadlock")]
fn without_the_pop_ordering_a_wakeup_for_room_is_lost() {
    without_fence("queue.pop", pop_wakes_producer);
}

/// Mutation: the same without the fence `ArrayQueue` issues before it reports "full".
#[test]
#[should_panic(expected = "deadlock")]
fn without_the_full_check_fence_a_wakeup_for_room_is_lost() {
    without_fence("array_queue.full", pop_wakes_producer);
}

/// Two consumers asleep, two items pushed by two producers: the first wake-up takes
/// every sleeper off the books, and the second push, finding none counted, does not
/// signal — yet both consumers get an item (a woken consumer re-registers before it
/// sleeps again).
#[test]
fn one_wakeup_per_generation_reaches_every_consumer() {
    loom::model(|| {
        let q = Arc::new(CompletionQueue::new(2));
        let consumers: Vec<_> = (0..2)
            .map(|_| {
                let q = q.clone();
                loom::thread::spawn(move || q.pop_wait())
            })
            .collect();
        let q2 = q.clone();
        let p = loom::thread::spawn(move || q2.push(1u32).unwrap());
        q.push(2u32).unwrap();
        p.join().unwrap();
        let mut got: Vec<u32> = consumers.into_iter().map(|c| c.join().unwrap()).collect();
        got.sort_unstable();
        assert_eq!(got, [1, 2]);
    });
}

/// A consumer that times out leaves the books: a later push neither loses an item
/// nor wakes a thread that is gone, and a second pop still gets it. (Loom's
/// `wait_timeout` never times out, so a zero timeout: register, re-check, give up.)
#[test]
fn timed_out_consumer_unregisters() {
    loom::model(|| {
        let q = Arc::new(CompletionQueue::new(2));
        let q2 = q.clone();
        let t = loom::thread::spawn(move || q2.push(3u32).unwrap());
        let first = q.pop_timeout(Duration::ZERO);
        t.join().unwrap();
        let got = first.or_else(|| q.pop_timeout(Duration::ZERO));
        assert_eq!(got, Some(3));
        assert_eq!(q.waiters.count.load(Ordering::Relaxed), 0);
    });
}

/// A completion that overflows a full queue (the ring's path) reaches a consumer
/// blocked in `pop_wait`, after the item queued before it.
#[test]
fn overflow_wakes_a_waiting_consumer_in_order() {
    overflow_wakes_in_order();
}

fn overflow_wakes_in_order() {
    loom::model(|| {
        // Leaked, not an `Arc`: when the mutation below deadlocks, loom 0.7 reports it
        // from inside the spawned thread's `Arc` drop and then aborts the process
        // ("panic in a destructor during cleanup") instead of failing the model.
        let q: &'static CompletionQueue<u32> = Box::leak(Box::new(CompletionQueue::new(1)));
        q.push(1u32).unwrap();
        let t = loom::thread::spawn(move || q.push_overflow(2));
        assert_eq!(q.pop_wait(), 1);
        assert_eq!(q.pop_wait(), 2);
        t.join().unwrap();
    });
}

/// Mutation: without the overflow route's fence, the consumer about to sleep can read
/// an empty overflow list while the ring's thread reads no sleeper.
#[test]
#[should_panic(expected = "deadlock")]
fn without_the_overflow_fence_a_wakeup_is_lost() {
    without_fence("queue.notify_fenced", overflow_wakes_in_order);
}
