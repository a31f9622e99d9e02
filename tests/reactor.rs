//! A ring driven from a hand-made event loop — `poll(2)` on the ring's descriptor
//! (`AsFd`) and `Ring::poll_complete` — with no runtime and no thread blocked in the
//! ring; and futures of a ring's own submissions cancelled by dropping them.

mod common;

use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use common::verify;
use iocomplete::{CompletionQueue, ErrorKind, Op, Ring};

/// Counts its wake-ups.
#[derive(Default)]
struct CountWakes(AtomicUsize);
impl Wake for CountWakes {
    fn wake(self: Arc<Self>) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

/// The loop of `Ring::poll_complete`'s docs, on `poll(2)`: returns the idle ring.
fn event_loop(mut ring: Ring) -> Ring {
    let wakes = Arc::new(CountWakes::default());
    let waker = Waker::from(wakes.clone());
    let mut cx = Context::from_waker(&waker);
    loop {
        match ring.poll_complete(&mut cx) {
            Poll::Ready(r) => {
                r.unwrap();
                return ring;
            }
            Poll::Pending => {
                let mut p = libc::pollfd {
                    fd: ring.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                };
                // A wake-up of the waker (more than a budget was ready) means: turn again
                // at once; otherwise sleep until the descriptor is readable.
                let timeout = if wakes.0.swap(0, Ordering::Relaxed) > 0 {
                    0
                } else {
                    10_000
                };
                // SAFETY: one valid pollfd.
                let n = unsafe { libc::poll(&mut p, 1, timeout) };
                assert!(n >= 0, "poll failed");
                assert!(
                    n == 1 || timeout == 0,
                    "the ring's fd never became readable"
                );
            }
        }
    }
}

#[test]
fn a_poll_loop_on_the_rings_fd_resolves_futures() {
    let dir = tempfile::tempdir().unwrap();
    let path = verify::file_in(dir.path(), "f", 1 << 20, 11);
    let pool = common::pool(8, 64 * 1024);
    let mut ring = Ring::new().unwrap();
    ring.register_pool(&pool);
    let handle = ring.handle().unwrap();
    let driver = std::thread::spawn(move || event_loop(ring));
    let file = handle
        .register(std::fs::File::open(&path).unwrap())
        .unwrap();
    for i in 0..16u64 {
        let off = i * 64 * 1024;
        let fut = handle.submit_future(Op::read(file, off, pool.get()));
        let buf = common::block_on(fut).into_result().unwrap();
        verify::check_range(buf.data(), 4096, 11, off).unwrap();
    }
    handle.shutdown();
    let ring = driver.join().unwrap();
    assert_eq!(ring.stats().completed, 16);
    common::check_teardown(&ring, &[&pool]);
}

/// More completions ready than one turn routes: `poll_complete` routes a budget's worth,
/// wakes the task, and the rest come on the next turns.
#[test]
fn poll_complete_routes_a_budget_per_turn() {
    let mut ring = Ring::builder().entries(1024).build().unwrap();
    let q = Arc::new(CompletionQueue::new(4096));
    let n = 3 * Ring::POLL_BUDGET + 10;
    for i in 0..n {
        ring.submit(Op::nop().tag(i as u64)).to_queue(&q);
    }
    // Let the kernel post them all.
    ring.poll().unwrap();
    let before = q.len();
    while q.len() < n {
        ring.poll().unwrap();
    }
    assert!(before <= n);
    let handle = ring.handle().unwrap();
    for i in 0..n {
        handle.submit_to(Op::nop().tag(i as u64), &q);
    }
    let wakes = Arc::new(CountWakes::default());
    let waker = Waker::from(wakes.clone());
    let mut cx = Context::from_waker(&waker);
    let mut turns = 0;
    let target = 2 * n;
    while q.len() < target {
        assert!(ring.poll_complete(&mut cx).is_pending());
        turns += 1;
        assert!(turns < 1000, "completions never came");
    }
    assert!(
        wakes.0.load(Ordering::Relaxed) >= 1,
        "a turn that left completions behind did not wake the task"
    );
    handle.shutdown();
    assert!(ring.poll_complete(&mut cx).is_ready());
    common::check_teardown(&ring, &[]);
}

/// Dropping the future of a ring's own submission cancels its read of an idle pipe; the
/// ring then runs idle instead of waiting forever, and the buffer is back.
#[test]
fn dropping_a_submissions_future_cancels_it() {
    let pool = common::pool(2, 4096);
    let mut ring = Ring::new().unwrap();
    let (rx, _tx) = common::fd::pipe();
    let pipe = ring.register(rx).unwrap();
    let fut = ring
        .submit(Op::read(pipe, 0, pool.try_get().unwrap()))
        .future();
    assert!(fut.id().is_some());
    ring.poll().unwrap();
    assert_eq!(ring.in_flight(), 1);
    drop(fut);
    let watchdog = std::time::Instant::now();
    while ring.in_flight() > 0 {
        ring.run_once(Some(Duration::from_millis(100))).unwrap();
        assert!(
            watchdog.elapsed() < Duration::from_secs(10),
            "read never cancelled"
        );
    }
    common::check_teardown(&ring, &[&pool]);

    // `cancel` keeps the future: it resolves to `Cancelled`, once.
    let fut = ring
        .submit(Op::read(pipe, 0, pool.try_get().unwrap()))
        .future();
    fut.cancel();
    fut.cancel();
    ring.run_until_idle().unwrap();
    let c = common::block_on(fut);
    assert_eq!(c.error().map(|e| e.kind()), Some(ErrorKind::Cancelled));
    drop(c);
    common::close_and_check(&mut ring, &[pipe], &[&pool]);
}
