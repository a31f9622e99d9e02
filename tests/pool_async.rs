//! `BufferPool::get_async`: the fast path, hand-off under contention, FIFO order among
//! waiters (async and blocking), cancellation at every stage, and slots parked in an idle
//! thread's magazine. Executors here are std-only (`Wake` + thread parking).
//!
//! Every wait is bounded: `block_on_within` fails when the future is not *woken* in time
//! (it never re-polls on its own, so a lost wake-up fails instead of being papered over),
//! and a watchdog ends the process if a test hangs anywhere else.

mod common;

use common::bounds::watchdog;

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Barrier};
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use iocomplete::{BufferPool, GetBuf, PoolBuf};

use common::maps::{all_back, small_pool as pool};

/// A waker that records wake-ups (and unparks the thread that made it).
struct Flag {
    woken: AtomicUsize,
    thread: std::thread::Thread,
}

impl Flag {
    fn new() -> Arc<Flag> {
        Arc::new(Flag {
            woken: AtomicUsize::new(0),
            thread: std::thread::current(),
        })
    }

    fn woken(&self) -> usize {
        self.woken.load(Ordering::Acquire)
    }
}

impl Wake for Flag {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.fetch_add(1, Ordering::Release);
        self.thread.unpark();
    }
}

/// Poll `f` once with `flag`'s waker.
fn poll_with<F: Future + Unpin>(f: &mut F, flag: &Arc<Flag>) -> Poll<F::Output> {
    let waker = Waker::from(flag.clone());
    Pin::new(f).poll(&mut Context::from_waker(&waker))
}

/// Drive `f` on this thread; poll again only when woken. Returns the output and the
/// number of polls. Panics if a pending future is not woken within `limit`.
fn block_on_within<F: Future>(f: F, limit: Duration) -> (F::Output, usize) {
    let flag = Flag::new();
    let waker = Waker::from(flag.clone());
    let mut f = std::pin::pin!(f);
    let deadline = Instant::now() + limit;
    let mut polls = 0;
    let mut seen = 0;
    loop {
        polls += 1;
        if let Poll::Ready(v) = f.as_mut().poll(&mut Context::from_waker(&waker)) {
            return (v, polls);
        }
        while flag.woken() == seen {
            let now = Instant::now();
            assert!(now < deadline, "not woken within {limit:?}: lost wake-up");
            std::thread::park_timeout(deadline - now);
        }
        seen = flag.woken();
    }
}

const LIMIT: Duration = Duration::from_secs(10);

/// Fill header and the first 64 data bytes with `tag`.
fn stamp(b: &mut PoolBuf, tag: u64) {
    b.clear();
    for _ in 0..8 {
        b.extend_from_slice(&tag.to_le_bytes()).unwrap();
    }
    b.header_mut().copy_from_slice(&tag.to_le_bytes());
}

fn check(b: &PoolBuf, tag: u64) {
    for w in b.frame().chunks(8) {
        assert_eq!(w, tag.to_le_bytes(), "slot shared by two live owners");
    }
}

#[test]
fn get_async_future_is_static_and_send() {
    fn spawnable<T: Future<Output = PoolBuf> + Send + 'static>(_: &T) {}
    let pool = pool(1);
    let f: GetBuf = pool.get_async();
    spawnable(&f);
    drop(pool); // the future holds its own handle
    let (b, polls) = block_on_within(f, LIMIT);
    assert_eq!(polls, 1);
    assert_eq!(b.capacity(), 4096);
}

/// A free slot: the first poll resolves, and nothing keeps the waker.
#[test]
fn fast_path_resolves_on_the_first_poll_without_registering() {
    for slots in [1, 64] {
        let pool = pool(slots);
        let flag = Flag::new();
        let mut f = pool.get_async();
        let Poll::Ready(b) = poll_with(&mut f, &flag) else {
            panic!("{slots} slots: a free slot, yet the first poll is pending")
        };
        assert_eq!(
            Arc::strong_count(&flag),
            1,
            "{slots} slots: the waker was cloned (registered) on the fast path"
        );
        drop(f);
        drop(b);
        all_back(&pool, "after the fast path");
    }
}

/// Eight threads, each `ROUNDS` times get_async + stamp + yield + check + drop, on a
/// two-slot pool (no magazines) and on a 32-slot pool with all but two slots held (the
/// magazine path): every future resolves, no slot is handed to two owners, many
/// resolve through a hand-off (pending first, woken later), and every slot is back at
/// the end.
#[test]
fn eight_threads_on_two_free_slots_hand_off_and_lose_nothing() {
    let _dog = watchdog("eight_threads_on_two_free_slots", 120);
    const ROUNDS: u64 = 2000;
    for (slots, held) in [(2usize, 0usize), (32, 30)] {
        let pool = pool(slots);
        let hold: Vec<_> = (0..held).map(|_| pool.try_get().unwrap()).collect();
        let handoffs = Arc::new(AtomicU64::new(0));
        let start = Arc::new(Barrier::new(8));
        let ts: Vec<_> = (0..8u64)
            .map(|who| {
                let (p, handoffs, start) = (pool.clone(), handoffs.clone(), start.clone());
                std::thread::spawn(move || {
                    start.wait();
                    for i in 0..ROUNDS {
                        let (mut b, polls) = block_on_within(p.get_async(), LIMIT);
                        if polls > 1 {
                            handoffs.fetch_add(1, Ordering::Relaxed);
                        }
                        let tag = who << 32 | i;
                        stamp(&mut b, tag);
                        std::thread::yield_now();
                        check(&b, tag);
                    }
                })
            })
            .collect();
        for t in ts {
            t.join().unwrap();
        }
        let handoffs = handoffs.load(Ordering::Relaxed);
        assert!(
            handoffs > 0,
            "{slots} slots: no future ever waited: the slow path was not exercised"
        );
        eprintln!(
            "{slots} slots, {held} held: {handoffs} of {} gets waited",
            8 * ROUNDS
        );
        drop(hold);
        all_back(&pool, &format!("{slots} slots, at the end"));
    }
}

/// Blocking gets and async gets on one two-slot pool: they share one line, nobody
/// starves, nothing is lost.
#[test]
fn blocking_and_async_getters_share_the_line() {
    let _dog = watchdog("blocking_and_async_getters_share_the_line", 120);
    const ROUNDS: u64 = 1000;
    for slots in [2usize, 32] {
        let pool = pool(slots);
        let hold: Vec<_> = (0..slots - 2).map(|_| pool.try_get().unwrap()).collect();
        let ts: Vec<_> = (0..6u64)
            .map(|who| {
                let p = pool.clone();
                std::thread::spawn(move || {
                    for i in 0..ROUNDS {
                        let mut b = if who % 2 == 0 {
                            block_on_within(p.get_async(), LIMIT).0
                        } else {
                            p.get_timeout(LIMIT).expect("blocking get starved")
                        };
                        let tag = who << 32 | i;
                        stamp(&mut b, tag);
                        std::thread::yield_now();
                        check(&b, tag);
                    }
                })
            })
            .collect();
        for t in ts {
            t.join().unwrap();
        }
        drop(hold);
        all_back(&pool, &format!("{slots} slots, at the end"));
    }
}

/// Three futures register in order; slots come back one at a time: each return wakes
/// exactly the oldest waiter, which then resolves, while the younger ones stay pending.
#[test]
fn waiters_resolve_in_registration_order() {
    for slots in [3usize, 48] {
        let pool = pool(slots);
        let mut held: Vec<_> = (0..slots).map(|_| pool.try_get().unwrap()).collect();
        let flags: Vec<_> = (0..3).map(|_| Flag::new()).collect();
        let mut futs: Vec<_> = (0..3).map(|_| pool.get_async()).collect();
        for (f, flag) in futs.iter_mut().zip(&flags) {
            assert!(poll_with(f, flag).is_pending());
        }
        let mut got = Vec::new();
        for i in 0..3 {
            drop(held.pop());
            for (j, flag) in flags.iter().enumerate() {
                assert_eq!(
                    flag.woken(),
                    usize::from(j <= i),
                    "{slots} slots, return {i}: waiter {j} woken {} times",
                    flag.woken()
                );
            }
            // The younger ones are still pending when polled.
            for j in i + 1..3 {
                assert!(poll_with(&mut futs[j], &flags[j]).is_pending());
            }
            let Poll::Ready(b) = poll_with(&mut futs[i], &flags[i]) else {
                panic!("{slots} slots: waiter {i} woken but pending")
            };
            got.push(b);
        }
        drop(got);
        drop(futs);
        drop(held);
        all_back(&pool, &format!("{slots} slots, at the end"));
    }
}

/// A future handed a slot and dropped before it polls again passes the slot on to the
/// next waiter; with no next waiter, the slot is free again.
#[test]
fn cancel_after_hand_off_passes_the_slot_on() {
    for slots in [1usize, 32] {
        let pool = pool(slots);
        let mut held: Vec<_> = (0..slots).map(|_| pool.try_get().unwrap()).collect();
        let (f1, f2) = (Flag::new(), Flag::new());
        let mut first = pool.get_async();
        let mut second = pool.get_async();
        assert!(poll_with(&mut first, &f1).is_pending());
        assert!(poll_with(&mut second, &f2).is_pending());
        drop(held.pop());
        assert_eq!((f1.woken(), f2.woken()), (1, 0));
        drop(first); // served, never claimed
        assert_eq!(f2.woken(), 1, "{slots} slots: the slot was not passed on");
        assert_eq!(Arc::strong_count(&f1), 1, "the first waker was leaked");
        let Poll::Ready(b) = poll_with(&mut second, &f2) else {
            panic!("{slots} slots: second waiter woken but pending")
        };
        held.push(b);
        drop(second);
        // Served, then dropped with nobody behind it: the slot is free.
        let f3 = Flag::new();
        let mut third = pool.get_async();
        assert!(poll_with(&mut third, &f3).is_pending());
        drop(held.pop());
        assert_eq!(f3.woken(), 1);
        drop(third);
        assert_eq!(pool.stats().free, 1, "{slots} slots: handed-off slot lost");
        drop(held);
        all_back(&pool, &format!("{slots} slots, at the end"));
    }
}

/// A future dropped while queued leaves the line (the one behind it is served next) and
/// keeps no waker.
#[test]
fn cancel_while_queued_leaves_no_trace() {
    for slots in [1usize, 32] {
        let pool = pool(slots);
        let mut held: Vec<_> = (0..slots).map(|_| pool.try_get().unwrap()).collect();
        let (f1, f2) = (Flag::new(), Flag::new());
        let mut first = pool.get_async();
        let mut second = pool.get_async();
        assert!(poll_with(&mut first, &f1).is_pending());
        assert!(poll_with(&mut second, &f2).is_pending());
        assert_eq!(
            Arc::strong_count(&f1),
            2,
            "registered: the queue holds a waker"
        );
        drop(first);
        assert_eq!(Arc::strong_count(&f1), 1, "cancelled: waker leaked");
        drop(held.pop());
        assert_eq!((f1.woken(), f2.woken()), (0, 1));
        let Poll::Ready(b) = poll_with(&mut second, &f2) else {
            panic!("{slots} slots: second waiter woken but pending")
        };
        drop(b);
        drop(second);
        // Nobody waits any more: a new future takes the free slot at once.
        let (b, polls) = block_on_within(pool.get_async(), LIMIT);
        assert_eq!(polls, 1);
        drop(b);
        drop(held);
        all_back(&pool, &format!("{slots} slots, at the end"));
    }
}

/// The waker of the latest poll is the one woken.
#[test]
fn the_latest_waker_is_woken() {
    let pool = pool(1);
    let held = pool.try_get().unwrap();
    let (a, b) = (Flag::new(), Flag::new());
    let mut f = pool.get_async();
    assert!(poll_with(&mut f, &a).is_pending());
    assert!(poll_with(&mut f, &b).is_pending());
    assert_eq!(Arc::strong_count(&a), 1, "the replaced waker was kept");
    drop(held);
    assert_eq!((a.woken(), b.woken()), (0, 1));
    assert!(poll_with(&mut f, &b).is_ready());
    all_back(&pool, "at the end");
}

/// A hot thread looping try_get/drop on the only free slot does not starve an async
/// waiter: once it waits, returns go to it.
#[test]
fn async_waiter_is_not_starved_by_a_hot_get_put_loop() {
    let _dog = watchdog("async_waiter_is_not_starved", 60);
    for slots in [1usize, 16, 64] {
        let p = pool(slots);
        let _held: Vec<_> = (0..slots - 1).map(|_| p.try_get().unwrap()).collect();
        let stop = Arc::new(AtomicBool::new(false));
        let spins = Arc::new(AtomicU64::new(0));
        let hot = {
            let (p, stop, spins) = (p.clone(), stop.clone(), spins.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    if let Ok(mut b) = p.try_get() {
                        stamp(&mut b, 1);
                        spins.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        };
        while spins.load(Ordering::Relaxed) < 1000 {
            std::thread::yield_now();
        }
        let got = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            block_on_within(p.get_async(), LIMIT).0
        }));
        stop.store(true, Ordering::Relaxed);
        hot.join().unwrap();
        let b = got.unwrap_or_else(|_| panic!("slots={slots}: async waiter starved"));
        drop(b);
    }
}

/// The magazine handshake: a slot returned to an idle thread's magazine while an async
/// get registers is never stranded there (no periodic re-scan would find it): the
/// returning thread either sees the waiter and hands the slot over, or the waiter's
/// registration steals it. Many rounds with the return racing the registration; the
/// returning thread stays alive and idle afterwards (its exit would hand the magazine
/// back and hide a stranded slot).
#[test]
fn slot_returned_to_a_magazine_while_a_waiter_registers_is_not_stranded() {
    let _dog = watchdog("slot_returned_to_a_magazine", 120);
    let pool = pool(32); // magazines of 2
    let mut held: Vec<_> = (0..31).map(|_| pool.try_get().unwrap()).collect();
    let (to_helper, helper_rx) = mpsc::channel::<Option<(PoolBuf, u32)>>();
    let (done_tx, done) = mpsc::channel::<()>();
    let helper = std::thread::spawn(move || {
        // Returns each buffer it is given after a short, varying spin, then idles.
        while let Ok(Some((b, spin))) = helper_rx.recv() {
            for _ in 0..spin {
                std::hint::spin_loop();
            }
            drop(b);
            done_tx.send(()).unwrap();
        }
    });
    let mut waited = 0;
    for round in 0..2000u32 {
        let b = pool.try_get().unwrap(); // the last free slot
        to_helper.send(Some((b, round % 64 * 16))).unwrap();
        let (b, polls) = block_on_within(pool.get_async(), LIMIT);
        if polls > 1 {
            waited += 1;
        }
        done.recv_timeout(LIMIT).unwrap();
        // Back to the state of the round's start: 31 held, one free.
        held.push(b);
        drop(held.swap_remove(0));
    }
    to_helper.send(None).unwrap();
    helper.join().unwrap();
    eprintln!("{waited} of 2000 rounds waited");
    drop(held);
    all_back(&pool, "at the end");
}

/// Futures on a pool whose other handles are all gone still resolve when a slot comes
/// back (each holds a handle); the arena lives until the last buffer and future are gone.
#[test]
fn futures_keep_the_pool_alive() {
    let _dog = watchdog("futures_keep_the_pool_alive", 30);
    let pool: BufferPool = pool(1);
    let held = pool.try_get().unwrap();
    let f = pool.get_async();
    drop(pool);
    let t = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(10));
        drop(held);
    });
    let (b, _) = block_on_within(f, LIMIT);
    t.join().unwrap();
    assert_eq!(b.capacity(), 4096);
}

/// A blocking `get` inside a bare park/unpark executor (`common::block_on`): the task's
/// wake-up arrives while `get` is parked and is consumed there. `get` hands the token on
/// as it leaves, so the executor still sees it and polls again instead of sleeping
/// forever.
#[test]
fn a_blocking_get_does_not_swallow_an_executors_wakeup() {
    let _w = watchdog("a_blocking_get_does_not_swallow_an_executors_wakeup", 20);
    let p = pool(1);
    let held = p.try_get().unwrap();
    // The slot comes back only after the task's own wake-up has been sent.
    let returner = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        drop(held);
    });
    let mut polls = 0;
    let mut got = None;
    let (p2, got_ref, polls_ref) = (p.clone(), &mut got, &mut polls);
    common::block_on(std::future::poll_fn(move |cx| {
        *polls_ref += 1;
        if *polls_ref == 1 {
            // Wake this task in 50 ms — while `get` below is parked.
            let waker = cx.waker().clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(50));
                waker.wake();
            });
            *got_ref = Some(p2.get());
            return Poll::Pending;
        }
        Poll::Ready(())
    }));
    returner.join().unwrap();
    assert_eq!(polls, 2);
    drop(got);
    all_back(&p, "after the blocking get");
}
