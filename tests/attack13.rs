//! Outside attack on the tokio integration and its neighbours (handles, futures, pool
//! waits, local readers), written from the documentation only. Every test runs under a
//! watchdog: a hang fails instead of hanging.
#![cfg(feature = "tokio")]

mod common;

use std::future::Future;
use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::panic::AssertUnwindSafe;
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use iocomplete::{BufferPool, CompletionQueue, ContinuousReader, Driver, ErrorKind, Op, Ring};
use tokio::runtime::{Builder, Runtime};

// ---------------------------------------------------------------- helpers

/// Run `f` on its own thread; fail (instead of hanging) if it takes more than `secs`.
fn watchdog<T: Send + 'static>(secs: u64, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
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

fn ct() -> Runtime {
    Builder::new_current_thread().enable_all().build().unwrap()
}

fn mt(n: usize) -> Runtime {
    Builder::new_multi_thread()
        .worker_threads(n)
        .enable_all()
        .build()
        .unwrap()
}

fn pool(slots: usize, len: usize) -> BufferPool {
    BufferPool::builder()
        .slots(slots)
        .slot_len(len)
        .build()
        .unwrap()
}

/// Wait (bounded) until every slot is back; fail with the stats otherwise.
fn assert_full(pool: &BufferPool) {
    let t0 = Instant::now();
    loop {
        let s = pool.stats();
        if s.free == s.total && s.in_flight == 0 {
            return;
        }
        if t0.elapsed() > Duration::from_secs(5) {
            panic!("slots not back: {s:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn file_with(bytes: &[u8]) -> std::fs::File {
    let mut f = tempfile::tempfile().unwrap();
    f.write_all(bytes).unwrap();
    f
}

/// A pipe: (read end, write end).
fn pipe() -> (OwnedFd, OwnedFd) {
    let mut fds = [0; 2];
    // SAFETY: valid two-int array for pipe2.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: fresh descriptors from pipe2, owned by nobody else.
    unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
}

fn write_fd(fd: &OwnedFd, data: &[u8]) {
    // SAFETY: writes data.len() bytes from a valid slice.
    let n = unsafe { libc::write(fd.as_raw_fd(), data.as_ptr().cast(), data.len()) };
    assert_eq!(n, data.len() as isize);
}

/// A minimal executor outside any runtime: poll, park between polls, give up at `limit`.
fn block_on_for<F: Future>(fut: F, limit: Duration) -> Option<F::Output> {
    struct Unpark(std::thread::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut fut = pin!(fut);
    let end = Instant::now() + limit;
    loop {
        if let Poll::Ready(v) = fut.as_mut().poll(&mut cx) {
            return Some(v);
        }
        let now = Instant::now();
        if now >= end {
            return None;
        }
        std::thread::park_timeout(end - now);
    }
}

/// Poll once with a no-op waker.
fn poll_once<F: Future + Unpin>(fut: &mut F) -> Poll<F::Output> {
    let mut cx = Context::from_waker(Waker::noop());
    Pin::new(fut).poll(&mut cx)
}

fn kind(c: &iocomplete::Completion) -> Option<ErrorKind> {
    c.error().map(|e| e.kind())
}

// ---------------------------------------------------------------- handles after the ring is gone

/// Every handle method after the ring was shut down, handed back and dropped.
#[test]
fn handle_methods_after_ring_dropped() {
    watchdog(30, || {
        let rt = ct();
        let pool = pool(4, 4096);
        let (h, ring) = rt.block_on(async {
            let mut ring = Ring::new().unwrap();
            ring.register_pool(&pool);
            let (h, driver) = iocomplete::tokio::spawn(ring).unwrap();
            h.shutdown();
            (h, driver.await.unwrap().unwrap())
        });
        drop(ring);
        assert!(h.is_closed());
        // register: RingClosed
        let e = h.register(file_with(b"x")).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::RingClosed);
        // close of a target: RingClosed (a target of the dead ring)
        // (get one from another ring: close must be typed, not panic)
        let mut other = Ring::new().unwrap();
        let t = other.register(file_with(b"y")).unwrap();
        let e = h.close(t).unwrap_err();
        assert!(
            matches!(e.kind(), ErrorKind::RingClosed | ErrorKind::StaleTarget),
            "{e:?}"
        );
        // submit_future resolves at once with Cancelled, buffer back
        let f = h.submit_future(Op::read(t, 0, pool.try_get().unwrap()));
        let c = block_on_for(f, Duration::from_secs(5)).expect("future of a dead ring hangs");
        assert_eq!(kind(&c), Some(ErrorKind::Cancelled));
        drop(c);
        // submit_to: Cancelled lands in the queue
        let q = Arc::new(CompletionQueue::new(4));
        h.submit_to(Op::read(t, 0, pool.try_get().unwrap()).tag(5), &q);
        let c = q
            .pop_timeout(Duration::from_secs(5))
            .expect("submit_to of a dead ring lost");
        assert_eq!(c.tag(), 5);
        assert_eq!(kind(&c), Some(ErrorKind::Cancelled));
        drop(c);
        // submit_then: the routine runs once with Cancelled
        let (tx, rx) = std::sync::mpsc::channel();
        h.submit_then(Op::read(t, 0, pool.try_get().unwrap()), move |c| {
            tx.send(kind(&c)).unwrap();
        });
        assert_eq!(
            rx.recv_timeout(Duration::from_secs(5)).unwrap(),
            Some(ErrorKind::Cancelled)
        );
        assert!(rx.recv_timeout(Duration::from_millis(50)).is_err());
        // detach: buffer back
        h.detach(Op::read(t, 0, pool.try_get().unwrap()));
        // cancel / shutdown / shutdown_now / wake: nothing, no panic
        h.cancel(iocomplete::OpId::clone(
            &other.submit(Op::nop()).ticket().id(),
        ));
        h.shutdown();
        h.shutdown_now();
        h.wake();
        for _ in 0..1000 {
            h.wake();
        }
        assert!(h.is_closed());
        other.run_until_idle().unwrap();
        assert_full(&pool);
    })
}

/// After `shutdown_now` has finished (ring handed back, still alive in the caller's
/// hands), the handle reports RingClosed and submissions complete at once.
#[test]
fn handle_after_shutdown_now_with_ring_still_alive() {
    watchdog(30, || {
        let rt = ct();
        let pool = pool(4, 4096);
        let (h, ring) = rt.block_on(async {
            let mut ring = Ring::new().unwrap();
            ring.register_pool(&pool);
            let (h, driver) = iocomplete::tokio::spawn(ring).unwrap();
            h.shutdown_now();
            (h, driver.await.unwrap().unwrap())
        });
        let closed_now = h.is_closed();
        let e = h.register(file_with(b"x")).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::RingClosed);
        let f = h.submit_future(Op::nop());
        let c =
            block_on_for(f, Duration::from_secs(5)).expect("submission after shutdown_now hangs");
        assert_eq!(kind(&c), Some(ErrorKind::Cancelled));
        // Submissions complete at once with Cancelled and register answers RingClosed
        // ("it has finished a shutdown_now"): is_closed ("submissions then complete at
        // once with Cancelled") should agree.
        assert!(closed_now, "is_closed() is false after a finished shutdown_now, though register answers RingClosed and submissions complete at once with Cancelled");
        drop(ring);
        assert_full(&pool);
    })
}

/// After a plain `shutdown` the ring comes back alive; a handle's submission made then
/// must still complete exactly once — at the latest when the ring is dropped.
#[test]
fn submission_after_shutdown_completes_when_ring_dropped() {
    watchdog(30, || {
        let rt = ct();
        let pool = pool(4, 4096);
        let (h, ring) = rt.block_on(async {
            let mut ring = Ring::new().unwrap();
            ring.register_pool(&pool);
            let (h, driver) = iocomplete::tokio::spawn(ring).unwrap();
            h.shutdown();
            (h, driver.await.unwrap().unwrap())
        });
        let f = h.submit_future(Op::read(
            h.register(file_with(b"late")).unwrap_or_else(|e| {
                // a typed refusal is fine too
                assert_eq!(e.kind(), ErrorKind::RingClosed);
                Ring::new().unwrap().register(file_with(b"z")).unwrap()
            }),
            0,
            pool.try_get().unwrap(),
        ));
        drop(ring);
        let c = block_on_for(f, Duration::from_secs(15)).expect("future hangs after ring dropped");
        drop(c);
        assert!(h.is_closed());
        assert_full(&pool);
    })
}

/// The ring handed back by a finished `drive` can be driven again (spawn a second time).
#[test]
fn respawn_a_ring_after_shutdown() {
    watchdog(30, || {
        let rt = ct();
        let pool = pool(4, 4096);
        rt.block_on(async {
            let mut ring = Ring::new().unwrap();
            ring.register_pool(&pool);
            let (h, driver) = iocomplete::tokio::spawn(ring).unwrap();
            let t = h.register(file_with(b"first")).unwrap();
            let c = h
                .submit_future(Op::read(t, 0, pool.get_async().await))
                .await;
            assert_eq!(c.into_result().unwrap().data(), b"first");
            h.shutdown();
            let ring = driver.await.unwrap().unwrap();
            let (h2, driver2) = iocomplete::tokio::spawn(ring).unwrap();
            let t2 = h2.register(file_with(b"second")).unwrap();
            let f = h2.submit_future(Op::read(t2, 0, pool.get_async().await));
            let c = tokio::time::timeout(Duration::from_secs(5), f)
                .await
                .expect("a re-spawned ring never serves its handle");
            assert_eq!(c.into_result().unwrap().data(), b"second");
            h2.shutdown();
            let ring = tokio::time::timeout(Duration::from_secs(5), driver2)
                .await
                .expect("second driver never ends")
                .unwrap()
                .unwrap();
            assert_eq!(ring.in_flight(), 0);
        });
        assert_full(&pool);
    })
}

// ---------------------------------------------------------------- the driver task dropped

/// The runtime is dropped while the ring task holds reads of idle pipes: the ring's drop
/// cancels them and waits; the futures (held outside the runtime) resolve with
/// Cancelled; every slot comes back; the handle says the ring is gone.
fn runtime_dropped_with_ops_in_flight(rt: Runtime) {
    let pool = pool(8, 4096);
    let mut peers = Vec::new();
    let (h, futs) = rt.block_on(async {
        let mut ring = Ring::new().unwrap();
        ring.register_pool(&pool);
        let (h, _driver) = iocomplete::tokio::spawn(ring).unwrap();
        let mut futs = Vec::new();
        for _ in 0..6 {
            let (a, b) = UnixStream::pair().unwrap();
            peers.push(b);
            let t = h.register(a).unwrap();
            futs.push(h.submit_future(Op::read(t, 0, pool.get_async().await)));
        }
        // let the ring start them
        tokio::time::sleep(Duration::from_millis(50)).await;
        for f in &futs {
            assert!(f.id().is_some(), "not started");
        }
        (h, futs)
    });
    assert_eq!(pool.stats().in_flight, 6);
    let t0 = Instant::now();
    drop(rt);
    assert!(
        t0.elapsed() < Duration::from_secs(5),
        "runtime drop took {:?}",
        t0.elapsed()
    );
    for f in futs {
        let c = block_on_for(f, Duration::from_secs(5)).expect("future hangs after runtime drop");
        assert_eq!(kind(&c), Some(ErrorKind::Cancelled));
    }
    assert!(h.is_closed());
    assert_eq!(
        h.register(file_with(b"x")).unwrap_err().kind(),
        ErrorKind::RingClosed
    );
    assert_full(&pool);
    drop(peers);
}

#[test]
fn runtime_dropped_with_ops_in_flight_current_thread() {
    watchdog(30, || runtime_dropped_with_ops_in_flight(ct()))
}

#[test]
fn runtime_dropped_with_ops_in_flight_multi_thread() {
    watchdog(30, || runtime_dropped_with_ops_in_flight(mt(2)))
}

/// `drive` in a `select!` that another branch wins: the drive future (and the ring in
/// it) is dropped with a read in flight.
#[test]
fn drive_dropped_inside_select() {
    watchdog(30, || {
        let rt = ct();
        let pool = pool(4, 4096);
        rt.block_on(async {
            let mut ring = Ring::new().unwrap();
            ring.register_pool(&pool);
            let h = ring.handle().unwrap();
            let (a, _b) = UnixStream::pair().unwrap();
            let t = h.register(a).unwrap();
            let read = h.submit_future(Op::read(t, 0, pool.get_async().await));
            let nop = h.submit_future(Op::nop());
            let mut read = read;
            tokio::select! {
                r = iocomplete::tokio::drive(ring) => panic!("drive ended: {r:?}"),
                c = nop => assert!(c.is_ok()),
            }
            // drive is dropped here: the read must complete, once, with Cancelled
            let c = tokio::time::timeout(Duration::from_secs(15), &mut read)
                .await
                .expect("read future hangs after its driver was dropped");
            assert_eq!(kind(&c), Some(ErrorKind::Cancelled));
            drop(c);
            assert!(h.is_closed());
            let c = tokio::time::timeout(Duration::from_secs(5), h.submit_future(Op::nop()))
                .await
                .expect("submission to a dropped ring hangs");
            assert_eq!(kind(&c), Some(ErrorKind::Cancelled));
        });
        assert_full(&pool);
    })
}

/// Handles hammered from OS threads while the runtime (and the driver task) is dropped.
#[test]
fn handles_hammered_while_driver_task_dropped() {
    watchdog(60, || {
        for round in 0..10 {
            let rt = mt(2);
            let pool = pool(16, 4096);
            let h = rt.block_on(async {
                let mut ring = Ring::new().unwrap();
                ring.register_pool(&pool);
                iocomplete::tokio::spawn(ring).unwrap().0
            });
            let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
            let done = Arc::new(AtomicUsize::new(0));
            let mut threads = Vec::new();
            for i in 0..4 {
                let (h, pool, stop, done) = (h.clone(), pool.clone(), stop.clone(), done.clone());
                threads.push(std::thread::spawn(move || {
                    let f = file_with(&[i as u8; 4096]);
                    let mut issued = 0usize;
                    let t = h.register(f).ok();
                    while !stop.load(Ordering::Relaxed) {
                        let Some(t) = t else { break };
                        let buf = pool.get();
                        let fut = h.submit_future(Op::read(t, 0, buf));
                        issued += 1;
                        match block_on_for(fut, Duration::from_secs(15)) {
                            Some(c) => {
                                if let Some(e) = c.error() {
                                    assert!(
                                        matches!(
                                            e.kind(),
                                            ErrorKind::Cancelled | ErrorKind::StaleTarget
                                        ),
                                        "{e:?}"
                                    );
                                }
                            }
                            None => panic!("round {round}: a future hung across the drop"),
                        }
                        if i == 0 {
                            let _ = h.register(file_with(b"r")).map(|t| h.close(t));
                        }
                    }
                    done.fetch_add(issued, Ordering::Relaxed);
                }));
            }
            std::thread::sleep(Duration::from_millis(30));
            drop(rt);
            std::thread::sleep(Duration::from_millis(30));
            stop.store(true, Ordering::Relaxed);
            for t in threads {
                t.join().unwrap();
            }
            assert!(h.is_closed());
            assert_full(&pool);
        }
    })
}

// ---------------------------------------------------------------- OpFuture at every stage

/// Dropped before the ring started it: it never starts, its buffer comes back.
#[test]
fn op_future_dropped_before_start_returns_buffer() {
    watchdog(30, || {
        let rt = ct();
        let pool = pool(2, 4096);
        rt.block_on(async {
            let mut ring = Ring::new().unwrap();
            ring.register_pool(&pool);
            let (h, driver) = iocomplete::tokio::spawn(ring).unwrap();
            let (a, b) = UnixStream::pair().unwrap();
            let t = h.register(a).unwrap();
            for _ in 0..1000 {
                let f = h.submit_future(Op::read(t, 0, pool.get_async().await));
                assert!(f.id().is_none());
                drop(f);
            }
            // then a real read on that socket gets the data: no stale read ate it
            (&b).write_all(b"ping").unwrap();
            let c = tokio::time::timeout(
                Duration::from_secs(5),
                h.submit_future(Op::read(t, 0, pool.get_async().await)),
            )
            .await
            .expect("read after dropped futures hangs");
            assert_eq!(c.into_result().unwrap().data(), b"ping");
            h.shutdown();
            let ring = driver.await.unwrap().unwrap();
            assert_eq!(ring.in_flight(), 0);
        });
        assert_full(&pool);
    })
}

/// Dropped after its completion arrived but before it was polled.
#[test]
fn op_future_dropped_after_completion_before_poll() {
    watchdog(30, || {
        let rt = ct();
        let pool = pool(2, 4096);
        rt.block_on(async {
            let mut ring = Ring::new().unwrap();
            ring.register_pool(&pool);
            let (h, driver) = iocomplete::tokio::spawn(ring).unwrap();
            let t = h.register(file_with(b"data")).unwrap();
            for _ in 0..200 {
                let f = h.submit_future(Op::read(t, 0, pool.get_async().await));
                tokio::time::sleep(Duration::from_millis(1)).await;
                drop(f);
            }
            h.shutdown();
            driver.await.unwrap().unwrap();
        });
        assert_full(&pool);
    })
}

/// Polled again after it resolved: must not panic, must not hand the buffer twice.
#[test]
fn op_future_polled_after_ready() {
    watchdog(30, || {
        let rt = ct();
        let pool = pool(2, 4096);
        rt.block_on(async {
            let mut ring = Ring::new().unwrap();
            ring.register_pool(&pool);
            let (h, driver) = iocomplete::tokio::spawn(ring).unwrap();
            let t = h.register(file_with(b"data")).unwrap();
            let mut f = h.submit_future(Op::read(t, 0, pool.get_async().await));
            let c = (&mut f).await;
            assert!(c.is_ok());
            let again = std::panic::catch_unwind(AssertUnwindSafe(|| poll_once(&mut f)));
            match again {
                Ok(Poll::Pending) => {}
                Ok(Poll::Ready(c2)) => panic!("second completion of one op: {c2:?}"),
                Err(_) => panic!("OpFuture panics when polled after Ready"),
            }
            drop(c);
            drop(f);
            h.shutdown();
            driver.await.unwrap().unwrap();
        });
        assert_full(&pool);
    })
}

/// cancel() before the ring started the op (id() is None) must still cancel it.
#[test]
fn op_future_cancel_before_start() {
    watchdog(30, || {
        let rt = ct();
        let pool = pool(2, 4096);
        rt.block_on(async {
            let mut ring = Ring::new().unwrap();
            ring.register_pool(&pool);
            let (h, driver) = iocomplete::tokio::spawn(ring).unwrap();
            let (a, _b) = UnixStream::pair().unwrap();
            let t = h.register(a).unwrap();
            let f = h.submit_future(Op::read(t, 0, pool.get_async().await));
            assert!(f.id().is_none());
            f.cancel();
            let c = tokio::time::timeout(Duration::from_secs(5), f)
                .await
                .expect("cancel() before the op started was lost: the future hangs");
            assert_eq!(kind(&c), Some(ErrorKind::Cancelled));
            drop(c);
            h.shutdown();
            driver.await.unwrap().unwrap();
        });
        assert_full(&pool);
    })
}

/// cancel() many times, from other threads, during and after the completion.
#[test]
fn op_future_cancel_repeatedly_from_threads() {
    watchdog(30, || {
        let rt = mt(2);
        let pool = pool(8, 4096);
        rt.block_on(async {
            let mut ring = Ring::new().unwrap();
            ring.register_pool(&pool);
            let (h, driver) = iocomplete::tokio::spawn(ring).unwrap();
            for _ in 0..50 {
                let (a, _b) = UnixStream::pair().unwrap();
                let t = h.register(a).unwrap();
                let f = Arc::new(std::sync::Mutex::new(Some(h.submit_future(Op::read(
                    t,
                    0,
                    pool.get_async().await,
                )))));
                let mut ths = Vec::new();
                for _ in 0..3 {
                    let f = f.clone();
                    ths.push(std::thread::spawn(move || {
                        for _ in 0..100 {
                            if let Some(f) = f.lock().unwrap().as_ref() {
                                f.cancel();
                            }
                        }
                    }));
                }
                for th in ths {
                    th.join().unwrap();
                }
                let fut = f.lock().unwrap().take().unwrap();
                let c = tokio::time::timeout(Duration::from_secs(5), fut)
                    .await
                    .expect("hang");
                assert_eq!(kind(&c), Some(ErrorKind::Cancelled));
                h.close(t).unwrap();
            }
            h.shutdown();
            let ring = driver.await.unwrap().unwrap();
            assert_eq!(ring.in_flight(), 0);
        });
        assert_full(&pool);
    })
}

// ---------------------------------------------------------------- cancel by id

/// The id of a completed op, whose slot now holds a new op, must not cancel the new one;
/// nor must an id from another ring with the same slot number.
#[test]
fn stale_and_foreign_ids_cancel_nothing() {
    watchdog(30, || {
        let rt = ct();
        let pool = pool(4, 4096);
        rt.block_on(async {
            let mut ring = Ring::new().unwrap();
            ring.register_pool(&pool);
            let (h, driver) = iocomplete::tokio::spawn(ring).unwrap();
            let mut ring2 = Ring::new().unwrap();
            let (h2, driver2) = iocomplete::tokio::spawn({
                ring2.register_pool(&pool);
                ring2
            })
            .unwrap();
            // a completed op's id
            let mut f = h.submit_future(Op::nop());
            let c = (&mut f).await;
            let old = c.id();
            assert_eq!(f.id(), Some(old));
            // its slot's next occupant: an idle read
            let (a, b) = UnixStream::pair().unwrap();
            let t = h.register(a).unwrap();
            let mut read = h.submit_future(Op::read(t, 0, pool.get_async().await));
            tokio::time::sleep(Duration::from_millis(20)).await;
            // the same-numbered op of ring 2
            let (a2, b2) = UnixStream::pair().unwrap();
            let t2 = h2.register(a2).unwrap();
            let mut read2 = h2.submit_future(Op::read(t2, 0, pool.get_async().await));
            tokio::time::sleep(Duration::from_millis(20)).await;
            let id1 = read.id().unwrap();
            let id2 = read2.id().unwrap();
            // cancel: the stale id on ring 1, ring 1's id on ring 2, ring 2's id on ring 1,
            // and each future's own id of the other ring on its own handle
            for _ in 0..10 {
                h.cancel(old);
                h2.cancel(old);
                h2.cancel(id1);
                h.cancel(id2);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
            assert!(
                poll_once(&mut read).is_pending(),
                "a stale/foreign id cancelled ring 1's read"
            );
            assert!(
                poll_once(&mut read2).is_pending(),
                "a foreign id cancelled ring 2's read"
            );
            (&b).write_all(b"one").unwrap();
            (&b2).write_all(b"two").unwrap();
            let c1 = tokio::time::timeout(Duration::from_secs(5), read)
                .await
                .unwrap();
            let c2 = tokio::time::timeout(Duration::from_secs(5), read2)
                .await
                .unwrap();
            assert_eq!(c1.into_result().unwrap().data(), b"one");
            assert_eq!(c2.into_result().unwrap().data(), b"two");
            h.shutdown();
            h2.shutdown();
            driver.await.unwrap().unwrap();
            driver2.await.unwrap().unwrap();
        });
        assert_full(&pool);
    })
}

// ---------------------------------------------------------------- targets

/// Register, close, register another (likely in the same fixed-file slot), then use and
/// close the old Target again: the old one is stale, the new one untouched.
#[test]
fn closed_target_reuse_does_not_alias_new_target() {
    watchdog(30, || {
        let rt = ct();
        let pool = pool(4, 4096);
        rt.block_on(async {
            let mut ring = Ring::new().unwrap();
            ring.register_pool(&pool);
            let (h, driver) = iocomplete::tokio::spawn(ring).unwrap();
            for i in 0..200u32 {
                let a = h.register(file_with(b"AAAA")).unwrap();
                h.close(a).unwrap();
                let b = h.register(file_with(b"BBBB")).unwrap();
                let c = h
                    .submit_future(Op::read(a, 0, pool.get_async().await))
                    .await;
                assert_eq!(
                    kind(&c),
                    Some(ErrorKind::StaleTarget),
                    "round {i}: read on closed A: {c:?}"
                );
                drop(c);
                // closing A twice is "harmless (the second close finds nothing)"
                let _ = h.close(a);
                let c = h
                    .submit_future(Op::read(b, 0, pool.get_async().await))
                    .await;
                assert_eq!(
                    c.into_result().expect("second close of A closed B").data(),
                    b"BBBB"
                );
                h.close(b).unwrap();
            }
            h.shutdown();
            driver.await.unwrap().unwrap();
        });
        assert_full(&pool);
    })
}

/// Close a target with reads in flight: they finish normally (with data once it comes).
#[test]
fn close_target_with_reads_in_flight() {
    watchdog(30, || {
        let rt = ct();
        let pool = pool(4, 4096);
        rt.block_on(async {
            let mut ring = Ring::new().unwrap();
            ring.register_pool(&pool);
            let (h, driver) = iocomplete::tokio::spawn(ring).unwrap();
            let (r, w) = pipe();
            let t = h.register(r).unwrap();
            let mut read = h.submit_future(Op::read(t, 0, pool.get_async().await));
            tokio::time::sleep(Duration::from_millis(20)).await;
            h.close(t).unwrap();
            let later = h
                .submit_future(Op::read(t, 0, pool.get_async().await))
                .await;
            assert_eq!(kind(&later), Some(ErrorKind::StaleTarget));
            drop(later);
            tokio::time::sleep(Duration::from_millis(20)).await;
            assert!(
                poll_once(&mut read).is_pending(),
                "close cut short the read in flight"
            );
            write_fd(&w, b"after close");
            let c = tokio::time::timeout(Duration::from_secs(5), read)
                .await
                .expect("hang");
            assert_eq!(c.into_result().unwrap().data(), b"after close");
            h.shutdown();
            driver.await.unwrap().unwrap();
        });
        assert_full(&pool);
    })
}

/// Weird descriptors through the handle: typed errors, nothing reaches the kernel, no
/// slot lost.
#[test]
fn weird_fds_through_the_handle() {
    watchdog(30, || {
        let rt = ct();
        let pool = pool(4, 4096);
        let dir = tempfile::tempdir().unwrap();
        rt.block_on(async {
            let mut ring = Ring::new().unwrap();
            ring.register_pool(&pool);
            let (h, driver) = iocomplete::tokio::spawn(ring).unwrap();
            let d = h
                .register(std::fs::File::open(dir.path()).unwrap())
                .unwrap();
            let c = h
                .submit_future(Op::read(d, 0, pool.get_async().await))
                .await;
            assert!(
                matches!(kind(&c), Some(ErrorKind::WrongTargetKind { .. })),
                "dir read: {c:?}"
            );
            drop(c);
            let c = h.submit_future(Op::fsync(d, false)).await;
            assert!(c.is_ok(), "fsync of a directory is documented: {c:?}");

            // SAFETY: eventfd takes no pointers.
            let raw = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
            assert!(raw >= 0);
            // SAFETY: a fresh eventfd descriptor, owned by nobody else.
            let efd = unsafe { OwnedFd::from_raw_fd(raw) };
            let e = h.register(efd).unwrap();
            let c = h
                .submit_future(Op::read(e, 0, pool.get_async().await))
                .await;
            assert!(
                matches!(kind(&c), Some(ErrorKind::WrongTargetKind { .. })),
                "eventfd read: {c:?}"
            );
            drop(c);

            let path = std::ffi::CString::new(dir.path().join("f").to_str().unwrap()).unwrap();
            std::fs::write(dir.path().join("f"), b"opath").unwrap();
            // SAFETY: a NUL-terminated path; the result is checked.
            let pfd = unsafe { libc::open(path.as_ptr(), libc::O_PATH | libc::O_CLOEXEC) };
            assert!(pfd >= 0);
            // SAFETY: pfd is a fresh O_PATH descriptor owned by nobody else.
            let p = h.register(unsafe { OwnedFd::from_raw_fd(pfd) }).unwrap();
            let c = h
                .submit_future(Op::read(p, 0, pool.get_async().await))
                .await;
            assert!(c.error().is_some(), "O_PATH read must fail typed: {c:?}");
            assert!(
                !matches!(kind(&c), Some(ErrorKind::Os(_))),
                "O_PATH read reached the kernel: {c:?}"
            );
            drop(c);
            let c = h.submit_future(Op::poll(p, libc::POLLIN as u32)).await;
            assert!(
                matches!(kind(&c), Some(ErrorKind::InvalidInput { .. })),
                "O_PATH poll: {c:?}"
            );
            let c = h.submit_future(Op::fsync(p, false)).await;
            assert!(
                matches!(kind(&c), Some(ErrorKind::InvalidInput { .. })),
                "O_PATH fsync: {c:?}"
            );

            let n = h
                .register(std::fs::File::open("/dev/null").unwrap())
                .unwrap();
            let c = h
                .submit_future(Op::read(n, 0, pool.get_async().await))
                .await;
            assert_eq!(c.into_result().unwrap().len(), 0, "/dev/null reads EOF");
            let c = h
                .submit_future(Op::write(n, 0, {
                    let mut b = pool.get_async().await;
                    b.extend_from_slice(b"x").unwrap();
                    b
                }))
                .await;
            // /dev/null is opened read-only: NotWritable
            assert_eq!(kind(&c), Some(ErrorKind::NotWritable), "{c:?}");
            drop(c);

            let (s1, s2) = UnixStream::pair().unwrap();
            let s = h.register(s1).unwrap();
            let c = h.submit_future(Op::fsync(s, false)).await;
            assert!(
                matches!(kind(&c), Some(ErrorKind::WrongTargetKind { .. })),
                "socket fsync: {c:?}"
            );
            (&s2).write_all(b"sock").unwrap();
            let c = h
                .submit_future(Op::read(s, 0, pool.get_async().await))
                .await;
            assert_eq!(c.into_result().unwrap().data(), b"sock");

            // Op::nowait on a non-read, empty poll mask
            let c = h.submit_future(Op::fsync(d, false).nowait()).await;
            assert!(
                matches!(kind(&c), Some(ErrorKind::InvalidInput { .. })),
                "{c:?}"
            );
            let c = h.submit_future(Op::poll(s, 0)).await;
            assert!(
                matches!(kind(&c), Some(ErrorKind::InvalidInput { .. })),
                "{c:?}"
            );
            h.shutdown();
            let ring = driver.await.unwrap().unwrap();
            assert_eq!(ring.in_flight(), 0);
        });
        assert_full(&pool);
    })
}

/// 10^5 register/close pairs through a handle, and a few thousand targets alive at
/// once (past the 64-entry fixed-file table).
#[test]
fn many_registrations_and_closes() {
    watchdog(120, || {
        let rt = mt(2);
        let pool = pool(8, 4096);
        rt.block_on(async {
            let mut ring = Ring::new().unwrap();
            ring.register_pool(&pool);
            let (h, driver) = iocomplete::tokio::spawn(ring).unwrap();
            let devnull = std::fs::File::open("/dev/null").unwrap();
            for i in 0..100_000 {
                let t = h.register(devnull.try_clone().unwrap()).unwrap();
                h.close(t).unwrap();
                // A round trip now and then: the ring has closed everything before it
                // (requests from one thread are carried out in order). Without it the
                // loop outruns the ring and holds thousands of descriptors open.
                if i % 1000 == 999 {
                    assert!(h.submit_future(Op::nop()).await.is_ok());
                }
            }
            let src = file_with(b"many");
            let mut ts = Vec::new();
            for _ in 0..3000 {
                ts.push(h.register(src.try_clone().unwrap()).unwrap());
            }
            let mut futs = Vec::new();
            for (i, &t) in ts.iter().enumerate().step_by(97) {
                let _ = i;
                let c = h
                    .submit_future(Op::read(t, 0, pool.get_async().await))
                    .await;
                assert_eq!(c.into_result().unwrap().data(), b"many");
            }
            for &t in &ts {
                futs.push(h.close(t));
            }
            assert!(futs.iter().all(|r| r.is_ok()));
            for &t in &ts {
                let c = h
                    .submit_future(Op::read(t, 0, pool.get_async().await))
                    .await;
                assert_eq!(kind(&c), Some(ErrorKind::StaleTarget));
            }
            h.shutdown();
            driver.await.unwrap().unwrap();
        });
        assert_full(&pool);
    })
}

// ---------------------------------------------------------------- shutdown

/// shutdown waits for an idle pipe read (documented); shutdown_now then ends it.
#[test]
fn shutdown_waits_for_idle_read_then_shutdown_now_ends_it() {
    watchdog(30, || {
        let rt = ct();
        let pool = pool(4, 4096);
        rt.block_on(async {
            let mut ring = Ring::new().unwrap();
            ring.register_pool(&pool);
            let (h, mut driver) = iocomplete::tokio::spawn(ring).unwrap();
            let (r, _w) = pipe();
            let t = h.register(r).unwrap();
            let read = h.submit_future(Op::read(t, 0, pool.get_async().await));
            let q = Arc::new(CompletionQueue::new(4));
            h.submit_to(Op::timeout(Duration::MAX).tag(9), &q);
            h.shutdown();
            assert!(
                tokio::time::timeout(Duration::from_millis(200), &mut driver)
                    .await
                    .is_err(),
                "shutdown returned with a read in flight"
            );
            // submissions after shutdown but before shutdown_now
            let late = h.submit_future(Op::nop());
            h.shutdown_now();
            let ring = tokio::time::timeout(Duration::from_secs(5), driver)
                .await
                .expect("shutdown_now does not end the driver")
                .unwrap()
                .unwrap();
            assert_eq!(ring.in_flight(), 0);
            let c = tokio::time::timeout(Duration::from_secs(5), read)
                .await
                .unwrap();
            assert_eq!(kind(&c), Some(ErrorKind::Cancelled));
            let c = q.pop_timeout(Duration::from_secs(5)).expect("timer lost");
            assert_eq!(kind(&c), Some(ErrorKind::Cancelled));
            assert!(q.pop_timeout(Duration::from_millis(20)).is_none());
            let late = tokio::time::timeout(Duration::from_secs(5), late)
                .await
                .expect("late nop hangs");
            drop(late);
        });
        assert_full(&pool);
    })
}

// ---------------------------------------------------------------- durations

#[test]
fn huge_durations_mean_never() {
    watchdog(30, || {
        let rt = ct();
        let pool = pool(4, 4096);
        rt.block_on(async {
            let mut ring = Ring::new().unwrap();
            ring.register_pool(&pool);
            let (h, driver) = iocomplete::tokio::spawn(ring).unwrap();
            let ds = [
                Duration::MAX,
                Duration::from_secs(u64::MAX),
                Duration::new(i64::MAX as u64, 999_999_999),
                Duration::new(1 << 63, 0),
                Duration::new((1 << 63) - 1, 0),
            ];
            for d in ds {
                let (a, b) = UnixStream::pair().unwrap();
                let t = h.register(a).unwrap();
                let mut read = h.submit_future(Op::read(t, 0, pool.get_async().await).deadline(d));
                let mut timer = h.submit_future(Op::timeout(d));
                tokio::time::sleep(Duration::from_millis(30)).await;
                assert!(
                    poll_once(&mut read).is_pending(),
                    "deadline {d:?} fired: {:?}",
                    poll_once(&mut read)
                );
                assert!(poll_once(&mut timer).is_pending(), "timer {d:?} fired");
                (&b).write_all(b"late").unwrap();
                let c = tokio::time::timeout(Duration::from_secs(5), read)
                    .await
                    .unwrap();
                assert_eq!(c.into_result().unwrap().data(), b"late");
                timer.cancel();
                let c = tokio::time::timeout(Duration::from_secs(5), timer)
                    .await
                    .unwrap();
                assert_eq!(kind(&c), Some(ErrorKind::Cancelled), "{d:?}");
            }
            // zero: fires at once
            let c = h.submit_future(Op::timeout(Duration::ZERO)).await;
            assert_eq!(kind(&c), Some(ErrorKind::TimedOut));
            let (a, _b) = UnixStream::pair().unwrap();
            let t = h.register(a).unwrap();
            let c = tokio::time::timeout(
                Duration::from_secs(5),
                h.submit_future(Op::read(t, 0, pool.get_async().await).deadline(Duration::ZERO)),
            )
            .await
            .unwrap();
            assert_eq!(kind(&c), Some(ErrorKind::TimedOut));
            drop(c);
            h.shutdown();
            driver.await.unwrap().unwrap();
        });
        // get_timeout(MAX) served by another thread
        let held = pool.try_get().unwrap();
        let mut rest = Vec::new();
        while let Ok(b) = pool.try_get() {
            rest.push(b);
        }
        let th = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            drop(held)
        });
        let b = pool.get_timeout(Duration::MAX).unwrap();
        th.join().unwrap();
        assert!(matches!(
            pool.get_timeout(Duration::ZERO).unwrap_err().kind(),
            ErrorKind::PoolExhausted
        ));
        drop(b);
        drop(rest);
        assert_full(&pool);
    })
}

// ---------------------------------------------------------------- get_async

/// A pool of one slot, 100 async waiters on a multi-thread runtime, blocking get()s and
/// try_get()s on OS threads, buffers held and returned from other threads, and waiters
/// dropped by timeouts at every stage. Everything is served, nothing lost.
#[test]
fn get_async_one_slot_hundred_waiters_mixed() {
    watchdog(60, || {
        let rt = mt(4);
        let pool = pool(1, 4096);
        let served = Arc::new(AtomicUsize::new(0));
        let mut os = Vec::new();
        for i in 0..4 {
            let (pool, served) = (pool.clone(), served.clone());
            os.push(std::thread::spawn(move || {
                for j in 0..50 {
                    let b = if (i + j) % 3 == 0 {
                        match pool.try_get() {
                            Ok(b) => b,
                            Err(e) => {
                                assert_eq!(e.kind(), ErrorKind::PoolExhausted);
                                continue;
                            }
                        }
                    } else if j % 2 == 0 {
                        pool.get()
                    } else {
                        match pool.get_timeout(Duration::from_micros(j as u64 * 37)) {
                            Ok(b) => b,
                            Err(e) => {
                                assert_eq!(e.kind(), ErrorKind::PoolExhausted);
                                continue;
                            }
                        }
                    };
                    served.fetch_add(1, Ordering::Relaxed);
                    // hand it to another thread to drop
                    std::thread::spawn(move || drop(b)).join().unwrap();
                }
            }));
        }
        rt.block_on(async {
            let mut tasks = Vec::new();
            for i in 0..100u64 {
                let (pool, served) = (pool.clone(), served.clone());
                tasks.push(tokio::spawn(async move {
                    for j in 0..20u64 {
                        if (i + j) % 4 == 0 {
                            // drop the waiter at a random stage
                            let _ = tokio::time::timeout(
                                Duration::from_micros((i * 13 + j * 7) % 300),
                                pool.get_async(),
                            )
                            .await;
                        } else {
                            let b = pool.get_async().await;
                            served.fetch_add(1, Ordering::Relaxed);
                            if j % 2 == 0 {
                                tokio::task::yield_now().await;
                                drop(b);
                            } else {
                                std::thread::spawn(move || drop(b));
                            }
                        }
                    }
                }));
            }
            for t in tasks {
                tokio::time::timeout(Duration::from_secs(30), t)
                    .await
                    .expect("an async waiter starved / hung")
                    .unwrap();
            }
        });
        for t in os {
            t.join().unwrap();
        }
        assert_full(&pool);
    })
}

/// A GetBuf dropped after a buffer was handed to it but before it was polled, and one
/// polled again after it resolved (documented: takes another buffer).
#[test]
fn get_async_dropped_after_handoff_and_polled_after_ready() {
    watchdog(30, || {
        let pool = pool(2, 4096);
        let a = pool.try_get().unwrap();
        let b = pool.try_get().unwrap();
        let mut w1 = pool.get_async();
        let mut w2 = pool.get_async();
        assert!(poll_once(&mut w1).is_pending());
        assert!(poll_once(&mut w2).is_pending());
        drop(a); // handed to w1
        drop(w1); // never polled since: the buffer must go to w2
        let got = match poll_once(&mut w2) {
            Poll::Ready(b) => b,
            Poll::Pending => panic!("buffer handed to a dropped waiter was lost (not passed on)"),
        };
        drop(b);
        // polled again after Ready: another buffer
        let again = match poll_once(&mut w2) {
            Poll::Ready(b) => b,
            Poll::Pending => panic!("documented: polling again takes another buffer"),
        };
        drop(got);
        drop(again);
        drop(w2);
        assert_full(&pool);
    })
}

/// Documented as blocking the thread: a blocking `get()` inside a current-thread runtime
/// task, while the only slot is held by a read the same runtime drives, cannot return.
/// This test pins the hazard: get_timeout reports PoolExhausted instead of hanging, and
/// the ring is fine afterwards.
#[test]
fn blocking_get_inside_current_thread_runtime() {
    watchdog(30, || {
        let rt = ct();
        let pool = pool(1, 4096);
        rt.block_on(async {
            let mut ring = Ring::new().unwrap();
            ring.register_pool(&pool);
            let (h, driver) = iocomplete::tokio::spawn(ring).unwrap();
            let (a, b) = UnixStream::pair().unwrap();
            let t = h.register(a).unwrap();
            let read = tokio::spawn(h.submit_future(Op::read(t, 0, pool.get_async().await)));
            tokio::task::yield_now().await;
            (&b).write_all(b"x").unwrap();
            // the driver task cannot run while we block this thread
            let r = pool.get_timeout(Duration::from_millis(200));
            assert_eq!(r.unwrap_err().kind(), ErrorKind::PoolExhausted);
            let c = read.await.unwrap();
            assert_eq!(c.into_result().unwrap().data(), b"x");
            // now free: a blocking get returns at once
            drop(pool.get());
            h.shutdown();
            driver.await.unwrap().unwrap();
        });
        assert_full(&pool);
    })
}

// ---------------------------------------------------------------- scale

#[test]
fn many_rings_on_one_runtime() {
    watchdog(60, || {
        let rt = ct();
        let pool = pool(32, 4096);
        rt.block_on(async {
            let mut hs = Vec::new();
            for _ in 0..32 {
                let mut ring = Ring::new().unwrap();
                ring.register_pool(&pool);
                hs.push(iocomplete::tokio::spawn(ring).unwrap());
            }
            let mut tasks = Vec::new();
            for (i, (h, _)) in hs.iter().enumerate() {
                let (h, pool) = (h.clone(), pool.clone());
                tasks.push(tokio::spawn(async move {
                    let t = h
                        .register(file_with(format!("ring {i}").as_bytes()))
                        .unwrap();
                    for _ in 0..50 {
                        let c = h
                            .submit_future(Op::read(t, 0, pool.get_async().await))
                            .await;
                        assert_eq!(
                            c.into_result().unwrap().data(),
                            format!("ring {i}").as_bytes()
                        );
                    }
                }));
            }
            for t in tasks {
                t.await.unwrap();
            }
            for (h, d) in hs {
                h.shutdown();
                assert_eq!(d.await.unwrap().unwrap().in_flight(), 0);
            }
        });
        assert_full(&pool);
    })
}

#[test]
fn thousand_tasks_on_multi_thread_runtime() {
    watchdog(120, || {
        let rt = mt(4);
        let pool = pool(64, 4096);
        let data: Vec<u8> = (0..64 * 4096u32).map(|i| (i % 253) as u8).collect();
        let data = Arc::new(data);
        rt.block_on(async {
            let mut ring = Ring::new().unwrap();
            ring.register_pool(&pool);
            let (h, driver) = iocomplete::tokio::spawn(ring).unwrap();
            let t = h.register(file_with(&data)).unwrap();
            let mut tasks = Vec::new();
            for i in 0..1000usize {
                let (h, pool, data) = (h.clone(), pool.clone(), data.clone());
                tasks.push(tokio::spawn(async move {
                    let off = (i % 64) * 4096;
                    let fut = h.submit_future(Op::read(t, off as u64, pool.get_async().await));
                    if i % 5 == 0 {
                        // some are dropped mid-flight
                        let _ = tokio::time::timeout(Duration::from_micros(50), fut).await;
                        return;
                    }
                    let c = fut.await;
                    let b = c.into_result().unwrap();
                    assert_eq!(b.data(), &data[off..off + 4096]);
                }));
            }
            for t in tasks {
                t.await.unwrap();
            }
            h.shutdown();
            let ring = driver.await.unwrap().unwrap();
            assert_eq!(ring.in_flight(), 0);
        });
        assert_full(&pool);
    })
}

/// More than POLL_BUDGET completions ready at once: every one is routed, the driver is
/// re-polled (no lost wake-up).
#[test]
fn more_than_poll_budget_at_once() {
    watchdog(30, || {
        let rt = ct();
        rt.block_on(async {
            let ring = Ring::builder().entries(4096).build().unwrap();
            let (h, driver) = iocomplete::tokio::spawn(ring).unwrap();
            let q = Arc::new(CompletionQueue::new(100_000));
            let n = Ring::POLL_BUDGET * 40 + 3;
            for i in 0..n {
                h.submit_to(Op::nop().tag(i as u64), &q);
            }
            let futs: Vec<_> = (0..n).map(|_| h.submit_future(Op::nop())).collect();
            for f in futs {
                tokio::time::timeout(Duration::from_secs(10), f)
                    .await
                    .expect("lost wake-up");
            }
            let mut seen = vec![false; n];
            for _ in 0..n {
                let c = q.pop().expect("a completion is missing");
                assert!(
                    !std::mem::replace(&mut seen[c.tag() as usize], true),
                    "twice"
                );
            }
            assert!(q.pop().is_none());
            h.shutdown();
            driver.await.unwrap().unwrap();
        });
    })
}

// ---------------------------------------------------------------- other reactors, single issuer

/// A hand-written reactor on poll(2), on a thread other than the one that built the
/// ring; handle requests from a third thread; poll_complete called again after Ready.
#[test]
fn poll_complete_from_another_thread_with_poll2() {
    watchdog(30, || {
        let pool = pool(4, 4096);
        let mut ring = Ring::new().unwrap();
        ring.register_pool(&pool);
        let h = ring.handle().unwrap();
        let reactor = std::thread::spawn(move || {
            use std::os::fd::AsFd;
            let woke = Arc::new(std::sync::atomic::AtomicBool::new(false));
            struct Flag(Arc<std::sync::atomic::AtomicBool>);
            impl Wake for Flag {
                fn wake(self: Arc<Self>) {
                    self.0.store(true, Ordering::SeqCst);
                }
            }
            let waker = Waker::from(Arc::new(Flag(woke.clone())));
            let mut cx = Context::from_waker(&waker);
            let r = loop {
                if let Poll::Ready(r) = ring.poll_complete(&mut cx) {
                    break r;
                }
                if woke.swap(false, Ordering::SeqCst) {
                    continue;
                }
                let mut pfd = libc::pollfd {
                    fd: ring.as_fd().as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                };
                // SAFETY: one valid pollfd.
                let n = unsafe { libc::poll(&mut pfd, 1, 1000) };
                assert!(n >= 0);
            };
            r.unwrap();
            // again after Ready: no panic, stays done
            for _ in 0..3 {
                match std::panic::catch_unwind(AssertUnwindSafe(|| ring.poll_complete(&mut cx))) {
                    Ok(Poll::Ready(Ok(()))) => {}
                    other => panic!("poll_complete after Ready: {other:?}"),
                }
            }
            ring
        });
        let client = {
            let (h, pool) = (h.clone(), pool.clone());
            std::thread::spawn(move || {
                let t = h.register(file_with(b"reactor")).unwrap();
                for _ in 0..500 {
                    let f = h.submit_future(Op::read(t, 0, pool.get()));
                    let c = block_on_for(f, Duration::from_secs(5))
                        .expect("lost wake-up in poll reactor");
                    assert_eq!(c.into_result().unwrap().data(), b"reactor");
                }
                let q = Arc::new(CompletionQueue::new(2048));
                for i in 0..1000 {
                    h.submit_to(Op::nop().tag(i), &q);
                }
                for _ in 0..1000 {
                    q.pop_timeout(Duration::from_secs(5))
                        .expect("budget path lost completions");
                }
            })
        };
        client.join().unwrap();
        h.shutdown();
        let ring = reactor.join().unwrap();
        assert_eq!(ring.in_flight(), 0);
        drop(ring);
        assert_full(&pool);
    })
}

/// A single-issuer ring on a current-thread runtime works, handles from other threads.
#[test]
fn single_issuer_on_current_thread_runtime() {
    watchdog(30, || {
        let pool = pool(4, 4096);
        let mut ring = Ring::builder().single_issuer(true).build().unwrap();
        ring.register_pool(&pool);
        // built here, driven on another thread
        let p2 = pool.clone();
        std::thread::spawn(move || {
            let rt = ct();
            rt.block_on(async move {
                let (h, driver) = iocomplete::tokio::spawn(ring).unwrap();
                let t = h.register(file_with(b"si")).unwrap();
                let h2 = h.clone();
                let other = std::thread::spawn(move || {
                    for _ in 0..100 {
                        let f = h2.submit_future(Op::read(t, 0, p2.get()));
                        let c = block_on_for(f, Duration::from_secs(5)).expect("hang");
                        assert_eq!(c.into_result().unwrap().data(), b"si");
                    }
                });
                while !other.is_finished() {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                other.join().unwrap();
                h.shutdown();
                driver.await.unwrap().unwrap();
            });
        })
        .join()
        .unwrap();
        assert_full(&pool);
    })
}

/// A current-thread runtime's tasks run on whichever thread calls block_on: a
/// single-issuer ring spawned from thread A is then driven from thread B. The kernel
/// refuses B's submissions; the promise is a typed error (or it just works), never a
/// hang, a panic or a lost completion.
#[test]
fn single_issuer_ring_driven_from_two_threads_via_current_thread_runtime() {
    watchdog(30, || {
        let pool = pool(4, 4096);
        let mut ring = Ring::builder().single_issuer(true).build().unwrap();
        ring.register_pool(&pool);
        let rt = Arc::new(ct());
        let (h, driver) = {
            let rt = rt.clone();
            let pool = pool.clone();
            std::thread::spawn(move || {
                rt.block_on(async move {
                    let (h, driver) = iocomplete::tokio::spawn(ring).unwrap();
                    let t = h.register(file_with(b"A")).unwrap();
                    let c = h
                        .submit_future(Op::read(t, 0, pool.get_async().await))
                        .await;
                    assert_eq!(c.into_result().unwrap().data(), b"A");
                    (h, driver)
                })
            })
            .join()
            .unwrap()
        };
        // now thread B (this one) runs the driver task
        let pool2 = pool.clone();
        let res = rt.block_on(async {
            let t = h.register(file_with(b"B")).unwrap();
            let f = h.submit_future(Op::read(t, 0, pool2.get_async().await));
            let c = tokio::time::timeout(Duration::from_secs(5), f)
                .await
                .expect("a read on the migrated single-issuer ring hangs");
            eprintln!("read from thread B: {:?}", c.result());
            // Never handed to the kernel (the driver refuses to enter it from thread B),
            // yet reported Abandoned ("the kernel did not return the operation within
            // the drop's grace period (10 s ...)") at once, its slot leaked.
            let abandoned = kind(&c) == Some(ErrorKind::Abandoned);
            drop(c);
            assert!(
                !abandoned,
                "a read the kernel never saw completed Abandoned at once and leaked its slot: {:?}",
                pool2.stats()
            );
            h.shutdown();
            tokio::time::timeout(Duration::from_secs(5), driver)
                .await
                .expect("driver hangs")
                .expect("driver task panicked")
        });
        eprintln!("driver result: {:?}", res.as_ref().map(|r| r.in_flight()));
        drop(res);
        assert_full(&pool);
    })
}

/// defer_taskrun with spawn: documented as Unsupported (README: "needs a current-thread
/// runtime (a typed error otherwise)"). Whatever is returned must be typed, not a hang.
#[test]
fn defer_taskrun_with_spawn_and_drive() {
    if common::needs_uring(&Ring::new().unwrap(), "DEFER_TASKRUN rings").is_none() {
        return;
    }
    watchdog(30, || {
        let rt = ct();
        let pool = pool(4, 4096);
        rt.block_on(async {
            let mut ring = Ring::builder().defer_taskrun(true).build().unwrap();
            ring.register_pool(&pool);
            match iocomplete::tokio::spawn(ring) {
                Err(e) => {
                    eprintln!("spawn(defer_taskrun) on current-thread: {e:?}");
                    // README "From tokio": "A single-issuer ring (`single_issuer`,
                    // `defer_taskrun`) needs a current-thread runtime (a typed error
                    // otherwise)" -- yet this is a current-thread runtime.
                    assert!(matches!(e.kind(), ErrorKind::Unsupported { .. }));
                }
                Ok((h, driver)) => {
                    let t = h.register(file_with(b"d")).unwrap();
                    let f = h.submit_future(Op::read(t, 0, pool.get_async().await));
                    let c = tokio::time::timeout(Duration::from_secs(5), f)
                        .await
                        .expect("defer_taskrun ring accepted by spawn, then hangs");
                    assert!(c.is_ok());
                    h.shutdown();
                    driver.await.unwrap().unwrap();
                }
            }
            let mut ring = Ring::builder().defer_taskrun(true).build().unwrap();
            ring.register_pool(&pool);
            let h = ring.handle().unwrap();
            let r = tokio::time::timeout(Duration::from_secs(5), iocomplete::tokio::drive(ring))
                .await
                .expect("drive(defer_taskrun) hangs");
            assert!(matches!(
                r.unwrap_err().kind(),
                ErrorKind::Unsupported { .. }
            ));
            // the ring is gone with the error: the handle says so
            let c = block_on_for(h.submit_future(Op::nop()), Duration::from_secs(5)).expect("hang");
            assert_eq!(kind(&c), Some(ErrorKind::Cancelled));
        });
        assert_full(&pool);
    })
}

/// A single-issuer ring on a multi-thread runtime: typed error, and ops submitted
/// through a handle taken before the refusal still complete (once).
#[test]
fn single_issuer_refused_on_multi_thread_completes_pending_handle_ops() {
    if common::needs_uring(&Ring::new().unwrap(), "single-issuer rings").is_none() {
        return;
    }
    watchdog(30, || {
        let rt = mt(2);
        let pool = pool(4, 4096);
        rt.block_on(async {
            let mut ring = Ring::builder().single_issuer(true).build().unwrap();
            ring.register_pool(&pool);
            let h = ring.handle().unwrap();
            let t = h.register(file_with(b"x")).unwrap();
            let f = h.submit_future(Op::read(t, 0, pool.get_async().await));
            let e = iocomplete::tokio::drive(ring).await.unwrap_err();
            assert!(matches!(e.kind(), ErrorKind::InvalidInput { .. }), "{e:?}");
            let c = tokio::time::timeout(Duration::from_secs(5), f)
                .await
                .expect("pending op hangs");
            // completed once: with its data (the dropped ring ran it) or Cancelled
            assert!(c.is_ok() || kind(&c) == Some(ErrorKind::Cancelled), "{c:?}");
            drop(c);
        });
        assert_full(&pool);
    })
}

// ---------------------------------------------------------------- local readers

/// on_read panics inline: the panic reaches the caller of run(); dropping the reader and
/// driving the ring returns every slot; the ring stays usable.
#[test]
fn local_reader_on_read_panics() {
    watchdog(30, || {
        let pool = pool(8, 4096);
        let mut ring = Ring::new().unwrap();
        ring.register_pool(&pool);
        let data = vec![7u8; 200 * 1024];
        let file = ring.register(file_with(&data)).unwrap();
        let mut calls = 0;
        let r = std::panic::catch_unwind(AssertUnwindSafe(|| {
            let mut reader = ContinuousReader::local_builder(file, &pool)
                .pending_reads(4)
                .on_read(|_buf, _off| {
                    calls += 1;
                    if calls == 3 {
                        panic!("boom in on_read");
                    }
                })
                .build(&mut ring)
                .unwrap();
            reader.run(&mut ring)
        }));
        assert!(r.is_err(), "the panic should reach the caller");
        assert_eq!(calls, 3);
        ring.run_until_idle().unwrap();
        assert_eq!(ring.in_flight(), 0);
        assert_full(&pool);
        // usable afterwards
        let mut total = 0usize;
        {
            let mut reader = ContinuousReader::local_builder(file, &pool)
                .pending_reads(4)
                .ordered(true)
                .on_read(|buf, _| total += buf.len())
                .build(&mut ring)
                .unwrap();
            reader.run(&mut ring).unwrap();
        }
        assert_eq!(total, data.len());
        assert_full(&pool);
    })
}

/// on_failed panics (after a failed read on a pipe whose writer... a read error) and
/// callbacks that call into the ring through a handle and cancel themselves.
#[test]
fn local_reader_callbacks_call_into_the_ring() {
    watchdog(30, || {
        let pool = pool(8, 4096);
        let mut ring = Ring::new().unwrap();
        ring.register_pool(&pool);
        let h = ring.handle().unwrap();
        let data: Vec<u8> = (0..400 * 1024u32).map(|i| i as u8).collect();
        let file = ring.register(file_with(&data)).unwrap();
        let q = Arc::new(CompletionQueue::new(10_000));
        let mut seen = Vec::new();
        let mut n = 0;
        let builder = ContinuousReader::local_builder(file, &pool)
            .pending_reads(4)
            .ordered(true);
        let cancel = builder.cancel_handle();
        let report = {
            let mut reader = builder
                .on_read(|buf, off| {
                    n += 1;
                    seen.push((off, buf.len()));
                    // into the ring: a submission, a registration, a close, a wake
                    h.submit_to(Op::nop().tag(n), &q);
                    let t = h
                        .register(std::fs::File::open("/dev/null").unwrap())
                        .unwrap();
                    h.close(t).unwrap();
                    h.wake();
                    // keep the buffer past the callback: hand it to the queue's future
                    h.detach(Op::write(file, 0, buf.share()));
                    if n == 20 {
                        cancel.cancel();
                    }
                })
                .build(&mut ring)
                .unwrap();
            reader.run(&mut ring).unwrap()
        };
        eprintln!("report: {report:?}");
        ring.run_until_idle().unwrap();
        assert_eq!(q.len(), n as usize);
        assert!(n >= 20);
        let _ = seen;
        drop(ring);
        assert_full(&pool);
    })
}

/// A single-issuer ring driven by a current-thread runtime on thread A, with a read of an
/// idle pipe in flight; the runtime is then dropped on thread B (legal for tokio), so the
/// ring's drop runs on B, which the kernel lets neither cancel nor wait. Documented
/// (`RingBuilder::single_issuer`, `ErrorKind::Abandoned`): the read completes once, at
/// once, `Abandoned`, and its slot is leaked rather than reused under the kernel.
#[test]
fn single_issuer_ring_dropped_with_its_runtime_on_another_thread_abandons_at_once() {
    if common::needs_uring(&Ring::new().unwrap(), "single-issuer rings").is_none() {
        return;
    }
    watchdog(30, || {
        let pool = pool(2, 4096);
        let (rt, fut, _w) = {
            let pool = pool.clone();
            std::thread::spawn(move || {
                let rt = ct();
                let (fut, w) = rt.block_on(async {
                    let mut ring = Ring::builder().single_issuer(true).build().unwrap();
                    ring.register_pool(&pool);
                    let (h, _driver) = iocomplete::tokio::spawn(ring).unwrap();
                    let (r, w) = pipe();
                    let t = h.register(r).unwrap();
                    let fut = h.submit_future(Op::read(t, 0, pool.get_async().await));
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    assert!(fut.id().is_some());
                    (fut, w)
                });
                (rt, fut, w)
            })
            .join()
            .unwrap()
        };
        let t0 = Instant::now();
        drop(rt); // on this thread: the ring's drop runs here
        let c = block_on_for(fut, Duration::from_secs(15)).expect("hang");
        assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
        assert_eq!(kind(&c), Some(ErrorKind::Abandoned), "{:?}", c.result());
        assert!(matches!(c.bufs(), iocomplete::Bufs::None));
        drop(c);
        let st = pool.stats();
        assert_eq!(
            (st.free, st.total),
            (1, 2),
            "exactly the abandoned slot is held back"
        );
    })
}

/// Control for the test above: the same, but the runtime is dropped on the thread that
/// drove the ring.
#[test]
fn single_issuer_ring_dropped_with_its_runtime_on_its_own_thread() {
    watchdog(30, || {
        let pool = pool(2, 4096);
        let rt = ct();
        let (fut, _w) = rt.block_on(async {
            let mut ring = Ring::builder().single_issuer(true).build().unwrap();
            ring.register_pool(&pool);
            let (h, _driver) = iocomplete::tokio::spawn(ring).unwrap();
            let (r, w) = pipe();
            let t = h.register(r).unwrap();
            let fut = h.submit_future(Op::read(t, 0, pool.get_async().await));
            tokio::time::sleep(Duration::from_millis(50)).await;
            (fut, w)
        });
        drop(rt);
        let c = block_on_for(fut, Duration::from_secs(15)).expect("hang");
        assert_eq!(kind(&c), Some(ErrorKind::Cancelled));
        drop(c);
        assert_full(&pool);
    })
}

// ---------------------------------------------------------------- more handle edges

/// register after the ring is gone: RingClosed "and the descriptor is then closed".
#[test]
fn register_after_ring_gone_closes_the_descriptor() {
    watchdog(30, || {
        let rt = ct();
        let h = rt.block_on(async {
            let (h, driver) = iocomplete::tokio::spawn(Ring::new().unwrap()).unwrap();
            h.shutdown();
            drop(driver.await.unwrap().unwrap());
            h
        });
        let (r, w) = pipe();
        assert_eq!(h.register(w).unwrap_err().kind(), ErrorKind::RingClosed);
        // the write end is closed: the read end sees EOF at once
        let mut b = [0u8; 1];
        // SAFETY: reads at most 1 byte into a valid buffer.
        let n = unsafe { libc::read(r.as_raw_fd(), b.as_mut_ptr().cast(), 1) };
        assert_eq!(n, 0, "write end still open after a refused register");
    })
}

/// close of another (live) ring's target through this handle: StaleTarget, and the
/// other ring's target is untouched.
#[test]
fn close_foreign_target_is_stale_and_harmless() {
    watchdog(30, || {
        let rt = ct();
        let pool = pool(2, 4096);
        rt.block_on(async {
            let (h1, d1) = iocomplete::tokio::spawn(Ring::new().unwrap()).unwrap();
            let (h2, d2) = iocomplete::tokio::spawn(Ring::new().unwrap()).unwrap();
            let t1 = h1.register(file_with(b"one")).unwrap();
            let t2 = h2.register(file_with(b"two")).unwrap();
            assert_eq!(h1.close(t2).unwrap_err().kind(), ErrorKind::StaleTarget);
            assert_eq!(h2.close(t1).unwrap_err().kind(), ErrorKind::StaleTarget);
            let c = h2
                .submit_future(Op::read(t2, 0, pool.get_async().await))
                .await;
            assert_eq!(c.into_result().unwrap().data(), b"two");
            let c = h1
                .submit_future(Op::read(t2, 0, pool.get_async().await))
                .await;
            assert_eq!(kind(&c), Some(ErrorKind::StaleTarget));
            drop(c);
            h1.shutdown();
            h2.shutdown();
            d1.await.unwrap().unwrap();
            d2.await.unwrap().unwrap();
        });
        assert_full(&pool);
    })
}

/// The ring's own descriptor registered into itself, and into another ring.
#[test]
fn register_a_ring_descriptor() {
    watchdog(30, || {
        let rt = ct();
        let pool = pool(2, 4096);
        rt.block_on(async {
            use std::os::fd::AsFd;
            let mut ring = Ring::new().unwrap();
            ring.register_pool(&pool);
            let own = ring.as_fd().try_clone_to_owned().unwrap();
            let own2 = ring.as_fd().try_clone_to_owned().unwrap();
            let (h, driver) = iocomplete::tokio::spawn(ring).unwrap();
            match h.register(own) {
                Ok(t) => {
                    let c = h
                        .submit_future(Op::read(t, 0, pool.get_async().await))
                        .await;
                    eprintln!("read of own ring fd: {:?}", c.result());
                    assert!(c.error().is_some());
                    drop(c);
                    let c = h
                        .submit_future(
                            Op::poll(t, libc::POLLIN as u32).deadline(Duration::from_millis(20)),
                        )
                        .await;
                    eprintln!("poll of own ring fd: {:?}", c.result());
                    h.close(t).unwrap();
                }
                Err(e) => eprintln!("register own fd: {e:?}"),
            }
            let (h2, d2) = iocomplete::tokio::spawn(Ring::new().unwrap()).unwrap();
            let _ = h2.register(own2);
            h.shutdown();
            let t0 = Instant::now();
            tokio::time::timeout(Duration::from_secs(5), driver)
                .await
                .expect("hang")
                .unwrap()
                .unwrap();
            h2.shutdown();
            tokio::time::timeout(Duration::from_secs(5), d2)
                .await
                .expect("hang")
                .unwrap()
                .unwrap();
            assert!(t0.elapsed() < Duration::from_secs(5));
        });
        assert_full(&pool);
    })
}

/// A submit_then routine that panics runs on the driver task: the other operations
/// still complete exactly once and every slot comes back.
#[test]
fn submit_then_routine_panics_on_the_driver_task() {
    watchdog(30, || {
        let rt = ct();
        let pool = pool(4, 4096);
        rt.block_on(async {
            let mut ring = Ring::new().unwrap();
            ring.register_pool(&pool);
            let (h, driver) = iocomplete::tokio::spawn(ring).unwrap();
            let (a, _b) = UnixStream::pair().unwrap();
            let t = h.register(a).unwrap();
            let idle = h.submit_future(Op::read(t, 0, pool.get_async().await));
            tokio::time::sleep(Duration::from_millis(20)).await;
            h.submit_then(Op::nop(), |_| panic!("user routine panics"));
            let r = tokio::time::timeout(Duration::from_secs(5), driver)
                .await
                .expect("driver hangs");
            eprintln!(
                "driver after routine panic: {:?}",
                r.as_ref().map(|_| ()).map_err(|e| e.is_panic())
            );
            let c = tokio::time::timeout(Duration::from_secs(5), idle)
                .await
                .expect("op hangs");
            eprintln!("idle read: {:?}", c.result());
            assert_eq!(kind(&c), Some(ErrorKind::Cancelled));
            drop(c);
            assert!(h.is_closed());
        });
        assert_full(&pool);
    })
}

/// A full CompletionQueue: completions wait in its overflow list, none lost or doubled.
#[test]
fn submit_to_full_queue_from_tokio() {
    watchdog(30, || {
        let rt = ct();
        let pool = pool(8, 4096);
        rt.block_on(async {
            let mut ring = Ring::new().unwrap();
            ring.register_pool(&pool);
            let (h, driver) = iocomplete::tokio::spawn(ring).unwrap();
            let t = h.register(file_with(b"q")).unwrap();
            let q = Arc::new(CompletionQueue::new(1));
            for i in 0..500u64 {
                if i % 2 == 0 {
                    h.submit_to(Op::nop().tag(i), &q);
                } else {
                    // slots: only 8, so pop to keep going
                    let b = loop {
                        if let Ok(b) = pool.try_get() {
                            break b;
                        }
                        tokio::time::sleep(Duration::from_millis(1)).await;
                        while let Some(c) = q.pop() {
                            drop(c);
                        }
                    };
                    h.submit_to(Op::read(t, 0, b).tag(i), &q);
                }
            }
            h.shutdown();
            driver.await.unwrap().unwrap();
            while q.pop().is_some() {}
        });
        assert_full(&pool);
    })
}

/// spawn on a runtime without its I/O driver (drive documents a panic there).
#[test]
fn spawn_on_runtime_without_io_driver() {
    watchdog(30, || {
        let rt = Builder::new_current_thread().enable_time().build().unwrap();
        let pool = pool(2, 4096);
        rt.block_on(async {
            let mut ring = Ring::new().unwrap();
            ring.register_pool(&pool);
            let r = std::panic::catch_unwind(AssertUnwindSafe(|| iocomplete::tokio::spawn(ring)));
            match r {
                Err(_) => eprintln!("spawn panicked"),
                Ok(Err(e)) => eprintln!("spawn: typed {e:?}"),
                Ok(Ok((h, driver))) => {
                    let f = h.submit_future(Op::nop());
                    let d = tokio::time::timeout(Duration::from_secs(5), driver)
                        .await
                        .expect("hang");
                    eprintln!("driver: panic={:?}", d.as_ref().err().map(|e| e.is_panic()));
                    let c = tokio::time::timeout(Duration::from_secs(5), f)
                        .await
                        .expect("op hangs");
                    eprintln!("op: {:?}", c.result());
                }
            }
        });
        assert_full(&pool);
    })
}

// ---------------------------------------------------------------- wakers, bad input, pre-spawn work

/// A future first polled with one waker, then with another: the latest must be woken
/// (OpFuture and GetBuf).
#[test]
fn latest_waker_is_woken() {
    watchdog(30, || {
        let rt = ct();
        let pool = pool(1, 4096);
        rt.block_on(async {
            let mut ring = Ring::new().unwrap();
            ring.register_pool(&pool);
            let (h, driver) = iocomplete::tokio::spawn(ring).unwrap();
            let (a, b) = UnixStream::pair().unwrap();
            let t = h.register(a).unwrap();
            let mut read = h.submit_future(Op::read(t, 0, pool.get_async().await));
            tokio::time::sleep(Duration::from_millis(10)).await;
            assert!(poll_once(&mut read).is_pending()); // a no-op waker first
            let mut get = pool.get_async();
            assert!(poll_once(&mut get).is_pending());
            let w = std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(50));
                (&b).write_all(b"w").unwrap();
                b
            });
            let c = tokio::time::timeout(Duration::from_secs(5), &mut read)
                .await
                .expect("OpFuture woke its first (stale) waker only");
            drop(c); // the slot goes to `get`
            let buf = tokio::time::timeout(Duration::from_secs(5), &mut get)
                .await
                .expect("GetBuf woke its first (stale) waker only");
            drop(buf);
            drop(w.join().unwrap());
            h.shutdown();
            driver.await.unwrap().unwrap();
        });
        assert_full(&pool);
    })
}

/// Bad input through a handle: typed errors, buffers back, the file unchanged.
#[test]
fn bad_input_through_handle_is_typed_and_changes_nothing() {
    watchdog(30, || {
        let rt = ct();
        let pool = pool(16, 4096);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"original").unwrap();
        rt.block_on(async {
            let mut ring = Ring::new().unwrap();
            ring.register_pool(&pool);
            let (h, driver) = iocomplete::tokio::spawn(ring).unwrap();
            let rw = h
                .register(
                    std::fs::OpenOptions::new()
                        .read(true)
                        .write(true)
                        .open(&path)
                        .unwrap(),
                )
                .unwrap();
            let app = h
                .register(
                    std::fs::OpenOptions::new()
                        .append(true)
                        .open(&path)
                        .unwrap(),
                )
                .unwrap();
            let ro = h.register(std::fs::File::open(&path).unwrap()).unwrap();
            let data = |pool: BufferPool| async move {
                let mut b = pool.get_async().await;
                b.extend_from_slice(b"XXXX").unwrap();
                b
            };
            let cases: Vec<(&str, Op)> = vec![
                ("read_len 0", Op::read_len(rw, 0, pool.get_async().await, 0)),
                (
                    "read_len > cap",
                    Op::read_len(rw, 0, pool.get_async().await, 4097),
                ),
                (
                    "read at u64::MAX",
                    Op::read(rw, u64::MAX, pool.get_async().await),
                ),
                (
                    "read past i64::MAX",
                    Op::read(rw, i64::MAX as u64, pool.get_async().await),
                ),
                (
                    "write at u64::MAX",
                    Op::write(rw, u64::MAX, data(pool.clone()).await),
                ),
                (
                    "write past i64::MAX",
                    Op::write(rw, i64::MAX as u64 - 1, data(pool.clone()).await),
                ),
                (
                    "positional write O_APPEND",
                    Op::write(app, 0, data(pool.clone()).await),
                ),
                (
                    "write read-only",
                    Op::write(ro, 0, data(pool.clone()).await),
                ),
                ("write empty", Op::write(rw, 0, pool.get_async().await)),
                (
                    "timeout with deadline",
                    Op::timeout(Duration::from_secs(1)).deadline(Duration::from_secs(1)),
                ),
                ("read_append full", {
                    let mut b = pool.get_async().await;
                    b.extend_from_slice(&[1u8; 4096]).unwrap();
                    Op::read_append(rw, 0, b, 1)
                }),
                ("readv empty", Op::readv(rw, 0, vec![])),
            ];
            for (name, op) in cases {
                let c = tokio::time::timeout(Duration::from_secs(5), h.submit_future(op))
                    .await
                    .unwrap_or_else(|_| panic!("{name}: hangs"));
                eprintln!("{name}: {:?}", c.result());
                assert!(c.error().is_some(), "{name}: accepted: {c:?}");
                assert!(
                    !matches!(kind(&c), Some(ErrorKind::Os(_))),
                    "{name}: reached the kernel: {c:?}"
                );
                drop(c);
                assert_eq!(pool.stats().in_flight, 0, "{name}");
            }
            h.shutdown();
            driver.await.unwrap().unwrap();
        });
        assert_eq!(std::fs::read(&path).unwrap(), b"original");
        assert_full(&pool);
    })
}

/// Work submitted on the ring itself before it goes to the task (a ticket, to_ring,
/// then): the driver completes it, and the ring handed back still holds the results.
#[test]
fn ring_submissions_before_spawn_survive_the_task() {
    watchdog(30, || {
        let rt = ct();
        let pool = pool(4, 4096);
        rt.block_on(async {
            let mut ring = Ring::new().unwrap();
            ring.register_pool(&pool);
            let t = ring.register(file_with(b"pre")).unwrap();
            let ticket = ring
                .submit(Op::read(t, 0, pool.try_get().unwrap()))
                .ticket();
            ring.submit(Op::nop().tag(77)).to_ring();
            let (tx, rx) = std::sync::mpsc::channel();
            ring.submit(Op::nop().tag(5))
                .then(move |c| tx.send(c.tag()).unwrap());
            let (h, driver) = iocomplete::tokio::spawn(ring).unwrap();
            let c = h
                .submit_future(Op::read(t, 0, pool.get_async().await))
                .await;
            assert_eq!(c.into_result().unwrap().data(), b"pre");
            h.shutdown();
            let mut ring = tokio::time::timeout(Duration::from_secs(5), driver)
                .await
                .expect("hang")
                .unwrap()
                .unwrap();
            assert_eq!(rx.try_recv().unwrap(), 5);
            assert_eq!(
                ring.pop_completion()
                    .expect("to_ring completion lost")
                    .tag(),
                77
            );
            let c = ring.wait(ticket).expect("ticket lost");
            assert_eq!(c.into_result().unwrap().data(), b"pre");
        });
        assert_full(&pool);
    })
}

/// A local reader's on_failed panics (a socket reset mid-read).
#[test]
fn local_reader_on_failed_panics() {
    watchdog(30, || {
        use std::net::{TcpListener, TcpStream};
        let pool = pool(8, 4096);
        let mut ring = Ring::new().unwrap();
        ring.register_pool(&pool);
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (s, _) = l.accept().unwrap();
        let t = ring.register(c).unwrap();
        let killer = std::thread::spawn(move || {
            (&s).write_all(&[1u8; 10_000]).unwrap();
            std::thread::sleep(Duration::from_millis(50));
            // RST: linger 0 then close
            let lg = libc::linger {
                l_onoff: 1,
                l_linger: 0,
            };
            // SAFETY: a valid linger struct and its size.
            unsafe {
                libc::setsockopt(
                    s.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_LINGER,
                    (&lg as *const libc::linger).cast(),
                    std::mem::size_of::<libc::linger>() as u32,
                );
            }
            drop(s);
        });
        let mut got = 0usize;
        let mut failed = 0;
        let r = std::panic::catch_unwind(AssertUnwindSafe(|| {
            let mut reader = ContinuousReader::local_builder(t, &pool)
                .on_read(|b, _| got += b.len())
                .on_failed(|e| {
                    failed += 1;
                    panic!("on_failed panics on {e:?}")
                })
                .build(&mut ring)
                .unwrap();
            reader.run(&mut ring)
        }));
        killer.join().unwrap();
        eprintln!("got {got}, failed {failed}, result is_err={}", r.is_err());
        ring.run_until_idle().unwrap();
        assert_eq!(ring.in_flight(), 0);
        drop(ring);
        assert_full(&pool);
    })
}

// ---------------------------------------------------------------- races with the end

/// Submissions by every route from several threads race `shutdown_now`: each completes
/// exactly once (routine runs, queue entries, futures) and every slot comes back.
#[test]
fn every_route_races_shutdown_now() {
    watchdog(60, || {
        for round in 0..20 {
            let rt = mt(2);
            let pool = pool(64, 4096);
            let (h, driver) = rt.block_on(async {
                let mut ring = Ring::new().unwrap();
                ring.register_pool(&pool);
                iocomplete::tokio::spawn(ring).unwrap()
            });
            let t = h.register(file_with(&[3u8; 4096])).unwrap();
            let submitted = Arc::new(AtomicUsize::new(0));
            let completed = Arc::new(AtomicUsize::new(0));
            let q = Arc::new(CompletionQueue::new(16));
            let mut ths = Vec::new();
            for i in 0..4 {
                let (h, pool, submitted, completed, q) = (
                    h.clone(),
                    pool.clone(),
                    submitted.clone(),
                    completed.clone(),
                    q.clone(),
                );
                ths.push(std::thread::spawn(move || {
                    let mut futs = Vec::new();
                    for j in 0..200 {
                        let Ok(buf) = pool.get_timeout(Duration::from_millis(100)) else {
                            break;
                        };
                        let op = Op::read(t, 0, buf);
                        submitted.fetch_add(1, Ordering::SeqCst);
                        match (i + j) % 4 {
                            0 => {
                                let c = completed.clone();
                                h.submit_then(op, move |_| {
                                    c.fetch_add(1, Ordering::SeqCst);
                                })
                            }
                            1 => h.submit_to(op, &q),
                            2 => futs.push(h.submit_future(op)),
                            _ => {
                                h.detach(op);
                                completed.fetch_add(1, Ordering::SeqCst);
                            }
                        }
                    }
                    for f in futs {
                        block_on_for(f, Duration::from_secs(15)).expect("future hangs");
                        completed.fetch_add(1, Ordering::SeqCst);
                    }
                }));
            }
            // drain the queue concurrently
            let drainer = {
                let (q, completed) = (q.clone(), completed.clone());
                let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
                let s2 = stop.clone();
                (
                    std::thread::spawn(move || loop {
                        if let Some(_c) = q.pop_timeout(Duration::from_millis(10)) {
                            completed.fetch_add(1, Ordering::SeqCst);
                        } else if s2.load(Ordering::SeqCst) && q.is_empty() {
                            break;
                        }
                    }),
                    stop,
                )
            };
            std::thread::sleep(Duration::from_micros(200 * (round % 5) as u64));
            h.shutdown_now();
            let ring = rt
                .block_on(async { tokio::time::timeout(Duration::from_secs(10), driver).await })
                .expect("driver hangs after shutdown_now")
                .unwrap()
                .unwrap();
            for th in ths {
                th.join().unwrap();
            }
            // handle submissions after shutdown_now completed at once; the ring is idle
            assert_eq!(ring.in_flight(), 0);
            drop(ring);
            std::thread::sleep(Duration::from_millis(50));
            drainer.1.store(true, Ordering::SeqCst);
            drainer.0.join().unwrap();
            assert_eq!(
                completed.load(Ordering::SeqCst),
                submitted.load(Ordering::SeqCst),
                "round {round}: completions != submissions"
            );
            assert_full(&pool);
            drop(rt);
        }
    })
}

/// Registrations racing the ring's drop: every descriptor handed to `register` is
/// either owned by the ring (closed with it) or closed on RingClosed: none leaks.
#[test]
fn registrations_racing_ring_drop_leak_no_descriptor() {
    watchdog(60, || {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("marker-attack13");
        std::fs::write(&marker, b"m").unwrap();
        let count = |p: &std::path::Path| {
            std::fs::read_dir("/proc/self/fd")
                .unwrap()
                .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
                .filter(|l| l == p)
                .count()
        };
        let src = std::fs::File::open(&marker).unwrap();
        for _ in 0..10 {
            let rt = mt(2);
            let h =
                rt.block_on(async { iocomplete::tokio::spawn(Ring::new().unwrap()).unwrap().0 });
            let mut ths = Vec::new();
            for _ in 0..3 {
                let (h, src) = (h.clone(), src.try_clone().unwrap());
                ths.push(std::thread::spawn(move || {
                    for i in 0..2000 {
                        match h.register(src.try_clone().unwrap()) {
                            Ok(t) => {
                                if i % 2 == 0 {
                                    let _ = h.close(t);
                                }
                            }
                            Err(e) => {
                                assert_eq!(e.kind(), ErrorKind::RingClosed);
                            }
                        }
                    }
                }));
            }
            std::thread::sleep(Duration::from_millis(5));
            drop(rt);
            for th in ths {
                th.join().unwrap();
            }
        }
        std::thread::sleep(Duration::from_millis(100));
        let left = count(&std::fs::canonicalize(&marker).unwrap());
        assert_eq!(
            left, 1,
            "descriptors leaked: {} still open (1 is ours)",
            left
        );
        drop(src);
    })
}

/// A buffer handed to an async waiter that is then dropped unpolled goes on to a
/// blocking get() waiting behind it.
#[test]
fn handoff_from_dropped_future_to_blocking_get() {
    watchdog(30, || {
        let pool = pool(1, 4096);
        let held = pool.try_get().unwrap();
        let mut fut = pool.get_async();
        assert!(poll_once(&mut fut).is_pending()); // first in line
        let p2 = pool.clone();
        let blocking = std::thread::spawn(move || p2.get_timeout(Duration::from_secs(10)));
        std::thread::sleep(Duration::from_millis(100)); // let it register behind
        drop(held); // handed to `fut`
        drop(fut); // unpolled: to the next in line
        let got = blocking
            .join()
            .unwrap()
            .expect("the blocking get behind a dropped future starved");
        drop(got);
        assert_full(&pool);
    })
}

/// The same without tokio: a single-issuer ring driven on thread A, dropped on thread B
/// with a read of an idle pipe in flight: `Abandoned` once, at once, slot held back.
#[test]
fn single_issuer_ring_dropped_on_another_thread_no_tokio_abandons_at_once() {
    if common::needs_uring(&Ring::new().unwrap(), "single-issuer rings").is_none() {
        return;
    }
    watchdog(30, || {
        let pool = pool(2, 4096);
        let q = Arc::new(CompletionQueue::new(4));
        let (ring, _w) = {
            let (pool, q) = (pool.clone(), q.clone());
            std::thread::spawn(move || {
                let mut ring = Ring::builder().single_issuer(true).build().unwrap();
                ring.register_pool(&pool);
                let (r, w) = pipe();
                let t = ring.register(r).unwrap();
                ring.submit(Op::read(t, 0, pool.try_get().unwrap()))
                    .to_queue(&q);
                ring.poll().unwrap(); // enters the kernel: this thread is the issuer
                (ring, w)
            })
            .join()
            .unwrap()
        };
        let t0 = Instant::now();
        drop(ring);
        let c = q
            .pop_timeout(Duration::from_secs(15))
            .expect("completion lost");
        assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
        assert_eq!(kind(&c), Some(ErrorKind::Abandoned), "{:?}", c.result());
        assert!(q.pop().is_none(), "completed twice");
        drop(c);
        let st = pool.stats();
        assert_eq!(
            (st.free, st.total),
            (1, 2),
            "exactly the abandoned slot is held back"
        );
    })
}
