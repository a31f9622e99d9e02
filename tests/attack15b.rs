//! Outside attack on the spinning driver loop (issue 15b): `Ring::drive_until_shutdown`
//! spins up to 50 µs after its last work, and while it spins requests from handles and
//! other rings skip their wake-up. Written from the docs alone, through the public API.
//! The promise attacked: no request is ever left unnoticed (the ring looks at its queues
//! again before any wait in the kernel); every operation and message runs exactly once;
//! every pool slot comes back; an idle spawned ring goes to sleep; a ring sharing a CPU
//! with a spinner still makes progress. Every wait is bounded (a watchdog exits the
//! process on a hang). Attacks that found a bug are `#[ignore = "BUG: ..."]`.

mod common;

use common::rings::{assert_once, counters, on_ring, verify_file};

use common::bounds::{bounded, eventually, watchdog};

use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use common::fd::pipe;
use common::verify;
use iocomplete::{
    BackendKind, BufferPool, Completion, ErrorKind, Op, Result, Ring, RingBuilder, RingHandle,
    RingSet, Target,
};

const BS: usize = 4096;
const SEED: u64 = 0x15b;

/// Busy-wait `us` microseconds: lands a request before, in, or just after the driver's
/// 50 µs spin window (a sleep would always land after it).
fn busy_us(us: u64) {
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_micros(us) {
        std::hint::spin_loop();
    }
}

/// A gap that sweeps the spin window: 0..=120 µs, with an occasional 1 ms sleep (the
/// ring is then surely blocked in the kernel).
fn gap(rng: &mut fastrand::Rng) {
    match rng.u32(0..10) {
        0 => std::thread::sleep(Duration::from_millis(1)),
        _ => busy_us(rng.u64(0..=120)),
    }
}

/// The ring `b` (or the env's default) builds.
fn ring(b: RingBuilder) -> Ring {
    b.build().unwrap()
}

/// Drive `ring` with `drive_until_shutdown` on a thread of its own and give it back at
/// the end (for `check_teardown`).
fn drive(mut ring: Ring) -> (RingHandle, std::thread::JoinHandle<(Ring, Result<()>)>) {
    let h = ring.handle().unwrap();
    let t = std::thread::Builder::new()
        .name("attack-driver".into())
        .spawn(move || {
            let r = ring.drive_until_shutdown();
            (ring, r)
        })
        .unwrap();
    (h, t)
}

/// Shut down, join (bounded) and check the teardown invariants.
fn finish(
    h: &RingHandle,
    t: std::thread::JoinHandle<(Ring, Result<()>)>,
    pools: &[&BufferPool],
) -> Ring {
    h.shutdown();
    let (ring, r) = bounded("join the driver", 30, move || t.join().unwrap());
    r.unwrap();
    common::check_teardown(&ring, pools);
    ring
}

/// A pool buffer holding verify block `offset`.
fn block_buf(pool: &BufferPool, offset: u64) -> iocomplete::PoolBuf {
    let mut b = pool.try_get().unwrap();
    b.clear();
    let mut data = vec![0u8; BS];
    verify::fill_block(&mut data, offset, SEED);
    b.extend_from_slice(&data).unwrap();
    b
}

/// The builders to attack: the env's default, the thread-pool backend, and (on io_uring)
/// SQPOLL, single-issuer and defer-taskrun rings.
fn flavours() -> Vec<(&'static str, RingBuilder)> {
    let mut v = vec![
        ("default", Ring::builder()),
        ("threads", Ring::builder().backend(BackendKind::Threads)),
    ];
    if Ring::new().unwrap().backend() == BackendKind::Uring {
        v.push(("sqpoll", Ring::builder().sqpoll(20)));
        v.push(("single_issuer", Ring::builder().single_issuer(true)));
        v.push((
            "defer_taskrun",
            Ring::builder().single_issuer(true).defer_taskrun(true),
        ));
    }
    v
}

// ---------------------------------------------------------------------------------------
// Handle requests landing before, in and after the spin window.
// ---------------------------------------------------------------------------------------

/// Every kind of handle request, each sent after a gap that sweeps the 50 µs spin window,
/// each completes exactly once with the right outcome, on every ring flavour.
#[test]
fn handle_requests_sent_across_the_spin_window_all_complete_once() {
    let _w = watchdog("handle requests across spin window", 240);
    for (name, b) in flavours() {
        bounded(name, 120, move || {
            let pool = common::pool(8, BS);
            let (h, t) = drive(ring(b));
            let file = h.register(verify_file(8, SEED)).unwrap();
            let mut rng = common::rng(7);
            const N: usize = 300;
            let done = counters(N);
            let (tx, rx) = mpsc::channel::<(usize, std::result::Result<(), String>)>();
            let mut slow = 0;
            for i in 0..N {
                gap(&mut rng);
                let t0 = Instant::now();
                let off = ((i % 8) * BS) as u64;
                let (d, tx) = (done.clone(), tx.clone());
                match i % 4 {
                    0 => h.submit_then(Op::read(file, off, pool.try_get().unwrap()), move |c| {
                        d[i].fetch_add(1, Ordering::SeqCst);
                        let r = c
                            .into_result()
                            .map_err(|e| e.to_string())
                            .and_then(|b| verify::check_block(b.data(), off, SEED));
                        let _ = tx.send((i, r));
                    }),
                    1 => {
                        let fut = h.submit_future(Op::read(file, off, pool.try_get().unwrap()));
                        let c = bounded("future", 20, move || common::block_on(fut));
                        d[i].fetch_add(1, Ordering::SeqCst);
                        let r = c
                            .into_result()
                            .map_err(|e| e.to_string())
                            .and_then(|b| verify::check_block(b.data(), off, SEED));
                        let _ = tx.send((i, r));
                    }
                    2 => h.post(move |r| {
                        d[i].fetch_add(1, Ordering::SeqCst);
                        let _ = tx.send((i, r.map(|_| ()).map_err(|e| e.to_string())));
                    }),
                    _ => {
                        let q = Arc::new(iocomplete::CompletionQueue::<Completion>::new(4));
                        h.submit_to(Op::nop().tag(i as u64), &q);
                        let got = q.pop_timeout(Duration::from_secs(20));
                        let c = got.expect("nop through submit_to completed");
                        assert_eq!(c.tag(), i as u64);
                        d[i].fetch_add(1, Ordering::SeqCst);
                        let _ = tx.send((i, c.result().map(|_| ()).map_err(|e| e.to_string())));
                    }
                }
                let (j, r) = rx
                    .recv_timeout(Duration::from_secs(20))
                    .unwrap_or_else(|_| panic!("{name}: request {i} never processed"));
                assert_eq!(j, i);
                r.unwrap_or_else(|e| panic!("{name}: request {i}: {e}"));
                if t0.elapsed() >= Duration::from_millis(40) {
                    slow += 1;
                }
            }
            // Information only (no timed assertion): a lost wake-up shows as a request
            // picked up by the loop's 50 ms fallback timeout.
            eprintln!("{name}: {slow}/{N} requests took >= 40 ms");
            assert_once(&done, name);
            finish(&h, t, &[&pool]);
        });
    }
}

// ---------------------------------------------------------------------------------------
// Messages that block the ring waiting for what only another request can bring.
// ---------------------------------------------------------------------------------------

/// How a message blocks its ring until a pipe read completes.
#[derive(Clone, Copy, Debug)]
enum Block {
    /// `Submission::wait`.
    Wait,
    /// `run_once(None)` until the read's routine ran.
    RunOnce,
    /// `run_wait(1, None)` until the read's routine ran.
    RunWait,
}

/// A message starts a read of an empty pipe and blocks its ring (no timeout) until the
/// read completes; the data comes only from a handle's write, sent from another thread
/// after a gap that sweeps the spin window. The ring was spinning when it ran the
/// message, so the write may have skipped its wake-up: the nested wait must still see it.
fn nested_wait_for_a_handles_write(name: &str, b: RingBuilder, how: Block, rounds: usize) {
    let pool = common::pool(8, BS);
    let (h, t) = drive(ring(b));
    let (rd, wr) = pipe();
    let rd = h.register(rd).unwrap();
    let wr = h.register(wr).unwrap();
    let mut rng = common::rng(11);
    for i in 0..rounds {
        let off = (i * BS) as u64;
        let (tx, rx) = mpsc::channel::<std::result::Result<(), String>>();
        let p = pool.clone();
        let (started_tx, started_rx) = mpsc::channel::<()>();
        h.post(move |r| {
            let ring = r.expect("ring runs");
            let op = Op::read(rd, 0, p.try_get().unwrap());
            let _ = started_tx.send(());
            let res = match how {
                Block::Wait => ring.submit(op).wait(),
                Block::RunOnce | Block::RunWait => {
                    let slot = Arc::new(std::sync::Mutex::new(None::<Completion>));
                    let s = slot.clone();
                    ring.submit(op).then(move |c| *s.lock().unwrap() = Some(c));
                    loop {
                        if let Some(c) = slot.lock().unwrap().take() {
                            break Ok(c);
                        }
                        let r = match how {
                            Block::RunOnce => ring.run_once(None),
                            _ => ring.run_wait(1, None),
                        };
                        if let Err(e) = r {
                            break Err(e);
                        }
                    }
                }
            };
            let r = res
                .map_err(|e| e.to_string())
                .and_then(|c| c.into_result().map_err(|e| e.to_string()))
                .and_then(|b| verify::check_block(b.data(), off, SEED));
            let _ = tx.send(r);
        });
        started_rx
            .recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|_| panic!("{name} {how:?}: round {i}: the message never ran"));
        gap(&mut rng);
        let (wtx, wrx) = mpsc::channel::<bool>();
        h.submit_then(Op::write(wr, 0, block_buf(&pool, off)), move |c| {
            let _ = wtx.send(c.bytes() == BS);
        });
        let r = rx.recv_timeout(Duration::from_secs(20)).unwrap_or_else(|_| {
            panic!("{name} {how:?}: round {i}: the nested wait never saw the handle's write (lost wake-up)")
        });
        r.unwrap_or_else(|e| panic!("{name} {how:?}: round {i}: {e}"));
        assert!(
            wrx.recv_timeout(Duration::from_secs(20)).unwrap(),
            "{name}: the write wrote a block"
        );
    }
    finish(&h, t, &[&pool]);
}

#[test]
fn message_blocked_in_submission_wait_sees_a_handles_write_sent_while_spinning() {
    let _w = watchdog("nested Submission::wait", 300);
    for (name, b) in flavours() {
        bounded(name, 120, move || {
            nested_wait_for_a_handles_write(name, b, Block::Wait, 150)
        });
    }
}

#[test]
fn message_blocked_in_run_once_none_sees_a_handles_write_sent_while_spinning() {
    let _w = watchdog("nested run_once(None)", 300);
    for (name, b) in flavours() {
        bounded(name, 120, move || {
            nested_wait_for_a_handles_write(name, b, Block::RunOnce, 150)
        });
    }
}

#[test]
fn message_blocked_in_run_wait_sees_a_handles_write_sent_while_spinning() {
    let _w = watchdog("nested run_wait", 300);
    for (name, b) in flavours() {
        bounded(name, 120, move || {
            nested_wait_for_a_handles_write(name, b, Block::RunWait, 150)
        });
    }
}

/// A message on ring A (spawned, spinning) blocks A (`run_once(wait)` in a loop, a 60 s
/// timeout op keeping it in the kernel) until ring B answers through `Ring::submit_on` —
/// B's reply is a `Ring::post` back to A, which skips its wake-up if A looked awake.
/// Round after round, with gaps. Every reply arrives exactly once.
fn cross_ring_nested_wait(backend: BackendKind, wait: Option<Duration>) {
    let how = wait;
    let b = Ring::builder().backend(backend);
    let (bh, bt) = drive(b.clone().build().unwrap());
    let (ah, at) = drive(b.build().unwrap());
    let mut rng = common::rng(3);
    const N: usize = 300;
    let replies = counters(N);
    for i in 0..N {
        gap(&mut rng);
        let (tx, rx) = mpsc::channel::<std::result::Result<(), String>>();
        let (bb, rep) = (bh.clone(), replies.clone());
        ah.post(move |r| {
            let ring = r.expect("A runs");
            // Keep A in the kernel while it waits; cancelled after.
            let keep = ring.submit(Op::timeout(Duration::from_secs(60))).to_ring();
            let got = Arc::new(AtomicBool::new(false));
            let g = got.clone();
            ring.submit_on(&bb, Op::nop().tag(i as u64), move |home, c| {
                assert!(home.is_ok() && c.is_ok() && c.tag() == i as u64);
                rep[i].fetch_add(1, Ordering::SeqCst);
                g.store(true, Ordering::SeqCst);
            });
            let mut res = Ok(());
            while !got.load(Ordering::SeqCst) {
                if let Err(e) = ring.run_once(wait) {
                    res = Err(e.to_string());
                    break;
                }
            }
            ring.cancel(keep);
            while ring.in_flight() > 0 && res.is_ok() {
                if let Err(e) = ring.run_once(Some(Duration::from_millis(100))) {
                    res = Err(e.to_string());
                }
            }
            // The cancelled timeout's completion sits in the ring's table: take it.
            while let Some(c) = ring.pop_completion() {
                drop(c);
            }
            let _ = tx.send(res);
        });
        let r = match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(r) => r,
            Err(_) => {
                // Diagnose: was the reply already on A (counted), and does a plain
                // wake-up of A (or of B) unstick it?
                let replied = replies[i].load(Ordering::SeqCst);
                ah.wake();
                let after_a = rx.recv_timeout(Duration::from_secs(2)).is_ok();
                bh.wake();
                let after_b = after_a || rx.recv_timeout(Duration::from_secs(2)).is_ok();
                panic!(
                    "{backend:?} {how:?}: round {i}: A's message never saw B's reply in 20 s \
                     (reply routine ran: {replied}; unstuck by waking A: {after_a}, then B: {after_b})"
                )
            }
        };
        r.unwrap();
    }
    assert_once(&replies, "submit_on replies");
    finish(&ah, at, &[]);
    finish(&bh, bt, &[]);
}

#[test]
fn message_waiting_on_ring_a_gets_ring_bs_reply_once() {
    let _w = watchdog("cross-ring nested wait", 200);
    for backend in [BackendKind::Uring, BackendKind::Threads] {
        if backend == BackendKind::Uring && Ring::new().unwrap().backend() != BackendKind::Uring {
            continue;
        }
        bounded("cross-ring nested wait", 90, move || {
            cross_ring_nested_wait(backend, Some(Duration::from_millis(100)))
        });
    }
}

/// The same with `run_once(None)`: the reply (a message, run by the nested call's
/// housekeeping) sets the flag, but `run_once(None)` then waits in the kernel for an
/// operation's completion — and the reply's wake-up, skipped because A looked awake (or
/// coalesced into an earlier one), never comes to end that wait: A stays blocked until the
/// 60 s timeout op. Waking A (`RingHandle::wake`) unsticks it.
#[test]
fn message_waiting_on_ring_a_with_run_once_none_gets_ring_bs_reply() {
    let _w = watchdog("cross-ring nested wait, run_once(None)", 200);
    for backend in [BackendKind::Uring, BackendKind::Threads] {
        if backend == BackendKind::Uring && Ring::new().unwrap().backend() != BackendKind::Uring {
            continue;
        }
        bounded("cross-ring nested wait, run_once(None)", 90, move || {
            cross_ring_nested_wait(backend, None)
        });
    }
}

// ---------------------------------------------------------------------------------------
// Cancels, shutdowns and registrations while spinning.
// ---------------------------------------------------------------------------------------

/// A read of an idle pipe, cancelled (`OpFuture::cancel`, `RingHandle::cancel`, or a
/// dropped future) after a gap that sweeps the spin window: it completes `Cancelled`
/// exactly once, and the buffer comes back.
#[test]
fn cancels_sent_while_spinning_complete_the_read_once_with_its_buffer_back() {
    let _w = watchdog("cancels while spinning", 240);
    for (name, b) in flavours() {
        bounded(name, 120, move || {
            let pool = common::pool(64, BS);
            let (h, t) = drive(ring(b));
            let (rd, wr) = pipe();
            let rd = h.register(rd).unwrap();
            let mut rng = common::rng(5);
            for i in 0..200u64 {
                let fut = h.submit_future(Op::read(rd, 0, pool.try_get().unwrap()).tag(i));
                match i % 3 {
                    0 => {
                        gap(&mut rng);
                        fut.cancel();
                        let c = bounded("cancelled future", 20, move || common::block_on(fut));
                        assert_eq!(
                            c.error().map(|e| e.kind()),
                            Some(ErrorKind::Cancelled),
                            "{name}: read {i}"
                        );
                    }
                    1 => {
                        // Wait for the id (the ring started it), then cancel by id.
                        assert!(eventually(20, || fut.id().is_some()), "{name}: started");
                        gap(&mut rng);
                        h.cancel(fut.id().unwrap());
                        let c = bounded("cancelled by id", 20, move || common::block_on(fut));
                        assert_eq!(c.error().map(|e| e.kind()), Some(ErrorKind::Cancelled));
                    }
                    _ => {
                        gap(&mut rng);
                        drop(fut);
                    }
                }
            }
            // Every dropped future's read must have been cancelled by now (or soon): the
            // pool refills without any data arriving.
            assert!(
                eventually(20, || {
                    let st = pool.stats();
                    st.free == st.total
                }),
                "{name}: dropped futures' reads not cancelled: {:?}",
                pool.stats()
            );
            drop(wr);
            finish(&h, t, &[&pool]);
        });
    }
}

/// `shutdown` sent right after the last work (in the spin window) ends the loop; so does
/// `shutdown_now` with a read of an idle pipe in flight (which completes `Cancelled`).
#[test]
fn shutdown_and_shutdown_now_sent_while_spinning_end_the_loop() {
    let _w = watchdog("shutdown while spinning", 300);
    for (name, b) in flavours() {
        let b2 = b.clone();
        bounded(name, 120, move || {
            let mut rng = common::rng(9);
            for i in 0..60 {
                let pool = common::pool(2, BS);
                let (h, t) = drive(ring(b2.clone()));
                let (tx, rx) = mpsc::channel();
                h.submit_then(Op::nop(), move |c| tx.send(c.is_ok()).unwrap());
                assert!(rx.recv_timeout(Duration::from_secs(20)).unwrap());
                gap(&mut rng);
                if i % 2 == 0 {
                    finish(&h, t, &[&pool]);
                } else {
                    let (rd, _wr) = pipe();
                    let rd = h.register(rd).unwrap();
                    let (tx, rx) = mpsc::channel();
                    h.submit_then(Op::read(rd, 0, pool.try_get().unwrap()), move |c| {
                        tx.send(c.error().map(|e| e.kind())).unwrap()
                    });
                    gap(&mut rng);
                    h.shutdown_now();
                    let (ring, r) =
                        bounded("join after shutdown_now", 30, move || t.join().unwrap());
                    r.unwrap();
                    let k = rx.recv_timeout(Duration::from_secs(5)).unwrap();
                    assert!(
                        k == Some(ErrorKind::Cancelled),
                        "{name}: idle read after shutdown_now: {k:?}"
                    );
                    common::check_teardown(&ring, &[&pool]);
                }
            }
        });
        let _ = b;
    }
}

/// `RingHandle::register` then immediate use of the target (through the handle, and in a
/// message on the ring's thread), then close, round after round with spin-window gaps:
/// every read returns the file's content.
#[test]
fn register_then_immediate_use_while_spinning_reads_the_right_file() {
    let _w = watchdog("register then use", 240);
    for (name, b) in flavours() {
        bounded(name, 120, move || {
            let pool = common::pool(8, BS);
            let (h, t) = drive(ring(b));
            let mut rng = common::rng(13);
            for i in 0..150u64 {
                let seed = SEED + i;
                let f = verify_file(2, 0);
                // Overwrite block 1 with this round's seed: a stale target shows.
                let mut data = vec![0u8; BS];
                verify::fill_block(&mut data, BS as u64, seed);
                std::os::unix::fs::FileExt::write_all_at(&f, &data, BS as u64).unwrap();
                gap(&mut rng);
                let file = h.register(f).unwrap();
                let (tx, rx) = mpsc::channel::<std::result::Result<(), String>>();
                let check = move |c: Completion| {
                    c.into_result()
                        .map_err(|e| e.to_string())
                        .and_then(|b| verify::check_block(b.data(), BS as u64, seed))
                };
                if i % 2 == 0 {
                    let tx = tx.clone();
                    h.submit_then(
                        Op::read(file, BS as u64, pool.try_get().unwrap()),
                        move |c| {
                            let _ = tx.send(check(c));
                        },
                    );
                } else {
                    let p = pool.clone();
                    let tx = tx.clone();
                    h.post(move |r| {
                        let ring = r.expect("ring runs");
                        let tx2 = tx.clone();
                        ring.submit(Op::read(file, BS as u64, p.try_get().unwrap()))
                            .then(move |c| {
                                let _ = tx2.send(check(c));
                            });
                    });
                }
                // SQPOLL: a close right after the read fails it (EBADF), a bug of its own
                // (`sqpoll_read_submitted_just_before_close_finishes_normally`): close after.
                if name != "sqpoll" {
                    h.close(file).unwrap();
                }
                rx.recv_timeout(Duration::from_secs(20))
                    .unwrap_or_else(|_| panic!("{name}: round {i}: read never completed"))
                    .unwrap_or_else(|e| panic!("{name}: round {i}: {e}"));
                if name == "sqpoll" {
                    h.close(file).unwrap();
                }
            }
            finish(&h, t, &[&pool]);
        });
    }
}

// ---------------------------------------------------------------------------------------
// Floods, self-reposting messages, ring-to-ring ping-pong.
// ---------------------------------------------------------------------------------------

/// Four threads flood a spawned ring with messages and nops (it never goes idle), and a
/// fifth keeps posting a message that re-posts itself; then a graceful shutdown: every
/// message ran exactly once, `Ok`, and the loop ended.
#[test]
fn a_flood_that_never_lets_the_loop_go_idle_runs_everything_once() {
    let _w = watchdog("flood", 240);
    for (name, b) in [
        ("default", Ring::builder()),
        ("threads", Ring::builder().backend(BackendKind::Threads)),
    ] {
        bounded(name, 120, move || {
            let (h, t) = drive(ring(b));
            const PER: usize = 20_000;
            let runs = counters(4 * PER);
            let nops = Arc::new(AtomicUsize::new(0));
            let mut ts = Vec::new();
            for k in 0..4 {
                let (h, runs, nops) = (h.clone(), runs.clone(), nops.clone());
                ts.push(std::thread::spawn(move || {
                    for j in 0..PER {
                        let i = k * PER + j;
                        let r = runs.clone();
                        h.post(move |ring| {
                            assert!(ring.is_ok());
                            r[i].fetch_add(1, Ordering::SeqCst);
                        });
                        if j % 8 == 0 {
                            let n = nops.clone();
                            h.submit_then(Op::nop(), move |c| {
                                assert!(c.is_ok());
                                n.fetch_add(1, Ordering::SeqCst);
                            });
                        }
                    }
                }));
            }
            // A chain of 5000 self-reposting messages (each through its own ring's handle).
            const CHAIN: u32 = 5000;
            let chain = Arc::new(AtomicU32::new(0));
            fn link(h: RingHandle, left: u32, count: Arc<AtomicU32>) {
                let h2 = h.clone();
                h.post(move |r| {
                    let ring = r.expect("ring runs");
                    count.fetch_add(1, Ordering::SeqCst);
                    if left > 1 {
                        // Half by the handle, half by `Ring::post` to itself.
                        if left % 2 == 0 {
                            link(h2, left - 1, count);
                        } else {
                            let h3 = h2.clone();
                            ring.post(&h2, move |r| {
                                assert!(r.is_ok());
                                link(h3, left - 1, count);
                            });
                        }
                    }
                });
            }
            link(h.clone(), CHAIN, chain.clone());
            for t in ts {
                t.join().unwrap();
            }
            let ring = finish(&h, t, &[]);
            assert_once(&runs, "flooded messages");
            assert_eq!(nops.load(Ordering::SeqCst), 4 * PER / 8);
            // The odd links add one extra message (the `Ring::post` hop), not a count.
            assert_eq!(
                chain.load(Ordering::SeqCst),
                CHAIN,
                "{name}: chain ran in full"
            );
            drop(ring);
        });
    }
}

/// Two spawned rings bounce a counter 20 000 times with `Ring::post` (each sees the other
/// spinning, so most hops skip their doorbell), with pauses from the test thread between
/// bursts so both fall asleep now and then: every hop arrives.
#[test]
fn ping_pong_between_spinning_rings_with_pauses_loses_no_hop() {
    let _w = watchdog("ping pong", 200);
    bounded("ping pong", 150, || {
        let set = RingSet::builder().rings(2).pin(true).spawn().unwrap();
        let hs: Arc<Vec<RingHandle>> = Arc::new(set.handles().to_vec());
        let mut rng = common::rng(21);
        fn hop(
            ring: &mut Ring,
            hs: Arc<Vec<RingHandle>>,
            at: usize,
            left: u32,
            done: mpsc::Sender<u32>,
        ) {
            if left == 0 {
                let _ = done.send(0);
                return;
            }
            let to = hs[1 - at].clone();
            let hs2 = hs.clone();
            ring.post(&to, move |r| {
                let ring = r.expect("ring runs");
                hop(ring, hs2, 1 - at, left - 1, done);
            });
        }
        for burst in 0..200 {
            let (tx, rx) = mpsc::channel();
            let hs2 = hs.clone();
            let left = 1 + rng.u32(0..200);
            hs[0].post(move |r| hop(r.expect("ring runs"), hs2, 0, left, tx));
            rx.recv_timeout(Duration::from_secs(20))
                .unwrap_or_else(|_| panic!("burst {burst}: a hop was lost"));
            gap(&mut rng);
        }
        set.shutdown().unwrap();
    });
}

/// A ring driven by tokio (`iocomplete::tokio::drive`, never "awake") and a spinning ring
/// exchange messages both ways with spin-window gaps: every round trip completes.
#[cfg(feature = "tokio")]
#[test]
fn tokio_driven_ring_and_spinning_ring_exchange_messages_both_ways() {
    let _w = watchdog("tokio mix", 200);
    bounded("tokio mix", 150, || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let mut tring = Ring::new().unwrap();
        let th = tring.handle().unwrap();
        let (sh, st) = drive(Ring::new().unwrap());
        let driver = std::thread::spawn(move || rt.block_on(iocomplete::tokio::drive(tring)));
        let mut rng = common::rng(31);
        const N: usize = 400;
        let seen = counters(N);
        for i in 0..N {
            gap(&mut rng);
            let (tx, rx) = mpsc::channel();
            let (th2, sh2, seen2) = (th.clone(), sh.clone(), seen.clone());
            // Start on one side, hop to the other with `Ring::post`, and back again.
            let (first, second) = if i % 2 == 0 {
                (th.clone(), sh2)
            } else {
                (sh.clone(), th2)
            };
            let back = first.clone();
            first.post(move |r| {
                let a = r.expect("first ring runs");
                a.post(&second, move |r| {
                    let b = r.expect("second ring runs");
                    b.post(&back, move |r| {
                        assert!(r.is_ok());
                        seen2[i].fetch_add(1, Ordering::SeqCst);
                        let _ = tx.send(());
                    });
                });
            });
            rx.recv_timeout(Duration::from_secs(20))
                .unwrap_or_else(|_| panic!("round {i} (tokio first: {}) lost", i % 2 == 0));
        }
        assert_once(&seen, "round trips");
        th.shutdown();
        let tring = bounded("tokio drive returns", 30, move || driver.join().unwrap()).unwrap();
        common::check_teardown(&tring, &[]);
        finish(&sh, st, &[]);
    });
}

// ---------------------------------------------------------------------------------------
// CPU: an idle spawned ring sleeps; a ring sharing a CPU with spinners makes progress.
// ---------------------------------------------------------------------------------------

fn gettid() -> i32 {
    // SAFETY: gettid has no preconditions.
    unsafe { libc::gettid() }
}

/// utime + stime of thread `tid` of this process, in clock ticks.
fn cpu_ticks(tid: i32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat")).unwrap();
    // Fields after the ")" that ends the name: state is field 3; utime 14, stime 15.
    let rest = &s[s.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

fn ticks_per_sec() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as u64
    } else {
        100
    }
}

/// After some work, a spawned ring (and each ring of a set) left idle for 100 ms uses
/// well under half a CPU over the next second: it went to sleep rather than spinning on.
#[test]
fn an_idle_spawned_ring_goes_to_sleep() {
    let _w = watchdog("idle ring sleeps", 120);
    bounded("idle", 90, || {
        let tps = ticks_per_sec();
        for (name, b) in [
            ("default", Ring::builder()),
            ("threads", Ring::builder().backend(BackendKind::Threads)),
        ] {
            let (h, t) = drive(ring(b));
            let tid = on_ring(&h, |_| gettid());
            for _ in 0..2000 {
                let (tx, rx) = mpsc::channel();
                h.submit_then(Op::nop(), move |c| tx.send(c.is_ok()).unwrap());
                assert!(rx.recv_timeout(Duration::from_secs(20)).unwrap());
            }
            std::thread::sleep(Duration::from_millis(100));
            let t0 = cpu_ticks(tid);
            std::thread::sleep(Duration::from_secs(1));
            let used = cpu_ticks(tid) - t0;
            assert!(
                used * 2 < tps,
                "{name}: an idle ring used {used} ticks of CPU in 1 s ({tps} ticks/s): still spinning"
            );
            finish(&h, t, &[]);
        }
        let set = RingSet::builder().rings(4).pin(true).spawn().unwrap();
        let tids: Vec<i32> = set
            .handles()
            .iter()
            .map(|h| on_ring(h, |_| gettid()))
            .collect();
        std::thread::sleep(Duration::from_millis(100));
        let t0: Vec<u64> = tids.iter().map(|&t| cpu_ticks(t)).collect();
        std::thread::sleep(Duration::from_secs(1));
        for (k, &tid) in tids.iter().enumerate() {
            let used = cpu_ticks(tid) - t0[k];
            assert!(
                used * 2 < tps,
                "set ring {k}: {used} ticks in 1 s: still spinning"
            );
        }
        set.shutdown().unwrap();
    });
}

/// Six rings pinned on the process's CPUs (round robin: several per CPU). Rings 0..3 are
/// kept busy for ~2 s by self-reposting message chains (they never go idle, so they spin
/// and yield); meanwhile the test does 200 request/reply round trips with each of rings
/// 4 and 5, which share CPUs with the spinners. Every round trip completes (bounded
/// generously: 20 s each, no speed asserted); then the set shuts down cleanly.
#[test]
fn rings_sharing_a_cpu_with_busy_spinners_still_make_progress() {
    let _w = watchdog("cpu starvation", 240);
    bounded("cpu starvation", 200, || {
        let set = RingSet::builder().rings(6).pin(true).spawn().unwrap();
        let hs: Vec<RingHandle> = set.handles().to_vec();
        let stop = Arc::new(AtomicBool::new(false));
        let spins = Arc::new(AtomicUsize::new(0));
        fn busy(h: RingHandle, stop: Arc<AtomicBool>, n: Arc<AtomicUsize>) {
            let h2 = h.clone();
            h.post(move |r| {
                if r.is_err() || stop.load(Ordering::SeqCst) {
                    return;
                }
                n.fetch_add(1, Ordering::Relaxed);
                busy_us(20);
                busy(h2, stop, n);
            });
        }
        for h in &hs[..4] {
            busy(h.clone(), stop.clone(), spins.clone());
        }
        let t0 = Instant::now();
        let mut trips = 0;
        while t0.elapsed() < Duration::from_secs(2) || trips < 200 {
            for h in &hs[4..] {
                let (tx, rx) = mpsc::channel();
                h.submit_then(Op::nop().tag(trips), move |c| {
                    let _ = tx.send(c.tag());
                });
                let got = rx
                    .recv_timeout(Duration::from_secs(20))
                    .unwrap_or_else(|_| {
                        panic!("round trip {trips}: a ring sharing a CPU with spinners starved")
                    });
                assert_eq!(got, trips);
            }
            trips += 1;
            if trips > 100_000 {
                break;
            }
        }
        stop.store(true, Ordering::SeqCst);
        assert!(spins.load(Ordering::Relaxed) > 0, "the spinners ran");
        eprintln!(
            "{trips} round trips in {:?}, {} busy messages",
            t0.elapsed(),
            spins.load(Ordering::Relaxed)
        );
        set.shutdown().unwrap();
    });
}

// ---------------------------------------------------------------------------------------
// RingHandle::wake always wakes; the thread-pool backend's threads end with it.
// ---------------------------------------------------------------------------------------

/// A ring blocked in `run_once` with a 60 s timeout, woken by `RingHandle::wake` from
/// another thread, returns from that call (long before the timeout; bounded at 20 s).
#[test]
fn handle_wake_wakes_a_ring_blocked_in_run_once() {
    let _w = watchdog("wake", 200);
    for (name, b) in [
        ("default", Ring::builder()),
        ("threads", Ring::builder().backend(BackendKind::Threads)),
    ] {
        bounded(name, 120, move || {
            let mut ring = ring(b);
            let h = ring.handle().unwrap();
            // Settle: take whatever the arming produced.
            ring.poll().unwrap();
            for i in 0..20 {
                let h2 = h.clone();
                let waker = std::thread::spawn(move || {
                    std::thread::sleep(Duration::from_millis(20));
                    h2.wake();
                });
                let t0 = Instant::now();
                ring.run_once(Some(Duration::from_secs(60))).unwrap();
                assert!(
                    t0.elapsed() < Duration::from_secs(20),
                    "{name}: round {i}: wake() did not wake run_once"
                );
                waker.join().unwrap();
            }
            common::check_teardown(&ring, &[]);
        });
    }
}

fn iocomplete_threads() -> usize {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|e| std::fs::read_to_string(e.ok()?.path().join("comm")).ok())
        .filter(|c| c.starts_with("iocomplete-"))
        .count()
}

/// Thread-pool rings with stream threads blocked on idle pipes (reads and polls), dropped
/// after `shutdown_now` (or with reads still in flight): every backend thread ends soon
/// after (well before the stream threads' 10 s idle exit). In a child process, where the
/// thread count is this test's alone.
#[test]
fn threads_backend_stream_threads_end_when_the_ring_is_dropped() {
    if common::child::role().as_deref() != Some("streams") {
        common::child::run(
            "threads_backend_stream_threads_end_when_the_ring_is_dropped",
            "streams",
        );
        return;
    }
    let _w = watchdog("stream threads end", 120);
    assert_eq!(iocomplete_threads(), 0);
    for round in 0..6 {
        let pool = common::pool(16, BS);
        let mut ring = Ring::builder()
            .backend(BackendKind::Threads)
            .build()
            .unwrap();
        let mut pipes: Vec<OwnedFd> = Vec::new();
        let mut targets: Vec<Target> = Vec::new();
        for _ in 0..4 {
            let (rd, wr) = pipe();
            pipes.push(wr);
            targets.push(ring.register(rd).unwrap());
        }
        for (k, &t) in targets.iter().enumerate() {
            if k % 2 == 0 {
                ring.submit(Op::read(t, 0, pool.try_get().unwrap()))
                    .detach();
            } else {
                ring.submit(Op::poll(t, libc::POLLIN as u32)).detach();
            }
        }
        ring.poll().unwrap();
        if round % 2 == 0 {
            // Through the driver loop: shutdown_now cancels, the loop returns.
            let (h, t) = drive(ring);
            std::thread::sleep(Duration::from_millis(20));
            h.shutdown_now();
            let (ring, r) = bounded("join", 30, move || t.join().unwrap());
            r.unwrap();
            common::check_teardown(&ring, &[&pool]);
            drop(ring);
        } else {
            // Dropped with the reads in flight.
            std::thread::sleep(Duration::from_millis(20));
            drop(ring);
        }
        assert!(
            eventually(5, || iocomplete_threads() == 0),
            "round {round}: backend threads outlived their ring: {}",
            iocomplete_threads()
        );
        assert!(
            eventually(5, || {
                let st = pool.stats();
                st.free == st.total
            }),
            "round {round}: slots back: {:?}",
            pool.stats()
        );
        drop(pipes);
    }
    println!("CHILD-OK streams");
}

// ---------------------------------------------------------------------------------------
// Found on the way: SQPOLL and close.
// ---------------------------------------------------------------------------------------

/// `Ring::close` promises "operations already in flight finish normally". On an SQPOLL
/// ring an operation submitted just before the close sits in the SQ until the kernel's
/// SQ thread takes it; `close`'s `enter(0)` only wakes that thread, so the fixed-file
/// slot may be cleared first and the read fails `EBADF`. No handle, no spin involved.
#[test]
fn sqpoll_read_submitted_just_before_close_finishes_normally() {
    let _w = watchdog("sqpoll close", 60);
    let probe = Ring::new().unwrap();
    common::or_skip!(common::needs_uring(&probe, "SQPOLL"));
    drop(probe);
    bounded("sqpoll close", 50, || {
        let pool = common::pool(4, BS);
        let mut ring = Ring::builder().sqpoll(20).build().unwrap();
        let mut bad = Vec::new();
        for i in 0..50 {
            let file = ring.register(verify_file(1, SEED)).unwrap();
            let slot = Arc::new(std::sync::Mutex::new(
                None::<std::result::Result<(), String>>,
            ));
            let s = slot.clone();
            ring.submit(Op::read(file, 0, pool.try_get().unwrap()))
                .then(move |c| {
                    let r = c
                        .into_result()
                        .map_err(|e| e.to_string())
                        .and_then(|b| verify::check_block(b.data(), 0, SEED));
                    *s.lock().unwrap() = Some(r);
                });
            ring.close(file).unwrap();
            let t0 = Instant::now();
            while slot.lock().unwrap().is_none() && t0.elapsed() < Duration::from_secs(10) {
                ring.run_once(Some(Duration::from_millis(100))).unwrap();
            }
            let got = slot.lock().unwrap().take();
            match got {
                Some(Ok(())) => {}
                Some(Err(e)) => bad.push((i, e)),
                None => bad.push((i, "never completed".into())),
            }
        }
        assert!(bad.is_empty(), "reads failed after close: {bad:?}");
        common::check_teardown(&ring, &[&pool]);
    });
}
