//! A `ContinuousReader` in steady state performs zero heap allocations per read: the
//! middle of a long run, file (8 reads in flight, ordered) and pipe (multishot, or
//! single-shot reads), with shared callbacks and with local ones.

use std::fs::File;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use iocomplete::{ContinuousReader, Driver, FinishReason, PoolBuf, Restart, StreamReads};

use crate::common::{self, alloc::thread_allocations};

/// The handler reads the driving thread's allocation count at delivery `from` and at
/// delivery `to`.
struct Window {
    n: AtomicU64,
    from: u64,
    to: u64,
    bytes: AtomicU64,
    /// The count at `from`, and at `to`.
    at_from: AtomicU64,
    at_to: AtomicU64,
}

impl Window {
    /// Allocations between delivery `from` and delivery `to`.
    fn allocations(&self) -> u64 {
        self.at_to.load(Ordering::SeqCst) - self.at_from.load(Ordering::SeqCst)
    }
}

fn on_read(w: &Window, buf: PoolBuf, _off: u64) {
    // Check something about every buffer without allocating: it is not empty and its
    // header room is intact.
    assert!(!buf.is_empty() && buf.header().len() == 16);
    w.bytes.fetch_add(buf.len() as u64, Ordering::Relaxed);
    let n = w.n.fetch_add(1, Ordering::Relaxed) + 1;
    if n == w.from {
        w.at_from.store(thread_allocations(), Ordering::SeqCst);
    } else if n == w.to {
        w.at_to.store(thread_allocations(), Ordering::SeqCst);
    }
}

fn window(from: u64, to: u64) -> Arc<Window> {
    Arc::new(Window {
        n: AtomicU64::new(0),
        from,
        to,
        bytes: AtomicU64::new(0),
        at_from: AtomicU64::new(0),
        at_to: AtomicU64::new(0),
    })
}

#[test]
fn steady_state_reader_does_not_allocate() {
    // File: 4000 reads of 4 KiB, 8 in flight, ordered; count deliveries 500..3500.
    let (_dir, path) = common::verify::disk_file(4000 * 4096, 1);
    let pool = common::pool_hdr(24, 4096, 16);
    let (mut ring, t) = common::ring_with(&pool, File::open(&path).unwrap());
    let w = window(500, 3500);
    let w2 = w.clone();
    let mut reader = ContinuousReader::builder(t, &pool)
        .pending_reads(8)
        .ordered(true)
        .on_read(move |buf, off| on_read(&w2, buf, off))
        .on_failed(|_| Restart::No)
        .build(&mut ring)
        .unwrap();
    let report = reader.run(&mut ring).unwrap();
    assert_eq!(report.reason, FinishReason::Eof);
    assert_eq!(w.bytes.load(Ordering::SeqCst), 4000 * 4096);
    let n = w.allocations();
    assert_eq!(n, 0, "{n} allocations in 3000 file reads");
    ring.close(t).unwrap();
    common::check_teardown(&ring, &[&pool]);

    // Pipe: 2000 writes of 1000 bytes (at least 489 deliveries); count deliveries 100..400.
    for mode in [StreamReads::Auto, StreamReads::SingleShot] {
        let (rx, tx) = common::fd::pipe();
        let t = ring.register(rx).unwrap();
        let writer = std::thread::spawn(move || {
            let mut f = File::from(tx);
            let block = [7u8; 1000];
            for _ in 0..2000 {
                std::io::Write::write_all(&mut f, &block).unwrap();
            }
        });
        let w = window(100, 400);
        let w2 = w.clone();
        let mut reader = ContinuousReader::builder(t, &pool)
            .stream_reads(mode)
            .on_read(move |buf, off| on_read(&w2, buf, off))
            .on_failed(|_| Restart::No)
            .build(&mut ring)
            .unwrap();
        let report = reader.run(&mut ring).unwrap();
        writer.join().unwrap();
        assert_eq!(report.reason, FinishReason::Eof);
        assert_eq!(w.bytes.load(Ordering::SeqCst), 2_000_000);
        // The counting window was reached (reads coalesce at most 4 writes).
        assert!(w.n.load(Ordering::SeqCst) >= 400, "{:?}", w.n);
        let n = w.allocations();
        assert_eq!(n, 0, "{n} allocations in 300 pipe reads ({mode:?})");
        ring.close(t).unwrap();
        common::check_teardown(&ring, &[&pool]);
    }
}

/// The same with local callbacks (`ContinuousReader::local_builder`): an `FnMut` borrowing
/// the window and a counter of the caller's.
#[test]
fn steady_state_local_reader_does_not_allocate() {
    let (_dir, path) = common::verify::disk_file(4000 * 4096, 2);
    let pool = common::pool_hdr(24, 4096, 16);
    let (mut ring, t) = common::ring_with(&pool, File::open(&path).unwrap());
    let w = window(500, 3500);
    let mut calls = 0u64;
    let mut reader = ContinuousReader::local_builder(t, &pool)
        .pending_reads(8)
        .ordered(true)
        .on_read(|buf, off| {
            calls += 1;
            on_read(&w, buf, off);
        })
        .on_failed(|_| Restart::No)
        .build(&mut ring)
        .unwrap();
    let report = reader.run(&mut ring).unwrap();
    drop(reader);
    assert_eq!(report.reason, FinishReason::Eof);
    assert_eq!(calls, 4000);
    assert_eq!(w.bytes.load(Ordering::SeqCst), 4000 * 4096);
    let n = w.allocations();
    assert_eq!(n, 0, "{n} allocations in 3000 file reads (local callbacks)");
    ring.close(t).unwrap();
    common::check_teardown(&ring, &[&pool]);
}
