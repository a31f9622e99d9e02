//! Found by the outside attack on the `Driver` trait (issue 12): every driver refuses a
//! ring it was not built for — `process` with `WrongRing` and nothing submitted there,
//! `cancel` with `false` and nothing changed — before its first `process` and mid-flight,
//! with and without a deadline; and a FIFO hook that panics loses no completion. Each test
//! is bounded by a watchdog that fails the run instead of hanging.

mod common;

use common::bounds::watchdog;

use std::fs::File;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::fd::{pipe, set_nonblocking};
use common::{check_teardown, pool};
use iocomplete::dma::{DmaConfig, DmaDriver, SgList};
use iocomplete::split::{Job, SplitConfig, SplitDriver};
use iocomplete::{BufferPool, Direction, Driver, ErrorKind, FifoReceiver, Result, Ring, Target};

/// A file of `len` bytes (`i % 251`), registered with `ring`.
fn file(ring: &mut Ring, len: usize) -> Target {
    let mut f = tempfile::tempfile().unwrap();
    let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
    f.write_all(&data).unwrap();
    ring.register(f).unwrap()
}

/// Step `d` on `ring` until its output is there (at most `within`).
fn run_bounded<D: Driver>(d: &mut D, ring: &mut Ring, within: Duration) -> Option<D::Output> {
    let t0 = Instant::now();
    while t0.elapsed() < within {
        if let Some(o) = d.step(ring, Some(Duration::from_millis(20))).unwrap() {
            return Some(o);
        }
    }
    None
}

/// `process` on `other` is refused with `WrongRing` and submits nothing there.
fn refused<T: std::fmt::Debug>(r: Result<Option<T>>, other: &Ring) {
    let kind = r.as_ref().map_err(|e| e.kind());
    assert!(
        matches!(kind, Err(ErrorKind::WrongRing { .. })),
        "process(other ring) -> {r:?}"
    );
    assert_eq!(other.stats().submitted, 0, "submitted on the other ring");
}

fn split(ring: &mut Ring, p: &BufferPool, len: u64, config: SplitConfig) -> SplitDriver {
    let src = file(ring, 64 * 1024);
    let job = Job::Read {
        src,
        offset: 0,
        len,
    };
    SplitDriver::new(ring, p, job, config).unwrap()
}

fn dma(ring: &mut Ring, p: &BufferPool, len: u64, deadline: Duration) -> DmaDriver {
    let t = file(ring, 256 * 1024);
    let mut sg = SgList::new();
    sg.push_extent(p, 0, len).unwrap();
    DmaDriver::builder(t, sg, Direction::Read)
        .config(DmaConfig::new().max_transfer(4096).max_in_flight(2))
        .deadline(deadline)
        .build(ring)
        .unwrap()
}

/// Before the first `process`, and mid-flight (children in the kernel, some reaped), with
/// no deadline and with one: a driver handed another ring once still completes on its own,
/// with every byte, and leaves nothing behind (before the fix it submitted there, consumed
/// the request with `StaleTarget`, or wedged until its one-hour deadline).
#[test]
fn split_process_on_another_ring_is_refused() {
    let _w = watchdog("split_process_on_another_ring_is_refused", 30);
    for deadline in [None, Some(Duration::from_secs(3600))] {
        for started in [false, true] {
            let mut ring = Ring::new().unwrap();
            let other = &mut Ring::new().unwrap();
            let p = pool(8, 4096);
            ring.register_pool(&p);
            let config = deadline.map_or(SplitConfig::new(), |d| SplitConfig::new().deadline(d));
            let mut d = split(&mut ring, &p, 60_000, config);
            if started {
                d.process(&mut ring).unwrap();
                ring.run_once(Some(Duration::from_millis(50))).unwrap();
            }
            refused(d.process(other), other);
            let out = run_bounded(&mut d, &mut ring, Duration::from_secs(5))
                .unwrap_or_else(|| panic!("never completed ({deadline:?}, {started})"));
            assert_eq!((out.status, out.bytes), (Ok(()), 60_000));
            drop(d);
            check_teardown(&ring, &[&p]);
        }
    }
}

/// The same for a DMA transaction (before the fix its transfers and its deadline timer
/// went to the other ring).
#[test]
fn dma_process_on_another_ring_is_refused() {
    let _w = watchdog("dma_process_on_another_ring_is_refused", 30);
    for started in [false, true] {
        let mut ring = Ring::new().unwrap();
        let other = &mut Ring::new().unwrap();
        let p = pool(16, 4096);
        ring.register_pool(&p);
        let mut d = dma(&mut ring, &p, 60_000, Duration::from_secs(3600));
        if started {
            d.process(&mut ring).unwrap();
            ring.run_once(Some(Duration::from_millis(50))).unwrap();
        }
        refused(d.process(other), other);
        let (out, sg) = run_bounded(&mut d, &mut ring, Duration::from_secs(5))
            .unwrap_or_else(|| panic!("never completed (started: {started})"));
        assert_eq!((out.status, out.bytes), (Ok(()), 60_000));
        drop((d, sg));
        check_teardown(&ring, &[&p]);
    }
}

/// `cancel(&mut other)` returns false and changes nothing, as the FIFO receiver and the
/// reader already did (before the fix split and dma cancelled the request).
#[test]
fn cancel_on_another_ring_does_nothing() {
    let _w = watchdog("cancel_on_another_ring_does_nothing", 30);
    for started in [false, true] {
        let mut ring = Ring::new().unwrap();
        let other = &mut Ring::new().unwrap();
        let p = pool(16, 4096);
        ring.register_pool(&p);
        let mut s = split(&mut ring, &p, 50_000, SplitConfig::new());
        let mut d = dma(&mut ring, &p, 20_000, Duration::MAX);
        if started {
            s.process(&mut ring).unwrap();
            d.process(&mut ring).unwrap();
        }
        assert!(!s.cancel(other) && !d.cancel(other), "started: {started}");
        let out = run_bounded(&mut s, &mut ring, Duration::from_secs(5)).expect("split hung");
        assert_eq!((out.status, out.bytes), (Ok(()), 50_000));
        let (out, sg) = run_bounded(&mut d, &mut ring, Duration::from_secs(5)).expect("dma hung");
        assert_eq!((out.status, out.bytes), (Ok(()), 20_000));
        assert_eq!(other.stats().submitted, 0);
        drop((s, d, sg));
        check_teardown(&ring, &[&p]);
    }
}

/// An `on_end` hook that panics: the panic reaches the caller, and the transaction's one
/// completion is still handed out by the next `process` (before the fix the receiver went
/// idle with the completion lost: it completed zero times).
#[test]
fn fifo_on_end_panic_loses_no_completion() {
    let _w = watchdog("fifo_on_end_panic_loses_no_completion", 20);
    let mut ring = Ring::new().unwrap();
    let p = pool(4, 4096);
    let (rx, tx) = pipe();
    set_nonblocking(rx.as_raw_fd());
    let mut tx = File::from(tx);
    let src = ring.register(rx).unwrap();
    let ends = Arc::new(AtomicU32::new(0));
    let seen = ends.clone();
    let mut fifo = FifoReceiver::new(&ring, src).unwrap().on_end(move |_, _| {
        if seen.fetch_add(1, Ordering::SeqCst) == 0 {
            panic!("on_end panics")
        }
    });
    tx.write_all(&[3; 10]).unwrap();
    fifo.receive(&mut ring, p.try_get().unwrap(), 10).unwrap();
    let r = catch_unwind(AssertUnwindSafe(|| {
        run_bounded(&mut fifo, &mut ring, Duration::from_secs(5))
    }));
    assert!(r.is_err(), "the hook's panic reaches the caller");
    let got = fifo
        .process(&mut ring)
        .unwrap()
        .expect("the completion is still there");
    assert_eq!(
        (got.bytes(), got.into_result().unwrap().data()),
        (10, &[3; 10][..])
    );
    assert!(
        fifo.is_idle() && fifo.process(&mut ring).unwrap().is_none(),
        "once"
    );
    assert_eq!(ends.load(Ordering::SeqCst), 1);
    drop(fifo);
    check_teardown(&ring, &[&p]);
}
