//! The DMA driver against real files and loop block devices: gathers of 1 to 1000
//! segments with limits that force many transfers, scatter writes, a device error, a cancel
//! mid-flight and a deadline racing the transfer thousands of times — content verified
//! with per-block crc32c patterns that encode the offset, teardown invariants checked. The
//! `gather` example is tested in `tests/tools.rs`.

mod common;

use common::or_skip;

use std::fs::OpenOptions;
use std::time::Duration;

use common::drivers::{deadline_race, drop_mid_flight, Reports};
use common::{check_teardown, close_and_check, open, pool, ring_with, verify, LoopDev};
use iocomplete::dma::{DmaDriverBuilder, Rejected};
use iocomplete::ring::{BufPart, MAX_TRANSFER};
use iocomplete::{
    BufferPool, Direction, DmaConfig, DmaDriver, DmaOutcome, Driver, Error, ErrorKind, FdKind, Op,
    Ring, SgList, Target,
};

const BS: usize = 4096;

/// What a driver hands out: the outcome and the list.
type Output = (DmaOutcome, SgList);

/// How a test runs a transaction: its direction, limits and deadline.
#[derive(Debug, Clone, Copy)]
struct Tx(Direction, DmaConfig, Option<Duration>);

impl Tx {
    fn read(config: DmaConfig) -> Tx {
        Tx(Direction::Read, config, None)
    }

    fn write(config: DmaConfig) -> Tx {
        Tx(Direction::Write, config, None)
    }

    fn deadline(self, d: Option<Duration>) -> Tx {
        Tx(self.0, self.1, d)
    }

    /// Its builder on `sg` and `t` (no report hook).
    fn builder(self, t: Target, sg: SgList) -> DmaDriverBuilder {
        let b = DmaDriver::builder(t, sg, self.0).config(self.1);
        match self.2 {
            Some(d) => b.deadline(d),
            None => b,
        }
    }

    /// Start it on `sg` and `t`, recording each transfer's report in `reports`.
    fn start(
        self,
        ring: &mut Ring,
        t: Target,
        sg: SgList,
        reports: &Reports,
    ) -> Result<DmaDriver, Rejected> {
        self.builder(t, sg).on_transfer(reports.hook()).build(ring)
    }

    /// Run it on `sg` and `t` to its end, recording every report in `reports`.
    fn run(self, ring: &mut Ring, t: Target, sg: SgList, reports: &Reports) -> Output {
        let mut drv = self.start(ring, t, sg, reports).unwrap();
        drv.run(ring).unwrap()
    }

    /// Start it with no report hook; it must be refused: why.
    fn refused(self, ring: &mut Ring, t: Target, sg: SgList) -> Rejected {
        self.builder(t, sg).build(ring).map(|_| ()).unwrap_err()
    }
}

/// Check each buffer of a read list against the verify pattern at its device offset.
fn check_list(sg: &SgList, seed: u64) {
    for (seg, buf) in sg.iter() {
        assert_eq!(
            buf.len() as u64,
            seg.len,
            "segment at {}",
            seg.device_offset
        );
        verify::check_range(buf.data(), BS, seed, seg.device_offset).unwrap();
    }
}

#[test]
fn gathers_of_1_to_1000_segments_with_limits_forcing_many_transfers() {
    let dir = common::disk_dir();
    let size = 8u64 << 20;
    let path = dir.path().join("f");
    verify::make_file(&path, size, BS, 31);
    let pool = pool(1200, BS);
    let (mut ring, t) = ring_with(&pool, open(&path, false, false));
    let mut rng = common::rng(0x5EED);
    // (segments, max transfer, max segments, in flight, contiguous)
    let cases = [
        (1, MAX_TRANSFER, 1024, 1, false),
        (2, 4096, 1, 1, false),
        (10, 1000, 2, 3, false),
        (100, 8192, 3, 4, false),
        (1000, 6000, 7, 8, false),
        (1000, 64 * 1024, 16, 4, true),
        (1000, MAX_TRANSFER, 1024, 1, true),
    ];
    for (n, max_transfer, max_segments, inflight, contiguous) in cases {
        let mut sg = SgList::with_capacity(n);
        if contiguous {
            let base = rng.u64(..size - n as u64 * BS as u64 - 100);
            assert_eq!(
                sg.push_extent(&pool, base, n as u64 * BS as u64).unwrap(),
                n
            );
        } else {
            for _ in 0..n {
                let len = 1 + rng.u64(..BS as u64);
                let off = rng.u64(..size - len);
                assert_eq!(sg.push_extent(&pool, off, len).unwrap(), 1);
            }
        }
        let total = sg.total_len();
        let config = DmaConfig::new()
            .max_transfer(max_transfer)
            .max_segments(max_segments)
            .max_in_flight(inflight);
        let reports = Reports::default();
        let (done, sg) = Tx::read(config).run(&mut ring, t, sg, &reports);
        assert_eq!((done.status, done.bytes), (Ok(()), total), "case {n}");
        assert_eq!(reports.finals(), 1);
        assert!(
            reports.all().last().unwrap().last,
            "the final report is the last one"
        );
        assert_eq!(reports.bytes(), total);
        for r in &reports.all() {
            assert_eq!(r.status, Ok(()));
            assert!(r.transfer.len <= max_transfer);
            assert!(r.transfer.segment_count <= max_segments as usize);
        }
        let min_transfers = total
            .div_ceil(max_transfer)
            .max(n.div_ceil(max_segments as usize) as u64);
        assert!(
            reports.all().len() as u64 >= min_transfers,
            "case {n}: {} transfers",
            reports.all().len()
        );
        if contiguous && max_segments == 1024 {
            // One contiguous extent of 1000 buffers: one vectored transfer carries it.
            assert_eq!(reports.all().len(), 1);
        }
        check_list(&sg, 31);
        drop(sg);
    }
    check_teardown(&ring, &[&pool]);
}

#[test]
fn direct_gather_ends_at_an_unaligned_end_of_file() {
    let (_dir, path) = common::disk_path("f");
    let size = 5 * BS as u64 + 1808;
    verify::make_file(&path, size, BS, 39);
    let pool = pool(8, 2 * BS);
    let (mut ring, t) = ring_with(&pool, open(&path, false, true));
    let mut sg = SgList::new();
    sg.push_extent(&pool, 4 * BS as u64, 4 * BS as u64).unwrap(); // crosses the end
    sg.push_extent(&pool, 0, BS as u64).unwrap();
    let reports = Reports::default();
    let config = DmaConfig::new().max_in_flight(2);
    let (done, sg) = Tx::read(config).run(&mut ring, t, sg, &reports);
    assert_eq!(
        (done.status, done.bytes),
        (Ok(()), BS as u64 + 1808 + BS as u64)
    );
    assert_eq!(reports.finals(), 1);
    let lens: Vec<usize> = sg.bufs().iter().map(|b| b.len()).collect();
    // Two 8 KiB segments from 16 KiB: the first gets the 5904 bytes before the end.
    assert_eq!(lens, [BS + 1808, 0, BS]);
    for (seg, buf) in sg.iter() {
        verify::check_range(buf.data(), BS, 39, seg.device_offset).unwrap();
    }
    drop(sg);
    check_teardown(&ring, &[&pool]);
}

#[test]
fn direct_gather_from_a_block_device_with_split_segments_in_flight() {
    let size = 8u64 << 20;
    let dev = or_skip!(LoopDev::new(size, Some((BS, 32))));
    let pool = pool(64, 64 * 1024);
    let (mut ring, t) = ring_with(&pool, dev.open(false));
    let mut rng = common::rng(77);
    let mut sg = SgList::new();
    for _ in 0..16 {
        let blocks = 1 + rng.u64(..48);
        let off = rng.u64(..size / BS as u64 - blocks) * BS as u64;
        sg.push_extent(&pool, off, blocks * BS as u64).unwrap();
    }
    let total = sg.total_len();
    // 24 KiB transfers over 64 KiB buffers: most buffers are split across transfers, and
    // with 4 in flight two of them want the same buffer at once.
    let config = DmaConfig::new().max_transfer(24 * 1024).max_in_flight(4);
    let reports = Reports::default();
    let mut drv = Tx::read(config).start(&mut ring, t, sg, &reports).unwrap();
    let (done, sg) = finish(&mut drv, &mut ring, None);
    let stats = drv.stats();
    drop(drv);
    assert_eq!((done.status, done.bytes), (Ok(()), total));
    assert!(
        stats.deferred > 0,
        "no transfer waited for a shared buffer: {stats:?}"
    );
    assert!(stats.max_in_flight > 1, "{stats:?}");
    assert_eq!(reports.finals(), 1);
    check_list(&sg, 32);
    drop(sg);
    check_teardown(&ring, &[&pool]);
}

#[test]
fn scatter_write_to_a_block_device_then_read_back() {
    let size = 4u64 << 20;
    let dev = or_skip!(LoopDev::new(size, None));
    let pool = pool(256, 16 * 1024);
    let (mut ring, t) = ring_with(&pool, dev.open(true));
    // Distinct 16 KiB-aligned extents of 1..=4 blocks, shuffled.
    let mut rng = common::rng(5);
    let mut slots: Vec<u64> = (0..size / (16 * 1024)).collect();
    for i in (1..slots.len()).rev() {
        slots.swap(i, rng.u64(..i as u64 + 1) as usize);
    }
    let mut sg = SgList::new();
    let mut extents = Vec::new();
    for &s in slots.iter().take(200) {
        let off = s * 16 * 1024;
        let len = (1 + rng.u64(..4)) * BS as u64;
        let mut buf = pool.try_get().unwrap();
        buf.extend_from_slice(&verify::expected(BS, 33, off, len as usize))
            .unwrap();
        sg.push(buf, off).unwrap();
        extents.push((off, len));
    }
    let config = DmaConfig::new()
        .max_transfer(16 * 1024)
        .max_segments(2)
        .max_in_flight(4);
    let reports = Reports::default();
    let (done, sg) = Tx::write(config).run(&mut ring, t, sg, &reports);
    let total: u64 = extents.iter().map(|e| e.1).sum();
    assert_eq!((done.status, done.bytes), (Ok(()), total));
    assert_eq!(reports.finals(), 1);
    // Writes leave the buffers' data as it was.
    for ((seg, buf), (off, len)) in sg.iter().zip(&extents) {
        assert_eq!(
            (seg.device_offset, seg.len, buf.len() as u64),
            (*off, *len, *len)
        );
    }
    drop(sg);
    let image = std::fs::read(&dev.path).unwrap();
    for (off, len) in extents {
        verify::check_range(&image[off as usize..(off + len) as usize], BS, 33, off).unwrap();
    }
    check_teardown(&ring, &[&pool]);
}

#[test]
fn device_error_ends_the_transaction_once_with_completed_final() {
    let dev_size = 1u64 << 20;
    let dev = or_skip!(LoopDev::new(dev_size, None));
    let pool = pool(16, 16 * 1024);
    let (mut ring, t) = ring_with(&pool, dev.open(true));
    let mut sg = SgList::new();
    // The first extent straddles the end of the device: 8 KiB fit, then ENOSPC.
    for (off, len) in [(dev_size - 8192, 16384u64), (dev_size + 65536, 4096)] {
        let mut buf = pool.try_get().unwrap();
        buf.extend_from_slice(&verify::expected(BS, 34, off, len as usize))
            .unwrap();
        sg.push(buf, off).unwrap();
    }
    let reports = Reports::default();
    let (done, sg) = Tx::write(DmaConfig::new()).run(&mut ring, t, sg, &reports);
    assert_eq!(done.status, Err(Error::from_errno(libc::ENOSPC)));
    assert_eq!(done.bytes, 8192, "the bytes that moved before the error");
    assert_eq!(reports.bytes(), 8192);
    assert_eq!(reports.finals(), 1);
    let last = *reports.all().last().unwrap();
    assert_eq!(last.status, Err(Error::from_errno(libc::ENOSPC)));
    assert!(last.last);
    drop(sg);
    let image = std::fs::read(&dev.path).unwrap();
    verify::check_range(
        &image[(dev_size - 8192) as usize..],
        BS,
        34,
        dev_size - 8192,
    )
    .unwrap();
    check_teardown(&ring, &[&pool]);
}

#[test]
fn a_target_that_cannot_read_is_refused_before_the_kernel_and_buffers_come_back() {
    // An O_PATH descriptor allows no I/O (the kernel would answer EBADF): the ring knows
    // it from registration, so the transaction is refused up front, list and all.
    let (_dir, path) = verify::disk_file(1 << 20, 35);
    let pool = pool(8, BS);
    let (mut ring, t) = ring_with(&pool, common::open_o_path(&path));
    let mut sg = SgList::new();
    sg.push_extent(&pool, 0, 8 * BS as u64).unwrap();
    let reports = Reports::default();
    let config = DmaConfig::new()
        .max_transfer(2 * BS as u64)
        .max_in_flight(2);
    let enters = ring.stats().enters;
    let err = Tx::read(config)
        .start(&mut ring, t, sg, &reports)
        .map(|_| ())
        .unwrap_err();
    assert!(
        matches!(err.error().kind(), ErrorKind::NotReadable),
        "{err:?}"
    );
    assert_eq!(ring.stats().enters, enters, "reached the kernel");
    let sg = err.into_sg();
    assert_eq!(sg.len(), 8);
    drop(sg);
    assert!(reports.all().is_empty());
    check_teardown(&ring, &[&pool]);
}

#[test]
fn stop_mid_flight_cancels_drains_and_counts_what_moved() {
    let size = 16u64 << 20;
    let dev = or_skip!(LoopDev::new(size, Some((BS, 36))));
    let pool = pool(256, 64 * 1024);
    let (mut ring, t) = ring_with(&pool, dev.open(false));
    let mut sg = SgList::new();
    // Every other 64 KiB block: no two extents contiguous, one transfer each.
    for i in 0..128u64 {
        sg.push_extent(&pool, i * 128 * 1024, 64 * 1024).unwrap();
    }
    let config = DmaConfig::new().max_in_flight(2);
    let reports = Reports::default();
    let mut drv = Tx::read(config).start(&mut ring, t, sg, &reports).unwrap();
    while drv.stats().transfers < 6 {
        assert!(drv
            .step(&mut ring, Some(Duration::from_millis(100)))
            .unwrap()
            .is_none());
    }
    assert!(drv.cancel(&mut ring));
    assert!(!drv.cancel(&mut ring), "stopped twice");
    let out = drv.process(&mut ring).unwrap();
    assert!(
        out.is_none() || drv.in_flight() == 0,
        "buffers handed back with transfers in flight"
    );
    let (done, sg) = finish(&mut drv, &mut ring, out);
    assert!(done.status.unwrap_err().is_cancelled(), "{done:?}");
    assert_eq!(done.bytes, drv.bytes_transferred());
    assert!(done.bytes < 128 * 64 * 1024);
    assert_eq!(ring.in_flight(), 0);
    drop(drv);
    assert_eq!(reports.finals(), 1);
    assert_eq!(reports.bytes(), done.bytes);
    // The segments that were received are intact; the others got nothing.
    let mut received = 0;
    for (seg, buf) in sg.iter() {
        if buf.len() as u64 == seg.len {
            verify::check_range(buf.data(), BS, 36, seg.device_offset).unwrap();
            received += seg.len;
        } else {
            assert_eq!(buf.len(), 0);
        }
    }
    assert_eq!(received, done.bytes);
    drop(sg);
    check_teardown(&ring, &[&pool]);
}

#[test]
fn deadline_races_the_final_transfer_thousands_of_times() {
    deadline_race(37, |r| {
        let mut sg = SgList::with_capacity(1);
        sg.push_extent(r.pool, r.offset, BS as u64).unwrap();
        let reports = Reports::default();
        let mut drv = Tx::read(DmaConfig::new())
            .deadline(Some(r.deadline))
            .start(r.ring, r.target, sg, &reports)
            .unwrap();
        let mut completions = 0;
        let (done, sg) = loop {
            if let Some(c) = drv.step(r.ring, Some(Duration::from_millis(100))).unwrap() {
                completions += 1;
                break c;
            }
        };
        assert!(drv.process(r.ring).unwrap().is_none(), "completed twice");
        let moved = drv.bytes_transferred();
        drop(drv);
        assert_eq!(reports.finals(), 1, "iteration {}", r.i);
        assert_eq!(done.bytes, moved);
        if moved > 0 {
            verify::check_block(sg.bufs()[0].data(), r.offset, 37).unwrap();
        }
        (done.status, moved, completions)
    });
}

#[test]
fn bad_input_is_refused_with_typed_errors_before_the_kernel() {
    let dev = or_skip!(LoopDev::new(1 << 20, None));
    let pool = pool(8, BS);
    let (mut ring, t) = ring_with(&pool, dev.open(false));
    let align = ring.info(t).unwrap().offset_align;
    let before = ring.stats().submitted;
    let list = |off: u64, len: u64| {
        let mut sg = SgList::new();
        sg.push_extent(&pool, off, len).unwrap();
        sg
    };
    let err = |ring: &mut Ring, sg: SgList, dir: Direction, config: DmaConfig| {
        Tx(dir, config, None).refused(ring, t, sg).kind()
    };
    assert_eq!(
        err(
            &mut ring,
            list(100, BS as u64),
            Direction::Read,
            DmaConfig::new()
        ),
        ErrorKind::Misaligned {
            what: "offset",
            value: 100,
            align
        }
    );
    assert_eq!(
        err(&mut ring, list(0, 1000), Direction::Read, DmaConfig::new()),
        ErrorKind::Misaligned {
            what: "length",
            value: 1000,
            align
        }
    );
    assert!(matches!(
        err(
            &mut ring,
            list(0, BS as u64),
            Direction::Read,
            DmaConfig::new().max_transfer(1000)
        ),
        ErrorKind::Misaligned {
            what: "max transfer",
            ..
        }
    ));
    assert_eq!(
        err(
            &mut ring,
            list(0, BS as u64),
            Direction::Write,
            DmaConfig::new()
        ),
        ErrorKind::NotWritable
    );
    assert_eq!(
        err(&mut ring, SgList::new(), Direction::Read, DmaConfig::new()),
        ErrorKind::ZeroLength {
            what: "scatter/gather list"
        }
    );
    assert_eq!(
        err(
            &mut ring,
            list(0, BS as u64),
            Direction::Read,
            DmaConfig::new().max_segments(0)
        ),
        ErrorKind::OutOfRange {
            what: "max_segments",
            min: 1,
            max: 1024
        }
    );
    // A refused list comes back untouched (its buffers may hold data to write).
    let mut sg = SgList::new();
    let mut buf = pool.try_get().unwrap();
    buf.extend_from_slice(&[7u8; 100]).unwrap();
    sg.push(buf, 0).unwrap();
    let rejected = Tx::read(DmaConfig::new()).refused(&mut ring, t, sg);
    assert!(matches!(
        rejected.kind(),
        ErrorKind::Misaligned {
            what: "length",
            value: 100,
            ..
        }
    ));
    let back = rejected.into_sg();
    assert_eq!(back.bufs()[0].data(), &[7u8; 100][..]);
    drop(back);
    let (sock, _peer) = std::os::unix::net::UnixStream::pair().unwrap();
    let s = ring.register(sock).unwrap();
    let e = Tx::read(DmaConfig::new()).refused(&mut ring, s, list(0, 10));
    assert!(matches!(
        e.kind(),
        ErrorKind::WrongTargetKind {
            have: FdKind::Socket,
            ..
        }
    ));
    drop(e);
    assert_eq!(ring.stats().submitted, before, "something reached the ring");
    // The ring's own checks on buffer parts: typed errors without a syscall.
    let rejected = ring.stats().rejected;
    let bufs = vec![pool.try_get().unwrap(), pool.try_get().unwrap()];
    let one_part = vec![BufPart { start: 0, len: BS }];
    let c = ring
        .submit(Op::readv_parts(t, 0, bufs, one_part))
        .wait()
        .unwrap();
    assert!(common::invalid_input(&c));
    assert!(
        matches!(c.bufs(), iocomplete::Bufs::PoolList(v) if v.len() == 2),
        "buffers handed back"
    );
    drop(c);
    let past = vec![BufPart {
        start: 512,
        len: BS,
    }];
    let c = ring
        .submit(Op::readv_parts(t, 0, vec![pool.try_get().unwrap()], past))
        .wait()
        .unwrap();
    assert!(common::invalid_input(&c));
    assert_eq!(ring.stats().rejected, rejected + 2);
    drop(c);
    check_teardown(&ring, &[&pool]);
}

// ---- finding 9: a segment's length counts only a transferred prefix ------------------------

/// A read list of one 8 KiB buffer at device offset 0, cut into two 4 KiB transfers (A, B)
/// that share the buffer, with 2 in flight: B waits for A to hand the buffer back. The
/// buffer starts full of garbage, so stale bytes counted as received show.
fn split_segment_list(pool: &BufferPool) -> SgList {
    let mut sg = SgList::new();
    sg.push_extent(pool, 0, 2 * BS as u64).unwrap();
    let mut bufs = sg.into_bufs();
    bufs[0].data_mut().fill(0xA5);
    let mut sg = SgList::new();
    sg.push(bufs.pop().unwrap(), 0).unwrap();
    sg
}

/// Each segment's `len()` is a prefix that really arrived: whole and verified.
fn check_prefixes(sg: &SgList, seed: u64) -> u64 {
    let mut got = 0;
    for (seg, buf) in sg.iter() {
        assert!(
            buf.len() as u64 <= seg.len,
            "segment at {}",
            seg.device_offset
        );
        verify::check_range(buf.data(), BS, seed, seg.device_offset).unwrap_or_else(|e| {
            panic!(
                "segment at {} claims {} bytes that are not a received prefix: {e}",
                seg.device_offset,
                buf.len()
            )
        });
        got += buf.len() as u64;
    }
    got
}

/// Step `drv` until `cond` holds (bounded: a regression fails instead of hanging); the
/// output, if the transaction completed on the way, goes to `out`.
fn step_until(
    drv: &mut DmaDriver,
    ring: &mut Ring,
    out: &mut Option<Output>,
    what: &str,
    mut cond: impl FnMut(&DmaDriver) -> bool,
) {
    let end = std::time::Instant::now() + Duration::from_secs(10);
    while !cond(drv) {
        assert!(
            std::time::Instant::now() < end,
            "timed out waiting for {what}"
        );
        if let Some(o) = drv.step(ring, Some(Duration::from_millis(10))).unwrap() {
            *out = Some(o);
        }
    }
}

/// Step `drv` until it completes (bounded: a regression fails instead of hanging); `out`
/// is the output if `step_until` stepped past the completion already.
fn finish(drv: &mut DmaDriver, ring: &mut Ring, mut out: Option<Output>) -> Output {
    let end = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(o) = out {
            return o;
        }
        out = drv.step(ring, Some(Duration::from_millis(100))).unwrap();
        assert!(
            std::time::Instant::now() < end,
            "the transaction never completed: {drv:?}"
        );
    }
}

#[test]
fn a_failed_transfer_leaves_no_stale_bytes_counted_in_its_segment() {
    use common::fuse::{FileSpec, FuseMount};
    let spec = FileSpec::blocks(64, 61);
    let fs = or_skip!(FuseMount::new(spec));
    // A (bytes 0..4096) fails; B (4096..8192), waiting for the same buffer, is held at the
    // server so that it really reads once it is submitted.
    fs.ctl().fail_range(0, BS as u64);
    fs.ctl().hold(BS as u64..2 * BS as u64);
    let pool = pool(2, 2 * BS);
    let (mut ring, t) = ring_with(&pool, open(&fs.path(), false, false));
    let config = DmaConfig::new().max_transfer(BS as u64).max_in_flight(2);
    let reports = Reports::default();
    let mut drv = Tx::read(config)
        .start(&mut ring, t, split_segment_list(&pool), &reports)
        .unwrap();
    let mut out = None;
    step_until(&mut drv, &mut ring, &mut out, "A's error", |_| {
        !reports.all().is_empty()
    });
    fs.ctl().release();
    let (done, sg) = finish(&mut drv, &mut ring, out);
    // B, withdrawn by the error while it waited, never reached the kernel.
    assert_eq!(drv.stats().transfers, 1, "{:?}", drv.stats());
    drop(drv);
    assert_eq!(done.status, Err(Error::from_errno(libc::EIO)), "{done:?}");
    assert_eq!(reports.finals(), 1);
    check_prefixes(&sg, spec.seed);
    assert_eq!(
        sg.bufs()[0].len(),
        0,
        "A failed: nothing of the segment is a prefix"
    );
    drop(sg);
    close_and_check(&mut ring, &[t], &[&pool]);
}

#[test]
fn a_stop_while_a_transfer_waits_for_its_buffer_leaves_no_stale_bytes_counted() {
    use common::fuse::{FileSpec, FuseMount};
    use std::os::unix::fs::FileExt;
    let spec = FileSpec::blocks(64, 62);
    let fs = or_skip!(FuseMount::new(spec));
    let content = spec.content();
    // The file is 1000 bytes long when A (0..4096) is answered: A is short, and the rest
    // of it (A') must come before B (4096..8192), which shares the buffer.
    let short = 1000u64;
    // A' may be at the device while the file grows (the thread-pool backend starts it at
    // once; io_uring at the next enter): grow by writing only, never by `set_len` first,
    // whose zeros a read answered in between would rightly count as received (see
    // backend_threads: a_continuation_answered_while_the_file_grows_counts_exactly_what_arrived).
    let grow = |len: u64| {
        let f = OpenOptions::new().write(true).open(fs.path()).unwrap();
        f.write_all_at(&content[short as usize..len as usize], short)
            .unwrap();
    };
    OpenOptions::new()
        .write(true)
        .open(fs.path())
        .unwrap()
        .set_len(short)
        .unwrap();
    fs.ctl().hold(0..BS as u64);
    let pool = pool(2, 2 * BS);
    let (mut ring, t) = ring_with(&pool, open(&fs.path(), false, false));
    let config = DmaConfig::new().max_transfer(BS as u64).max_in_flight(2);
    let reports = Reports::default();
    let mut drv = Tx::read(config)
        .start(&mut ring, t, split_segment_list(&pool), &reports)
        .unwrap();
    let mut out = None;
    step_until(&mut drv, &mut ring, &mut out, "A at the server", |_| {
        fs.ctl().outstanding() == 1
    });
    // Whatever reads next touching 4096.. is held; A is answered now (1000 bytes).
    fs.ctl().release();
    fs.ctl().hold(BS as u64..2 * BS as u64);
    step_until(
        &mut drv,
        &mut ring,
        &mut out,
        "A's short completion",
        |_| !reports.all().is_empty(),
    );
    assert_eq!(reports.all()[0].bytes, short);
    // The file grows back; whatever was submitted next is at the server or done.
    grow(spec.size);
    std::thread::sleep(Duration::from_millis(50));
    if let Some(o) = drv.process(&mut ring).unwrap() {
        out = Some(o);
    }
    assert!(drv.cancel(&mut ring));
    fs.ctl().release();
    let (done, sg) = finish(&mut drv, &mut ring, out);
    drop(drv);
    assert!(done.status.is_err(), "{done:?}");
    assert_eq!(reports.finals(), 1);
    let got = check_prefixes(&sg, spec.seed);
    assert!(got >= short, "A's bytes are a prefix: {got}");
    drop(sg);
    close_and_check(&mut ring, &[t], &[&pool]);
}

// ---- deadlines that mean "never" ----------------------------------------------------------

#[test]
fn huge_deadlines_never_fire_and_every_byte_is_gathered() {
    let (_dir, path) = verify::disk_file(1 << 20, 72);
    let pool = pool(32, 2 * BS);
    let (mut ring, t) = ring_with(&pool, open(&path, false, false));
    for d in [
        Duration::MAX,
        Duration::from_secs(u64::MAX),
        Duration::from_secs(1 << 63),
        Duration::new(i64::MAX as u64, 999_999_999),
    ] {
        let mut sg = SgList::new();
        for (off, len) in [(1000u64, 9000u64), (70_000, 20_000), (500_000, 4096)] {
            sg.push_extent(&pool, off, len).unwrap();
        }
        let total = sg.total_len();
        let config = DmaConfig::new().max_transfer(BS as u64).max_in_flight(3);
        let reports = Reports::default();
        let mut drv = Tx::read(config)
            .deadline(Some(d))
            .start(&mut ring, t, sg, &reports)
            .unwrap();
        let (done, sg) = finish(&mut drv, &mut ring, None);
        assert_eq!((done.status, done.bytes), (Ok(()), total), "deadline {d:?}");
        assert_eq!(ring.in_flight(), 0, "completed with the timer in flight");
        drop(drv);
        assert_eq!(reports.finals(), 1);
        check_list(&sg, 72);
    }
    check_teardown(&ring, &[&pool]);
}

/// Dropping a driver mid-flight: its buffers come back as soon as its transfers'
/// completions do, not only when its deadline timer fires.
#[test]
fn dropping_a_driver_mid_flight_returns_its_buffers_before_the_deadline() {
    let (_dir, path) = verify::disk_file(1 << 20, 76);
    let pool = pool(64, 4 * BS);
    let (mut ring, t) = ring_with(&pool, open(&path, false, false));
    let mut sg = SgList::new();
    for i in 0..16u64 {
        sg.push_extent(&pool, i * 65536, 4 * BS as u64).unwrap();
    }
    let deadline = Duration::from_secs(2);
    let config = DmaConfig::new().max_in_flight(4);
    let mut drv = Tx::read(config)
        .deadline(Some(deadline))
        .builder(t, sg)
        .build(&mut ring)
        .unwrap();
    assert!(drv.process(&mut ring).unwrap().is_none());
    assert!(drv.in_flight() > 0);
    drop_mid_flight(&mut ring, &pool, drv, deadline, "transfers");
    close_and_check(&mut ring, &[t], &[&pool]);
}

/// Taking the list back before anything was submitted — a cancel before the start — ends
/// the transaction: it completes `Cancelled`, 0 bytes, with the list as it was (taking the
/// list out of an unstarted driver hung when it was stepped afterwards, its transfers
/// waiting forever for buffers that were gone).
#[test]
fn taking_the_list_before_the_start_ends_the_transaction() {
    let (_dir, path) = verify::disk_file(1 << 20, 77);
    let pool = pool(4, BS);
    let (mut ring, t) = ring_with(&pool, open(&path, false, false));
    for deadline in [None, Some(Duration::from_secs(60))] {
        let mut sg = SgList::new();
        sg.push_extent(&pool, 0, 2 * BS as u64).unwrap();
        sg.push_extent(&pool, 10 * BS as u64, 100).unwrap();
        let reports = Reports::default();
        let mut drv = Tx::read(DmaConfig::new())
            .deadline(deadline)
            .start(&mut ring, t, sg, &reports)
            .unwrap();
        assert!(drv.cancel(&mut ring), "the list, before the start");
        let (done, sg) = finish(&mut drv, &mut ring, None);
        assert!(drv.process(&mut ring).unwrap().is_none(), "taken twice");
        assert!(done.status.unwrap_err().is_cancelled(), "{done:?}");
        assert_eq!(done.bytes, 0);
        assert!(!drv.cancel(&mut ring), "stopped after it ended");
        drop(drv);
        assert_eq!(reports.all().len(), 0, "nothing was submitted");
        let lens: Vec<usize> = sg.bufs().iter().map(|b| b.len()).collect();
        assert_eq!(lens, [BS, BS, 100], "the list came back as it was");
        drop(sg);
        assert_eq!(
            ring.in_flight(),
            0,
            "a timer was armed for an ended transaction"
        );
    }
    close_and_check(&mut ring, &[t], &[&pool]);
}

/// Segments past what a file offset (`loff_t`, 2⁶³ − 1) can address reached the kernel
/// (`EINVAL`): refused with a typed error before the kernel, the list handed back.
#[test]
fn segments_past_the_largest_file_offset_are_refused_before_the_kernel() {
    let (_dir, path) = verify::disk_file(1 << 20, 78);
    let pool = pool(4, BS);
    let (mut ring, t) = ring_with(&pool, open(&path, true, false));
    let before = ring.stats().submitted;
    let big = i64::MAX as u64;
    for (off, len) in [(big + 1, 10), (u64::MAX - 10, 10), (big - 10, 100)] {
        for direction in [Direction::Read, Direction::Write] {
            let mut sg = SgList::new();
            sg.push_extent(&pool, 0, 100).unwrap();
            sg.push_extent(&pool, off, len).unwrap();
            let r = Tx(direction, DmaConfig::new(), None).refused(&mut ring, t, sg);
            assert!(
                matches!(r.kind(), ErrorKind::OffsetOutOfRange { offset, len: l } if offset == off && l == len),
                "{off}+{len}: {r}"
            );
            assert_eq!(r.into_sg().len(), 2, "the list comes back");
        }
    }
    assert_eq!(
        ring.stats().submitted,
        before,
        "something reached the kernel"
    );
    close_and_check(&mut ring, &[t], &[&pool]);
}

/// A positional write to an `O_APPEND` descriptor lands at the end of the file, not at
/// the segment's device offset: a scatter write there is refused before the kernel.
#[test]
fn scatter_writes_to_an_append_only_descriptor_are_refused() {
    let (_dir, path) = common::disk_path("f");
    std::fs::write(&path, b"keep").unwrap();
    let pool = pool(4, BS);
    let (mut ring, t) = ring_with(
        &pool,
        OpenOptions::new()
            .read(true)
            .append(true)
            .open(&path)
            .unwrap(),
    );
    let before = ring.stats().submitted;
    let mut sg = SgList::new();
    let mut buf = pool.try_get().unwrap();
    buf.extend_from_slice(&[7u8; 10]).unwrap();
    sg.push(buf, 0).unwrap();
    let r = Tx::write(DmaConfig::new()).refused(&mut ring, t, sg);
    assert!(matches!(r.kind(), ErrorKind::AppendOnly), "{r}");
    assert_eq!(r.into_sg().bufs()[0].data(), &[7u8; 10][..]);
    assert_eq!(ring.stats().submitted, before);
    assert_eq!(std::fs::read(&path).unwrap(), b"keep");
    // A gather through it is positional as ever.
    let mut sg = SgList::new();
    sg.push_extent(&pool, 1, 3).unwrap();
    let (done, sg) = Tx::read(DmaConfig::new()).run(&mut ring, t, sg, &Reports::default());
    assert_eq!((done.status, done.bytes), (Ok(()), 3));
    assert_eq!(sg.bufs()[0].data(), b"eep");
    drop(sg);
    close_and_check(&mut ring, &[t], &[&pool]);
}
