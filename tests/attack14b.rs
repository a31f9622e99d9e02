//! Outside attack on three behaviours of the thread-pool backend (`BackendKind::Threads`),
//! through the public API only:
//!
//! 1. completions done at submission (nops, cached reads, stream reads that find data,
//!    ready polls) skip the shared queue and the eventfd: they are routed at the next reap,
//!    and the ring's descriptor is signalled only for what worker threads post;
//! 2. jobs for idle workers are queued at submission, the workers woken at the next enter;
//! 3. a ring that waits with no time limit for the only operation it has, a file job no
//!    worker has started, runs it on its own thread — never when anything else could end
//!    the wait (another operation, a handle, a timer, a timeout, a deadline).
//!
//! Every test body runs under a watchdog (a hang fails), verifies content with the
//! offset+crc blocks of `common::verify`, and checks teardown (each operation completed
//! once, every slot back). Where io_uring is available the same program runs there too and
//! must give the same results.
//!
//! Failing on purpose (ignored, `BUG:`): the threads backend does work at `Ring::submit`
//! that io_uring does only at the next enter — page-cache reads and stream reads tried
//! at once, and jobs taken by a worker spawned for them (or a busy one) before the enter —
//! so a program that changes the file or pipe between submitting and driving gets other
//! bytes than on io_uring (`a_read_submitted_*`, `two_pipe_reads_*`,
//! `a_worker_read_submitted_*`).

mod common;

use std::os::fd::{AsFd, AsRawFd};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use common::fd::{pipe, write_fd};
use common::{check_teardown, close_and_check, open, verify};
use iocomplete::{
    BackendKind, BufferPool, Completion, CompletionQueue, ContinuousReader, Driver, ErrorKind,
    FinishReason, Op, PoolBuf, Ring, RingBuilder, SplitConfig, SplitDriver, Target,
};

const BS: usize = 4096;
/// Bound on anything that should happen "soon" (a hang guard, not a performance claim).
const SOON: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------- helpers

/// Run `f` on its own thread; fail (instead of hanging) if it takes more than `secs`.
fn watchdog<T: Send + 'static>(secs: u64, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    let h = std::thread::spawn(move || {
        let r = std::panic::catch_unwind(AssertUnwindSafe(f));
        let _ = tx.send(r);
    });
    match rx.recv_timeout(Duration::from_secs(secs)) {
        Ok(Ok(v)) => {
            let _ = h.join();
            v
        }
        Ok(Err(p)) => std::panic::resume_unwind(p),
        Err(_) => panic!("HANG: the test body did not finish within {secs} s"),
    }
}

fn threads() -> RingBuilder {
    Ring::builder().backend(BackendKind::Threads)
}

fn ring() -> Ring {
    let r = threads().build().unwrap();
    assert_eq!(r.backend(), BackendKind::Threads);
    r
}

/// The backends to compare: threads always, io_uring where this host allows it.
fn both() -> Vec<Ring> {
    let mut v = vec![ring()];
    match Ring::builder().backend(BackendKind::Uring).build() {
        Ok(u) => v.push(u),
        Err(_) => eprintln!("io_uring unavailable: threads backend only"),
    }
    v
}

fn pool(slots: usize, len: usize) -> BufferPool {
    common::pool_hdr(slots, len, 16)
}

fn kind(c: &Completion) -> Option<ErrorKind> {
    c.error().map(|e| e.kind())
}

/// A read of block `b` of `t` into a buffer of `pool`, tagged `b`.
fn read_block(t: Target, pool: &BufferPool, b: u64) -> Op {
    Op::read_len(t, b * BS as u64, pool.try_get().unwrap(), BS).tag(b)
}

/// The completion of a read of block `c.tag()` holds that block of seed `seed`.
fn check_block(c: Completion, seed: u64) {
    let b = c.tag();
    let buf = c
        .into_result()
        .unwrap_or_else(|e| panic!("read of block {b}: {e}"));
    assert_eq!(buf.len(), BS, "block {b}");
    verify::check_block(buf.data(), b * BS as u64, seed).unwrap();
}

/// A disk file of `blocks` verify blocks (its guard, its path), read once so the page
/// cache holds it: buffered positional reads of it complete at submission.
fn cached_file(blocks: u64, seed: u64) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = common::disk_dir();
    let path = verify::file_in(dir.path(), "f", blocks * BS as u64, seed);
    let bytes = std::fs::read(&path).unwrap();
    assert_eq!(bytes.len() as u64, blocks * BS as u64);
    (dir, path)
}

/// A ring's thread-pool workers started and idle again: a few O_DIRECT reads run through
/// them (so the jobs submitted next find idle workers, woken only at the next enter).
fn warm_workers(ring: &mut Ring, t: Target, pool: &BufferPool, seed: u64) {
    let tks: Vec<_> = (0..4)
        .map(|b| ring.submit(read_block(t, pool, b)).ticket())
        .collect();
    ring.run_until_idle().unwrap();
    for tk in tks {
        check_block(ring.wait(tk).unwrap(), seed);
    }
    // Let the workers go back to sleep.
    std::thread::sleep(Duration::from_millis(20));
}

/// Releases the hold of a FUSE mount at `SOON`, or at once when the sender is dropped;
/// `released` says when it did.
fn release_later(
    ctl: Arc<common::fuse::Control>,
    released: Arc<AtomicBool>,
) -> (mpsc::Sender<()>, std::thread::JoinHandle<()>) {
    let (tx, rx) = mpsc::channel::<()>();
    let t = std::thread::spawn(move || {
        let _ = rx.recv_timeout(SOON);
        released.store(true, Ordering::SeqCst);
        ctl.release();
    });
    (tx, t)
}

// ---------------------------------------------------------------- 1. inline completions

/// Thousands of operations that complete at submission (nops and page-cached reads),
/// submitted before the ring is driven at all: each delivered once, through every route,
/// with its bytes — the same on io_uring.
#[test]
fn thousands_of_inline_completions_are_routed_once_with_their_bytes() {
    watchdog(120, || {
        let (_dir, path) = cached_file(64, 71);
        for mut ring in both() {
            let name = format!("{:?}", ring.backend());
            let pool = pool(1100, BS);
            let t = ring.register(open(&path, false, false)).unwrap();
            let q = Arc::new(CompletionQueue::new(64));
            let routines = Arc::new(AtomicUsize::new(0));
            let mut tickets = Vec::new();
            let mut local = 0usize;
            let mut queued = 0usize;
            for i in 0..5000u64 {
                if i % 5 == 0 && pool.stats().free > 0 {
                    // A cached read, tagged with its block.
                    let op = read_block(t, &pool, (i / 5) % 64);
                    match i % 3 {
                        0 => tickets.push(ring.submit(op).ticket()),
                        1 => {
                            ring.submit(op).to_queue(&q);
                            queued += 1;
                        }
                        _ => {
                            ring.submit(op).to_ring();
                            local += 1;
                        }
                    }
                } else {
                    let r = routines.clone();
                    ring.submit(Op::nop().tag(1_000_000 + i)).then(move |c| {
                        assert!(c.is_ok(), "{c:?}");
                        r.fetch_add(1, Ordering::Relaxed);
                    });
                }
            }
            ring.run_until_idle().unwrap();
            let mut got_local = 0;
            while let Some(c) = ring.pop_completion() {
                check_block(c, 71);
                got_local += 1;
            }
            let mut got_q = 0;
            while let Some(c) = q.pop() {
                check_block(c, 71);
                got_q += 1;
            }
            let n_tickets = tickets.len();
            for tk in tickets {
                assert!(ring.is_done(&tk), "{name}: a ticket not done after idle");
                check_block(ring.wait(tk).unwrap(), 71);
            }
            assert_eq!((got_local, got_q), (local, queued), "{name}");
            assert_eq!(routines.load(Ordering::Relaxed), 4000, "{name}");
            assert_eq!(n_tickets + local + queued, 1000, "{name}");
            // Nothing more arrives later.
            ring.run_once(Some(Duration::from_millis(20))).unwrap();
            assert!(
                ring.pop_completion().is_none() && q.pop().is_none(),
                "{name}"
            );
            close_and_check(&mut ring, &[t], &[&pool]);
        }
    });
}

/// Reads of a pipe that already holds the data complete at submission, in submission
/// order: read `i` gets bytes `64 i ..`; the same on io_uring.
#[test]
fn stream_reads_finding_data_take_it_in_submission_order() {
    watchdog(60, || {
        for mut ring in both() {
            let name = format!("{:?}", ring.backend());
            let pool = pool(64, BS);
            let (rx, tx) = pipe();
            let data = verify::expected(BS, 73, 0, 64 * 64);
            write_fd(tx.as_raw_fd(), &data);
            let r = ring.register(rx).unwrap();
            for i in 0..64u64 {
                ring.submit(Op::read_len(r, 0, pool.try_get().unwrap(), 64).tag(i))
                    .to_ring();
            }
            ring.run_until_idle().unwrap();
            let mut got = vec![None; 64];
            while let Some(c) = ring.pop_completion() {
                let i = c.tag() as usize;
                assert!(got[i].is_none(), "{name}: read {i} completed twice");
                got[i] = Some(c.into_result().unwrap().data().to_vec());
            }
            for (i, g) in got.into_iter().enumerate() {
                let g = g.unwrap_or_else(|| panic!("{name}: read {i} never completed"));
                assert_eq!(g, &data[i * 64..(i + 1) * 64], "{name}: read {i}");
            }
            drop(tx);
            close_and_check(&mut ring, &[r], &[&pool]);
        }
    });
}

/// Wakes by counting and unparking the driving thread.
struct CountWake {
    woken: AtomicUsize,
    thread: std::thread::Thread,
}

impl Wake for CountWake {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.fetch_add(1, Ordering::SeqCst);
        self.thread.unpark();
    }
}

/// `poll(2)` on `fd` for readability, up to `ms`: whether it is readable.
fn fd_readable(fd: std::os::fd::BorrowedFd<'_>, ms: i32) -> bool {
    let mut p = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    let n = unsafe { libc::poll(&mut p, 1, ms) };
    n == 1
}

/// Drive `ring` only through `poll_complete` and `poll(2)` on its descriptor, as an event
/// loop does, until shut down. Returns the ring and how many times the loop slept its full
/// 3 s while `outstanding` said operations were not done (a ring sleeping with
/// completions ready, or with work it never started).
fn event_loop(mut ring: Ring, outstanding: Arc<AtomicUsize>) -> (Ring, usize) {
    let w = Arc::new(CountWake {
        woken: AtomicUsize::new(0),
        thread: std::thread::current(),
    });
    let waker = Waker::from(w.clone());
    let mut cx = Context::from_waker(&waker);
    let mut stalls = 0;
    let end = Instant::now() + Duration::from_secs(60);
    loop {
        assert!(Instant::now() < end, "event loop ran for a minute");
        let before = w.woken.load(Ordering::SeqCst);
        match ring.poll_complete(&mut cx) {
            Poll::Ready(r) => {
                r.unwrap();
                return (ring, stalls);
            }
            Poll::Pending => {}
        }
        if w.woken.load(Ordering::SeqCst) != before {
            continue; // asked to come back at once
        }
        if !fd_readable(ring.as_fd(), 3000) && outstanding.load(Ordering::SeqCst) > 0 {
            stalls += 1;
        }
    }
}

/// A threads ring driven only through `poll_complete` and its descriptor: handles send
/// nops, cached reads, O_DIRECT reads (workers) and reads of pipes holding data, and
/// routines send the next operation of a chain through a handle — so operations complete
/// at submission inside the loop's turns. The loop must never sleep with work pending.
#[test]
fn an_event_loop_on_poll_complete_never_sleeps_with_work_pending() {
    watchdog(120, || {
        let (_dir, path) = cached_file(64, 75);
        let ring = ring();
        let mut ring = ring;
        let h = ring.handle().unwrap();
        let outstanding = Arc::new(AtomicUsize::new(0));
        let o = outstanding.clone();
        let driver = std::thread::spawn(move || event_loop(ring, o));
        let pool = pool(64, BS);
        let cached = h.register(open(&path, false, false)).unwrap();
        let direct = h.register(open(&path, false, true)).unwrap();
        // A chain of 500 nops, each sent by the previous one's routine.
        let (done_tx, done_rx) = mpsc::channel::<u64>();
        fn chain(h: iocomplete::RingHandle, n: u64, out: Arc<AtomicUsize>, tx: mpsc::Sender<u64>) {
            out.fetch_add(1, Ordering::SeqCst);
            let h2 = h.clone();
            h.submit_then(Op::nop().tag(n), move |c| {
                assert!(c.is_ok());
                if n == 0 {
                    let _ = tx.send(c.tag());
                } else {
                    chain(h2, n - 1, out.clone(), tx);
                }
                out.fetch_sub(1, Ordering::SeqCst);
            });
        }
        chain(h.clone(), 500, outstanding.clone(), done_tx);
        assert_eq!(done_rx.recv_timeout(SOON), Ok(0), "the nop chain stalled");
        // Reads from two threads, through futures.
        let mut joins = Vec::new();
        for k in 0..2u64 {
            let (h, pool, out) = (h.clone(), pool.clone(), outstanding.clone());
            joins.push(std::thread::spawn(move || {
                for i in 0..200u64 {
                    let b = (i * 7 + k) % 64;
                    let t = if i % 4 == 0 { direct } else { cached };
                    out.fetch_add(1, Ordering::SeqCst);
                    let buf = loop {
                        match pool.try_get() {
                            Ok(b) => break b,
                            Err(_) => std::thread::yield_now(),
                        }
                    };
                    let f = h.submit_future(Op::read_len(t, b * BS as u64, buf, BS).tag(b));
                    check_block(common::block_on(f), 75);
                    out.fetch_sub(1, Ordering::SeqCst);
                }
            }));
        }
        for j in joins {
            j.join().unwrap();
        }
        // Reads of pipes that hold their data already.
        let mut pipes = Vec::new();
        let q = Arc::new(CompletionQueue::new(256));
        for i in 0..50u64 {
            let (rx, tx) = pipe();
            let msg = verify::expected(BS, 75, i * 100, 100);
            write_fd(tx.as_raw_fd(), &msg);
            let r = h.register(rx).unwrap();
            outstanding.fetch_add(1, Ordering::SeqCst);
            h.submit_to(Op::read(r, 0, pool.try_get().unwrap()).tag(i), &q);
            pipes.push((r, tx, msg));
        }
        for _ in 0..50 {
            let c = q
                .pop_timeout(SOON)
                .expect("a pipe read holding data never completed");
            outstanding.fetch_sub(1, Ordering::SeqCst);
            let (_, _, msg) = &pipes[c.tag() as usize];
            assert_eq!(c.into_result().unwrap().data(), &msg[..]);
        }
        for (r, _, _) in &pipes {
            h.close(*r).unwrap();
        }
        h.close(cached).unwrap();
        h.close(direct).unwrap();
        h.shutdown();
        let (ring, stalls) = driver.join().unwrap();
        assert_eq!(stalls, 0, "the event loop slept 3 s with work pending");
        check_teardown(&ring, &[&pool]);
    });
}

/// The same through tokio (`iocomplete::tokio::spawn`), current-thread and multi-thread:
/// futures of operations that complete at submission, routines chaining through a handle,
/// thousands at once — every one resolves.
#[cfg(feature = "tokio")]
#[test]
fn tokio_resolves_floods_of_inline_completions() {
    watchdog(120, || {
        let (_dir, path) = cached_file(64, 77);
        for multi in [false, true] {
            let rt = if multi {
                tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
            } else {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
            }
            .unwrap();
            let pool = pool(256, BS);
            let ring = rt.block_on(async {
                let (h, driver) = iocomplete::tokio::spawn(ring()).unwrap();
                let t = h.register(open(&path, false, false)).unwrap();
                let d = h.register(open(&path, false, true)).unwrap();
                let all = async {
                    // 3000 nop futures at once.
                    let futs: Vec<_> = (0..3000u64)
                        .map(|i| h.submit_future(Op::nop().tag(i)))
                        .collect();
                    for (i, f) in futs.into_iter().enumerate() {
                        let c = f.await;
                        assert!(c.is_ok() && c.tag() == i as u64);
                    }
                    // 200 cached and 56 O_DIRECT reads at once.
                    let futs: Vec<_> = (0..256u64)
                        .map(|i| {
                            let tt = if i % 5 == 0 { d } else { t };
                            h.submit_future(read_block(tt, &pool, i % 64))
                        })
                        .collect();
                    for f in futs {
                        check_block(f.await, 77);
                    }
                    // A chain of routines through the handle.
                    let (tx, rx) = tokio::sync::oneshot::channel();
                    fn chain(
                        h: iocomplete::RingHandle,
                        n: u64,
                        tx: tokio::sync::oneshot::Sender<u64>,
                    ) {
                        let h2 = h.clone();
                        h.submit_then(Op::nop().tag(n), move |c| {
                            assert!(c.is_ok());
                            if n == 0 {
                                let _ = tx.send(c.tag());
                            } else {
                                chain(h2, n - 1, tx);
                            }
                        });
                    }
                    chain(h.clone(), 1000, tx);
                    assert_eq!(rx.await, Ok(0));
                };
                tokio::time::timeout(Duration::from_secs(60), all)
                    .await
                    .expect("inline completions never resolved under tokio");
                h.close(t).unwrap();
                h.close(d).unwrap();
                h.shutdown();
                tokio::time::timeout(SOON, driver)
                    .await
                    .expect("driver did not finish")
                    .unwrap()
                    .unwrap()
            });
            check_teardown(&ring, &[&pool]);
        }
    });
}

// ---------------------------------------------------------------- 2. deferred wake-ups

/// Jobs queued for idle workers, then only `Ring::poll` (never a wait): the busy loop
/// wakes them and every read completes with its bytes.
#[test]
fn a_poll_only_busy_loop_starts_queued_worker_jobs() {
    watchdog(60, || {
        let (_dir, path) = cached_file(64, 79);
        let pool = pool(64, BS);
        let mut ring = threads().threads(4).build().unwrap();
        let t = ring.register(open(&path, false, true)).unwrap();
        warm_workers(&mut ring, t, &pool, 79);
        for round in 0..20 {
            let tks: Vec<_> = (0..16u64)
                .map(|i| {
                    ring.submit(read_block(t, &pool, (round * 16 + i) % 64))
                        .ticket()
                })
                .collect();
            let end = Instant::now() + SOON;
            while !tks.iter().all(|tk| ring.is_done(tk)) {
                assert!(Instant::now() < end, "poll() loop made no progress");
                ring.poll().unwrap();
            }
            for tk in tks {
                check_block(ring.wait(tk).unwrap(), 79);
            }
        }
        close_and_check(&mut ring, &[t], &[&pool]);
    });
}

/// Jobs queued for idle workers, never woken (the ring is not entered again), then the
/// ring is dropped on another thread: the drop returns, each read completes once (with
/// its bytes or `Cancelled`), every slot comes back.
#[test]
fn dropping_a_ring_with_queued_never_woken_jobs() {
    watchdog(60, || {
        let (_dir, path) = cached_file(64, 81);
        let pool = pool(128, BS);
        let q = Arc::new(CompletionQueue::new(256));
        let mut ring = threads().threads(4).build().unwrap();
        let t = ring.register(open(&path, false, true)).unwrap();
        warm_workers(&mut ring, t, &pool, 81);
        for b in 0..100u64 {
            ring.submit(read_block(t, &pool, b % 64)).to_queue(&q);
        }
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            drop(ring);
            let _ = tx.send(());
        });
        rx.recv_timeout(SOON)
            .expect("dropping the ring hung on queued jobs");
        let (mut ok, mut cancelled) = (0, 0);
        while let Some(c) = q.pop() {
            if kind(&c) == Some(ErrorKind::Cancelled) {
                cancelled += 1;
            } else {
                check_block(c, 81);
                ok += 1;
            }
        }
        assert_eq!(ok + cancelled, 100, "({ok} ok, {cancelled} cancelled)");
        let st = pool.stats();
        assert_eq!((st.free, st.in_flight), (st.total, 0), "{st:?}");
    });
}

/// `run_wait(min, None)` with `min` beyond what is in flight returns once everything in
/// flight has completed (capped), never waits for completions that cannot come — lone
/// jobs (run by the ring's thread), several jobs, and nothing at all; the same on
/// io_uring.
#[test]
fn run_wait_with_min_beyond_in_flight_returns_once_all_are_done() {
    watchdog(60, || {
        let (_dir, path) = cached_file(64, 83);
        for mut ring in both() {
            let name = format!("{:?}", ring.backend());
            let pool = pool(8, BS);
            let t = ring.register(open(&path, false, true)).unwrap();
            assert_eq!(ring.run_wait(5, None).unwrap(), 0, "{name}");
            for n in [1u64, 1, 3, 2, 1] {
                let tks: Vec<_> = (0..n)
                    .map(|b| ring.submit(read_block(t, &pool, b * 3)).ticket())
                    .collect();
                let mut got = 0;
                let end = Instant::now() + SOON;
                while got < n as usize {
                    assert!(Instant::now() < end, "{name}: run_wait never finished");
                    got += ring.run_wait(10, None).unwrap();
                }
                assert_eq!(got, n as usize, "{name}");
                for tk in tks {
                    check_block(ring.wait(tk).unwrap(), 83);
                }
            }
            close_and_check(&mut ring, &[t], &[&pool]);
        }
    });
}

// ---------------------------------------------------------------- 3. the ring runs a lone job

/// A read held at the device (FUSE) and one other thing that ends the wait — a `TIMEOUT`,
/// a read of a pipe written 100 ms later, a ready poll, a cancelled queued job — the ring
/// waiting with no time limit must return for that other thing while the read is still
/// held: it must not have run the held read on its own thread.
#[test]
fn a_held_read_is_not_run_by_the_ring_when_a_timer_or_stream_could_end_the_wait() {
    use common::fuse::{FileSpec, FuseMount};
    watchdog(120, || {
        for case in ["timeout", "pipe", "deadline-sibling"] {
            let fs = common::or_skip!(FuseMount::holding(FileSpec::blocks(4, 85)));
            let released = Arc::new(AtomicBool::new(false));
            let pool = pool(4, BS);
            let mut ring = ring();
            let t = ring
                .register(std::fs::File::open(fs.path()).unwrap())
                .unwrap();
            let (rx, tx) = pipe();
            let r = ring.register(rx).unwrap();
            // The held read first, then the other operation, both before any enter.
            let held = ring.submit(read_block(t, &pool, 0)).ticket();
            let other = match case {
                "timeout" => ring
                    .submit(Op::timeout(Duration::from_millis(100)))
                    .ticket(),
                "pipe" => ring
                    .submit(Op::read(r, 0, pool.try_get().unwrap()))
                    .ticket(),
                // A nop with a deadline: it completes at once, leaving the held read.
                _ => ring
                    .submit(Op::nop().deadline(Duration::from_millis(100)))
                    .ticket(),
            };
            let (release_now, releaser) = release_later(fs.ctl().clone(), released.clone());
            let writer = std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(100));
                write_fd(tx.as_raw_fd(), b"wake");
                tx
            });
            let c = ring.wait(other).unwrap();
            assert!(
                !released.load(Ordering::SeqCst),
                "{case}: the ring returned only when the held read was released"
            );
            match case {
                "timeout" => assert_eq!(kind(&c), Some(ErrorKind::TimedOut), "{c:?}"),
                "pipe" => assert_eq!(c.into_result().unwrap().data(), b"wake"),
                _ => assert!(c.is_ok(), "{c:?}"),
            }
            assert!(!ring.is_done(&held));
            drop(release_now);
            check_block(ring.wait(held).unwrap(), 85);
            releaser.join().unwrap();
            let _tx = writer.join().unwrap();
            close_and_check(&mut ring, &[t, r], &[&pool]);
        }
    });
}

/// One way of waiting in a ring; the completions it produced.
type WaitFn = Box<dyn Fn(&mut Ring) -> usize>;

/// A read held at the device, alone, and waits with a limit — `run_once(Some(0))`,
/// `run_once(50 ms)`, `run_wait(1, 50 ms)`, `run_wait(3, 0)`: each returns at its limit,
/// the read still held (the ring did not run it on its thread).
#[test]
fn waits_with_a_limit_never_run_a_lone_held_read() {
    use common::fuse::{FileSpec, FuseMount};
    watchdog(120, || {
        let fs = common::or_skip!(FuseMount::holding(FileSpec::blocks(4, 87)));
        let released = Arc::new(AtomicBool::new(false));
        let pool = pool(4, BS);
        let mut ring = ring();
        let t = ring
            .register(std::fs::File::open(fs.path()).unwrap())
            .unwrap();
        let held = ring.submit(read_block(t, &pool, 1)).ticket();
        let (release_now, releaser) = release_later(fs.ctl().clone(), released.clone());
        let waits: [(&str, WaitFn); 4] = [
            (
                "run_once(0)",
                Box::new(|r| r.run_once(Some(Duration::ZERO)).unwrap()),
            ),
            (
                "run_once(50ms)",
                Box::new(|r| r.run_once(Some(Duration::from_millis(50))).unwrap()),
            ),
            (
                "run_wait(1, 50ms)",
                Box::new(|r| r.run_wait(1, Some(Duration::from_millis(50))).unwrap()),
            ),
            (
                "run_wait(3, 0)",
                Box::new(|r| r.run_wait(3, Some(Duration::ZERO)).unwrap()),
            ),
        ];
        for (name, w) in &waits {
            for _ in 0..3 {
                assert_eq!(w(&mut ring), 0, "{name}");
                assert!(
                    !released.load(Ordering::SeqCst),
                    "{name} returned only when the held read was released"
                );
            }
        }
        assert!(fs.ctl().wait_outstanding(1, SOON), "the read never started");
        assert!(!ring.is_done(&held));
        drop(release_now);
        check_block(ring.wait(held).unwrap(), 87);
        releaser.join().unwrap();
        close_and_check(&mut ring, &[t], &[&pool]);
    });
}

/// A lone read cancelled before the ring is entered never reaches the device, even though
/// the ring then waits with no time limit (it must not run a cancelled job); and a lone
/// read with a deadline that passes while it is queued times out without reaching it.
#[test]
fn a_lone_job_cancelled_or_timed_out_before_the_wait_never_reaches_the_device() {
    use common::fuse::{FileSpec, FuseMount};
    watchdog(120, || {
        let fs = common::or_skip!(FuseMount::holding(FileSpec::blocks(4, 89)));
        let released = Arc::new(AtomicBool::new(false));
        let (release_now, releaser) = release_later(fs.ctl().clone(), released.clone());
        let pool = pool(4, BS);
        let mut ring = threads().threads(1).build().unwrap();
        let t = ring
            .register(std::fs::File::open(fs.path()).unwrap())
            .unwrap();
        let tk = ring.submit(read_block(t, &pool, 2)).ticket();
        assert!(ring.cancel(tk.id()));
        let c = ring.wait(tk).unwrap();
        assert_eq!(kind(&c), Some(ErrorKind::Cancelled), "{c:?}");
        drop(c);
        assert!(!released.load(Ordering::SeqCst));
        assert_eq!(
            fs.ctl().stats().reads,
            0,
            "a cancelled read reached the device"
        );
        // The worker is busy with a held read; a second read with a 30 ms deadline waits
        // behind it, queued, and times out there while the ring waits with no limit.
        let busy = ring.submit(read_block(t, &pool, 0)).ticket();
        ring.poll().unwrap();
        assert!(fs.ctl().wait_outstanding(1, SOON), "the read never started");
        let late = ring
            .submit(read_block(t, &pool, 1).deadline(Duration::from_millis(30)))
            .ticket();
        let c = ring.wait(late).unwrap();
        assert_eq!(kind(&c), Some(ErrorKind::TimedOut), "{c:?}");
        drop(c);
        assert!(
            !released.load(Ordering::SeqCst),
            "the timeout waited for release"
        );
        assert_eq!(fs.ctl().stats().reads, 1);
        drop(release_now);
        check_block(ring.wait(busy).unwrap(), 89);
        releaser.join().unwrap();
        close_and_check(&mut ring, &[t], &[&pool]);
    });
}

/// A ring with a handle waits with no limit for its one read, held at the device. A
/// handle's nop, a handle's read of a cached file and a handle's cancel of a queued read
/// must all be carried out while it is held — none waits behind the held read; and a
/// handle dropped before the wait leaves the ring just as reachable for a new one.
#[test]
fn handle_work_is_never_held_up_behind_a_lone_held_read() {
    use common::fuse::{FileSpec, FuseMount};
    watchdog(120, || {
        let (_dir, path) = cached_file(8, 91);
        let fs = common::or_skip!(FuseMount::holding(FileSpec::blocks(4, 91)));
        let released = Arc::new(AtomicBool::new(false));
        let pool = pool(8, BS);
        let mut ring = ring();
        let t = ring
            .register(std::fs::File::open(fs.path()).unwrap())
            .unwrap();
        let c = ring.register(open(&path, false, false)).unwrap();
        // A handle made and dropped: the next handle must still reach the waiting ring.
        drop(ring.handle().unwrap());
        let h = ring.handle().unwrap();
        let held = ring.submit(read_block(t, &pool, 3)).ticket();
        let (ctl, rel, pool2) = (fs.ctl().clone(), released.clone(), pool.clone());
        let sender = std::thread::spawn(move || {
            assert!(ctl.wait_outstanding(1, SOON), "the read never started");
            let f = h.submit_future(read_block(c, &pool2, 5));
            let (tx, rx) = mpsc::channel();
            std::thread::spawn(move || {
                let _ = tx.send(common::block_on(f));
            });
            let got = rx.recv_timeout(SOON);
            let before = !rel.load(Ordering::SeqCst);
            ctl.release();
            (
                got.map(|c| (c.tag(), c.into_result().map(|b| b.data().to_vec()))),
                before,
            )
        });
        check_block(ring.wait(held).unwrap(), 91);
        let (got, before) = sender.join().unwrap();
        let (tag, data) = got.expect("the handle's read never completed");
        assert_eq!(tag, 5);
        verify::check_block(&data.unwrap(), 5 * BS as u64, 91).unwrap();
        assert!(
            before,
            "the handle's read completed only once the held read was released"
        );
        // Settle the handle's operation (its routine ran on this ring).
        ring.run_once(Some(Duration::from_millis(10))).unwrap();
        close_and_check(&mut ring, &[t, c], &[&pool]);
    });
}

/// O_DIRECT reads, one at a time, waited for with no limit (the ring's thread runs them):
/// ticket waits, `run_once(None)`, `run_wait(1, None)`, and `Submission::wait`, reading
/// every block in a scattered order; the same on io_uring.
#[test]
fn lone_reads_run_by_the_ring_thread_return_the_right_blocks() {
    watchdog(60, || {
        let (_dir, path) = cached_file(64, 93);
        for mut ring in both() {
            let name = format!("{:?}", ring.backend());
            let pool = pool(2, BS);
            let t = ring.register(open(&path, false, true)).unwrap();
            for i in 0..64u64 {
                let b = (i * 37) % 64;
                match i % 4 {
                    0 => check_block(ring.submit(read_block(t, &pool, b)).wait().unwrap(), 93),
                    1 => {
                        let tk = ring.submit(read_block(t, &pool, b)).ticket();
                        check_block(ring.wait(tk).unwrap(), 93);
                    }
                    2 => {
                        ring.submit(read_block(t, &pool, b)).to_ring();
                        assert_eq!(ring.run_once(None).unwrap(), 1, "{name}");
                        check_block(ring.pop_completion().unwrap(), 93);
                    }
                    _ => {
                        ring.submit(read_block(t, &pool, b)).to_ring();
                        assert_eq!(ring.run_wait(1, None).unwrap(), 1, "{name}");
                        check_block(ring.pop_completion().unwrap(), 93);
                    }
                }
            }
            close_and_check(&mut ring, &[t], &[&pool]);
        }
    });
}

/// Lone writes and fsyncs of an O_DIRECT file, waited for with no limit, one at a time:
/// the file holds exactly what was written; the same on io_uring.
#[test]
fn lone_writes_and_fsyncs_run_by_the_ring_thread_land() {
    watchdog(60, || {
        for mut ring in both() {
            let name = format!("{:?}", ring.backend());
            let dir = common::disk_dir();
            let path = dir.path().join("w");
            let pool = pool(2, BS);
            let t = ring.register(open(&path, true, true)).unwrap();
            for i in 0..32u64 {
                let b = (i * 13) % 32;
                let mut buf = pool.try_get().unwrap();
                let mut block = vec![0u8; BS];
                verify::fill_block(&mut block, b * BS as u64, 95);
                buf.extend_from_slice(&block).unwrap();
                let c = ring
                    .submit(Op::write(t, b * BS as u64, buf))
                    .wait()
                    .unwrap();
                assert_eq!(c.result().unwrap(), BS, "{name}");
                if i % 8 == 7 {
                    let c = ring.submit(Op::fsync(t, i % 16 == 7)).wait().unwrap();
                    assert!(c.is_ok(), "{name}: {c:?}");
                }
            }
            close_and_check(&mut ring, &[t], &[&pool]);
            verify::check_file_prefix(&path, 32 * BS as u64, 95);
        }
    });
}

// ---------------------------------------------------------------- drivers

/// Drivers that keep one operation in flight at a time on O_DIRECT files (so the ring's
/// thread runs each): a serial split copy and a one-read continuous reader — right bytes,
/// the same on io_uring.
#[test]
fn qd1_drivers_on_o_direct_files_copy_and_read_right() {
    watchdog(120, || {
        let size = 48 * BS as u64;
        let (dir, src) = cached_file(48, 97);
        for mut ring in both() {
            let name = format!("{:?}", ring.backend());
            let pool = pool(8, BS);
            let s = ring.register(open(&src, false, true)).unwrap();
            let dst = dir.path().join(format!("dst-{name}"));
            let d = ring.register(open(&dst, true, true)).unwrap();
            let job = common::drivers::copy_job(s, d, size);
            let config = SplitConfig::new()
                .mode(iocomplete::Mode::Serial)
                .max_chunk(BS as u64);
            let mut drv = SplitDriver::new(&mut ring, &pool, job, config).unwrap();
            let mut out = None;
            while out.is_none() {
                out = drv.step(&mut ring, None).unwrap();
            }
            let done = out.unwrap();
            assert_eq!((done.status, done.bytes), (Ok(()), size), "{name}");
            drop(drv);
            verify::check_file_prefix(&dst, size, 97);
            ring.close(d).unwrap();
            let spans = Arc::new(Mutex::new(Vec::new()));
            let sp = spans.clone();
            let mut reader = ContinuousReader::builder(s, &pool)
                .pending_reads(1)
                .on_read(move |buf: PoolBuf, offset: u64| {
                    verify::check_range(buf.data(), BS, 97, offset).unwrap();
                    sp.lock().unwrap().push((offset, buf.len()));
                })
                .on_failed(|e| panic!("unexpected failure {e}"))
                .build(&mut ring)
                .unwrap();
            let report = reader.run(&mut ring).unwrap();
            assert_eq!(
                (report.reason, report.bytes),
                (FinishReason::Eof, size),
                "{name}"
            );
            common::drivers::check_spans(&spans.lock().unwrap(), 0, size, false);
            drop(reader);
            close_and_check(&mut ring, &[s], &[&pool]);
        }
    });
}

// ---------------------------------------------------------------- same program, same results

/// One program of mixed operations — cached and O_DIRECT reads, reads at and past the end,
/// writes, fsyncs, nops, ready polls, reads of a pipe holding data, a zero deadline on
/// operations that complete at submission — gives the same results on both backends.
#[test]
fn the_same_program_gives_the_same_results_on_both_backends() {
    watchdog(120, || {
        let mut results: Vec<(String, Vec<String>)> = Vec::new();
        for mut ring in both() {
            let name = format!("{:?}", ring.backend());
            let (_dir, path) = cached_file(16, 99);
            let size = 16 * BS as u64;
            let pool = pool(64, BS);
            let f = ring.register(open(&path, true, false)).unwrap();
            let d = ring.register(open(&path, false, true)).unwrap();
            let (rx, tx) = pipe();
            write_fd(tx.as_raw_fd(), b"0123456789");
            let p = ring.register(rx).unwrap();
            let mut tks = Vec::new();
            let mut push = |ring: &mut Ring, op: Op| tks.push(ring.submit(op).ticket());
            push(&mut ring, read_block(f, &pool, 3));
            push(&mut ring, read_block(d, &pool, 4));
            push(&mut ring, Op::nop().tag(100));
            push(&mut ring, Op::nop().tag(101).deadline(Duration::ZERO));
            push(&mut ring, read_block(f, &pool, 5).deadline(Duration::ZERO));
            // Straddling the end: short. Past the end: 0 bytes.
            push(
                &mut ring,
                Op::read_len(f, size - 100, pool.try_get().unwrap(), BS).tag(102),
            );
            push(
                &mut ring,
                Op::read_len(f, size + BS as u64, pool.try_get().unwrap(), BS).tag(103),
            );
            push(&mut ring, Op::poll(p, libc::POLLIN as u32).tag(104));
            push(
                &mut ring,
                Op::read_len(p, 0, pool.try_get().unwrap(), 4).tag(105),
            );
            push(
                &mut ring,
                Op::read_len(p, 0, pool.try_get().unwrap(), 4).tag(106),
            );
            let mut block = vec![0u8; BS];
            verify::fill_block(&mut block, 20 * BS as u64, 99);
            let mut wb = pool.try_get().unwrap();
            wb.extend_from_slice(&block).unwrap();
            push(&mut ring, Op::write(f, 20 * BS as u64, wb).tag(107));
            push(&mut ring, Op::fsync(f, true).tag(108));
            push(&mut ring, Op::timeout(Duration::from_millis(5)).tag(109));
            let mut out = Vec::new();
            for tk in tks {
                let c = ring.wait(tk).unwrap();
                let tag = c.tag();
                let res = c.result().map_err(|e| format!("{:?}", e.kind()));
                let buf = c.into_buf();
                let data = buf.as_ref().map_or(&[][..], |b| b.data());
                let ok = tag >= 100 || verify::check_block(data, tag * BS as u64, 99).is_ok();
                let txt = if tag == 105 || tag == 106 {
                    String::from_utf8_lossy(data).into_owned()
                } else {
                    String::new()
                };
                let line = format!("{tag}: {res:?} len={} verified={ok} {txt}", data.len());
                out.push(line);
            }
            drop(tx);
            close_and_check(&mut ring, &[f, d, p], &[&pool]);
            verify::check_file_prefix(&path, size, 99);
            results.push((name, out));
        }
        if results.len() == 2 {
            assert_eq!(
                results[0].1, results[1].1,
                "{} and {} differ",
                results[0].0, results[1].0
            );
        }
        eprintln!("{:#?}", results[0]);
    });
}

/// A read waits on an empty pipe; data arrives; a second read of the pipe is then
/// submitted. On io_uring the waiting read gets the data (it was first in line and the
/// kernel hands it over as the data arrives) and the new one waits; the threads backend
/// must not let the newcomer, done at submission, take the bytes from under the waiter.
#[test]
fn a_newcomer_done_at_submission_does_not_take_bytes_from_a_waiting_read() {
    watchdog(60, || {
        let mut results = Vec::new();
        for mut ring in both() {
            let name = format!("{:?}", ring.backend());
            let pool = pool(4, 64);
            let (rx, tx) = pipe();
            let r = ring.register(rx).unwrap();
            let first = ring
                .submit(Op::read(r, 0, pool.try_get().unwrap()).tag(1))
                .ticket();
            for _ in 0..5 {
                ring.run_once(Some(Duration::from_millis(5))).unwrap();
            }
            assert!(!ring.is_done(&first));
            // Data arrives, then (time for the waiter to be told) the second read.
            write_fd(tx.as_raw_fd(), b"first");
            std::thread::sleep(Duration::from_millis(50));
            let second = ring
                .submit(Op::read(r, 0, pool.try_get().unwrap()).tag(2))
                .ticket();
            ring.run_once(Some(Duration::from_millis(50))).unwrap();
            write_fd(tx.as_raw_fd(), b"second");
            let a = ring.wait(first).unwrap().into_result().unwrap();
            let b = ring.wait(second).unwrap().into_result().unwrap();
            results.push((name, a.data().to_vec(), b.data().to_vec()));
            drop((a, b, tx));
            close_and_check(&mut ring, &[r], &[&pool]);
        }
        for (name, a, b) in &results {
            assert_eq!(
                (a.as_slice(), b.as_slice()),
                (&b"first"[..], &b"second"[..]),
                "{name}: the waiting read did not get the first bytes"
            );
        }
    });
}

// ---------------------------------------------------------------- single issuer, spawned rings

/// A threads ring asked for a single issuer, driven from its first thread: lone O_DIRECT
/// reads (run by the ring's thread) and cached reads (done at submission) come back right.
#[test]
fn a_single_issuer_threads_ring_runs_lone_and_inline_reads() {
    watchdog(60, || {
        let (_dir, path) = cached_file(16, 101);
        let pool = pool(4, BS);
        let mut ring = threads().single_issuer(true).build().unwrap();
        assert_eq!(ring.backend(), BackendKind::Threads);
        let d = ring.register(open(&path, false, true)).unwrap();
        let f = ring.register(open(&path, false, false)).unwrap();
        for b in 0..16 {
            check_block(ring.submit(read_block(d, &pool, b)).wait().unwrap(), 101);
            check_block(
                ring.submit(read_block(f, &pool, 15 - b)).wait().unwrap(),
                101,
            );
        }
        close_and_check(&mut ring, &[d, f], &[&pool]);
    });
}

/// A spawned ring (`Ring::spawn`): routines chain 2000 operations through a handle —
/// nops, cached reads and O_DIRECT reads alternating — each completing once, in chain
/// order, with its bytes.
#[test]
fn a_spawned_ring_carries_long_routine_chains_of_inline_and_worker_ops() {
    watchdog(120, || {
        let (_dir, path) = cached_file(64, 103);
        let mut ring = ring();
        let f = ring.register(open(&path, false, false)).unwrap();
        let d = ring.register(open(&path, false, true)).unwrap();
        let (h, driver) = ring.spawn().unwrap();
        let pool = pool(4, BS);
        let (tx, rx) = mpsc::channel::<Result<u64, String>>();
        fn step(
            h: iocomplete::RingHandle,
            pool: BufferPool,
            f: Target,
            d: Target,
            n: u64,
            tx: mpsc::Sender<Result<u64, String>>,
        ) {
            let op = match n % 3 {
                0 => Op::nop().tag(n),
                1 => Op::read_len(f, (n % 64) * BS as u64, pool.try_get().unwrap(), BS).tag(n),
                _ => Op::read_len(d, (n % 64) * BS as u64, pool.try_get().unwrap(), BS).tag(n),
            };
            let h2 = h.clone();
            h.submit_then(op, move |c| {
                let r = if c.tag() != n {
                    Err(format!("tag {} for step {n}", c.tag()))
                } else if n % 3 == 0 {
                    c.result().map(|_| n).map_err(|e| e.to_string())
                } else {
                    match c.into_result() {
                        Ok(b) => {
                            verify::check_block(b.data(), (n % 64) * BS as u64, 103).map(|()| n)
                        }
                        Err(e) => Err(e.to_string()),
                    }
                };
                let failed = r.is_err();
                let _ = tx.send(r);
                if n < 2000 && !failed {
                    step(h2, pool, f, d, n + 1, tx);
                }
            });
        }
        step(h.clone(), pool.clone(), f, d, 0, tx);
        for n in 0..=2000u64 {
            let got = rx
                .recv_timeout(SOON)
                .unwrap_or_else(|_| panic!("the chain stalled at step {n}"));
            assert_eq!(got, Ok(n));
        }
        h.close(f).unwrap();
        h.close(d).unwrap();
        h.shutdown();
        driver.join().unwrap().unwrap();
        let st = pool.stats();
        assert_eq!((st.free, st.in_flight), (st.total, 0), "{st:?}");
    });
}

/// Many operations done at submission followed by one O_DIRECT read, and `Driver`-less
/// waits: `run_once(None)` must route the inline completions first and never wait with
/// them unrouted (it returns with them, not after the read).
#[test]
fn inline_completions_are_routed_before_any_wait() {
    watchdog(60, || {
        let (_dir, path) = cached_file(8, 105);
        let pool = pool(4, BS);
        let mut ring = ring();
        let d = ring.register(open(&path, false, true)).unwrap();
        for _ in 0..50 {
            for i in 0..10u64 {
                ring.submit(Op::nop().tag(i)).to_ring();
            }
            let tk = ring.submit(read_block(d, &pool, 7)).ticket();
            let n = ring.run_once(None).unwrap();
            assert!(n >= 10, "run_once(None) returned {n} with 10 nops done");
            let mut tags: Vec<u64> = std::iter::from_fn(|| ring.pop_completion())
                .map(|c| c.tag())
                .collect();
            tags.sort_unstable();
            assert_eq!(tags, (0..10).collect::<Vec<_>>());
            check_block(ring.wait(tk).unwrap(), 105);
        }
        close_and_check(&mut ring, &[d], &[&pool]);
    });
}

/// io_uring starts what was submitted at the next enter: a cached read submitted, then the
/// file rewritten (plain `pwrite`, before the ring is driven), then waited for, returns the
/// new bytes. The threads backend must not read at `submit` time, before the rewrite.
#[test]
fn a_read_submitted_before_a_rewrite_and_waited_after_sees_the_new_bytes() {
    use std::os::unix::fs::FileExt;
    watchdog(60, || {
        let mut results = Vec::new();
        for mut ring in both() {
            let name = format!("{:?}", ring.backend());
            let (_dir, path) = cached_file(4, 107);
            let pool = pool(4, BS);
            let t = ring.register(open(&path, false, false)).unwrap();
            let tk = ring.submit(read_block(t, &pool, 2)).ticket();
            // Rewrite block 2 with seed 108 (through the page cache) before any enter.
            let mut block = vec![0u8; BS];
            verify::fill_block(&mut block, 2 * BS as u64, 108);
            open(&path, true, false)
                .write_all_at(&block, 2 * BS as u64)
                .unwrap();
            let c = ring.wait(tk).unwrap();
            let buf = c.into_result().unwrap();
            let new = verify::check_block(buf.data(), 2 * BS as u64, 108).is_ok();
            let old = verify::check_block(buf.data(), 2 * BS as u64, 107).is_ok();
            drop(buf);
            results.push((name, new, old));
            close_and_check(&mut ring, &[t], &[&pool]);
        }
        for (name, new, old) in &results {
            assert!(
                *new && !*old,
                "{name}: the read returned the bytes from before the rewrite ({results:?})"
            );
        }
    });
}

/// A read of an empty pipe is submitted, data is written, a second read is submitted, and
/// only then is the ring driven: io_uring starts both at that enter, in order, so the first
/// gets the first bytes. The threads backend must give the same answer.
#[test]
fn two_pipe_reads_submitted_around_a_write_get_the_bytes_in_submission_order() {
    watchdog(60, || {
        let mut results = Vec::new();
        for mut ring in both() {
            let name = format!("{:?}", ring.backend());
            let pool = pool(4, 64);
            let (rx, tx) = pipe();
            let r = ring.register(rx).unwrap();
            let first = ring
                .submit(Op::read(r, 0, pool.try_get().unwrap()).tag(1))
                .ticket();
            write_fd(tx.as_raw_fd(), b"first");
            let second = ring
                .submit(Op::read(r, 0, pool.try_get().unwrap()).tag(2))
                .ticket();
            ring.run_once(Some(Duration::from_millis(50))).unwrap();
            write_fd(tx.as_raw_fd(), b"second");
            let a = ring.wait(first).unwrap().into_result().unwrap();
            let b = ring.wait(second).unwrap().into_result().unwrap();
            results.push((name, a.data().to_vec(), b.data().to_vec()));
            drop((a, b, tx));
            close_and_check(&mut ring, &[r], &[&pool]);
        }
        for (name, a, b) in &results {
            assert_eq!(
                (a.as_slice(), b.as_slice()),
                (&b"first"[..], &b"second"[..]),
                "{name}: reads got the bytes out of submission order"
            );
        }
    });
}

/// The same with a job for a worker: an O_DIRECT read submitted to a fresh ring (no worker
/// yet), then the block rewritten with O_DIRECT 50 ms later, before the ring is driven.
/// io_uring starts the read at the next enter and returns the new bytes; the threads
/// backend promises to start queued jobs at the next enter too.
#[test]
fn a_worker_read_submitted_before_a_rewrite_and_waited_after_sees_the_new_bytes() {
    use std::os::unix::fs::FileExt;
    watchdog(60, || {
        let mut results = Vec::new();
        for mut ring in both() {
            let name = format!("{:?}", ring.backend());
            let (_dir, path) = cached_file(4, 109);
            let pool = pool(4, BS);
            let t = ring.register(open(&path, false, true)).unwrap();
            let tk = ring.submit(read_block(t, &pool, 1)).ticket();
            std::thread::sleep(Duration::from_millis(50));
            let mut block = common::pool(1, BS).try_get().unwrap();
            let mut bytes = vec![0u8; BS];
            verify::fill_block(&mut bytes, BS as u64, 110);
            block.extend_from_slice(&bytes).unwrap();
            open(&path, true, true)
                .write_all_at(block.data(), BS as u64)
                .unwrap();
            let buf = ring.wait(tk).unwrap().into_result().unwrap();
            let new = verify::check_block(buf.data(), BS as u64, 110).is_ok();
            drop(buf);
            results.push((name, new));
            close_and_check(&mut ring, &[t], &[&pool]);
        }
        for (name, new) in &results {
            assert!(
                *new,
                "{name}: the read ran before the ring was driven ({results:?})"
            );
        }
    });
}

/// As above with the workers started and idle: the job waits for the next enter (here the
/// ticket wait, where the ring's thread runs it), so it reads the rewritten block.
#[test]
fn a_job_for_idle_workers_waits_for_the_next_enter() {
    use std::os::unix::fs::FileExt;
    watchdog(60, || {
        let (_dir, path) = cached_file(8, 111);
        let pool = pool(8, BS);
        let mut ring = threads().threads(2).build().unwrap();
        let t = ring.register(open(&path, false, true)).unwrap();
        warm_workers(&mut ring, t, &pool, 111);
        for round in 0..5u64 {
            let b = 4 + (round % 4);
            let seed = 200 + round;
            let tk = ring.submit(read_block(t, &pool, b)).ticket();
            std::thread::sleep(Duration::from_millis(20));
            let mut block = common::pool(1, BS).try_get().unwrap();
            let mut bytes = vec![0u8; BS];
            verify::fill_block(&mut bytes, b * BS as u64, seed);
            block.extend_from_slice(&bytes).unwrap();
            open(&path, true, true)
                .write_all_at(block.data(), b * BS as u64)
                .unwrap();
            let buf = ring.wait(tk).unwrap().into_result().unwrap();
            verify::check_block(buf.data(), b * BS as u64, seed)
                .unwrap_or_else(|e| panic!("round {round}: the read ran before the enter: {e}"));
        }
        close_and_check(&mut ring, &[t], &[&pool]);
    });
}
