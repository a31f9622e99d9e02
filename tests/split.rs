//! The split driver against real files, O_DIRECT files and loop block devices: copies,
//! reads and writes verified block by block (per-block crc32c patterns that encode the
//! offset); first error, parent cancel and deadline races; bad input refused before the
//! kernel (the `copy` example is tested in `tests/tools.rs`). Every test checks the
//! teardown invariants (every operation completed once, nothing in flight, every slot
//! back).

mod common;

use common::or_skip;

use std::fs::OpenOptions;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::drivers::{copy_at, copy_job, deadline_race, drop_mid_flight, finish_split, run_job};
use common::{check_teardown, close_and_check, open, pool, ring_with, verify, LoopDev};
use iocomplete::ring::block_device_limits;
use iocomplete::{
    Driver, Error, ErrorKind, FdKind, Job, Mode, PoolBuf, Ring, SplitConfig, SplitDriver, Target,
};

const BS: usize = 4096;
const CHUNK: u64 = 64 * 1024;
const PAR4: Mode = Mode::Parallel { max_in_flight: 4 };

/// Collects what a read job delivers, at the offsets it came from.
struct Collect {
    base: u64,
    data: Vec<u8>,
    calls: usize,
}

impl Collect {
    fn new(base: u64, len: usize) -> Arc<Mutex<Collect>> {
        Arc::new(Mutex::new(Collect {
            base,
            data: vec![0; len],
            calls: 0,
        }))
    }

    fn on_read(&mut self, offset: u64, buf: &PoolBuf) -> iocomplete::Result<()> {
        let at = (offset - self.base) as usize;
        self.data[at..at + buf.len()].copy_from_slice(buf.data());
        self.calls += 1;
        Ok(())
    }

    /// `drv`, delivering its chunks to `c`.
    fn hook(c: &Arc<Mutex<Collect>>, drv: SplitDriver) -> SplitDriver {
        let c = Arc::clone(c);
        drv.on_read(move |offset, buf| c.lock().unwrap().on_read(offset, buf))
    }
}

/// Produces verify blocks for a write job.
struct Pattern {
    seed: u64,
    progress: Vec<u64>,
}

impl Pattern {
    fn fill(&mut self, offset: u64, buf: &mut PoolBuf) -> iocomplete::Result<()> {
        let n = buf.len();
        buf.data_mut()
            .copy_from_slice(&verify::expected(BS, self.seed, offset, n));
        Ok(())
    }

    fn on_progress(&mut self, done: u64, len: u64) {
        assert!(done <= len);
        assert!(
            self.progress.last().is_none_or(|&p| p < done),
            "progress went back"
        );
        self.progress.push(done);
    }

    /// `drv`, filled by `p` and reporting its progress to it.
    fn hook(p: &Arc<Mutex<Pattern>>, drv: SplitDriver) -> SplitDriver {
        let (f, g) = (Arc::clone(p), Arc::clone(p));
        drv.on_fill(move |offset, buf| f.lock().unwrap().fill(offset, buf))
            .on_progress(move |done, len| g.lock().unwrap().on_progress(done, len))
    }
}

#[test]
fn copies_around_chunk_and_block_boundaries_in_both_modes() {
    let dir = common::disk_dir();
    let sizes = [
        0,
        1,
        BS as u64 - 1,
        BS as u64,
        BS as u64 + 1,
        CHUNK - 1,
        CHUNK,
        CHUNK + 1,
        3 * CHUNK + BS as u64 + 7,
    ];
    for mode in [Mode::Serial, PAR4] {
        let mut ring = Ring::new().unwrap();
        let pool = pool(4, CHUNK as usize);
        ring.register_pool(&pool);
        for (k, &size) in sizes.iter().enumerate() {
            let seed = 100 + k as u64;
            let src = verify::file_in(dir.path(), "src", size, seed);
            let dst = dir.path().join("dst");
            let _ = std::fs::remove_file(&dst);
            let s = ring.register(open(&src, false, false)).unwrap();
            let d = ring.register(open(&dst, true, false)).unwrap();
            let job = copy_job(s, d, size);
            let config = SplitConfig::new().mode(mode).max_chunk(CHUNK);
            let mut drv = SplitDriver::new(&mut ring, &pool, job, config).unwrap();
            let done = drv.run(&mut ring).unwrap();
            assert_eq!(done.status, Ok(()), "{mode:?} size {size}");
            assert_eq!((done.bytes, done.transferred), (size, size));
            assert_eq!(drv.in_flight(), 0);
            let chunks = size.div_ceil(CHUNK);
            let st = drv.stats();
            // A read and a write per chunk (more only after a short transfer).
            assert!(st.child_ops >= 2 * chunks, "{st:?}");
            let expect_par = match mode {
                Mode::Serial => chunks.min(1),
                Mode::Parallel { max_in_flight } => chunks.min(u64::from(max_in_flight)),
            };
            assert_eq!(st.max_in_flight as u64, expect_par, "{st:?}");
            assert!(drv.process(&mut ring).unwrap().is_none(), "completed twice");
            assert_eq!(std::fs::metadata(&dst).unwrap().len(), size);
            verify::check_file_prefix(&dst, size, seed);
            ring.close(s).unwrap();
            ring.close(d).unwrap();
        }
        check_teardown(&ring, &[&pool]);
    }
}

#[test]
fn read_and_write_jobs_with_boundaries_and_progress() {
    let (_dir, path) = common::disk_path("rw");
    let pool = pool(3, 12 * 1024);
    let (mut ring, t) = ring_with(&pool, open(&path, true, false));
    let (offset, len) = (5000u64, 200_000u64);
    let config = SplitConfig::new()
        .mode(Mode::Parallel { max_in_flight: 3 })
        .boundary(16 * 1024);
    let pat = Arc::new(Mutex::new(Pattern {
        seed: 9,
        progress: Vec::new(),
    }));
    let job = Job::Write {
        dst: t,
        offset,
        len,
    };
    let drv = SplitDriver::new(&mut ring, &pool, job, config).unwrap();
    let mut drv = Pattern::hook(&pat, drv);
    assert_eq!(drv.plan().max_chunk(), 12 * 1024, "capped at a pool slot");
    let done = drv.run(&mut ring).unwrap();
    assert_eq!((done.status, done.bytes), (Ok(()), len));
    assert_eq!(pat.lock().unwrap().progress.last(), Some(&len));
    // Chunks never cross a 16 KiB boundary: at least one chunk per boundary window.
    assert!(drv.stats().child_ops >= (offset + len) / (16 * 1024) - offset / (16 * 1024));
    let got = Collect::new(offset, len as usize);
    let job = Job::Read {
        src: t,
        offset,
        len,
    };
    let done = run_job(&mut ring, &pool, job, config, |d| Collect::hook(&got, d));
    assert_eq!((done.status, done.bytes), (Ok(()), len));
    verify::check_range(&got.lock().unwrap().data, BS, 9, offset).unwrap();
    // Reading past the end stops at end of file, successfully, with fewer bytes.
    let tail = Collect::new(offset + len - 1000, 50_000);
    let job = Job::Read {
        src: t,
        offset: offset + len - 1000,
        len: 50_000,
    };
    let done = run_job(&mut ring, &pool, job, config, |d| Collect::hook(&tail, d));
    assert_eq!((done.status, done.bytes), (Ok(()), 1000));
    let tail = tail.lock().unwrap();
    verify::check_range(&tail.data[..1000], BS, 9, offset + len - 1000).unwrap();
    check_teardown(&ring, &[&pool]);
}

#[test]
fn direct_file_copies_and_misaligned_requests_refused_before_the_kernel() {
    let size = (1 << 20) + 8192;
    let (dir, src) = verify::disk_file(size, 3);
    let dst = dir.path().join("dst");
    let pool = pool(8, 128 * 1024);
    let (mut ring, s) = ring_with(&pool, open(&src, false, true));
    let d = ring.register(open(&dst, true, true)).unwrap();
    let align = u64::from(
        ring.info(s)
            .unwrap()
            .offset_align
            .max(ring.info(d).unwrap().offset_align),
    );
    for mode in [Mode::Serial, Mode::Parallel { max_in_flight: 8 }] {
        let job = copy_job(s, d, size);
        let mut drv =
            SplitDriver::new(&mut ring, &pool, job, SplitConfig::new().mode(mode)).unwrap();
        assert_eq!(drv.plan().max_chunk(), 128 * 1024, "default: a pool slot");
        assert_eq!(u64::from(drv.plan().align()), align);
        let done = drv.run(&mut ring).unwrap();
        assert_eq!((done.status, done.bytes), (Ok(()), size), "{mode:?}");
        verify::check_file_prefix(&dst, size, 3);
    }
    // Misaligned direct requests: typed errors, nothing submitted.
    let before = ring.stats().submitted;
    let bad = |ring: &mut Ring, job: Job, config: SplitConfig| {
        SplitDriver::new(ring, &pool, job, config)
            .unwrap_err()
            .kind()
    };
    let copy = |src_offset, dst_offset, len| copy_at((s, src_offset), (d, dst_offset), len);
    assert_eq!(
        bad(&mut ring, copy(0, 0, size - 1), SplitConfig::new()),
        ErrorKind::Misaligned {
            what: "length",
            value: size - 1,
            align: align as u32
        }
    );
    assert!(matches!(
        bad(&mut ring, copy(100, 0, align), SplitConfig::new()),
        ErrorKind::Misaligned {
            what: "offset",
            value: 100,
            ..
        }
    ));
    assert!(matches!(
        bad(&mut ring, copy(0, 100, align), SplitConfig::new()),
        ErrorKind::Misaligned {
            what: "offset",
            value: 100,
            ..
        }
    ));
    assert!(matches!(
        bad(
            &mut ring,
            copy(0, 0, size),
            SplitConfig::new().max_chunk(1000)
        ),
        ErrorKind::Misaligned {
            what: "chunk",
            value: 1000,
            ..
        }
    ));
    assert_eq!(ring.stats().submitted, before, "something reached the ring");
    check_teardown(&ring, &[&pool]);
}

#[test]
fn direct_reads_end_at_an_unaligned_end_of_file() {
    // O_DIRECT returns a short, unaligned count at the end of a file whose size is not a
    // multiple of the alignment; the rest of the chunk is past the end, not an error.
    let pool = pool(2, CHUNK as usize);
    let size = 3 * CHUNK + 1000;
    let (_dir, src) = verify::disk_file(size, 13);
    let (mut ring, s) = ring_with(&pool, open(&src, false, true));
    let len = 4 * CHUNK;
    for mode in [Mode::Serial, Mode::Parallel { max_in_flight: 2 }] {
        let got = Collect::new(0, len as usize);
        let job = Job::Read {
            src: s,
            offset: 0,
            len,
        };
        let config = SplitConfig::new().mode(mode).max_chunk(CHUNK);
        let drv = SplitDriver::new(&mut ring, &pool, job, config).unwrap();
        let done = Collect::hook(&got, drv).run(&mut ring).unwrap();
        assert_eq!((done.status, done.bytes), (Ok(()), size), "{mode:?}");
        verify::check_range(&got.lock().unwrap().data[..size as usize], BS, 13, 0).unwrap();
    }
    check_teardown(&ring, &[&pool]);
}

#[test]
fn block_devices_default_to_their_limits_and_copy_both_ways() {
    let size = 4u64 << 20;
    let (src_dev, dst_dev) = or_skip!(LoopDev::pair(size, 21));
    let (_dir, mid) = common::disk_path("mid");
    let pool = pool(4, 2 << 20);
    let (mut ring, s) = ring_with(&pool, open(Path::new(&src_dev.path), false, true));
    let m = ring.register(open(&mid, true, true)).unwrap();
    let rdev = std::fs::metadata(&src_dev.path).unwrap().rdev();
    let limits = block_device_limits(rdev as libc::dev_t).unwrap();
    let job = copy_job(s, m, size);
    let mut drv = SplitDriver::new(&mut ring, &pool, job, SplitConfig::new()).unwrap();
    assert_eq!(drv.plan().max_chunk(), limits.max_chunk.min(2 << 20));
    let done = drv.run(&mut ring).unwrap();
    assert_eq!((done.status, done.bytes), (Ok(()), size));
    verify::check_file_prefix(&mid, size, 21);
    // File -> block device, serial, and read the device back.
    let d = ring
        .register(open(Path::new(&dst_dev.path), true, true))
        .unwrap();
    let m2 = ring.register(open(&mid, false, true)).unwrap();
    let job = copy_job(m2, d, size);
    let config = SplitConfig::new().mode(Mode::Serial).max_chunk(256 * 1024);
    let done = run_job(&mut ring, &pool, job, config, |d| d);
    assert_eq!((done.status, done.bytes), (Ok(()), size));
    verify::check_file_prefix(Path::new(&dst_dev.path), size, 21);
    check_teardown(&ring, &[&pool]);
}

#[test]
fn first_error_enospc_on_a_small_device_completes_once_after_all_children() {
    let dev_size = 256 * 1024;
    let dev = or_skip!(LoopDev::new(dev_size, None));
    let size = 1u64 << 20;
    let (_dir, src) = verify::disk_file(size, 5);
    let pool = pool(8, CHUNK as usize);
    let (mut ring, s) = ring_with(&pool, open(&src, false, false));
    let d = ring
        .register(open(Path::new(&dev.path), true, true))
        .unwrap();
    let job = copy_job(s, d, size);
    let config = SplitConfig::new()
        .mode(Mode::Parallel { max_in_flight: 8 })
        .max_chunk(CHUNK);
    let mut drv = SplitDriver::new(&mut ring, &pool, job, config).unwrap();
    let done = finish_split(&mut drv, &mut ring);
    assert_eq!(done.status, Err(Error::from_errno(libc::ENOSPC)));
    assert!(done.bytes <= dev_size, "{done:?}");
    assert!(done.transferred <= dev_size, "{done:?}");
    verify::check_file_prefix(Path::new(&dev.path), done.bytes, 5);
    check_teardown(&ring, &[&pool]);
}

#[test]
fn first_error_closed_destination_mid_copy() {
    let size = 4u64 << 20;
    let (dir, src) = verify::disk_file(size, 6);
    let dst = dir.path().join("dst");
    let pool = pool(4, CHUNK as usize);
    let (mut ring, s) = ring_with(&pool, open(&src, false, false));
    let d = ring.register(open(&dst, true, false)).unwrap();
    let job = copy_job(s, d, size);
    let config = SplitConfig::new().mode(PAR4).max_chunk(CHUNK);
    let mut drv = SplitDriver::new(&mut ring, &pool, job, config).unwrap();
    while drv.bytes_transferred() < size / 4 {
        assert!(drv
            .step(&mut ring, Some(Duration::from_millis(100)))
            .unwrap()
            .is_none());
    }
    // The destination goes away mid-copy: the next write fails; the children in flight
    // finish; the parent completes once, with that first error.
    ring.close(d).unwrap();
    let done = finish_split(&mut drv, &mut ring);
    // Refused by the ring (a child submitted after the close), or EBADF from the kernel
    // (a write queued in the SQ before the close reached the kernel after it): whichever
    // came first.
    let kind = done.status.unwrap_err().kind();
    assert!(
        matches!(kind, ErrorKind::StaleTarget | ErrorKind::Os(libc::EBADF)),
        "{kind:?}"
    );
    assert!(done.bytes >= size / 4 && done.bytes < size, "{done:?}");
    verify::check_file_prefix(&dst, done.bytes, 6);
    check_teardown(&ring, &[&pool]);
}

#[test]
fn a_source_that_cannot_read_is_refused_before_the_kernel() {
    // An O_PATH descriptor passes every check up front (a readable regular file), and the
    // kernel answers EBADF to each read.
    let (dir, src) = verify::disk_file(1 << 20, 7);
    let pool = pool(4, CHUNK as usize);
    let (mut ring, s) = ring_with(&pool, common::open_o_path(&src));
    let d = ring
        .register(open(&dir.path().join("dst"), true, false))
        .unwrap();
    let job = copy_job(s, d, 1 << 20);
    // An O_PATH descriptor allows no I/O (the kernel would answer EBADF): refused up
    // front, before anything reaches the kernel.
    let enters = ring.stats().enters;
    let e = SplitDriver::new(&mut ring, &pool, job, SplitConfig::new().mode(PAR4))
        .map(|_| ())
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotReadable, "{e:?}");
    assert_eq!(ring.stats().enters, enters);
    check_teardown(&ring, &[&pool]);
}

#[test]
fn cancelling_the_parent_cancels_its_children() {
    let size = 32u64 << 20;
    let dev = or_skip!(LoopDev::new(size, Some((BS, 8))));
    let (_dir, dst) = common::disk_path("dst");
    let pool = pool(4, CHUNK as usize);
    let (mut ring, s) = ring_with(&pool, dev.open(false));
    let d = ring.register(open(&dst, true, false)).unwrap();
    let job = copy_job(s, d, size);
    let config = SplitConfig::new().mode(PAR4).max_chunk(CHUNK);
    let mut drv = SplitDriver::new(&mut ring, &pool, job, config).unwrap();
    while drv.bytes_transferred() < (1 << 20) {
        assert!(drv
            .step(&mut ring, Some(Duration::from_millis(100)))
            .unwrap()
            .is_none());
    }
    assert!(drv.in_flight() > 0);
    assert!(drv.cancel(&mut ring));
    assert!(drv.stats().cancels > 0, "no child was cancelled");
    assert!(!drv.cancel(&mut ring), "cancelled twice");
    let done = finish_split(&mut drv, &mut ring);
    assert!(done.status.unwrap_err().is_cancelled(), "{done:?}");
    assert!(done.bytes < size);
    verify::check_file_prefix(&dst, done.bytes, 8);
    check_teardown(&ring, &[&pool]);
}

#[test]
fn deadline_races_the_last_transfer_thousands_of_times() {
    deadline_race(11, |r| {
        let job = Job::Read {
            src: r.target,
            offset: r.offset,
            len: BS as u64,
        };
        let config = SplitConfig::new().mode(Mode::Serial).deadline(r.deadline);
        let got = Collect::new(r.offset, BS);
        let drv = SplitDriver::new(r.ring, r.pool, job, config).unwrap();
        let mut drv = Collect::hook(&got, drv);
        let mut completions = 0;
        let done = loop {
            if let Some(c) = drv.step(r.ring, Some(Duration::from_millis(100))).unwrap() {
                completions += 1;
                break c;
            }
        };
        assert!(drv.process(r.ring).unwrap().is_none());
        let idle = ErrorKind::NotInProgress {
            what: "driver request",
        };
        assert!(
            matches!(drv.run(r.ring), Err(e) if e.kind() == idle),
            "second completion handed out"
        );
        // Bytes that moved are the right bytes, whoever won.
        let got = got.lock().unwrap();
        assert_eq!(done.transferred, got.calls as u64 * BS as u64);
        if got.calls > 0 {
            verify::check_block(&got.data, r.offset, 11).unwrap();
        }
        let moved = if done.status.is_ok() {
            done.bytes
        } else {
            done.transferred
        };
        (done.status, moved, completions)
    });
}

#[test]
fn bad_input_is_refused_with_typed_errors_before_the_kernel() {
    let (dir, src) = verify::disk_file(1 << 20, 1);
    let pool = pool(2, CHUNK as usize);
    let (mut ring, s) = ring_with(&pool, open(&src, false, false));
    let ro = ring.register(open(&src, false, false)).unwrap();
    let (r, w) = std::os::unix::net::UnixStream::pair().unwrap();
    let p = ring.register(r).unwrap();
    drop(w);
    let copy = |src: Target, dst: Target, len| Job::Copy {
        src,
        src_offset: 0,
        dst,
        dst_offset: 0,
        len,
    };
    let before = ring.stats().submitted;
    let kind = |ring: &mut Ring, job, config| {
        SplitDriver::new(ring, &pool, job, config)
            .unwrap_err()
            .kind()
    };
    // A socket is not positional.
    assert!(matches!(
        kind(&mut ring, copy(p, s, 10), SplitConfig::new()),
        ErrorKind::WrongTargetKind {
            have: FdKind::Socket,
            ..
        }
    ));
    // The destination is read-only.
    assert_eq!(
        kind(&mut ring, copy(s, ro, 10), SplitConfig::new()),
        ErrorKind::NotWritable
    );
    // Impossible configs.
    // (`s` is read-only: this copy is refused as such before its max chunk is looked at.)
    assert_eq!(
        kind(&mut ring, copy(s, s, 10), SplitConfig::new().max_chunk(0)),
        ErrorKind::NotWritable
    );
    let read = Job::Read {
        src: s,
        offset: 0,
        len: 10,
    };
    let chunk0 = ErrorKind::OutOfRange {
        what: "max chunk",
        min: 1,
        max: u64::MAX,
    };
    assert_eq!(
        kind(&mut ring, read, SplitConfig::new().max_chunk(0)),
        chunk0
    );
    let zero = SplitConfig::new().mode(Mode::Parallel { max_in_flight: 0 });
    assert!(matches!(
        kind(
            &mut ring,
            Job::Read {
                src: s,
                offset: 0,
                len: 10
            },
            zero
        ),
        ErrorKind::OutOfRange {
            what: "max_in_flight",
            min: 1,
            max: 4096
        }
    ));
    // More children than the pool has slots.
    assert_eq!(
        kind(
            &mut ring,
            Job::Read {
                src: s,
                offset: 0,
                len: 1 << 20
            },
            SplitConfig::new().mode(PAR4)
        ),
        ErrorKind::PoolExhausted
    );
    // A closed target.
    ring.close(ro).unwrap();
    assert_eq!(
        kind(
            &mut ring,
            Job::Read {
                src: ro,
                offset: 0,
                len: 10
            },
            SplitConfig::new()
        ),
        ErrorKind::StaleTarget
    );
    assert_eq!(ring.stats().submitted, before, "something reached the ring");
    // A write job without a filler fails each child before it reaches the kernel.
    let wr = ring
        .register(open(&dir.path().join("w"), true, false))
        .unwrap();
    let job = Job::Write {
        dst: wr,
        offset: 0,
        len: 3 * CHUNK,
    };
    let config = SplitConfig::new().mode(Mode::Parallel { max_in_flight: 2 });
    let done = run_job(&mut ring, &pool, job, config, |d| d);
    assert!(matches!(
        done.status.unwrap_err().kind(),
        ErrorKind::InvalidInput { .. }
    ));
    assert_eq!(
        ring.stats().submitted,
        before,
        "a write without data reached the ring"
    );
    check_teardown(&ring, &[&pool]);
}

/// Deadlines so far away they must mean "never": the largest `Duration`, and ones whose
/// seconds do not fit a kernel timespec (≥ 2⁶³ s).
const HUGE_DEADLINES: [Duration; 4] = [
    Duration::MAX,
    Duration::from_secs(u64::MAX),
    Duration::from_secs(1 << 63),
    Duration::new(i64::MAX as u64, 999_999_999),
];

#[test]
fn huge_deadlines_never_fire_and_every_byte_is_copied() {
    let size = 5 * CHUNK + 777;
    let (dir, src) = verify::disk_file(size, 71);
    let pool = pool(4, CHUNK as usize);
    let (mut ring, s) = ring_with(&pool, open(&src, false, false));
    for (k, d) in HUGE_DEADLINES.into_iter().enumerate() {
        for mode in [Mode::Serial, PAR4] {
            let dst = dir.path().join(format!("dst{k}"));
            let t = ring.register(open(&dst, true, false)).unwrap();
            let job = copy_job(s, t, size);
            let config = SplitConfig::new().mode(mode).deadline(d);
            let mut drv = SplitDriver::new(&mut ring, &pool, job, config).unwrap();
            let done = finish_split(&mut drv, &mut ring);
            assert_eq!(
                (done.status, done.bytes, done.transferred),
                (Ok(()), size, size),
                "deadline {d:?}, {mode:?}"
            );
            ring.close(t).unwrap();
            verify::check_file_prefix(&dst, size, 71);
        }
    }
    check_teardown(&ring, &[&pool]);
}

/// Finding 11, library side: a copy onto overlapping bytes of the same file — the same
/// target, another descriptor of it, a symlink, a hard link, another node of the same
/// block device — is refused with a typed error before anything reaches the kernel, and
/// the file is unchanged. A copy between disjoint ranges of one file works.
#[test]
fn copies_onto_the_same_file_are_refused_unless_the_ranges_are_disjoint() {
    let dir = common::disk_dir();
    let size = 4 * CHUNK;
    let f = verify::file_in(dir.path(), "f", size, 73);
    let want = std::fs::read(&f).unwrap();
    let sym = dir.path().join("sym");
    std::os::unix::fs::symlink(&f, &sym).unwrap();
    let hard = dir.path().join("hard");
    std::fs::hard_link(&f, &hard).unwrap();
    let pool = pool(4, CHUNK as usize);
    let (mut ring, rw) = ring_with(&pool, open(&f, true, false));
    let s = ring.register(open(&f, false, false)).unwrap();
    let d_sym = ring.register(open(&sym, true, false)).unwrap();
    let d_hard = ring.register(open(&hard, true, false)).unwrap();
    let before = ring.stats().submitted;
    let copy = |src, src_offset, dst, dst_offset, len| Job::Copy {
        src,
        src_offset,
        dst,
        dst_offset,
        len,
    };
    for job in [
        copy(rw, 0, rw, 0, size),
        copy(s, 0, rw, 0, size),
        copy(s, 0, d_sym, 0, size),
        copy(s, 0, d_hard, 0, size),
        // Overlapping by one byte, either way.
        copy(s, 0, d_hard, CHUNK - 1, CHUNK),
        copy(s, CHUNK - 1, rw, 0, CHUNK),
        copy(s, 0, rw, 1, i64::MAX as u64 - 1),
    ] {
        let e = SplitDriver::new(&mut ring, &pool, job, SplitConfig::new()).unwrap_err();
        assert!(
            matches!(e.kind(), ErrorKind::InvalidInput { reason } if reason.contains("same storage")),
            "{job:?}: {e}"
        );
    }
    assert_eq!(ring.stats().submitted, before, "something reached the ring");
    assert_eq!(std::fs::read(&f).unwrap(), want, "the file changed");
    assert_eq!(pool.stats().free, 4);
    // Disjoint ranges of one file: the first half onto the second.
    let half = size / 2;
    let job = copy(s, 0, d_hard, half, half);
    let done = run_job(&mut ring, &pool, job, SplitConfig::new(), |d| d);
    assert_eq!((done.status, done.bytes), (Ok(()), half));
    let got = std::fs::read(&f).unwrap();
    assert_eq!(got[..half as usize], want[..half as usize]);
    assert_eq!(got[half as usize..], want[..half as usize]);
    for t in [rw, s, d_sym, d_hard] {
        ring.close(t).unwrap();
    }
    check_teardown(&ring, &[&pool]);
}

/// A block device opened through two nodes is one device: an overlapping copy is
/// refused. A `Job::Copy` of a whole device takes its size from the ring
/// (`FdInfo::size`, `BLKGETSIZE64`), not from `metadata().len()` (0).
#[test]
fn block_device_copies_use_the_device_size_and_refuse_the_same_device() {
    let size = 2 * (1 << 20) + 3 * 512;
    let dev = or_skip!(LoopDev::new(size, Some((BS, 74))));
    assert_eq!(std::fs::metadata(&dev.path).unwrap().len(), 0);
    let (dir, node) = common::disk_path("node");
    let rdev = std::fs::metadata(&dev.path).unwrap().rdev();
    let c = std::ffi::CString::new(node.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: `c` is a valid NUL-terminated path.
    let made = unsafe { libc::mknod(c.as_ptr(), libc::S_IFBLK | 0o600, rdev as libc::dev_t) };
    assert_eq!(made, 0, "mknod: {}", std::io::Error::last_os_error());
    let pool = pool(4, CHUNK as usize);
    let (mut ring, s) = ring_with(&pool, open(Path::new(&dev.path), false, false));
    let d = ring.register(open(&node, true, false)).unwrap();
    let len = ring.info(s).unwrap().size;
    assert_eq!(len, size);
    let job = copy_job(s, d, len);
    let e = SplitDriver::new(&mut ring, &pool, job, SplitConfig::new()).unwrap_err();
    assert!(matches!(e.kind(), ErrorKind::InvalidInput { .. }), "{e}");
    let out = dir.path().join("out");
    let o = ring.register(open(&out, true, false)).unwrap();
    let job = copy_job(s, o, len);
    let done = run_job(&mut ring, &pool, job, SplitConfig::new(), |d| d);
    assert_eq!((done.status, done.bytes), (Ok(()), size));
    assert_eq!(std::fs::metadata(&out).unwrap().len(), size);
    verify::check_file_prefix(&out, size, 74);
    for t in [s, d, o] {
        ring.close(t).unwrap();
    }
    check_teardown(&ring, &[&pool]);
}

/// Dropping a driver mid-flight abandons the request; its buffers must come back as soon
/// as its children's completions do — not only when its deadline timer fires (they waited
/// in the driver's completion queue, kept alive by the armed timer).
#[test]
fn dropping_a_driver_mid_flight_returns_its_buffers_before_the_deadline() {
    let size = 1u64 << 20;
    let (_dir, src) = verify::disk_file(size, 75);
    let pool = pool(4, CHUNK as usize);
    let (mut ring, s) = ring_with(&pool, open(&src, false, false));
    let deadline = Duration::from_secs(2);
    let job = Job::Read {
        src: s,
        offset: 0,
        len: size,
    };
    let mut drv =
        SplitDriver::new(&mut ring, &pool, job, SplitConfig::new().deadline(deadline)).unwrap();
    assert!(drv.process(&mut ring).unwrap().is_none());
    assert!(drv.in_flight() > 1, "children and the timer in flight");
    // The children complete and their buffers come back; then the timer fires.
    drop_mid_flight(&mut ring, &pool, drv, deadline, "children");
    close_and_check(&mut ring, &[s], &[&pool]);
}

/// Offsets past what a file offset (`loff_t`, 2⁶³ − 1) can address reached the kernel,
/// which failed them with `EINVAL`: they are bad input, refused with a typed error before
/// the kernel.
#[test]
fn ranges_past_the_largest_file_offset_are_refused_before_the_kernel() {
    let (dir, src) = verify::disk_file(1 << 20, 76);
    let pool = pool(4, CHUNK as usize);
    let (mut ring, s) = ring_with(&pool, open(&src, false, false));
    let d = ring
        .register(open(&dir.path().join("dst"), true, false))
        .unwrap();
    let before = ring.stats().submitted;
    let big = i64::MAX as u64;
    let read = |offset, len| Job::Read {
        src: s,
        offset,
        len,
    };
    let copy = |src_offset, dst_offset, len| copy_at((s, src_offset), (d, dst_offset), len);
    for job in [
        read(big + 1, 4096),
        read(u64::MAX - 1, 1),
        read(big - 10, 4096),
        read(0, u64::MAX),
        Job::Write {
            dst: d,
            offset: big,
            len: 1,
        },
        copy(0, big - 10, 4096),
        copy(big - 10, 0, 4096),
    ] {
        let e = SplitDriver::new(&mut ring, &pool, job, SplitConfig::new()).unwrap_err();
        assert!(
            matches!(e.kind(), ErrorKind::OffsetOutOfRange { .. }),
            "{job:?}: {e}"
        );
    }
    assert_eq!(
        ring.stats().submitted,
        before,
        "something reached the kernel"
    );
    // The last addressable bytes are fine (end of file: nothing to read).
    let done = SplitDriver::new(&mut ring, &pool, read(big - 4096, 4096), SplitConfig::new())
        .unwrap()
        .run(&mut ring)
        .unwrap();
    assert_eq!((done.status, done.bytes), (Ok(()), 0));
    close_and_check(&mut ring, &[s, d], &[&pool]);
}

/// A positional write to a descriptor opened `O_APPEND` lands at the end of the file,
/// whatever its offset: a write or copy job there would scatter its chunks in completion
/// order. Refused with a typed error before anything is written; reading through such a
/// descriptor is fine.
#[test]
fn append_only_destinations_are_refused() {
    let (dir, src) = verify::disk_file(4 * CHUNK, 77);
    let dst = dir.path().join("dst");
    std::fs::write(&dst, b"keep").unwrap();
    let pool = pool(4, CHUNK as usize);
    let (mut ring, s) = ring_with(&pool, open(&src, false, false));
    let d = ring
        .register(OpenOptions::new().append(true).open(&dst).unwrap())
        .unwrap();
    let before = ring.stats().submitted;
    for job in [
        copy_job(s, d, 4 * CHUNK),
        Job::Write {
            dst: d,
            offset: 0,
            len: CHUNK,
        },
    ] {
        let e = SplitDriver::new(&mut ring, &pool, job, SplitConfig::new()).unwrap_err();
        assert!(matches!(e.kind(), ErrorKind::AppendOnly), "{job:?}: {e}");
    }
    assert_eq!(ring.stats().submitted, before);
    assert_eq!(std::fs::read(&dst).unwrap(), b"keep");
    // Reading through an O_APPEND descriptor is positional as ever.
    let ra = ring
        .register(
            OpenOptions::new()
                .read(true)
                .append(true)
                .open(&src)
                .unwrap(),
        )
        .unwrap();
    let job = Job::Read {
        src: ra,
        offset: CHUNK,
        len: CHUNK,
    };
    let done = run_job(&mut ring, &pool, job, SplitConfig::new(), |d| d);
    assert_eq!((done.status, done.bytes), (Ok(()), CHUNK));
    for t in [s, d, ra] {
        ring.close(t).unwrap();
    }
    check_teardown(&ring, &[&pool]);
}

/// A loop device with partitions (`losetup -P`) over an image whose MBR holds one
/// partition at 1 MiB; detached on drop.
struct PartitionedLoop {
    disk: String,
    part: String,
    _dir: tempfile::TempDir,
}

impl PartitionedLoop {
    fn new() -> Option<PartitionedLoop> {
        let (dir, img) = common::disk_path("disk.img");
        let mut mbr = vec![0u8; 512];
        let e = &mut mbr[446..462];
        e[4] = 0x83; // Linux
        e[8..12].copy_from_slice(&2048u32.to_le_bytes()); // first LBA: 1 MiB
        e[12..16].copy_from_slice(&16384u32.to_le_bytes()); // 8 MiB
        mbr[510] = 0x55;
        mbr[511] = 0xAA;
        std::fs::write(&img, &mbr).unwrap();
        OpenOptions::new()
            .write(true)
            .open(&img)
            .unwrap()
            .set_len(32 << 20)
            .unwrap();
        let dev = LoopDev::attach(&img)?; // proves loop devices work here
        drop(dev);
        let out = std::process::Command::new("losetup")
            .args(["--find", "--show", "--partscan"])
            .arg(&img)
            .output()
            .unwrap();
        assert!(out.status.success(), "losetup -P: {out:?}");
        let disk = String::from_utf8(out.stdout).unwrap().trim().to_string();
        let name = disk.trim_start_matches("/dev/");
        let sys = format!("/sys/block/{name}/{name}p1/dev");
        if !Path::new(&sys).exists() {
            // The scan at attach does not always run; ask for it (util-linux's partx).
            let _ = std::process::Command::new("partx")
                .args(["-a", &disk])
                .status();
        }
        // The partition's own node, made from its sysfs device number (no udev here).
        let part = dir.path().join("p1");
        let p = PartitionedLoop {
            disk,
            part: part.to_string_lossy().into_owned(),
            _dir: dir,
        };
        let Some((maj, min)) = std::fs::read_to_string(&sys).ok().and_then(|s| {
            let (a, b) = s.trim().split_once(':')?;
            Some((a.parse::<u32>().ok()?, b.parse::<u32>().ok()?))
        }) else {
            common::skip("the kernel created no partition for losetup --partscan / partx -a");
            return None;
        };
        let c = std::ffi::CString::new(part.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: `c` is a valid NUL-terminated path.
        let made =
            unsafe { libc::mknod(c.as_ptr(), libc::S_IFBLK | 0o600, libc::makedev(maj, min)) };
        assert_eq!(made, 0, "mknod: {}", std::io::Error::last_os_error());
        Some(p)
    }
}

impl Drop for PartitionedLoop {
    fn drop(&mut self) {
        let _ = std::process::Command::new("losetup")
            .args(["-d", &self.disk])
            .status();
    }
}

/// Found by an outside attack: a copy from a whole disk onto its own partition (another
/// device number, the same bytes 1 MiB further) with overlapping ranges was accepted and
/// corrupted the data (serial chunks re-read what earlier chunks had overwritten). The
/// same storage is now recognised under any name — a partition at its start on its disk,
/// a loop device at its offset in its backing file — and overlapping copies are refused;
/// disjoint ranges still copy.
#[test]
fn copies_between_a_disk_its_partition_and_a_loop_backing_file_must_not_overlap() {
    let pl = or_skip!(PartitionedLoop::new());
    let mut ring = Ring::new().unwrap();
    let bufs = pool(4, CHUNK as usize);
    ring.register_pool(&bufs);
    let disk = ring
        .register(open(Path::new(&pl.disk), true, true))
        .unwrap();
    let part = ring
        .register(open(Path::new(&pl.part), true, true))
        .unwrap();
    let backing = ring
        .register(open(&pl._dir.path().join("disk.img"), true, false))
        .unwrap();
    let mib = 1u64 << 20;
    let refused = |ring: &mut Ring, src, so, dst, dof, len| {
        let job = Job::Copy {
            src,
            src_offset: so,
            dst,
            dst_offset: dof,
            len,
        };
        let enters = ring.stats().enters;
        let r = SplitDriver::new(ring, &bufs, job, SplitConfig::new().mode(Mode::Serial));
        match r {
            Err(e) => {
                eprintln!("REFUSED: {e}");
                assert!(matches!(e.kind(), ErrorKind::InvalidInput { .. }), "{e}");
                assert_eq!(ring.stats().enters, enters);
                true
            }
            Ok(_) => false,
        }
    };
    // disk [0, 8M) onto partition [0, 8M) = disk [1M, 9M): overlap.
    assert!(
        refused(&mut ring, disk, 0, part, 0, 8 * mib),
        "disk onto its partition"
    );
    assert!(
        refused(&mut ring, part, 0, disk, 0, 2 * mib),
        "partition onto its disk"
    );
    // The loop device's backing file holds the same bytes at the same offsets.
    assert!(
        refused(&mut ring, backing, 0, part, 0, mib + 4096),
        "backing file onto the partition"
    );
    assert!(
        refused(&mut ring, disk, 4 * mib, backing, 4 * mib + 512, mib),
        "disk onto its backing file"
    );
    // Disjoint: disk [0, 1M) onto partition [0, 1M) = disk [1M, 2M) — allowed, and right.
    let mut w = vec![0u8; mib as usize];
    for (i, c) in w.chunks_mut(8).enumerate() {
        c.copy_from_slice(&(i as u64).to_le_bytes());
    }
    w[..512].copy_from_slice(&std::fs::read(pl._dir.path().join("disk.img")).unwrap()[..512]);
    {
        use std::os::unix::fs::FileExt;
        let f = OpenOptions::new().write(true).open(&pl.disk).unwrap();
        f.write_all_at(&w, 0).unwrap();
        f.sync_all().unwrap();
    }
    let job = copy_job(disk, part, mib);
    let done = run_job(&mut ring, &bufs, job, SplitConfig::new(), |d| d);
    assert_eq!((done.status, done.bytes), (Ok(()), mib));
    let mut got = vec![0u8; mib as usize];
    {
        use std::os::unix::fs::FileExt;
        let f = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECT)
            .open(&pl.disk)
            .unwrap();
        // O_DIRECT read into an aligned pool buffer.
        let p1 = pool(1, mib as usize);
        let mut b = p1.try_get().unwrap();
        assert_eq!(f.read_at(b.capacity_mut(), mib).unwrap(), mib as usize);
        got.copy_from_slice(&b.capacity_mut()[..mib as usize]);
    }
    assert!(got == w, "the disjoint copy differs");
    for t in [disk, part, backing] {
        ring.close(t).unwrap();
    }
    check_teardown(&ring, &[&bufs]);
}
