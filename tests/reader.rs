//! `ContinuousReader` against real sources: buffered and O_DIRECT files, a loop block
//! device, a pipe, a named FIFO, a socket pair, a TCP connection, a pty in raw mode, and
//! `/proc/self/mem` (a real file whose reads fail with `EIO` at unmapped addresses — a
//! fault we can place and heal). Every test verifies content (per-block crc32c patterns
//! that encode the offset), checks exactly-once delivery, and checks the teardown
//! invariants (every operation completed once, every slot back in its pool).

mod common;

use common::or_skip;

use std::cell::{Cell, RefCell};
use std::fs::{File, OpenOptions};
use std::hash::Hasher;
use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::drivers::{check_spans, on_eio};
use common::fd::{fifo_in, pipe, raw_pty, slow_writer};
use common::{check_teardown, close_and_check, open, ring_with, verify, LoopDev};
use iocomplete::reader::{Callbacks, ContinuousReaderBuilder, Local, Shared};
use iocomplete::{
    BufferPool, CancelHandle, ContinuousReader, Dispatch, Driver, ErrorKind, FdKind, FinishReason,
    Op, PoolBuf, ReaderReport, Restart, Ring, StreamReads, Target,
};

const BS: usize = 4096;
const HDR: usize = 24;
/// Written into every slot's header before a run; the kernel must never touch it.
const HDR_BYTE: u8 = 0x5A;

fn pool(slots: usize, len: usize) -> BufferPool {
    let pool = common::pool_hdr(slots, len, HDR);
    let mut all = Vec::new();
    while let Ok(mut b) = pool.try_get() {
        b.header_mut().fill(HDR_BYTE);
        all.push(b);
    }
    pool
}

fn check_header(buf: &PoolBuf) {
    assert_eq!(buf.header().len(), HDR);
    assert!(
        buf.header().iter().all(|&b| b == HDR_BYTE),
        "header bytes touched"
    );
    assert_eq!(buf.frame().len(), HDR + buf.len());
    assert_eq!(buf.frame().as_ptr() as usize + HDR, buf.data_ptr() as usize);
}

// ---- positional sources ---------------------------------------------------------------

/// What a positional handler saw: `(offset, len)` in delivery order.
#[derive(Default)]
struct Seen {
    spans: Mutex<Vec<(u64, usize)>>,
}

impl Seen {
    fn spans(&self) -> Vec<(u64, usize)> {
        self.spans.lock().unwrap().clone()
    }
    fn bytes(&self) -> u64 {
        self.spans().iter().map(|s| s.1 as u64).sum()
    }
}

/// `on_read` for verify-pattern sources: header untouched, every block checked in place.
fn verify_handler(seed: u64, seen: &Arc<Seen>) -> impl Fn(PoolBuf, u64) + Send + Sync + 'static {
    let seen = seen.clone();
    move |buf: PoolBuf, off: u64| {
        check_header(&buf);
        assert!(!buf.is_empty());
        verify::check_range(buf.data(), BS, seed, off).unwrap();
        seen.spans.lock().unwrap().push((off, buf.len()));
    }
}

/// Check that the spans are disjoint (no byte delivered twice), without requiring a cover.
fn check_disjoint(spans: &[(u64, usize)]) {
    let mut s = spans.to_vec();
    s.sort_unstable();
    for w in s.windows(2) {
        assert!(w[0].0 + w[0].1 as u64 <= w[1].0, "overlap: {w:?}");
    }
}

type Configure = dyn FnOnce(ContinuousReaderBuilder) -> ContinuousReaderBuilder;

/// Read `t` with a verify handler; returns the report and the delivered spans.
fn read_verify(
    ring: &mut Ring,
    pool: &BufferPool,
    t: Target,
    seed: u64,
    configure: Box<Configure>,
) -> (ReaderReport, Vec<(u64, usize)>) {
    let b = configure(ContinuousReader::builder(t, pool));
    let seen = Arc::new(Seen::default());
    let mut reader = b
        .on_read(verify_handler(seed, &seen))
        .on_failed(|e| panic!("unexpected failure {e}"))
        .build(ring)
        .unwrap();
    let report = reader.run(ring).unwrap();
    (report, seen.spans())
}

#[test]
fn buffered_files_every_size_pending_depth_and_order() {
    const CH: usize = 16 * 1024;
    let dir = common::disk_dir();
    let sizes = [
        0,
        100,
        5 * CH as u64,                  // a multiple of the chunk
        5 * CH as u64 + 3 * BS as u64,  // of the block, not the chunk
        5 * CH as u64 + 1000,           // of neither
        40 * CH as u64 + 7 * BS as u64, // longer than 64 reads in flight
    ];
    let mut ring = Ring::new().unwrap();
    let pool = pool(2 * 64 + 2, CH);
    ring.register_pool(&pool);
    let mut runs = 0;
    for (i, &size) in sizes.iter().enumerate() {
        let seed = 100 + i as u64;
        let path = dir.path().join(format!("f{i}"));
        verify::make_file(&path, size, BS, seed);
        for pending in [1u32, 2, 8, 64] {
            for ordered in [false, true] {
                let t = ring.register(File::open(&path).unwrap()).unwrap();
                let (report, spans) = read_verify(
                    &mut ring,
                    &pool,
                    t,
                    seed,
                    Box::new(move |b| b.pending_reads(pending).ordered(ordered)),
                );
                assert_eq!(
                    report.reason,
                    FinishReason::Eof,
                    "size {size} pending {pending}"
                );
                assert_eq!(report.bytes, size);
                assert_eq!(report.failures, 0);
                check_spans(&spans, 0, size, ordered);
                close_and_check(&mut ring, &[t], &[&pool]);
                runs += 1;
            }
        }
    }
    assert_eq!(runs, sizes.len() * 8);
}

#[test]
fn file_ranges_and_worker_dispatch() {
    const CH: usize = 16 * 1024;
    let (_dir, path) = common::disk_path("r");
    let size = 64 * CH as u64 + 123;
    verify::make_file(&path, size, BS, 7);
    let mut ring = Ring::new().unwrap();
    let pool = pool(24, CH);
    ring.register_pool(&pool);
    let cases: [(u64, Option<u64>, bool); 4] = [
        (BS as u64, Some(3 * CH as u64 + BS as u64 + 17), false),
        (5 * CH as u64 + 9, Some(40 * CH as u64), true),
        (60 * CH as u64, None, true),            // from an offset to EOF
        (0, Some(size + 10 * CH as u64), false), // a range past EOF ends at EOF
    ];
    for (start, end, ordered) in cases {
        for dispatch in [Dispatch::Inline, Dispatch::Workers(3)] {
            let t = ring.register(File::open(&path).unwrap()).unwrap();
            let (report, spans) = read_verify(
                &mut ring,
                &pool,
                t,
                7,
                Box::new(move |b| {
                    let b = b.pending_reads(8).ordered(ordered).dispatch(dispatch);
                    match end {
                        Some(e) => b.range(start, e),
                        None => b.start_at(start),
                    }
                }),
            );
            let stop = end.unwrap_or(size).min(size);
            let want = if end.is_some_and(|e| e <= size) {
                FinishReason::EndOfRange
            } else {
                FinishReason::Eof
            };
            assert_eq!(report.reason, want, "{start}..{end:?}");
            check_spans(&spans, start, stop, ordered && dispatch == Dispatch::Inline);
            close_and_check(&mut ring, &[t], &[&pool]);
        }
    }
}

#[test]
fn direct_files_aligned_and_unaligned_sizes() {
    const CH: usize = 64 * 1024;
    let dir = common::disk_dir();
    let mut ring = Ring::new().unwrap();
    let pool = pool(20, CH);
    ring.register_pool(&pool);
    let sizes = [
        16 * CH as u64,
        16 * CH as u64 + BS as u64,
        16 * CH as u64 + 1000,
        700,
    ];
    for (i, &size) in sizes.iter().enumerate() {
        let path = dir.path().join(format!("d{i}"));
        verify::make_file(&path, size, BS, 20 + i as u64);
        for (pending, ordered) in [(1, true), (8, false), (8, true)] {
            let t = ring.register(open(&path, false, true)).unwrap();
            let info = ring.info(t).unwrap();
            assert!(info.direct && info.offset_align >= 512);
            let (report, spans) = read_verify(
                &mut ring,
                &pool,
                t,
                20 + i as u64,
                Box::new(move |b| b.pending_reads(pending).ordered(ordered)),
            );
            assert_eq!(report.reason, FinishReason::Eof);
            assert_eq!(report.bytes, size, "size {size}");
            check_spans(&spans, 0, size, ordered);
            close_and_check(&mut ring, &[t], &[&pool]);
        }
    }
}

#[test]
fn direct_io_settings_that_do_not_fit_are_typed_errors_before_the_kernel() {
    let (_dir, path) = verify::disk_file(1 << 20, 3);
    let mut ring = Ring::new().unwrap();
    let pool = pool(8, 64 * 1024);
    let t = ring.register(open(&path, false, true)).unwrap();
    let align = ring.info(t).unwrap().offset_align;
    let build = |ring: &mut Ring, b: ContinuousReaderBuilder| {
        b.on_read(|_, _| {})
            .on_failed(|_| Restart::No)
            .build(ring)
            .unwrap_err()
            .kind()
    };
    let k = build(
        &mut ring,
        ContinuousReader::builder(t, &pool).transfer_len(1000),
    );
    assert_eq!(
        k,
        ErrorKind::Misaligned {
            what: "length",
            value: 1000,
            align
        }
    );
    let k = build(
        &mut ring,
        ContinuousReader::builder(t, &pool).range(100, 8192),
    );
    assert!(matches!(
        k,
        ErrorKind::Misaligned {
            what: "offset",
            value: 100,
            ..
        }
    ));
    let k = build(
        &mut ring,
        ContinuousReader::builder(t, &pool).transfer_len(128 * 1024),
    );
    assert!(matches!(k, ErrorKind::BufferTooSmall { need: 131072, .. }));
    let k = build(
        &mut ring,
        ContinuousReader::builder(t, &pool).pending_reads(9),
    );
    assert!(matches!(
        k,
        ErrorKind::PoolTooSmall {
            need: 9,
            have: 8,
            ..
        }
    ));
    // Ordered reads held back keep their slots: the window must leave one free.
    let k = build(
        &mut ring,
        ContinuousReader::builder(t, &pool)
            .pending_reads(4)
            .ordered(true)
            .reorder_window(8),
    );
    assert_eq!(
        k,
        ErrorKind::PoolTooSmall {
            what: "reorder_window (plus one)",
            need: 9,
            have: 8
        }
    );
    let k = build(
        &mut ring,
        ContinuousReader::builder(t, &pool).dispatch(Dispatch::Workers(0)),
    );
    assert!(matches!(
        k,
        ErrorKind::OutOfRange {
            what: "Dispatch::Workers",
            min: 1,
            ..
        }
    ));
    let wronly = ring
        .register(OpenOptions::new().write(true).open(&path).unwrap())
        .unwrap();
    let k = build(&mut ring, ContinuousReader::builder(wronly, &pool));
    assert_eq!(k, ErrorKind::NotReadable);
    let (rx, _tx) = pipe();
    let p = ring.register(rx).unwrap();
    let k = build(&mut ring, ContinuousReader::builder(p, &pool).range(0, 10));
    assert!(matches!(
        k,
        ErrorKind::WrongTargetKind {
            have: FdKind::Pipe,
            ..
        }
    ));
    // Nothing reached the kernel, nothing leaked.
    assert_eq!(ring.stats().submitted, 0);
    check_teardown(&ring, &[&pool]);
}

#[test]
fn loop_block_device_direct() {
    let size = 4u64 << 20;
    let dev = or_skip!(LoopDev::new(size, Some((BS, 77))));
    let mut ring = Ring::new().unwrap();
    let pool = pool(20, 64 * 1024);
    ring.register_pool(&pool);
    for (range, ordered, dispatch) in [
        (None, true, Dispatch::Inline),
        (Some((64 * 1024, 3 << 20)), false, Dispatch::Workers(2)),
    ] {
        let t = ring.register(dev.open(false)).unwrap();
        let info = ring.info(t).unwrap();
        assert_eq!(info.kind, iocomplete::FdKind::BlockDevice);
        assert!(info.direct);
        let (report, spans) = read_verify(
            &mut ring,
            &pool,
            t,
            77,
            Box::new(move |b| {
                let b = b.pending_reads(8).ordered(ordered).dispatch(dispatch);
                match range {
                    Some((s, e)) => b.range(s, e),
                    None => b,
                }
            }),
        );
        let (s, e) = range.unwrap_or((0, size));
        assert_eq!(report.bytes, e - s);
        check_spans(&spans, s, e, ordered);
        close_and_check(&mut ring, &[t], &[&pool]);
    }
}

// ---- faults on a positional source: /proc/self/mem -----------------------------------

/// `pages` pages of anonymous memory filled with verify blocks whose "offset" is their
/// address, read through `/proc/self/mem`: a page made a hole with `hole` makes reads of
/// it fail with a real `EIO` from the kernel; `heal` maps it again with its content.
///
/// A hole is never unmapped: the tests share one address space, and a free page-sized gap
/// is where the kernel puts the next page-sized mapping of whichever test asks (see
/// `memfile_holes_are_never_handed_to_other_mappings`). A hole is a page of an empty
/// memfd instead — past its end, so the kernel cannot fault it in and the read fails with
/// `EIO` — and the whole range stays this `MemFile`'s until it is dropped.
struct MemFile {
    base: u64,
    len: u64,
    seed: u64,
    holes: Mutex<Vec<u64>>,
    /// An empty memfd whose (nonexistent) first page backs every hole.
    empty: OwnedFd,
}

impl MemFile {
    fn new(pages: usize, seed: u64) -> MemFile {
        let len = pages * BS;
        // SAFETY: a fresh private anonymous mapping; the result is checked.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(p, libc::MAP_FAILED);
        // SAFETY: a NUL-terminated name and no flags; the result is checked.
        let fd = unsafe { libc::memfd_create(c"memfile-hole".as_ptr(), libc::MFD_CLOEXEC) };
        assert!(fd >= 0, "memfd_create: {}", std::io::Error::last_os_error());
        let m = MemFile {
            base: p as u64,
            len: len as u64,
            seed,
            holes: Mutex::new(Vec::new()),
            // SAFETY: a fresh descriptor owned by nobody else.
            empty: unsafe { OwnedFd::from_raw_fd(fd) },
        };
        for page in 0..pages as u64 {
            m.fill(m.base + page * BS as u64);
        }
        m
    }

    fn fill(&self, addr: u64) {
        // SAFETY: `addr` is a page of our live mapping, which nothing else references.
        let block = unsafe { std::slice::from_raw_parts_mut(addr as *mut u8, BS) };
        verify::fill_block(block, addr, self.seed);
    }

    fn hole(&self, page: u64) {
        assert!(page < self.len / BS as u64);
        let addr = self.base + page * BS as u64;
        // SAFETY: replaces one page of our own mapping (nothing holds a reference into it)
        // with the first page of the empty memfd, in place: the range never has a gap.
        let p = unsafe {
            libc::mmap(
                addr as *mut _,
                BS,
                libc::PROT_READ,
                libc::MAP_SHARED | libc::MAP_FIXED,
                self.empty.as_raw_fd(),
                0,
            )
        };
        assert_eq!(p as u64, addr, "could not make a hole");
        self.holes.lock().unwrap().push(addr);
    }

    /// Map the lowest hole again (with its content). Returns false if there is none.
    fn heal_lowest(&self) -> bool {
        let mut holes = self.holes.lock().unwrap();
        holes.sort_unstable();
        if holes.is_empty() {
            return false;
        }
        let addr = holes.remove(0);
        // SAFETY: replaces a hole — still our mapping (of the memfd), nobody else's — with
        // fresh anonymous memory, in place.
        let p = unsafe {
            libc::mmap(
                addr as *mut _,
                BS,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
                -1,
                0,
            )
        };
        assert_eq!(p as u64, addr, "could not map the hole again");
        self.fill(addr);
        true
    }
}

impl Drop for MemFile {
    fn drop(&mut self) {
        // SAFETY: unmaps our own mapping, holes included (they are ours too, see `hole`).
        unsafe { libc::munmap(self.base as *mut _, self.len as usize) };
    }
}

struct FaultCtx {
    mem: MemFile,
    seen: Seen,
    in_read: AtomicUsize,
    max_in_read: AtomicUsize,
    in_failed: AtomicBool,
    failures: AtomicUsize,
    slow: bool,
}

#[test]
fn restart_after_eio_delivers_everything_once_inline_and_on_workers() {
    for (dispatch, ordered, pending) in [
        (Dispatch::Inline, true, 4),
        (Dispatch::Inline, false, 8),
        (Dispatch::Workers(4), false, 8),
        (Dispatch::Workers(2), true, 8),
    ] {
        let mem = MemFile::new(96, 5);
        mem.hole(20);
        mem.hole(21);
        mem.hole(57);
        let (base, end) = (mem.base, mem.base + mem.len);
        let pool = pool(24, 2 * BS);
        let (mut ring, t) = ring_with(&pool, File::open("/proc/self/mem").unwrap());
        let ctx = Arc::new(FaultCtx {
            mem,
            seen: Seen::default(),
            in_read: AtomicUsize::new(0),
            max_in_read: AtomicUsize::new(0),
            in_failed: AtomicBool::new(false),
            failures: AtomicUsize::new(0),
            slow: matches!(dispatch, Dispatch::Workers(_)),
        });
        let c = ctx.clone();
        let on_read = move |buf: PoolBuf, off: u64| {
            let n = c.in_read.fetch_add(1, Ordering::SeqCst) + 1;
            c.max_in_read.fetch_max(n, Ordering::SeqCst);
            assert!(
                !c.in_failed.load(Ordering::SeqCst),
                "on_read runs during on_failed"
            );
            check_header(&buf);
            verify::check_range(buf.data(), BS, c.mem.seed, off).unwrap();
            c.seen.spans.lock().unwrap().push((off, buf.len()));
            if c.slow {
                std::thread::sleep(Duration::from_micros(300));
            }
            c.in_read.fetch_sub(1, Ordering::SeqCst);
        };
        let c = ctx.clone();
        let on_failed = move |e: &iocomplete::Error| {
            c.in_failed.store(true, Ordering::SeqCst);
            assert_eq!(
                c.in_read.load(Ordering::SeqCst),
                0,
                "on_failed overlaps on_read"
            );
            assert_eq!(e.kind(), ErrorKind::Os(libc::EIO));
            c.failures.fetch_add(1, Ordering::SeqCst);
            // Give on_read a chance to (wrongly) start while we are in here.
            std::thread::sleep(Duration::from_millis(2));
            let healed = c.mem.heal_lowest();
            c.in_failed.store(false, Ordering::SeqCst);
            if healed {
                Restart::Yes
            } else {
                Restart::No
            }
        };
        let mut reader = ContinuousReader::builder(t, &pool)
            .pending_reads(pending)
            .ordered(ordered)
            .range(base, end)
            .dispatch(dispatch)
            .on_read(on_read)
            .on_failed(on_failed)
            .build(&mut ring)
            .unwrap();
        let report = reader.run(&mut ring).unwrap();
        assert_eq!(report.reason, FinishReason::EndOfRange, "{dispatch:?}");
        // Pages 20 and 21 may fail as one failure or two, depending on where reads land.
        let failures = ctx.failures.load(Ordering::SeqCst) as u64;
        assert!((2..=3).contains(&failures), "{failures} failures");
        assert_eq!(report.failures, failures);
        assert_eq!(report.restarts, failures);
        check_spans(
            &ctx.seen.spans(),
            base,
            end,
            ordered && dispatch == Dispatch::Inline,
        );
        if let Dispatch::Workers(_) = dispatch {
            assert!(
                ctx.max_in_read.load(Ordering::SeqCst) >= 2,
                "on_read never re-entered on workers"
            );
        } else {
            assert_eq!(ctx.max_in_read.load(Ordering::SeqCst), 1);
        }
        close_and_check(&mut ring, &[t], &[&pool]);
    }
}

#[test]
fn failure_without_restart_ends_with_one_final_result() {
    let mem = MemFile::new(64, 9);
    mem.hole(33);
    let (base, end) = (mem.base, mem.base + mem.len);
    let mut ring = Ring::new().unwrap();
    let pool = pool(16, BS);
    let t = ring
        .register(File::open("/proc/self/mem").unwrap())
        .unwrap();
    let (calls, on_failed) = on_eio(|| Restart::No);
    let seen = Arc::new(Seen::default());
    let mut reader = ContinuousReader::builder(t, &pool)
        .pending_reads(6)
        .ordered(true)
        .range(base, end)
        .on_read(verify_handler(9, &seen))
        .on_failed(on_failed)
        .build(&mut ring)
        .unwrap();
    let report = reader.run(&mut ring).unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(
        report.reason,
        FinishReason::Failed(iocomplete::Error::from_errno(libc::EIO))
    );
    // Ordered: exactly the bytes before the hole, in order, once.
    check_spans(&seen.spans(), base, base + 33 * BS as u64, true);
    drop(mem);
    close_and_check(&mut ring, &[t], &[&pool]);
}

/// A `MemFile` hole must stay ours. The address space is shared by the tests running in
/// parallel: a hole that is plainly unmapped is the highest free 4 KiB gap, so the next
/// page-sized mapping of another test (a provided-buffer ring's entries are one page)
/// lands in it. The reader then read that test's memory ("bad magic") and panicked, and
/// `MemFile::drop` — or the drop of a `MemFile` whose hole was never healed — unmapped the
/// other test's page under it: SIGSEGV in `BufRingState::offer_one` of
/// `multishot_readers_sharing_a_small_pool_all_get_all_their_data`, 1 run in 20 of the
/// whole binary with `--test-threads=8`. Here another thread keeps asking for fresh pages
/// while the reader runs over two holes: none may land inside the `MemFile`, the reader
/// fails at each hole with `EIO` and, healed, delivers every byte once; all the pages the
/// other thread got are still mapped after the `MemFile` is gone.
#[test]
fn memfile_holes_are_never_handed_to_other_mappings() {
    // Bound on the pages asked for: stop earlier once the kernel places one below the
    // `MemFile` (it fills the highest free gap first, so no gap above it fits a page).
    const MAX_PAGES: usize = 1 << 16;
    let mem = MemFile::new(32, 12);
    mem.hole(7);
    mem.hole(8);
    mem.hole(25);
    let (base, end) = (mem.base, mem.base + mem.len);
    let (start_tx, start_rx) = std::sync::mpsc::channel::<()>();
    let mapper = std::thread::spawn(move || {
        start_rx.recv().unwrap();
        let mut pages = Vec::new();
        for _ in 0..MAX_PAGES {
            // SAFETY: a fresh private anonymous page; the result is checked.
            let p = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    BS,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                    -1,
                    0,
                )
            };
            assert_ne!(p, libc::MAP_FAILED);
            pages.push(p as u64);
            if (p as u64) < base {
                break;
            }
        }
        pages
    });
    let mut ring = Ring::new().unwrap();
    let pool = pool(8, BS);
    let t = ring
        .register(File::open("/proc/self/mem").unwrap())
        .unwrap();
    let failures = Arc::new(AtomicUsize::new(0));
    let f2 = failures.clone();
    let seen = Arc::new(Seen::default());
    let mem = Arc::new(mem);
    let m2 = mem.clone();
    let mut reader = ContinuousReader::builder(t, &pool)
        .pending_reads(2)
        .ordered(true)
        .range(base, end)
        .on_read(verify_handler(12, &seen))
        .on_failed(move |e: &iocomplete::Error| {
            assert_eq!(e.kind(), ErrorKind::Os(libc::EIO));
            f2.fetch_add(1, Ordering::SeqCst);
            if f2.load(Ordering::SeqCst) == 1 {
                // The first failure: let the other thread map while holes remain.
                start_tx.send(()).unwrap();
                std::thread::sleep(Duration::from_millis(50));
            }
            if m2.heal_lowest() {
                Restart::Yes
            } else {
                Restart::No
            }
        })
        .build(&mut ring)
        .unwrap();
    let report = reader.run(&mut ring).unwrap();
    // The reader's `on_failed` holds the other reference to `mem`.
    drop(reader);
    let pages = mapper.join().unwrap();
    // The check is conclusive only if the kernel ran out of gaps above the `MemFile`.
    assert!(
        pages.last().is_some_and(|&p| p < base),
        "{} pages mapped, none below the MemFile",
        pages.len()
    );
    let inside: Vec<u64> = pages
        .iter()
        .copied()
        .filter(|p| (base..end).contains(p))
        .collect();
    assert!(
        inside.is_empty(),
        "pages mapped by another thread landed inside the MemFile {base:#x}..{end:#x} at \
         {inside:x?}"
    );
    assert_eq!(report.reason, FinishReason::EndOfRange);
    assert_eq!(failures.load(Ordering::SeqCst) as u64, report.failures);
    assert!(report.failures >= 2, "{} failures", report.failures);
    check_spans(&seen.spans(), base, end, true);
    drop(mem);
    for &p in &pages {
        // SAFETY: a page this test mapped; still mapped unless the MemFile took it.
        unsafe {
            (p as *mut u8).write_volatile(1);
            libc::munmap(p as *mut _, BS);
        }
    }
    close_and_check(&mut ring, &[t], &[&pool]);
}

/// The user closes the source while reads are in flight. Reads the kernel already has
/// finish normally; reads queued but not yet submitted fail in the kernel (`EBADF`: the
/// registered-file slot is gone); later ones are refused by the ring (`StaleTarget`).
/// `on_failed` restarts once, the restart fails again, and the reader ends with that
/// error as its one final result.
#[test]
fn closing_the_target_mid_run_fails_then_restart_fails_again() {
    let (_dir, path) = verify::disk_file(4 << 20, 11);
    let pool = pool(8, 16 * 1024);
    let (mut ring, t) = ring_with(&pool, File::open(&path).unwrap());
    let failed = Arc::new(Mutex::new(Vec::new()));
    let f2 = failed.clone();
    let seen = Arc::new(Seen::default());
    let mut reader = ContinuousReader::builder(t, &pool)
        .pending_reads(4)
        .on_read(verify_handler(11, &seen))
        .on_failed(move |e| {
            let mut f = f2.lock().unwrap();
            f.push(*e);
            if f.len() == 1 {
                Restart::Yes
            } else {
                Restart::No
            }
        })
        .build(&mut ring)
        .unwrap();
    let mut closed = false;
    let report = loop {
        if let Some(r) = reader.step(&mut ring, None).unwrap() {
            break r;
        }
        if !closed && seen.bytes() > 0 {
            ring.close(t).unwrap();
            closed = true;
        }
    };
    let errs = failed.lock().unwrap().clone();
    assert_eq!(errs.len(), 2, "{errs:?}");
    assert!(
        errs.iter().all(|e| matches!(
            e.kind(),
            ErrorKind::StaleTarget | ErrorKind::Os(libc::EBADF)
        )),
        "{errs:?}"
    );
    // The restart's reads never reach the kernel: the ring refuses them.
    assert_eq!(errs[1].kind(), ErrorKind::StaleTarget);
    assert_eq!(report.reason, FinishReason::Failed(errs[1]));
    assert_eq!((report.failures, report.restarts), (2, 1));
    let spans = seen.spans();
    check_disjoint(&spans);
    assert!(report.bytes > 0 && report.bytes < 4 << 20);
    drop(reader);
    check_teardown(&ring, &[&pool]);
}

// ---- streams --------------------------------------------------------------------------

/// What a stream handler saw.
#[derive(Default)]
struct StreamSeen {
    want: Vec<u8>,
    next: AtomicU64,
    deliveries: AtomicU64,
    cancel_at: Option<u64>,
    cancel: Mutex<Option<CancelHandle>>,
    /// Buffers kept by the handler (to drain the pool on purpose).
    kept: Mutex<Vec<PoolBuf>>,
    keep: bool,
}

impl StreamSeen {
    fn new(want: Vec<u8>) -> StreamSeen {
        StreamSeen {
            want,
            ..StreamSeen::default()
        }
    }
}

/// Streams: deliveries in order, contiguous, byte-exact.
fn stream_on_read(s: &StreamSeen, buf: PoolBuf, off: u64) {
    check_header(&buf);
    assert_eq!(
        off,
        s.next.load(Ordering::SeqCst),
        "stream delivery out of order"
    );
    let end = off as usize + buf.len();
    assert!(end <= s.want.len(), "more bytes than were written");
    assert!(
        buf.data() == &s.want[off as usize..end],
        "stream bytes differ at {off}"
    );
    s.next.store(end as u64, Ordering::SeqCst);
    s.deliveries.fetch_add(1, Ordering::SeqCst);
    if s.cancel_at.is_some_and(|n| end as u64 >= n) {
        if let Some(h) = &*s.cancel.lock().unwrap() {
            h.cancel();
        }
    }
    if s.keep {
        s.kept.lock().unwrap().push(buf);
    }
}

/// `b` built on `ring` into a reader that expects `seen`'s bytes (any failure fails the
/// test); the reader and what its handler sees.
fn stream_reader(
    b: ContinuousReaderBuilder,
    ring: &mut Ring,
    seen: StreamSeen,
) -> (ContinuousReader, Arc<StreamSeen>) {
    let seen = Arc::new(seen);
    let s = seen.clone();
    let reader = b
        .on_read(move |buf, off| stream_on_read(&s, buf, off))
        .on_failed(|e| panic!("unexpected failure {e}"))
        .build(ring)
        .unwrap();
    (reader, seen)
}

/// Every stream mode `ring`'s kernel has: auto and single-shot, and multishot.
fn stream_modes(ring: &Ring) -> Vec<StreamReads> {
    let mut modes = vec![StreamReads::Auto, StreamReads::SingleShot];
    if ring.capabilities().read_multishot {
        modes.push(StreamReads::Multishot);
    }
    modes
}

fn run_stream(
    ring: &mut Ring,
    pool: &BufferPool,
    t: Target,
    seen: StreamSeen,
    mode: StreamReads,
) -> (ReaderReport, Arc<StreamSeen>) {
    let b = ContinuousReader::builder(t, pool)
        .stream_reads(mode)
        .transfer_len(pool.geometry().capacity as u32);
    *seen.cancel.lock().unwrap() = Some(b.cancel_handle());
    let (mut reader, seen) = stream_reader(b, ring, seen);
    (reader.run(ring).unwrap(), seen)
}

#[test]
fn pipe_with_a_slow_writer_multishot_and_single_shot() {
    let want = verify::expected(BS, 31, 0, 300_000);
    for mode in [StreamReads::Auto, StreamReads::SingleShot] {
        let (rx, tx) = pipe();
        let pool = pool(8, BS);
        let (mut ring, t) = ring_with(&pool, rx);
        let w = slow_writer(tx, want.clone(), 4);
        let (report, seen) = run_stream(&mut ring, &pool, t, StreamSeen::new(want.clone()), mode);
        w.join().unwrap();
        assert_eq!(report.reason, FinishReason::Eof);
        assert_eq!(report.bytes, want.len() as u64);
        assert_eq!(seen.next.load(Ordering::SeqCst), want.len() as u64);
        let multishot = mode == StreamReads::Auto && ring.capabilities().read_multishot;
        assert_eq!(report.multishot, multishot);
        close_and_check(&mut ring, &[t], &[&pool]);
    }
}

/// A named FIFO opened `O_NONBLOCK`, empty when the reader starts.
#[test]
fn named_fifo_nonblocking_waits_for_readiness() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fifo");
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let want = verify::expected(BS, 32, 0, 200_000);
    for mode in [StreamReads::SingleShot, StreamReads::Auto] {
        // Non-blocking read end first (so its open does not wait), then the writer.
        let rx = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&path)
            .unwrap();
        let tx = OpenOptions::new().write(true).open(&path).unwrap();
        let mut ring = Ring::new().unwrap();
        let pool = pool(8, BS);
        let t = ring.register(rx).unwrap();
        let info = ring.info(t).unwrap();
        assert!(info.nonblocking && info.kind == iocomplete::FdKind::Pipe);
        // The writer starts late: the first read finds the FIFO empty (EAGAIN).
        let w = {
            let want = want.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(20));
                slow_writer(tx.into(), want, 2).join().unwrap();
            })
        };
        let (report, _) = run_stream(&mut ring, &pool, t, StreamSeen::new(want.clone()), mode);
        w.join().unwrap();
        assert_eq!(report.reason, FinishReason::Eof);
        assert_eq!(report.bytes, want.len() as u64);
        // Linux 6.18's io_uring arms its own poll for a pollable O_NONBLOCK file, so an
        // empty FIFO makes the read wait rather than fail with EAGAIN; a kernel that does
        // return EAGAIN gets a readiness poll from the reader. Either way: no failure.
        assert_eq!(report.failures, 0);
        close_and_check(&mut ring, &[t], &[&pool]);
    }
}

#[test]
fn socketpair_stream() {
    let want = verify::expected(BS, 33, 0, 400_000);
    let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
    let pool = pool(16, 8 * 1024);
    let (mut ring, t) = ring_with(&pool, a);
    let w = slow_writer(b.into(), want.clone(), 8);
    let (report, seen) = run_stream(
        &mut ring,
        &pool,
        t,
        StreamSeen::new(want.clone()),
        StreamReads::Auto,
    );
    w.join().unwrap();
    assert_eq!(report.reason, FinishReason::Eof);
    assert_eq!(seen.next.load(Ordering::SeqCst), want.len() as u64);
    close_and_check(&mut ring, &[t], &[&pool]);
}

/// Bytes written to the slave of a raw-mode pty, read from the master. `Auto` reads a tty
/// single-shot; so does explicit multishot when the tty refuses `RWF_NOWAIT` (Linux 6.18:
/// a multishot read would never end at hang-up, see `pty_hang_up_ends_every_stream_mode`).
#[test]
fn pty_in_raw_mode() {
    let want = verify::expected(BS, 34, 0, 128 * 1024);
    let mut ring = Ring::new().unwrap();
    let can_multishot = ring.capabilities().read_multishot;
    for mode in [StreamReads::Auto, StreamReads::Multishot] {
        if mode == StreamReads::Multishot && !can_multishot {
            continue;
        }
        let (master, slave) = raw_pty();
        let pool = pool(8, BS);
        let t = ring.register(master).unwrap();
        assert_eq!(ring.info(t).unwrap().kind, iocomplete::FdKind::Tty);
        // The writer keeps the slave open (a closed slave makes the master fail with
        // EIO); the handler cancels the reader once every byte is in.
        let keep = slave.try_clone().unwrap();
        let w = slow_writer(slave, want.clone(), 4);
        let mut seen = StreamSeen::new(want.clone());
        seen.cancel_at = Some(want.len() as u64);
        let (report, seen) = run_stream(&mut ring, &pool, t, seen, mode);
        w.join().unwrap();
        drop(keep);
        assert_eq!(report.reason, FinishReason::Cancelled);
        if mode == StreamReads::Auto {
            assert!(!report.multishot);
        }
        assert_eq!(seen.next.load(Ordering::SeqCst), want.len() as u64);
        close_and_check(&mut ring, &[t], &[&pool]);
    }
}

/// The server sends `want`, waits until the reader has all of it, then resets the
/// connection (`SO_LINGER` 0): the reader's next read fails with `ECONNRESET`; a restart
/// then reads the end of the stream.
fn tcp_reset_round(mode: StreamReads) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (server, _) = listener.accept().unwrap();
    let want = verify::expected(BS, 35, 0, 256 * 1024);
    let mut ring = Ring::new().unwrap();
    let pool = pool(8, 16 * 1024);
    let t = ring.register(client).unwrap();
    let seen = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(Mutex::new(Vec::new()));
    let w = {
        let want = want.clone();
        let seen = seen.clone();
        std::thread::spawn(move || {
            let mut s = server;
            s.write_all(&want).unwrap();
            while seen.load(Ordering::SeqCst) < want.len() as u64 {
                std::thread::sleep(Duration::from_millis(1));
            }
            let lg = libc::linger {
                l_onoff: 1,
                l_linger: 0,
            };
            // SAFETY: valid socket fd and a `linger` of the right size.
            let r = unsafe {
                libc::setsockopt(
                    s.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_LINGER,
                    (&lg as *const libc::linger).cast(),
                    std::mem::size_of::<libc::linger>() as u32,
                )
            };
            assert_eq!(r, 0);
            drop(s); // the only descriptor of the server socket: RST
        })
    };
    let e2 = errors.clone();
    let want2 = want.clone();
    let mut reader = ContinuousReader::builder(t, &pool)
        .stream_reads(mode)
        .on_read(move |buf: PoolBuf, off: u64| {
            check_header(&buf);
            assert_eq!(off, seen.load(Ordering::SeqCst));
            let end = off as usize + buf.len();
            assert!(buf.data() == &want2[off as usize..end]);
            seen.store(end as u64, Ordering::SeqCst);
        })
        .on_failed(move |e| {
            e2.lock().unwrap().push(*e);
            Restart::Yes
        })
        .build(&mut ring)
        .unwrap();
    let report = reader.run(&mut ring).unwrap();
    w.join().unwrap();
    assert_eq!(report.reason, FinishReason::Eof, "{mode:?}");
    assert_eq!(report.bytes, want.len() as u64);
    assert_eq!(
        *errors.lock().unwrap(),
        vec![iocomplete::Error::from_errno(libc::ECONNRESET)]
    );
    assert_eq!((report.failures, report.restarts), (1, 1));
    close_and_check(&mut ring, &[t], &[&pool]);
}

#[test]
fn restart_after_a_tcp_reset() {
    tcp_reset_round(StreamReads::Auto);
    tcp_reset_round(StreamReads::SingleShot);
}

#[test]
fn cancel_mid_stream_from_on_read_and_from_another_thread() {
    // 1. From inside on_read, with the writer still going.
    let want = verify::expected(BS, 36, 0, 4 << 20);
    let (rx, tx) = pipe();
    let mut ring = Ring::new().unwrap();
    let pool = pool(8, BS);
    let t = ring.register(rx).unwrap();
    let w = {
        let want = want.clone();
        std::thread::spawn(move || {
            let mut f = File::from(tx);
            for c in want.chunks(3000) {
                if f.write_all(c).is_err() {
                    return; // EPIPE once the reader is gone
                }
                std::thread::sleep(Duration::from_micros(50));
            }
        })
    };
    let mut seen = StreamSeen::new(want.clone());
    seen.cancel_at = Some(64 * 1024);
    let (report, seen) = run_stream(&mut ring, &pool, t, seen, StreamReads::Auto);
    assert_eq!(report.reason, FinishReason::Cancelled);
    let got = seen.next.load(Ordering::SeqCst);
    assert!((64 * 1024..4 << 20).contains(&got), "{got}");
    assert_eq!(report.bytes, got);
    ring.close(t).unwrap();
    w.join().unwrap();
    check_teardown(&ring, &[&pool]);

    // 2. From another thread while the read waits for data that never comes: the
    //    doorbell wakes the driver blocked in the ring.
    let (rx, tx) = pipe();
    let t = ring.register(rx).unwrap();
    let b = ContinuousReader::builder(t, &pool);
    let cancel = b.cancel_handle();
    let mut reader = b
        .on_read(|_, _| panic!("no data was written"))
        .on_failed(|_| Restart::No)
        .build(&mut ring)
        .unwrap();
    let started = Instant::now();
    let s = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(30));
        cancel.cancel();
    });
    let report = reader.run(&mut ring).unwrap();
    s.join().unwrap();
    assert_eq!(report.reason, FinishReason::Cancelled);
    assert!(started.elapsed() < Duration::from_secs(5));
    drop(tx);
    close_and_check(&mut ring, &[t], &[&pool]);

    // 3. A file with 8 reads in flight, cancelled from another thread mid-way.
    let (_dir, path) = verify::disk_file(16 << 20, 37);
    let t = ring.register(File::open(&path).unwrap()).unwrap();
    let b = ContinuousReader::builder(t, &pool).pending_reads(8);
    let cancel = b.cancel_handle();
    let seen = Arc::new(Seen::default());
    let verify = verify_handler(37, &seen);
    let slow = move |buf: PoolBuf, off: u64| {
        verify(buf, off);
        std::thread::sleep(Duration::from_micros(200));
    };
    let mut reader = b
        .on_read(slow)
        .on_failed(|_| Restart::No)
        .build(&mut ring)
        .unwrap();
    let s = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(20));
        cancel.cancel();
    });
    let report = reader.run(&mut ring).unwrap();
    s.join().unwrap();
    assert_eq!(report.reason, FinishReason::Cancelled);
    check_disjoint(&seen.spans());
    assert!(seen.bytes() < 16 << 20);
    close_and_check(&mut ring, &[t], &[&pool]);
}

#[test]
fn multishot_pipe_survives_an_empty_buffer_ring() {
    let mut ring = or_skip!(common::multishot_ring());
    // Four slots; the handler keeps every buffer, and a releaser thread drops them from
    // time to time. While it holds all four, data arrives with no provided buffer: the
    // multishot read ends with ENOBUFS and is re-armed once buffers are back.
    let want = verify::expected(BS, 38, 0, 48 * 1024);
    let (rx, tx) = pipe();
    let pool = pool(4, BS);
    let t = ring.register(rx).unwrap();
    let mut seen = StreamSeen::new(want.clone());
    seen.keep = true;
    let b = ContinuousReader::builder(t, &pool).stream_reads(StreamReads::Multishot);
    let (reader, seen) = stream_reader(b, &mut ring, seen);
    assert!(reader.is_multishot());
    let w = {
        let want = want.clone();
        std::thread::spawn(move || {
            let mut f = File::from(tx);
            for c in want.chunks(1000) {
                f.write_all(c).unwrap();
                std::thread::sleep(Duration::from_millis(2));
            }
        })
    };
    // The releaser works between steps from this thread: every 40 ms, drop what is kept.
    let mut reader = reader;
    let mut last = Instant::now();
    let report = loop {
        if let Some(r) = reader
            .step(&mut ring, Some(Duration::from_millis(5)))
            .unwrap()
        {
            break r;
        }
        if last.elapsed() > Duration::from_millis(40) {
            seen.kept.lock().unwrap().clear();
            last = Instant::now();
        }
    };
    w.join().unwrap();
    assert_eq!(report.reason, FinishReason::Eof);
    assert_eq!(report.bytes, want.len() as u64);
    assert!(
        report.enobufs >= 1,
        "the buffer ring never ran dry: {report:?}"
    );
    assert!(report.buffer_waits >= 1, "{report:?}");
    seen.kept.lock().unwrap().clear();
    drop(reader);
    close_and_check(&mut ring, &[t], &[&pool]);
}

/// `Ring::unregister_buf_ring` (added for the reader): refused while a multishot read can
/// still pick from the ring; afterwards every slot is back, and the next ring gets a fresh
/// group id (a stale token does not name it).
#[test]
fn buffer_ring_is_unregistered_only_once_no_multishot_read_uses_it() {
    let mut ring = or_skip!(common::multishot_ring());
    let pool = pool(4, BS);
    let br = ring.register_buf_ring(&pool, 4).unwrap();
    assert_eq!(pool.stats().free, 0);
    let (rx, tx) = pipe();
    let t = ring.register(rx).unwrap();
    let q = Arc::new(iocomplete::CompletionQueue::new(16));
    ring.submit(iocomplete::Op::read_multishot(t, br))
        .to_queue(&q);
    ring.poll().unwrap();
    let e = ring.unregister_buf_ring(br).unwrap_err();
    assert!(matches!(e.kind(), ErrorKind::InProgress { .. }));
    File::from(tx).write_all(b"last words").unwrap(); // then EOF ends the read
    ring.run_until_idle().unwrap();
    let mut got = Vec::new();
    while let Some(c) = q.pop() {
        if let Some(b) = c.into_buf() {
            got.extend_from_slice(b.data());
        }
    }
    assert_eq!(got, b"last words");
    ring.unregister_buf_ring(br).unwrap();
    assert_eq!(pool.stats().free, pool.stats().total);
    assert!(ring.unregister_buf_ring(br).is_err());
    let again = ring.register_buf_ring(&pool, 2).unwrap();
    assert_ne!(again.group(), br.group());
    assert_eq!(ring.buf_ring_offered(br), 0);
    assert_eq!(ring.buf_ring_offered(again), 2);
    ring.unregister_buf_ring(again).unwrap();
    close_and_check(&mut ring, &[t], &[&pool]);
}

#[test]
fn a_panic_in_on_read_on_a_worker_is_resumed_after_the_reader_winds_down() {
    let pool = pool(16, 16 * 1024);
    let (_dir, path) = verify::disk_file(2 << 20, 41);
    let (mut ring, t) = ring_with(&pool, File::open(&path).unwrap());
    let mut reader = ContinuousReader::builder(t, &pool)
        .pending_reads(8)
        .dispatch(Dispatch::Workers(2))
        .on_read({
            let n = AtomicUsize::new(0);
            move |buf: PoolBuf, off: u64| {
                verify::check_range(buf.data(), BS, 41, off).unwrap();
                if n.fetch_add(1, Ordering::SeqCst) == 10 {
                    panic!("handler bug at delivery 10");
                }
            }
        })
        .on_failed(|e| panic!("unexpected failure {e}"))
        .build(&mut ring)
        .unwrap();
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| loop {
        if let Some(r) = reader.step(&mut ring, None).unwrap() {
            return r;
        }
    }));
    let payload = r.expect_err("the worker's panic was not resumed");
    assert_eq!(
        payload.downcast_ref::<&str>().copied(),
        Some("handler bug at delivery 10")
    );
    // The reader wound down before resuming the panic: cancelled, or already at the end
    // of the file when the cancel came (the panic hook is slow; page-cached reads are not).
    let report = reader.report().expect("finished");
    assert!(
        matches!(report.reason, FinishReason::Cancelled | FinishReason::Eof),
        "{report:?}"
    );
    drop(reader);
    close_and_check(&mut ring, &[t], &[&pool]);
}

// ---- regression tests: blocking FIFOs, dropped readers, shared pools ----------------------

/// Make a named FIFO in `dir`.
/// Drive `reader` to its end, failing (not hanging) if it takes more than `limit`.
fn drive_bounded<C: Callbacks>(
    ring: &mut Ring,
    reader: &mut ContinuousReader<C>,
    limit: Duration,
    what: &str,
) -> ReaderReport {
    let started = Instant::now();
    loop {
        if let Some(r) = reader.step(ring, Some(Duration::from_millis(50))).unwrap() {
            return r;
        }
        assert!(
            started.elapsed() < limit,
            "{what}: reader did not finish within {limit:?}: {reader:?}"
        );
    }
}

/// Drive `ring` until nothing is in flight and every slot of `pool` is back, failing (not
/// hanging) after `limit`.
fn drive_ring_idle(ring: &mut Ring, pool: &BufferPool, limit: Duration, what: &str) {
    let started = Instant::now();
    loop {
        ring.run_once(Some(Duration::from_millis(20))).unwrap();
        let s = pool.stats();
        if ring.in_flight() == 0 && s.free == s.total {
            // One more pass: a buffer ring still registered would take slots again here.
            ring.poll().unwrap();
            return;
        }
        assert!(
            started.elapsed() < limit,
            "{what}: ring not idle after {limit:?}: in flight {}, pool {s:?}",
            ring.in_flight()
        );
    }
}

/// Finding 10: a FIFO opened by path *without* `O_NONBLOCK` (the open blocks until the
/// writer comes), and a pipe reopened through `/proc/self/fd` (what `cat /dev/stdin`
/// gets). Neither has `FMODE_NOWAIT`; a multishot read of such a file never sees EOF on
/// Linux 6.18. The writer writes everything and closes; the reader must deliver every
/// byte and finish at EOF, in every stream mode.
#[test]
fn blocking_fifo_and_reopened_pipe_finish_at_eof() {
    let want = verify::expected(BS, 42, 0, 150_000);
    let mut ring = Ring::new().unwrap();
    for mode in stream_modes(&ring) {
        for reopened_pipe in [false, true] {
            let what = format!(
                "{mode:?} {}",
                if reopened_pipe {
                    "/proc/self/fd pipe"
                } else {
                    "blocking FIFO"
                }
            );
            let dir = tempfile::tempdir().unwrap();
            let (rx, w) = if reopened_pipe {
                let (rx, tx) = pipe();
                let again = File::open(format!("/proc/self/fd/{}", rx.as_raw_fd())).unwrap();
                drop(rx);
                (again, slow_writer(tx, want.clone(), 4))
            } else {
                let path = fifo_in(dir.path());
                let w = {
                    let (want, path) = (want.clone(), path.clone());
                    std::thread::spawn(move || {
                        // Blocks until the reader opens its end.
                        let tx = OpenOptions::new().write(true).open(&path).unwrap();
                        slow_writer(tx.into(), want, 4).join().unwrap();
                    })
                };
                (File::open(&path).unwrap(), w) // blocking open
            };
            let pool = pool(8, BS);
            let t = ring.register(rx).unwrap();
            let info = ring.info(t).unwrap();
            assert!(
                !info.nonblocking && info.kind == iocomplete::FdKind::Pipe,
                "{what}"
            );
            let b = ContinuousReader::builder(t, &pool).stream_reads(mode);
            let (mut reader, seen) = stream_reader(b, &mut ring, StreamSeen::new(want.clone()));
            let report = drive_bounded(&mut ring, &mut reader, Duration::from_secs(20), &what);
            w.join().unwrap();
            assert_eq!(report.reason, FinishReason::Eof, "{what}");
            assert_eq!(report.bytes, want.len() as u64, "{what}");
            assert_eq!(
                seen.next.load(Ordering::SeqCst),
                want.len() as u64,
                "{what}"
            );
            drop(reader);
            close_and_check(&mut ring, &[t], &[&pool]);
        }
    }
}

/// Finding 7: dropping an unfinished reader (multishot from a provided-buffer ring, or a
/// single-shot read waiting on a silent pipe) gives every slot back once the ring has run
/// until idle, and leaves no operation in flight. The buffer ring is unregistered.
#[test]
fn dropping_an_unfinished_reader_returns_every_slot() {
    let mut ring = Ring::new().unwrap();
    for mode in stream_modes(&ring) {
        // One worker: `stream_on_read` checks the order, and two could overlap.
        for dispatch in [Dispatch::Inline, Dispatch::Workers(1)] {
            let what = format!("{mode:?} {dispatch:?}");
            let want = verify::expected(BS, 44, 0, 64 * 1024);
            let (rx, tx) = pipe();
            let pool = pool(8, BS);
            let t = ring.register(rx).unwrap();
            let b = ContinuousReader::builder(t, &pool)
                .stream_reads(mode)
                .dispatch(dispatch);
            let (mut reader, seen) = stream_reader(b, &mut ring, StreamSeen::new(want.clone()));
            // Half the data; the writer stays open, so the reader never finishes.
            let mut tx = File::from(tx);
            tx.write_all(&want[..32 * 1024]).unwrap();
            let started = Instant::now();
            while seen.next.load(Ordering::SeqCst) < 32 * 1024 {
                assert!(reader
                    .step(&mut ring, Some(Duration::from_millis(20)))
                    .unwrap()
                    .is_none());
                assert!(started.elapsed() < Duration::from_secs(10), "{what}");
            }
            // Drive a little more so the next read (or re-armed multishot) is in flight.
            reader
                .step(&mut ring, Some(Duration::from_millis(20)))
                .unwrap();
            assert!(ring.in_flight() > 0, "{what}: nothing in flight to abandon");
            drop(reader);
            drive_ring_idle(&mut ring, &pool, Duration::from_secs(10), &what);
            // Data written after the drop stays in the pipe: nobody reads it any more.
            tx.write_all(&want[32 * 1024..]).unwrap();
            ring.run_once(Some(Duration::from_millis(20))).unwrap();
            assert_eq!(pool.stats().free, pool.stats().total, "{what}");
            drop(tx);
            close_and_check(&mut ring, &[t], &[&pool]);
        }
    }
}

/// Finding 8: multishot readers on one ring share a pool smaller than their buffer rings
/// want. The first reader's source keeps going, then stays open but silent until every
/// other reader has all its data: no buffer ring may take every slot or win every refill,
/// and every reader gets every byte. Two readers, then three.
#[test]
fn multishot_readers_sharing_a_small_pool_all_get_all_their_data() {
    let mut ring = or_skip!(common::multishot_ring());
    for (n, slots) in [(2, 2), (2, 4), (2, 8), (3, 2), (3, 4), (3, 8)] {
        let what = format!("{n} readers, {slots} slots");
        let pool = pool(slots, BS);
        let wants: Vec<Vec<u8>> = (0..n)
            .map(|i| verify::expected(BS, 45 + i as u64, 0, 256 * 1024))
            .collect();
        let others_done = Arc::new(AtomicBool::new(false));
        let mut targets = Vec::new();
        let mut readers = Vec::new();
        let mut seens = Vec::new();
        let mut writers = Vec::new();
        for (i, want) in wants.iter().enumerate() {
            let (rx, tx) = pipe();
            let t = ring.register(rx).unwrap();
            targets.push(t);
            let b = ContinuousReader::builder(t, &pool).stream_reads(StreamReads::Multishot);
            let (reader, seen) = stream_reader(b, &mut ring, StreamSeen::new(want.clone()));
            readers.push(reader);
            seens.push(seen);
            writers.push(if i == 0 {
                let (want, others_done) = (want.clone(), others_done.clone());
                std::thread::spawn(move || {
                    let mut f = File::from(tx);
                    for c in want.chunks(2000) {
                        f.write_all(c).unwrap();
                        std::thread::sleep(Duration::from_micros(200));
                    }
                    // Silent but open until the others are done (bounded: the test
                    // fails first).
                    let started = Instant::now();
                    while !others_done.load(Ordering::SeqCst)
                        && started.elapsed() < Duration::from_secs(40)
                    {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                })
            } else {
                slow_writer(tx, want.clone(), 4)
            });
        }
        let started = Instant::now();
        let mut reports: Vec<Option<ReaderReport>> = vec![None; n];
        while reports.iter().any(Option::is_none) {
            for (r, reader) in reports.iter_mut().zip(&mut readers) {
                if r.is_none() {
                    *r = reader
                        .step(&mut ring, Some(Duration::from_millis(5)))
                        .unwrap();
                }
            }
            if reports[1..].iter().all(Option::is_some) {
                others_done.store(true, Ordering::SeqCst);
            }
            let got: Vec<u64> = seens
                .iter()
                .map(|s| s.next.load(Ordering::SeqCst))
                .collect();
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "{what}: starved: bytes received {got:?} of {}",
                wants[0].len()
            );
        }
        for w in writers {
            w.join().unwrap();
        }
        for ((r, seen), want) in reports.iter().zip(&seens).zip(&wants) {
            let r = r.unwrap();
            assert_eq!(r.reason, FinishReason::Eof, "{what}");
            assert_eq!(r.bytes, want.len() as u64, "{what}");
            assert!(r.multishot, "{what}");
            assert_eq!(seen.next.load(Ordering::SeqCst), want.len() as u64);
        }
        drop(readers);
        for t in targets {
            ring.close(t).unwrap();
        }
        check_teardown(&ring, &[&pool]);
    }
}

/// Adversarial arguments and handles: typed errors before anything reaches the kernel,
/// never a panic, and a reader driven with a ring it was not built on touches nothing
/// there (its cancel would otherwise hit whatever operation has the same id).
#[test]
fn bad_arguments_and_foreign_rings_are_refused() {
    let mut ring = Ring::new().unwrap();
    let mut other = Ring::new().unwrap();
    let pool = pool(4, BS);
    let (rx, tx) = pipe();
    let t = ring.register(rx).unwrap();
    let kind = |ring: &mut Ring, b: ContinuousReaderBuilder| {
        b.on_read(|_, _| {})
            .on_failed(|_| Restart::No)
            .build(ring)
            .unwrap_err()
            .kind()
    };
    // More workers than the pool has slots can never all be busy; usize::MAX must not
    // overflow anything.
    for n in [5, usize::MAX] {
        let b = ContinuousReader::builder(t, &pool).dispatch(Dispatch::Workers(n));
        assert!(
            matches!(
                kind(&mut ring, b),
                ErrorKind::PoolTooSmall {
                    what: "Dispatch::Workers",
                    have: 4,
                    ..
                }
            ),
            "{n}"
        );
    }
    // A zero transfer length is refused in every stream mode (multishot ignores it
    // otherwise).
    for mode in [
        StreamReads::Auto,
        StreamReads::SingleShot,
        StreamReads::Multishot,
    ] {
        let b = ContinuousReader::builder(t, &pool)
            .stream_reads(mode)
            .transfer_len(0);
        let k = kind(&mut ring, b);
        assert!(
            matches!(
                k,
                ErrorKind::ZeroLength { .. } | ErrorKind::Unsupported { .. }
            ),
            "{mode:?}: {k:?}"
        );
    }
    // Provided-buffer ids are 16 bits: explicit multishot with a larger pool is refused
    // at build; `Auto` reads it single-shot.
    let big = BufferPool::builder()
        .slots((1 << 16) + 1)
        .slot_len(64)
        .align(64)
        .build()
        .unwrap();
    let b = ContinuousReader::builder(t, &big).stream_reads(StreamReads::Multishot);
    let k = kind(&mut ring, b);
    assert!(
        matches!(
            k,
            ErrorKind::OutOfRange { max: 65536, .. } | ErrorKind::Unsupported { .. }
        ),
        "{k:?}"
    );
    let auto = ContinuousReader::builder(t, &big)
        .on_read(|_, _| {})
        .on_failed(|_| Restart::No)
        .build(&mut ring)
        .unwrap();
    assert!(!auto.is_multishot());
    drop(auto);
    assert_eq!(ring.stats().submitted, 0);

    // The foreign ring's own poll, first in its op table (like the reader's first read).
    let (orx, otx) = pipe();
    let ot = other.register(orx).unwrap();
    let ticket = other.submit(Op::poll(ot, libc::POLLIN as u32)).ticket();
    other.poll().unwrap();
    let before = other.stats();
    let mut reader = ContinuousReader::builder(t, &pool)
        .on_read(|_, _| {})
        .on_failed(|_| Restart::No)
        .build(&mut ring)
        .unwrap();
    assert!(reader
        .step(&mut ring, Some(Duration::from_millis(5)))
        .unwrap()
        .is_none());
    assert!(reader.cancel(&mut ring));
    let e = reader
        .step(&mut other, Some(Duration::from_millis(5)))
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::WrongRing { what: "reader" }, "{e:?}");
    other.poll().unwrap();
    assert_eq!(other.stats().submitted, before.submitted);
    assert!(
        !other.is_done(&ticket),
        "the foreign ring's poll was cancelled"
    );
    // On its own ring the reader cancels as asked.
    let report = drive_bounded(&mut ring, &mut reader, Duration::from_secs(10), "cancel");
    assert_eq!(report.reason, FinishReason::Cancelled);
    drop(reader);
    drop(tx);
    close_and_check(&mut ring, &[t], &[&pool]);
    File::from(otx).write_all(b"x").unwrap();
    assert!(other.wait(ticket).unwrap().result().is_ok());
    other.close(ot).unwrap();
    check_teardown(&other, &[]);
}

/// A pty whose slave closes: the master's next read fails with `EIO`, and the reader ends
/// (here `on_failed` declines a restart) with every byte written before — in every mode.
/// A multishot read of a tty (no `FMODE_NOWAIT`) would stay armed forever instead.
#[test]
fn pty_hang_up_ends_every_stream_mode() {
    let want = verify::expected(BS, 47, 0, 20_000);
    let mut ring = Ring::new().unwrap();
    for mode in stream_modes(&ring) {
        let (master, slave) = raw_pty();
        let pool = pool(8, BS);
        let t = ring.register(master).unwrap();
        let seen = Arc::new(StreamSeen::new(want.clone()));
        let s = seen.clone();
        let mut reader = ContinuousReader::builder(t, &pool)
            .stream_reads(mode)
            .on_read(move |buf, off| stream_on_read(&s, buf, off))
            .on_failed(|_| Restart::No)
            .build(&mut ring)
            .unwrap();
        let w = {
            let want = want.clone();
            std::thread::spawn(move || {
                let mut f = File::from(slave);
                f.write_all(&want).unwrap();
                std::thread::sleep(Duration::from_millis(50));
            }) // the slave closes here: hang-up
        };
        let started = Instant::now();
        // Everything written, then the hang-up.
        while seen.next.load(Ordering::SeqCst) < want.len() as u64 {
            assert!(
                reader
                    .step(&mut ring, Some(Duration::from_millis(20)))
                    .unwrap()
                    .is_none(),
                "{mode:?}: ended before all bytes were in"
            );
            assert!(started.elapsed() < Duration::from_secs(10), "{mode:?}");
        }
        let what = format!("{mode:?} pty hang-up");
        let report = drive_bounded(&mut ring, &mut reader, Duration::from_secs(10), &what);
        w.join().unwrap();
        assert_eq!(
            report.reason,
            FinishReason::Failed(iocomplete::Error::from_errno(libc::EIO)),
            "{mode:?}"
        );
        assert_eq!(report.bytes, want.len() as u64, "{mode:?}");
        drop(reader);
        close_and_check(&mut ring, &[t], &[&pool]);
    }
}

/// Found by an outside attack: a reader started (or ranged) up to the largest file
/// position asked the kernel for reads past `i64::MAX` and ended `Failed(OffsetOutOfRange)`.
/// Reading stops at the largest file position: the reader ends at once, without a read,
/// whatever the alignment.
#[test]
fn a_reader_at_the_largest_file_position_ends_without_reading_past_it() {
    use iocomplete::FinishReason;
    let (_dir, path) = common::disk_path("f");
    std::fs::write(&path, vec![7u8; 3 * BS]).unwrap();
    for (start, end, direct) in [
        (i64::MAX as u64 - 10, None, false),
        (i64::MAX as u64 - 4096 * 3 + 1, None, false),
        (0, Some(u64::MAX), false),
        ((i64::MAX as u64) & !4095, None, true),
        (((i64::MAX as u64) & !4095) - 4096, Some(!4095u64), true),
    ] {
        let mut ring = Ring::new().unwrap();
        let pool = pool(4, BS);
        let mut o = std::fs::OpenOptions::new();
        o.read(true);
        if direct {
            o.custom_flags(libc::O_DIRECT);
        }
        let t = ring.register(o.open(&path).unwrap()).unwrap();
        let b = ContinuousReader::builder(t, &pool);
        let b = match end {
            Some(e) => b.range(start, e),
            None => b.start_at(start),
        };
        let mut reader = b
            .on_read(|_: PoolBuf, _: u64| {})
            .on_failed(|_| Restart::No)
            .build(&mut ring)
            .unwrap();
        let report = reader.run(&mut ring).unwrap();
        let case = (start, end, direct);
        match report.reason {
            FinishReason::Eof | FinishReason::EndOfRange => {}
            r => panic!("{case:?}: {r:?}"),
        }
        if start > 3 * BS as u64 {
            assert_eq!(report.bytes, 0, "{case:?}");
        } else {
            assert_eq!(report.bytes, 3 * BS as u64, "{case:?}");
        }
        ring.run_until_idle().unwrap();
        check_teardown(&ring, &[&pool]);
    }
}

// ---- local callbacks: `FnMut` on the driving thread, borrowing the caller's state ----------

/// Whether `T` is `Send`: the inherent constant of `Probe<T>` exists only when it is, and
/// shadows the blanket trait's `false`.
macro_rules! is_send {
    ($t:ty) => {{
        #[allow(dead_code)]
        trait NotSend {
            const SEND: bool = false;
        }
        impl<T: ?Sized> NotSend for T {}
        struct Probe<T: ?Sized>(std::marker::PhantomData<T>);
        #[allow(dead_code)]
        impl<T: ?Sized + Send> Probe<T> {
            const SEND: bool = true;
        }
        <Probe<$t>>::SEND
    }};
}

/// Readers and builders with `Shared` callbacks (the default type) stay `Send`, so a
/// reader can still move to another thread; with `Local` callbacks, which may hold
/// anything, they are not. (A local builder cannot ask for `Dispatch::Workers` at all: it
/// has no `dispatch`, see the `compile_fail` example of `ContinuousReader::local_builder`.)
#[test]
fn shared_readers_are_send_and_local_readers_are_not() {
    fn assert_send<T: Send>() {}
    assert_send::<ContinuousReader>();
    assert_send::<ContinuousReaderBuilder>();
    assert_send::<ContinuousReader<Shared>>();
    assert_send::<ContinuousReaderBuilder<Shared>>();
    assert!(is_send!(ContinuousReader));
    assert!(!is_send!(ContinuousReader<Local<'static>>));
    assert!(!is_send!(ContinuousReaderBuilder<Local<'static>>));
}

/// Inline `on_read` as a plain `FnMut` that mutates borrowed locals — a counter, the
/// expected next offset, and a `Vec<u8>` image of the file — with no `Arc`, atomics or
/// locks: every byte arrives once, at its offset, in order when ordered; the borrows end
/// with the reader, and the image equals the file.
#[test]
fn local_on_read_mutates_borrowed_locals_and_sees_every_byte() {
    let size = 40 * BS as u64 + 1000;
    let (_dir, path) = verify::disk_file(size, 61);
    let want = std::fs::read(&path).unwrap();
    for (ordered, pending) in [(true, 4), (false, 8), (true, 1)] {
        let pool = pool(16, 2 * BS);
        let (mut ring, t) = ring_with(&pool, File::open(&path).unwrap());
        let mut image = vec![0u8; want.len()];
        let mut total = 0u64;
        let mut calls = 0u64;
        let mut next = 0u64;
        let report = {
            let mut reader = ContinuousReader::local_builder(t, &pool)
                .pending_reads(pending)
                .ordered(ordered)
                .on_read(|buf, off| {
                    check_header(&buf);
                    if ordered {
                        assert_eq!(off, next, "ordered delivery out of order");
                    }
                    let at = off as usize;
                    let dst = &mut image[at..at + buf.len()];
                    assert!(
                        dst.iter().all(|&b| b == 0),
                        "bytes at {off} delivered twice"
                    );
                    dst.copy_from_slice(buf.data());
                    next = off + buf.len() as u64;
                    total += buf.len() as u64;
                    calls += 1;
                })
                .on_failed(|e| panic!("unexpected failure {e}"))
                .build(&mut ring)
                .unwrap();
            drive_bounded(
                &mut ring,
                &mut reader,
                Duration::from_secs(30),
                "local file",
            )
        };
        let case = (ordered, pending);
        assert_eq!(report.reason, FinishReason::Eof, "{case:?}");
        assert_eq!(total, size, "{case:?}");
        assert_eq!(report.bytes, total, "{case:?}");
        assert_eq!(report.deliveries, calls, "{case:?}");
        assert!(
            image == want,
            "{case:?}: the delivered bytes differ from the file"
        );
        verify::check_range(&image, BS, 61, 0).unwrap();
        close_and_check(&mut ring, &[t], &[&pool]);
    }
}

/// The same on a pipe in every stream mode (multishot from a provided-buffer ring, or
/// single-shot reads): a local `on_read` appends to a borrowed `Vec<u8>`, which ends equal
/// to what the writer wrote.
#[test]
fn local_on_read_appends_a_pipe_stream_to_a_borrowed_vec() {
    let want = verify::expected(BS, 62, 0, 200_000);
    let ring = Ring::new().unwrap();
    for mode in stream_modes(&ring) {
        let (rx, tx) = pipe();
        let pool = pool(8, BS);
        let (mut ring, t) = ring_with(&pool, rx);
        let w = slow_writer(tx, want.clone(), 4);
        let mut got = Vec::with_capacity(want.len());
        let report = {
            let mut reader = ContinuousReader::local_builder(t, &pool)
                .stream_reads(mode)
                .on_read(|buf, off| {
                    check_header(&buf);
                    assert_eq!(off, got.len() as u64, "stream delivery out of order");
                    got.extend_from_slice(buf.data());
                })
                .on_failed(|e| panic!("unexpected failure {e}"))
                .build(&mut ring)
                .unwrap();
            drive_bounded(
                &mut ring,
                &mut reader,
                Duration::from_secs(30),
                "local pipe",
            )
        };
        w.join().unwrap();
        assert_eq!(report.reason, FinishReason::Eof, "{mode:?}");
        assert_eq!(report.bytes, want.len() as u64, "{mode:?}");
        assert!(got == want, "{mode:?}: the stream's bytes differ");
        close_and_check(&mut ring, &[t], &[&pool]);
    }
}

/// crc32c as a `Hasher`, fed in delivery order.
#[derive(Default)]
struct Crc32c(u32);

impl Hasher for Crc32c {
    fn write(&mut self, bytes: &[u8]) {
        self.0 = crc32c::crc32c_append(self.0, bytes);
    }
    fn finish(&self) -> u64 {
        u64::from(self.0)
    }
}

/// A hasher in a `RefCell`, borrowed by a local `on_read` (which makes the closure, and so
/// the reader, neither `Send` nor `Sync`): fed in file order, it ends equal to the crc32c
/// of the whole file. A shared borrow, so the hasher can be read while the reader lives.
#[test]
fn local_on_read_feeds_a_refcell_hasher_in_file_order() {
    let size = 64 * BS as u64 + 123;
    let (_dir, path) = verify::disk_file(size, 63);
    let want = crc32c::crc32c(&std::fs::read(&path).unwrap());
    let pool = pool(24, 4 * BS);
    let (mut ring, t) = ring_with(&pool, File::open(&path).unwrap());
    let hasher = RefCell::new(Crc32c::default());
    let mut reader = ContinuousReader::local_builder(t, &pool)
        .pending_reads(8)
        .ordered(true)
        .transfer_len(3 * BS as u32)
        .on_read(|buf, _off| hasher.borrow_mut().write(buf.data()))
        .build(&mut ring)
        .unwrap();
    let report = drive_bounded(&mut ring, &mut reader, Duration::from_secs(30), "hasher");
    assert_eq!(report.reason, FinishReason::Eof);
    assert_eq!(report.bytes, size);
    assert_eq!(
        hasher.borrow().finish(),
        u64::from(want),
        "crc of the delivered bytes"
    );
    drop(reader);
    close_and_check(&mut ring, &[t], &[&pool]);
}

/// A local `on_failed` (`FnMut`, borrowing the faulty `MemFile` to heal it and a local
/// `Vec` of the errors it saw) restarts the reader after each `EIO`; it shares a `Cell`
/// with the local `on_read` to check that the two never overlap. Every byte is delivered
/// once, in order; then a second reader whose `on_failed` declines ends `Failed`.
#[test]
fn local_on_failed_restarts_through_fnmut_and_never_overlaps_on_read() {
    let mem = MemFile::new(48, 64);
    mem.hole(10);
    mem.hole(30);
    let (base, end) = (mem.base, mem.base + mem.len);
    let pool = pool(16, 2 * BS);
    let (mut ring, t) = ring_with(&pool, File::open("/proc/self/mem").unwrap());
    let in_failed = Cell::new(false);
    let mut spans = Vec::new();
    let mut errors = Vec::new();
    let report = {
        let mut reader = ContinuousReader::local_builder(t, &pool)
            .pending_reads(4)
            .ordered(true)
            .range(base, end)
            .on_read(|buf, off| {
                assert!(!in_failed.get(), "on_read runs during on_failed");
                check_header(&buf);
                verify::check_range(buf.data(), BS, 64, off).unwrap();
                spans.push((off, buf.len()));
            })
            .on_failed(|e| {
                in_failed.set(true);
                errors.push(e.kind());
                let healed = mem.heal_lowest();
                in_failed.set(false);
                if healed {
                    Restart::Yes
                } else {
                    Restart::No
                }
            })
            .build(&mut ring)
            .unwrap();
        drive_bounded(&mut ring, &mut reader, Duration::from_secs(30), "restarts")
    };
    assert_eq!(report.reason, FinishReason::EndOfRange);
    assert_eq!(errors, vec![ErrorKind::Os(libc::EIO); 2]);
    assert_eq!(report.failures, 2);
    assert_eq!(report.restarts, 2);
    check_spans(&spans, base, end, true);

    // Declining: one call, the reader ends with the error, the bytes before the hole
    // delivered in order and once.
    mem.hole(20);
    let mut calls = 0;
    let mut spans = Vec::new();
    let report = {
        let mut reader = ContinuousReader::local_builder(t, &pool)
            .pending_reads(4)
            .ordered(true)
            .range(base, end)
            .on_read(|buf, off| {
                verify::check_range(buf.data(), BS, 64, off).unwrap();
                spans.push((off, buf.len()));
            })
            .on_failed(|e| {
                assert_eq!(e.kind(), ErrorKind::Os(libc::EIO));
                calls += 1;
                Restart::No
            })
            .build(&mut ring)
            .unwrap();
        drive_bounded(
            &mut ring,
            &mut reader,
            Duration::from_secs(30),
            "no restart",
        )
    };
    assert_eq!(calls, 1);
    assert_eq!(
        report.reason,
        FinishReason::Failed(iocomplete::Error::from_errno(libc::EIO))
    );
    check_spans(&spans, base, base + 20 * BS as u64, true);
    drop(mem);
    close_and_check(&mut ring, &[t], &[&pool]);
}
