//! Outside attack on `Ring::submit_on` + `HandOff::cancel` and on `run_once`/`run_wait`
//! returning without waiting in a turn that ran a message (issue 15c). Written from the
//! docs alone, through the public API. Every wait is bounded (watchdog / `bounded`).
//! Attacks that found a bug are `#[ignore = "BUG: ..."]`.

mod common;

use common::bounds::{bounded, watchdog};
use common::fd::pipe;
use common::rings::{assert_once, counters};

use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use iocomplete::{BackendKind, BufferPool, ErrorKind, HandOff, Op, Ring};

/// The backends to attack: the env's default and the thread pool.
fn backends() -> Vec<BackendKind> {
    let mut v = vec![BackendKind::Threads];
    let d = Ring::new().unwrap().backend();
    if d != BackendKind::Threads {
        v.push(d);
    }
    v
}

fn ring(kind: BackendKind) -> Ring {
    Ring::builder().backend(kind).build().unwrap()
}

/// Drive `ring` until `done` or 20 s; panics on timeout.
fn drive_until(ring: &mut Ring, what: &str, mut done: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !done() {
        assert!(t0.elapsed() < Duration::from_secs(20), "{what}: timed out");
        ring.run_once(Some(Duration::from_millis(20))).unwrap();
    }
}

fn busy_us(us: u64) {
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_micros(us) {
        std::hint::spin_loop();
    }
}

fn kind_of(c: &iocomplete::Completion) -> Option<ErrorKind> {
    c.error().map(|e| e.kind())
}

fn pool_free(pool: &BufferPool) {
    let st = pool.stats();
    assert_eq!(st.free, st.total, "pool slots leaked: {st:?}");
}

/// Cancel from another thread, racing the request leg's start on ring B, many rounds:
/// the read of an idle pipe can only end by cancel, so each must come home `Cancelled`,
/// exactly once, and every slot back.
#[test]
fn cancel_from_other_thread_races_start() {
    let _w = watchdog("cancel_from_other_thread_races_start", 120);
    for kind in backends() {
        let (bh, bt) = ring(kind).spawn().unwrap();
        let (r, _w) = pipe();
        let p = bh.register(r).unwrap();
        let pool = common::pool(4, 4096);
        let mut a = ring(kind);
        let rounds = 300;
        let counts = counters(rounds);
        let kinds = Arc::new(Mutex::new(Vec::new()));
        let (ctx, crx) = mpsc::channel::<(HandOff, u64)>();
        let canceller = std::thread::spawn(move || {
            while let Ok((h, us)) = crx.recv() {
                busy_us(us);
                h.cancel();
                h.cancel();
            }
        });
        let mut rng = fastrand::Rng::with_seed(0x15c);
        for i in 0..rounds {
            let c = counts.clone();
            let k = kinds.clone();
            let h = a.submit_on(
                &bh,
                Op::read(p, 0, pool.try_get().unwrap()),
                move |_, comp| {
                    c[i].fetch_add(1, Ordering::SeqCst);
                    k.lock().unwrap().push(kind_of(&comp));
                },
            );
            ctx.send((h, rng.u64(0..80))).unwrap();
            let c = counts.clone();
            drive_until(&mut a, "cancel race round", || {
                c[i].load(Ordering::SeqCst) > 0
            });
        }
        drop(ctx);
        canceller.join().unwrap();
        // Let any duplicate arrive.
        for _ in 0..5 {
            a.run_once(Some(Duration::from_millis(5))).unwrap();
        }
        assert_once(&counts, "hand-off completions");
        let k = kinds.lock().unwrap();
        assert!(
            k.iter().all(|k| *k == Some(ErrorKind::Cancelled)),
            "{kind:?}: not all Cancelled: {:?}",
            k.iter()
                .filter(|k| **k != Some(ErrorKind::Cancelled))
                .take(4)
                .collect::<Vec<_>>()
        );
        bh.shutdown();
        bounded("join B", 20, move || bt.join().unwrap()).unwrap();
        common::check_teardown(&a, &[&pool]);
        pool_free(&pool);
    }
}

/// Cancel from inside `then`: the completion of a nop cancels a second hand-off (a read of
/// an idle pipe) and its own hand-off (already completed: nothing), twice.
#[test]
fn cancel_from_inside_then() {
    let _w = watchdog("cancel_from_inside_then", 60);
    for kind in backends() {
        let (bh, bt) = ring(kind).spawn().unwrap();
        let (r, _w) = pipe();
        let p = bh.register(r).unwrap();
        let pool = common::pool(2, 4096);
        let mut a = ring(kind);
        let counts = counters(2);
        let got = Arc::new(Mutex::new(None));
        let (c, g) = (counts.clone(), got.clone());
        let read = a.submit_on(
            &bh,
            Op::read(p, 0, pool.try_get().unwrap()),
            move |_, comp| {
                c[1].fetch_add(1, Ordering::SeqCst);
                *g.lock().unwrap() = Some(kind_of(&comp));
            },
        );
        // Make sure the read started before it is cancelled from `then`.
        std::thread::sleep(Duration::from_millis(20));
        let slot: Arc<Mutex<Option<HandOff>>> = Arc::new(Mutex::new(None));
        let (c, s) = (counts.clone(), slot.clone());
        let read = Arc::new(read);
        let r2 = read.clone();
        let own = a.submit_on(&bh, Op::nop(), move |home, comp| {
            assert!(home.is_ok() && comp.is_ok());
            c[0].fetch_add(1, Ordering::SeqCst);
            r2.cancel();
            r2.cancel();
            if let Some(h) = s.lock().unwrap().as_ref() {
                h.cancel();
                h.cancel();
            }
        });
        *slot.lock().unwrap() = Some(own);
        let c = counts.clone();
        drive_until(&mut a, "both home", || {
            c.iter().all(|c| c.load(Ordering::SeqCst) > 0)
        });
        read.cancel();
        for _ in 0..5 {
            a.run_once(Some(Duration::from_millis(5))).unwrap();
        }
        assert_once(&counts, "completions");
        assert_eq!(*got.lock().unwrap(), Some(Some(ErrorKind::Cancelled)));
        bh.shutdown();
        bounded("join B", 20, move || bt.join().unwrap()).unwrap();
        common::check_teardown(&a, &[&pool]);
        pool_free(&pool);
    }
}

/// Cancel after ring B shut down (op in flight completes as its drop decides), after ring
/// A is dropped, and HandOffs kept after both rings are gone: cancel twice, no panic,
/// each completion exactly once, every slot back.
#[test]
fn cancel_after_rings_gone() {
    let _w = watchdog("cancel_after_rings_gone", 60);
    for kind in backends() {
        let (bh, bt) = ring(kind).spawn().unwrap();
        let (r, _w) = pipe();
        let p = bh.register(r).unwrap();
        let pool = common::pool(4, 4096);
        let mut a = ring(kind);
        let counts = counters(3);
        let homes = Arc::new(Mutex::new(Vec::new()));
        let mut hs = Vec::new();
        for i in 0..3 {
            let (c, hm) = (counts.clone(), homes.clone());
            hs.push(a.submit_on(
                &bh,
                Op::read(p, 0, pool.try_get().unwrap()),
                move |home, comp| {
                    c[i].fetch_add(1, Ordering::SeqCst);
                    hm.lock()
                        .unwrap()
                        .push((i, home.err().map(|e| e.kind()), kind_of(&comp)));
                },
            ));
        }
        // Let the request legs reach B and the reads start.
        for _ in 0..5 {
            a.run_once(Some(Duration::from_millis(10))).unwrap();
        }
        // Kill B: the reads end Cancelled, come home to A.
        bh.shutdown_now();
        bounded("join B", 20, move || bt.join().unwrap()).unwrap();
        hs[0].cancel();
        let c = counts.clone();
        drive_until(&mut a, "home after B gone", || {
            c.iter().all(|c| c.load(Ordering::SeqCst) > 0)
        });
        hs[1].cancel();
        common::check_teardown(&a, &[&pool]);
        drop(a);
        hs[2].cancel();
        for h in &hs {
            h.cancel();
            h.cancel();
        }
        assert_once(&counts, "completions");
        for (i, home, c) in homes.lock().unwrap().iter() {
            assert_eq!(*home, None, "op {i}: home ring was alive");
            assert_eq!(*c, Some(ErrorKind::Cancelled), "op {i}");
        }
        pool_free(&pool);
        drop(hs);
    }
}

/// Ring A dropped before its request leg left (doorbell at drop), HandOff cancelled after:
/// the op comes home exactly once, on B's thread with `Err(RingClosed)`.
#[test]
fn cancel_after_home_ring_dropped_before_request_left() {
    let _w = watchdog("cancel_after_home_ring_dropped", 60);
    for kind in backends() {
        let (bh, bt) = ring(kind).spawn().unwrap();
        let (r, _w) = pipe();
        let p = bh.register(r).unwrap();
        let pool = common::pool(1, 4096);
        let mut a = ring(kind);
        let counts = counters(1);
        let (tx, rx) = mpsc::channel();
        let c = counts.clone();
        let h = a.submit_on(
            &bh,
            Op::read(p, 0, pool.try_get().unwrap()),
            move |home, comp| {
                c[0].fetch_add(1, Ordering::SeqCst);
                let _ = tx.send((home.err().map(|e| e.kind()), kind_of(&comp)));
            },
        );
        drop(a);
        std::thread::sleep(Duration::from_millis(30));
        h.cancel();
        let got = rx.recv_timeout(Duration::from_secs(10)).expect("came home");
        assert_eq!(
            got,
            (Some(ErrorKind::RingClosed), Some(ErrorKind::Cancelled))
        );
        h.cancel();
        bh.shutdown();
        bounded("join B", 20, move || bt.join().unwrap()).unwrap();
        assert_once(&counts, "completion");
        pool_free(&pool);
    }
}

/// Cancel of an operation with a deadline: cancelled before the deadline it comes home
/// `Cancelled`; cancelled after its deadline fired, it comes home once (deadline's result).
#[test]
fn cancel_op_with_deadline() {
    let _w = watchdog("cancel_op_with_deadline", 60);
    for kind in backends() {
        let (bh, bt) = ring(kind).spawn().unwrap();
        let (r, _w) = pipe();
        let p = bh.register(r).unwrap();
        let pool = common::pool(2, 4096);
        let mut a = ring(kind);
        let counts = counters(2);
        let kinds = Arc::new(Mutex::new(vec![None, None]));
        let mut hs = Vec::new();
        for (i, d) in [(0usize, 5_000u64), (1, 30)] {
            let (c, k) = (counts.clone(), kinds.clone());
            let op = Op::read(p, 0, pool.try_get().unwrap()).deadline(Duration::from_millis(d));
            hs.push(a.submit_on(&bh, op, move |_, comp| {
                c[i].fetch_add(1, Ordering::SeqCst);
                k.lock().unwrap()[i] = Some(kind_of(&comp));
            }));
        }
        for _ in 0..3 {
            a.run_once(Some(Duration::from_millis(5))).unwrap();
        }
        hs[0].cancel();
        let c = counts.clone();
        drive_until(&mut a, "deadline ops home", || {
            c.iter().all(|c| c.load(Ordering::SeqCst) > 0)
        });
        hs[1].cancel();
        hs[0].cancel();
        for _ in 0..5 {
            a.run_once(Some(Duration::from_millis(5))).unwrap();
        }
        assert_once(&counts, "completions");
        let k = kinds.lock().unwrap();
        assert_eq!(k[0], Some(Some(ErrorKind::Cancelled)), "{kind:?}");
        assert!(
            matches!(k[1], Some(Some(_))),
            "{kind:?}: deadline op {:?}",
            k[1]
        );
        bh.shutdown();
        bounded("join B", 20, move || bt.join().unwrap()).unwrap();
        common::check_teardown(&a, &[&pool]);
        pool_free(&pool);
    }
}

/// Thousands of HandOffs: nops and idle-pipe reads, all cancelled from another thread
/// while A runs; each home exactly once; reads all Cancelled; slots back.
#[test]
fn thousands_of_handoffs() {
    let _w = watchdog("thousands_of_handoffs", 120);
    for kind in backends() {
        let (bh, bt) = ring(kind).spawn().unwrap();
        let (r, _w) = pipe();
        let p = bh.register(r).unwrap();
        let reads = 64;
        let n = 3000;
        let pool = common::pool(reads, 4096);
        let mut a = Ring::builder().backend(kind).entries(256).build().unwrap();
        let counts = counters(n);
        let bad = Arc::new(AtomicUsize::new(0));
        let mut hs = Vec::new();
        for i in 0..n {
            let (c, b) = (counts.clone(), bad.clone());
            let is_read = i % (n / reads) == 0 && i / (n / reads) < reads;
            let op = if is_read {
                Op::read(p, 0, pool.try_get().unwrap())
            } else {
                Op::nop()
            };
            hs.push(a.submit_on(&bh, op, move |_, comp| {
                c[i].fetch_add(1, Ordering::SeqCst);
                if is_read && kind_of(&comp) != Some(ErrorKind::Cancelled) {
                    b.fetch_add(1, Ordering::SeqCst);
                }
            }));
            if i % 200 == 0 {
                a.run_once(Some(Duration::ZERO)).unwrap();
            }
        }
        let t = std::thread::spawn(move || {
            for h in &hs {
                h.cancel();
            }
            for h in &hs {
                h.cancel();
            }
            hs
        });
        let c = counts.clone();
        drive_until(&mut a, "thousands home", || {
            c.iter().all(|c| c.load(Ordering::SeqCst) > 0)
        });
        let hs = t.join().unwrap();
        for _ in 0..5 {
            a.run_once(Some(Duration::from_millis(5))).unwrap();
        }
        assert_once(&counts, "completions");
        assert_eq!(bad.load(Ordering::SeqCst), 0, "reads not Cancelled");
        bh.shutdown();
        bounded("join B", 30, move || bt.join().unwrap()).unwrap();
        common::check_teardown(&a, &[&pool]);
        pool_free(&pool);
        drop(hs);
    }
}

/// With a message run once and then only an op in flight that completes in ~300 ms, a
/// loop of `run_once(None)` must wait, not spin: a handful of turns and enters.
#[test]
fn run_once_still_waits_after_message() {
    let _w = watchdog("run_once_still_waits_after_message", 60);
    for kind in backends() {
        let mut a = ring(kind);
        let h = a.handle().unwrap();
        let (r, w) = pipe();
        let p = a.register(r).unwrap();
        let pool = common::pool(1, 4096);
        let done = Arc::new(AtomicU32::new(0));
        let d = done.clone();
        a.submit(Op::read(p, 0, pool.try_get().unwrap()))
            .then(move |_| {
                d.fetch_add(1, Ordering::SeqCst);
            });
        let ran = Arc::new(AtomicU32::new(0));
        let rn = ran.clone();
        h.post(move |r| {
            assert!(r.is_ok());
            rn.fetch_add(1, Ordering::SeqCst);
        });
        let writer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            common::fd::write_fd(std::os::fd::AsRawFd::as_raw_fd(&w), b"x");
            w
        });
        let before = a.stats();
        let mut turns = 0;
        while done.load(Ordering::SeqCst) == 0 {
            turns += 1;
            assert!(turns < 1000, "{kind:?}: run_once(None) spins");
            a.run_once(None).unwrap();
        }
        let after = a.stats();
        let _w: OwnedFd = writer.join().unwrap();
        assert_eq!(ran.load(Ordering::SeqCst), 1);
        assert_eq!(after.messages - before.messages, 1, "{after:?}");
        assert!(
            turns <= 20,
            "{kind:?}: {turns} turns for one message and one op"
        );
        assert!(
            after.enters - before.enters <= 40,
            "{kind:?}: {} enters",
            after.enters - before.enters
        );
        // run_wait likewise.
        let d = done.clone();
        let (r2, w2) = pipe();
        let p2 = a.register(r2).unwrap();
        a.submit(Op::read(p2, 0, pool.try_get().unwrap()))
            .then(move |_| {
                d.fetch_add(1, Ordering::SeqCst);
            });
        let rn = ran.clone();
        h.post(move |_| {
            rn.fetch_add(1, Ordering::SeqCst);
        });
        let writer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            common::fd::write_fd(std::os::fd::AsRawFd::as_raw_fd(&w2), b"x");
            w2
        });
        let mut turns = 0;
        while done.load(Ordering::SeqCst) < 2 {
            turns += 1;
            assert!(turns < 1000, "{kind:?}: run_wait(1, None) spins");
            a.run_wait(1, None).unwrap();
        }
        let _w2: OwnedFd = writer.join().unwrap();
        assert!(turns <= 20, "{kind:?}: run_wait {turns} turns");
        assert_eq!(ran.load(Ordering::SeqCst), 2);
        common::check_teardown(&a, &[&pool]);
    }
}

/// Messages refused at shutdown (run with `Err(RingClosed)`) are not counted in
/// `RingStats::messages`; those that ran with the ring are, exactly.
#[test]
fn refused_messages_not_counted() {
    let _w = watchdog("refused_messages_not_counted", 60);
    for kind in backends() {
        let mut ring = ring(kind);
        let h = ring.handle().unwrap();
        let t = std::thread::spawn(move || {
            let r = ring.drive_until_shutdown();
            (ring, r)
        });
        let ok = Arc::new(AtomicU64c::new(0));
        let err = Arc::new(AtomicU64c::new(0));
        let n = 2000;
        for i in 0..n {
            let (o, e) = (ok.clone(), err.clone());
            h.post(move |r| match r {
                Ok(_) => {
                    o.fetch_add(1, Ordering::SeqCst);
                }
                Err(er) => {
                    assert_eq!(er.kind(), ErrorKind::RingClosed);
                    e.fetch_add(1, Ordering::SeqCst);
                }
            });
            if i == n / 2 {
                h.shutdown_now();
            }
        }
        let (ring, r) = bounded("join", 20, move || t.join().unwrap());
        r.unwrap();
        // Posts after the ring returned: refused on this thread.
        let (o, e) = (ok.clone(), err.clone());
        h.post(move |r| {
            if r.is_ok() {
                o.fetch_add(1, Ordering::SeqCst);
            } else {
                e.fetch_add(1, Ordering::SeqCst);
            }
        });
        drop(ring);
        let (okn, errn) = (ok.load(Ordering::SeqCst), err.load(Ordering::SeqCst));
        assert_eq!(okn + errn, n as u64 + 1, "each message exactly once");
        assert!(errn >= 1, "the post after the ring returned was refused");
    }
}

type AtomicU64c = std::sync::atomic::AtomicU64;

/// `messages` counts exactly the messages that ran with the ring.
#[test]
fn messages_stat_exact_with_refusals() {
    let _w = watchdog("messages_stat_exact_with_refusals", 60);
    for kind in backends() {
        let mut ring = ring(kind);
        let h = ring.handle().unwrap();
        let ok = Arc::new(AtomicU64c::new(0));
        for _ in 0..10 {
            let o = ok.clone();
            h.post(move |r| {
                if r.is_ok() {
                    o.fetch_add(1, Ordering::SeqCst);
                }
            });
        }
        let o = ok.clone();
        drive_until(&mut ring, "ten messages", || o.load(Ordering::SeqCst) == 10);
        assert_eq!(ring.stats().messages, 10);
        h.shutdown_now();
        let err = Arc::new(AtomicU64c::new(0));
        for _ in 0..10 {
            let (o, e) = (ok.clone(), err.clone());
            h.post(move |r| {
                if r.is_ok() {
                    o.fetch_add(1, Ordering::SeqCst);
                } else {
                    e.fetch_add(1, Ordering::SeqCst);
                }
            });
        }
        let t0 = Instant::now();
        while ok.load(Ordering::SeqCst) + err.load(Ordering::SeqCst) < 20
            && t0.elapsed() < Duration::from_secs(5)
        {
            ring.run_once(Some(Duration::from_millis(10))).unwrap();
        }
        let s = ring.stats();
        let okn = ok.load(Ordering::SeqCst);
        assert_eq!(
            s.messages, okn,
            "{kind:?}: messages stat vs ran-with-ring: {s:?}"
        );
        drop(ring);
        assert_eq!(ok.load(Ordering::SeqCst) + err.load(Ordering::SeqCst), 20);
    }
}

/// Nested `run_once(None)` inside a message, with another message posted from inside:
/// the nested turn runs it and returns without waiting (nothing is in flight).
#[test]
fn nested_run_once_inside_message() {
    let _w = watchdog("nested_run_once_inside_message", 60);
    for kind in backends() {
        let mut a = ring(kind);
        let h = a.handle().unwrap();
        let counts = counters(3);
        let (c, h2) = (counts.clone(), h.clone());
        h.post(move |r| {
            let r = r.expect("ring runs");
            c[0].fetch_add(1, Ordering::SeqCst);
            let c2 = c.clone();
            h2.post(move |_| {
                c2[1].fetch_add(1, Ordering::SeqCst);
            });
            let c3 = c.clone();
            r.post(&h2, move |_| {
                c3[2].fetch_add(1, Ordering::SeqCst);
            });
            let t0 = Instant::now();
            while c[1].load(Ordering::SeqCst) == 0 || c[2].load(Ordering::SeqCst) == 0 {
                assert!(t0.elapsed() < Duration::from_secs(10), "nested messages");
                r.run_once(None).unwrap();
            }
        });
        let c = counts.clone();
        drive_until(&mut a, "outer", || c[0].load(Ordering::SeqCst) > 0);
        for _ in 0..3 {
            a.run_once(Some(Duration::from_millis(5))).unwrap();
        }
        assert_once(&counts, "messages");
        assert_eq!(a.stats().messages, 3);
        drop(h);
    }
}

/// Cancel racing a `shutdown_now` of ring B while the request leg may still be on its way,
/// a fresh B each round: exactly once, `Cancelled` (the idle pipe never gives data), slot
/// back.
#[test]
fn cancel_races_target_shutdown() {
    let _w = watchdog("cancel_races_target_shutdown", 120);
    for kind in backends() {
        let pool = common::pool(1, 4096);
        let mut a = ring(kind);
        let rounds = 60;
        let counts = counters(rounds);
        let kinds = Arc::new(Mutex::new(Vec::new()));
        let mut rng = fastrand::Rng::with_seed(0x15c1);
        for i in 0..rounds {
            let (bh, bt) = ring(kind).spawn().unwrap();
            let (r, w) = pipe();
            let p = bh.register(r).unwrap();
            let (c, k) = (counts.clone(), kinds.clone());
            let h = a.submit_on(
                &bh,
                Op::read(p, 0, pool.try_get().unwrap()),
                move |_, comp| {
                    c[i].fetch_add(1, Ordering::SeqCst);
                    k.lock().unwrap().push(kind_of(&comp));
                },
            );
            a.run_once(Some(Duration::ZERO)).unwrap();
            let (d1, d2) = (rng.u64(0..60), rng.u64(0..60));
            let bh2 = bh.clone();
            let killer = std::thread::spawn(move || {
                busy_us(d1);
                bh2.shutdown_now();
            });
            busy_us(d2);
            h.cancel();
            killer.join().unwrap();
            bounded("join B", 20, move || bt.join().unwrap()).unwrap();
            let c = counts.clone();
            drive_until(&mut a, "home", || c[i].load(Ordering::SeqCst) > 0);
            h.cancel();
            drop(w);
        }
        for _ in 0..5 {
            a.run_once(Some(Duration::from_millis(5))).unwrap();
        }
        assert_once(&counts, "completions");
        let k = kinds.lock().unwrap();
        assert!(
            k.iter().all(|k| *k == Some(ErrorKind::Cancelled)),
            "{kind:?}: {:?}",
            k.iter()
                .filter(|k| **k != Some(ErrorKind::Cancelled))
                .take(4)
                .collect::<Vec<_>>()
        );
        common::check_teardown(&a, &[&pool]);
        pool_free(&pool);
    }
}

/// After a graceful `shutdown` of B returned, a new hand-off is refused: it comes home
/// `Cancelled` exactly once, nothing reached the kernel; cancel after is harmless.
#[test]
fn handoff_to_gracefully_shut_ring() {
    let _w = watchdog("handoff_to_gracefully_shut_ring", 60);
    for kind in backends() {
        let (bh, bt) = ring(kind).spawn().unwrap();
        let (r, _w) = pipe();
        let p = bh.register(r).unwrap();
        bh.shutdown();
        bounded("join B", 20, move || bt.join().unwrap()).unwrap();
        let pool = common::pool(1, 4096);
        let mut a = ring(kind);
        let counts = counters(1);
        let got = Arc::new(Mutex::new(None));
        let (c, g) = (counts.clone(), got.clone());
        let h = a.submit_on(
            &bh,
            Op::read(p, 0, pool.try_get().unwrap()),
            move |home, comp| {
                assert!(home.is_ok());
                c[0].fetch_add(1, Ordering::SeqCst);
                *g.lock().unwrap() = Some(kind_of(&comp));
            },
        );
        let c = counts.clone();
        drive_until(&mut a, "refused home", || c[0].load(Ordering::SeqCst) > 0);
        h.cancel();
        h.cancel();
        for _ in 0..3 {
            a.run_once(Some(Duration::from_millis(5))).unwrap();
        }
        assert_once(&counts, "completion");
        assert_eq!(*got.lock().unwrap(), Some(Some(ErrorKind::Cancelled)));
        common::check_teardown(&a, &[&pool]);
        pool_free(&pool);
    }
}

/// A hand-off of an op on one of A's own targets completes `StaleTarget` once; cancel
/// before and after is harmless.
#[test]
fn cancel_stale_target_handoff() {
    let _w = watchdog("cancel_stale_target_handoff", 60);
    for kind in backends() {
        let (bh, bt) = ring(kind).spawn().unwrap();
        let pool = common::pool(2, 4096);
        let mut a = ring(kind);
        let (r, _w) = pipe();
        let mine = a.register(r).unwrap();
        let counts = counters(2);
        let kinds = Arc::new(Mutex::new(vec![None, None]));
        for i in 0..2 {
            let (c, k) = (counts.clone(), kinds.clone());
            let h = a.submit_on(
                &bh,
                Op::read(mine, 0, pool.try_get().unwrap()),
                move |_, comp| {
                    c[i].fetch_add(1, Ordering::SeqCst);
                    k.lock().unwrap()[i] = Some(kind_of(&comp));
                },
            );
            if i == 0 {
                h.cancel();
            }
            let c = counts.clone();
            drive_until(&mut a, "stale home", || c[i].load(Ordering::SeqCst) > 0);
            h.cancel();
        }
        assert_once(&counts, "completions");
        let k = kinds.lock().unwrap();
        // Cancelled before start may come home Cancelled; started it must be StaleTarget.
        assert!(
            matches!(
                k[0],
                Some(Some(ErrorKind::Cancelled)) | Some(Some(ErrorKind::StaleTarget))
            ),
            "{:?}",
            k[0]
        );
        assert_eq!(k[1], Some(Some(ErrorKind::StaleTarget)), "{kind:?}");
        bh.shutdown();
        bounded("join B", 20, move || bt.join().unwrap()).unwrap();
        common::check_teardown(&a, &[&pool]);
        pool_free(&pool);
    }
}

/// After a hand-off came home (wake poll armed, doorbells used), a loop of
/// `run_once(None)` with only a slow op in flight still waits: a handful of turns.
#[test]
fn run_once_waits_after_handoff_came_home() {
    let _w = watchdog("run_once_waits_after_handoff_came_home", 60);
    for kind in backends() {
        let (bh, bt) = ring(kind).spawn().unwrap();
        let mut a = ring(kind);
        let counts = counters(1);
        let c = counts.clone();
        let _h = a.submit_on(&bh, Op::nop(), move |_, comp| {
            assert!(comp.is_ok());
            c[0].fetch_add(1, Ordering::SeqCst);
        });
        let c = counts.clone();
        drive_until(&mut a, "nop home", || c[0].load(Ordering::SeqCst) > 0);
        let (r, w) = pipe();
        let p = a.register(r).unwrap();
        let pool = common::pool(1, 4096);
        let done = Arc::new(AtomicU32::new(0));
        let d = done.clone();
        a.submit(Op::read(p, 0, pool.try_get().unwrap()))
            .then(move |_| {
                d.fetch_add(1, Ordering::SeqCst);
            });
        let writer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            common::fd::write_fd(std::os::fd::AsRawFd::as_raw_fd(&w), b"x");
            w
        });
        let before = a.stats();
        let mut turns = 0;
        while done.load(Ordering::SeqCst) == 0 {
            turns += 1;
            assert!(turns < 1000, "{kind:?}: run_once(None) spins");
            a.run_once(None).unwrap();
        }
        let after = a.stats();
        let _w: OwnedFd = writer.join().unwrap();
        assert!(turns <= 20, "{kind:?}: {turns} turns");
        assert!(after.enters - before.enters <= 40, "{after:?}");
        bh.shutdown();
        bounded("join B", 20, move || bt.join().unwrap()).unwrap();
        assert_once(&counts, "hand-off");
        common::check_teardown(&a, &[&pool]);
    }
}

/// Nested `run_once(None)` inside a hand-off's `then` (itself a message on A), waiting for
/// a second hand-off: it comes home, each exactly once.
#[test]
fn nested_run_once_inside_then() {
    let _w = watchdog("nested_run_once_inside_then", 60);
    for kind in backends() {
        let (bh, bt) = ring(kind).spawn().unwrap();
        let mut a = ring(kind);
        let counts = counters(2);
        let (c, b2) = (counts.clone(), bh.clone());
        let _h = a.submit_on(&bh, Op::nop(), move |home, _| {
            let home = home.expect("A runs");
            c[0].fetch_add(1, Ordering::SeqCst);
            let c2 = c.clone();
            let _h2 = home.submit_on(&b2, Op::nop(), move |_, comp| {
                assert!(comp.is_ok());
                c2[1].fetch_add(1, Ordering::SeqCst);
            });
            let t0 = Instant::now();
            while c[1].load(Ordering::SeqCst) == 0 {
                assert!(t0.elapsed() < Duration::from_secs(10), "nested hand-off");
                home.run_once(None).unwrap();
            }
        });
        let c = counts.clone();
        drive_until(&mut a, "outer", || c[0].load(Ordering::SeqCst) > 0);
        for _ in 0..3 {
            a.run_once(Some(Duration::from_millis(5))).unwrap();
        }
        assert_once(&counts, "hand-offs");
        bh.shutdown();
        bounded("join B", 20, move || bt.join().unwrap()).unwrap();
        common::check_teardown(&a, &[]);
    }
}
