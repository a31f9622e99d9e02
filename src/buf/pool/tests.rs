use super::*;
use crate::testing::pool;

#[test]
fn geometry_aligns_data_and_places_header_before_it() {
    let pool = BufferPool::builder()
        .slots(3)
        .slot_len(5000)
        .header_len(24)
        .trailer_len(10)
        .build()
        .unwrap();
    let g = pool.geometry();
    assert_eq!(g.capacity, 8192);
    assert_eq!(g.head_room, 4096);
    assert_eq!(g.stride, 4096 + 8192 + 4096);
    let mut bufs: Vec<_> = (0..3).map(|_| pool.try_get().unwrap()).collect();
    for b in &mut bufs {
        assert_eq!(b.data_ptr() as usize % 4096, 0);
        assert_eq!(b.header().len(), 24);
        assert_eq!(b.frame().as_ptr() as usize + 24, b.data_ptr() as usize);
        assert_eq!(b.trailer_mut().len(), 10);
    }
    assert_eq!(pool.try_get().unwrap_err().kind(), ErrorKind::PoolExhausted);
    drop(bufs);
    assert_eq!(pool.stats().free, 3);
}

#[test]
fn alignments_above_the_page_size_are_honoured() {
    // Found by the `frame` fuzz target: mmap gives 4 KiB alignment only.
    for align in [8192, 16384, 1 << 16, 1 << 21] {
        let pool = BufferPool::builder()
            .slots(3)
            .slot_len(100)
            .header_len(10)
            .align(align)
            .populate(false)
            .build()
            .unwrap();
        let bufs: Vec<_> = (0..3).map(|_| pool.try_get().unwrap()).collect();
        for b in &bufs {
            assert_eq!(b.data_ptr() as usize % align, 0, "align {align}");
        }
    }
}

/// `AnonHugePages` of the mapping holding `addr`, in KiB (from /proc/self/smaps).
fn anon_huge_kib(addr: usize) -> Option<u64> {
    let smaps = std::fs::read_to_string("/proc/self/smaps").ok()?;
    let mut inside = false;
    for line in smaps.lines() {
        let first = line.split_whitespace().next().unwrap_or("");
        if let Some((lo, hi)) = first.split_once('-') {
            if let (Ok(lo), Ok(hi)) = (usize::from_str_radix(lo, 16), usize::from_str_radix(hi, 16))
            {
                inside = (lo..hi).contains(&addr);
                continue;
            }
        }
        if inside {
            if let Some(v) = line.strip_prefix("AnonHugePages:") {
                return v.trim().trim_end_matches("kB").trim().parse().ok();
            }
        }
    }
    None
}

#[test]
fn large_arena_is_on_huge_pages_and_no_slot_straddles_one() {
    // A 1 MiB O_DIRECT read from a slot on 4 KiB pages spans 256 scattered pages: a
    // loop device (128 segments) splits it, and io_uring retries every such read on an
    // io-wq thread. 5 slots: an arena size the kernel does not align on its own.
    let pool = BufferPool::builder()
        .slots(5)
        .slot_len(1 << 20)
        .build()
        .unwrap();
    let mut bufs: Vec<_> = (0..5).map(|_| pool.try_get().unwrap()).collect();
    for b in &mut bufs {
        let start = b.data_ptr() as usize;
        assert_eq!(
            start / HUGE_PAGE,
            (start + (1 << 20) - 1) / HUGE_PAGE,
            "slot at {start:#x} straddles a 2 MiB boundary"
        );
        // Populated and writable, zero-filled.
        b.set_len(1 << 20).unwrap();
        assert!(b.data().iter().step_by(4096).all(|&x| x == 0));
        b.data_mut().fill(7);
    }
    let thp =
        std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled").unwrap_or_default();
    if thp.contains("[never]") || thp.is_empty() {
        return; // no THP on this machine: alignment is all that can be checked
    }
    let huge = anon_huge_kib(bufs[0].data_ptr() as usize).expect("arena in smaps");
    assert!(
        huge >= 2048,
        "arena not on huge pages: AnonHugePages {huge} kB"
    );
}

#[test]
fn builder_rejects_bad_values() {
    let bad = [
        (
            BufferPool::builder().slots(0).build(),
            ErrorKind::OutOfRange {
                what: "pool slots",
                min: 1,
                max: (1 << 31) - 1,
            },
        ),
        (
            BufferPool::builder().align(3000).build(),
            ErrorKind::NotPowerOfTwo {
                what: "pool alignment",
                value: 3000,
            },
        ),
        (
            BufferPool::builder().slot_len(0).build(),
            ErrorKind::OutOfRange {
                what: "pool slot length",
                min: 1,
                max: 1 << 30,
            },
        ),
    ];
    for (b, want) in bad {
        assert_eq!(b.unwrap_err().kind(), want);
    }
}

#[test]
fn waiting_get_wakes_on_return_from_another_thread() {
    let pool = pool(1);
    let held = pool.try_get().unwrap();
    let t = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(20));
        drop(held);
    });
    let b = pool.get_timeout(Duration::from_secs(10)).unwrap();
    t.join().unwrap();
    drop(b);
    assert!(pool.get_timeout(Duration::from_millis(1)).is_ok());
    assert_eq!(pool.stats().free, 1);
}

#[test]
fn waiting_get_times_out() {
    let pool = pool(1);
    let _held = pool.try_get().unwrap();
    let e = pool.get_timeout(Duration::from_millis(5)).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::PoolExhausted);
}

/// A thread's exit hands its magazine back (slots to the shared list, claim released):
/// more threads than the pool has magazines, one after the other, each find one.
#[test]
fn exiting_threads_release_their_magazines() {
    let pool = pool(32);
    for round in 0..3 * MAGAZINES {
        let p = pool.clone();
        std::thread::spawn(move || {
            let bufs: Vec<_> = (0..2).map(|_| p.try_get().unwrap()).collect();
            drop(bufs);
            assert_eq!(
                p.inner.mags.iter().filter(|m| m.claimed()).count(),
                1,
                "round {round}: a magazine was not released by an earlier thread"
            );
            assert_eq!(p.inner.mags.iter().map(|m| m.len()).sum::<usize>(), 2);
        })
        .join()
        .unwrap();
        assert!(pool.inner.mags.iter().all(|m| !m.claimed() && m.len() == 0));
        assert_eq!(pool.inner.free.len(), 32);
    }
}

#[test]
fn regions_cover_arena_in_at_most_1gib() {
    let pool = BufferPool::builder()
        .slots(5)
        .slot_len(300 << 20)
        .populate(false)
        .build()
        .unwrap();
    let g = pool.geometry();
    assert_eq!(g.slots_per_region(), 3);
    let regions: Vec<_> = pool.inner.regions().collect();
    assert_eq!(regions.len(), 2);
    assert!(regions.iter().all(|r| r.1 <= MAX_REGION));
    assert_eq!(regions.iter().map(|r| r.1).sum::<usize>(), g.arena_len);
    assert_eq!(pool.inner.region_of(4), 1);
}

/// A waker that counts its wake-ups.
struct Count(std::sync::atomic::AtomicUsize);

impl std::task::Wake for Count {
    fn wake(self: std::sync::Arc<Self>) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

fn poll_get(f: &mut GetBuf, c: &std::sync::Arc<Count>) -> Poll<PoolBuf> {
    let waker = std::task::Waker::from(c.clone());
    Pin::new(f).poll(&mut Context::from_waker(&waker))
}

/// Wait (bounded) until `cond` holds.
fn until(what: &str, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// One line for blocking and async gets: a future, then a blocking `get_timeout`, then
/// another future register; three returns serve them in that order.
#[test]
fn blocking_and_async_waiters_are_served_in_registration_order() {
    for slots in [1usize, 32] {
        let pool = pool(slots);
        let mut held: Vec<_> = (0..slots).map(|_| pool.try_get().unwrap()).collect();
        let waiting = || pool.inner.waiters.waiting();
        let (c1, c3) = (
            std::sync::Arc::new(Count(0.into())),
            std::sync::Arc::new(Count(0.into())),
        );
        let mut f1 = pool.get_async();
        assert!(poll_get(&mut f1, &c1).is_pending());
        assert_eq!(waiting(), 1);
        let (got_tx, got_rx) = std::sync::mpsc::channel();
        let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
        let p = pool.clone();
        let t = std::thread::spawn(move || {
            let b = p.get_timeout(Duration::from_secs(10)).unwrap();
            got_tx.send(()).unwrap();
            go_rx.recv_timeout(Duration::from_secs(10)).unwrap();
            drop(b);
        });
        until("the blocking get to register", || waiting() == 2);
        let mut f3 = pool.get_async();
        assert!(poll_get(&mut f3, &c3).is_pending());
        assert_eq!(waiting(), 3);

        drop(held.pop());
        assert_eq!(waiting(), 2);
        assert_eq!(c1.0.load(Ordering::SeqCst), 1);
        let Poll::Ready(b1) = poll_get(&mut f1, &c1) else {
            panic!("{slots} slots: first waiter woken but pending")
        };

        drop(b1);
        got_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("the blocking get, second in line, was not served");
        assert_eq!(waiting(), 1);
        assert_eq!(c3.0.load(Ordering::SeqCst), 0);
        assert!(poll_get(&mut f3, &c3).is_pending());

        go_tx.send(()).unwrap();
        until("the third waiter to be woken", || {
            c3.0.load(Ordering::SeqCst) == 1
        });
        let Poll::Ready(b3) = poll_get(&mut f3, &c3) else {
            panic!("{slots} slots: third waiter woken but pending")
        };
        t.join().unwrap();
        assert_eq!(waiting(), 0);
        drop((b3, f1, f3, held));
        assert_eq!(pool.stats().free, slots);
    }
}

/// A blocking get that times out leaves the line.
#[test]
fn timed_out_get_leaves_the_line() {
    for slots in [1usize, 32] {
        let pool = pool(slots);
        let held: Vec<_> = (0..slots).map(|_| pool.try_get().unwrap()).collect();
        let e = pool.get_timeout(Duration::from_millis(5)).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::PoolExhausted);
        assert_eq!(pool.inner.waiters.waiting(), 0);
        drop(held);
        assert_eq!(pool.stats().free, slots);
    }
}
