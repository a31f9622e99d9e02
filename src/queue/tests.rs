use super::*;
use std::sync::Arc;
use std::time::Instant;

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

/// Every producer and consumer blocks (capacity 2, more threads than cores), through
/// every waiting entry point: each item is delivered exactly once, and no thread is
/// left counted as a sleeper. Bounded: every wait has a timeout.
#[test]
fn blocking_mpmc_every_item_exactly_once() {
    use std::sync::atomic::{AtomicU8, AtomicUsize};
    const PRODUCERS: u64 = 3;
    const PER: u64 = 20_000;
    const TOTAL: usize = (PRODUCERS * PER) as usize;
    let q = Arc::new(CompletionQueue::new(2));
    let seen: Arc<Vec<AtomicU8>> = Arc::new((0..TOTAL).map(|_| AtomicU8::new(0)).collect());
    let taken = Arc::new(AtomicUsize::new(0));
    let producers: Vec<_> = (0..PRODUCERS)
        .map(|p| {
            let q = q.clone();
            std::thread::spawn(move || {
                for i in 0..PER {
                    let v = p * PER + i;
                    match i % 3 {
                        0 => q.push_wait(v),
                        1 => {
                            if let Err(back) = q.push_timeout(v, Duration::from_secs(30)) {
                                panic!("no room for {back} in 30 s");
                            }
                        }
                        _ => {
                            if let Err(back) = q.push(v) {
                                q.push_wait(back);
                            }
                        }
                    }
                }
            })
        })
        .collect();
    let consumers: Vec<_> = (0..3usize)
        .map(|c| {
            let (q, seen, taken) = (q.clone(), seen.clone(), taken.clone());
            std::thread::spawn(move || {
                let mut batch = Vec::new();
                let deadline = Instant::now() + Duration::from_secs(60);
                while taken.load(Ordering::Relaxed) < TOTAL {
                    assert!(Instant::now() < deadline, "consumers stalled");
                    batch.clear();
                    match c {
                        0 => batch.extend(q.pop_timeout(Duration::from_millis(20))),
                        1 => {
                            q.pop_batch_timeout(&mut batch, 1, Duration::from_millis(20));
                        }
                        _ => {
                            q.pop_batch_timeout(&mut batch, 64, Duration::from_millis(20));
                        }
                    }
                    for &v in &batch {
                        seen[v as usize].fetch_add(1, Ordering::Relaxed);
                    }
                    taken.fetch_add(batch.len(), Ordering::Relaxed);
                }
            })
        })
        .collect();
    for t in producers.into_iter().chain(consumers) {
        t.join().unwrap();
    }
    assert_eq!(taken.load(Ordering::Relaxed), TOTAL);
    let wrong: Vec<usize> = (0..TOTAL)
        .filter(|&i| seen[i].load(Ordering::Relaxed) != 1)
        .collect();
    assert!(
        wrong.is_empty(),
        "items not delivered exactly once: {wrong:?}"
    );
    assert!(q.is_empty());
    assert_eq!(q.waiters.count.load(Ordering::Relaxed), 0);
    assert_eq!(q.space.count.load(Ordering::Relaxed), 0);
}

/// Many laps around a small ring, through the full and empty edges: FIFO order, `len`
/// exact at every step, a full ring hands the item back, an empty one yields nothing.
#[test]
fn wrap_around_full_and_empty_edges() {
    let q = CompletionQueue::new(3);
    let mut out = Vec::new();
    assert_eq!(q.pop_batch(&mut out, 0), 0);
    assert_eq!(q.pop_batch_timeout(&mut out, 0, Duration::MAX), 0);
    let (mut next_in, mut next_out) = (0u32, 0u32);
    for lap in 0..1000u32 {
        // Fill to the brim (1, 2 or 3 items from where the last lap left off).
        while q.push(next_in).is_ok() {
            next_in += 1;
            assert!(q.len() <= 3);
        }
        assert_eq!(q.len(), 3);
        assert_eq!(q.push(u32::MAX), Err(u32::MAX));
        assert_eq!(q.push_timeout(u32::MAX, Duration::ZERO), Err(u32::MAX));
        // Drain 1..=3 of them, alternating the ways.
        let k = (lap % 3) as usize + 1;
        if lap % 2 == 0 {
            for _ in 0..k {
                assert_eq!(q.pop(), Some(next_out));
                next_out += 1;
            }
        } else {
            out.clear();
            assert_eq!(q.pop_batch(&mut out, k), k);
            assert_eq!(out, (next_out..next_out + k as u32).collect::<Vec<_>>());
            next_out += k as u32;
        }
        assert_eq!(q.len(), 3 - k);
    }
    while let Some(v) = q.pop() {
        assert_eq!(v, next_out);
        next_out += 1;
    }
    assert_eq!(next_out, next_in);
    assert!(q.is_empty());
    assert_eq!(q.pop_timeout(Duration::ZERO), None);
}

/// Overflowed items are counted in `len` and come out after the ring's, in order.
#[test]
fn overflow_counts_in_len_and_keeps_order() {
    let q = CompletionQueue::new(2);
    for v in 0..5u32 {
        q.push_overflow(v);
    }
    assert_eq!((q.len(), q.capacity()), (5, 2));
    // While the overflow list is non-empty, new items join it (behind older ones).
    q.push_overflow(5);
    let mut out = Vec::new();
    assert_eq!(q.pop_batch(&mut out, 100), 6);
    assert_eq!(out, [0, 1, 2, 3, 4, 5]);
    assert!(q.is_empty());
}

/// Consumers that time out leave the sleeper count; a later push then costs no
/// wake-up, and a consumer woken by one push re-registers before sleeping again.
#[test]
fn sleepers_leave_the_books() {
    let q = Arc::new(CompletionQueue::<u32>::new(4));
    let ts: Vec<_> = (0..3)
        .map(|_| {
            let q = q.clone();
            std::thread::spawn(move || q.pop_timeout(Duration::from_millis(30)))
        })
        .collect();
    for t in ts {
        assert_eq!(t.join().unwrap(), None);
    }
    assert_eq!(q.waiters.count.load(Ordering::Relaxed), 0);
    // Four sleepers, four items pushed one at a time: every sleeper gets one.
    let ts: Vec<_> = (0..4)
        .map(|_| {
            let q = q.clone();
            std::thread::spawn(move || q.pop_timeout(Duration::from_secs(30)))
        })
        .collect();
    std::thread::sleep(Duration::from_millis(20));
    for v in 0..4 {
        q.push(v).unwrap();
    }
    let mut got: Vec<u32> = ts.into_iter().map(|t| t.join().unwrap().unwrap()).collect();
    got.sort_unstable();
    assert_eq!(got, [0, 1, 2, 3]);
    assert_eq!(q.waiters.count.load(Ordering::Relaxed), 0);
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
