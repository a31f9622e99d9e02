//! The drivers over the faulty FUSE device (`tests/common/fuse.rs`): `ContinuousReader`
//! restarting (or not) after an `EIO` at a chosen offset, a `SplitDriver` copy hitting an
//! `EIO` or cancelled on a slow device, and a `DmaDriver` gather with one failing extent,
//! directly and through a loop device stacked on the FUSE file. Every test verifies the
//! bytes delivered, checks that each request completed exactly once, and checks the
//! teardown invariants (every operation completed once, every slot back in its pool).
//! Skipped, with the reason printed, where FUSE or loop devices are unavailable.

mod common;

use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::fuse::{FileSpec, FuseMount};
use common::{check_teardown, verify, LoopDev};
use iocomplete::dma::{DmaConfig, DmaDriver, SgList, TransferReport};
use iocomplete::split::{Job, Mode, SplitConfig, SplitDriver};
use iocomplete::{
    BufferPool, ContinuousReader, Driver, Error, ErrorKind, FinishReason, PoolBuf, Restart, Ring,
};

const BS: usize = 4096;
const CHUNK: u64 = 16 * 1024;

fn pool(slots: usize, len: usize) -> BufferPool {
    BufferPool::builder()
        .slots(slots)
        .slot_len(len)
        .build()
        .unwrap()
}

fn open(path: &Path, write: bool, direct: bool) -> File {
    let mut o = OpenOptions::new();
    o.read(true);
    if write {
        o.write(true).create(true);
    }
    if direct {
        o.custom_flags(libc::O_DIRECT);
    }
    o.open(path).unwrap()
}

/// Every byte of `[start, end)` covered exactly once by `spans` (and in order if
/// `ordered`).
fn check_spans(spans: &[(u64, usize)], start: u64, end: u64, ordered: bool) {
    if ordered {
        let mut at = start;
        for &(o, l) in spans {
            assert_eq!(o, at, "ordered delivery out of order");
            at += l as u64;
        }
    }
    let mut s = spans.to_vec();
    s.sort_unstable();
    let mut at = start;
    for (o, l) in s {
        assert_eq!(o, at, "gap or duplicate at {at}");
        at += l as u64;
    }
    assert_eq!(at, end, "bytes missing at the end");
}

/// What the reader's `on_read` saw, each buffer verified in place.
#[derive(Default)]
struct Seen {
    spans: Mutex<Vec<(u64, usize)>>,
    seed: u64,
}

fn on_read(seen: &Seen, buf: PoolBuf, off: u64) {
    assert!(!buf.is_empty());
    verify::check_range(buf.data(), BS, seen.seed, off).unwrap();
    seen.spans.lock().unwrap().push((off, buf.len()));
}

// ---- ContinuousReader ------------------------------------------------------------------

#[test]
fn reader_restarts_after_eio_and_delivers_every_byte_once() {
    for (ordered, pending) in [(false, 8), (true, 4)] {
        let spec = FileSpec::new(128 * BS as u64, BS, 41);
        let Some(fs) = FuseMount::new(spec) else {
            return;
        };
        fs.ctl().fail_block(37);
        fs.ctl()
            .delay(Duration::from_micros(0), Duration::from_micros(500));
        let mut ring = Ring::new().unwrap();
        let pool = pool(16, BS);
        ring.register_pool(&pool);
        let t = ring.register(open(&fs.path(), false, false)).unwrap();
        let ctl = fs.ctl().clone();
        let failures = Arc::new(AtomicUsize::new(0));
        let f2 = failures.clone();
        let seen = Arc::new(Seen {
            seed: spec.seed,
            ..Seen::default()
        });
        let s = seen.clone();
        let mut reader = ContinuousReader::builder(t, &pool)
            .pending_reads(pending)
            .ordered(ordered)
            .range(0, spec.size)
            .on_read(move |buf, off| on_read(&s, buf, off))
            .on_failed(move |e| {
                assert_eq!(e.kind(), ErrorKind::Os(libc::EIO));
                f2.fetch_add(1, Ordering::SeqCst);
                // The device heals: the restart re-reads from where delivery stopped.
                ctl.clear();
                Restart::Yes
            })
            .build(&mut ring)
            .unwrap();
        let report = reader.run(&mut ring).unwrap();
        assert_eq!(report.reason, FinishReason::EndOfRange, "ordered {ordered}");
        assert_eq!(
            failures.load(Ordering::SeqCst),
            1,
            "on_failed once per failure"
        );
        assert_eq!((report.failures, report.restarts), (1, 1));
        assert_eq!(fs.ctl().stats().eio_injected, 1);
        eprintln!("reader restart (ordered {ordered}): {report:?}");
        let spans = seen.spans.lock().unwrap().clone();
        check_spans(&spans, 0, spec.size, ordered);
        assert_eq!(report.bytes, spec.size);
        ring.close(t).unwrap();
        check_teardown(&ring, &[&pool]);
    }
}

#[test]
fn reader_without_restart_ends_once_with_the_error() {
    let spec = FileSpec::new(96 * BS as u64, BS, 42);
    let Some(fs) = FuseMount::new(spec) else {
        return;
    };
    fs.ctl().fail_block(50);
    fs.ctl()
        .delay(Duration::from_micros(0), Duration::from_micros(500));
    let mut ring = Ring::new().unwrap();
    let pool = pool(16, BS);
    ring.register_pool(&pool);
    let t = ring.register(open(&fs.path(), false, false)).unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let c2 = calls.clone();
    let seen = Arc::new(Seen {
        seed: spec.seed,
        ..Seen::default()
    });
    let s = seen.clone();
    let mut reader = ContinuousReader::builder(t, &pool)
        .pending_reads(6)
        .ordered(true)
        .on_read(move |buf, off| on_read(&s, buf, off))
        .on_failed(move |e| {
            assert_eq!(e.kind(), ErrorKind::Os(libc::EIO));
            c2.fetch_add(1, Ordering::SeqCst);
            Restart::No
        })
        .build(&mut ring)
        .unwrap();
    let report = reader.run(&mut ring).unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(report.failures, 1);
    assert_eq!(report.restarts, 0);
    assert_eq!(
        report.reason,
        FinishReason::Failed(Error::from_errno(libc::EIO))
    );
    // Ordered: exactly the bytes before the bad block, in order, once.
    let spans = seen.spans.lock().unwrap().clone();
    check_spans(&spans, 0, 50 * BS as u64, true);
    ring.close(t).unwrap();
    check_teardown(&ring, &[&pool]);
}

// ---- SplitDriver ------------------------------------------------------------------------

/// Progress reports: never backwards, never past the length.
#[derive(Default)]
struct Progress {
    last: u64,
    calls: usize,
}

impl Progress {
    /// `drv`, reporting its progress to a new `Progress`.
    fn hook(drv: SplitDriver) -> (SplitDriver, Arc<Mutex<Progress>>) {
        let p = Arc::new(Mutex::new(Progress::default()));
        let q = Arc::clone(&p);
        let drv = drv.on_progress(move |done, len| {
            let mut p = q.lock().unwrap();
            assert!(done <= len && done >= p.last, "progress {done}/{len}");
            p.last = done;
            p.calls += 1;
        });
        (drv, p)
    }
}

/// Drive to completion; check it completed once, with no child and no CQE left.
fn run_split(drv: &mut SplitDriver, ring: &mut Ring) -> iocomplete::split::SplitOutcome {
    loop {
        if let Some(c) = drv.step(ring, Some(Duration::from_millis(100))).unwrap() {
            assert_eq!(drv.in_flight(), 0, "completed with children in flight");
            assert_eq!(ring.in_flight(), 0, "completed before its last CQE");
            assert!(drv.process(ring).unwrap().is_none(), "completed twice");
            assert!(drv.is_complete());
            return c;
        }
    }
}

fn check_prefix(path: &Path, len: u64, seed: u64) {
    let data = std::fs::read(path).unwrap();
    assert!(data.len() as u64 >= len, "{} bytes written", data.len());
    verify::check_range(&data[..len as usize], BS, seed, 0).unwrap();
}

#[test]
fn split_copy_with_one_eio_completes_once_after_every_child() {
    let spec = FileSpec::new(256 * BS as u64, BS, 43);
    let Some(fs) = FuseMount::new(spec) else {
        return;
    };
    let bad = 100u64;
    fs.ctl().fail_block(bad);
    fs.ctl()
        .delay(Duration::from_micros(0), Duration::from_millis(1));
    let dir = common::disk_dir();
    let dst = dir.path().join("dst");
    let mut ring = Ring::new().unwrap();
    let pool = pool(4, CHUNK as usize);
    ring.register_pool(&pool);
    let s = ring.register(open(&fs.path(), false, false)).unwrap();
    let d = ring.register(open(&dst, true, false)).unwrap();
    let job = Job::Copy {
        src: s,
        src_offset: 0,
        dst: d,
        dst_offset: 0,
        len: spec.size,
    };
    let config = SplitConfig::new()
        .mode(Mode::Parallel { max_in_flight: 4 })
        .max_chunk(CHUNK);
    let drv = SplitDriver::new(&mut ring, &pool, job, config).unwrap();
    let (mut drv, h) = Progress::hook(drv);
    let done = run_split(&mut drv, &mut ring);
    let h = h.lock().unwrap();
    assert_eq!(done.status, Err(Error::from_errno(libc::EIO)), "{done:?}");
    // The prefix done without a gap stops at the failed chunk; the children in flight
    // came back first and their bytes count as transferred.
    let bad_chunk = bad * BS as u64 / CHUNK * CHUNK;
    assert!(done.bytes <= bad_chunk, "{done:?}");
    assert!(done.bytes <= done.transferred, "{done:?}");
    assert!(done.transferred < spec.size, "{done:?}");
    assert!(
        h.calls > 0 && h.last <= done.transferred,
        "progress {}",
        h.last
    );
    assert_eq!(fs.ctl().stats().eio_injected, 1);
    check_prefix(&dst, done.bytes, spec.seed);
    ring.close(s).unwrap();
    ring.close(d).unwrap();
    check_teardown(&ring, &[&pool]);
}

#[test]
fn split_copy_cancelled_mid_flight_on_a_slow_device_completes_once() {
    let spec = FileSpec::new(256 * BS as u64, BS, 44);
    let Some(fs) = FuseMount::new(spec) else {
        return;
    };
    fs.ctl()
        .delay(Duration::from_millis(1), Duration::from_millis(4));
    let dir = common::disk_dir();
    let dst = dir.path().join("dst");
    let mut ring = Ring::new().unwrap();
    let pool = pool(4, CHUNK as usize);
    ring.register_pool(&pool);
    let s = ring.register(open(&fs.path(), false, false)).unwrap();
    let d = ring.register(open(&dst, true, false)).unwrap();
    let job = Job::Copy {
        src: s,
        src_offset: 0,
        dst: d,
        dst_offset: 0,
        len: spec.size,
    };
    let config = SplitConfig::new()
        .mode(Mode::Parallel { max_in_flight: 4 })
        .max_chunk(CHUNK);
    let drv = SplitDriver::new(&mut ring, &pool, job, config).unwrap();
    let (mut drv, _h) = Progress::hook(drv);
    while drv.bytes_transferred() < 4 * CHUNK {
        assert!(drv
            .step(&mut ring, Some(Duration::from_millis(100)))
            .unwrap()
            .is_none());
    }
    assert!(drv.in_flight() > 0, "nothing in flight to cancel");
    assert!(drv.cancel(&mut ring));
    assert!(!drv.cancel(&mut ring), "cancelled twice");
    let done = run_split(&mut drv, &mut ring);
    assert!(done.status.unwrap_err().is_cancelled(), "{done:?}");
    assert!(
        done.bytes >= 4 * CHUNK && done.bytes < spec.size,
        "{done:?}"
    );
    check_prefix(&dst, done.bytes, spec.seed);
    ring.close(s).unwrap();
    ring.close(d).unwrap();
    check_teardown(&ring, &[&pool]);
}

// ---- DmaDriver ---------------------------------------------------------------------------

/// Records every transfer report (through [`hook`](Reports::hook), the driver's callback);
/// the final one (`last`) comes exactly once, last.
#[derive(Default)]
struct Reports(Arc<Mutex<Vec<TransferReport>>>);

impl Reports {
    fn hook(&self) -> impl FnMut(&TransferReport) + Send + 'static {
        let all = self.0.clone();
        move |r| {
            let mut all = all.lock().unwrap();
            assert!(
                !all.iter().any(|x| x.last),
                "a report after the final transfer: {r:?}"
            );
            all.push(*r);
        }
    }

    fn all(&self) -> Vec<TransferReport> {
        self.0.lock().unwrap().clone()
    }
}

/// Gather `extents` (block index, blocks) of `t` with block `bad` failing; checks the
/// final report and completion exactly once with `EIO`, and verifies every byte that
/// arrived.
fn gather_with_a_bad_extent(
    ring: &mut Ring,
    pool: &BufferPool,
    t: iocomplete::Target,
    seed: u64,
    extents: &[(u64, u64)],
    config: DmaConfig,
) -> u64 {
    let mut sg = SgList::new();
    for &(b, n) in extents {
        sg.push_extent(pool, b * BS as u64, n * BS as u64).unwrap();
    }
    let reports = Reports::default();
    let mut drv = DmaDriver::builder(t, sg, iocomplete::Direction::Read)
        .config(config)
        .on_transfer(reports.hook())
        .build(ring)
        .unwrap();
    let (done, sg) = drv.run(ring).unwrap();
    assert_eq!(done.status, Err(Error::from_errno(libc::EIO)), "{done:?}");
    assert_eq!(reports.all().iter().filter(|r| r.last).count(), 1);
    assert!(
        reports.all().last().unwrap().last,
        "the final report is the last"
    );
    let eio = reports
        .all()
        .iter()
        .filter(|r| r.status == Err(Error::from_errno(libc::EIO)))
        .count();
    assert!(
        eio >= 1,
        "no transfer reported the EIO: {:?}",
        reports.all()
    );
    let reported: u64 = reports.all().iter().map(|r| r.bytes).sum();
    assert_eq!(done.bytes, reported);
    assert!(done.bytes < sg.total_len());
    // Every byte that arrived is the right one.
    let mut got = 0;
    for (seg, buf) in sg.iter() {
        assert!(buf.len() as u64 <= seg.len);
        verify::check_range(buf.data(), BS, seed, seg.device_offset).unwrap();
        got += buf.len() as u64;
    }
    assert_eq!(got, done.bytes, "bytes in the buffers vs reported");
    drop(sg);
    done.bytes
}

#[test]
fn dma_gather_with_one_failing_extent_reports_the_error_once() {
    let spec = FileSpec::new(256 * BS as u64, BS, 45);
    let Some(fs) = FuseMount::new(spec) else {
        return;
    };
    fs.ctl()
        .delay(Duration::from_micros(0), Duration::from_millis(1));
    // Extent 3 (blocks 120..124) holds the bad block.
    fs.ctl().fail_block(122);
    let mut ring = Ring::new().unwrap();
    let pool = pool(32, 2 * BS);
    ring.register_pool(&pool);
    let t = ring.register(open(&fs.path(), false, false)).unwrap();
    let extents = [(3, 3), (40, 2), (77, 5), (120, 4), (200, 3), (250, 6)];
    let config = DmaConfig::new()
        .max_transfer(2 * BS as u64)
        .max_in_flight(4);
    let bytes = gather_with_a_bad_extent(&mut ring, &pool, t, spec.seed, &extents, config);
    assert!(bytes > 0, "nothing arrived before the error");
    eprintln!("dma gather: {bytes} bytes verified, {:?}", fs.ctl().stats());
    assert!(fs.ctl().stats().eio_injected >= 1);
    ring.close(t).unwrap();
    check_teardown(&ring, &[&pool]);
}

#[test]
fn dma_gather_through_a_loop_device_on_the_faulty_file() {
    let spec = FileSpec::new(512 * BS as u64, BS, 46);
    let Some(fs) = FuseMount::new(spec) else {
        return;
    };
    let Some(dev) = LoopDev::attach(&fs.path()) else {
        return;
    };
    // Armed after losetup: partition probing must not trip it.
    fs.ctl().fail_block(300);
    let mut ring = Ring::new().unwrap();
    let pool = BufferPool::builder()
        .slots(16)
        .slot_len(4 * BS)
        .align(BS)
        .build()
        .unwrap();
    ring.register_pool(&pool);
    let t = ring
        .register(open(Path::new(&dev.path), false, true))
        .unwrap();
    // One transfer at a time: the block layer merges adjacent requests in flight, and a
    // merged request fails whole.
    let extents = [(10, 4), (64, 8), (150, 2), (298, 4), (400, 4)];
    let config = DmaConfig::new().max_transfer(4 * BS as u64);
    let bytes = gather_with_a_bad_extent(&mut ring, &pool, t, spec.seed, &extents, config);
    // In order, one at a time: everything before the bad extent arrived.
    assert_eq!(bytes, (4 + 8 + 2) * BS as u64);
    assert!(fs.ctl().stats().eio_injected >= 1);
    ring.close(t).unwrap();
    check_teardown(&ring, &[&pool]);
    drop(dev);
}
